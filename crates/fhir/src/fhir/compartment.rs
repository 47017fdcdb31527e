//! The R4 Patient compartment: which references put a resource into a
//! patient's compartment, from `CompartmentDefinition-patient.json` and the
//! expressions of the search parameters it names.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde::Deserialize;

use super::search_parameters::{SearchParameterDefinition, definitions, split_union};
use super::{DefinitionError, ResourceTypes, parse_reference};
use crate::json::JsonValue;

const COMPARTMENT_FILE: &str = "data/fhir-r4/CompartmentDefinition-patient.json";
const COMPARTMENT_JSON: &str = include_str!("../../../../data/fhir-r4/CompartmentDefinition-patient.json");

/// One element path whose references can put a resource in a Patient's compartment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompartmentPath {
    /// The search parameter that defines it (`subject`, `performer`, …).
    pub param: String,
    /// Element names below the resource root (`["participant", "actor"]`).
    pub path: Vec<String>,
    /// True when Patient is the element's only reference target (per the
    /// element definition), so a
    /// `urn:uuid:` reference without `Reference.type` can only be a Patient.
    pub only_patient_targets: bool,
}

/// The Patient CompartmentDefinition, resolved to element paths per resource type.
#[derive(Debug)]
pub struct PatientCompartment {
    paths: HashMap<String, Vec<CompartmentPath>>,
}

#[derive(Deserialize)]
struct CompartmentDefinition {
    resource: Vec<CompartmentResource>,
}

#[derive(Deserialize)]
struct CompartmentResource {
    code: String,
    #[serde(default)]
    param: Vec<String>,
}

impl PatientCompartment {
    /// The process-wide instance (built once from the bundled definitions).
    pub fn r4() -> Result<&'static PatientCompartment, &'static DefinitionError> {
        static COMPARTMENT: OnceLock<Result<PatientCompartment, DefinitionError>> = OnceLock::new();
        COMPARTMENT.get_or_init(Self::load).as_ref()
    }

    fn load() -> Result<Self, DefinitionError> {
        let definition: CompartmentDefinition =
            serde_json::from_str(COMPARTMENT_JSON).map_err(|source| DefinitionError::Json {
                file: COMPARTMENT_FILE,
                source,
            })?;
        let unavailable = |e: &DefinitionError| DefinitionError::Unsupported {
            file: COMPARTMENT_FILE,
            message: format!("search parameter definitions unavailable: {e}"),
        };
        let search_parameters = definitions().map_err(unavailable)?;
        let types = ResourceTypes::r4().map_err(|e| DefinitionError::Unsupported {
            file: COMPARTMENT_FILE,
            message: format!("element definitions unavailable: {e}"),
        })?;
        let mut by_key: HashMap<(&str, &str), &SearchParameterDefinition> = HashMap::new();
        for sp in search_parameters {
            for base in &sp.base {
                by_key.insert((base.as_str(), sp.code.as_str()), sp);
            }
        }
        let mut paths = HashMap::new();
        for resource in &definition.resource {
            let mut type_paths = Vec::new();
            for param in &resource.param {
                let unsupported = |message: String| DefinitionError::Unsupported {
                    file: COMPARTMENT_FILE,
                    message,
                };
                let Some(sp) = by_key.get(&(resource.code.as_str(), param.as_str())) else {
                    return Err(unsupported(format!("no search parameter {}.{param}", resource.code)));
                };
                let expression = sp.expression.as_deref().unwrap_or_default();
                let mut found = false;
                for branch in split_union(expression) {
                    let Some(rest) = branch
                        .strip_prefix(resource.code.as_str())
                        .and_then(|r| r.strip_prefix('.'))
                    else {
                        continue;
                    };
                    let rest = rest.strip_suffix(".where(resolve() is Patient)").unwrap_or(rest);
                    if !rest
                        .split('.')
                        .all(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric()))
                    {
                        return Err(unsupported(format!(
                            "expression '{branch}' of {}.{param}",
                            resource.code
                        )));
                    }
                    let element_targets = types.reference_targets(&format!("{}.{rest}", resource.code));
                    let only_patient_targets = element_targets == ["Patient"];
                    type_paths.push(CompartmentPath {
                        param: param.clone(),
                        path: rest.split('.').map(str::to_string).collect(),
                        only_patient_targets,
                    });
                    found = true;
                }
                if !found {
                    return Err(unsupported(format!(
                        "no branch for {} in '{expression}'",
                        resource.code
                    )));
                }
            }
            paths.insert(resource.code.clone(), type_paths);
        }
        Ok(Self { paths })
    }

    /// The resource types that can be in a Patient compartment through references.
    pub fn types(&self) -> impl Iterator<Item = &str> {
        self.paths
            .iter()
            .filter(|(_, p)| !p.is_empty())
            .map(|(t, _)| t.as_str())
    }

    /// The compartment paths of a resource type (empty if it is never in a
    /// Patient compartment through references).
    pub fn paths(&self, resource_type: &str) -> &[CompartmentPath] {
        self.paths.get(resource_type).map(Vec::as_slice).unwrap_or_default()
    }

    /// Appends to `out` the ids of the patients whose compartment `resource`
    /// (of type `resource_type`) is in, sorted and without duplicates. A
    /// Patient is in its own compartment.
    pub fn patients_of(&self, resource_type: &str, resource: &JsonValue<'_>, out: &mut Vec<String>) {
        let start = out.len();
        if resource_type == "Patient"
            && let Some(id) = resource.get("id").and_then(JsonValue::as_str)
        {
            out.push(id.to_string());
        }
        for path in self.paths(resource_type) {
            collect_patient_refs(resource, &path.path, path.only_patient_targets, out);
        }
        let tail = &mut out[start..];
        tail.sort_unstable();
        let mut unique = start;
        for i in start..out.len() {
            if unique == start || out[i] != out[unique - 1] {
                out.swap(unique, i);
                unique += 1;
            }
        }
        out.truncate(unique);
    }
}

fn collect_patient_refs(value: &JsonValue<'_>, path: &[String], only_patient: bool, out: &mut Vec<String>) {
    match path.split_first() {
        Some((step, rest)) => value.for_each_item(|item| {
            if let Some(child) = item.get(step) {
                collect_patient_refs(child, rest, only_patient, out);
            }
        }),
        None => value.for_each_item(|reference| {
            let Some(text) = reference.get("reference").and_then(JsonValue::as_str) else {
                return;
            };
            let Some(target) = parse_reference(text) else {
                return;
            };
            let is_patient = match target.resource_type {
                Some(t) => t == "Patient",
                None => only_patient || reference.get("type").and_then(JsonValue::as_str) == Some("Patient"),
            };
            if is_patient {
                out.push(target.id.to_string());
            }
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::parse;

    #[test]
    fn resolves_all_compartment_expressions() {
        let c = PatientCompartment::r4().unwrap();
        let obs: Vec<_> = c.paths("Observation").iter().map(|p| p.path.join(".")).collect();
        assert_eq!(obs, ["subject", "performer"]);
        let appt: Vec<_> = c.paths("Appointment").iter().map(|p| p.path.join(".")).collect();
        assert_eq!(appt, ["participant.actor"]);
        assert!(c.paths("Practitioner").is_empty());
    }

    #[test]
    fn finds_patients_in_references() {
        let c = PatientCompartment::r4().unwrap();
        let obs = parse(
            r#"{"resourceType":"Observation","id":"o","subject":{"reference":"Patient/p1"},
               "performer":[{"reference":"Practitioner/x"},{"reference":"https://h/fhir/Patient/p0"},
               {"reference":"Patient/p1"}]}"#,
        )
        .unwrap();
        let mut out = Vec::new();
        c.patients_of("Observation", &obs, &mut out);
        assert_eq!(out, ["p0", "p1"]);

        let imm = parse(r#"{"resourceType":"Immunization","id":"i","patient":{"reference":"urn:uuid:u1"}}"#).unwrap();
        out.clear();
        c.patients_of("Immunization", &imm, &mut out);
        assert_eq!(out, ["u1"], "Immunization.patient targets only Patient");

        let cond = parse(r#"{"resourceType":"Condition","subject":{"reference":"urn:uuid:u2"}}"#).unwrap();
        out.clear();
        c.patients_of("Condition", &cond, &mut out);
        assert!(
            out.is_empty(),
            "subject may be a Group: untyped urn:uuid is not assumed a Patient"
        );

        let patient =
            parse(r#"{"resourceType":"Patient","id":"me","link":[{"other":{"reference":"Patient/twin"}}]}"#).unwrap();
        out.clear();
        c.patients_of("Patient", &patient, &mut out);
        assert_eq!(out, ["me", "twin"]);
    }
}
