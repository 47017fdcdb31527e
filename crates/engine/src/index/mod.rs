//! The search index: for every search parameter of every loaded resource, the
//! values its FHIRPath expression yields, normalised per parameter type
//! (`search::extract`), in one columnar table per (value kind, resource type).
//!
//! Layout (see docs/architecture.md, "Search index"): manifest tables
//! `index/<kind>/<Type>` (`index/token/Observation`), every row
//! `(resource_type, param, <kind columns>, resource_id, patient)`. `patient`
//! denormalises the Patient compartment into the index (one row per patient;
//! null when the resource is in none), so a cohort needs no join with the
//! resource tables. Files are written as sorted runs (by param and value), so
//! Parquet row-group and page statistics prune selective filters.

pub mod buffer;
pub mod compact;
pub mod rebuild;
pub mod writer;

pub use crate::warehouse::index_tables::{
    INDEX_TABLE_PREFIX, IndexKind, columns, index_table_key, parse_index_table_key,
};

/// Open ends of Periods are stored as these instants (0001-01-01 and the last
/// microsecond of 9999), so every stored value is a printable timestamp and
/// comparisons stay plain.
pub const OPEN_LOW: i64 = -62_135_596_800_000_000;
/// See [`OPEN_LOW`].
pub const OPEN_HIGH: i64 = 253_402_300_799_999_999;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        let key = index_table_key(IndexKind::Quantity, "Observation");
        assert_eq!(key, "index/quantity/Observation");
        assert_eq!(parse_index_table_key(&key), Some((IndexKind::Quantity, "Observation")));
        assert_eq!(parse_index_table_key("views/x"), None);
        for kind in IndexKind::ALL {
            assert_eq!(kind.schema().field(1).name(), columns::PARAM);
        }
    }

    #[test]
    fn open_ends_are_year_1_and_9999() {
        let low = chrono::DateTime::from_timestamp_micros(OPEN_LOW).unwrap();
        let high = chrono::DateTime::from_timestamp_micros(OPEN_HIGH).unwrap();
        assert_eq!(low.to_rfc3339(), "0001-01-01T00:00:00+00:00");
        assert_eq!(
            high.format("%Y-%m-%dT%H:%M:%S%.6f").to_string(),
            "9999-12-31T23:59:59.999999"
        );
    }
}
