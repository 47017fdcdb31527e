//! `$export` kick-off parameters: parsed, validated and normalised before a
//! job starts, so a bad request is a `400` at kick-off and never a failed
//! job. GET query pairs and POST `Parameters` both arrive as name/value
//! pairs; repeated parameters are one comma-joined list (spec), except
//! `_typeFilter`, which is split only where a new `Type?` filter starts so
//! commas inside search values stay where they belong.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::ExportError;
use crate::fhir::compartment::PatientCompartment;
use crate::fhir::model::FhirModel;
use crate::fhir::parse_reference;
use crate::search::parse_search;

/// Which resources an export starts from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "level", content = "group", rename_all = "snake_case")]
pub enum ExportLevel {
    /// `[base]/$export`: every resource.
    System,
    /// `[base]/Patient/$export`: the compartments of all patients.
    Patient,
    /// `[base]/Group/{id}/$export`: the compartments of the Group's members.
    Group(String),
}

/// File format of the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputFormat {
    /// FHIR NDJSON: one resource per line, as loaded.
    Ndjson,
    /// Parquet: one row per resource (`id`, `version_id`, `last_updated`,
    /// `resource` JSON).
    Parquet,
}

impl OutputFormat {
    /// Parses an `_outputFormat` value.
    pub fn parse(value: &str) -> Option<Self> {
        match value.trim() {
            "application/fhir+ndjson" | "application/ndjson" | "ndjson" => Some(Self::Ndjson),
            "application/vnd.apache.parquet" | "application/parquet" | "parquet" => Some(Self::Parquet),
            _ => None,
        }
    }

    /// File name extension.
    pub fn extension(self) -> &'static str {
        match self {
            Self::Ndjson => "ndjson",
            Self::Parquet => "parquet",
        }
    }

    /// `Content-Type` of the files.
    pub fn media_type(self) -> &'static str {
        match self {
            Self::Ndjson => "application/fhir+ndjson",
            Self::Parquet => "application/vnd.apache.parquet",
        }
    }
}

/// One `_elements` entry: `Type.element` or `element` (every type).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ElementSelector {
    /// The type it applies to; `None` for all types.
    pub resource_type: Option<String>,
    /// The top-level element name.
    pub element: String,
}

/// A validated export request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportRequest {
    /// Level (system, Patient, Group).
    pub level: ExportLevel,
    /// `_outputFormat`.
    pub format: OutputFormat,
    /// `_since`: only resources changed after this instant (µs since epoch).
    pub since: Option<i64>,
    /// `_until`: only resources changed at or before this instant (µs).
    pub until: Option<i64>,
    /// `_type`: only these types (`None`: every type in scope).
    pub types: Option<BTreeSet<String>>,
    /// `_typeFilter` searches (`Type?…`), each validated.
    pub type_filters: Vec<String>,
    /// `_elements`.
    pub elements: Vec<ElementSelector>,
    /// `patient` (POST): only these patients' compartments.
    pub patients: Option<BTreeSet<String>>,
    /// `includeAssociatedData=LatestProvenanceResources` (or
    /// `RelevantProvenanceResources`): Provenance targeting exported
    /// resources is added.
    pub include_provenance: bool,
    /// `organizeOutputBy=Patient`.
    pub organize_by_patient: bool,
    /// `allowPartialManifests=true`.
    pub allow_partial_manifests: bool,
    /// Types never exported whatever `_type` says (set by authorization:
    /// Groups of the loaded data are only for clients they are granted to).
    #[serde(default)]
    pub excluded_types: BTreeSet<String>,
    /// The instant (µs) a Group's roster membership (`member.period`,
    /// `member.inactive`) is judged at: the export's transactionTime, set
    /// when the job starts, kept when it resumes. `None`: now.
    #[serde(default)]
    pub members_at: Option<i64>,
    /// The version of the stored Group exported (set when the job starts,
    /// kept when it resumes: a later change of the Group does not reach a
    /// running export). `None`: a Group of the loaded data, or no Group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_version: Option<u64>,
    /// `newMemberData=all` (Group level, with `_since`): a member who
    /// joined the Group after `_since` gets all their data, the others
    /// only what changed since. Default (`since`): the plain `_since`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub new_members_whole: bool,
}

/// A request and the parameters set aside under `Prefer: handling=lenient`.
#[derive(Debug, Clone)]
pub struct ParsedExport {
    /// The request to run.
    pub request: ExportRequest,
    /// One message per unsupported parameter or value that was ignored.
    pub ignored: Vec<String>,
}

/// Parameter names this server knows.
pub const KNOWN_PARAMETERS: &[&str] = &[
    "_outputFormat",
    "_since",
    "_until",
    "_type",
    "_typeFilter",
    "_elements",
    "patient",
    "includeAssociatedData",
    "organizeOutputBy",
    "allowPartialManifests",
    NEW_MEMBER_DATA,
];

/// The kick-off parameter choosing what a Group export with `_since`
/// gives members who joined after it (`since`, the default, or `all`).
pub const NEW_MEMBER_DATA: &str = "newMemberData";

/// Name/value pairs of a POST `Parameters` body (`valueString`,
/// `valueInstant`, `valueCode`, `valueBoolean`, `valueReference`,
/// `valueCoding`, …).
pub fn pairs_from_parameters(body: &Value) -> Result<Vec<(String, String)>, ExportError> {
    if body.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
        return Err(ExportError::invalid(
            "Parameters",
            "the POST body must be a FHIR Parameters resource",
        ));
    }
    let mut pairs = Vec::new();
    let Some(list) = body.get("parameter") else {
        return Ok(pairs);
    };
    let Some(list) = list.as_array() else {
        return Err(ExportError::invalid(
            "Parameters",
            "Parameters.parameter must be an array",
        ));
    };
    for (i, parameter) in list.iter().enumerate() {
        let name = parameter
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| ExportError::invalid("Parameters", format!("Parameters.parameter[{i}] has no name")))?;
        let value = parameter
            .as_object()
            .and_then(|o| o.iter().find(|(k, _)| k.starts_with("value")))
            .map(|(_, v)| v);
        let text = match value {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Bool(b)) => b.to_string(),
            Some(Value::Number(n)) => n.to_string(),
            Some(Value::Object(o)) => {
                // valueReference → reference; valueCoding → code.
                match o.get("reference").or_else(|| o.get("code")).and_then(Value::as_str) {
                    Some(s) => s.to_string(),
                    None => {
                        return Err(ExportError::invalid(
                            name,
                            format!("parameter '{name}': a complex value needs a reference or a code"),
                        ));
                    }
                }
            }
            _ => {
                return Err(ExportError::invalid(
                    name,
                    format!("parameter '{name}' has no supported value[x]"),
                ));
            }
        };
        pairs.push((name.to_string(), text));
    }
    Ok(pairs)
}

/// Splits `text` at commas, trimming, dropping empty items.
fn comma_list(text: &str) -> impl Iterator<Item = &str> {
    text.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// Splits a (possibly comma-joined) `_typeFilter` value into filters: a comma
/// starts a new filter only when it is followed by `ResourceType?` (and is
/// not escaped as `\,`), so `Condition?code=a,b` stays one filter.
pub fn split_type_filters(text: &str) -> Vec<String> {
    let model = FhirModel::r4().ok();
    let bytes = text.as_bytes();
    let mut filters = Vec::new();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if b != b',' || (i > 0 && bytes[i - 1] == b'\\') {
            continue;
        }
        let rest = &text[i + 1..];
        let starts_filter = rest.split_once('?').is_some_and(|(name, _)| {
            let name = name.trim();
            !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric())
                && model.is_none_or(|m| m.is_resource(name))
        });
        if starts_filter {
            filters.push(text[start..i].trim().to_string());
            start = i + 1;
        }
    }
    filters.push(text[start..].trim().to_string());
    filters.retain(|f| !f.is_empty());
    filters
}

fn parse_instant(name: &str, value: &str) -> Result<i64, ExportError> {
    chrono::DateTime::parse_from_rfc3339(value.trim())
        .map(|t| t.timestamp_micros())
        .map_err(|_| {
            ExportError::invalid(
                name,
                format!("{name} must be a FHIR instant with a time zone (e.g. 2024-01-31T00:00:00Z), got '{value}'"),
            )
        })
}

fn parse_bool(name: &str, value: &str) -> Result<bool, ExportError> {
    match value.trim() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(ExportError::invalid(
            name,
            format!("{name} must be true or false, got '{value}'"),
        )),
    }
}

/// Whether `resource_type` is exportable at `level` (before `_type`): every
/// concrete resource type at system level; Patient, the types of the Patient
/// compartment and the context types otherwise.
pub fn in_scope(level: &ExportLevel, resource_type: &str) -> bool {
    match level {
        ExportLevel::System => true,
        ExportLevel::Patient | ExportLevel::Group(_) => {
            resource_type == "Patient"
                || super::CONTEXT_TYPES.contains(&resource_type)
                || PatientCompartment::r4().is_ok_and(|c| c.types().any(|t| t == resource_type))
        }
    }
}

/// Builds an [`ExportRequest`] one parameter at a time, checking each
/// value as it comes and the combination in [`ExportRequestBuilder::build`].
/// The HTTP kick-off feeds it the request's name/value pairs (through
/// [`parse_export`]); `fhirlake export` calls its methods directly.
pub struct ExportRequestBuilder {
    model: &'static FhirModel,
    request: ExportRequest,
    /// Set aside unsupported parameters and values instead of failing.
    lenient: bool,
    /// The parameters came in a POST body (`patient` is POST-only).
    post: bool,
    ignored: Vec<String>,
    seen_single: BTreeSet<&'static str>,
    type_given: bool,
}

/// The handler of one kick-off parameter: its value, as text.
type ParameterHandler = fn(&mut ExportRequestBuilder, &str) -> Result<(), ExportError>;

/// Every kick-off parameter fhirlake reads, with its handler. `_format`
/// (the response format) is accepted and read by the front.
const PARAMETERS: &[(&str, ParameterHandler)] = &[
    ("_format", |_, _| Ok(())),
    ("_outputFormat", ExportRequestBuilder::output_format_text),
    ("_since", ExportRequestBuilder::since),
    ("_until", ExportRequestBuilder::until),
    ("_type", ExportRequestBuilder::types),
    ("_typeFilter", ExportRequestBuilder::type_filters),
    ("_elements", ExportRequestBuilder::elements),
    ("patient", ExportRequestBuilder::patients),
    ("includeAssociatedData", ExportRequestBuilder::include_associated_data),
    ("organizeOutputBy", ExportRequestBuilder::organize_output_by),
    (
        "allowPartialManifests",
        ExportRequestBuilder::allow_partial_manifests_text,
    ),
    (NEW_MEMBER_DATA, ExportRequestBuilder::new_member_data),
];

/// Parameters that may be given once only.
const SINGLE: &[&str] = &[
    "_outputFormat",
    "_since",
    "_until",
    "organizeOutputBy",
    "allowPartialManifests",
    NEW_MEMBER_DATA,
];

impl ExportRequestBuilder {
    /// An export of `level` with no parameters yet. `post`: parameters come
    /// from a POST body (or a caller as trusted, the CLI); `lenient`:
    /// unsupported parameters are set aside, not errors.
    pub fn new(level: ExportLevel, post: bool, lenient: bool) -> Result<Self, ExportError> {
        let model = FhirModel::r4().map_err(ExportError::Definitions)?;
        Ok(Self {
            model,
            request: ExportRequest {
                level,
                format: OutputFormat::Ndjson,
                since: None,
                until: None,
                types: None,
                type_filters: Vec::new(),
                elements: Vec::new(),
                patients: None,
                include_provenance: false,
                organize_by_patient: false,
                allow_partial_manifests: false,
                excluded_types: BTreeSet::new(),
                members_at: None,
                group_version: None,
                new_members_whole: false,
            },
            lenient,
            post,
            ignored: Vec::new(),
            seen_single: BTreeSet::new(),
            type_given: false,
        })
    }

    /// Applies the kick-off parameter `name` (unknown ones are unsupported).
    pub fn parameter(&mut self, name: &str, value: &str) -> Result<&mut Self, ExportError> {
        let Some((known, handler)) = PARAMETERS.iter().find(|(n, _)| *n == name) else {
            self.unsupported(
                name,
                format!(
                    "parameter '{name}' is not supported by $export (supported: {})",
                    KNOWN_PARAMETERS.join(", ")
                ),
            )?;
            return Ok(self);
        };
        if SINGLE.contains(known) && !self.seen_single.insert(known) {
            return Err(ExportError::invalid(name, format!("{name} may be given only once")));
        }
        handler(self, value)?;
        Ok(self)
    }

    /// Records (lenient) or refuses something unsupported about `parameter`.
    fn unsupported(&mut self, parameter: &str, message: String) -> Result<(), ExportError> {
        if self.lenient {
            self.ignored.push(message);
            Ok(())
        } else {
            Err(ExportError::unsupported(parameter, message))
        }
    }

    /// The output file format.
    pub fn output_format(&mut self, format: OutputFormat) -> &mut Self {
        self.request.format = format;
        self
    }

    /// `_outputFormat` as its media type or short name.
    pub fn output_format_text(&mut self, value: &str) -> Result<(), ExportError> {
        self.request.format = OutputFormat::parse(value).ok_or_else(|| {
            ExportError::invalid("_outputFormat", format!(
                "_outputFormat '{value}' is not supported (application/fhir+ndjson, application/ndjson, ndjson, application/vnd.apache.parquet, parquet)"
            ))
        })?;
        Ok(())
    }

    /// `_since`: a FHIR instant.
    pub fn since(&mut self, value: &str) -> Result<(), ExportError> {
        self.request.since = Some(parse_instant("_since", value)?);
        Ok(())
    }

    /// `_until`: a FHIR instant.
    pub fn until(&mut self, value: &str) -> Result<(), ExportError> {
        self.request.until = Some(parse_instant("_until", value)?);
        Ok(())
    }

    /// `_type`: comma-separated resource types.
    pub fn types(&mut self, value: &str) -> Result<(), ExportError> {
        self.type_given = true;
        for t in comma_list(value) {
            let level = &self.request.level;
            if !self.model.is_resource(t) || self.model.type_def(t).is_some_and(|d| d.is_abstract) {
                self.unsupported("_type", format!("_type '{t}' is not a FHIR R4 resource type"))?;
            } else if !in_scope(level, t) {
                let level = level_name(level);
                self.unsupported(
                    "_type",
                    format!("_type '{t}' is not in the Patient compartment, so a {level} export cannot contain it"),
                )?;
            } else {
                self.request
                    .types
                    .get_or_insert_with(BTreeSet::new)
                    .insert(t.to_string());
            }
        }
        Ok(())
    }

    /// `_typeFilter`: one or more (comma-joined) FHIR searches.
    pub fn type_filters(&mut self, value: &str) -> Result<(), ExportError> {
        for filter in split_type_filters(value) {
            let query = parse_search(&filter)
                .map_err(|e| ExportError::invalid("_typeFilter", format!("_typeFilter '{filter}': {e}")))?;
            if !in_scope(&self.request.level, query.resource_type) {
                return Err(ExportError::invalid(
                    "_typeFilter",
                    format!(
                        "_typeFilter '{filter}' is for {}, which this export level cannot contain",
                        query.resource_type
                    ),
                ));
            }
            self.request.type_filters.push(filter);
        }
        Ok(())
    }

    /// `_elements`: `Type.element` or `element` items, comma-separated.
    pub fn elements(&mut self, value: &str) -> Result<(), ExportError> {
        for item in comma_list(value) {
            let (resource_type, element) = match item.split_once('.') {
                Some((t, e)) => (Some(t), e),
                None => (None, item),
            };
            let model = self.model;
            let known = match resource_type {
                Some(t) => model.is_resource(t) && model.element(t, element).is_some(),
                None => model
                    .types()
                    .any(|(t, d)| !d.is_abstract && model.is_resource(t) && model.element(t, element).is_some()),
            };
            if element.contains('.') || !known {
                self.unsupported(
                    "_elements",
                    format!("_elements '{item}' is not a top-level element (Type.element or element)"),
                )?;
            } else {
                self.request.elements.push(ElementSelector {
                    resource_type: resource_type.map(str::to_string),
                    element: element.to_string(),
                });
            }
        }
        Ok(())
    }

    /// `patient`: `Patient/<id>` references, comma-separated (POST only,
    /// not at system level).
    pub fn patients(&mut self, value: &str) -> Result<(), ExportError> {
        if !self.post {
            return Err(ExportError::invalid(
                "patient",
                "the patient parameter is accepted only in a POST Parameters body",
            ));
        }
        if self.request.level == ExportLevel::System {
            return Err(ExportError::invalid(
                "patient",
                "the patient parameter is not allowed in a system-level export",
            ));
        }
        for reference in comma_list(value) {
            match parse_reference(reference) {
                Some(target) if target.resource_type == Some("Patient") => {
                    self.request
                        .patients
                        .get_or_insert_with(BTreeSet::new)
                        .insert(target.id.to_string());
                }
                _ => {
                    return Err(ExportError::invalid(
                        "patient",
                        format!("patient '{reference}' is not a Patient reference (Patient/<id>)"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// `includeAssociatedData`: the Provenance values.
    pub fn include_associated_data(&mut self, value: &str) -> Result<(), ExportError> {
        for item in comma_list(value) {
            match item {
                "LatestProvenanceResources" | "RelevantProvenanceResources" => self.request.include_provenance = true,
                other => self.unsupported("includeAssociatedData", format!(
                    "includeAssociatedData '{other}' is not supported (LatestProvenanceResources, RelevantProvenanceResources)"
                ))?,
            }
        }
        Ok(())
    }

    /// `organizeOutputBy`: only `Patient`.
    pub fn organize_output_by(&mut self, value: &str) -> Result<(), ExportError> {
        if value.trim() == "Patient" {
            self.request.organize_by_patient = true;
            Ok(())
        } else {
            self.unsupported(
                "organizeOutputBy",
                format!("organizeOutputBy '{value}' is not supported (only Patient)"),
            )
        }
    }

    /// `newMemberData`: `all` or `since` (Group level only).
    pub fn new_member_data(&mut self, value: &str) -> Result<(), ExportError> {
        if !matches!(self.request.level, ExportLevel::Group(_)) {
            return self.unsupported(NEW_MEMBER_DATA, "newMemberData applies to Group exports only".into());
        }
        match value.trim() {
            "all" => self.request.new_members_whole = true,
            "since" => self.request.new_members_whole = false,
            other => {
                return Err(ExportError::invalid(
                    NEW_MEMBER_DATA,
                    format!("newMemberData takes 'all' or 'since', got '{other}'"),
                ));
            }
        }
        Ok(())
    }

    /// `allowPartialManifests` as `true` or `false`.
    pub fn allow_partial_manifests_text(&mut self, value: &str) -> Result<(), ExportError> {
        self.request.allow_partial_manifests = parse_bool("allowPartialManifests", value)?;
        Ok(())
    }

    /// The request, after the checks of the parameters together.
    pub fn build(self) -> Result<ParsedExport, ExportError> {
        let request = self.request;
        if let (Some(since), Some(until)) = (request.since, request.until)
            && until < since
        {
            return Err(ExportError::invalid("_until", "_until is before _since"));
        }
        // `_type` SHALL restrict the output: when none of its values is usable
        // (even under lenient handling), nothing would be restricted.
        if self.type_given && request.types.is_none() {
            return Err(ExportError::invalid(
                "_type",
                "none of the _type values can be exported at this level",
            ));
        }
        check_types(&request)?;
        if request.organize_by_patient && request.level == ExportLevel::System {
            return Err(ExportError::invalid(
                "organizeOutputBy",
                "organizeOutputBy=Patient needs a Patient or Group export",
            ));
        }
        if request.organize_by_patient && request.format == OutputFormat::Parquet {
            return Err(ExportError::invalid(
                "organizeOutputBy",
                "organizeOutputBy=Patient writes NDJSON blocks; it cannot be combined with Parquet output",
            ));
        }
        Ok(ParsedExport {
            request,
            ignored: self.ignored,
        })
    }
}

/// `Patient` or `Group`: the level's name in messages.
fn level_name(level: &ExportLevel) -> &'static str {
    if *level == ExportLevel::Patient {
        "Patient"
    } else {
        "Group"
    }
}

/// `_type` against the level and `_typeFilter`: a compartment export must
/// name a compartment type, and every filter's type must be exported.
fn check_types(request: &ExportRequest) -> Result<(), ExportError> {
    let Some(types) = &request.types else {
        return Ok(());
    };
    if request.level != ExportLevel::System && types.iter().all(|t| super::CONTEXT_TYPES.contains(&t.as_str())) {
        return Err(ExportError::invalid(
            "_type",
            format!(
                "_type names only types outside the Patient compartment ({}); a {} export adds them only as resources its compartment resources reference, so list a compartment type too",
                types.iter().cloned().collect::<Vec<_>>().join(", "),
                level_name(&request.level)
            ),
        ));
    }
    for filter in &request.type_filters {
        let resource_type = filter.split('?').next().unwrap_or_default();
        if !types.contains(resource_type) {
            return Err(ExportError::invalid(
                "_typeFilter",
                format!("_typeFilter '{filter}' names {resource_type}, which _type excludes"),
            ));
        }
    }
    Ok(())
}

/// Parses kick-off `pairs` for `level`. `post` says whether they came from
/// a POST body (`patient` is POST-only). With `lenient`, unsupported
/// parameters and values are set aside in [`ParsedExport::ignored`];
/// otherwise they are errors. Invalid values (a bad instant, a malformed
/// `_typeFilter`) are errors either way: ignoring a filter would export
/// more than was asked for.
pub fn parse_export(
    level: ExportLevel,
    pairs: &[(String, String)],
    post: bool,
    lenient: bool,
) -> Result<ParsedExport, ExportError> {
    let mut builder = ExportRequestBuilder::new(level, post, lenient)?;
    for (name, value) in pairs {
        builder.parameter(name, value)?;
    }
    builder.build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn type_filters_split_only_where_a_filter_starts() {
        assert_eq!(
            split_type_filters("Condition?code=a,b&clinical-status=active,MedicationRequest?status=active,completed"),
            vec![
                "Condition?code=a,b&clinical-status=active",
                "MedicationRequest?status=active,completed"
            ]
        );
        assert_eq!(
            split_type_filters("Observation?code=x\\,y"),
            vec!["Observation?code=x\\,y"]
        );
    }

    #[test]
    fn repeated_types_are_one_list_and_bad_ones_are_refused() {
        let parsed = parse_export(
            ExportLevel::System,
            &pairs(&[("_type", "Patient,Condition"), ("_type", "Observation")]),
            false,
            false,
        )
        .unwrap();
        assert_eq!(parsed.request.types.unwrap().len(), 3);
        let error = parse_export(ExportLevel::System, &pairs(&[("_type", "Nope")]), false, false).unwrap_err();
        assert!(error.to_string().contains("Nope"), "{error}");
        let lenient = parse_export(
            ExportLevel::System,
            &pairs(&[("_type", "Nope,Patient"), ("_foo", "1")]),
            false,
            true,
        )
        .unwrap();
        assert_eq!(lenient.ignored.len(), 2);
        assert_eq!(lenient.request.types.unwrap().len(), 1);
    }

    #[test]
    fn group_level_refuses_types_outside_the_compartment() {
        let error = parse_export(
            ExportLevel::Group("g".into()),
            &pairs(&[("_type", "ValueSet")]),
            false,
            false,
        )
        .unwrap_err();
        assert!(error.to_string().contains("compartment"), "{error}");
        // Context types are allowed beside compartment types, not alone.
        parse_export(
            ExportLevel::Group("g".into()),
            &pairs(&[("_type", "Practitioner,Encounter")]),
            false,
            false,
        )
        .unwrap();
        assert!(
            parse_export(
                ExportLevel::Group("g".into()),
                &pairs(&[("_type", "Practitioner")]),
                false,
                false
            )
            .is_err()
        );
        // A lenient _type with no usable value must not widen the export.
        assert!(parse_export(ExportLevel::System, &pairs(&[("_type", "Nope")]), false, true).is_err());
    }

    #[test]
    fn values_are_validated() {
        for bad in [
            ("_since", "yesterday"),
            ("_outputFormat", "text/csv"),
            ("_typeFilter", "Condition?bogus=1"),
            ("allowPartialManifests", "maybe"),
        ] {
            assert!(
                parse_export(ExportLevel::System, &pairs(&[bad]), false, true).is_err(),
                "{bad:?}"
            );
        }
        assert!(parse_export(ExportLevel::Patient, &pairs(&[("patient", "Patient/1")]), false, false).is_err());
        let post = parse_export(
            ExportLevel::Patient,
            &pairs(&[("patient", "Patient/1,Patient/2")]),
            true,
            false,
        )
        .unwrap();
        assert_eq!(post.request.patients.unwrap().len(), 2);
    }

    #[test]
    fn parameters_bodies_become_pairs() {
        let body = serde_json::json!({"resourceType": "Parameters", "parameter": [
            {"name": "_type", "valueString": "Patient"},
            {"name": "_since", "valueInstant": "2020-01-01T00:00:00Z"},
            {"name": "patient", "valueReference": {"reference": "Patient/x"}},
            {"name": "allowPartialManifests", "valueBoolean": true},
            {"name": "includeAssociatedData", "valueCoding": {"code": "LatestProvenanceResources"}},
        ]});
        let pairs = pairs_from_parameters(&body).unwrap();
        assert_eq!(pairs[2], ("patient".to_string(), "Patient/x".to_string()));
        assert_eq!(pairs[3].1, "true");
        assert!(pairs_from_parameters(&serde_json::json!({"resourceType": "Patient"})).is_err());
    }
}
