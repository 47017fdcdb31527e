//! The `bulk-cohort-group` profile: validating a submitted Group, computing
//! its membership with the cohort engine, and the stored form.

use std::collections::HashSet;

use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::outcome::FhirError;
use crate::cohort::{CohortEngine, CohortError, CurrentEngine};
use crate::fhir::parse_reference;
use datafusion::error::DataFusionError;

/// `member-filter` modifier extension.
pub const MEMBER_FILTER_URL: &str = "http://hl7.org/fhir/uv/bulkdata/StructureDefinition/member-filter";
/// `members-refreshed` extension.
pub const MEMBERS_REFRESHED_URL: &str = "http://hl7.org/fhir/uv/bulkdata/StructureDefinition/members-refreshed";
/// The Bulk Cohort Group profile.
pub const COHORT_PROFILE: &str = "http://hl7.org/fhir/uv/bulkdata/StructureDefinition/bulk-cohort-group";
/// The only `member-filter` language supported.
pub const FHIR_QUERY: &str = "application/x-fhir-query";
/// State kind of stored cohort Groups.
pub const GROUPS: &str = "groups";

/// A validated cohort Group request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CohortRequest {
    /// The Group as submitted (id and meta are replaced when stored).
    pub group: Value,
    /// The member-filter expressions (ANDed).
    pub filters: Vec<String>,
    /// Base population: Patient ids.
    pub base_patients: Vec<String>,
    /// Base population: Group ids (expanded when computed).
    pub base_groups: Vec<String>,
}

impl CohortRequest {
    /// Whether `member` limits the population.
    pub fn has_base(&self) -> bool {
        !self.base_patients.is_empty() || !self.base_groups.is_empty()
    }
}

/// A cohort Group as stored: the resource served, and its membership.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredGroup {
    /// Logical id.
    pub id: String,
    /// Version (`meta.versionId`).
    pub version: u64,
    /// The request it was computed from.
    pub request: CohortRequest,
    /// The Group resource served by `GET /Group/{id}`.
    pub resource: Value,
    /// Member Patient ids, sorted.
    pub members: Vec<String>,
    /// Warehouse version the membership was computed on.
    pub warehouse_version: u64,
    /// The client that created it (`None` without authorization).
    #[serde(default)]
    pub owner: Option<String>,
}

/// Validates a submitted Group against `bulk-cohort-group` and what fhirlake
/// supports. Every problem found is reported (in one OperationOutcome text).
pub fn validate(body: &[u8]) -> Result<CohortRequest, FhirError> {
    let group: Value =
        serde_json::from_slice(body).map_err(|e| FhirError::invalid(format!("the body is not valid JSON: {e}")))?;
    let Some(object) = group.as_object() else {
        return Err(FhirError::invalid("the body must be a JSON object (a Group resource)"));
    };
    if object.get("resourceType").and_then(Value::as_str) != Some("Group") {
        return Err(FhirError::invalid("resourceType must be 'Group'"));
    }
    let mut problems: Vec<String> = Vec::new();
    let mut not_supported = false;
    match object.get("name").and_then(Value::as_str) {
        Some(name) if !name.trim().is_empty() => {}
        _ => problems.push("Group.name is required (1..1) by bulk-cohort-group".into()),
    }
    if object.contains_key("characteristic") {
        problems.push("Group.characteristic is not allowed (0..0) by bulk-cohort-group; use member-filter".into());
    }
    match object.get("type").and_then(Value::as_str) {
        Some("person") => {}
        Some(t @ ("practitioner" | "device")) => {
            not_supported = true;
            problems.push(format!(
                "Group.type '{t}' is not supported: fhirlake builds cohorts of Patients (type 'person')"
            ));
        }
        Some(t) => problems.push(format!(
            "Group.type '{t}' is not in group-type-subset (person | practitioner | device)"
        )),
        None => problems.push("Group.type is required (1..1); use 'person'".into()),
    }
    if !object.get("actual").is_some_and(Value::is_boolean) {
        problems.push("Group.actual (boolean) is required (1..1)".into());
    }
    let mut filters = Vec::new();
    for extension in object
        .get("modifierExtension")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let url = extension.get("url").and_then(Value::as_str).unwrap_or_default();
        if url != MEMBER_FILTER_URL {
            problems.push(format!(
                "unknown modifierExtension '{url}': a Group with a modifier fhirlake does not understand cannot be processed"
            ));
            continue;
        }
        let Some(expression) = extension.get("valueExpression") else {
            problems.push("member-filter needs a valueExpression".into());
            continue;
        };
        let language = expression.get("language").and_then(Value::as_str).unwrap_or_default();
        if language != FHIR_QUERY {
            not_supported = true;
            problems.push(format!(
                "member-filter language '{language}' is not supported (only {FHIR_QUERY})"
            ));
            continue;
        }
        match expression.get("expression").and_then(Value::as_str) {
            Some(text) => match CohortEngine::parse(&[text]) {
                Ok(_) => filters.push(text.to_string()),
                Err(e) => problems.push(format!("member-filter '{text}': {e}")),
            },
            None => problems.push("member-filter valueExpression.expression (a FHIR search) is required".into()),
        }
    }
    if filters.is_empty() && !problems.iter().any(|p| p.starts_with("member-filter")) {
        problems.push(format!(
            "a cohort Group needs at least one member-filter modifierExtension ({MEMBER_FILTER_URL})"
        ));
    }
    let mut base_patients = Vec::new();
    let mut base_groups = Vec::new();
    for member in object
        .get("member")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let reference = member
            .get("entity")
            .and_then(|e| e.get("reference"))
            .and_then(Value::as_str)
            .unwrap_or_default();
        match parse_reference(reference) {
            Some(target) if target.resource_type == Some("Patient") => base_patients.push(target.id.to_string()),
            Some(target) if target.resource_type == Some("Group") => base_groups.push(target.id.to_string()),
            _ => problems.push(format!(
                "member.entity '{reference}' must reference a Patient or a Group (the base population)"
            )),
        }
    }
    if !problems.is_empty() {
        let status = if not_supported && problems.len() == 1 {
            FhirError::new(StatusCode::BAD_REQUEST, "not-supported", problems.join("; "))
        } else {
            FhirError::new(StatusCode::BAD_REQUEST, "invalid", problems.join("; "))
        };
        return Err(status);
    }
    Ok(CohortRequest {
        group,
        filters,
        base_patients,
        base_groups,
    })
}

/// The FHIR error for a cohort failure: the request's fault (400), no data
/// yet or no memory at the moment (503, transient), or the server's (500).
pub(super) fn cohort_error(error: CohortError) -> FhirError {
    match error {
        CohortError::Search(_) | CohortError::Unsupported { .. } => FhirError::invalid(error.to_string()),
        CohortError::GroupNotFound(id) => {
            FhirError::invalid(format!("member references Group/{id}, which does not exist"))
        }
        CohortError::EmptyWarehouse => FhirError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "transient",
            "no data is loaded yet (fhirlake load)",
        ),
        // Requests on one warehouse version share the engine's memory pool:
        // running out is the load of the moment, not a fault of the request.
        CohortError::DataFusion(e) if matches!(e.find_root(), DataFusionError::ResourcesExhausted(_)) => {
            FhirError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "transient",
                format!("the server is busy (query memory exhausted: {e}); retry later"),
            )
        }
        other => FhirError::internal(other.to_string()),
    }
}

/// Computes the members of `request` on the current warehouse: the
/// patients meeting every filter, within the base population when `member`
/// gives one (Patients, and Groups: stored cohort Groups by their computed
/// members, Groups of the loaded data expanded recursively).
pub async fn compute(current: &CurrentEngine, request: &CohortRequest) -> Result<(Vec<String>, u64), FhirError> {
    let engine = current.get().await.map_err(cohort_error)?;
    if !engine.has_index() {
        return Err(FhirError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "transient",
            "the warehouse has no search index (it was loaded with --no-index)",
        ));
    }
    let queries = CohortEngine::parse(&request.filters).map_err(cohort_error)?;
    let base = if request.has_base() {
        let mut members: HashSet<String> = request.base_patients.iter().cloned().collect();
        let mut seen = HashSet::new();
        let mut pending = request.base_groups.clone();
        while let Some(group) = pending.pop() {
            if !seen.insert(group.clone()) {
                continue;
            }
            members.extend(
                crate::export::population::group_patients(engine.warehouse(), &engine, &group)
                    .await
                    .map_err(|e| match e {
                        crate::export::ExportError::GroupNotFound(id) => cohort_error(CohortError::GroupNotFound(id)),
                        other => super::export::export_error(other),
                    })?,
            );
        }
        let mut members: Vec<String> = members.into_iter().collect();
        members.sort_unstable();
        Some(members)
    } else {
        None
    };
    let plan = engine.plan(&queries, base.as_deref()).map_err(cohort_error)?;
    let result = engine.run(plan).await.map_err(cohort_error)?;
    Ok((result.patients, engine.version()))
}

/// The Group resource served for a cohort: the request's Group with `id`,
/// `meta` (version, lastUpdated, profile), `quantity` and
/// `members-refreshed`. Its `member-filter`s stay: it is still a
/// modifier-extension Group, never a plain member list.
pub fn group_resource(id: &str, version: u64, request: &CohortRequest, members: usize, computed_at: &str) -> Value {
    let mut group = request.group.clone();
    if let Some(object) = group.as_object_mut() {
        object.insert("id".into(), json!(id));
        let mut profiles = vec![json!(COHORT_PROFILE)];
        if let Some(existing) = object
            .get("meta")
            .and_then(|m| m.get("profile"))
            .and_then(Value::as_array)
        {
            profiles.extend(existing.iter().filter(|p| p.as_str() != Some(COHORT_PROFILE)).cloned());
        }
        object.insert(
            "meta".into(),
            json!({"versionId": version.to_string(), "lastUpdated": computed_at, "profile": profiles}),
        );
        object.insert("quantity".into(), json!(members));
        let mut extensions: Vec<Value> = object
            .get("extension")
            .and_then(Value::as_array)
            .map(|e| {
                e.iter()
                    .filter(|x| x.get("url").and_then(Value::as_str) != Some(MEMBERS_REFRESHED_URL))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        extensions.push(json!({"url": MEMBERS_REFRESHED_URL, "valueDateTime": computed_at}));
        object.insert("extension".into(), Value::Array(extensions));
    }
    group
}
