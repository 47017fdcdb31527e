//! SQL-on-FHIR v2 ViewDefinitions: validation ([`ViewDefinition::from_json`]),
//! row semantics ([`ViewRunner`]) and Arrow output ([`view_schema`],
//! [`rows_to_batch`]).

mod arrow;
pub mod catalog;
mod flat;
mod model;
mod run;

pub use arrow::{ColumnBuilder, Typed, append_rows, finish_batch, rows_to_batch, timestamp_type, view_schema};
pub use catalog::ViewCatalog;
pub use model::{Column, Iteration, Select, ViewDefinition};
pub use run::{Cell, CellValue, RawCell, RawRow, Row, ViewRunner, ViewVariables};

use crate::fhirpath::FhirPathError;

/// Errors of view validation and evaluation.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    /// The ViewDefinition breaks a rule.
    #[error("invalid ViewDefinition: {at} {message}")]
    Invalid {
        /// Where in the ViewDefinition (`select[0].column[1]`).
        at: String,
        /// What is wrong.
        message: String,
    },
    /// A FHIRPath failed to parse or evaluate.
    #[error("{at}: {source}")]
    Path {
        /// Where the path is.
        at: String,
        /// The FHIRPath error.
        #[source]
        source: FhirPathError,
    },
    /// A non-collection column produced several values.
    #[error("column '{column}': path '{path}' returned {count} values; set \"collection\": true to keep them all")]
    MultipleValues {
        /// The column.
        column: String,
        /// Its path.
        path: String,
        /// How many values.
        count: usize,
    },
    /// A `where` path gave something other than a boolean.
    #[error("where path '{path}' must return a boolean, got {found}")]
    NotBoolean {
        /// The path.
        path: String,
        /// What it returned.
        found: String,
    },
    /// A problem in a ViewDefinition file.
    #[error("view file {file}: {source}")]
    InFile {
        /// The file.
        file: String,
        /// The problem.
        #[source]
        source: Box<ViewError>,
    },
    /// A value does not fit its column's type.
    #[error("column '{column}': value {value} is not a {expected}")]
    ColumnType {
        /// The column.
        column: String,
        /// The value.
        value: String,
        /// The column's Arrow type.
        expected: String,
    },
}

impl ViewError {
    pub(crate) fn invalid(at: &str, message: &str) -> Self {
        ViewError::Invalid {
            at: at.to_string(),
            message: message.to_string(),
        }
    }
}
