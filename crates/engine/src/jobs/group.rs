//! Group create and update jobs (`POST`/`PUT /Group` with `Prefer:
//! respond-async`): the record, running, polling, cancelling, resuming.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::approval::{AWAITING_APPROVAL, Approval, ApprovalMode};
use super::{JobError, JobFailure, new_id, now};
use crate::export::Progress;
use crate::group::{CohortRequest, Computed, GroupError, MemberChange, StoredGroup};
use crate::service::Service;
use crate::store::StoreError;

/// State kind of stored Group jobs (`_server/jobs/<id>.json`).
pub const JOBS: &str = "jobs";

/// What a job does.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    /// `POST /Group` with `Prefer: respond-async`.
    CreateGroup,
    /// `PUT /Group/{id}` with `Prefer: respond-async`.
    UpdateGroup,
    /// `$member-add` or `$member-remove` with `Prefer: respond-async`.
    ChangeMembers,
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
    /// The Group was written.
    Succeeded {
        /// `Group/<id>/_history/<v>`.
        location: String,
        /// Member entries left out as unknown (`Prefer: handling=lenient`).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        skipped_members: Vec<String>,
    },
    /// It failed.
    Failed(JobFailure),
    /// A finished job as fhirlake 0.1's server recorded it (read, never
    /// written): the HTTP status, and the location or OperationOutcome.
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
    /// The validated request (a member operation's: the Group's request
    /// when it was accepted, with its `If-Match`).
    pub request: CohortRequest,
    /// A member operation's resolved change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<MemberChange>,
    /// Where it is.
    pub state: JobState,
    /// RFC 3339 times.
    pub created_at: String,
    /// Last change.
    pub updated_at: String,
    /// The client that started it (`None` without authorization).
    #[serde(default)]
    pub owner: Option<String>,
    /// Where it stands with the operator (`None`: no approval needed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<Approval>,
}

impl Service {
    /// Accepts a job that creates or updates Group `group_id` from
    /// `request`: persisted, then run in the background.
    pub async fn start_group_job(
        self: &Arc<Self>,
        kind: JobKind,
        group_id: String,
        request: CohortRequest,
        change: Option<MemberChange>,
        owner: Option<String>,
    ) -> Result<Job, StoreError> {
        let created = now();
        let manual = self.options.group_approval == ApprovalMode::Manual;
        let job = Job {
            id: new_id(),
            kind,
            group_id,
            request,
            change,
            state: JobState::Running {
                progress: if manual {
                    AWAITING_APPROVAL
                } else {
                    "computing membership"
                }
                .into(),
            },
            created_at: created.clone(),
            updated_at: created,
            owner,
            approval: manual.then_some(Approval::Pending),
        };
        self.state.put(JOBS, &job.id, &job).await?;
        if manual {
            tracing::info!(target: "fhirlake::audit", event = "group_change_awaiting_approval", job = %job.id, group = %job.group_id);
        } else {
            self.spawn_group_job(job.clone(), self.options.job_delay).await;
        }
        Ok(job)
    }

    pub(crate) async fn spawn_group_job(self: &Arc<Self>, job: Job, delay: Duration) {
        let id = job.id.clone();
        let service = self.clone();
        let progress = Progress::default();
        let reported = progress.clone();
        self.group_jobs
            .spawn(&id, progress, async move {
                service.run_group_job(job, delay, reported).await
            })
            .await;
    }

    async fn run_group_job(self: Arc<Self>, mut job: Job, delay: Duration, progress: Progress) {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        // A member change applies to the membership found under the lock.
        let computed = match job.change {
            Some(_) => None,
            None => Some(self.compute_job(&job.request).await),
        };
        let _writes = self.groups.writes.lock().await;
        // A cancel that won the lock leaves the job cancelled and the Group unwritten.
        if let Ok(Some(current)) = self.state.get::<Job>(JOBS, &job.id).await
            && current.state == JobState::Cancelled
        {
            return;
        }
        let written = self.write_job_group(&job, computed, &progress).await;
        job.state = match written {
            Ok((stored, skipped_members)) => JobState::Succeeded {
                location: format!("Group/{}/_history/{}", stored.id, stored.version),
                skipped_members,
            },
            Err(e) => JobState::Failed(JobFailure::of(&e)),
        };
        job.updated_at = now();
        if let Err(e) = self.state.put(JOBS, &job.id, &job).await {
            tracing::error!(job = %job.id, error = %e, "cannot record the job's outcome");
        }
        self.group_jobs.finished(&job.id).await;
        tracing::info!(job = %job.id, group = %job.group_id, "job finished");
    }

    /// Writes the Group of `job` (the caller holds the Group-write lock):
    /// its member change, or the membership `computed` for its request.
    /// Returns it with the member entries skipped as unknown.
    async fn write_job_group(
        &self,
        job: &Job,
        computed: Option<Result<Computed, GroupError>>,
        progress: &Progress,
    ) -> Result<(StoredGroup, Vec<String>), GroupError> {
        let groups = &self.groups;
        if let Some(change) = &job.change {
            let stored = groups
                .commit_change(&job.group_id, change, job.request.expected_version, progress)
                .await?;
            return Ok((stored, Vec::new()));
        }
        let computed = computed.unwrap_or_else(|| Err(GroupError::invalid("the job computed no membership")))?;
        let stored = groups
            .write_group(
                &job.group_id,
                &job.request,
                computed.entries,
                computed.warehouse_version,
                job.owner.clone(),
                progress,
            )
            .await?;
        Ok((stored, computed.skipped))
    }

    /// The membership of a create or update job's request (its on-demand
    /// base Groups computed first).
    async fn compute_job(&self, request: &CohortRequest) -> Result<Computed, GroupError> {
        self.groups.refresh_on_demand_bases(request).await?;
        crate::group::compute(&self.cohorts, request).await
    }

    /// Group job `id`, when `visible` says its owner may see it.
    pub async fn group_job(&self, id: &str, visible: impl Fn(Option<&str>) -> bool) -> Result<Job, JobError> {
        self.state
            .get::<Job>(JOBS, id)
            .await?
            .filter(|j| visible(j.owner.as_deref()))
            .ok_or_else(|| JobError::NotFound(format!("job '{id}'")))
    }

    /// Records a poll of running job `id`; refused when sooner than half of
    /// the advised interval after the previous one. Returns the running
    /// task's progress text (empty before it reports any).
    pub async fn poll_group_job(&self, id: &str) -> Result<String, JobError> {
        match self.group_jobs.poll(id, self.options.retry_after, true).await {
            Some((progress, _)) => Ok(progress),
            None => Err(JobError::PolledTooOften(self.options.retry_after)),
        }
    }

    /// Cancels job `id` (visible to its owner only): its task stops and
    /// the Group is not written; later polls find it cancelled.
    pub async fn cancel_group_job(&self, id: &str, visible: impl Fn(Option<&str>) -> bool) -> Result<(), JobError> {
        let _writes = self.groups.writes.lock().await;
        let mut job = self.group_job(id, visible).await?;
        if job.state == JobState::Cancelled {
            return Err(JobError::AlreadyCancelled(format!("job '{id}'")));
        }
        self.group_jobs.abort(id).await;
        self.group_jobs.remove(id).await;
        job.state = JobState::Cancelled;
        job.updated_at = now();
        self.state.put(JOBS, id, &job).await?;
        Ok(())
    }

    /// Resumes the Group jobs an earlier process left running.
    pub(crate) async fn resume_group_jobs(self: &Arc<Self>) -> Result<(), StoreError> {
        for id in self.state.list(JOBS).await? {
            let Some(job) = self.state.get::<Job>(JOBS, &id).await? else {
                continue;
            };
            // A job waiting for an operator runs when approved.
            if matches!(job.state, JobState::Running { .. }) && job.approval != Some(Approval::Pending) {
                tracing::info!(job = %id, "resuming a job interrupted by a restart");
                self.spawn_group_job(job, Duration::ZERO).await;
            }
        }
        Ok(())
    }
}
