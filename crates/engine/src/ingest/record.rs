//! Validating one NDJSON line as a FHIR R4 resource.

use crate::fhir::ResourceTypes;
use crate::json::{JsonError, JsonValue};

/// Why a line was rejected. The `Display` text is what users see after
/// `file:line:`, and what `_rejects.reason` stores.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RejectReason {
    /// The line is not UTF-8.
    #[error("invalid UTF-8 at byte {offset}")]
    InvalidUtf8 {
        /// Byte offset of the first invalid sequence.
        offset: usize,
    },
    /// The line is not JSON.
    #[error("malformed JSON: {0}")]
    MalformedJson(#[from] JsonError),
    /// The line is JSON but not an object.
    #[error("not a JSON object")]
    NotAnObject,
    /// No `resourceType` string.
    #[error("missing resourceType")]
    MissingResourceType,
    /// `resourceType` names no R4 resource.
    #[error("resourceType '{0}' is not a FHIR R4 resource type")]
    UnknownResourceType(String),
    /// No `id` string.
    #[error("missing id")]
    MissingId,
    /// `id` breaks the FHIR id rule.
    #[error("invalid id '{0}': a FHIR id is 1-64 characters of A-Z, a-z, 0-9, '-' and '.'")]
    InvalidId(String),
    /// `meta.lastUpdated` is not a FHIR instant.
    #[error("invalid meta.lastUpdated '{0}': expected an instant like 2024-01-31T12:00:00Z")]
    InvalidLastUpdated(String),
    /// A view could not be computed from the resource.
    #[error("view '{view}': {message}")]
    View {
        /// The view's name.
        view: String,
        /// What went wrong.
        message: String,
    },
    /// A deletion Bundle entry that names no `Type/id`.
    #[error("deletion Bundle entry {entry}: {message}")]
    InvalidDeletion {
        /// Index of the entry.
        entry: usize,
        /// What is wrong.
        message: String,
    },
    /// The file could not be read past this point (corrupt or truncated gzip).
    #[error("unreadable input: {0}")]
    Unreadable(String),
}

/// The identifying fields of a valid resource, borrowed from its parsed JSON.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ResourceHeader<'a> {
    /// The R4 type.
    pub resource_type: &'static str,
    /// `Resource.id`.
    pub id: &'a str,
    /// `meta.versionId`.
    pub version_id: Option<&'a str>,
    /// `meta.lastUpdated` in microseconds since the epoch (UTC).
    pub last_updated: Option<i64>,
}

/// True if `id` satisfies the FHIR `id` datatype.
pub fn is_valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// Re-exported: the ingest parses `meta.lastUpdated` with it.
pub use crate::fhir::parse_instant;

/// The resources a line deletes, when it is a deletion Bundle: a
/// `transaction` Bundle whose entries are all `request.method = DELETE`
/// with `request.url = Type/id` (the Bulk Data `deleted` file format).
/// `None` for any other line.
pub fn deletions<'v>(
    value: &'v JsonValue<'_>,
    types: &ResourceTypes,
) -> Result<Option<Vec<(&'static str, &'v str)>>, RejectReason> {
    if value.get("resourceType").and_then(JsonValue::as_str) != Some("Bundle")
        || value.get("type").and_then(JsonValue::as_str) != Some("transaction")
    {
        return Ok(None);
    }
    let Some(JsonValue::Array(entries)) = value.get("entry") else {
        return Ok(None);
    };
    let is_delete = |e: &JsonValue<'_>| {
        e.get("request")
            .and_then(|r| r.get("method"))
            .and_then(JsonValue::as_str)
            == Some("DELETE")
    };
    if entries.is_empty() || !entries.iter().all(is_delete) {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        let invalid = |message: String| RejectReason::InvalidDeletion { entry: i, message };
        let url = entry
            .get("request")
            .and_then(|r| r.get("url"))
            .and_then(JsonValue::as_str)
            .ok_or_else(|| invalid("no request.url".into()))?;
        // Relative `Type/id`, or an absolute URL ending in it; a version
        // (`/_history/v`) deletes the resource all the same.
        let path = url.split('?').next().unwrap_or(url).trim_end_matches('/');
        let path = path.split("/_history/").next().unwrap_or(path);
        let mut parts = path.rsplitn(2, '/');
        let (id, rest) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let type_name = rest.rsplit('/').next().unwrap_or("");
        let resource_type = types
            .get(type_name)
            .ok_or_else(|| invalid(format!("request.url '{url}' names no R4 resource type")))?;
        if !is_valid_id(id) {
            return Err(invalid(format!("request.url '{url}' has no valid id")));
        }
        out.push((resource_type, id));
    }
    Ok(Some(out))
}

/// Checks a parsed line and extracts its header.
pub fn validate<'v>(value: &'v JsonValue<'_>, types: &ResourceTypes) -> Result<ResourceHeader<'v>, RejectReason> {
    if value.as_object().is_none() {
        return Err(RejectReason::NotAnObject);
    }
    let type_name = value
        .get("resourceType")
        .and_then(JsonValue::as_str)
        .ok_or(RejectReason::MissingResourceType)?;
    let resource_type = types
        .get(type_name)
        .ok_or_else(|| RejectReason::UnknownResourceType(type_name.to_string()))?;
    let id = match value.get("id") {
        None | Some(JsonValue::Null) => return Err(RejectReason::MissingId),
        Some(JsonValue::String(s)) if is_valid_id(s) => s.as_ref(),
        Some(other) => return Err(RejectReason::InvalidId(other.to_json_string())),
    };
    let meta = value.get("meta");
    let version_id = meta.and_then(|m| m.get("versionId")).and_then(JsonValue::as_str);
    let last_updated = match meta.and_then(|m| m.get("lastUpdated")) {
        None => None,
        Some(JsonValue::String(s)) => {
            Some(parse_instant(s).ok_or_else(|| RejectReason::InvalidLastUpdated(s.to_string()))?)
        }
        Some(other) => return Err(RejectReason::InvalidLastUpdated(other.to_json_string())),
    };
    Ok(ResourceHeader {
        resource_type,
        id,
        version_id,
        last_updated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::parse;

    fn check(line: &str) -> Result<(&'static str, String, Option<i64>), RejectReason> {
        let types = ResourceTypes::r4().unwrap();
        let v = parse(line)?;
        validate(&v, types).map(|h| (h.resource_type, h.id.to_string(), h.last_updated))
    }

    #[test]
    fn accepts_valid_resources() {
        assert_eq!(
            check(r#"{"resourceType":"Patient","id":"p1"}"#),
            Ok(("Patient", "p1".into(), None))
        );
        let with_meta = r#"{"resourceType":"Patient","id":"p1","meta":{"lastUpdated":"2024-01-02T03:04:05.5+01:00"}}"#;
        assert_eq!(check(with_meta).unwrap().2, Some(1_704_161_045_500_000));
    }

    #[test]
    fn rejects_with_reasons() {
        use RejectReason::*;
        assert_eq!(check("[1]"), Err(NotAnObject));
        assert_eq!(check(r#"{"id":"x"}"#), Err(MissingResourceType));
        assert_eq!(
            check(r#"{"resourceType":"Pateint","id":"x"}"#),
            Err(UnknownResourceType("Pateint".into()))
        );
        assert_eq!(check(r#"{"resourceType":"Patient"}"#), Err(MissingId));
        assert_eq!(
            check(r#"{"resourceType":"Patient","id":"a b"}"#),
            Err(InvalidId("\"a b\"".into()))
        );
        assert_eq!(
            check(r#"{"resourceType":"Patient","id":7}"#),
            Err(InvalidId("7".into()))
        );
        assert!(matches!(
            check(r#"{"resourceType":"Patient","id":"x","meta":{"lastUpdated":"yesterday"}}"#),
            Err(InvalidLastUpdated(_))
        ));
        assert!(matches!(check(r#"{"resourceType":"Patient""#), Err(MalformedJson(_))));
    }
}
