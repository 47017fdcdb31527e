//! Trims the bundled FHIR R4 definitions to the fields fhirlake reads.
//!
//! `data/fhir-r4/` keeps the official files unchanged (provenance); every
//! process that loads, searches or evaluates FHIRPath deserializes them, and
//! most of their bytes are descriptions, XPath and regexes it never reads
//! (search parameters: 2.1 MB → 0.5 MB). The trimmed copies go to `OUT_DIR`
//! and are embedded with `include_str!`.

use std::path::Path;

use serde_json::{Map, Value};

/// Keeps the fields read from one definitions file.
type Trim = fn(Value) -> Value;

/// Definitions to trim: source file and the function keeping what is read.
const FILES: [(&str, Trim); 2] = [
    ("elements-r4.json", trim_elements),
    ("search-parameters.json", trim_search_parameters),
];

fn main() {
    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    for (name, trim) in FILES {
        let source = Path::new("../../data/fhir-r4").join(name);
        println!("cargo:rerun-if-changed={}", source.display());
        let text = std::fs::read_to_string(&source).unwrap_or_else(|e| panic!("{}: {e}", source.display()));
        let json: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", source.display()));
        let trimmed = serde_json::to_string(&trim(json)).expect("JSON values serialize");
        let target = Path::new(&out).join(name);
        std::fs::write(&target, trimmed).unwrap_or_else(|e| panic!("{}: {e}", target.display()));
    }
}

/// `value` with only the `keys` of its object (in place of a schema).
fn keep(value: &Value, keys: &[&str]) -> Map<String, Value> {
    let mut kept = Map::new();
    if let Value::Object(object) = value {
        for key in keys {
            if let Some(v) = object.get(*key) {
                kept.insert((*key).to_string(), v.clone());
            }
        }
    }
    kept
}

/// Each item of the array `value[key]` trimmed by `trim` (absent: absent).
fn map_array(object: &mut Map<String, Value>, key: &str, trim: impl Fn(&Value) -> Value) {
    if let Some(Value::Array(items)) = object.get_mut(key) {
        *items = items.iter().map(trim).collect();
    }
}

/// What `fhir::model` reads: per type its kind, base and abstractness, and
/// per element its path, cardinality, types (code, reference targets),
/// choice flag and content reference.
fn trim_elements(file: Value) -> Value {
    let mut types = Map::new();
    if let Some(Value::Object(all)) = file.get("types") {
        for (name, definition) in all {
            let mut kept = keep(definition, &["kind", "baseDefinition", "abstract", "elements"]);
            map_array(&mut kept, "elements", |element| {
                let mut element = keep(element, &["path", "min", "max", "types", "choice", "contentReference"]);
                map_array(&mut element, "types", |t| Value::Object(keep(t, &["code", "targets"])));
                Value::Object(element)
            });
            types.insert(name.clone(), Value::Object(kept));
        }
    }
    let mut trimmed = Map::new();
    trimmed.insert("types".into(), Value::Object(types));
    Value::Object(trimmed)
}

/// What `fhir::search_parameters` reads of each SearchParameter.
fn trim_search_parameters(bundle: Value) -> Value {
    let mut entries = Vec::new();
    if let Some(Value::Array(all)) = bundle.get("entry") {
        for entry in all {
            let resource = entry.get("resource").unwrap_or(&Value::Null);
            let mut kept = keep(
                resource,
                &["url", "code", "base", "type", "expression", "target", "component"],
            );
            map_array(&mut kept, "component", |c| {
                Value::Object(keep(c, &["definition", "expression"]))
            });
            let mut trimmed = Map::new();
            trimmed.insert("resource".into(), Value::Object(kept));
            entries.push(Value::Object(trimmed));
        }
    }
    let mut trimmed = Map::new();
    trimmed.insert("entry".into(), Value::Array(entries));
    Value::Object(trimmed)
}
