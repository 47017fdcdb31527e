//! Operator approval of Group changes (`serve --group-approval manual`).
//! A Group job (create, update, PATCH, member operation) then waits: its
//! record says `awaiting approval` and nothing is computed or written. An
//! operator decides with `fhirlake groups approve|reject`, which writes a
//! decision object (`_server/approvals/<job>.json`) beside the job record
//! (never the record itself, which the server owns); the running server
//! picks decisions up (`Service::apply_approvals`, every second), runs an
//! approved job or fails a rejected one with the operator's reason, and
//! deletes the decision.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::group::{JOBS, Job, JobState};
use super::{JobError, JobFailure, now};
use crate::error::ErrorKind;
use crate::service::Service;
use crate::state::StateStore;

/// State kind of operators' decisions.
pub const APPROVALS: &str = "approvals";

/// The progress text of a job waiting for an operator.
pub const AWAITING_APPROVAL: &str = "awaiting approval";

/// Whether Group changes need an operator's approval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalMode {
    /// Applied as soon as computed.
    #[default]
    Auto,
    /// Applied once an operator approves.
    Manual,
}

/// Where a job stands with the operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Approval {
    /// Waiting for a decision.
    Pending,
    /// Approved: it runs (and resumes after a restart).
    Approved,
}

/// An operator's decision about a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    /// Run it.
    Approve,
    /// Fail it with `reason`.
    Reject {
        /// Told to the client.
        reason: String,
    },
}

/// A decision as stored for the server to apply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DecisionRecord {
    /// The job decided.
    pub job: String,
    /// What was decided.
    #[serde(flatten)]
    pub decision: Decision,
    /// When (RFC 3339).
    pub decided_at: String,
}

/// The Group jobs waiting for an operator, oldest first.
pub async fn pending_jobs(state: &StateStore) -> Result<Vec<Job>, JobError> {
    let mut pending = Vec::new();
    for id in state.list(JOBS).await? {
        if let Some(job) = state.get::<Job>(JOBS, &id).await?
            && job.approval == Some(Approval::Pending)
            && matches!(job.state, JobState::Running { .. })
        {
            pending.push(job);
        }
    }
    pending.sort_by(|a, b| a.created_at.cmp(&b.created_at));
    Ok(pending)
}

/// Records `decision` for the pending job `id` (a job id, or the id of a
/// Group with exactly one pending job). Returns the job decided.
pub async fn decide(state: &StateStore, id: &str, decision: Decision) -> Result<Job, JobError> {
    let pending = pending_jobs(state).await?;
    let mut matching: Vec<Job> = pending.iter().filter(|j| j.id == id).cloned().collect();
    if matching.is_empty() {
        matching = pending.into_iter().filter(|j| j.group_id == id).collect();
    }
    let job = match matching.len() {
        1 => matching.remove(0),
        0 => return Err(JobError::NotFound(format!("a pending job or Group '{id}'"))),
        n => {
            return Err(JobError::NotFound(format!(
                "one pending job for Group '{id}' ({n} are pending: name a job id)"
            )));
        }
    };
    let record = DecisionRecord {
        job: job.id.clone(),
        decision,
        decided_at: now(),
    };
    state.put(APPROVALS, &job.id, &record).await?;
    Ok(job)
}

impl Service {
    /// Applies the operators' decisions found in the state store, every
    /// second, forever.
    pub(crate) async fn approval_loop(self: Arc<Self>) {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if let Err(e) = self.apply_approvals().await {
                tracing::warn!(error = %e, "cannot apply approval decisions");
            }
        }
    }

    /// Applies each recorded decision to its job once, then deletes it.
    pub(crate) async fn apply_approvals(self: &Arc<Self>) -> Result<(), JobError> {
        for id in self.state.list(APPROVALS).await? {
            let Some(record) = self.state.get::<DecisionRecord>(APPROVALS, &id).await? else {
                continue;
            };
            let writes = self.groups.writes.lock().await;
            let job = self.state.get::<Job>(JOBS, &record.job).await?;
            match job {
                Some(mut job) if job.approval == Some(Approval::Pending) => {
                    job.updated_at = now();
                    match &record.decision {
                        Decision::Approve => {
                            job.approval = Some(Approval::Approved);
                            job.state = JobState::Running {
                                progress: "computing membership".into(),
                            };
                        }
                        Decision::Reject { reason } => {
                            job.state = JobState::Failed(JobFailure::new(
                                ErrorKind::Forbidden,
                                format!("an operator rejected this change: {reason}"),
                            ));
                        }
                    }
                    self.state.put(JOBS, &job.id, &job).await?;
                    tracing::info!(target: "fhirlake::audit", event = "group_change_decided", job = %job.id, group = %job.group_id, decision = ?record.decision);
                    drop(writes);
                    if job.approval == Some(Approval::Approved) {
                        self.spawn_group_job(job, Duration::ZERO).await;
                    }
                }
                // Cancelled, already decided, or gone: nothing to apply.
                _ => drop(writes),
            }
            self.state.delete(APPROVALS, &id).await?;
        }
        Ok(())
    }
}
