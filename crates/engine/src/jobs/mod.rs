//! Async jobs (the FHIR asynchronous request pattern): a job is persisted
//! in the state store when accepted, runs as a task of this process, and
//! records its outcome; pollers read the record. Jobs found running at
//! start-up (the process died) are resumed. Two kinds share this model:
//! Group creates and updates ([`group`]) and exports ([`export`]).
//!
//! Outcomes are recorded as an [`ErrorKind`] and a message, never as a
//! front's status code: each front decides how a kind is answered.

pub mod approval;
pub mod export;
pub mod group;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use crate::service::EXPORT_FILES;
pub use crate::state::{new_id, now};
pub use export::{EXPORTS, ExportJob, ExportKickoff, ExportPage, ExportRun, ExportState, execute};
pub use group::{JOBS, Job, JobKind, JobState};

use crate::error::{ErrorKind, HasKind};
use crate::store::StoreError;

/// Aborts a task when dropped (so cancelling a job's task cancels the
/// tasks it started).
pub struct AbortOnDrop(pub tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Why a job failed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobFailure {
    /// What kind of failure it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<ErrorKind>,
    /// What went wrong, for a person.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Records written before the engine recorded kinds (fhirlake 0.1's
    /// server) carry the HTTP status they were answered with instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// The OperationOutcome such a record was answered with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Value>,
}

impl JobFailure {
    /// The failure `error` describes (its message is kept only when it
    /// names no server-side places).
    pub fn of<E: HasKind>(error: &E) -> Self {
        Self::new(error.kind(), error.public_message())
    }

    /// A failure of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind: Some(kind),
            message: Some(message.into()),
            status: None,
            outcome: None,
        }
    }
}

/// Errors of addressing a job.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// No such job (or not the caller's: its existence does not leak).
    #[error("{0} does not exist")]
    NotFound(String),
    /// The job was cancelled.
    #[error("{0} was cancelled")]
    Cancelled(String),
    /// The job was already cancelled.
    #[error("{0} was already cancelled")]
    AlreadyCancelled(String),
    /// A finished export's files were deleted.
    #[error("{0} has expired and its files were deleted")]
    Expired(String),
    /// An export has no such manifest page or file.
    #[error("{what} has no {item}")]
    NoSuchPart {
        /// The export.
        what: String,
        /// `manifest page 3`, `file 'x.ndjson'`.
        item: String,
    },
    /// Polled sooner than the advised interval.
    #[error("polled too often: wait {0} s between polls (Retry-After)")]
    PolledTooOften(u64),
    /// Reading or writing job records failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl HasKind for JobError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::NotFound(_)
            | Self::Cancelled(_)
            | Self::AlreadyCancelled(_)
            | Self::Expired(_)
            | Self::NoSuchPart { .. } => ErrorKind::NotFound,
            Self::PolledTooOften(_) => ErrorKind::TooMany,
            Self::Store(e) => e.kind(),
        }
    }

    fn is_private(&self) -> bool {
        matches!(self, Self::Store(_))
    }

    fn retry_after(&self) -> Option<u64> {
        match self {
            Self::PolledTooOften(seconds) => Some(*seconds),
            _ => None,
        }
    }
}
