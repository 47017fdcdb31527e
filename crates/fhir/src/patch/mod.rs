//! PATCH of a FHIR resource held as JSON: RFC 6902 JSON Patch
//! ([`apply_json_patch`], through the `json-patch` crate) and FHIRPath
//! Patch ([`apply_fhirpath_patch`], a `Parameters` of `operation`s whose
//! paths are a documented subset of FHIRPath: see [`path`]).
//! Either applies every operation or none, and may change neither
//! `resourceType` nor `id`.

pub mod fhirpath_patch;
pub mod path;

pub use fhirpath_patch::apply_fhirpath_patch;
use serde_json::Value;

/// Why a patch cannot be applied.
#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    /// The patch document is malformed (not JSON Patch, not a FHIRPath
    /// Patch `Parameters`, an unknown operation type, a path outside the
    /// supported subset).
    #[error("invalid patch: {0}")]
    Invalid(String),
    /// The patch is well formed but does not apply to this resource (a
    /// `test` failed, a path matches nothing or several elements).
    #[error("the patch does not apply: {0}")]
    NotApplicable(String),
}

impl crate::error::HasKind for PatchError {
    fn kind(&self) -> crate::error::ErrorKind {
        match self {
            Self::Invalid(_) => crate::error::ErrorKind::Invalid,
            Self::NotApplicable(_) => crate::error::ErrorKind::Unprocessable,
        }
    }
}

/// Applies an RFC 6902 JSON Patch document (`body`) to `resource`.
pub fn apply_json_patch(resource: &Value, body: &[u8]) -> Result<Value, PatchError> {
    let patch: json_patch::Patch = serde_json::from_slice(body)
        .map_err(|e| PatchError::Invalid(format!("not a JSON Patch document (an array of operations): {e}")))?;
    let mut patched = resource.clone();
    json_patch::patch(&mut patched, &patch).map_err(|e| PatchError::NotApplicable(e.to_string()))?;
    keeps_identity(resource, &patched)?;
    Ok(patched)
}

/// `resourceType` and `id` are the resource's identity: a patch may not
/// change them.
pub(crate) fn keeps_identity(before: &Value, after: &Value) -> Result<(), PatchError> {
    for field in ["resourceType", "id"] {
        if before.get(field) != after.get(field) {
            return Err(PatchError::NotApplicable(format!("a patch may not change {field}")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn json_patch_applies_whole_or_not_at_all() {
        let group = json!({"resourceType": "Group", "id": "g", "name": "a", "member": []});
        let patch = json!([
            {"op": "replace", "path": "/name", "value": "b"},
            {"op": "add", "path": "/member/-", "value": {"entity": {"reference": "Patient/p"}}},
        ]);
        let patched = apply_json_patch(&group, patch.to_string().as_bytes()).expect("applies");
        assert_eq!(patched["name"], "b");
        assert_eq!(patched["member"][0]["entity"]["reference"], "Patient/p");
        let failing = json!([
            {"op": "replace", "path": "/name", "value": "c"},
            {"op": "test", "path": "/name", "value": "zzz"},
        ]);
        assert!(matches!(
            apply_json_patch(&group, failing.to_string().as_bytes()),
            Err(PatchError::NotApplicable(_))
        ));
        let renaming = json!([{"op": "replace", "path": "/id", "value": "other"}]);
        assert!(apply_json_patch(&group, renaming.to_string().as_bytes()).is_err());
        assert!(matches!(apply_json_patch(&group, b"{}"), Err(PatchError::Invalid(_))));
    }
}
