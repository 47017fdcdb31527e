//! The layout of the search index tables (manifest keys `index/<kind>/<Type>`,
//! one Arrow schema per value kind): a fact of the warehouse, which
//! registers these tables; the `index` module writes them.

use std::sync::{Arc, OnceLock};

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use crate::search::ParamType;
use crate::warehouse::schema::timestamp_type;

/// Prefix of index table keys in the manifest.
pub const INDEX_TABLE_PREFIX: &str = "index/";

/// Column names shared by every index table.
pub mod columns {
    /// The indexed resource's type.
    pub const RESOURCE_TYPE: &str = "resource_type";
    /// Search parameter code (`code`, `onset-date`, `_id`).
    pub const PARAM: &str = "param";
    /// The indexed resource's id.
    pub const RESOURCE_ID: &str = "resource_id";
    /// A Patient whose compartment holds the resource (null: none).
    pub const PATIENT: &str = "patient";
}

/// The value shape of an index table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IndexKind {
    /// `system`, `code`, `text` (folded display), `type_system`/`type_code`
    /// (an Identifier's type, for `:of-type`).
    Token,
    /// `low`, `high`: the instants of the value's precision range.
    Date,
    /// `folded` (case/accent-folded), `exact`.
    String,
    /// `target_type`, `target_id`.
    Reference,
    /// `value`, `system`, `code`, `unit`.
    Quantity,
    /// `value`.
    Number,
    /// `uri`.
    Uri,
}

impl IndexKind {
    /// Every kind.
    pub const ALL: [IndexKind; 7] = [
        IndexKind::Token,
        IndexKind::Date,
        IndexKind::String,
        IndexKind::Reference,
        IndexKind::Quantity,
        IndexKind::Number,
        IndexKind::Uri,
    ];

    /// The kind holding values of a parameter type (`None`: not indexed).
    pub fn of(param_type: ParamType) -> Option<Self> {
        Some(match param_type {
            ParamType::Token => IndexKind::Token,
            ParamType::Date => IndexKind::Date,
            ParamType::String => IndexKind::String,
            ParamType::Reference => IndexKind::Reference,
            ParamType::Quantity => IndexKind::Quantity,
            ParamType::Number => IndexKind::Number,
            ParamType::Uri => IndexKind::Uri,
            ParamType::Composite | ParamType::Special => return None,
        })
    }

    /// Lower-case name (`token`), used in table keys and SQL names.
    pub fn name(self) -> &'static str {
        match self {
            IndexKind::Token => "token",
            IndexKind::Date => "date",
            IndexKind::String => "string",
            IndexKind::Reference => "reference",
            IndexKind::Quantity => "quantity",
            IndexKind::Number => "number",
            IndexKind::Uri => "uri",
        }
    }

    /// The kind named `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The SQL table over every type's index of this kind (`index_token`).
    pub fn sql_table(self) -> String {
        format!("index_{}", self.name())
    }

    /// The columns between `param` and `resource_id`, in sort order after
    /// `param` (the first is the one selective filters hit).
    pub fn value_fields(self) -> Vec<Field> {
        let text = |name: &str, nullable: bool| Field::new(name, DataType::Utf8, nullable);
        match self {
            // `type_system`/`type_code`: an Identifier's type coding
            // (`:of-type`); null for other tokens and in files written
            // before they existed (the scan fills missing columns with null).
            IndexKind::Token => vec![
                text("code", false),
                text("system", true),
                text("text", true),
                text("type_system", true),
                text("type_code", true),
            ],
            IndexKind::Date => vec![
                Field::new("low", timestamp_type(), false),
                Field::new("high", timestamp_type(), false),
            ],
            IndexKind::String => vec![text("folded", false), text("exact", false)],
            IndexKind::Reference => vec![text("target_id", false), text("target_type", true)],
            IndexKind::Quantity => vec![
                Field::new("value", DataType::Float64, false),
                text("system", true),
                text("code", true),
                text("unit", true),
            ],
            IndexKind::Number => vec![Field::new("value", DataType::Float64, false)],
            IndexKind::Uri => vec![text("uri", false)],
        }
    }

    /// The Arrow schema of this kind's tables.
    pub fn schema(self) -> SchemaRef {
        static SCHEMAS: OnceLock<Vec<SchemaRef>> = OnceLock::new();
        let schemas = SCHEMAS.get_or_init(|| {
            IndexKind::ALL
                .iter()
                .map(|kind| {
                    let mut fields = vec![
                        Field::new(columns::RESOURCE_TYPE, DataType::Utf8, false),
                        Field::new(columns::PARAM, DataType::Utf8, false),
                    ];
                    fields.extend(kind.value_fields());
                    fields.push(Field::new(columns::RESOURCE_ID, DataType::Utf8, false));
                    fields.push(Field::new(columns::PATIENT, DataType::Utf8, true));
                    Arc::new(Schema::new(fields))
                })
                .collect()
        });
        schemas[self as usize].clone()
    }
}

/// The manifest key of the `kind` index of `resource_type`.
pub fn index_table_key(kind: IndexKind, resource_type: &str) -> String {
    format!("{INDEX_TABLE_PREFIX}{}/{resource_type}", kind.name())
}

/// `(kind, resource type)` of an index table key.
pub fn parse_index_table_key(key: &str) -> Option<(IndexKind, &str)> {
    let (kind, resource_type) = key.strip_prefix(INDEX_TABLE_PREFIX)?.split_once('/')?;
    Some((IndexKind::from_name(kind)?, resource_type))
}
