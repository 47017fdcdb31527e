//! `_elements`: keeps the listed top-level elements of a resource plus the
//! mandatory ones (`resourceType`, `id`, `meta` and every element with
//! `min ≥ 1` in R4), and tags the result `SUBSETTED`.
//!
//! Works on the stored JSON text: the top-level members are located by a
//! small scanner and copied byte for byte, so kept values (decimals!) are
//! exactly as loaded and nothing is re-serialised except `meta`.

use std::collections::HashSet;

use serde_json::{Value, json};

use super::params::ElementSelector;
use crate::fhir::model::{FhirModel, choice_json_name};

/// Code system of the `SUBSETTED` tag.
pub const SUBSETTED_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue";

/// The JSON member names to keep for one resource type.
#[derive(Debug, Clone)]
pub struct ElementFilter {
    keep: HashSet<String>,
}

impl ElementFilter {
    /// The filter of `resource_type` for `selectors`; `None` when no
    /// selector applies to the type (the resource is exported whole).
    pub fn for_type(resource_type: &str, selectors: &[ElementSelector]) -> Option<Self> {
        let wanted: Vec<&str> = selectors
            .iter()
            .filter(|s| s.resource_type.as_deref().is_none_or(|t| t == resource_type))
            .map(|s| s.element.as_str())
            .collect();
        if wanted.is_empty() {
            return None;
        }
        let model = FhirModel::r4().ok();
        let mut keep: HashSet<String> = ["resourceType", "id", "meta"].iter().map(|s| s.to_string()).collect();
        let mut add = |name: &str| {
            // A choice element `value` is stored as `valueQuantity`, …
            match model.and_then(|m| m.element(resource_type, name)) {
                Some(def) if def.choice => {
                    for code in &def.types {
                        keep.insert(choice_json_name(name, code));
                    }
                }
                _ => {
                    keep.insert(name.to_string());
                }
            }
            // Primitive extensions travel with their element.
            keep.insert(format!("_{name}"));
        };
        for name in wanted {
            add(name);
        }
        if let Some(model) = model {
            let required: Vec<&str> = model
                .elements_of(resource_type)
                .filter(|(_, def)| def.required)
                .map(|(name, _)| name)
                .collect();
            for name in required {
                add(name);
            }
        }
        Some(Self { keep })
    }

    /// The subset of `resource` (a JSON object's text), tagged `SUBSETTED`.
    /// Text that is not a JSON object is returned unchanged.
    pub fn apply(&self, resource: &str) -> String {
        let Some(members) = top_level_members(resource) else {
            return resource.to_string();
        };
        let mut out = String::with_capacity(resource.len() / 2);
        out.push('{');
        let mut meta: Option<Value> = None;
        for (key, value) in members {
            if key == "meta" {
                meta = serde_json::from_str(value).ok();
                continue;
            }
            if !self.keep.contains(key) {
                continue;
            }
            if out.len() > 1 {
                out.push(',');
            }
            out.push('"');
            out.push_str(key);
            out.push_str("\":");
            out.push_str(value);
        }
        let mut meta = match meta {
            Some(Value::Object(map)) => Value::Object(map),
            _ => json!({}),
        };
        let tag = json!({"system": SUBSETTED_SYSTEM, "code": "SUBSETTED"});
        match meta.get_mut("tag").and_then(Value::as_array_mut) {
            Some(tags) => {
                if !tags.iter().any(|t| t.get("code") == Some(&json!("SUBSETTED"))) {
                    tags.push(tag);
                }
            }
            None => meta["tag"] = json!([tag]),
        }
        if out.len() > 1 {
            out.push(',');
        }
        out.push_str("\"meta\":");
        out.push_str(&meta.to_string());
        out.push('}');
        out
    }
}

/// The top-level members of a JSON object's text as (unescaped-key, raw
/// value text) pairs; `None` when the text is not an object. Keys with
/// escapes are returned raw (FHIR element names never have any).
fn top_level_members(text: &str) -> Option<Vec<(&str, &str)>> {
    let bytes = text.as_bytes();
    let mut i = skip_ws(bytes, 0);
    if bytes.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    let mut members = Vec::new();
    loop {
        i = skip_ws(bytes, i);
        match bytes.get(i)? {
            b'}' => return Some(members),
            b',' => {
                i += 1;
                continue;
            }
            b'"' => {}
            _ => return None,
        }
        let key_end = string_end(bytes, i)?;
        let key = &text[i + 1..key_end - 1];
        i = skip_ws(bytes, key_end);
        if bytes.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws(bytes, i + 1);
        let value_start = i;
        i = value_end(bytes, i)?;
        members.push((key, text[value_start..i].trim_end()));
    }
}

fn skip_ws(bytes: &[u8], mut i: usize) -> usize {
    while bytes.get(i).is_some_and(u8::is_ascii_whitespace) {
        i += 1;
    }
    i
}

/// Index just past the string starting at `i` (a `"`).
fn string_end(bytes: &[u8], mut i: usize) -> Option<usize> {
    i += 1;
    loop {
        match bytes.get(i)? {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
}

/// Index just past the value starting at `i`.
fn value_end(bytes: &[u8], mut i: usize) -> Option<usize> {
    match bytes.get(i)? {
        b'"' => string_end(bytes, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            loop {
                match bytes.get(i)? {
                    b'"' => {
                        i = string_end(bytes, i)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
        }
        _ => {
            while bytes.get(i).is_some_and(|b| !matches!(b, b',' | b'}')) {
                i += 1;
            }
            Some(i)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn selectors(items: &[&str]) -> Vec<ElementSelector> {
        items
            .iter()
            .map(|item| match item.split_once('.') {
                Some((t, e)) => ElementSelector {
                    resource_type: Some(t.to_string()),
                    element: e.to_string(),
                },
                None => ElementSelector {
                    resource_type: None,
                    element: item.to_string(),
                },
            })
            .collect()
    }

    #[test]
    fn keeps_listed_and_mandatory_elements_and_tags_the_result() {
        let observation = r#"{"resourceType":"Observation","id":"o1","meta":{"versionId":"2"},"status":"final","code":{"text":"x"},"subject":{"reference":"Patient/p"},"valueQuantity":{"value":1.50,"unit":"kg"},"note":[{"text":"a, \"b\" }"}]}"#;
        let filter = ElementFilter::for_type("Observation", &selectors(&["Observation.value"])).unwrap();
        let out: Value = serde_json::from_str(&filter.apply(observation)).unwrap();
        assert_eq!(out["id"], "o1");
        assert_eq!(out["status"], "final", "status is mandatory (1..1)");
        assert_eq!(out["code"]["text"], "x", "code is mandatory");
        assert!(out.get("subject").is_none());
        assert!(out.get("note").is_none());
        assert_eq!(out["meta"]["versionId"], "2");
        assert_eq!(out["meta"]["tag"][0]["code"], "SUBSETTED");
        // The decimal keeps its text.
        assert!(filter.apply(observation).contains(r#""value":1.50"#));
    }

    #[test]
    fn selectors_of_other_types_do_not_apply() {
        assert!(ElementFilter::for_type("Patient", &selectors(&["Observation.value"])).is_none());
        let filter = ElementFilter::for_type("Patient", &selectors(&["gender"])).unwrap();
        let out: Value =
            serde_json::from_str(&filter.apply(r#"{"resourceType":"Patient","id":"p","gender":"male","name":[]}"#))
                .unwrap();
        assert_eq!(
            out,
            json!({"resourceType":"Patient","id":"p","gender":"male","meta":{"tag":[{"system":SUBSETTED_SYSTEM,"code":"SUBSETTED"}]}})
        );
    }

    #[test]
    fn scanner_handles_nesting_and_escapes() {
        let members = top_level_members(r#" { "a" : [1,{"b":"}]"}] , "c":true,"d":-1.0e3 } "#).unwrap();
        assert_eq!(
            members,
            vec![("a", r#"[1,{"b":"}]"}]"#), ("c", "true"), ("d", "-1.0e3")]
        );
        assert!(top_level_members("[1]").is_none());
        assert!(top_level_members(r#"{"a":"#).is_none());
    }
}
