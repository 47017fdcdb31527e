//! Parsing FHIR `Reference.reference` strings into (type, id).

use super::ResourceTypes;

/// What a reference string points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReferenceTarget<'a> {
    /// The target's resource type; `None` for `urn:uuid:` / `urn:oid:` references,
    /// whose type is only known from `Reference.type` or the element's targets.
    pub resource_type: Option<&'static str>,
    /// The target's logical id.
    pub id: &'a str,
}

/// Parses a literal reference: relative (`Patient/123`), absolute
/// (`https://host/fhir/Patient/123`), versioned (`…/_history/2`) or `urn:uuid:`.
/// Contained (`#x`), conditional (`Patient?identifier=…`) and unparseable
/// references give `None`: they name no resource by id.
pub fn parse_reference(reference: &str) -> Option<ReferenceTarget<'_>> {
    let (type_name, id) = split_reference(reference)?;
    let resource_type = match type_name {
        Some(name) => Some(ResourceTypes::r4().ok()?.get(name)?),
        None => None,
    };
    Some(ReferenceTarget { resource_type, id })
}

/// The type name as written (not checked against the resource types;
/// `None` for `urn:uuid:` / `urn:oid:`) and the id of a literal reference;
/// [`parse_reference`] without the type look-up, for callers that compare
/// the name with one known type.
pub fn split_reference(reference: &str) -> Option<(Option<&str>, &str)> {
    if let Some(id) = reference
        .strip_prefix("urn:uuid:")
        .or_else(|| reference.strip_prefix("urn:oid:"))
    {
        return (!id.is_empty()).then_some((None, id));
    }
    if reference.starts_with('#') || memchr::memchr(b'?', reference.as_bytes()).is_some() {
        return None;
    }
    // Most references have no version: a byte scan for `_` rules that out
    // before the (costlier) substring search.
    let path = match memchr::memchr(b'_', reference.as_bytes()).and_then(|_| reference.find("/_history/")) {
        Some(i) => &reference[..i],
        None => reference,
    };
    // `…/Type/id`: byte scans from the end (a `char` splitter cost ~3 % of
    // a load, since every reference of every resource comes through here).
    let slash = memchr::memrchr(b'/', path.as_bytes())?;
    let id = &path[slash + 1..];
    let before = &path[..slash];
    let type_name = memchr::memrchr(b'/', before.as_bytes()).map_or(before, |i| &before[i + 1..]);
    (!id.is_empty()).then_some((Some(type_name), id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_reference_forms() {
        let p = |s| parse_reference(s).map(|t| (t.resource_type, t.id));
        assert_eq!(p("Patient/123"), Some((Some("Patient"), "123")));
        assert_eq!(
            p("https://example.org/fhir/Patient/abc"),
            Some((Some("Patient"), "abc"))
        );
        assert_eq!(p("Patient/123/_history/4"), Some((Some("Patient"), "123")));
        assert_eq!(p("urn:uuid:6c5d9ca9-54d7"), Some((None, "6c5d9ca9-54d7")));
        assert_eq!(p("#coverage"), None);
        assert_eq!(p("Practitioner?identifier=x|1"), None);
        assert_eq!(p("Nonsense/1"), None);
        assert_eq!(p("Patient/"), None);
        assert_eq!(p("https://h/fhir/Patient/7/_history/2"), Some((Some("Patient"), "7")));
        assert_eq!(p("Patient/a_b"), Some((Some("Patient"), "a_b")));
        assert_eq!(p("123"), None);
        // The written type, not yet checked against the resource types.
        assert_eq!(split_reference("Foo/1"), Some((Some("Foo"), "1")));
        assert_eq!(split_reference("urn:uuid:9"), Some((None, "9")));
    }
}
