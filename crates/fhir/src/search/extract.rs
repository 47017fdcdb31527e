//! Index values of a search parameter: what the parameter's FHIRPath yields
//! for a resource, normalised per parameter type (R4 search): tokens from
//! codes, Codings, CodeableConcepts and Identifiers; dates as instant ranges;
//! strings case- and accent-folded for prefix search (plus the exact text);
//! references as type and id; quantities with system, code and unit.

use rust_decimal::Decimal;
use unicode_normalization::UnicodeNormalization;

use super::range::{InstantRange, period_range, value_range};
use super::registry::{ParamType, SearchParam};
use crate::fhir::parse_reference;
use crate::fhirpath::Value;
use crate::fhirpath::temporal::DateTimeValue;
use crate::fhirpath::value::{Node, parse_decimal};
use crate::json::JsonValue;

/// One indexed value.
#[derive(Debug, Clone, PartialEq)]
pub enum IndexValue {
    /// A token: `system` absent for plain codes.
    Token {
        /// Code system (or identifier system).
        system: Option<String>,
        /// Code (or identifier value).
        code: String,
        /// Display text (`Coding.display`, `CodeableConcept.text`) for `:text`.
        text: Option<String>,
        /// An Identifier's type coding `(system, code)`, for `:of-type` (one
        /// value per type coding).
        of_type: Option<(Option<String>, String)>,
    },
    /// A date value's range.
    Date(InstantRange),
    /// A string: folded for prefix/contains search, and exact.
    String {
        /// Lower-cased, accents removed.
        folded: String,
        /// As stored.
        exact: String,
    },
    /// A reference target.
    Reference {
        /// Target type, when known.
        resource_type: Option<String>,
        /// Target id (or the URL of a reference fhirlake cannot split).
        id: String,
    },
    /// A quantity.
    Quantity {
        /// The number.
        value: Decimal,
        /// Unit system.
        system: Option<String>,
        /// Unit code.
        code: Option<String>,
        /// Human unit.
        unit: Option<String>,
    },
    /// A number.
    Number(Decimal),
    /// A URI.
    Uri(String),
}

/// Case- and accent-insensitive form of a string (R4 string search).
pub fn fold(text: &str) -> String {
    // Most text is ASCII: lower-casing is all it needs.
    if text.is_ascii() {
        return text.to_ascii_lowercase();
    }
    text.nfd()
        .filter(|c| !('\u{300}'..='\u{36f}').contains(c))
        .flat_map(char::to_lowercase)
        .collect()
}

fn str_field(node: &JsonValue<'_>, key: &str) -> Option<String> {
    node.get(key).and_then(JsonValue::as_str).map(str::to_string)
}

fn push_string(out: &mut Vec<IndexValue>, text: &str) {
    out.push(IndexValue::String {
        folded: fold(text),
        exact: text.to_string(),
    });
}

fn date_of(node: &JsonValue<'_>) -> Option<DateTimeValue> {
    node.as_str().and_then(DateTimeValue::parse)
}

/// The index values of one FHIRPath result item for a parameter of `param_type`.
pub fn extract(param_type: ParamType, value: &Value<'_>, out: &mut Vec<IndexValue>) {
    let node = match value {
        Value::Node(n) => Some(n),
        _ => None,
    };
    let fhir_type = node.and_then(|n| n.fhir_type).unwrap_or("");
    match param_type {
        ParamType::Token => tokens(node, fhir_type, value, out),
        ParamType::Date => dates(node, fhir_type, value, out),
        ParamType::String => strings(node, value, out),
        ParamType::Reference => references(node, value, out),
        ParamType::Quantity => quantities(node, value, out),
        ParamType::Number => numbers(value, out),
        ParamType::Uri => uris(value, out),
        ParamType::Composite | ParamType::Special => {}
    }
}

/// Token values: the codings of a CodeableConcept, a Coding or code,
/// an Identifier (with its type codings), a ContactPoint, or a primitive.
fn tokens(node: Option<&Node<'_>>, fhir_type: &str, value: &Value<'_>, out: &mut Vec<IndexValue>) {
    match (node, value.to_system()) {
        (Some(n), _) if fhir_type == "CodeableConcept" || n.json.get("coding").is_some() => {
            let text = str_field(n.json, "text");
            if let Some(codings) = n.json.get("coding") {
                codings.for_each_item(|c| {
                    if let Some(code) = str_field(c, "code") {
                        let display = str_field(c, "display").or_else(|| text.clone());
                        out.push(IndexValue::Token {
                            system: str_field(c, "system"),
                            code,
                            text: display,
                            of_type: None,
                        });
                    }
                });
            }
        }
        (Some(n), _) if n.json.get("code").is_some() && fhir_type != "Identifier" => {
            if let Some(code) = str_field(n.json, "code") {
                out.push(IndexValue::Token {
                    system: str_field(n.json, "system"),
                    code,
                    text: str_field(n.json, "display"),
                    of_type: None,
                });
            }
        }
        (Some(n), _) if n.json.get("value").is_some() && n.json.as_object().is_some() => {
            // Identifier (system|value) and ContactPoint (value).
            if let Some(code) = str_field(n.json, "value") {
                let identifier_type = n.json.get("type");
                let text = identifier_type.and_then(|t| str_field(t, "text"));
                let system = str_field(n.json, "system");
                let mut type_codings = Vec::new();
                if let Some(codings) = identifier_type.and_then(|t| t.get("coding")) {
                    codings.for_each_item(|c| {
                        if let Some(type_code) = str_field(c, "code") {
                            type_codings.push((str_field(c, "system"), type_code));
                        }
                    });
                }
                if type_codings.is_empty() {
                    out.push(IndexValue::Token {
                        system,
                        code,
                        text,
                        of_type: None,
                    });
                } else {
                    // One row per type coding, so `:of-type` is a plain
                    // row filter; plain token searches see duplicates,
                    // which a cohort (distinct patients) ignores.
                    for of_type in type_codings {
                        out.push(IndexValue::Token {
                            system: system.clone(),
                            code: code.clone(),
                            text: text.clone(),
                            of_type: Some(of_type),
                        });
                    }
                }
            }
        }
        (_, Value::Boolean(b)) => out.push(IndexValue::Token {
            system: None,
            code: b.to_string(),
            text: None,
            of_type: None,
        }),
        (_, Value::String(s)) => out.push(IndexValue::Token {
            system: None,
            code: s,
            text: None,
            of_type: None,
        }),
        (_, Value::Integer(i)) => out.push(IndexValue::Token {
            system: None,
            code: i.to_string(),
            text: None,
            of_type: None,
        }),
        _ => {}
    }
}

/// Date values: the range of a Period, of each event of a Timing, or of
/// a date, dateTime or instant.
fn dates(node: Option<&Node<'_>>, fhir_type: &str, value: &Value<'_>, out: &mut Vec<IndexValue>) {
    match (node, value.to_system()) {
        (Some(n), _) if fhir_type == "Period" || n.json.get("start").is_some() || n.json.get("end").is_some() => {
            let start = n.json.get("start").and_then(date_of);
            let end = n.json.get("end").and_then(date_of);
            out.extend(period_range(start.as_ref(), end.as_ref()).map(IndexValue::Date));
        }
        (Some(n), _) if fhir_type == "Timing" => {
            if let Some(events) = n.json.get("event") {
                events.for_each_item(|e| out.extend(date_of(e).as_ref().and_then(value_range).map(IndexValue::Date)));
            }
        }
        (_, Value::Date(d) | Value::DateTime(d)) => out.extend(value_range(&d).map(IndexValue::Date)),
        (_, Value::String(s)) => {
            out.extend(
                DateTimeValue::parse(&s)
                    .as_ref()
                    .and_then(value_range)
                    .map(IndexValue::Date),
            );
        }
        _ => {}
    }
}

/// String values: every string part of a HumanName, Address or other
/// complex value, or the string itself.
fn strings(node: Option<&Node<'_>>, value: &Value<'_>, out: &mut Vec<IndexValue>) {
    match (node, value.to_system()) {
        (Some(n), _) if n.json.as_object().is_some() => {
            // HumanName, Address and other complex values: every string part.
            for key in [
                "text",
                "family",
                "given",
                "prefix",
                "suffix",
                "line",
                "city",
                "district",
                "state",
                "postalCode",
                "country",
            ] {
                if let Some(v) = n.json.get(key) {
                    v.for_each_item(|part| {
                        if let Some(s) = part.as_str() {
                            push_string(out, s);
                        }
                    });
                }
            }
        }
        (_, Value::String(s)) => push_string(out, &s),
        _ => {}
    }
}

/// Reference values: the target of a Reference, a canonical or uri, or a
/// resolved target.
fn references(node: Option<&Node<'_>>, value: &Value<'_>, out: &mut Vec<IndexValue>) {
    match node {
        Some(n) => {
            if let Some(text) = n.json.get("reference").and_then(JsonValue::as_str) {
                match parse_reference(text) {
                    Some(target) => out.push(IndexValue::Reference {
                        resource_type: target
                            .resource_type
                            .map(str::to_string)
                            .or_else(|| str_field(n.json, "type")),
                        id: target.id.to_string(),
                    }),
                    None => out.push(IndexValue::Reference {
                        resource_type: None,
                        id: text.to_string(),
                    }),
                }
            } else if let Some(text) = n.json.as_str() {
                // canonical / uri elements used as references
                out.push(IndexValue::Reference {
                    resource_type: None,
                    id: text.to_string(),
                });
            }
        }
        None => {
            if let Value::ReferenceTarget { resource_type, id } = value {
                out.push(IndexValue::Reference {
                    resource_type: Some(resource_type.to_string()),
                    id: id.clone(),
                });
            }
        }
    }
}

/// Quantity values: a Quantity element, or a FHIRPath quantity.
fn quantities(node: Option<&Node<'_>>, value: &Value<'_>, out: &mut Vec<IndexValue>) {
    match node {
        Some(n) if n.json.as_object().is_some() => {
            if let Some(v) = n.json.get("value").and_then(|v| match v {
                JsonValue::Number(t) => parse_decimal(t),
                _ => None,
            }) {
                out.push(IndexValue::Quantity {
                    value: v,
                    system: str_field(n.json, "system"),
                    code: str_field(n.json, "code"),
                    unit: str_field(n.json, "unit"),
                });
            }
        }
        _ => {
            if let Value::Quantity(q) = value.to_system() {
                out.push(IndexValue::Quantity {
                    value: q.value,
                    system: None,
                    code: Some(q.unit),
                    unit: None,
                });
            }
        }
    }
}

/// Number values: integers and decimals.
fn numbers(value: &Value<'_>, out: &mut Vec<IndexValue>) {
    match value.to_system() {
        Value::Integer(i) => out.push(IndexValue::Number(Decimal::from(i))),
        Value::Decimal(d) => out.push(IndexValue::Number(d)),
        _ => {}
    }
}

/// URI values: the string.
fn uris(value: &Value<'_>, out: &mut Vec<IndexValue>) {
    {
        if let Value::String(s) = value.to_system() {
            out.push(IndexValue::Uri(s));
        }
    }
}

/// All index values of parameter `param` for `resource`.
pub fn index_values(
    param: &super::SearchParam,
    resource: &JsonValue<'_>,
) -> Result<Vec<IndexValue>, crate::fhirpath::FhirPathError> {
    let mut out = Vec::new();
    if let Some(path) = &param.path {
        for value in path.evaluate(resource, &std::collections::HashMap::new())? {
            extract(param.param_type, &value, &mut out);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::parse;
    use crate::search::SearchRegistry;

    fn values(resource_type: &str, code: &str, json: &str) -> Vec<IndexValue> {
        let param = SearchRegistry::r4().unwrap().get(resource_type, code).unwrap();
        index_values(param, &parse(json).unwrap()).unwrap()
    }

    #[test]
    fn extracts_tokens() {
        let cond = r#"{"resourceType":"Condition","code":{"coding":[{"system":"http://snomed.info/sct","code":"44054006","display":"Diabetes"}],"text":"T2D"},
            "clinicalStatus":{"coding":[{"code":"active"}]}}"#;
        assert_eq!(
            values("Condition", "code", cond),
            [IndexValue::Token {
                system: Some("http://snomed.info/sct".into()),
                code: "44054006".into(),
                text: Some("Diabetes".into()),
                of_type: None,
            }]
        );
        let patient = r#"{"resourceType":"Patient","id":"p","gender":"female","deceasedDateTime":"2020-01-01",
            "identifier":[{"system":"urn:x","value":"42"}]}"#;
        assert_eq!(
            values("Patient", "gender", patient),
            [IndexValue::Token {
                system: None,
                code: "female".into(),
                text: None,
                of_type: None,
            }]
        );
        assert_eq!(
            values("Patient", "deceased", patient),
            [IndexValue::Token {
                system: None,
                code: "true".into(),
                text: None,
                of_type: None,
            }]
        );
        assert_eq!(
            values("Patient", "identifier", patient),
            [IndexValue::Token {
                system: Some("urn:x".into()),
                code: "42".into(),
                text: None,
                of_type: None,
            }]
        );
        assert_eq!(
            values("Patient", "_id", patient),
            [IndexValue::Token {
                system: None,
                code: "p".into(),
                text: None,
                of_type: None,
            }]
        );
    }

    #[test]
    fn identifiers_keep_their_type_codings() {
        let patient = r#"{"resourceType":"Patient","id":"p","identifier":[{"system":"urn:mrn","value":"7",
            "type":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/v2-0203","code":"MR"},{"code":"X"}],"text":"MRN"}}]}"#;
        let token = |of_type: (Option<&str>, &str)| IndexValue::Token {
            system: Some("urn:mrn".into()),
            code: "7".into(),
            text: Some("MRN".into()),
            of_type: Some((of_type.0.map(String::from), of_type.1.into())),
        };
        assert_eq!(
            values("Patient", "identifier", patient),
            [
                token((Some("http://terminology.hl7.org/CodeSystem/v2-0203"), "MR")),
                token((None, "X"))
            ]
        );
    }

    #[test]
    fn extracts_dates_strings_references_quantities() {
        let enc = r#"{"resourceType":"Encounter","period":{"start":"2019-03-01T10:00:00-05:00"},"subject":{"reference":"Patient/p1"},
            "serviceProvider":{"reference":"Organization/o1"}}"#;
        match values("Encounter", "date", enc).as_slice() {
            [IndexValue::Date(r)] => assert_eq!(r.high, i64::MAX, "an open period"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            values("Encounter", "patient", enc),
            [IndexValue::Reference {
                resource_type: Some("Patient".into()),
                id: "p1".into()
            }]
        );
        let patient = r#"{"resourceType":"Patient","name":[{"family":"Müller","given":["Zoë","Ann"]}],"address":[{"state":"Massachusetts"}]}"#;
        let names = values("Patient", "name", patient);
        assert!(
            names.contains(&IndexValue::String {
                folded: "muller".into(),
                exact: "Müller".into()
            }),
            "{names:?}"
        );
        assert!(names.contains(&IndexValue::String {
            folded: "zoe".into(),
            exact: "Zoë".into()
        }));
        assert_eq!(values("Patient", "address-state", patient).len(), 1);
        let obs = r#"{"resourceType":"Observation","valueQuantity":{"value":6.5,"unit":"%","system":"http://unitsofmeasure.org","code":"%"}}"#;
        assert_eq!(
            values("Observation", "value-quantity", obs),
            [IndexValue::Quantity {
                value: Decimal::new(65, 1),
                system: Some("http://unitsofmeasure.org".into()),
                code: Some("%".into()),
                unit: Some("%".into())
            }]
        );
    }
}

/// Indexes resources of one type: parameters that share an expression are
/// evaluated once, and an expression whose first element the resource lacks
/// is not evaluated at all (most parameters of a type are absent from any
/// given resource).
pub struct TypeIndexer<'r> {
    groups: Vec<ExpressionGroup<'r>>,
    /// Root element names any expression reads, by their index in `present`.
    vocabulary: crate::fhir::model::FastMap<String, usize>,
}

struct ExpressionGroup<'r> {
    path: crate::fhirpath::FhirPath,
    /// Indexes (into the vocabulary) of the root elements the expression
    /// reads (`None`: could not tell, always evaluate).
    roots: Option<Vec<usize>>,
    /// (parameter code, type) of every parameter using this expression.
    params: Vec<(&'r str, ParamType)>,
}

/// The element names right below the resource that `expr` starts from.
fn root_elements(expr: &crate::fhirpath::ast::Expr, out: &mut Vec<String>) -> bool {
    use crate::fhirpath::ast::{BinaryOp, Expr};
    match expr {
        Expr::Member(target, name) => match target.as_ref() {
            Expr::Identifier(t) if t.starts_with(|c: char| c.is_ascii_uppercase()) => {
                out.push(name.clone());
                true
            }
            other => root_elements(other, out),
        },
        Expr::Function { target: Some(t), .. } => root_elements(t, out),
        Expr::Is(t, _) | Expr::As(t, _) | Expr::Indexer(t, _) => root_elements(t, out),
        Expr::Binary(BinaryOp::Union, a, b) => root_elements(a, out) && root_elements(b, out),
        Expr::Identifier(name) if !name.starts_with(|c: char| c.is_ascii_uppercase()) => {
            out.push(name.clone());
            true
        }
        _ => false,
    }
}

/// The parameter answered from the resource table's `id` column: an index
/// row per resource would repeat it (it was ~8 % of the index's rows).
pub const ID_PARAM: &str = "_id";

/// Whether the index holds rows of `param`: all supported ones but
/// [`ID_PARAM`] and those derived from others (see
/// [`crate::search::registry::Derivation`]; about 15 % of a Synthea
/// index's rows were `patient` copies of `subject` and `combo-code` copies
/// of `code` and `component-code`).
pub fn is_indexed(param: &SearchParam) -> bool {
    param.code != ID_PARAM && param.derived.is_none()
}

impl<'r> TypeIndexer<'r> {
    /// The indexer of `resource_type`'s supported parameters.
    pub fn new(registry: &'r super::SearchRegistry, resource_type: &str) -> Self {
        let mut groups: Vec<ExpressionGroup> = Vec::new();
        let mut vocabulary = crate::fhir::model::FastMap::default();
        for param in registry.supported(resource_type) {
            if !is_indexed(param) {
                continue;
            }
            let Some(path) = &param.path else { continue };
            let entry = (param.code.as_str(), param.param_type);
            match groups.iter_mut().find(|g| g.path.text() == path.text()) {
                Some(group) => group.params.push(entry),
                None => {
                    let mut names = Vec::new();
                    // Expressions over `id` and `meta` are always evaluated
                    // (cheap).
                    let known =
                        root_elements(path.ast(), &mut names) && !names.iter().any(|r| r == "id" || r == "meta");
                    let roots = known.then(|| {
                        names
                            .into_iter()
                            .map(|name| {
                                let next = vocabulary.len();
                                *vocabulary.entry(name).or_insert(next)
                            })
                            .collect()
                    });
                    groups.push(ExpressionGroup {
                        path: path.clone(),
                        roots,
                        params: vec![entry],
                    });
                }
            }
        }
        Self { groups, vocabulary }
    }

    /// Marks which vocabulary roots `resource` has: a member matches its own
    /// name, and a choice member (`valueQuantity`) also the stem before each
    /// inner capital (`value`).
    fn present_roots(&self, resource: &JsonValue<'_>, present: &mut Vec<bool>) {
        present.clear();
        present.resize(self.vocabulary.len(), false);
        for (key, _) in resource.as_object().unwrap_or_default() {
            let key: &str = key;
            if let Some(&i) = self.vocabulary.get(key) {
                present[i] = true;
            }
            // An ASCII capital never sits inside a multi-byte character, so
            // byte positions are character boundaries.
            for (pos, b) in key.bytes().enumerate().skip(1) {
                if b.is_ascii_uppercase()
                    && let Some(&i) = self.vocabulary.get(&key[..pos])
                {
                    present[i] = true;
                }
            }
        }
    }

    /// Appends `(parameter code, value)` for every indexed value of `resource`.
    pub fn index(
        &self,
        resource: &JsonValue<'_>,
        out: &mut Vec<(&'r str, IndexValue)>,
    ) -> Result<(), crate::fhirpath::FhirPathError> {
        let mut first_error = None;
        self.index_each(resource, out, |e| {
            first_error.get_or_insert(e);
        });
        first_error.map_or(Ok(()), Err)
    }

    /// Like [`TypeIndexer::index`], but an expression that fails is skipped
    /// (the others still index the resource); returns how many failed.
    pub fn index_lenient(&self, resource: &JsonValue<'_>, out: &mut Vec<(&'r str, IndexValue)>) -> u64 {
        let mut failures = 0;
        self.index_each(resource, out, |e| {
            tracing::debug!(error = %e, "search parameter expression failed; value not indexed");
            failures += 1;
        });
        failures
    }

    fn index_each(
        &self,
        resource: &JsonValue<'_>,
        out: &mut Vec<(&'r str, IndexValue)>,
        mut on_error: impl FnMut(crate::fhirpath::FhirPathError),
    ) {
        let mut present = Vec::new();
        self.present_roots(resource, &mut present);
        let vars = std::collections::HashMap::new();
        let model = match crate::fhir::model::FhirModel::r4() {
            Ok(model) => model,
            Err(e) => return on_error(crate::fhirpath::FhirPathError::Model(e.to_string())),
        };
        let root = [Value::resource(resource, model)];
        // One buffer for every group's values.
        let mut results = Vec::new();
        let mut values = Vec::new();
        for group in &self.groups {
            if let Some(roots) = &group.roots
                && !roots.iter().any(|&i| present[i])
            {
                continue;
            }
            results.clear();
            if let Err(e) = group.path.evaluate_into(&root[0], &root, &vars, &mut results) {
                on_error(e);
                continue;
            }
            if results.is_empty() {
                continue;
            }
            for &(code, param_type) in &group.params {
                for value in &results {
                    extract(param_type, value, &mut values);
                }
                out.extend(values.drain(..).map(|v| (code, v)));
            }
        }
    }
}

#[cfg(test)]
mod indexer_tests {
    use super::*;
    use crate::json::parse;
    use crate::search::SearchRegistry;

    #[test]
    fn indexer_agrees_with_per_parameter_extraction() {
        let registry = SearchRegistry::r4().unwrap();
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../data/synthea-10/Observation.000.ndjson"
        ))
        .unwrap();
        let indexer = TypeIndexer::new(registry, "Observation");
        for line in text.lines().take(300) {
            let resource = parse(line).unwrap();
            let mut fast = Vec::new();
            indexer.index(&resource, &mut fast).unwrap();
            let mut slow = Vec::new();
            for param in registry.supported("Observation").into_iter().filter(|p| is_indexed(p)) {
                for v in index_values(param, &resource).unwrap() {
                    slow.push((param.code.as_str(), v));
                }
            }
            let key = |v: &(&str, IndexValue)| format!("{}{:?}", v.0, v.1);
            let mut fast: Vec<String> = fast.iter().map(key).collect();
            let mut slow: Vec<String> = slow.iter().map(key).collect();
            fast.sort();
            slow.sort();
            assert_eq!(fast, slow);
        }
    }
}
