//! Bulk `$export` over HTTP: kick-off (GET and POST) at system, Patient and
//! Group level, status polling with the manifest, cancel-and-purge, and the
//! file downloads (gzip, ranges).
//!
//! A job is a durable record (`_server/exports/<id>.json`) holding the
//! validated request and the warehouse version it reads, so a restarted
//! server reruns an interrupted export over the very same snapshot; its
//! files live under `<export store>/<id>/` (default the warehouse's
//! `_server/export-files`, or an S3 prefix) and are listed in the manifest
//! only once complete.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::Extension;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use futures::{StreamExt, TryStreamExt};
use object_store::{GetOptions, GetRange, ObjectStoreExt};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::auth::{Caller, hidden};
use super::outcome::{FhirError, fhir_json, operation_outcome};
use super::{AppState, ServerError, SharedState, now};
use crate::auth::Permission;
use crate::cohort::CohortEngine;
use crate::export::manifest::manifest;
use crate::export::{
    ExportError, ExportLevel, ExportOutput, ExportRequest, ExportSettings, ExportTarget, ExportedFile, OutputFormat,
    Progress, pairs_from_parameters, parse_export, run_export,
};
use crate::store::StoreLocation;
use crate::warehouse::Warehouse;

/// State kind of stored export jobs.
pub const EXPORTS: &str = "exports";
/// Folder (under the warehouse root) of export files, one sub-folder per job.
pub const EXPORT_FILES: &str = "_server/export-files";

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
    /// Failed: the status and OperationOutcome.
    Failed {
        /// HTTP status.
        status: u16,
        /// The OperationOutcome.
        outcome: Value,
    },
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

/// In-memory facts about an export of this process.
pub struct ExportRuntime {
    /// Aborts the task.
    pub abort: Option<tokio::task::AbortHandle>,
    /// Live progress.
    pub progress: Progress,
    /// When the client last polled (for 429).
    pub last_poll: Option<Instant>,
    /// Whether the task still runs.
    pub running: bool,
}

fn store_error(e: impl std::fmt::Display) -> FhirError {
    FhirError::internal(format!("server state: {e}"))
}

/// Maps an export error to its HTTP answer.
pub fn export_error(e: ExportError) -> FhirError {
    match &e {
        ExportError::GroupNotFound(_) => FhirError::not_found(e.to_string()),
        ExportError::Unsupported(_) => FhirError::new(StatusCode::BAD_REQUEST, "not-supported", e.to_string()),
        ExportError::NoIndex(_) => FhirError::new(StatusCode::BAD_REQUEST, "not-supported", e.to_string()),
        ExportError::EmptyWarehouse => FhirError::new(StatusCode::SERVICE_UNAVAILABLE, "transient", e.to_string()),
        _ if e.is_client_error() => FhirError::invalid(e.to_string()),
        // Store paths are the server's business: logged, not shown.
        ExportError::Write { .. } | ExportError::Parquet { .. } | ExportError::Store(_) => {
            tracing::error!(error = %e, "export storage failure");
            FhirError::internal("writing the export's files failed (see the server log)")
        }
        _ => FhirError::internal(e.to_string()),
    }
}

fn prefer_tokens(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_ascii_lowercase().replace(' ', ""))
        .collect()
}

/// How clients download export files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownloadMode {
    /// Manifest URLs point at this server, which streams the files (gzip,
    /// byte ranges).
    Server,
    /// Manifest URLs are presigned object-store URLs valid for `expiry`
    /// from the time the manifest is served (S3 export stores only).
    Presigned {
        /// How long a URL stays valid.
        expiry: Duration,
    },
}

/// Where export files are written (one folder per job) and how they are
/// downloaded.
#[derive(Debug, Clone)]
pub struct ExportFiles {
    /// The folder holding one sub-folder per job.
    pub location: StoreLocation,
    /// How clients download them.
    pub downloads: DownloadMode,
}

impl ExportFiles {
    /// Export files in `store` (a URL or folder) or, by default, in the
    /// warehouse's `_server/export-files`; presigned downloads need a store
    /// that can sign URLs (S3).
    pub fn new(warehouse: &Warehouse, store: Option<&str>, downloads: DownloadMode) -> Result<Self, ServerError> {
        let location = match store {
            Some(url) => StoreLocation::parse(url, true)?,
            None => {
                let mut location = warehouse.root().clone();
                location.prefix = location.child(EXPORT_FILES);
                location
            }
        };
        if matches!(downloads, DownloadMode::Presigned { .. }) && location.signer.is_none() {
            return Err(ServerError::Options(format!(
                "presigned downloads need an S3 export store (--export-store s3://…); {} cannot sign URLs",
                location.url()
            )));
        }
        Ok(Self { location, downloads })
    }

    /// The key of file `name` of job `id`.
    fn path(&self, id: &str, name: &str) -> object_store::path::Path {
        self.location.child(&format!("{id}/{name}"))
    }
}

/// Deletes every file of job `id`.
/// Returns whether every file is gone (the expiry loop keeps the job record
/// of a failed purge and tries again on its next pass).
async fn purge_files(state: &AppState, id: &str) -> bool {
    let root = &state.export_files.location;
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

/// `[base]/$export`, `[base]/Patient/$export`: kick-off (GET or POST).
pub async fn kickoff_system(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Result<Response, FhirError> {
    let level = if uri.path().starts_with("/Patient/") {
        ExportLevel::Patient
    } else {
        ExportLevel::System
    };
    kickoff(&state, &caller, level, method, &uri, &headers, query, &body).await
}

/// `[base]/Group/{id}/$export`: kick-off (GET or POST).
#[allow(clippy::too_many_arguments)] // axum extractors, one per request part
pub async fn kickoff_group(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Result<Response, FhirError> {
    caller.require("Group", Permission::Read)?;
    super::groups::check_visible(&state, &caller, &id).await?;
    kickoff(
        &state,
        &caller,
        ExportLevel::Group(id),
        method,
        &uri,
        &headers,
        query,
        &body,
    )
    .await
}

/// Limits `request` to the resource types `caller`'s scopes let it read;
/// types dropped are noted in `ignored`. 403 when nothing is left.
fn restrict_to_scopes(
    caller: &Caller,
    request: &mut ExportRequest,
    ignored: &mut Vec<String>,
) -> Result<(), FhirError> {
    if matches!(caller, Caller::Open) {
        return Ok(());
    }
    // Groups of the loaded data are visible only to clients they are
    // granted to; a system export must not hand them to everyone.
    request.excluded_types.insert("Group".to_string());
    let Some(readable) = caller.readable_types() else {
        return Ok(());
    };
    let readable: std::collections::BTreeSet<String> = readable.into_iter().collect();
    let forbidden = |text: String| FhirError::new(StatusCode::FORBIDDEN, "forbidden", text);
    let kept = match &request.types {
        Some(types) => {
            let (kept, dropped): (Vec<String>, Vec<String>) = types.iter().cloned().partition(|t| readable.contains(t));
            if kept.is_empty() {
                return Err(forbidden(format!(
                    "the access token's scopes allow reading none of the requested types ({})",
                    dropped.join(", ")
                )));
            }
            if !dropped.is_empty() {
                ignored.push(format!(
                    "_type {} (not allowed by the access token's scopes)",
                    dropped.join(",")
                ));
            }
            kept.into_iter().collect()
        }
        None if readable.is_empty() => {
            return Err(forbidden(
                "the access token's scopes allow reading no resource type".into(),
            ));
        }
        None => readable.clone(),
    };
    if request.include_provenance && !readable.contains("Provenance") {
        request.include_provenance = false;
        ignored.push("includeAssociatedData (Provenance is not allowed by the access token's scopes)".into());
    }
    request.types = Some(kept);
    Ok(())
}

#[allow(clippy::too_many_arguments)] // the parts of one HTTP request
async fn kickoff(
    state: &SharedState,
    caller: &Caller,
    level: ExportLevel,
    method: Method,
    uri: &Uri,
    headers: &HeaderMap,
    query: Option<String>,
    body: &[u8],
) -> Result<Response, FhirError> {
    let prefer = prefer_tokens(headers);
    let lenient = prefer.iter().any(|p| p == "handling=lenient");
    let separate_status = prefer.iter().any(|p| p == "separate-export-status");
    let mut pairs: Vec<(String, String)> = query
        .as_deref()
        .map(|q| {
            // An unencoded `+` (zone offsets, `application/fhir+ndjson`) is a
            // plus, not a space, as in member-filter searches.
            let q = q.replace('+', "%2B");
            url::form_urlencoded::parse(q.as_bytes())
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .filter(|(k, _)| k != "_format")
                .collect()
        })
        .unwrap_or_default();
    let post = method == Method::POST;
    if post && !body.iter().all(u8::is_ascii_whitespace) {
        let parameters: Value = serde_json::from_slice(body)
            .map_err(|e| FhirError::invalid(format!("the POST body is not valid JSON: {e}")))?;
        pairs.extend(pairs_from_parameters(&parameters).map_err(export_error)?);
    }
    let mut parsed = parse_export(level, &pairs, post, lenient).map_err(export_error)?;
    restrict_to_scopes(caller, &mut parsed.request, &mut parsed.ignored)?;
    // Refused before any expensive check is made.
    let throttled = |running: usize| {
        let mut error = FhirError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "throttled",
            format!(
                "{running} exports are running (the limit is {}); retry later",
                state.max_exports
            ),
        );
        error.retry_after = Some(state.retry_after.max(5));
        error
    };
    let running = state.exports.lock().await.values().filter(|r| r.running).count();
    if running >= state.max_exports {
        return Err(throttled(running));
    }
    // Taken before the snapshot is read, so everything committed up to it
    // is in the export (transactionTime SHALL cover it).
    let transaction_time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    // What can be checked against the data is checked now, so a bad Group
    // or patient is a 4xx at kick-off rather than a failed job.
    let engine = state.cohort_engine.get().await.map_err(|e| match e {
        crate::cohort::CohortError::EmptyWarehouse => export_error(ExportError::EmptyWarehouse),
        other => super::cohort_group::cohort_error(other),
    })?;
    if !parsed.request.type_filters.is_empty() {
        if !engine.has_index() {
            return Err(export_error(ExportError::NoIndex("_typeFilter")));
        }
        // Compiled now, so a filter the compiler refuses is a 400 here.
        for filter in &parsed.request.type_filters {
            let queries = CohortEngine::parse(&[filter]).map_err(|e| export_error(e.into()))?;
            // A filter reads the types it searches (chains, `_has`) too.
            caller.require_search(&queries)?;
            engine
                .resource_ids_plan(&queries)
                .map_err(|e| FhirError::invalid(format!("_typeFilter '{filter}': {e}")))?;
        }
    }
    crate::export::population::resolve(&state.warehouse, &engine, &parsed.request)
        .await
        .map_err(export_error)?;
    let mut exports = state.exports.lock().await;
    let running = exports.values().filter(|r| r.running).count();
    if running >= state.max_exports {
        return Err(throttled(running));
    }
    let created = now();
    let request_url = match (&method, uri.query()) {
        (&Method::GET, Some(q)) => format!("{}{}?{q}", state.base_url, uri.path()),
        _ => format!("{}{}", state.base_url, uri.path()),
    };
    let job = ExportJob {
        id: uuid::Uuid::new_v4().to_string(),
        request: parsed.request,
        request_url,
        ignored: parsed.ignored,
        snapshot_version: engine.version(),
        transaction_time,
        separate_status,
        state: ExportState::Running,
        pages: Vec::new(),
        created_at: created.clone(),
        updated_at: created,
        owner: caller.client_id().map(str::to_string),
    };
    state.store.put(EXPORTS, &job.id, &job).await.map_err(store_error)?;
    tracing::info!(target: "fhirlake::audit", event = "export_started", client_id = caller.client_id().unwrap_or("-"), export = %job.id, url = %job.request_url);
    let id = job.id.clone();
    spawn_export(state, &mut exports, job, state.job_delay);
    drop(exports);
    let mut response = fhir_json(
        StatusCode::ACCEPTED,
        &operation_outcome(
            "information",
            "informational",
            "export accepted: poll the Content-Location URL",
        ),
    );
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&format!("{}/_export/{id}", state.base_url)) {
        headers.insert(header::CONTENT_LOCATION, value);
    }
    if separate_status {
        headers.insert(
            "preference-applied",
            HeaderValue::from_static("respond-async, separate-export-status"),
        );
    } else {
        headers.insert("preference-applied", HeaderValue::from_static("respond-async"));
    }
    Ok(response)
}

fn spawn_export(
    state: &SharedState,
    exports: &mut std::collections::HashMap<String, ExportRuntime>,
    job: ExportJob,
    delay: Duration,
) {
    let progress = Progress::default();
    progress.set("queued");
    let id = job.id.clone();
    let task = tokio::spawn(run_job(state.clone(), job, delay, progress.clone()));
    exports.insert(
        id,
        ExportRuntime {
            abort: Some(task.abort_handle()),
            progress,
            last_poll: None,
            running: true,
        },
    );
}

async fn run_job(state: SharedState, mut job: ExportJob, delay: Duration, progress: Progress) {
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let started = Instant::now();
    // The export runs in its own task, so a panic in it becomes a failed
    // job instead of one that stays running forever.
    let inner = {
        let (state, job, progress) = (state.clone(), job.clone(), progress.clone());
        tokio::spawn(async move {
            let snapshot = state.warehouse.snapshot(job.snapshot_version).await?;
            let target = ExportTarget {
                location: state.export_files.location.clone(),
                dir: job.id.clone(),
            };
            let settings = ExportSettings {
                max_file_bytes: state.export_file_bytes,
                type_delay: state.export_type_delay,
            };
            run_export(
                &state.warehouse,
                snapshot,
                &job.request,
                &target,
                &settings,
                &job.ignored,
                &progress,
            )
            .await
        })
    };
    // Cancelling aborts this task; the export task goes with it.
    let _abort_inner = AbortOnDrop(inner.abort_handle());
    let result = match inner.await {
        Ok(result) => result,
        Err(e) => Err(ExportError::Task(e.to_string())),
    };
    let _writes = state.group_writes.lock().await;
    match state.store.get::<ExportJob>(EXPORTS, &job.id).await {
        Ok(Some(current)) if current.state == ExportState::Cancelled => {
            purge_files(&state, &job.id).await;
            return;
        }
        // Pollers may have published partial manifest pages meanwhile.
        Ok(Some(current)) => job.pages = current.pages,
        _ => {}
    }
    job.state = match result {
        Ok(ExportOutput {
            output,
            error,
            deleted,
            resources,
            bytes,
        }) => {
            tracing::info!(
                job = %job.id,
                resources,
                bytes,
                seconds = started.elapsed().as_secs_f64(),
                "export finished"
            );
            let expires = chrono::Utc::now()
                + chrono::Duration::from_std(state.export_retention).unwrap_or(chrono::Duration::hours(1));
            if !job.pages.is_empty() {
                // The last page holds every file no earlier page listed.
                let published: std::collections::HashSet<&str> =
                    job.pages.iter().flatten().map(|f| f.name.as_str()).collect();
                let rest: Vec<ExportedFile> = output
                    .iter()
                    .filter(|f| !published.contains(f.name.as_str()))
                    .cloned()
                    .collect();
                job.pages.push(rest);
            }
            ExportState::Completed {
                output,
                error,
                deleted,
                expires_at: expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            }
        }
        Err(e) => {
            tracing::error!(job = %job.id, error = %e, "export failed");
            purge_files(&state, &job.id).await;
            let mut error = export_error(e);
            // A 404 on the status URL means "no such job": a Group that
            // vanished while the job ran is reported as gone instead.
            if error.status == StatusCode::NOT_FOUND {
                error.status = StatusCode::GONE;
            }
            ExportState::Failed {
                status: error.status.as_u16(),
                outcome: error.outcome(),
            }
        }
    };
    job.updated_at = now();
    let mut recorded = false;
    for attempt in 0..3 {
        match state.store.put(EXPORTS, &job.id, &job).await {
            Ok(()) => {
                recorded = true;
                break;
            }
            Err(e) => {
                tracing::error!(job = %job.id, attempt, error = %e, "cannot record the export's outcome");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    if !recorded {
        purge_files(&state, &job.id).await;
    }
    if let Some(runtime) = state.exports.lock().await.get_mut(&job.id) {
        runtime.running = false;
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Resumes the exports a previous process left running: their partial
/// files are deleted and they run again over the same warehouse version.
pub async fn resume_exports(state: &SharedState) -> Result<(), crate::store::StoreError> {
    for id in state.store.list(EXPORTS).await? {
        let Some(job) = state.store.get::<ExportJob>(EXPORTS, &id).await? else {
            continue;
        };
        if job.state == ExportState::Running && !job.pages.is_empty() {
            // Published pages name files a rerun would not reproduce
            // exactly, and published manifests must not change: fail it.
            let mut job = job;
            let error = FhirError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "transient",
                "the server restarted during this export after partial manifests were published; kick it off again",
            );
            job.state = ExportState::Failed {
                status: error.status.as_u16(),
                outcome: error.outcome(),
            };
            job.updated_at = now();
            state.store.put(EXPORTS, &id, &job).await?;
            purge_files(state, &id).await;
            continue;
        }
        if job.state == ExportState::Running {
            tracing::info!(job = %id, "restarting an export interrupted by a restart");
            purge_files(state, &id).await;
            let mut exports = state.exports.lock().await;
            spawn_export(state, &mut exports, job, Duration::ZERO);
        }
    }
    Ok(())
}

/// Deletes completed exports past their expiry, every `interval`.
pub async fn expiry_loop(state: SharedState, interval: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        let Ok(ids) = state.store.list(EXPORTS).await else {
            continue;
        };
        for id in ids {
            let Ok(Some(job)) = state.store.get::<ExportJob>(EXPORTS, &id).await else {
                continue;
            };
            if expired(&job) || job.state == ExportState::Cancelled || failed_long_ago(&job, state.export_retention) {
                if !purge_files(&state, &id).await {
                    continue;
                }
                let _ = state.store.delete(EXPORTS, &id).await;
                state.exports.lock().await.remove(&id);
                tracing::info!(job = %id, "expired export deleted");
            }
        }
    }
}

/// Failed jobs are kept (for their pollers) as long as completed ones.
fn failed_long_ago(job: &ExportJob, retention: Duration) -> bool {
    matches!(job.state, ExportState::Failed { .. })
        && chrono::DateTime::parse_from_rfc3339(&job.updated_at).is_ok_and(|t| {
            chrono::Utc::now()
                .signed_duration_since(t)
                .to_std()
                .is_ok_and(|age| age > retention)
        })
}

fn expired(job: &ExportJob) -> bool {
    match &job.state {
        ExportState::Completed { expires_at, .. } => {
            chrono::DateTime::parse_from_rfc3339(expires_at).is_ok_and(|t| t < chrono::Utc::now())
        }
        _ => false,
    }
}

/// Export `id`, if `caller` kicked it off (others get 404: a job's
/// existence does not leak).
async fn load_job(state: &AppState, caller: &Caller, id: &str) -> Result<ExportJob, FhirError> {
    let job = state
        .store
        .get::<ExportJob>(EXPORTS, id)
        .await
        .map_err(store_error)?
        .filter(|j| caller.owns(j.owner.as_deref()));
    match job {
        None => Err(hidden(&format!("export '{id}'"))),
        Some(job) if job.state == ExportState::Cancelled => {
            Err(FhirError::not_found(format!("export '{id}' was cancelled")))
        }
        Some(job) if expired(&job) => Err(FhirError::not_found(format!(
            "export '{id}' has expired and its files were deleted"
        ))),
        Some(job) => Ok(job),
    }
}

fn file_url(state: &AppState, id: &str, name: &str) -> String {
    format!("{}/_export/{id}/files/{name}", state.base_url)
}

fn page_url(state: &AppState, id: &str, page: usize) -> String {
    if page <= 1 {
        format!("{}/_export/{id}", state.base_url)
    } else {
        format!("{}/_export/{id}?page={page}", state.base_url)
    }
}

/// The manifest of `output` files for `job`; `last` pages carry error[] and
/// deleted[], earlier partial pages a `link` to the next one. File URLs
/// point at this server or, for presigned downloads, are signed now.
async fn job_manifest(
    state: &AppState,
    job: &ExportJob,
    output: &[ExportedFile],
    next: Option<usize>,
    last: bool,
) -> Result<Value, FhirError> {
    let (error, deleted) = match (&job.state, last) {
        (ExportState::Completed { error, deleted, .. }, true) => (error.clone(), deleted.clone()),
        _ => (Vec::new(), Vec::new()),
    };
    let mut urls: HashMap<String, String> = HashMap::new();
    for file in output.iter().chain(&error).chain(&deleted) {
        let url = match (state.export_files.downloads, &state.export_files.location.signer) {
            (DownloadMode::Presigned { expiry }, Some(signer)) => signer
                .signed_url(Method::GET, &state.export_files.path(&job.id, &file.name), expiry)
                .await
                .map_err(|e| FhirError::internal(format!("signing the URL of {}: {e}", file.name)))?
                .to_string(),
            _ => file_url(state, &job.id, &file.name),
        };
        urls.insert(file.name.clone(), url);
    }
    let mut body = manifest(
        &job.transaction_time,
        &job.request_url,
        requires_access_token(state),
        &ExportOutput {
            output: output.to_vec(),
            error,
            deleted,
            ..ExportOutput::default()
        },
        job.request.organize_by_patient.then_some("Patient"),
        |name| {
            urls.get(name)
                .cloned()
                .unwrap_or_else(|| file_url(state, &job.id, name))
        },
    );
    if let Some(next) = next {
        body["link"] = serde_json::json!([{"relation": "next", "url": page_url(state, &job.id, next)}]);
    }
    Ok(body)
}

/// Whether a download needs the client's access token: presigned URLs carry
/// their own authorization; files streamed by this server need the token of
/// the client that kicked the export off, when authorization is on.
fn requires_access_token(state: &AppState) -> bool {
    match state.export_files.downloads {
        DownloadMode::Presigned { .. } => false,
        DownloadMode::Server => state.auth.is_some(),
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        body.to_string(),
    )
        .into_response()
}

/// Under `allowPartialManifests`, the manifest page `page` of a running
/// job: pages are created from the files finished when first asked for,
/// stored, and never change afterwards except by gaining a `next` link.
async fn running_page(
    state: &AppState,
    caller: &Caller,
    id: &str,
    page: usize,
    finished: Vec<ExportedFile>,
) -> Result<Option<Value>, FhirError> {
    let _writes = state.group_writes.lock().await;
    let mut job = load_job(state, caller, id).await?;
    if job.state != ExportState::Running {
        return Ok(None);
    }
    let published: std::collections::HashSet<&str> = job.pages.iter().flatten().map(|f| f.name.as_str()).collect();
    let fresh: Vec<ExportedFile> = finished
        .into_iter()
        .filter(|f| !published.contains(f.name.as_str()))
        .collect();
    // Asking for the newest page (or the first) publishes what finished since.
    if !fresh.is_empty() && page >= job.pages.len() && page <= job.pages.len() + 1 {
        job.pages.push(fresh);
        job.updated_at = now();
        state.store.put(EXPORTS, id, &job).await.map_err(store_error)?;
    }
    if page == 0 || page > job.pages.len() {
        return Ok(None);
    }
    let next = (page < job.pages.len()).then_some(page + 1);
    Ok(Some(
        job_manifest(state, &job, &job.pages[page - 1], next, false).await?,
    ))
}

/// `GET /_export/{id}[?page=N]`: the status URL (pages of a partial
/// manifest when the export allowed them).
pub async fn status(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Response, FhirError> {
    let page: usize = match params.iter().find(|(k, _)| k == "page") {
        None => 1,
        Some((_, v)) => v
            .parse()
            .ok()
            .filter(|p| *p >= 1)
            .ok_or_else(|| FhirError::invalid(format!("page must be a positive number, got '{v}'")))?,
    };
    let job = load_job(&state, &caller, &id).await?;
    let separate = |mut response: Response, status: &str| {
        if let Ok(value) = HeaderValue::from_str(status) {
            response.headers_mut().insert("x-export-status", value);
        }
        *response.status_mut() = StatusCode::OK;
        response
    };
    let no_page = || FhirError::not_found(format!("export '{id}' has no manifest page {page}"));
    match &job.state {
        ExportState::Running => {
            let (progress, finished) = {
                let mut exports = state.exports.lock().await;
                let runtime = exports.entry(id.clone()).or_insert(ExportRuntime {
                    abort: None,
                    progress: Progress::default(),
                    last_poll: None,
                    running: false,
                });
                // Following a `next` link right away is not over-polling.
                if page == 1
                    && let Some(last) = runtime.last_poll
                    && last.elapsed() < Duration::from_secs(state.retry_after) / 2
                {
                    return Err(FhirError::polled_too_often(state.retry_after));
                }
                if page == 1 {
                    runtime.last_poll = Some(Instant::now());
                }
                (runtime.progress.get(), runtime.progress.finished())
            };
            let partial = if job.request.allow_partial_manifests {
                running_page(&state, &caller, &id, page, finished).await?
            } else {
                None
            };
            if partial.is_none() && page > 1 && page > job.pages.len() + 1 {
                return Err(no_page());
            }
            let mut response = match &partial {
                Some(body) => json_response(StatusCode::ACCEPTED, body),
                None => StatusCode::ACCEPTED.into_response(),
            };
            let headers = response.headers_mut();
            let progress = if progress.is_empty() {
                "in progress".to_string()
            } else {
                progress
            };
            if let Ok(value) = HeaderValue::from_str(&progress) {
                headers.insert("x-progress", value);
            }
            if let Ok(value) = HeaderValue::from_str(&state.retry_after.to_string()) {
                headers.insert(header::RETRY_AFTER, value);
            }
            Ok(if job.separate_status {
                separate(response, "202 Accepted")
            } else {
                response
            })
        }
        ExportState::Completed { output, expires_at, .. } => {
            let body = if job.pages.is_empty() {
                if page != 1 {
                    return Err(no_page());
                }
                job_manifest(&state, &job, output, None, true).await?
            } else {
                let files = job.pages.get(page - 1).ok_or_else(no_page)?;
                let last = page == job.pages.len();
                job_manifest(&state, &job, files, (!last).then_some(page + 1), last).await?
            };
            let mut response = json_response(StatusCode::OK, &body);
            if let Ok(expires) = chrono::DateTime::parse_from_rfc3339(expires_at)
                && let Ok(value) = HeaderValue::from_str(&expires.to_rfc2822().replace("+0000", "GMT"))
            {
                response.headers_mut().insert(header::EXPIRES, value);
            }
            Ok(if job.separate_status {
                separate(response, "200 OK")
            } else {
                response
            })
        }
        ExportState::Failed { status, outcome } => {
            let code = StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let response = fhir_json(code, outcome);
            Ok(if job.separate_status {
                let text = format!("{} {}", code.as_u16(), code.canonical_reason().unwrap_or(""));
                separate(response, text.trim())
            } else {
                response
            })
        }
        ExportState::Cancelled => Err(FhirError::not_found(format!("export '{id}' was cancelled"))),
    }
}

/// `DELETE /_export/{id}`: cancels a running export or deletes a finished
/// one; its files are purged and later polls answer 404.
pub async fn cancel(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, FhirError> {
    let _writes = state.group_writes.lock().await;
    let mut job = load_job(&state, &caller, &id).await?;
    tracing::info!(target: "fhirlake::audit", event = "export_deleted", client_id = caller.client_id().unwrap_or("-"), export = %id);
    if let Some(runtime) = state.exports.lock().await.get_mut(&id) {
        if let Some(abort) = runtime.abort.take() {
            abort.abort();
        }
        runtime.running = false;
    }
    job.state = ExportState::Cancelled;
    job.updated_at = now();
    state.store.put(EXPORTS, &id, &job).await.map_err(store_error)?;
    purge_files(&state, &id).await;
    // An aborted upload may still land a moment later: purge once more.
    let (later, job_id) = (state.clone(), id.clone());
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        purge_files(&later, &job_id).await;
    });
    Ok(fhir_json(
        StatusCode::ACCEPTED,
        &operation_outcome(
            "information",
            "informational",
            &format!("export '{id}' cancelled and its files deleted"),
        ),
    ))
}

/// One `bytes=` range of a file of `size` bytes; `Err` when unsatisfiable.
fn parse_range(header: &str, size: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(spec) = header.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        // Several ranges: serve the whole file (allowed by RFC 9110).
        return Ok(None);
    }
    let (start, end) = spec.split_once('-').ok_or(())?;
    let (start, end) = match (start.trim(), end.trim()) {
        ("", suffix) => {
            let n: u64 = suffix.parse().map_err(|_| ())?;
            if n == 0 {
                return Err(());
            }
            (size.saturating_sub(n), size.saturating_sub(1))
        }
        (start, "") => (start.parse().map_err(|_| ())?, size.saturating_sub(1)),
        (start, end) => {
            let (s, e): (u64, u64) = (start.parse().map_err(|_| ())?, end.parse().map_err(|_| ())?);
            (s, e.min(size.saturating_sub(1)))
        }
    };
    if size == 0 || start > end || start >= size {
        return Err(());
    }
    Ok(Some((start, end)))
}

/// `GET /_export/{id}/files/{name}`: one file of a finished export. Only
/// names listed in the job's manifest are served (never another path);
/// `Accept-Encoding: gzip` gets a gzip stream, `Range` a `206`.
pub async fn download(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    Path((id, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, FhirError> {
    let job = load_job(&state, &caller, &id).await?;
    let listed: Vec<&ExportedFile> = match &job.state {
        ExportState::Completed {
            output, error, deleted, ..
        } => output.iter().chain(error).chain(deleted).collect(),
        // Files of published partial manifest pages are complete.
        ExportState::Running => job.pages.iter().flatten().collect(),
        _ => Vec::new(),
    };
    let Some(file) = listed.into_iter().find(|f| f.name == name) else {
        return Err(FhirError::not_found(format!("export '{id}' has no file '{name}'")));
    };
    tracing::info!(target: "fhirlake::audit", event = "export_downloaded", client_id = caller.client_id().unwrap_or("-"), export = %id, file = %name);
    let root = &state.export_files.location;
    let path = state.export_files.path(&id, &file.name);
    let is_parquet = file.name.ends_with(".parquet");
    let content_type = if is_parquet {
        OutputFormat::Parquet.media_type()
    } else {
        OutputFormat::Ndjson.media_type()
    };
    let size = file.bytes;
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        None => None,
        Some(text) => match parse_range(text, size) {
            Ok(range) => range,
            Err(()) => {
                let mut response = FhirError::new(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "invalid",
                    format!("range '{text}' is outside the file's {size} bytes"),
                )
                .into_response();
                if let Ok(value) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    response.headers_mut().insert(header::CONTENT_RANGE, value);
                }
                return Ok(response);
            }
        },
    };
    let options = GetOptions {
        range: range.map(|(s, e)| GetRange::Bounded(s..e + 1)),
        ..GetOptions::default()
    };
    let result = root
        .store
        .get_opts(&path, options)
        .await
        .map_err(|e| FhirError::internal(format!("reading export file: {e}")))?;
    let stream = result.into_stream();
    let gzip = range.is_none()
        && headers
            .get_all(header::ACCEPT_ENCODING)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|e| {
                let mut parts = e.split(';');
                let coding = parts.next().unwrap_or("").trim();
                let refused = parts.any(|p| {
                    p.trim()
                        .strip_prefix("q=")
                        .and_then(|q| q.trim().parse::<f32>().ok())
                        .is_some_and(|q| q <= 0.0)
                });
                (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !refused
            });
    let mut builder = Response::builder()
        .header(header::CONTENT_TYPE, content_type)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::VARY, "accept-encoding");
    let body = if gzip {
        builder = builder.header(header::CONTENT_ENCODING, "gzip");
        Body::from_stream(gzip_stream(stream))
    } else {
        Body::from_stream(stream)
    };
    builder = match range {
        Some((start, end)) => builder
            .status(StatusCode::PARTIAL_CONTENT)
            .header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{size}"))
            .header(header::CONTENT_LENGTH, end - start + 1),
        None if !gzip => builder.status(StatusCode::OK).header(header::CONTENT_LENGTH, size),
        None => builder.status(StatusCode::OK),
    };
    builder
        .body(body)
        .map_err(|e| FhirError::internal(format!("building the response: {e}")))
}

/// Gzips a byte stream chunk by chunk (fast level: the network, not the
/// ratio, is what a download waits for).
fn gzip_stream(
    input: futures::stream::BoxStream<'static, object_store::Result<Bytes>>,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    use flate2::Compression;
    use flate2::write::GzEncoder;
    use std::io::Write;
    let encoder = GzEncoder::new(Vec::new(), Compression::fast());
    futures::stream::unfold(Some((input, encoder)), |state| async move {
        let (mut input, mut encoder) = state?;
        loop {
            match input.next().await {
                Some(Ok(chunk)) => {
                    if let Err(e) = encoder.write_all(&chunk) {
                        return Some((Err(e), None));
                    }
                    let out = std::mem::take(encoder.get_mut());
                    if !out.is_empty() {
                        return Some((Ok(Bytes::from(out)), Some((input, encoder))));
                    }
                }
                Some(Err(e)) => return Some((Err(std::io::Error::other(e)), None)),
                None => {
                    return match encoder.finish() {
                        Ok(rest) => Some((Ok(Bytes::from(rest)), None)),
                        Err(e) => Some((Err(e), None)),
                    };
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Ok(Some((0, 9))));
        assert_eq!(parse_range("bytes=90-", 100), Ok(Some((90, 99))));
        assert_eq!(parse_range("bytes=-10", 100), Ok(Some((90, 99))));
        assert_eq!(parse_range("bytes=95-200", 100), Ok(Some((95, 99))));
        assert_eq!(parse_range("bytes=100-", 100), Err(()));
        assert_eq!(parse_range("bytes=5-1", 100), Err(()));
        assert_eq!(parse_range("items=1-2", 100), Ok(None));
    }
}
