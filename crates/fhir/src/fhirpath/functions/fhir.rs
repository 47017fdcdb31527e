//! FHIRPath functions: FHIR-specific functions (`extension`, `resolve`, `getResourceKey`, `getReferenceKey`, …).

use super::*;

/// The functions of this family.
pub(super) static FUNCTIONS: &[Function] = &[
    // FHIR-specific
    f("extension", 1, 1, |e, input, args, scope| {
        let Some(url) = singleton_string(&e.eval(&args[0], scope)?, "extension()")? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for item in &input {
            let mut extensions = Vec::new();
            e.navigate(item, "extension", false, &mut extensions);
            out.extend(extensions.into_iter().filter(|x| match x {
                Value::Node(n) => n.json.get("url").and_then(JsonValue::as_str) == Some(url.as_str()),
                _ => false,
            }));
        }
        Ok(out)
    }),
    f("hasValue", 0, 0, |_, input, _, _| {
        Ok(boolean(input.len() == 1 && input[0].is_primitive()))
    }),
    f("getValue", 0, 0, |_, input, _, _| {
        Ok(if input.len() == 1 && input[0].is_primitive() {
            vec![input[0].to_system()]
        } else {
            Vec::new()
        })
    }),
    f("resolve", 0, 0, |_, input, _, _| {
        Ok(input
            .iter()
            .filter_map(|v| match v {
                Value::Node(n) => {
                    let (resource_type, id) = reference_target(n.json)?;
                    Some(Value::ReferenceTarget {
                        resource_type,
                        id: id.to_string(),
                    })
                }
                _ => None,
            })
            .collect())
    }),
    f("getResourceKey", 0, 0, |_, input, _, _| {
        Ok(input
            .iter()
            .filter_map(|v| match v {
                Value::Node(n) => resource_key(n),
                _ => None,
            })
            .collect())
    }),
    f("getReferenceKey", 0, 1, |_, input, args, _| {
        let wanted = match args.first() {
            Some(a) => Some(type_argument(a)?.name),
            None => None,
        };
        Ok(input
            .iter()
            .filter_map(|v| match v {
                Value::Node(n) => reference_key(n, wanted.as_deref()),
                _ => None,
            })
            .collect())
    }),
    f("lowBoundary", 0, 1, |e, input, args, scope| {
        let precision = match args.first() {
            Some(a) => singleton_integer(&e.eval(a, scope)?, "lowBoundary()")?,
            None => None,
        };
        boundary(&input, true, precision)
    }),
    f("highBoundary", 0, 1, |e, input, args, scope| {
        let precision = match args.first() {
            Some(a) => singleton_integer(&e.eval(a, scope)?, "highBoundary()")?,
            None => None,
        };
        boundary(&input, false, precision)
    }),
];

/// `getResourceKey()` of one node: the id of a resource node.
pub(crate) fn resource_key<'a>(node: &Node<'a>) -> Option<Value<'a>> {
    resource_key_str(node).map(|s| Value::String(s.to_string()))
}

/// `getResourceKey()` of one node, borrowed from the resource.
pub(crate) fn resource_key_str<'a>(node: &Node<'a>) -> Option<&'a str> {
    node.json.get("resourceType")?;
    node.json.get("id")?.as_str()
}

/// `getReferenceKey([wanted])` of one Reference node: the target's id, if
/// its type (from the reference text, else `Reference.type`) is `wanted`.
pub(crate) fn reference_key<'a>(node: &Node<'a>, wanted: Option<&str>) -> Option<Value<'a>> {
    reference_key_str(node, wanted).map(|s| Value::String(s.to_string()))
}

/// `getReferenceKey([wanted])` of one Reference node, borrowed from the
/// resource.
pub(crate) fn reference_key_str<'a>(node: &Node<'a>, wanted: Option<&str>) -> Option<&'a str> {
    let target = parse_reference(node.json.get("reference")?.as_str()?)?;
    let t = target.resource_type.or_else(|| reference_type(node));
    if let Some(w) = wanted
        && t != Some(w)
    {
        return None;
    }
    Some(target.id)
}

/// [`reference_key_str`] with `wanted` a resource type (so a reference
/// naming it needs no look-up of the name it writes).
pub(crate) fn reference_key_of_type<'a>(node: &Node<'a>, wanted: &'static str) -> Option<&'a str> {
    let (written, id) = split_reference(node.json.get("reference")?.as_str()?)?;
    match written {
        Some(name) => (name == wanted).then_some(id),
        None => (reference_type(node) == Some(wanted)).then_some(id),
    }
}

/// `Reference.type`, if it names a resource type.
pub(super) fn reference_type(node: &Node<'_>) -> Option<&'static str> {
    node.json
        .get("type")?
        .as_str()
        .and_then(|t| crate::fhir::ResourceTypes::r4().ok()?.get(t))
}

/// The target type and id of a Reference node, as `resolve()` sees them:
/// the type from the reference text, or from `Reference.type` for a
/// `urn:uuid:` reference.
pub(crate) fn reference_target<'j>(reference: &'j JsonValue<'_>) -> Option<(&'static str, &'j str)> {
    let target = parse_reference(reference.get("reference")?.as_str()?)?;
    let resource_type = match target.resource_type {
        Some(t) => t,
        None => crate::fhir::ResourceTypes::r4()
            .ok()?
            .get(reference.get("type")?.as_str()?)?,
    };
    Some((resource_type, target.id))
}
