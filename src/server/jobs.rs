//! Async jobs (FHIR async pattern): a job is persisted when accepted, runs
//! in the background, and records its outcome; the polling URL answers from
//! the record. Jobs found running at start-up (the process died) are resumed.

use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::cohort_group::CohortRequest;

/// State kind of stored jobs.
pub const JOBS: &str = "jobs";

/// What a job does.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    /// `POST /Group` with `Prefer: respond-async`.
    CreateGroup,
    /// `PUT /Group/{id}` with `Prefer: respond-async`.
    UpdateGroup,
}

/// Where a job is.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum JobState {
    /// Accepted, not finished.
    Running {
        /// Short progress text (`X-Progress`).
        progress: String,
    },
    /// Finished: the HTTP status of the create/update, and its location or
    /// OperationOutcome.
    Completed {
        /// `201`, `200`, or an error status.
        status: u16,
        /// `Group/<id>/_history/<v>` on success.
        location: Option<String>,
        /// The OperationOutcome on failure.
        outcome: Option<Value>,
    },
    /// Cancelled by `DELETE` on the polling URL.
    Cancelled,
}

/// A persisted job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    /// Id (the last segment of the polling URL).
    pub id: String,
    /// What it does.
    pub kind: JobKind,
    /// The Group it creates or updates.
    pub group_id: String,
    /// The validated request.
    pub request: CohortRequest,
    /// Where it is.
    pub state: JobState,
    /// RFC 3339 times.
    pub created_at: String,
    /// Last change.
    pub updated_at: String,
    /// The client that started it (`None` without authorization).
    #[serde(default)]
    pub owner: Option<String>,
}

/// In-memory facts about a job of this process.
pub struct JobRuntime {
    /// Aborts the background task.
    pub abort: Option<tokio::task::AbortHandle>,
    /// When the client last polled (for 429).
    pub last_poll: Option<Instant>,
}
