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
use std::time::Duration;

use axum::Extension;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use fhirlake_auth::Permission;
use fhirlake_engine::cohort::CohortEngine;
use fhirlake_engine::export::manifest::manifest;
use fhirlake_engine::export::{
    ExportLevel, ExportOutput, ExportRequest, ExportedFile, OutputFormat, pairs_from_parameters, parse_export,
};
use fhirlake_engine::jobs::{ExportJob, ExportKickoff, ExportState, JobError};
use serde_json::Value;

use super::auth::Caller;
use super::outcome::{FhirError, fhir_json, operation_outcome};
use super::prefer::Prefer;
use super::{AppState, SharedState};

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
    let prefer = Prefer::of(headers);
    let lenient = prefer.lenient();
    let separate_status = prefer.separate_export_status;
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
        pairs.extend(pairs_from_parameters(&parameters)?);
    }
    let mut parsed = parse_export(level, &pairs, post, lenient)?;
    restrict_to_scopes(caller, &mut parsed.request, &mut parsed.ignored)?;
    // A filter reads the types it searches (chains, `_has`) too.
    for filter in &parsed.request.type_filters {
        caller.require_search(&CohortEngine::parse(&[filter])?)?;
    }
    let request_url = match (&method, uri.query()) {
        (&Method::GET, Some(q)) => format!("{}{}?{q}", state.base_url, uri.path()),
        _ => format!("{}{}", state.base_url, uri.path()),
    };
    let job = state
        .service
        .start_export(ExportKickoff {
            request: parsed.request,
            ignored: parsed.ignored,
            request_url,
            separate_status,
            owner: caller.client_id().map(str::to_string),
        })
        .await?;
    let id = job.id;
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

/// Export `id`, if `caller` kicked it off (others get 404: a job's
/// existence does not leak).
async fn load_job(state: &AppState, caller: &Caller, id: &str) -> Result<ExportJob, FhirError> {
    Ok(state.service.export_job(id, |owner| caller.owns(owner)).await?)
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

/// The manifest `extension` naming the version of the stored Group an
/// export ran against.
pub const GROUP_VERSION_EXTENSION: &str = "https://fhirlake.dev/fhir/group-version";

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
        let url = match (state.downloads, &state.service.export_files.signer) {
            (DownloadMode::Presigned { expiry }, Some(signer)) => signer
                .signed_url(
                    Method::GET,
                    &state.service.export_file_path(&job.id, &file.name),
                    expiry,
                )
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
    // Which version of a stored Group the export ran against.
    if let (ExportLevel::Group(id), Some(version)) = (&job.request.level, job.request.group_version) {
        body["extension"] = serde_json::json!({
            GROUP_VERSION_EXTENSION: format!("{}/Group/{id}/_history/{version}", state.base_url)
        });
    }
    Ok(body)
}

/// Whether a download needs the client's access token: presigned URLs carry
/// their own authorization; files streamed by this server need the token of
/// the client that kicked the export off, when authorization is on.
fn requires_access_token(state: &AppState) -> bool {
    match state.downloads {
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
    let (response, status) = match &job.state {
        ExportState::Running => (
            running_status(&state, job.clone(), page).await?,
            "202 Accepted".to_string(),
        ),
        ExportState::Completed { output, expires_at, .. } => (
            completed_status(&state, &job, output, expires_at, page).await?,
            "200 OK".to_string(),
        ),
        ExportState::Failed(failure) => {
            let mut error = FhirError::from_failure(failure);
            // A 404 on the status URL means "no such job": a Group that
            // vanished while the job ran is reported as gone instead.
            if error.status == StatusCode::NOT_FOUND {
                error.status = StatusCode::GONE;
            }
            let code = error.status;
            let text = format!("{} {}", code.as_u16(), code.canonical_reason().unwrap_or(""));
            (fhir_json(code, &error.outcome()), text.trim().to_string())
        }
        ExportState::Cancelled => return Err(FhirError::not_found(format!("export '{id}' was cancelled"))),
    };
    Ok(if job.separate_status {
        separate(response, &status)
    } else {
        response
    })
}

/// Under `Prefer: separate-export-status`, the status goes into
/// `X-Export-Status` and the response itself is a `200`.
fn separate(mut response: Response, status: &str) -> Response {
    if let Ok(value) = HeaderValue::from_str(status) {
        response.headers_mut().insert("x-export-status", value);
    }
    *response.status_mut() = StatusCode::OK;
    response
}

/// The error for a manifest page `page` that export `id` does not have.
fn no_page(id: &str, page: usize) -> FhirError {
    FhirError::from(JobError::NoSuchPart {
        what: format!("export '{id}'"),
        item: format!("manifest page {page}"),
    })
}

/// A running export's status: `202` with its progress, and under
/// `allowPartialManifests` the manifest page asked for once published.
async fn running_status(state: &AppState, job: ExportJob, page: usize) -> Result<Response, FhirError> {
    let id = job.id.clone();
    let polled = state.service.poll_export(job, page).await?;
    let partial = match polled.page {
        Some(page) => {
            let pages = &polled.job.pages;
            let next = (page < pages.len()).then_some(page + 1);
            Some(job_manifest(state, &polled.job, &pages[page - 1], next, false).await?)
        }
        None => None,
    };
    if partial.is_none() && page > 1 && page > polled.job.pages.len() + 1 {
        return Err(no_page(&id, page));
    }
    let mut response = match &partial {
        Some(body) => json_response(StatusCode::ACCEPTED, body),
        None => StatusCode::ACCEPTED.into_response(),
    };
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&polled.progress) {
        headers.insert("x-progress", value);
    }
    if let Ok(value) = HeaderValue::from_str(&state.retry_after().to_string()) {
        headers.insert(header::RETRY_AFTER, value);
    }
    Ok(response)
}

/// A completed export's manifest (page `page` when it was paged), with
/// `Expires` when its files are deleted.
async fn completed_status(
    state: &AppState,
    job: &ExportJob,
    output: &[ExportedFile],
    expires_at: &str,
    page: usize,
) -> Result<Response, FhirError> {
    let body = if job.pages.is_empty() {
        if page != 1 {
            return Err(no_page(&job.id, page));
        }
        job_manifest(state, job, output, None, true).await?
    } else {
        let files = job.pages.get(page - 1).ok_or_else(|| no_page(&job.id, page))?;
        let last = page == job.pages.len();
        job_manifest(state, job, files, (!last).then_some(page + 1), last).await?
    };
    let mut response = json_response(StatusCode::OK, &body);
    if let Ok(expires) = chrono::DateTime::parse_from_rfc3339(expires_at)
        && let Ok(value) = HeaderValue::from_str(&expires.to_rfc2822().replace("+0000", "GMT"))
    {
        response.headers_mut().insert(header::EXPIRES, value);
    }
    Ok(response)
}

/// `DELETE /_export/{id}`: cancels a running export or deletes a finished
/// one; its files are purged and later polls answer 404.
pub async fn cancel(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, FhirError> {
    state.service.cancel_export(&id, |owner| caller.owns(owner)).await?;
    Ok(fhir_json(
        StatusCode::ACCEPTED,
        &operation_outcome(
            "information",
            "informational",
            &format!("export '{id}' cancelled and its files deleted"),
        ),
    ))
}

/// The one byte range `header` asks for in a file of `size` bytes
/// (inclusive bounds); `None` for the whole file: no `bytes=` unit, or
/// several ranges (serving the whole file is allowed by RFC 9110); `Err`
/// when unsatisfiable.
fn parse_range(header: &str, size: u64) -> Result<Option<(u64, u64)>, ()> {
    match http_range_header::parse_range_header(header) {
        Ok(ranges) => match ranges.validate(size).map_err(|_| ())?.as_slice() {
            [one] => Ok(Some((*one.start(), *one.end()))),
            _ => Ok(None),
        },
        // Another unit than bytes: ignored, as RFC 9110 asks.
        Err(_) if !header.trim_start().starts_with("bytes=") => Ok(None),
        Err(_) => Err(()),
    }
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
    let Some(file) = job.downloadable().into_iter().find(|f| f.name == name).cloned() else {
        return Err(JobError::NoSuchPart {
            what: format!("export '{id}'"),
            item: format!("file '{name}'"),
        }
        .into());
    };
    tracing::info!(target: "fhirlake::audit", event = "export_downloaded", client_id = caller.client_id().unwrap_or("-"), export = %id, file = %name);
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
    let stream = state.service.read_export_file(&id, &file, range).await?;
    // Gzip for clients that accept it is the router's compression layer.
    let builder = Response::builder()
        .header(header::CONTENT_TYPE, content_type)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::VARY, "accept-encoding");
    let body = Body::from_stream(stream);
    let builder = match range {
        Some((start, end)) => builder
            .status(StatusCode::PARTIAL_CONTENT)
            .header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{size}"))
            .header(header::CONTENT_LENGTH, end - start + 1),
        None => builder.status(StatusCode::OK).header(header::CONTENT_LENGTH, size),
    };
    builder
        .body(body)
        .map_err(|e| FhirError::internal(format!("building the response: {e}")))
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
