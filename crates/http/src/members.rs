//! Member operations on member-based Groups, after the Da Vinci ATR
//! operations: `POST /Group/{id}/$member-add` and `$member-remove`, with a
//! `Parameters` body naming one member (`patientReference` or `memberId`,
//! optional `attributionPeriod`) or several (repeated `member` parameters
//! with those parts). Synchronous (200 and the Group) or, with `Prefer:
//! respond-async`, a job polled like a Group create. What will fail
//! (unknown or ambiguous members, removing a non-member, a stale
//! `If-Match`) is refused before the 202.

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use fhirlake_auth::Permission;
use fhirlake_engine::fhir::parse_reference;
use fhirlake_engine::group::manage::check_version;
use fhirlake_engine::group::{MemberAction, MemberRef};
use fhirlake_engine::jobs::JobKind;
use fhirlake_engine::search::range::period_text_range;
use serde_json::Value;

use super::SharedState;
use super::auth::Caller;
use super::groups::{
    accepted, check_content_type, check_sync_allowed, check_writable, group_response, if_match, prefers_async,
    writable_group,
};
use super::outcome::FhirError;

/// A member a request names: who, and the attribution period's bounds.
type NamedMember = (MemberRef, Option<String>, Option<String>);

/// `POST /Group/{id}/$member-add`.
pub async fn member_add(
    state: State<SharedState>,
    caller: Extension<Caller>,
    id: Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, FhirError> {
    change(state, caller, id, headers, body, MemberAction::Add).await
}

/// `POST /Group/{id}/$member-remove`.
pub async fn member_remove(
    state: State<SharedState>,
    caller: Extension<Caller>,
    id: Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, FhirError> {
    change(state, caller, id, headers, body, MemberAction::Remove).await
}

async fn change(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
    action: MemberAction,
) -> Result<Response, FhirError> {
    caller.require("Group", Permission::Update)?;
    // Members are found among the Patients.
    caller.require("Patient", Permission::Read)?;
    check_writable(&state)?;
    check_sync_allowed(&state, &headers)?;
    check_content_type(&headers)?;
    let members = parse_members(&body, action)?;
    let groups = &state.service.groups;
    let existing = writable_group(&state, &caller, &id).await?;
    let expected = if_match(&headers)?;
    check_version(&id, Some(&existing), expected)?;
    let (change, stored) = groups.prepare_change(&id, action, &members).await?;
    tracing::info!(target: "fhirlake::audit", event = "members_changed", client_id = caller.client_id().unwrap_or("-"), group = %id, operation = action.operation(), members = change.members.len());
    if prefers_async(&headers) {
        let mut request = stored.request.clone();
        request.expected_version = expected;
        let owner = caller.client_id().map(str::to_string);
        let job = state
            .service
            .start_group_job(JobKind::ChangeMembers, id, request, Some(change), owner)
            .await?;
        return Ok(accepted(&state, &job.id));
    }
    let stored = groups.change_members(&id, &change, expected).await?;
    group_response(&state, StatusCode::OK, &stored).await
}

/// The members a `Parameters` body names, in order.
fn parse_members(body: &[u8], action: MemberAction) -> Result<Vec<NamedMember>, FhirError> {
    let operation = action.operation();
    let parameters: Value = serde_json::from_slice(body)
        .map_err(|e| FhirError::invalid(format!("{operation}: the body is not valid JSON: {e}")))?;
    if parameters.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
        return Err(FhirError::invalid(format!("{operation} takes a Parameters resource")));
    }
    let list = parameters.get("parameter").and_then(Value::as_array);
    let list = list.map(Vec::as_slice).unwrap_or_default();
    let mut members = Vec::new();
    let (nested, top): (Vec<&Value>, Vec<&Value>) = list
        .iter()
        .partition(|p| p.get("name").and_then(Value::as_str) == Some("member"));
    if !top.is_empty() {
        members.push(parse_member(&top, operation)?);
    }
    for member in nested {
        let parts = member.get("part").and_then(Value::as_array);
        let parts: Vec<&Value> = parts.map(|p| p.iter().collect()).unwrap_or_default();
        members.push(parse_member(&parts, operation)?);
    }
    if members.is_empty() {
        return Err(FhirError::invalid(format!(
            "{operation} needs a member: a patientReference or memberId parameter (or member parameters with those parts)"
        )));
    }
    Ok(members)
}

/// One member from its parameters: `patientReference` (preferred when
/// both are given) or `memberId`, and `attributionPeriod`. The ATR's
/// provider parameters are accepted and not used (fhirlake keeps no
/// attribution to providers).
fn parse_member(parameters: &[&Value], operation: &str) -> Result<NamedMember, FhirError> {
    let mut patient = None;
    let mut identifier = None;
    let mut period = (None, None);
    for parameter in parameters {
        let name = parameter.get("name").and_then(Value::as_str).unwrap_or_default();
        match name {
            "patientReference" => {
                let reference = parameter["valueReference"]["reference"].as_str().unwrap_or_default();
                match parse_reference(reference) {
                    Some(target) if target.resource_type == Some("Patient") => {
                        patient = Some(MemberRef::Patient(target.id.to_string()))
                    }
                    _ => {
                        return Err(FhirError::invalid(format!(
                            "{operation}: patientReference must be a valueReference to a Patient, got '{reference}'"
                        )));
                    }
                }
            }
            "memberId" => {
                let value = &parameter["valueIdentifier"];
                let Some(text) = value["value"].as_str().filter(|v| !v.is_empty()) else {
                    return Err(FhirError::invalid(format!(
                        "{operation}: memberId must be a valueIdentifier with a value"
                    )));
                };
                identifier = Some(MemberRef::Identifier {
                    system: value["system"].as_str().map(str::to_string),
                    value: text.to_string(),
                });
            }
            "attributionPeriod" => {
                let value = &parameter["valuePeriod"];
                let bound = |name: &str| value[name].as_str().map(str::to_string);
                period = (bound("start"), bound("end"));
                let readable = period_text_range(period.0.as_deref(), period.1.as_deref()).is_some();
                if !readable {
                    return Err(FhirError::invalid(format!(
                        "{operation}: attributionPeriod must be a valuePeriod with a start or an end (FHIR dateTimes, start before end)"
                    )));
                }
            }
            "providerNpi" | "providerReference" => {}
            other => {
                return Err(FhirError::invalid(format!(
                    "{operation}: unknown parameter '{other}' (patientReference, memberId, attributionPeriod, \
                     providerNpi, providerReference, member)"
                )));
            }
        }
    }
    let Some(reference) = patient.or(identifier) else {
        return Err(FhirError::invalid(format!(
            "{operation}: each member needs a patientReference or a memberId"
        )));
    };
    Ok((reference, period.0, period.1))
}
