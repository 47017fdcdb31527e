//! Bulk `$export`: the resources of a system, of all patients, or of a
//! Group's members, filtered by the kick-off parameters and written as
//! NDJSON or Parquet files into an object store.
//!
//! One streaming pipeline per resource type and scan partition: the
//! resource table scan (with `_since`/`_until` pushed into it, and
//! `_typeFilter` as a semi join with the ids the cohort compiler finds in
//! the search index) → the membership test on each row's compartment
//! patients → `_elements` → the file sink. Memory is a few batches per
//! partition plus the member id set, whatever the size of the data.

pub mod elements;
pub mod manifest;
pub mod organized;
pub mod params;
pub mod population;
pub mod run;
pub mod sink;

use std::sync::{Arc, Mutex};

pub use params::{
    ExportLevel, ExportRequest, ExportRequestBuilder, OutputFormat, ParsedExport, pairs_from_parameters, parse_export,
};
pub use population::Population;
pub use run::{ExportOutput, ExportSettings, ExportTarget, run_export};
pub use sink::ExportedFile;

/// Types outside the Patient compartment that compartment resources point
/// to; a Patient or Group export adds the ones its resources reference, so
/// a receiver can resolve those references.
pub const CONTEXT_TYPES: &[&str] = &[
    "Practitioner",
    "PractitionerRole",
    "Organization",
    "Location",
    "Medication",
];

/// Errors of an export.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// A kick-off parameter's value (or the request body) is invalid.
    #[error("{reason}")]
    Invalid {
        /// The parameter it is about (`_since`, `_typeFilter`, …;
        /// `Parameters` for the POST body as a whole).
        parameter: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A parameter (or value) this server does not support.
    #[error("{reason}")]
    Unsupported {
        /// The parameter it is about.
        parameter: String,
        /// What is not supported.
        reason: String,
    },
    /// Resolving the Group failed (it does not exist, or its members
    /// cannot be read).
    #[error(transparent)]
    Group(#[from] crate::group::GroupError),
    /// `patient` names patients outside the export's population.
    #[error("not members of this export's population: {}", patients.iter().map(|p| format!("Patient/{p}")).collect::<Vec<_>>().join(", "))]
    NotMembers {
        /// The Patient ids asked for that are not members.
        patients: Vec<String>,
    },
    /// The search index the request needs is missing.
    #[error("{0} needs the search index, and the warehouse was loaded with --no-index")]
    NoIndex(&'static str),
    /// Nothing has been loaded.
    #[error("the warehouse is empty: load data first (fhirlake load …)")]
    EmptyWarehouse,
    /// The bundled definitions are unusable.
    #[error("FHIR definitions unavailable: {0}")]
    Definitions(#[source] &'static crate::fhir::DefinitionError),
    /// Compiling a `_typeFilter` or resolving a Group failed.
    #[error(transparent)]
    Cohort(#[from] crate::cohort::CohortError),
    /// Reading the warehouse failed.
    #[error(transparent)]
    Warehouse(#[from] crate::warehouse::WarehouseError),
    /// Reading server state failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// Running the scan failed.
    #[error("export query failed: {0}")]
    DataFusion(#[from] datafusion::error::DataFusionError),
    /// Writing an output file failed.
    #[error("writing {path}: {source}")]
    Write {
        /// The file's URL.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Encoding Parquet failed.
    #[error("writing {path}: {source}")]
    Parquet {
        /// The file's URL.
        path: String,
        /// Why.
        #[source]
        source: datafusion::parquet::errors::ParquetError,
    },
    /// A worker task panicked or was cancelled.
    #[error("export task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
    /// A table of the snapshot being exported is not in it (a damaged
    /// manifest).
    #[error("table {resource_type} vanished from the snapshot")]
    TableVanished {
        /// The table's resource type.
        resource_type: String,
    },
    /// As many exports as allowed run already.
    #[error("{running} exports are running (the limit is {limit}); retry later")]
    TooMany {
        /// Running now.
        running: usize,
        /// The limit.
        limit: usize,
        /// Seconds to wait before retrying.
        retry_after: u64,
    },
}

impl ExportError {
    /// `parameter` is invalid: `reason`.
    pub fn invalid(parameter: &str, reason: impl Into<String>) -> Self {
        Self::Invalid {
            parameter: parameter.to_string(),
            reason: reason.into(),
        }
    }

    /// `parameter` (or its value) is not supported: `reason`.
    pub fn unsupported(parameter: &str, reason: impl Into<String>) -> Self {
        Self::Unsupported {
            parameter: parameter.to_string(),
            reason: reason.into(),
        }
    }
}

impl crate::error::HasKind for ExportError {
    fn kind(&self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind;
        match self {
            Self::Invalid { .. } | Self::NotMembers { .. } => ErrorKind::Invalid,
            Self::Unsupported { .. } | Self::NoIndex(_) => ErrorKind::NotSupported,
            Self::EmptyWarehouse => ErrorKind::Transient,
            Self::Group(e) => e.kind(),
            Self::Cohort(e) => e.kind(),
            Self::Warehouse(e) => e.kind(),
            Self::DataFusion(e) => crate::warehouse::datafusion_kind(e),
            // Storing the export's files failed: the server's fault, even
            // when the store says "not found" or "forbidden".
            Self::Store(_) | Self::Write { .. } | Self::Parquet { .. } => ErrorKind::Internal,
            Self::Definitions(_) | Self::Task(_) | Self::TableVanished { .. } => ErrorKind::Internal,
            Self::TooMany { .. } => ErrorKind::TooMany,
        }
    }

    fn retry_after(&self) -> Option<u64> {
        match self {
            Self::TooMany { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    fn is_private(&self) -> bool {
        match self {
            Self::Store(_) | Self::Write { .. } | Self::Parquet { .. } => true,
            Self::Group(e) => e.is_private(),
            Self::Cohort(e) => e.is_private(),
            Self::Warehouse(e) => e.is_private(),
            _ => false,
        }
    }
}

/// What a running export shares with its pollers: a short progress text
/// and the output files finished so far (for partial manifests).
#[derive(Debug, Clone, Default)]
pub struct Progress {
    text: Arc<Mutex<String>>,
    finished: Arc<Mutex<Vec<ExportedFile>>>,
}

impl Progress {
    /// Replaces the text.
    pub fn set(&self, text: impl Into<String>) {
        if let Ok(mut guard) = self.text.lock() {
            *guard = text.into();
        }
    }

    /// The current text.
    pub fn get(&self) -> String {
        self.text.lock().map(|g| g.clone()).unwrap_or_default()
    }

    /// Records complete, downloadable output files.
    pub fn add_finished(&self, files: &[ExportedFile]) {
        if let Ok(mut guard) = self.finished.lock() {
            guard.extend_from_slice(files);
        }
    }

    /// The output files complete so far, in completion order.
    pub fn finished(&self) -> Vec<ExportedFile> {
        self.finished.lock().map(|g| g.clone()).unwrap_or_default()
    }
}
