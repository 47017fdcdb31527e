//! The `bulk-cohort-group` profile: validating a submitted Group and the
//! Group resource served for it.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::GroupError;
use super::membership::MemberEntry;
use super::mode::MembershipMode;
use crate::cohort::CohortEngine;
use crate::fhir::compartment::PatientCompartment;
use crate::fhir::parse_reference;

/// `member-filter` modifier extension.
pub const MEMBER_FILTER_URL: &str = "http://hl7.org/fhir/uv/bulkdata/StructureDefinition/member-filter";
/// `members-refreshed` extension.
pub const MEMBERS_REFRESHED_URL: &str = "http://hl7.org/fhir/uv/bulkdata/StructureDefinition/members-refreshed";
/// The Bulk Cohort Group profile.
pub const COHORT_PROFILE: &str = "http://hl7.org/fhir/uv/bulkdata/StructureDefinition/bulk-cohort-group";
/// The only `member-filter` language supported.
pub const FHIR_QUERY: &str = "application/x-fhir-query";

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
    /// `If-Match`: the version the client last saw; the write is refused
    /// when the Group has moved on. Never stored with the Group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_version: Option<u64>,
    /// `Prefer: handling=lenient` on a member-based write: entries naming
    /// no Patient of the warehouse are left out (and reported) instead of
    /// refusing the write. Never stored with the Group.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skip_unknown_members: bool,
}

impl CohortRequest {
    /// Whether `member` limits the population.
    pub fn has_base(&self) -> bool {
        !self.base_patients.is_empty() || !self.base_groups.is_empty()
    }

    /// A member-based Group: no `member-filter`; its `member` entries (in
    /// `base_patients`, with their `period` and `inactive` in `group`) are
    /// its members, managed by the client.
    pub fn is_member_based(&self) -> bool {
        self.filters.is_empty()
    }

    /// A member-based Group's `member` entries naming Patients, with their
    /// `period` and `inactive`, in document order.
    pub fn member_entries(&self) -> Vec<MemberEntry> {
        let members = self.group.get("member").and_then(Value::as_array);
        members
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter_map(|member| {
                let reference = member.get("entity")?.get("reference")?.as_str()?;
                let target = parse_reference(reference).filter(|t| t.resource_type == Some("Patient"))?;
                let period = member.get("period");
                let bound = |name: &str| {
                    period
                        .and_then(|p| p.get(name))
                        .and_then(Value::as_str)
                        .map(str::to_string)
                };
                Some(MemberEntry {
                    patient: target.id.to_string(),
                    period_start: bound("start"),
                    period_end: bound("end"),
                    inactive: member.get("inactive").and_then(Value::as_bool).unwrap_or(false),
                })
            })
            .collect()
    }

    /// The request as a stored Group keeps it: without `If-Match`, and a
    /// member-based Group's without its `member` entries (they are its
    /// membership rows).
    pub fn stored_form(&self) -> Self {
        let mut stored = Self {
            expected_version: None,
            skip_unknown_members: false,
            ..self.clone()
        };
        if self.is_member_based() {
            if let Some(object) = stored.group.as_object_mut() {
                object.remove("member");
            }
            stored.base_patients.clear();
        }
        stored
    }
}

/// Validates a submitted Group: a criteria-based Group (`member-filter`s,
/// `bulk-cohort-group`) or a member-based one (no `member-filter`, its
/// `member` entries listing Patients), against what fhirlake supports.
/// Every problem found is reported (in one OperationOutcome text).
pub fn validate(body: &[u8]) -> Result<CohortRequest, GroupError> {
    let group: Value =
        serde_json::from_slice(body).map_err(|e| GroupError::invalid(format!("the body is not valid JSON: {e}")))?;
    let Some(object) = group.as_object() else {
        return Err(GroupError::invalid("the body must be a JSON object (a Group resource)"));
    };
    if object.get("resourceType").and_then(Value::as_str) != Some("Group") {
        return Err(GroupError::invalid("resourceType must be 'Group'"));
    }
    let mut problems = Problems::default();
    let filters = member_filters(object, &mut problems);
    let member_based = filters.is_empty() && !problems.list.iter().any(|p| p.starts_with("member-filter"));
    if member_based && claims_cohort_profile(object) {
        problems.push(format!(
            "a Group claiming {COHORT_PROFILE} needs at least one member-filter modifierExtension \
             ({MEMBER_FILTER_URL}); without one it is a member-based Group and must not claim the profile"
        ));
    }
    check_elements(object, member_based, &mut problems);
    match MembershipMode::of_group(&group) {
        Err(problem) => problems.push(problem),
        Ok(Some(_)) if member_based => problems.push(
            "the membership-mode extension applies to criteria Groups (with member-filter): \
             a member-based Group's members are the client's",
        ),
        Ok(_) => {}
    }
    let (base_patients, base_groups) = base_population(object, member_based, &mut problems);
    if !problems.list.is_empty() {
        // One problem that is only unsupported is `not-supported`; any
        // other mix is invalid.
        let not_supported = problems.not_supported && problems.list.len() == 1;
        return Err(GroupError::Invalid {
            problems: problems.list,
            not_supported,
        });
    }
    Ok(CohortRequest {
        group,
        filters,
        base_patients,
        base_groups,
        expected_version: None,
        skip_unknown_members: false,
    })
}

/// What is wrong with a submitted Group.
#[derive(Default)]
struct Problems {
    list: Vec<String>,
    /// Some problem is something fhirlake does not support.
    not_supported: bool,
}

impl Problems {
    fn push(&mut self, problem: impl Into<String>) {
        self.list.push(problem.into());
    }

    fn unsupported(&mut self, problem: impl Into<String>) {
        self.not_supported = true;
        self.list.push(problem.into());
    }
}

/// Whether the Group's `meta.profile` names `bulk-cohort-group`.
fn claims_cohort_profile(object: &serde_json::Map<String, Value>) -> bool {
    object
        .get("meta")
        .and_then(|m| m.get("profile"))
        .and_then(Value::as_array)
        .is_some_and(|profiles| profiles.iter().any(|p| p.as_str() == Some(COHORT_PROFILE)))
}

/// `name`, `characteristic`, `type` and `actual` as the profile wants them
/// (`name` is the cohort profile's; a member-based Group may go without).
fn check_elements(object: &serde_json::Map<String, Value>, member_based: bool, problems: &mut Problems) {
    match object.get("name").and_then(Value::as_str) {
        Some(name) if !name.trim().is_empty() => {}
        None if member_based => {}
        _ => problems.push("Group.name is required (1..1) by bulk-cohort-group"),
    }
    if object.contains_key("characteristic") {
        problems.push("Group.characteristic is not allowed (0..0) by bulk-cohort-group; use member-filter");
    }
    match object.get("type").and_then(Value::as_str) {
        Some("person") => {}
        Some(t @ ("practitioner" | "device")) => problems.unsupported(format!(
            "Group.type '{t}' is not supported: fhirlake builds cohorts of Patients (type 'person')"
        )),
        Some(t) => problems.push(format!(
            "Group.type '{t}' is not in group-type-subset (person | practitioner | device)"
        )),
        None => problems.push("Group.type is required (1..1); use 'person'"),
    }
    if !object.get("actual").is_some_and(Value::is_boolean) {
        problems.push("Group.actual (boolean) is required (1..1)");
    }
}

/// The `member-filter` expressions (at least one; each must parse).
fn member_filters(object: &serde_json::Map<String, Value>, problems: &mut Problems) -> Vec<String> {
    let mut filters = Vec::new();
    let extensions = object.get("modifierExtension").and_then(Value::as_array);
    for extension in extensions.map(Vec::as_slice).unwrap_or_default() {
        let url = extension.get("url").and_then(Value::as_str).unwrap_or_default();
        if url != MEMBER_FILTER_URL {
            problems.push(format!(
                "unknown modifierExtension '{url}': a Group with a modifier fhirlake does not understand cannot be processed"
            ));
            continue;
        }
        let Some(expression) = extension.get("valueExpression") else {
            problems.push("member-filter needs a valueExpression");
            continue;
        };
        let language = expression.get("language").and_then(Value::as_str).unwrap_or_default();
        if language != FHIR_QUERY {
            problems.unsupported(format!(
                "member-filter language '{language}' is not supported (only {FHIR_QUERY})"
            ));
            continue;
        }
        match expression.get("expression").and_then(Value::as_str) {
            Some(text) => match CohortEngine::parse(&[text]) {
                Ok(queries) => match queries.first().map(|q| q.resource_type) {
                    Some(resource_type) if !selects_patients(resource_type) => problems.unsupported(format!(
                        "member-filter '{text}': {resource_type} resources are in no Patient compartment, so the \
                         filter would select no one; reach them through a reference of a compartment type \
                         (e.g. Encounter?practitioner=…, Encounter?service-provider=…)"
                    )),
                    _ => filters.push(text.to_string()),
                },
                Err(e) => problems.push(format!("member-filter '{text}': {e}")),
            },
            None => problems.push("member-filter valueExpression.expression (a FHIR search) is required"),
        }
    }
    filters
}

/// Whether a search of `resource_type` can select patients: Patients
/// themselves, or a type some Patient compartment holds.
fn selects_patients(resource_type: &str) -> bool {
    resource_type == "Patient"
        || PatientCompartment::r4().is_ok_and(|compartment| !compartment.paths(resource_type).is_empty())
}

/// The Patient ids and Group ids `member` names: a criteria Group's base
/// population, or a member-based Group's members (Patients only).
fn base_population(
    object: &serde_json::Map<String, Value>,
    member_based: bool,
    problems: &mut Problems,
) -> (Vec<String>, Vec<String>) {
    let mut base_patients = Vec::new();
    let mut base_groups = Vec::new();
    let members = object.get("member").and_then(Value::as_array);
    for member in members.map(Vec::as_slice).unwrap_or_default() {
        let reference = member
            .get("entity")
            .and_then(|e| e.get("reference"))
            .and_then(Value::as_str)
            .unwrap_or_default();
        match parse_reference(reference) {
            Some(target) if target.resource_type == Some("Patient") => base_patients.push(target.id.to_string()),
            Some(target) if target.resource_type == Some("Group") && !member_based => {
                base_groups.push(target.id.to_string())
            }
            _ if member_based => problems.push(format!(
                "member.entity '{reference}' must reference a Patient (a member-based Group lists Patients)"
            )),
            _ => problems.push(format!(
                "member.entity '{reference}' must reference a Patient or a Group (the base population)"
            )),
        }
    }
    (base_patients, base_groups)
}

/// The Group resource served for a cohort: the request's Group with `id`,
/// `meta` (version, lastUpdated, profile), `quantity` and
/// `members-refreshed`. Its `member-filter`s stay: it is still a
/// modifier-extension Group, never a plain member list. A member-based
/// Group is served as submitted, with `id`, `meta` (version, lastUpdated)
/// and `quantity` (its members that count now); its `member` entries are
/// added from the membership rows when it is served.
pub fn group_resource(id: &str, version: u64, request: &CohortRequest, members: usize, computed_at: &str) -> Value {
    let mut group = request.group.clone();
    if request.is_member_based() {
        if let Some(object) = group.as_object_mut() {
            object.insert("id".into(), json!(id));
            let mut meta = object.get("meta").cloned().unwrap_or_else(|| json!({}));
            meta["versionId"] = json!(version.to_string());
            meta["lastUpdated"] = json!(computed_at);
            object.insert("meta".into(), meta);
            object.insert("quantity".into(), json!(members));
        }
        return group;
    }
    let on_demand = MembershipMode::of_group(&group) == Ok(Some(MembershipMode::OnDemand));
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
        // An on-demand Group's membership is computed at each use: no
        // refresh time describes it.
        if !on_demand {
            extensions.push(json!({"url": MEMBERS_REFRESHED_URL, "valueDateTime": computed_at}));
        }
        object.insert("extension".into(), Value::Array(extensions));
    }
    group
}
