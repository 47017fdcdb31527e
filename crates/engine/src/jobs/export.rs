//! Export jobs (`$export` kick-off → status URL → files): the record,
//! running, partial manifest pages, cancelling, resuming after a restart,
//! expiry, and the files' lifecycle in the export store.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::{GetOptions, GetRange, ObjectStoreExt};
use serde::{Deserialize, Serialize};

use super::{AbortOnDrop, JobError, JobFailure, new_id, now};
use crate::cohort::CohortEngine;
use crate::error::ErrorKind;
use crate::export::ExportLevel;
use crate::export::{
    ExportError, ExportOutput, ExportRequest, ExportSettings, ExportTarget, ExportedFile, Progress, run_export,
};
use crate::group::RefreshTrigger;
use crate::service::Service;
use crate::store::StoreError;
use crate::warehouse::Warehouse;

/// State kind of stored export jobs (`_server/exports/<id>.json`).
pub const EXPORTS: &str = "exports";

/// Where an export job is.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ExportState {
    /// Accepted, not finished.
    Running,
    /// Finished: its files.
    Completed {
        /// Resource files.
        output: Vec<ExportedFile>,
        /// OperationOutcome files.
        error: Vec<ExportedFile>,
        /// Deletion Bundles.
        deleted: Vec<ExportedFile>,
        /// When the files are deleted (RFC 3339).
        expires_at: String,
    },
    /// Failed.
    Failed(JobFailure),
    /// Cancelled by `DELETE` (its files purged).
    Cancelled,
}

/// A persisted export job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExportJob {
    /// Id (last segment of the status URL).
    pub id: String,
    /// The validated request.
    pub request: ExportRequest,
    /// The kick-off URL (without the body of a POST).
    pub request_url: String,
    /// Parameters ignored under `Prefer: handling=lenient`.
    pub ignored: Vec<String>,
    /// The warehouse version exported.
    pub snapshot_version: u64,
    /// `transactionTime` of the manifest.
    pub transaction_time: String,
    /// `Prefer: respond-async,separate-export-status`.
    pub separate_status: bool,
    /// Where it is.
    pub state: ExportState,
    /// Manifest pages published under `allowPartialManifests` (files per
    /// page; the last page of a completed job holds the rest).
    #[serde(default)]
    pub pages: Vec<Vec<ExportedFile>>,
    /// RFC 3339 times.
    pub created_at: String,
    /// Last change.
    pub updated_at: String,
    /// The client that kicked it off (`None` without authorization).
    #[serde(default)]
    pub owner: Option<String>,
}

impl ExportJob {
    /// Whether a completed job's files are past their expiry.
    pub fn expired(&self) -> bool {
        match &self.state {
            ExportState::Completed { expires_at, .. } => {
                chrono::DateTime::parse_from_rfc3339(expires_at).is_ok_and(|t| t < chrono::Utc::now())
            }
            _ => false,
        }
    }

    /// Whether it failed longer than `retention` ago (failed jobs are kept
    /// for their pollers as long as completed ones).
    fn failed_long_ago(&self, retention: Duration) -> bool {
        matches!(self.state, ExportState::Failed(_))
            && chrono::DateTime::parse_from_rfc3339(&self.updated_at).is_ok_and(|t| {
                chrono::Utc::now()
                    .signed_duration_since(t)
                    .to_std()
                    .is_ok_and(|age| age > retention)
            })
    }

    /// The files a client may download now: every file of a completed
    /// job, the files of published pages of a running one.
    pub fn downloadable(&self) -> Vec<&ExportedFile> {
        match &self.state {
            ExportState::Completed {
                output, error, deleted, ..
            } => output.iter().chain(error).chain(deleted).collect(),
            // Files of published partial manifest pages are complete.
            ExportState::Running => self.pages.iter().flatten().collect(),
            _ => Vec::new(),
        }
    }
}

/// A kick-off the front accepted: the request and how it was made.
pub struct ExportKickoff {
    /// The validated (and authorized) request.
    pub request: ExportRequest,
    /// Parameters set aside under `Prefer: handling=lenient`.
    pub ignored: Vec<String>,
    /// The kick-off URL (for the manifest's `request`).
    pub request_url: String,
    /// `Prefer: respond-async,separate-export-status`.
    pub separate_status: bool,
    /// The client that kicked it off.
    pub owner: Option<String>,
}

/// What a status poll of a running export sees.
pub struct ExportPage {
    /// The job, with its published pages.
    pub job: ExportJob,
    /// The progress text.
    pub progress: String,
    /// The page asked for, when it is published (1-based).
    pub page: Option<usize>,
}

impl Service {
    /// Checks `kickoff` against the data (a bad Group, patient or filter
    /// fails now, not in the job), then persists the job and runs it in
    /// the background.
    pub async fn start_export(self: &Arc<Self>, kickoff: ExportKickoff) -> Result<ExportJob, ExportError> {
        let running = self.export_jobs.running().await;
        if running >= self.options.max_exports {
            return Err(ExportError::TooMany {
                running,
                limit: self.options.max_exports,
                retry_after: self.options.retry_after.max(5),
            });
        }
        // Taken before the snapshot is read, so everything committed up to it
        // is in the export (transactionTime SHALL cover it).
        let started = chrono::Utc::now();
        let transaction_time = started.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let mut request = kickoff.request;
        // Roster membership is judged at transactionTime, on resume too.
        request.members_at = Some(started.timestamp_micros());
        // A stored Group is exported as its current version, on resume too.
        // (An on-demand Group is computed now, and exported as the version
        // that wrote.)
        if let ExportLevel::Group(id) = &request.level {
            self.groups.refresh_if_on_demand(id, RefreshTrigger::Export).await?;
            request.group_version = self.groups.stored_group(id).await?.map(|g| g.version);
        }
        let engine = self.cohorts.get().await?;
        check_against_data(&engine, &request).await?;
        let created = now();
        let job = ExportJob {
            id: new_id(),
            request,
            request_url: kickoff.request_url,
            ignored: kickoff.ignored,
            snapshot_version: engine.version(),
            transaction_time,
            separate_status: kickoff.separate_status,
            state: ExportState::Running,
            pages: Vec::new(),
            created_at: created.clone(),
            updated_at: created,
            owner: kickoff.owner,
        };
        self.state.put(EXPORTS, &job.id, &job).await?;
        tracing::info!(target: "fhirlake::audit", event = "export_started", client_id = job.owner.as_deref().unwrap_or("-"), export = %job.id, url = %job.request_url);
        self.spawn_export(job.clone(), self.options.job_delay).await;
        Ok(job)
    }

    async fn spawn_export(self: &Arc<Self>, job: ExportJob, delay: Duration) {
        let progress = Progress::default();
        progress.set("queued");
        let id = job.id.clone();
        let (service, for_task) = (self.clone(), progress.clone());
        self.export_jobs
            .spawn(&id, progress, async move {
                service.run_export_job(job, delay, for_task).await
            })
            .await;
    }

    /// Runs the export pipeline for `job` into the export store.
    async fn export_outcome(&self, job: &ExportJob, progress: &Progress) -> Result<ExportOutput, ExportError> {
        let target = ExportTarget {
            location: self.export_files.clone(),
            dir: job.id.clone(),
        };
        let settings = ExportSettings {
            max_file_bytes: self.options.export_file_bytes,
            type_delay: self.options.export_type_delay,
        };
        let run = ExportRun {
            snapshot_version: job.snapshot_version,
            request: job.request.clone(),
            target,
            settings,
            notes: job.ignored.clone(),
        };
        execute(&self.warehouse, run, progress).await
    }

    async fn run_export_job(self: Arc<Self>, mut job: ExportJob, delay: Duration, progress: Progress) {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let started = Instant::now();
        let result = self.export_outcome(&job, &progress).await;
        let _writes = self.groups.writes.lock().await;
        match self.state.get::<ExportJob>(EXPORTS, &job.id).await {
            Ok(Some(current)) if current.state == ExportState::Cancelled => {
                self.purge_export_files(&job.id).await;
                return;
            }
            // Pollers may have published partial manifest pages meanwhile.
            Ok(Some(current)) => job.pages = current.pages,
            _ => {}
        }
        job.state = match result {
            Ok(output) => {
                tracing::info!(job = %job.id, resources = output.resources, bytes = output.bytes,
                    seconds = started.elapsed().as_secs_f64(), "export finished");
                self.completed(&mut job, output)
            }
            Err(e) => {
                tracing::error!(job = %job.id, error = %e, "export failed");
                self.purge_export_files(&job.id).await;
                ExportState::Failed(JobFailure::of(&e))
            }
        };
        job.updated_at = now();
        if !self.record(&job).await {
            self.purge_export_files(&job.id).await;
        }
        self.export_jobs.finished(&job.id).await;
    }

    /// The completed state of `job` with `output`; under partial
    /// manifests, the last page gets every file no earlier page listed.
    fn completed(&self, job: &mut ExportJob, output: ExportOutput) -> ExportState {
        let expires = chrono::Utc::now()
            + chrono::Duration::from_std(self.options.export_retention).unwrap_or(chrono::Duration::hours(1));
        if !job.pages.is_empty() {
            let published: HashSet<&str> = job.pages.iter().flatten().map(|f| f.name.as_str()).collect();
            let rest: Vec<ExportedFile> = output
                .output
                .iter()
                .filter(|f| !published.contains(f.name.as_str()))
                .cloned()
                .collect();
            job.pages.push(rest);
        }
        ExportState::Completed {
            output: output.output,
            error: output.error,
            deleted: output.deleted,
            expires_at: expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        }
    }

    /// Records `job`'s outcome, retrying a failing store twice; whether it
    /// was recorded.
    async fn record(&self, job: &ExportJob) -> bool {
        for attempt in 0..3 {
            match self.state.put(EXPORTS, &job.id, job).await {
                Ok(()) => return true,
                Err(e) => {
                    tracing::error!(job = %job.id, attempt, error = %e, "cannot record the export's outcome");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        false
    }

    /// Export `id`, when `visible` says its owner may see it (others get
    /// "does not exist": a job's existence does not leak); cancelled and
    /// expired exports are gone.
    pub async fn export_job(&self, id: &str, visible: impl Fn(Option<&str>) -> bool) -> Result<ExportJob, JobError> {
        let what = || format!("export '{id}'");
        match self
            .state
            .get::<ExportJob>(EXPORTS, id)
            .await?
            .filter(|j| visible(j.owner.as_deref()))
        {
            None => Err(JobError::NotFound(what())),
            Some(job) if job.state == ExportState::Cancelled => Err(JobError::Cancelled(what())),
            Some(job) if job.expired() => Err(JobError::Expired(what())),
            Some(job) => Ok(job),
        }
    }

    /// A status poll of running export `job` for manifest `page` (1 when
    /// not paging): refused when the first page is polled too soon; under
    /// `allowPartialManifests`, asking for the newest page (or the first)
    /// publishes the files finished since the last page. Published pages
    /// never change afterwards except by gaining a `next` link.
    pub async fn poll_export(&self, job: ExportJob, page: usize) -> Result<ExportPage, JobError> {
        // Following a `next` link right away is not over-polling.
        let (progress, finished) = self
            .export_jobs
            .poll(&job.id, self.options.retry_after, page == 1)
            .await
            .ok_or(JobError::PolledTooOften(self.options.retry_after))?;
        let progress = if progress.is_empty() {
            "in progress".to_string()
        } else {
            progress
        };
        if !job.request.allow_partial_manifests {
            return Ok(ExportPage {
                job,
                progress,
                page: None,
            });
        }
        let _writes = self.groups.writes.lock().await;
        let mut job = match self.state.get::<ExportJob>(EXPORTS, &job.id).await? {
            Some(current) if current.state == ExportState::Running => current,
            _ => {
                return Ok(ExportPage {
                    job,
                    progress,
                    page: None,
                });
            }
        };
        let published: HashSet<&str> = job.pages.iter().flatten().map(|f| f.name.as_str()).collect();
        let fresh: Vec<ExportedFile> = finished
            .into_iter()
            .filter(|f| !published.contains(f.name.as_str()))
            .collect();
        if !fresh.is_empty() && page >= job.pages.len() && page <= job.pages.len() + 1 {
            job.pages.push(fresh);
            job.updated_at = now();
            self.state.put(EXPORTS, &job.id, &job).await?;
        }
        let page = (page >= 1 && page <= job.pages.len()).then_some(page);
        Ok(ExportPage { job, progress, page })
    }

    /// Cancels a running export or deletes a finished one (visible to its
    /// owner only); its files are purged and later polls find it cancelled.
    pub async fn cancel_export(
        self: &Arc<Self>,
        id: &str,
        visible: impl Fn(Option<&str>) -> bool,
    ) -> Result<(), JobError> {
        let _writes = self.groups.writes.lock().await;
        let mut job = self.export_job(id, visible).await?;
        tracing::info!(target: "fhirlake::audit", event = "export_deleted", client_id = job.owner.as_deref().unwrap_or("-"), export = %id);
        self.export_jobs.abort(id).await;
        job.state = ExportState::Cancelled;
        job.updated_at = now();
        self.state.put(EXPORTS, id, &job).await?;
        self.purge_export_files(id).await;
        // An aborted upload may still land a moment later: purge once more.
        let (service, job_id) = (self.clone(), id.to_string());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            service.purge_export_files(&job_id).await;
        });
        Ok(())
    }

    /// Streams `file` of export `id` (the byte range `start..=end` when
    /// given).
    pub async fn read_export_file(
        &self,
        id: &str,
        file: &ExportedFile,
        range: Option<(u64, u64)>,
    ) -> Result<BoxStream<'static, std::io::Result<Bytes>>, StoreError> {
        let path = self.export_files.child(&format!("{id}/{}", file.name));
        let options = GetOptions {
            range: range.map(|(s, e)| GetRange::Bounded(s..e + 1)),
            ..GetOptions::default()
        };
        let result = self
            .export_files
            .store
            .get_opts(&path, options)
            .await
            .map_err(|e| self.export_files.error("reading", &path, e))?;
        Ok(result.into_stream().map_err(std::io::Error::other).boxed())
    }

    /// The object path of `name` of export `id` in the export store.
    pub fn export_file_path(&self, id: &str, name: &str) -> object_store::path::Path {
        self.export_files.child(&format!("{id}/{name}"))
    }

    /// Deletes every file of export `id`; whether every file is gone (the
    /// expiry loop keeps the record of a failed purge and tries again).
    pub async fn purge_export_files(&self, id: &str) -> bool {
        let root = &self.export_files;
        let prefix = root.child(id);
        let objects: Vec<_> = match root.store.list(Some(&prefix)).try_collect().await {
            Ok(objects) => objects,
            Err(e) => {
                tracing::warn!(job = %id, error = %root.error("listing", &prefix, e), "cannot list export files to purge");
                return false;
            }
        };
        let mut purged = true;
        for object in objects {
            if let Err(e) = root.store.delete(&object.location).await {
                tracing::warn!(job = %id, error = %root.error("deleting", &object.location, e), "cannot delete an export file");
                purged = false;
            }
        }
        // Local stores leave the (now empty) folder behind.
        if root.is_local()
            && let Ok(path) = root.store_url.join(prefix.as_ref())
            && let Ok(local) = path.to_file_path()
        {
            let _ = tokio::fs::remove_dir_all(local).await;
        }
        purged
    }

    /// Restarts the exports an earlier process left running: their partial
    /// files are deleted and they run again over the same warehouse
    /// version. One that published partial manifests fails instead (a rerun
    /// would not reproduce their files, and published manifests must not
    /// change).
    pub(crate) async fn resume_exports(self: &Arc<Self>) -> Result<(), StoreError> {
        for id in self.state.list(EXPORTS).await? {
            let Some(mut job) = self.state.get::<ExportJob>(EXPORTS, &id).await? else {
                continue;
            };
            if job.state != ExportState::Running {
                continue;
            }
            self.purge_export_files(&id).await;
            if !job.pages.is_empty() {
                job.state = ExportState::Failed(JobFailure::new(
                    ErrorKind::Transient,
                    "the server restarted during this export after partial manifests were published; kick it off again",
                ));
                job.updated_at = now();
                self.state.put(EXPORTS, &id, &job).await?;
                continue;
            }
            tracing::info!(job = %id, "restarting an export interrupted by a restart");
            self.spawn_export(job, Duration::ZERO).await;
        }
        Ok(())
    }

    /// Deletes expired, cancelled and long-failed exports, then Group
    /// versions past their retention that no remaining export names,
    /// every `interval`.
    pub(crate) async fn expiry_loop(&self, interval: Duration) {
        loop {
            tokio::time::sleep(interval).await;
            let Ok(ids) = self.state.list(EXPORTS).await else {
                continue;
            };
            self.expire_exports(ids).await;
            let mut pinned = HashSet::new();
            for id in self.state.list(EXPORTS).await.unwrap_or_default() {
                if let Ok(Some(job)) = self.state.get::<ExportJob>(EXPORTS, &id).await
                    && let (ExportLevel::Group(group), Some(version)) = (&job.request.level, job.request.group_version)
                {
                    pinned.insert((group.clone(), version));
                }
            }
            let retention = self.options.group_history_retention;
            self.groups.purge_versions(retention, &pinned).await;
            self.groups.purge_refresh_logs().await;
        }
    }

    /// Deletes the expired, cancelled and long-failed exports among `ids`.
    async fn expire_exports(&self, ids: Vec<String>) {
        for id in ids {
            let Ok(Some(job)) = self.state.get::<ExportJob>(EXPORTS, &id).await else {
                continue;
            };
            if job.expired()
                || job.state == ExportState::Cancelled
                || job.failed_long_ago(self.options.export_retention)
            {
                if !self.purge_export_files(&id).await {
                    continue;
                }
                let _ = self.state.delete(EXPORTS, &id).await;
                self.export_jobs.remove(&id).await;
                tracing::info!(job = %id, "expired export deleted");
            }
        }
    }
}

/// One export to run: what, over which warehouse version, into where.
pub struct ExportRun {
    /// The warehouse version exported.
    pub snapshot_version: u64,
    /// The validated request.
    pub request: ExportRequest,
    /// Where the files go.
    pub target: ExportTarget,
    /// File size limit and test pauses.
    pub settings: ExportSettings,
    /// Warnings for the error file (parameters set aside).
    pub notes: Vec<String>,
}

/// Runs `run` in a task of its own, so a panic in the pipeline is an
/// error rather than a job that never ends, and dropping the returned
/// future (a cancelled job) stops it. Export jobs and `fhirlake export`
/// both export through here.
pub async fn execute(warehouse: &Warehouse, run: ExportRun, progress: &Progress) -> Result<ExportOutput, ExportError> {
    let (warehouse, progress) = (warehouse.clone(), progress.clone());
    let inner = tokio::spawn(async move {
        let snapshot = warehouse.snapshot(run.snapshot_version).await?;
        run_export(
            &warehouse,
            snapshot,
            &run.request,
            &run.target,
            &run.settings,
            &run.notes,
            &progress,
        )
        .await
    });
    let _abort_inner = AbortOnDrop(inner.abort_handle());
    match inner.await {
        Ok(result) => result,
        Err(e) => Err(ExportError::Task(e)),
    }
}

/// What a kick-off can check against the data before it answers 202: the
/// warehouse has an index for `_typeFilter`, each filter compiles, and the
/// Group and `patient`s resolve.
async fn check_against_data(engine: &CohortEngine, request: &ExportRequest) -> Result<(), ExportError> {
    if !request.type_filters.is_empty() {
        if !engine.has_index() {
            return Err(ExportError::NoIndex("_typeFilter"));
        }
        for filter in &request.type_filters {
            let queries = CohortEngine::parse(&[filter])?;
            engine
                .resource_ids_plan(&queries)
                .map_err(|e| ExportError::invalid("_typeFilter", format!("_typeFilter '{filter}': {e}")))?;
        }
    }
    crate::export::population::resolve(engine, request).await?;
    crate::export::population::joined_after_since(engine, request).await?;
    Ok(())
}
