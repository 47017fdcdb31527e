//! `GET /Group/{id}/$members`: a Group's member Patients now, as of an
//! instant (`_at`), or the joins and leaves since one (`_since`), as paged
//! searchset Bundles of Patient resources.

use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use fhirlake_auth::Permission;
use fhirlake_engine::fhir::parse_instant;
use fhirlake_engine::group::RefreshTrigger;
use fhirlake_engine::group::history::MembershipChange;
use serde_json::{Value, json};

use super::SharedState;
use super::auth::Caller;
use super::groups::{check_visible, page_links, page_params, searchset};
use super::outcome::FhirError;

/// The extension on a `$members?_since` entry's `search` saying what
/// happened to the member: `action` (joined, changed, left), `at` (when),
/// `version` (the Group version that did it).
pub const MEMBERSHIP_CHANGE_URL: &str = "https://fhirlake.dev/fhir/StructureDefinition/membership-change";

/// `GET /Group/{id}/$members`: `_count`/`_offset` paging; `_at=INSTANT`
/// the members as of then; `_since=INSTANT` the membership changes after
/// then, oldest first (history is kept for Groups created through this
/// server).
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
    let groups = &state.service.groups;
    let (since, at) = (instant(&params, "_since")?, instant(&params, "_at")?);
    let page_base = format!("{}/Group/{id}/$members", state.base_url);
    let ids = match (since, at) {
        (Some(_), Some(_)) => return Err(FhirError::invalid("$members takes _since or _at, not both")),
        (Some(since), None) => {
            let changes = groups.membership_changes(&id, since).await?;
            let total = changes.len();
            let page: Vec<MembershipChange> = changes.into_iter().skip(offset).take(count).collect();
            let entries = change_entries(&state, &page).await?;
            return Ok(searchset(
                total,
                page_links(&page_base, &params, total, count, offset),
                entries,
            ));
        }
        (None, Some(at)) => groups.members_at(&id, at).await?,
        (None, None) => {
            // An on-demand Group is computed for this call (the first
            // page's: later pages read the version it wrote).
            if offset == 0 {
                groups.refresh_if_on_demand(&id, RefreshTrigger::Members).await?;
            }
            groups.group_members(&id).await?
        }
    };
    let total = ids.len();
    let page: Vec<String> = ids.into_iter().skip(offset).take(count).collect();
    let resources = patient_entries(&state, &page).await?;
    let entries = resources
        .into_iter()
        .map(|(full_url, resource)| json!({"fullUrl": full_url, "resource": resource, "search": {"mode": "match"}}))
        .collect();
    Ok(searchset(
        total,
        page_links(&page_base, &params, total, count, offset),
        entries,
    ))
}

/// The instant parameter `name`, if given (µs).
fn instant(params: &[(String, String)], name: &str) -> Result<Option<i64>, FhirError> {
    let Some((_, value)) = params.iter().find(|(k, _)| k == name) else {
        return Ok(None);
    };
    parse_instant(value.trim()).map(Some).ok_or_else(|| {
        FhirError::invalid(format!(
            "{name} must be a FHIR instant with a time zone (e.g. 2024-01-31T00:00:00.000Z), got '{value}'"
        ))
    })
}

/// (fullUrl, Patient resource) of each of `ids`, in order; a member whose
/// Patient is not loaded (referenced only, or deleted since it left) is a
/// Patient with only its id.
async fn patient_entries(state: &SharedState, ids: &[String]) -> Result<Vec<(String, Value)>, FhirError> {
    let resources = state.service.groups.patients_by_id(ids).await?;
    Ok(ids
        .iter()
        .map(|pid| {
            let resource = resources
                .iter()
                .find(|r| r["id"].as_str() == Some(pid.as_str()))
                .cloned()
                .unwrap_or_else(|| json!({"resourceType": "Patient", "id": pid}));
            (format!("{}/Patient/{pid}", state.base_url), resource)
        })
        .collect())
}

/// The entries of a page of membership changes: the Patient, with the
/// change in its `search` extension.
async fn change_entries(state: &SharedState, page: &[MembershipChange]) -> Result<Vec<Value>, FhirError> {
    let ids: Vec<String> = page.iter().map(|c| c.patient.clone()).collect();
    let resources = patient_entries(state, &ids).await?;
    Ok(page
        .iter()
        .zip(resources)
        .map(|(change, (full_url, resource))| {
            let at = chrono::DateTime::from_timestamp_micros(change.at)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
                .unwrap_or_default();
            json!({
                "fullUrl": full_url,
                "resource": resource,
                "search": {
                    "mode": "match",
                    "extension": [{
                        "url": MEMBERSHIP_CHANGE_URL,
                        "extension": [
                            {"url": "action", "valueCode": change.action.code()},
                            {"url": "at", "valueInstant": at},
                            {"url": "version", "valueUnsignedInt": change.version},
                        ]
                    }]
                }
            })
        })
        .collect())
}
