//! Finding members: `GET /Patient/{id}`, `GET /Patient?…` and the same for
//! `Coverage`. Searches take every parameter the cohort compiler accepts
//! for the type (they are compiled as a `member-filter` would be), ANDed,
//! with `_count` (default 50, at most 1000) and `_offset` paging; the
//! answer is a searchset Bundle in id order. Scopes apply.

use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use fhirlake_auth::Permission;
use serde_json::{Value, json};

use super::SharedState;
use super::auth::{Caller, hidden};
use super::groups::{page_links, page_params, searchset};
use super::outcome::{FhirError, fhir_json};

/// Parameters that page or format the answer rather than filter it.
const RESULT_PARAMETERS: [&str; 3] = ["_count", "_offset", "_format"];

/// `GET /Patient?…`.
pub async fn search_patients(
    state: State<SharedState>,
    caller: Extension<Caller>,
    params: Query<Vec<(String, String)>>,
) -> Result<Response, FhirError> {
    search(state, caller, "Patient", params).await
}

/// `GET /Coverage?…`.
pub async fn search_coverage(
    state: State<SharedState>,
    caller: Extension<Caller>,
    params: Query<Vec<(String, String)>>,
) -> Result<Response, FhirError> {
    search(state, caller, "Coverage", params).await
}

/// `GET /Patient/{id}`.
pub async fn read_patient(
    state: State<SharedState>,
    caller: Extension<Caller>,
    id: Path<String>,
) -> Result<Response, FhirError> {
    read(state, caller, "Patient", id).await
}

/// `GET /Coverage/{id}`.
pub async fn read_coverage(
    state: State<SharedState>,
    caller: Extension<Caller>,
    id: Path<String>,
) -> Result<Response, FhirError> {
    read(state, caller, "Coverage", id).await
}

async fn search(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    resource_type: &str,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Response, FhirError> {
    caller.require(resource_type, Permission::Search)?;
    let (count, offset) = page_params(&params, 50, 1000)?;
    let filters: Vec<(String, String)> = params
        .iter()
        .filter(|(name, _)| !RESULT_PARAMETERS.contains(&name.as_str()))
        .cloned()
        .collect();
    let page = state
        .service
        .search_resources(resource_type, &filters, count, offset)
        .await?;
    let entries: Vec<Value> = page
        .resources
        .into_iter()
        .map(|resource| {
            json!({
                "fullUrl": format!("{}/{resource_type}/{}", state.base_url, resource["id"].as_str().unwrap_or_default()),
                "resource": resource,
                "search": {"mode": "match"},
            })
        })
        .collect();
    let links = page_links(
        &format!("{}/{resource_type}", state.base_url),
        &params,
        page.total,
        count,
        offset,
    );
    Ok(searchset(page.total, links, entries))
}

async fn read(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    resource_type: &str,
    Path(id): Path<String>,
) -> Result<Response, FhirError> {
    caller.require(resource_type, Permission::Read)?;
    match state.service.read_resource(resource_type, &id).await? {
        Some(resource) => Ok(fhir_json(StatusCode::OK, &resource)),
        None => Err(hidden(&format!("{resource_type}/{id}"))),
    }
}

/// The `match-grade` extension of a `$match` result.
const MATCH_GRADE: &str = "http://hl7.org/fhir/StructureDefinition/match-grade";

/// `POST /Patient/$match` (R4): a `Parameters` with `resource` (a
/// Patient), optional `onlyCertainMatches` and `count` (default 10, at
/// most 100); a searchset Bundle of the matches, best first, each with
/// `search.score` and the `match-grade` extension.
pub async fn match_patients(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    body: axum::body::Bytes,
) -> Result<Response, FhirError> {
    caller.require("Patient", Permission::Search)?;
    let parameters: Value = serde_json::from_slice(&body)
        .map_err(|e| FhirError::invalid(format!("$match: the body is not valid JSON: {e}")))?;
    if parameters["resourceType"] != "Parameters" {
        return Err(FhirError::invalid("$match takes a Parameters resource"));
    }
    let find = |name: &str| {
        parameters["parameter"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == name)
            .cloned()
    };
    let Some(patient) = find("resource")
        .map(|p| p["resource"].clone())
        .filter(|r| r["resourceType"] == "Patient")
    else {
        return Err(FhirError::invalid(
            "$match needs a 'resource' parameter holding a Patient",
        ));
    };
    let only_certain = find("onlyCertainMatches")
        .and_then(|p| p["valueBoolean"].as_bool())
        .unwrap_or(false);
    let count = match find("count") {
        Some(p) => p["valueInteger"]
            .as_u64()
            .filter(|n| *n > 0)
            .ok_or_else(|| FhirError::invalid("$match: count must be a positive valueInteger"))?
            .min(100) as usize,
        None => 10,
    };
    let matches = state.service.match_patients(&patient, only_certain, count).await?;
    let entries: Vec<Value> = matches
        .into_iter()
        .map(|m| {
            json!({
                "fullUrl": format!("{}/Patient/{}", state.base_url, m.patient["id"].as_str().unwrap_or_default()),
                "resource": m.patient,
                "search": {
                    "mode": "match",
                    "score": m.score,
                    "extension": [{"url": MATCH_GRADE, "valueCode": m.grade}],
                },
            })
        })
        .collect();
    Ok(searchset(entries.len(), Vec::new(), entries))
}
