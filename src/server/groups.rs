//! Group interactions: Bulk Cohort creation (async and sync), polling and
//! cancelling jobs, read, vread, search, update, delete, and `$members`.
//! Groups of the loaded data (plain member lists) are readable, searchable
//! and usable as base populations, but read-only.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use datafusion::arrow::array::{Array, AsArray};
use datafusion::common::TableReference;
use datafusion::prelude::{col, lit};
use serde_json::{Value, json};

use super::auth::{Caller, hidden};
use super::cohort_group::{CohortRequest, GROUPS, StoredGroup, cohort_error, compute, group_resource, validate};
use super::jobs::{JOBS, Job, JobKind, JobRuntime, JobState};
use super::outcome::{FhirError, fhir_json, operation_outcome};
use super::{AppState, SharedState, now};
use crate::auth::Permission;
use crate::search::extract::fold;
use crate::warehouse::catalog::RESOURCE_SCHEMA;

fn store_error(e: impl std::fmt::Display) -> FhirError {
    FhirError::internal(format!("server state: {e}"))
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn prefers_async(headers: &HeaderMap) -> bool {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case("respond-async"))
}

fn check_content_type(headers: &HeaderMap) -> Result<(), FhirError> {
    match headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) {
        None => Ok(()),
        Some(t) => {
            let media = t.split(';').next().unwrap_or("").trim();
            if matches!(
                media,
                "application/fhir+json" | "application/json" | "application/json+fhir"
            ) {
                Ok(())
            } else {
                Err(FhirError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "not-supported",
                    format!("Content-Type '{t}' is not supported; send application/fhir+json"),
                ))
            }
        }
    }
}

/// Writes a cohort Group with `members` (a new version when it exists).
async fn write_group(
    state: &AppState,
    id: &str,
    request: &CohortRequest,
    members: Vec<String>,
    warehouse_version: u64,
    owner: Option<String>,
) -> Result<StoredGroup, FhirError> {
    let previous: Option<StoredGroup> = state.store.get(GROUPS, id).await.map_err(store_error)?;
    if previous.is_none() {
        tracing::info!(target: "fhirlake::audit", event = "cohort_created", client_id = owner.as_deref().unwrap_or("-"), group = %id, members = members.len());
    }
    // An update keeps the creator as owner.
    let owner = previous.as_ref().map_or(owner, |p| p.owner.clone());
    let version = previous.map_or(1, |p| p.version + 1);
    let computed_at = now();
    let resource = group_resource(id, version, request, members.len(), &computed_at);
    let stored = StoredGroup {
        id: id.to_string(),
        version,
        request: request.clone(),
        resource,
        members,
        warehouse_version,
        owner,
    };
    state.store.put(GROUPS, id, &stored).await.map_err(store_error)?;
    Ok(stored)
}

/// Starts (or resumes) `job` in the background.
async fn spawn_job(state: &SharedState, job: Job, delay: Duration) {
    let id = job.id.clone();
    let task = tokio::spawn(run_job(state.clone(), job, delay));
    state.jobs.lock().await.insert(
        id,
        JobRuntime {
            abort: Some(task.abort_handle()),
            last_poll: None,
        },
    );
}

async fn run_job(state: SharedState, mut job: Job, delay: Duration) {
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let outcome = compute(&state.cohort_engine, &job.request).await;
    let _writes = state.group_writes.lock().await;
    // A cancel that won the lock leaves the job cancelled and the Group unwritten.
    match state.store.get::<Job>(JOBS, &job.id).await {
        Ok(Some(current)) if current.state == JobState::Cancelled => return,
        _ => {}
    }
    job.state = match outcome {
        Ok((members, version)) => {
            match write_group(&state, &job.group_id, &job.request, members, version, job.owner.clone()).await {
                Ok(stored) => JobState::Completed {
                    status: if job.kind == JobKind::CreateGroup { 201 } else { 200 },
                    location: Some(format!("Group/{}/_history/{}", stored.id, stored.version)),
                    outcome: None,
                },
                Err(e) => JobState::Completed {
                    status: e.status.as_u16(),
                    location: None,
                    outcome: Some(e.outcome()),
                },
            }
        }
        Err(e) => JobState::Completed {
            status: e.status.as_u16(),
            location: None,
            outcome: Some(e.outcome()),
        },
    };
    job.updated_at = now();
    if let Err(e) = state.store.put(JOBS, &job.id, &job).await {
        tracing::error!(job = %job.id, error = %e, "cannot record the job's outcome");
    }
    tracing::info!(job = %job.id, group = %job.group_id, "job finished");
}

/// Resumes the jobs a previous process left running.
pub async fn resume_jobs(state: &SharedState) -> Result<(), crate::store::StoreError> {
    for id in state.store.list(JOBS).await? {
        let Some(job) = state.store.get::<Job>(JOBS, &id).await? else {
            continue;
        };
        if matches!(job.state, JobState::Running { .. }) {
            tracing::info!(job = %id, "resuming a job interrupted by a restart");
            spawn_job(state, job, Duration::ZERO).await;
        }
    }
    Ok(())
}

/// Recomputes every cohort Group whose membership predates the current
/// warehouse version, every `interval`.
pub async fn refresh_loop(state: SharedState, interval: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        let current = match state.warehouse.current().await {
            Ok(Some(snapshot)) => snapshot.version,
            _ => continue,
        };
        let ids = state.store.list(GROUPS).await.unwrap_or_default();
        for id in ids {
            let Ok(Some(stored)) = state.store.get::<StoredGroup>(GROUPS, &id).await else {
                continue;
            };
            if stored.warehouse_version >= current {
                continue;
            }
            match compute(&state.cohort_engine, &stored.request).await {
                Ok((members, version)) => {
                    let _writes = state.group_writes.lock().await;
                    match write_group(&state, &id, &stored.request, members, version, stored.owner.clone()).await {
                        Ok(g) => {
                            tracing::info!(group = %id, version = g.version, members = g.members.len(), "cohort refreshed")
                        }
                        Err(e) => tracing::error!(group = %id, error = %e, "cohort refresh failed"),
                    }
                }
                Err(e) => tracing::error!(group = %id, error = %e, "cohort refresh failed"),
            }
        }
    }
}

fn accepted(state: &AppState, job_id: &str) -> Response {
    let mut response = fhir_json(
        StatusCode::ACCEPTED,
        &operation_outcome(
            "information",
            "informational",
            "accepted: poll the Content-Location URL",
        ),
    );
    if let Ok(value) = HeaderValue::from_str(&format!("{}/_jobs/{job_id}", state.base_url)) {
        response.headers_mut().insert(header::CONTENT_LOCATION, value);
    }
    response
}

async fn start_job(
    state: &SharedState,
    kind: JobKind,
    group_id: String,
    request: CohortRequest,
    owner: Option<String>,
) -> Result<Response, FhirError> {
    let created = now();
    let job = Job {
        id: new_id(),
        kind,
        group_id,
        request,
        state: JobState::Running {
            progress: "computing membership".into(),
        },
        created_at: created.clone(),
        updated_at: created,
        owner,
    };
    state.store.put(JOBS, &job.id, &job).await.map_err(store_error)?;
    let response = accepted(state, &job.id);
    spawn_job(state, job, state.job_delay).await;
    Ok(response)
}

/// `POST /Group`: a Bulk Cohort Group; async with `Prefer: respond-async`.
pub async fn create(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, FhirError> {
    caller.require("Group", Permission::Create)?;
    check_content_type(&headers)?;
    let request = validate(&body)?;
    check_request_access(&state, &caller, &request).await?;
    let id = new_id();
    let owner = caller.client_id().map(str::to_string);
    if prefers_async(&headers) {
        return start_job(&state, JobKind::CreateGroup, id, request, owner).await;
    }
    let (members, version) = compute(&state.cohort_engine, &request).await?;
    let _writes = state.group_writes.lock().await;
    let stored = write_group(&state, &id, &request, members, version, owner).await?;
    let mut response = fhir_json(StatusCode::CREATED, &stored.resource);
    if let Ok(value) = HeaderValue::from_str(&format!(
        "{}/Group/{}/_history/{}",
        state.base_url, stored.id, stored.version
    )) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    Ok(response)
}

/// `PUT /Group/{id}`: replaces a cohort Group and recomputes its members.
pub async fn update(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, FhirError> {
    caller.require("Group", Permission::Update)?;
    check_content_type(&headers)?;
    let request = validate(&body)?;
    check_request_access(&state, &caller, &request).await?;
    if let Some(body_id) = request.group.get("id").and_then(Value::as_str)
        && body_id != id
    {
        return Err(FhirError::invalid(format!(
            "the Group's id '{body_id}' differs from the URL's '{id}'"
        )));
    }
    let existing: Option<StoredGroup> = state.store.get(GROUPS, &id).await.map_err(store_error)?;
    if existing.is_none() {
        return Err(
            if loaded_group(&state, &id).await?.is_some() && caller.sees_group(&id, None) {
                FhirError::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "not-supported",
                    format!("Group/{id} comes from the loaded data and is read-only"),
                )
            } else {
                hidden(&format!("Group/{id}"))
            },
        );
    }
    if let Some(existing) = &existing {
        check_owner(&caller, &id, existing.owner.as_deref(), "change")?;
    }
    let owner = caller.client_id().map(str::to_string);
    if prefers_async(&headers) {
        return start_job(&state, JobKind::UpdateGroup, id, request, owner).await;
    }
    let (members, version) = compute(&state.cohort_engine, &request).await?;
    let _writes = state.group_writes.lock().await;
    let stored = write_group(&state, &id, &request, members, version, owner).await?;
    Ok(fhir_json(StatusCode::OK, &stored.resource))
}

/// `GET /_jobs/{id}`: the polling URL.
pub async fn poll(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, FhirError> {
    let Some(job) = state
        .store
        .get::<Job>(JOBS, &id)
        .await
        .map_err(store_error)?
        .filter(|j| caller.owns(j.owner.as_deref()))
    else {
        return Err(FhirError::not_found(format!("no job '{id}'")));
    };
    match job.state {
        JobState::Cancelled => Err(FhirError::not_found(format!("job '{id}' was cancelled"))),
        JobState::Running { progress } => {
            let mut jobs = state.jobs.lock().await;
            let runtime = jobs.entry(id.clone()).or_insert(JobRuntime {
                abort: None,
                last_poll: None,
            });
            let advised = Duration::from_secs(state.retry_after);
            if let Some(last) = runtime.last_poll
                && last.elapsed() < advised / 2
            {
                return Err(FhirError::polled_too_often(state.retry_after));
            }
            runtime.last_poll = Some(Instant::now());
            let mut response = StatusCode::ACCEPTED.into_response();
            let headers = response.headers_mut();
            if let Ok(value) = HeaderValue::from_str(&progress) {
                headers.insert("x-progress", value);
            }
            if let Ok(value) = HeaderValue::from_str(&state.retry_after.to_string()) {
                headers.insert(header::RETRY_AFTER, value);
            }
            Ok(response)
        }
        JobState::Completed {
            status,
            location,
            outcome,
        } => {
            let status_text = StatusCode::from_u16(status)
                .ok()
                .and_then(|s| s.canonical_reason().map(|r| format!("{status} {r}")))
                .unwrap_or_else(|| status.to_string());
            let mut entry = json!({"response": {"status": status_text}});
            if let Some(location) = &location {
                entry["response"]["location"] = json!(location);
                if let Ok(Some(stored)) = state.store.get::<StoredGroup>(GROUPS, &job.group_id).await {
                    entry["resource"] = stored.resource;
                }
            }
            if let Some(outcome) = outcome {
                entry["response"]["outcome"] = outcome;
            }
            let bundle = json!({
                "resourceType": "Bundle",
                "id": id,
                "type": "batch-response",
                "entry": [entry],
            });
            Ok(fhir_json(StatusCode::OK, &bundle))
        }
    }
}

/// `DELETE /_jobs/{id}`: cancels a job; later polls answer 404.
pub async fn cancel(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, FhirError> {
    let _writes = state.group_writes.lock().await;
    let Some(mut job) = state
        .store
        .get::<Job>(JOBS, &id)
        .await
        .map_err(store_error)?
        .filter(|j| caller.owns(j.owner.as_deref()))
    else {
        return Err(FhirError::not_found(format!("no job '{id}'")));
    };
    if job.state == JobState::Cancelled {
        return Err(FhirError::not_found(format!("job '{id}' was already cancelled")));
    }
    if let Some(runtime) = state.jobs.lock().await.remove(&id)
        && let Some(abort) = runtime.abort
    {
        abort.abort();
    }
    job.state = JobState::Cancelled;
    job.updated_at = now();
    state.store.put(JOBS, &id, &job).await.map_err(store_error)?;
    Ok(fhir_json(
        StatusCode::ACCEPTED,
        &operation_outcome("information", "informational", &format!("job '{id}' cancelled")),
    ))
}

/// Groups of the loaded data, as JSON resources (`id` filter optional).
async fn loaded_groups(state: &AppState, id: Option<&str>) -> Result<Vec<Value>, FhirError> {
    let ctx = match crate::query::open_session(&state.warehouse).await {
        Ok(ctx) => ctx,
        Err(_) => return Ok(Vec::new()),
    };
    let Ok(table) = ctx.table(TableReference::partial(RESOURCE_SCHEMA, "Group")).await else {
        return Ok(Vec::new());
    };
    let mut frame = table;
    if let Some(id) = id {
        frame = frame
            .filter(col("id").eq(lit(id)))
            .map_err(|e| FhirError::internal(e.to_string()))?;
    }
    let batches = frame
        .select(vec![col("resource")])
        .map_err(|e| FhirError::internal(e.to_string()))?
        .collect()
        .await
        .map_err(|e| FhirError::internal(e.to_string()))?;
    let mut out = Vec::new();
    for batch in batches {
        let column = batch.column(0).as_string::<i32>();
        for i in 0..column.len() {
            if let Ok(value) = serde_json::from_str(column.value(i)) {
                out.push(value);
            }
        }
    }
    Ok(out)
}

async fn loaded_group(state: &AppState, id: &str) -> Result<Option<Value>, FhirError> {
    Ok(loaded_groups(state, Some(id)).await?.into_iter().next())
}

/// `GET /Group/{id}`.
pub async fn read(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, FhirError> {
    caller.require("Group", Permission::Read)?;
    if let Some(stored) = state.store.get::<StoredGroup>(GROUPS, &id).await.map_err(store_error)? {
        if !caller.sees_group(&id, stored.owner.as_deref()) {
            return Err(hidden(&format!("Group/{id}")));
        }
        return Ok(fhir_json(StatusCode::OK, &stored.resource));
    }
    match loaded_group(&state, &id).await? {
        Some(group) if caller.sees_group(&id, None) => Ok(fhir_json(StatusCode::OK, &group)),
        _ => Err(hidden(&format!("Group/{id}"))),
    }
}

/// Whether `caller` may see Group `id` (a cohort Group or one of the loaded
/// data); 404 when it does not exist or is not the caller's.
pub async fn check_visible(state: &AppState, caller: &Caller, id: &str) -> Result<(), FhirError> {
    if matches!(caller, Caller::Open) {
        return Ok(());
    }
    let owner = match state.store.get::<StoredGroup>(GROUPS, id).await.map_err(store_error)? {
        Some(stored) => stored.owner,
        None => None,
    };
    if caller.sees_group(id, owner.as_deref()) {
        Ok(())
    } else {
        Err(hidden(&format!("Group/{id}")))
    }
}

/// Only a cohort Group's creator may `action` (change, delete) it: a client
/// it was granted to gets 403 (it may read it), any other client 404.
fn check_owner(caller: &Caller, id: &str, owner: Option<&str>, action: &str) -> Result<(), FhirError> {
    if caller.owns(owner) {
        Ok(())
    } else if caller.sees_group(id, owner) {
        Err(FhirError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("Group/{id} was granted to this client read-only; only its creator may {action} it"),
        ))
    } else {
        Err(hidden(&format!("Group/{id}")))
    }
}

/// What a cohort reads must be readable by its creator: the types its
/// member-filters search (403) and its base Groups (404 when not visible).
async fn check_request_access(state: &AppState, caller: &Caller, request: &CohortRequest) -> Result<(), FhirError> {
    if matches!(caller, Caller::Open) {
        return Ok(());
    }
    let queries =
        crate::cohort::CohortEngine::parse(&request.filters).map_err(|e| FhirError::invalid(e.to_string()))?;
    caller.require_search(&queries)?;
    if !request.base_patients.is_empty() {
        caller.require("Patient", Permission::Read)?;
    }
    for group in &request.base_groups {
        check_visible(state, caller, group).await?;
    }
    Ok(())
}

/// `GET /Group/{id}/_history/{version}` (only the current version is kept).
pub async fn vread(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    Path((id, version)): Path<(String, String)>,
) -> Result<Response, FhirError> {
    caller.require("Group", Permission::Read)?;
    let stored = state
        .store
        .get::<StoredGroup>(GROUPS, &id)
        .await
        .map_err(store_error)?
        .filter(|g| caller.sees_group(&id, g.owner.as_deref()));
    match stored {
        Some(stored) if stored.version.to_string() == version => Ok(fhir_json(StatusCode::OK, &stored.resource)),
        Some(stored) => Err(FhirError::not_found(format!(
            "Group/{id} version {version} is not kept (the current version is {})",
            stored.version
        ))),
        None => Err(FhirError::not_found(format!("Group/{id} does not exist"))),
    }
}

/// `DELETE /Group/{id}`: removes a cohort Group.
pub async fn delete(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, FhirError> {
    caller.require("Group", Permission::Delete)?;
    let _writes = state.group_writes.lock().await;
    if let Some(stored) = state.store.get::<StoredGroup>(GROUPS, &id).await.map_err(store_error)? {
        check_owner(&caller, &id, stored.owner.as_deref(), "delete")?;
        state.store.delete(GROUPS, &id).await.map_err(store_error)?;
        tracing::info!(target: "fhirlake::audit", event = "cohort_deleted", client_id = caller.client_id().unwrap_or("-"), group = %id);
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    if loaded_group(&state, &id).await?.is_some() && caller.sees_group(&id, None) {
        return Err(FhirError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "not-supported",
            format!("Group/{id} comes from the loaded data and is read-only"),
        ));
    }
    Err(FhirError::not_found(format!("Group/{id} does not exist")))
}

fn page_params(params: &[(String, String)], default: usize, max: usize) -> Result<(usize, usize), FhirError> {
    let mut count = default;
    let mut offset = 0;
    for (k, v) in params {
        match k.as_str() {
            "_count" => {
                count = v
                    .parse::<usize>()
                    .map_err(|_| FhirError::invalid(format!("_count must be a number, got '{v}'")))?
                    .min(max)
            }
            "_offset" => {
                offset = v
                    .parse()
                    .map_err(|_| FhirError::invalid(format!("_offset must be a number, got '{v}'")))?
            }
            _ => {}
        }
    }
    Ok((count, offset))
}

fn page_links(base: &str, params: &[(String, String)], total: usize, count: usize, offset: usize) -> Vec<Value> {
    let query = |offset: usize| {
        let mut serializer = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in params.iter().filter(|(k, _)| k != "_offset" && k != "_count") {
            serializer.append_pair(k, v);
        }
        serializer.append_pair("_count", &count.to_string());
        serializer.append_pair("_offset", &offset.to_string());
        format!("{base}?{}", serializer.finish())
    };
    let mut links = vec![json!({"relation": "self", "url": query(offset)})];
    if offset + count < total {
        links.push(json!({"relation": "next", "url": query(offset + count)}));
    }
    if offset > 0 {
        links.push(json!({"relation": "previous", "url": query(offset.saturating_sub(count))}));
    }
    links
}

/// A `200` searchset Bundle of one page.
fn searchset(total: usize, links: Vec<Value>, entries: Vec<Value>) -> Response {
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "total": total,
        "link": links,
        "entry": entries,
    });
    fhir_json(StatusCode::OK, &bundle)
}

/// `GET /Group?name=…&_id=…&type=…&_count=…&_offset=…`.
pub async fn search(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Response, FhirError> {
    caller.require("Group", Permission::Search)?;
    let (count, offset) = page_params(&params, 50, 500)?;
    let mut ignored = Vec::new();
    for (k, _) in &params {
        if !matches!(
            k.as_str(),
            "name" | "name:exact" | "name:contains" | "_id" | "type" | "_count" | "_offset" | "_format"
        ) {
            ignored.push(k.clone());
        }
    }
    let mut groups: Vec<Value> = Vec::new();
    for id in state.store.list(GROUPS).await.map_err(store_error)? {
        if let Some(stored) = state.store.get::<StoredGroup>(GROUPS, &id).await.map_err(store_error)?
            && caller.sees_group(&id, stored.owner.as_deref())
        {
            groups.push(stored.resource);
        }
    }
    groups.extend(
        loaded_groups(&state, None)
            .await?
            .into_iter()
            .filter(|g| caller.sees_group(g["id"].as_str().unwrap_or_default(), None)),
    );
    let matches = |group: &Value| {
        let field = |name: &str| group.get(name).and_then(Value::as_str).unwrap_or_default();
        params.iter().all(|(k, v)| match k.as_str() {
            "name" => v.split(',').any(|v| fold(field("name")).starts_with(&fold(v))),
            "name:exact" => v.split(',').any(|v| field("name") == v),
            "name:contains" => v.split(',').any(|v| fold(field("name")).contains(&fold(v))),
            "_id" => v.split(',').any(|v| field("id") == v),
            "type" => v.split(',').any(|v| field("type") == v),
            _ => true,
        })
    };
    let mut found: Vec<Value> = groups.into_iter().filter(matches).collect();
    found.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    let total = found.len();
    let mut entries: Vec<Value> = found
        .into_iter()
        .skip(offset)
        .take(count)
        .map(|g| {
            json!({
                "fullUrl": format!("{}/Group/{}", state.base_url, g["id"].as_str().unwrap_or_default()),
                "resource": g,
                "search": {"mode": "match"},
            })
        })
        .collect();
    if !ignored.is_empty() {
        entries.push(json!({
            "resource": operation_outcome("warning", "not-supported", &format!(
                "search parameters ignored (Group supports name, _id, type, _count, _offset): {}", ignored.join(", "))),
            "search": {"mode": "outcome"},
        }));
    }
    let links = page_links(&format!("{}/Group", state.base_url), &params, total, count, offset);
    Ok(searchset(total, links, entries))
}

/// `GET /Group/{id}/$members?_count=…&_offset=…`: the member Patients of a
/// Group (cohort or loaded), as a paged searchset Bundle of Patient resources.
pub async fn members(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Response, FhirError> {
    caller.require("Group", Permission::Read)?;
    caller.require("Patient", Permission::Read)?;
    check_visible(&state, &caller, &id).await?;
    let (count, offset) = page_params(&params, 100, 1000)?;
    let engine = state.cohort_engine.get().await.map_err(cohort_error)?;
    let ids = crate::export::population::group_patients(&state.warehouse, &engine, &id)
        .await
        .map_err(super::export::export_error)?;
    let total = ids.len();
    let page: Vec<String> = ids.into_iter().skip(offset).take(count).collect();
    let resources = patients_by_id(&state, &page).await?;
    let entries: Vec<Value> = page
        .iter()
        .map(|pid| {
            let resource = resources
                .iter()
                .find(|r| r["id"].as_str() == Some(pid.as_str()))
                .cloned()
                // A member whose Patient resource is not loaded (referenced only).
                .unwrap_or_else(|| json!({"resourceType": "Patient", "id": pid}));
            json!({
                "fullUrl": format!("{}/Patient/{pid}", state.base_url),
                "resource": resource,
                "search": {"mode": "match"},
            })
        })
        .collect();
    let links = page_links(
        &format!("{}/Group/{id}/$members", state.base_url),
        &params,
        total,
        count,
        offset,
    );
    Ok(searchset(total, links, entries))
}

async fn patients_by_id(state: &AppState, ids: &[String]) -> Result<Vec<Value>, FhirError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let ctx = crate::query::open_session(&state.warehouse)
        .await
        .map_err(|e| FhirError::internal(e.to_string()))?;
    let Ok(table) = ctx.table(TableReference::partial(RESOURCE_SCHEMA, "Patient")).await else {
        return Ok(Vec::new());
    };
    let wanted: HashSet<&str> = ids.iter().map(String::as_str).collect();
    let batches = table
        .filter(col("id").in_list(ids.iter().map(|i| lit(i.as_str())).collect(), false))
        .and_then(|f| f.select(vec![col("id"), col("resource")]))
        .map_err(|e| FhirError::internal(e.to_string()))?
        .collect()
        .await
        .map_err(|e| FhirError::internal(e.to_string()))?;
    let mut out = Vec::new();
    for batch in batches {
        let (id_col, resource_col) = (batch.column(0).as_string::<i32>(), batch.column(1).as_string::<i32>());
        for i in 0..batch.num_rows() {
            if wanted.contains(id_col.value(i))
                && let Ok(value) = serde_json::from_str(resource_col.value(i))
            {
                out.push(value);
            }
        }
    }
    Ok(out)
}
