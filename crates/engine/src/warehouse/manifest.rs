//! Warehouse snapshots: the versioned manifests that say which files make up
//! each table. A commit is one conditional `put` of the next manifest, so a
//! load that touches twenty tables becomes visible all at once or not at all.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Folder (under the warehouse root) holding the manifests.
pub const MANIFEST_DIR: &str = "_manifest";
/// Identifies the manifest format, so a future layout change is detected.
pub const FORMAT: &str = "fhirlake-warehouse/1";

/// One committed state of the warehouse.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Snapshot {
    /// Format marker, [`FORMAT`].
    pub format: String,
    /// Version number, 1 for the first commit.
    pub version: u64,
    /// RFC 3339 commit time.
    pub committed_at: String,
    /// What produced this version (`load`, …).
    pub operation: String,
    /// Free-form facts about the operation (sources, counts).
    #[serde(default)]
    pub operation_details: serde_json::Value,
    /// Tables by name.
    pub tables: BTreeMap<String, TableEntry>,
}

/// What kind of table an entry is.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TableKind {
    /// One row per resource of one type (schema `resource_schema`).
    Resource,
    /// Rejected input lines (schema `rejects_schema`).
    Rejects,
    /// A materialized SQL-on-FHIR view (schema from its ViewDefinition, read
    /// from the files).
    View,
    /// A search index table `index/<kind>/<Type>` (schema fixed by its kind).
    Index,
    /// Deleted resources (schema `tombstones_schema`).
    Tombstones,
    /// The patients the snapshot's load touched (schema `touched_schema`;
    /// not shown to SQL).
    Touched,
}

/// The files of one table in one snapshot.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TableEntry {
    /// The table's kind (fixes its schema).
    pub kind: TableKind,
    /// Data files, relative to the warehouse root.
    pub files: Vec<DataFile>,
    /// Reference index tables only: the reference parameters whose Patient
    /// targets were, for every resource of the type, exactly its Patient
    /// compartment (checked by the load that wrote the table). A `_has`
    /// through one of them reads its inner clause's `patient` column instead
    /// of the type's reference rows. Empty: none known (also in tables
    /// written before this existed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub compartment_references: Vec<String>,
    /// View tables only: the resource type the view reads (what a login
    /// must be allowed to read to query it). `None` in views written
    /// before this was recorded: only logins that read every type see them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_type: Option<String>,
}

impl TableEntry {
    /// An entry of `kind` made of `files`.
    pub fn new(kind: TableKind, files: Vec<DataFile>) -> Self {
        Self {
            kind,
            files,
            compartment_references: Vec::new(),
            resource_type: None,
        }
    }

    /// A view table over resources of `resource_type`.
    pub fn view(files: Vec<DataFile>, resource_type: &str) -> Self {
        Self {
            resource_type: Some(resource_type.to_string()),
            ..Self::new(TableKind::View, files)
        }
    }

    /// Total rows over all files.
    pub fn rows(&self) -> u64 {
        self.files.iter().map(|f| f.rows).sum()
    }

    /// Total bytes over all files.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.bytes).sum()
    }
}

/// One immutable Parquet file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DataFile {
    /// Key relative to the warehouse root.
    pub path: String,
    /// Row count.
    pub rows: u64,
    /// Size in bytes.
    pub bytes: u64,
}

/// The manifest key (relative to the warehouse root) of `version`.
pub fn manifest_path(version: u64) -> String {
    format!("{MANIFEST_DIR}/v{version:020}.json")
}

/// The version number encoded in a manifest file name, if it is one.
pub fn parse_manifest_name(name: &str) -> Option<u64> {
    name.strip_prefix('v')?.strip_suffix(".json")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_names_round_trip() {
        assert_eq!(manifest_path(7), "_manifest/v00000000000000000007.json");
        assert_eq!(parse_manifest_name("v00000000000000000007.json"), Some(7));
        assert_eq!(parse_manifest_name("v7.tmp"), None);
    }
}
