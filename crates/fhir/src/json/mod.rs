//! A borrowed JSON document model for FHIR resources.
//!
//! Ingest parses every resource exactly once into a [`JsonValue`] that borrows
//! from the input line: strings without escapes and all numbers are slices of
//! the line, so parsing allocates only the vectors of arrays and objects.
//! Numbers keep their source text, so a FHIR decimal such as `1.0` keeps its
//! precision (FHIR requires it; `serde_json::Value` would turn it into `1`).
//! Objects keep their keys in document order as a vector: FHIR objects are
//! small, and a linear scan beats hashing for a handful of keys.

mod parser;

use std::borrow::Cow;

pub use parser::{JsonError, parse};

/// A parsed JSON value that borrows from the source text.
#[derive(Debug, Clone, PartialEq)]
pub enum JsonValue<'a> {
    /// `null`
    Null,
    /// `true` / `false`
    Bool(bool),
    /// A number, as written in the source (validated against the JSON grammar).
    Number(&'a str),
    /// A string with escapes resolved.
    String(Cow<'a, str>),
    /// An array.
    Array(Vec<JsonValue<'a>>),
    /// An object, keys in document order.
    Object(Vec<(Cow<'a, str>, JsonValue<'a>)>),
}

impl<'a> JsonValue<'a> {
    /// The member `key` of an object; `None` for other values or a missing key.
    pub fn get(&self, key: &str) -> Option<&JsonValue<'a>> {
        match self {
            JsonValue::Object(members) => members.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The string content, if this is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            JsonValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// The elements, if this is an array.
    pub fn as_array(&self) -> Option<&[JsonValue<'a>]> {
        match self {
            JsonValue::Array(items) => Some(items),
            _ => None,
        }
    }

    /// The members, if this is an object.
    pub fn as_object(&self) -> Option<&[(Cow<'a, str>, JsonValue<'a>)]> {
        match self {
            JsonValue::Object(members) => Some(members),
            _ => None,
        }
    }

    /// Calls `f` for this value, or for each element if it is an array: FHIR
    /// paths step through repeating elements transparently.
    pub fn for_each_item<'s>(&'s self, mut f: impl FnMut(&'s JsonValue<'a>)) {
        match self {
            JsonValue::Array(items) => items.iter().for_each(f),
            other => f(other),
        }
    }

    /// Writes this value as compact JSON (numbers as written in the source).
    pub fn write_json(&self, out: &mut String) {
        match self {
            JsonValue::Null => out.push_str("null"),
            JsonValue::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            JsonValue::Number(n) => out.push_str(n),
            JsonValue::String(s) => write_json_string(s, out),
            JsonValue::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.write_json(out);
                }
                out.push(']');
            }
            JsonValue::Object(members) => {
                out.push('{');
                for (i, (k, v)) in members.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write_json_string(k, out);
                    out.push(':');
                    v.write_json(out);
                }
                out.push('}');
            }
        }
    }

    /// This value as compact JSON text.
    pub fn to_json_string(&self) -> String {
        let mut out = String::new();
        self.write_json(&mut out);
        out
    }
}

/// Appends `s` as a JSON string literal, escaping what JSON requires.
pub fn write_json_string(s: &str, out: &mut String) {
    out.push('"');
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let escape: Option<&str> = match b {
            b'"' => Some("\\\""),
            b'\\' => Some("\\\\"),
            b'\n' => Some("\\n"),
            b'\r' => Some("\\r"),
            b'\t' => Some("\\t"),
            0x00..=0x1f => None,
            _ => continue,
        };
        out.push_str(&s[start..i]);
        match escape {
            Some(e) => out.push_str(e),
            None => out.push_str(&format!("\\u{b:04x}")),
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_compact_json() {
        let text = r#"{"a":[1,2.50,-3e+2,true,false,null],"b":"x\"y\\z\n","c":{}}"#;
        let v = parse(text).unwrap();
        assert_eq!(v.to_json_string(), text);
    }

    #[test]
    fn keeps_decimal_precision() {
        let v = parse(r#"{"value":1.0}"#).unwrap();
        assert_eq!(v.get("value"), Some(&JsonValue::Number("1.0")));
    }
}
