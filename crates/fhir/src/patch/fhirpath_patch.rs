//! FHIRPath Patch (FHIR R4 §3.1.0.8.3 of http.html#patch): a `Parameters`
//! resource with one `operation` parameter per change, each with parts
//! `type` (add, insert, delete, replace, move), `path`, and as the type
//! needs `name`, `value`, `index`, `source`, `destination`. Values of
//! backbone elements (a Group's `member`) are given as nested `part`s;
//! which child repeats is read from the R4 model.

use serde_json::{Map, Value};

use super::path::{Location, PatchPath, Step, get_mut};
use super::{PatchError, keeps_identity};
use crate::fhir::model::{ElementDef, FhirModel};

/// One operation, as given.
struct Operation<'a> {
    kind: String,
    path: PatchPath,
    parts: Vec<&'a Value>,
}

impl Operation<'_> {
    fn part(&self, name: &str) -> Option<&Value> {
        self.parts
            .iter()
            .copied()
            .find(|p| p.get("name").and_then(Value::as_str) == Some(name))
    }

    fn string(&self, name: &str) -> Result<&str, PatchError> {
        self.part(name)
            .and_then(|p| p.as_object()?.iter().find(|(k, _)| k.starts_with("value"))?.1.as_str())
            .ok_or_else(|| PatchError::Invalid(format!("a '{}' operation needs a '{name}' part", self.kind)))
    }

    fn integer(&self, name: &str) -> Result<usize, PatchError> {
        self.part(name)
            .and_then(|p| p.get("valueInteger")?.as_u64())
            .map(|n| n as usize)
            .ok_or_else(|| {
                PatchError::Invalid(format!("a '{}' operation needs '{name}' (valueInteger ≥ 0)", self.kind))
            })
    }
}

/// Applies the FHIRPath Patch `parameters` to `resource`: every operation
/// in order, or none.
pub fn apply_fhirpath_patch(resource: &Value, parameters: &Value) -> Result<Value, PatchError> {
    if parameters.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
        return Err(PatchError::Invalid("a FHIRPath Patch is a Parameters resource".into()));
    }
    let model = FhirModel::r4().map_err(|e| PatchError::Invalid(format!("the R4 model is unavailable: {e}")))?;
    let list = parameters.get("parameter").and_then(Value::as_array);
    let mut patched = resource.clone();
    let mut applied = 0;
    for parameter in list.map(Vec::as_slice).unwrap_or_default() {
        if parameter.get("name").and_then(Value::as_str) != Some("operation") {
            return Err(PatchError::Invalid(
                "every parameter of a FHIRPath Patch is an 'operation'".into(),
            ));
        }
        let operation = parse_operation(parameter)?;
        apply(model, &mut patched, &operation)?;
        applied += 1;
    }
    if applied == 0 {
        return Err(PatchError::Invalid("the FHIRPath Patch has no operation".into()));
    }
    keeps_identity(resource, &patched)?;
    Ok(patched)
}

fn parse_operation(parameter: &Value) -> Result<Operation<'_>, PatchError> {
    let parts: Vec<&Value> = parameter
        .get("part")
        .and_then(Value::as_array)
        .map(|p| p.iter().collect())
        .unwrap_or_default();
    let find = |name: &str| {
        parts
            .iter()
            .find(|p| p.get("name").and_then(Value::as_str) == Some(name))
            .copied()
    };
    let kind = find("type")
        .and_then(|p| p.get("valueCode").and_then(Value::as_str))
        .ok_or_else(|| PatchError::Invalid("an operation needs a 'type' part (valueCode)".into()))?
        .to_string();
    let path = find("path")
        .and_then(|p| p.get("valueString").and_then(Value::as_str))
        .ok_or_else(|| PatchError::Invalid(format!("a '{kind}' operation needs a 'path' part (valueString)")))?;
    Ok(Operation {
        path: PatchPath::parse(path)?,
        kind,
        parts,
    })
}

fn apply(model: &FhirModel, resource: &mut Value, operation: &Operation<'_>) -> Result<(), PatchError> {
    match operation.kind.as_str() {
        "add" => add(model, resource, operation),
        "insert" => insert(model, resource, operation),
        "delete" => delete(resource, operation),
        "replace" => replace(model, resource, operation),
        "move" => move_item(resource, operation),
        other => Err(PatchError::Invalid(format!(
            "unknown operation type '{other}' (add, insert, delete, replace, move)"
        ))),
    }
}

/// The one element `path` selects.
fn single(resource: &Value, path: &PatchPath, kind: &str) -> Result<Location, PatchError> {
    let mut found = path.locate(resource)?;
    match found.len() {
        1 => Ok(found.remove(0)),
        n => Err(PatchError::NotApplicable(format!(
            "the path of a '{kind}' operation must select one element, it selects {n}"
        ))),
    }
}

fn add(model: &FhirModel, resource: &mut Value, operation: &Operation<'_>) -> Result<(), PatchError> {
    let name = operation.string("name")?;
    let location = single(resource, &operation.path, "add")?;
    let owner = owner_at(model, resource, &location);
    let element = owner.as_deref().and_then(|o| find_element(model, o, name));
    let value = value_of(model, operation, element)?;
    let Some(Value::Object(container)) = get_mut(resource, &location) else {
        return Err(PatchError::NotApplicable(
            "'add' needs a path to an element with children".into(),
        ));
    };
    if element.is_some_and(|e| e.repeating) {
        match container.entry(name).or_insert_with(|| Value::Array(Vec::new())) {
            Value::Array(list) => list.push(value),
            _ => return Err(PatchError::NotApplicable(format!("'{name}' is not a list"))),
        }
    } else if container.contains_key(name) {
        return Err(PatchError::NotApplicable(format!(
            "'{name}' is already present (a single element): use 'replace'"
        )));
    } else {
        container.insert(name.to_string(), value);
    }
    Ok(())
}

/// The list `path` names (`Group.member`): its container and name.
fn list_of<'a>(
    resource: &'a mut Value,
    operation: &Operation<'_>,
) -> Result<(&'a mut Map<String, Value>, String), PatchError> {
    let (parent, name) = operation.path.split_last_name().ok_or_else(|| {
        PatchError::Invalid(format!(
            "the path of '{}' must end with a list element's name",
            operation.kind
        ))
    })?;
    let location = single(resource, &parent, &operation.kind)?;
    match get_mut(resource, &location) {
        Some(Value::Object(container)) => Ok((container, name.to_string())),
        _ => Err(PatchError::NotApplicable(format!(
            "'{}' has no list to change",
            operation.kind
        ))),
    }
}

fn insert(model: &FhirModel, resource: &mut Value, operation: &Operation<'_>) -> Result<(), PatchError> {
    let index = operation.integer("index")?;
    let element = operation.path.split_last_name().and_then(|(parent, name)| {
        let location = single(resource, &parent, "insert").ok()?;
        let owner = owner_at(model, resource, &location)?;
        find_element(model, &owner, name)
    });
    let value = value_of(model, operation, element)?;
    let (container, name) = list_of(resource, operation)?;
    let Value::Array(list) = container.entry(name).or_insert_with(|| Value::Array(Vec::new())) else {
        return Err(PatchError::NotApplicable("'insert' needs a list".into()));
    };
    if index > list.len() {
        return Err(PatchError::NotApplicable(format!(
            "insert at {index} into a list of {}",
            list.len()
        )));
    }
    list.insert(index, value);
    Ok(())
}

fn delete(resource: &mut Value, operation: &Operation<'_>) -> Result<(), PatchError> {
    let found = operation.path.locate(resource)?;
    let location = match found.as_slice() {
        [] => return Ok(()),
        [one] => one.clone(),
        more => {
            return Err(PatchError::NotApplicable(format!(
                "'delete' removes one element; the path selects {}",
                more.len()
            )));
        }
    };
    let Some((last, parent)) = location.split_last() else {
        return Err(PatchError::NotApplicable("'delete' cannot remove the resource".into()));
    };
    match (get_mut(resource, parent), last) {
        (Some(Value::Array(list)), Step::Index(i)) => {
            list.remove(*i);
            // An emptied list is absent in FHIR JSON.
            if list.is_empty()
                && let Some((Step::Key(key), grandparent)) = parent.split_last()
                && let Some(Value::Object(object)) = get_mut(resource, grandparent)
            {
                object.remove(key);
            }
        }
        (Some(Value::Object(object)), Step::Key(key)) => {
            object.remove(key);
        }
        _ => return Err(PatchError::NotApplicable("the element to delete is not there".into())),
    }
    Ok(())
}

fn replace(model: &FhirModel, resource: &mut Value, operation: &Operation<'_>) -> Result<(), PatchError> {
    let location = single(resource, &operation.path, "replace")?;
    let element = match location.split_last() {
        Some((Step::Key(name), parent)) => {
            owner_at(model, resource, parent).and_then(|o| find_element(model, &o, name))
        }
        Some((Step::Index(_), parent)) => match parent.split_last() {
            Some((Step::Key(name), grandparent)) => {
                owner_at(model, resource, grandparent).and_then(|o| find_element(model, &o, name))
            }
            _ => None,
        },
        None => None,
    };
    let value = value_of(model, operation, element)?;
    if let Some(target) = get_mut(resource, &location) {
        *target = value;
    }
    Ok(())
}

fn move_item(resource: &mut Value, operation: &Operation<'_>) -> Result<(), PatchError> {
    let (source, destination) = (operation.integer("source")?, operation.integer("destination")?);
    let (container, name) = list_of(resource, operation)?;
    let Some(Value::Array(list)) = container.get_mut(&name) else {
        return Err(PatchError::NotApplicable("'move' needs a list".into()));
    };
    if source >= list.len() || destination >= list.len() {
        return Err(PatchError::NotApplicable(format!(
            "move {source} → {destination} in a list of {}",
            list.len()
        )));
    }
    let item = list.remove(source);
    list.insert(destination, item);
    Ok(())
}

/// The operation's `value`: a `value[x]`, or nested `part`s building an
/// element of `element`'s type.
fn value_of(model: &FhirModel, operation: &Operation<'_>, element: Option<&ElementDef>) -> Result<Value, PatchError> {
    let part = operation
        .part("value")
        .ok_or_else(|| PatchError::Invalid(format!("a '{}' operation needs a 'value' part", operation.kind)))?;
    part_value(model, part, element.and_then(children_owner))
}

fn part_value(model: &FhirModel, part: &Value, owner: Option<&'static str>) -> Result<Value, PatchError> {
    if let Some((_, value)) = part
        .as_object()
        .and_then(|o| o.iter().find(|(k, _)| k.starts_with("value")))
    {
        return Ok(value.clone());
    }
    let Some(parts) = part.get("part").and_then(Value::as_array) else {
        return Err(PatchError::Invalid("a value needs value[x] or parts".into()));
    };
    let mut object = Map::new();
    for child in parts {
        let name = child
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| PatchError::Invalid("a value part needs a name".into()))?;
        let element = owner.and_then(|o| find_element(model, o, name));
        let value = part_value(model, child, element.and_then(children_owner))?;
        if element.is_some_and(|e| e.repeating) {
            if let Value::Array(list) = object.entry(name).or_insert_with(|| Value::Array(Vec::new())) {
                list.push(value);
            }
        } else {
            object.insert(name.to_string(), value);
        }
    }
    Ok(Value::Object(object))
}

fn children_owner(element: &ElementDef) -> Option<&'static str> {
    element.children_owner.or_else(|| element.types.first().copied())
}

/// Element `name` of `owner`, inherited ones included.
fn find_element<'m>(model: &'m FhirModel, owner: &str, name: &str) -> Option<&'m ElementDef> {
    let mut current = Some(owner);
    while let Some(owner) = current {
        if let Some(element) = model.element(owner, name) {
            return Some(element);
        }
        current = model.type_def(owner).and_then(|t| t.base);
    }
    None
}

/// The type (or backbone path) of the element at `location`.
fn owner_at(model: &FhirModel, resource: &Value, location: &[Step]) -> Option<String> {
    let mut owner: &str = resource.get("resourceType")?.as_str()?;
    for step in location {
        if let Step::Key(name) = step {
            owner = children_owner(find_element(model, owner, name)?)?;
        }
    }
    Some(owner.to_string())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn operation(parts: Value) -> Value {
        json!({"name": "operation", "part": parts})
    }

    fn patch(operations: Vec<Value>) -> Value {
        json!({"resourceType": "Parameters", "parameter": operations})
    }

    #[test]
    fn members_are_added_deleted_replaced_and_moved() {
        let group = json!({"resourceType": "Group", "id": "g", "type": "person", "actual": true, "member": [
            {"entity": {"reference": "Patient/a"}},
        ]});
        let add = operation(json!([
            {"name": "type", "valueCode": "add"},
            {"name": "path", "valueString": "Group"},
            {"name": "name", "valueString": "member"},
            {"name": "value", "part": [
                {"name": "entity", "valueReference": {"reference": "Patient/b"}},
                {"name": "period", "valuePeriod": {"start": "2026-01-01"}},
            ]},
        ]));
        let patched = apply_fhirpath_patch(&group, &patch(vec![add.clone()])).expect("add");
        assert_eq!(patched["member"][1]["entity"]["reference"], "Patient/b");
        assert_eq!(patched["member"][1]["period"]["start"], "2026-01-01");

        let delete = operation(json!([
            {"name": "type", "valueCode": "delete"},
            {"name": "path", "valueString": "Group.member.where(entity.reference = 'Patient/a')"},
        ]));
        let rename = operation(json!([
            {"name": "type", "valueCode": "replace"},
            {"name": "path", "valueString": "Group.actual"},
            {"name": "value", "valueBoolean": false},
        ]));
        let patched = apply_fhirpath_patch(&group, &patch(vec![add.clone(), delete, rename])).expect("three");
        assert_eq!(patched["member"].as_array().map(Vec::len), Some(1));
        assert_eq!(patched["actual"], false);

        let moved = operation(json!([
            {"name": "type", "valueCode": "move"},
            {"name": "path", "valueString": "Group.member"},
            {"name": "source", "valueInteger": 1},
            {"name": "destination", "valueInteger": 0},
        ]));
        let patched = apply_fhirpath_patch(&group, &patch(vec![add, moved])).expect("move");
        assert_eq!(patched["member"][0]["entity"]["reference"], "Patient/b");

        // Deleting the last member removes the list; a name given twice is refused.
        let delete_all = operation(json!([
            {"name": "type", "valueCode": "delete"},
            {"name": "path", "valueString": "Group.member[0]"},
        ]));
        let emptied = apply_fhirpath_patch(&group, &patch(vec![delete_all])).expect("delete");
        assert!(emptied.get("member").is_none());
        let twice = operation(json!([
            {"name": "type", "valueCode": "add"},
            {"name": "path", "valueString": "Group"},
            {"name": "name", "valueString": "type"},
            {"name": "value", "valueCode": "device"},
        ]));
        assert!(matches!(
            apply_fhirpath_patch(&group, &patch(vec![twice])),
            Err(PatchError::NotApplicable(_))
        ));
        let unknown =
            operation(json!([{"name": "type", "valueCode": "upsert"}, {"name": "path", "valueString": "Group"}]));
        assert!(matches!(
            apply_fhirpath_patch(&group, &patch(vec![unknown])),
            Err(PatchError::Invalid(_))
        ));
    }
}
