//! Group interactions: Bulk Cohort creation (async and sync), polling and
//! cancelling jobs, read, vread, search, update, delete, and `$members`.
//! Groups of the loaded data (plain member lists) are readable, searchable
//! and usable as base populations, but read-only.

use std::collections::HashSet;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use fhirlake_auth::Permission;
use fhirlake_engine::export::Progress;
use fhirlake_engine::group::manage::check_version;
use fhirlake_engine::group::search::{GROUP_SEARCH_PARAMETERS, GroupSearch};
use fhirlake_engine::group::{CohortRequest, StoredGroup, validate};
use fhirlake_engine::jobs::approval::ApprovalMode;
use fhirlake_engine::jobs::{JobKind, JobState, new_id};
use fhirlake_engine::patch::{apply_fhirpath_patch, apply_json_patch};
use serde_json::{Value, json};

use super::auth::{Caller, hidden};
use super::outcome::{FhirError, fhir_json, operation_outcome};
use super::prefer::{Prefer, Return};
use super::{AppState, SharedState};

/// Whether the client asked for an asynchronous response.
pub(crate) fn prefers_async(headers: &HeaderMap) -> bool {
    Prefer::of(headers).respond_async
}

pub(crate) fn check_content_type(headers: &HeaderMap) -> Result<(), FhirError> {
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

pub(crate) fn accepted(state: &AppState, job_id: &str) -> Response {
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
    state: &AppState,
    kind: JobKind,
    group_id: String,
    request: CohortRequest,
    owner: Option<String>,
) -> Result<Response, FhirError> {
    let job = state
        .service
        .start_group_job(kind, group_id, request, None, owner)
        .await?;
    Ok(accepted(state, &job.id))
}

/// `If-Match: W/"<version>"` (or `"<version>"`): the version a write
/// expects the Group to be at.
pub(crate) fn if_match(headers: &HeaderMap) -> Result<Option<u64>, FhirError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or_default().trim();
    text.trim_start_matches("W/")
        .trim_matches('"')
        .parse()
        .map(Some)
        .map_err(|_| FhirError::invalid(format!("If-Match must be a version ETag such as W/\"3\", got '{text}'")))
}

/// `W/"<version>"`, the Group's ETag.
fn etag(version: u64) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!("W/\"{version}\"")).ok()
}

/// On a server whose Group changes wait for an operator, a change must be
/// asynchronous (its answer comes after the approval).
pub(crate) fn check_sync_allowed(state: &AppState, headers: &HeaderMap) -> Result<(), FhirError> {
    if state.service.options.group_approval == ApprovalMode::Manual && !prefers_async(headers) {
        return Err(FhirError::new(
            StatusCode::BAD_REQUEST,
            "not-supported",
            "Group changes on this server wait for an operator's approval (serve --group-approval manual): \
             send the request with Prefer: respond-async and poll the Content-Location URL",
        ));
    }
    Ok(())
}

/// Refuses Group writes on a server that publishes its Groups read-only.
pub(crate) fn check_writable(state: &AppState) -> Result<(), FhirError> {
    if state.read_only_groups {
        return Err(FhirError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "not-supported",
            "this server publishes its Groups read-only (serve --read-only-groups): \
             Groups cannot be created, changed or deleted",
        ));
    }
    Ok(())
}

/// The Group resource `stored` as a response with `status`.
pub(crate) async fn group_response(
    state: &AppState,
    status: StatusCode,
    stored: &StoredGroup,
) -> Result<Response, FhirError> {
    let resource = state.service.groups.served_resource(stored).await?;
    let mut response = fhir_json(status, &resource);
    if let Some(value) = etag(stored.version) {
        response.headers_mut().insert(header::ETAG, value);
    }
    if status == StatusCode::CREATED
        && let Ok(value) = HeaderValue::from_str(&format!(
            "{}/Group/{}/_history/{}",
            state.base_url, stored.id, stored.version
        ))
    {
        response.headers_mut().insert(header::LOCATION, value);
    }
    Ok(response)
}

/// `POST /Group`: a criteria-based (Bulk Cohort) or member-based Group;
/// async with `Prefer: respond-async`.
pub async fn create(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, FhirError> {
    caller.require("Group", Permission::Create)?;
    check_writable(&state)?;
    check_sync_allowed(&state, &headers)?;
    check_content_type(&headers)?;
    let request = validate(&body)?;
    check_request_access(&state, &caller, &request).await?;
    let id = new_id();
    let owner = caller.client_id().map(str::to_string);
    write(&state, &headers, JobKind::CreateGroup, id, request, owner).await
}

/// Writes Group `id` from `request` as a create or update: a job (after
/// what can be checked is, before the 202) with `Prefer: respond-async`,
/// else at once (checked as it computes). With `Prefer: handling=lenient`
/// a member-based Group's unknown Patients are left out, and listed in the
/// batch-response's outcome (async) or the body when the client asks for
/// `return=OperationOutcome` (sync; the default body is the Group).
async fn write(
    state: &AppState,
    headers: &HeaderMap,
    kind: JobKind,
    id: String,
    mut request: CohortRequest,
    owner: Option<String>,
) -> Result<Response, FhirError> {
    let prefer = Prefer::of(headers);
    request.skip_unknown_members = prefer.lenient() && request.is_member_based();
    if prefer.respond_async {
        state.service.groups.precheck(&request).await?;
        return start_job(state, kind, id, request, owner).await;
    }
    let status = if kind == JobKind::CreateGroup {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let progress = Progress::default();
    let (stored, skipped) = state
        .service
        .groups
        .compute_group(&id, &request, owner, &progress)
        .await?;
    match prefer.body {
        Return::Representation => group_response(state, status, &stored).await,
        Return::Minimal => {
            let mut response = group_response(state, status, &stored).await?;
            *response.body_mut() = axum::body::Body::empty();
            response.headers_mut().remove(header::CONTENT_TYPE);
            Ok(response)
        }
        Return::OperationOutcome => {
            let mut response = group_response(state, status, &stored).await?;
            let location = format!("Group/{}/_history/{}", stored.id, stored.version);
            let outcome = write_outcome(&location, &skipped);
            let body = serde_json::to_vec(&outcome).map_err(|e| FhirError::internal(e.to_string()))?;
            *response.body_mut() = axum::body::Body::from(body);
            Ok(response)
        }
    }
}

/// The OperationOutcome of a Group write: what was written, and a warning
/// for each member entry left out because it names no Patient.
fn write_outcome(location: &str, skipped: &[String]) -> Value {
    let mut issues = vec![json!({
        "severity": "information",
        "code": "informational",
        "diagnostics": format!("written as {location}"),
    })];
    issues.extend(skipped.iter().map(|patient| {
        json!({
            "severity": "warning",
            "code": "not-found",
            "diagnostics": format!("member Patient/{patient} is not a Patient of this server: left out (Prefer: handling=lenient)"),
            "expression": ["Group.member.entity"],
        })
    }));
    json!({"resourceType": "OperationOutcome", "issue": issues})
}

/// `PUT /Group/{id}`: replaces a stored Group (criteria-based: its members
/// are recomputed; member-based: its members are the new entries).
pub async fn update(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, FhirError> {
    caller.require("Group", Permission::Update)?;
    check_writable(&state)?;
    check_sync_allowed(&state, &headers)?;
    check_content_type(&headers)?;
    let mut request = validate(&body)?;
    request.expected_version = if_match(&headers)?;
    check_request_access(&state, &caller, &request).await?;
    if let Some(body_id) = request.group.get("id").and_then(Value::as_str)
        && body_id != id
    {
        return Err(FhirError::invalid(format!(
            "the Group's id '{body_id}' differs from the URL's '{id}'"
        )));
    }
    let existing = writable_group(&state, &caller, &id).await?;
    // Refused before an async write's 202; the write checks again.
    check_version(&id, Some(&existing), request.expected_version)?;
    let owner = caller.client_id().map(str::to_string);
    write(&state, &headers, JobKind::UpdateGroup, id, request, owner).await
}

/// `PATCH /Group/{id}`: a JSON Patch (`application/json-patch+json`) or
/// a FHIRPath Patch (a `Parameters`, `application/fhir+json`) applied to
/// the stored Group with every member entry, then written as `PUT` writes
/// (validated again; sync, or async with `Prefer: respond-async`). A patch
/// that does not apply is a 422 and changes nothing.
pub async fn patch(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, FhirError> {
    caller.require("Group", Permission::Update)?;
    check_writable(&state)?;
    check_sync_allowed(&state, &headers)?;
    let existing = writable_group(&state, &caller, &id).await?;
    let expected = if_match(&headers)?;
    check_version(&id, Some(&existing), expected)?;
    let current = state.service.groups.full_resource(&existing).await?;
    let media = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|t| t.split(';').next())
        .unwrap_or_default()
        .trim()
        .to_string();
    let patched = match media.as_str() {
        "application/json-patch+json" => apply_json_patch(&current, &body)?,
        "application/fhir+json" | "application/json" => {
            let parameters: Value = serde_json::from_slice(&body)
                .map_err(|e| FhirError::invalid(format!("the FHIRPath Patch is not valid JSON: {e}")))?;
            apply_fhirpath_patch(&current, &parameters)?
        }
        other => {
            return Err(FhirError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "not-supported",
                format!(
                    "PATCH Content-Type '{other}' is not supported: send application/json-patch+json (JSON Patch) \
                     or application/fhir+json (a FHIRPath Patch Parameters)"
                ),
            ));
        }
    };
    let mut request = validate(patched.to_string().as_bytes())?;
    request.expected_version = expected;
    check_request_access(&state, &caller, &request).await?;
    let owner = caller.client_id().map(str::to_string);
    write(&state, &headers, JobKind::UpdateGroup, id, request, owner).await
}

/// Stored Group `id` when `caller` may change it: a Group of the loaded
/// data is read-only (405); one the caller may not see is a 404, one only
/// granted to it a 403.
pub(crate) async fn writable_group(state: &AppState, caller: &Caller, id: &str) -> Result<StoredGroup, FhirError> {
    let groups = &state.service.groups;
    let Some(existing) = groups.stored_group(id).await? else {
        return Err(
            if groups.loaded_group(id).await?.is_some() && caller.sees_group(id, None) {
                FhirError::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "not-supported",
                    format!("Group/{id} comes from the loaded data and is read-only"),
                )
            } else {
                hidden(&format!("Group/{id}"))
            },
        );
    };
    check_owner(caller, id, existing.owner.as_deref(), "change")?;
    Ok(existing)
}

/// `GET /_jobs/{id}`: the polling URL.
pub async fn poll(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, FhirError> {
    let job = state.service.group_job(&id, |owner| caller.owns(owner)).await?;
    let (status, location, outcome) = match job.state {
        JobState::Cancelled => return Err(FhirError::not_found(format!("job '{id}' was cancelled"))),
        JobState::Running { progress } => {
            let live = state.service.poll_group_job(&id).await?;
            let progress = if live.is_empty() { progress } else { live };
            let mut response = StatusCode::ACCEPTED.into_response();
            let headers = response.headers_mut();
            if let Ok(value) = HeaderValue::from_str(&progress) {
                headers.insert("x-progress", value);
            }
            if let Ok(value) = HeaderValue::from_str(&state.retry_after().to_string()) {
                headers.insert(header::RETRY_AFTER, value);
            }
            return Ok(response);
        }
        JobState::Succeeded {
            location,
            skipped_members,
        } => {
            let status = if job.kind == JobKind::CreateGroup {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            let outcome = (!skipped_members.is_empty()).then(|| write_outcome(&location, &skipped_members));
            (status, Some(location), outcome)
        }
        JobState::Failed(failure) => {
            let error = FhirError::from_failure(&failure);
            (error.status, None, Some(error.outcome()))
        }
        JobState::Completed {
            status,
            location,
            outcome,
        } => (
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            location,
            outcome,
        ),
    };
    let status_text = match status.canonical_reason() {
        Some(reason) => format!("{} {reason}", status.as_u16()),
        None => status.as_u16().to_string(),
    };
    let mut entry = json!({"response": {"status": status_text}});
    if let Some(location) = &location {
        entry["response"]["location"] = json!(location);
        if let Ok(Some(stored)) = state.service.groups.stored_group(&job.group_id).await {
            entry["resource"] = state.service.groups.served_resource(&stored).await?;
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

/// `DELETE /_jobs/{id}`: cancels a job; later polls answer 404.
pub async fn cancel(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, FhirError> {
    state.service.cancel_group_job(&id, |owner| caller.owns(owner)).await?;
    Ok(fhir_json(
        StatusCode::ACCEPTED,
        &operation_outcome("information", "informational", &format!("job '{id}' cancelled")),
    ))
}

/// `GET /Group/{id}`.
pub async fn read(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, FhirError> {
    caller.require("Group", Permission::Read)?;
    if let Some(stored) = state.service.groups.stored_group(&id).await? {
        if !caller.sees_group(&id, stored.owner.as_deref()) {
            return Err(hidden(&format!("Group/{id}")));
        }
        return group_response(&state, StatusCode::OK, &stored).await;
    }
    match state.service.groups.loaded_group(&id).await? {
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
    let owner = match state.service.groups.stored_group(id).await? {
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
pub(crate) fn check_owner(caller: &Caller, id: &str, owner: Option<&str>, action: &str) -> Result<(), FhirError> {
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
    let queries = fhirlake_engine::cohort::CohortEngine::parse(&request.filters)?;
    caller.require_search(&queries)?;
    if !request.base_patients.is_empty() {
        caller.require("Patient", Permission::Read)?;
    }
    for group in &request.base_groups {
        check_visible(state, caller, group).await?;
    }
    Ok(())
}

/// `GET /Group/{id}/_history/{version}`: any kept version (see
/// `--group-history-retention`).
pub async fn vread(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    Path((id, version)): Path<(String, String)>,
) -> Result<Response, FhirError> {
    caller.require("Group", Permission::Read)?;
    let current = state
        .service
        .groups
        .stored_group(&id)
        .await?
        .filter(|g| caller.sees_group(&id, g.owner.as_deref()));
    let Some(current) = current else {
        return Err(FhirError::not_found(format!("Group/{id} does not exist")));
    };
    let kept = match version.parse::<u64>() {
        Ok(number) => state.service.groups.group_version(&id, number).await?,
        Err(_) => None,
    };
    match kept {
        Some((stored, resource)) => {
            let mut response = fhir_json(StatusCode::OK, &resource);
            if let Some(value) = etag(stored.version) {
                response.headers_mut().insert(header::ETAG, value);
            }
            Ok(response)
        }
        None => Err(FhirError::not_found(format!(
            "Group/{id} version {version} is not kept (the current version is {}; superseded versions \
             are kept for the server's --group-history-retention)",
            current.version
        ))),
    }
}

/// `GET /Group/{id}/_history`: the kept versions, newest first, as a
/// history Bundle.
pub async fn history(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, FhirError> {
    caller.require("Group", Permission::Read)?;
    let visible = state
        .service
        .groups
        .stored_group(&id)
        .await?
        .is_some_and(|g| caller.sees_group(&id, g.owner.as_deref()));
    if !visible {
        return Err(hidden(&format!("Group/{id}")));
    }
    let versions = state.service.groups.history(&id).await?;
    let entries: Vec<Value> = versions
        .iter()
        .map(|(stored, resource)| {
            let (method, status) = if stored.version == 1 {
                ("POST", "201 Created")
            } else {
                ("PUT", "200 OK")
            };
            json!({
                "fullUrl": format!("{}/Group/{id}/_history/{}", state.base_url, stored.version),
                "resource": resource,
                "request": {"method": method, "url": if stored.version == 1 { "Group".to_string() } else { format!("Group/{id}") }},
                "response": {
                    "status": status,
                    "etag": format!("W/\"{}\"", stored.version),
                    "lastModified": resource["meta"]["lastUpdated"],
                },
            })
        })
        .collect();
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "history",
        "total": entries.len(),
        "entry": entries,
    });
    Ok(fhir_json(StatusCode::OK, &bundle))
}

/// `DELETE /Group/{id}`: removes a cohort Group.
pub async fn delete(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, FhirError> {
    caller.require("Group", Permission::Delete)?;
    check_writable(&state)?;
    if let Some(stored) = state.service.groups.stored_group(&id).await? {
        check_owner(&caller, &id, stored.owner.as_deref(), "delete")?;
        state.service.groups.delete_group(&id, if_match(&headers)?).await?;
        tracing::info!(target: "fhirlake::audit", event = "cohort_deleted", client_id = caller.client_id().unwrap_or("-"), group = %id);
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    if state.service.groups.loaded_group(&id).await?.is_some() && caller.sees_group(&id, None) {
        return Err(FhirError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "not-supported",
            format!("Group/{id} comes from the loaded data and is read-only"),
        ));
    }
    Err(FhirError::not_found(format!("Group/{id} does not exist")))
}

pub(crate) fn page_params(
    params: &[(String, String)],
    default: usize,
    max: usize,
) -> Result<(usize, usize), FhirError> {
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

pub(crate) fn page_links(
    base: &str,
    params: &[(String, String)],
    total: usize,
    count: usize,
    offset: usize,
) -> Vec<Value> {
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
pub(crate) fn searchset(total: usize, links: Vec<Value>, entries: Vec<Value>) -> Response {
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "total": total,
        "link": links,
        "entry": entries,
    });
    fhir_json(StatusCode::OK, &bundle)
}

/// `GET /Group?…`: every R4 Group search parameter, `name` (`:exact`,
/// `:contains`), `_id`, `_lastUpdated`, `_count`/`_offset`. An unknown
/// parameter is ignored and reported in an OperationOutcome entry, or a
/// 400 with `Prefer: handling=strict`.
pub async fn search(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Response, FhirError> {
    caller.require("Group", Permission::Search)?;
    let (count, offset) = page_params(&params, 50, 500)?;
    let filters: Vec<(String, String)> = params
        .iter()
        .filter(|(name, _)| !matches!(name.as_str(), "_count" | "_offset" | "_format"))
        .cloned()
        .collect();
    let search = GroupSearch::parse(&filters)?;
    let strict = Prefer::of(&headers).strict();
    if strict && !search.unknown.is_empty() {
        return Err(FhirError::invalid(format!(
            "unknown Group search parameters (Prefer: handling=strict): {}; supported: {}, _count, _offset",
            search.unknown.join(", "),
            GROUP_SEARCH_PARAMETERS.join(", ")
        )));
    }
    let by_member = filters.iter().any(|(name, _)| name.split(':').next() == Some("member"));
    let groups = &state.service.groups;
    let mut found: Vec<Value> = Vec::new();
    for stored in groups.stored_groups().await? {
        if !caller.sees_group(&stored.id, stored.owner.as_deref()) {
            continue;
        }
        let resource = groups.served_resource(&stored).await?;
        let members: Option<HashSet<String>> = match by_member {
            true => Some(groups.group_members(&stored.id).await?.into_iter().collect()),
            false => None,
        };
        if search.matches(&resource, members.as_ref()) {
            found.push(resource);
        }
    }
    found.extend(
        groups
            .loaded_groups(None)
            .await?
            .into_iter()
            .filter(|g| caller.sees_group(g["id"].as_str().unwrap_or_default(), None))
            .filter(|g| search.matches(g, None)),
    );
    let ignored = search.unknown;
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
                "search parameters ignored (Group supports {}, _count, _offset): {}", GROUP_SEARCH_PARAMETERS.join(", "), ignored.join(", "))),
            "search": {"mode": "outcome"},
        }));
    }
    let links = page_links(&format!("{}/Group", state.base_url), &params, total, count, offset);
    Ok(searchset(total, links, entries))
}
