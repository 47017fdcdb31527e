//! Our JSON parser agrees with serde_json on every line of the sample data.

use fhirlake::json::{JsonValue, parse};

fn to_serde(v: &JsonValue<'_>) -> serde_json::Value {
    match v {
        JsonValue::Null => serde_json::Value::Null,
        JsonValue::Bool(b) => serde_json::Value::Bool(*b),
        JsonValue::Number(n) => serde_json::from_str(n).expect("valid number"),
        JsonValue::String(s) => serde_json::Value::String(s.to_string()),
        JsonValue::Array(items) => serde_json::Value::Array(items.iter().map(to_serde).collect()),
        JsonValue::Object(members) => {
            serde_json::Value::Object(members.iter().map(|(k, v)| (k.to_string(), to_serde(v))).collect())
        }
    }
}

#[test]
fn agrees_with_serde_json_on_sample_data() {
    let mut lines = 0;
    for entry in std::fs::read_dir(crate::common::sample_data()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("ndjson") {
            continue;
        }
        for line in std::fs::read_to_string(&path).unwrap().lines() {
            let ours = parse(line).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let theirs: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(to_serde(&ours), theirs);
            // Compact input round-trips byte for byte.
            assert_eq!(ours.to_json_string(), line);
            lines += 1;
        }
    }
    assert!(lines > 4000, "read {lines} lines");
}
