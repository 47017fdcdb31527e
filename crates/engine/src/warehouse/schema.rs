//! Arrow schemas of the warehouse tables.

use std::sync::{Arc, OnceLock};

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};

pub use fhirlake_fhir::view::timestamp_type;

/// Column names of a resource table.
pub mod resource_columns {
    /// Logical id (`Resource.id`).
    pub const ID: &str = "id";
    /// `meta.versionId`, if present.
    pub const VERSION_ID: &str = "version_id";
    /// `meta.lastUpdated`, if present.
    pub const LAST_UPDATED: &str = "last_updated";
    /// When the load that wrote this version committed.
    pub const LOADED_AT: &str = "loaded_at";
    /// Position in its load: `file_ordinal << 32 | line`.
    pub const LOAD_SEQ: &str = "load_seq";
    /// Ids of the Patients whose compartment holds this resource.
    pub const PATIENTS: &str = "patients";
    /// The resource's JSON exactly as loaded.
    pub const RESOURCE: &str = "resource";
}

/// Schema of a per-resource-type table (`Patient`, `Observation`, …): one row
/// per resource, latest version only.
pub fn resource_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            use resource_columns::*;
            Arc::new(Schema::new(vec![
                Field::new(ID, DataType::Utf8, false),
                Field::new(VERSION_ID, DataType::Utf8, true),
                Field::new(LAST_UPDATED, timestamp_type(), true),
                Field::new(LOADED_AT, timestamp_type(), false),
                Field::new(LOAD_SEQ, DataType::Int64, false),
                Field::new(
                    PATIENTS,
                    DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true))),
                    false,
                ),
                Field::new(RESOURCE, DataType::Utf8, false),
            ]))
        })
        .clone()
}

/// Schema of `_tombstones`: resources deleted by a load (a `transaction`
/// Bundle of `DELETE` entries, the bulk-export `deleted` format), with the
/// patients whose compartments held them, for `$export`'s `deleted[]`.
pub fn tombstones_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            Arc::new(Schema::new(vec![
                Field::new("resource_type", DataType::Utf8, false),
                Field::new("id", DataType::Utf8, false),
                Field::new("deleted_at", timestamp_type(), false),
                Field::new("load_seq", DataType::Int64, false),
                Field::new(
                    "patients",
                    DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true))),
                    false,
                ),
            ]))
        })
        .clone()
}

/// Schema of `_rejects`: every line a `--skip-invalid` load refused, with why.
pub fn rejects_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            Arc::new(Schema::new(vec![
                Field::new("loaded_at", timestamp_type(), false),
                Field::new("file", DataType::Utf8, false),
                Field::new("line", DataType::Int64, false),
                Field::new("reason", DataType::Utf8, false),
                Field::new("content", DataType::Utf8, true),
            ]))
        })
        .clone()
}
