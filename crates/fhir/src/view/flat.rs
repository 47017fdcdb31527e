//! Flat views (see [`super::run`]'s `is_flat`) read straight into typed
//! rows: a column whose path is a [`DirectPath`] on its focus type (member
//! chains, `first()`, `ofType()`, `getResourceKey()`,
//! `getReferenceKey(T)`, `exists()`, `count()`: every column of the shipped
//! views) reads the resource's JSON and converts what it finds to its
//! Arrow type at once. No FHIRPath collection, cell or computed key string
//! is built on the way. Other columns, and any column whose data needs the
//! general evaluator (a primitive's `_name` companion), go through it: the
//! rows are the same either way (tested against the general model).

use arrow::datatypes::{DataType, Field};

use super::ViewError;
use super::arrow::{Typed, typed_cell, typed_node, typed_str};
use super::model::{Column, Iteration, ViewDefinition};
use super::run::{CellValue, ViewRunner, ViewVariables, column_value};
use crate::fhir::model::FhirModel;
use crate::fhirpath::{DirectPath, DirectValue, Value};
use crate::json::JsonValue;

/// Most distinct root members a plan finds in its one pass over a
/// resource's members.
const ROOT_MEMBERS: usize = 16;

/// How a flat view reads each of its columns.
pub(super) struct FlatPlan {
    /// The view's resource type, as the model names it (`None`: not a type
    /// the model knows, so every column takes the general evaluator).
    root_type: Option<&'static str>,
    /// Per view column, by index.
    reads: Vec<ColumnRead>,
    /// The members of the resource that root columns start with
    /// (`subject`, `period`): found in one pass over the resource's members
    /// instead of a scan per column.
    root_members: Vec<Box<str>>,
}

/// How one column is read.
enum ColumnRead {
    /// Straight from the JSON of foci of this type and children owner.
    Direct {
        path: DirectPath,
        fhir_type: &'static str,
        owner: &'static str,
        /// For a root column starting with a member: its index in
        /// `root_members`.
        member: Option<usize>,
    },
    /// By the general evaluator.
    General,
}

/// What the pass over a resource's members found.
struct RootMembers<'a> {
    /// The value of each of the plan's root members, if present.
    values: [Option<&'a JsonValue<'a>>; ROOT_MEMBERS],
    /// Bit `k`: the resource has the `_name` companion of member `k` (its
    /// columns then take the general evaluator, which pairs them).
    companions: u32,
}

impl FlatPlan {
    /// The plan of `view` (a flat view).
    pub(super) fn new(view: &ViewDefinition) -> Self {
        let root_type = FhirModel::r4().ok().and_then(|m| m.type_name(&view.resource));
        let mut reads: Vec<ColumnRead> = view.columns.iter().map(|_| ColumnRead::General).collect();
        let mut root_members: Vec<Box<str>> = Vec::new();
        if let Some(root) = root_type {
            for select in &view.select {
                // The static type of the selection's foci: the resource, or
                // what its iteration path yields.
                let focus = match &select.iteration {
                    None => Some((root, root)),
                    Some(Iteration::ForEach(p) | Iteration::ForEachOrNull(p)) => p.result_type(root, root),
                    Some(Iteration::Repeat(_)) => None,
                };
                let Some((fhir_type, owner)) = focus else { continue };
                for column in &select.columns {
                    let Some(path) = column.path.direct(fhir_type, owner) else {
                        continue;
                    };
                    let member = match path.first_member() {
                        Some(name) if select.iteration.is_none() => {
                            match root_members.iter().position(|m| **m == *name) {
                                Some(k) => Some(k),
                                None if root_members.len() < ROOT_MEMBERS => {
                                    root_members.push(name.into());
                                    Some(root_members.len() - 1)
                                }
                                None => None,
                            }
                        }
                        _ => None,
                    };
                    reads[column.index] = ColumnRead::Direct {
                        path,
                        fhir_type,
                        owner,
                        member,
                    };
                }
            }
        }
        Self {
            root_type,
            reads,
            root_members,
        }
    }

    /// One pass over `resource`'s members, finding the root members.
    fn root_members<'a>(&self, resource: &'a JsonValue<'a>) -> RootMembers<'a> {
        let mut found = RootMembers {
            values: [None; ROOT_MEMBERS],
            companions: 0,
        };
        if self.root_members.is_empty() {
            return found;
        }
        for (key, value) in resource.as_object().unwrap_or_default() {
            let (name, companion) = match key.strip_prefix('_') {
                Some(name) => (name, true),
                None => (key.as_ref(), false),
            };
            for (k, member) in self.root_members.iter().enumerate() {
                // Length first: most keys differ in it.
                if name.len() == member.len() && name == &**member {
                    if companion {
                        found.companions |= 1 << k;
                    } else {
                        // The last of duplicate keys, as member steps take.
                        found.values[k] = Some(value);
                    }
                }
            }
        }
        found
    }

    /// How many columns are read directly (for tests and logs).
    pub(super) fn direct_columns(&self) -> usize {
        self.reads
            .iter()
            .filter(|r| matches!(r, ColumnRead::Direct { .. }))
            .count()
    }

    /// Appends the typed rows `resource` yields under `runner` (whose plan
    /// this is) to `out`, row-major; returns how many rows.
    pub(super) fn rows<'a>(
        &self,
        runner: &ViewRunner<'_>,
        resource: &'a JsonValue<'a>,
        vars: &mut ViewVariables,
        out: &mut Vec<Typed<'a>>,
    ) -> Result<usize, ViewError> {
        let root = match self.root_type {
            // What `ViewRunner::root` does, without its type look-up.
            Some(t) if runner.view().where_paths.is_empty() => {
                if resource.get("resourceType").and_then(JsonValue::as_str) != Some(t) {
                    return Ok(0);
                }
                [Value::node(resource, Some(t), Some(t))]
            }
            _ => match runner.root(resource, vars)? {
                Some(root) => root,
                None => return Ok(0),
            },
        };
        let fields = runner.schema().fields();
        let members = self.root_members(resource);
        let mut result = Vec::new();
        let null = |column: &Column| {
            if column.collection {
                Typed::List(Some(Vec::new()))
            } else {
                Typed::Null
            }
        };
        runner.flat_rows(&root, vars, out, Typed::Null, null, |column, focus| {
            let field = &fields[column.index];
            if let Some(cell) = self.direct_cell(column, field, focus, &members)? {
                return Ok(cell);
            }
            typed_cell(field, &column_value(column, focus, &root, vars, &mut result)?)
        })
    }

    /// `column`'s cell on `focus` read directly; `None` when the column, the
    /// focus or the data needs the general evaluator.
    fn direct_cell<'a>(
        &self,
        column: &Column,
        field: &Field,
        focus: &Value<'a>,
        members: &RootMembers<'a>,
    ) -> Result<Option<Typed<'a>>, ViewError> {
        let ColumnRead::Direct {
            path,
            fhir_type,
            owner,
            member,
        } = &self.reads[column.index]
        else {
            return Ok(None);
        };
        if member.is_some_and(|k| members.companions & (1 << k) != 0) {
            return Ok(None);
        }
        let Value::Node(node) = focus else {
            return Ok(None);
        };
        let same = |a: Option<&'static str>, b: &'static str| a.is_some_and(|a| std::ptr::eq(a, b) || a == b);
        if node.primitive_element.is_some() || !same(node.fhir_type, fhir_type) || !same(node.children_owner, owner) {
            return Ok(None);
        }
        // A root column starting with a member reads it from the pass.
        let read = |sink: &mut dyn FnMut(DirectValue<'a>)| match member {
            Some(k) => path.for_each_from_member(members.values[*k], sink),
            None => path.for_each(*node, sink),
        };
        if let DataType::List(item) = field.data_type() {
            let mut values = Vec::new();
            if !read(&mut |v| values.push(v)) {
                return Ok(None);
            }
            let items = values
                .into_iter()
                .map(|v| direct_typed(item.data_type(), v, &column.name))
                .collect::<Result<_, _>>()?;
            return Ok(Some(Typed::List(Some(items))));
        }
        let (mut first, mut count) = (None, 0usize);
        let complete = read(&mut |v| {
            count += 1;
            first.get_or_insert(v);
        });
        if !complete {
            return Ok(None);
        }
        match first {
            Some(_) if count > 1 => Err(ViewError::MultipleValues {
                column: column.name.clone(),
                path: column.path.text().to_string(),
                count,
            }),
            Some(v) => direct_typed(field.data_type(), v, &column.name).map(Some),
            None => Ok(Some(Typed::Null)),
        }
    }
}

/// Converts what a direct path yields to type `t`, as the general path
/// converts the same FHIRPath value.
fn direct_typed<'a>(t: &DataType, value: DirectValue<'a>, column: &str) -> Result<Typed<'a>, ViewError> {
    match value {
        DirectValue::Node(node) => typed_node(t, node, column),
        DirectValue::Key(key) => typed_str(t, key, column),
        DirectValue::Boolean(b) => super::arrow::typed_value(t, CellValue::Bool(b), column),
        DirectValue::Integer(i) => super::arrow::typed_value(t, CellValue::Int(i), column),
    }
}

#[cfg(test)]
mod tests {
    use super::super::arrow::typed_cells;
    use super::*;

    /// Typed rows read directly agree with the general model's rows,
    /// converted: root members found in one pass (present, absent,
    /// duplicated, with a `_name` companion), keys, counts, iterations.
    #[test]
    fn direct_rows_agree_with_the_general_model() {
        let view = r#"{"resource":"Patient","select":[
            {"column":[{"name":"id","path":"getResourceKey()"},{"name":"gender","path":"gender"},
                {"name":"birth","path":"birthDate"},{"name":"org","path":"managingOrganization.getReferenceKey(Organization)"},
                {"name":"gp","path":"generalPractitioner.getReferenceKey(Practitioner)","collection":true},
                {"name":"names","path":"name.count()"},{"name":"deceased","path":"deceased.exists()"},
                {"name":"family","path":"name.family.first()"},{"name":"ms","path":"maritalStatus.text"},
                {"name":"org_display","path":"managingOrganization.display"}]},
            {"forEachOrNull":"address","column":[{"name":"city","path":"city"},{"name":"lines","path":"line","collection":true}]}]}"#;
        let resources = [
            r#"{"resourceType":"Patient","id":"a","gender":"female","birthDate":"2000-01-01","managingOrganization":{"reference":"Organization/o"},
                "generalPractitioner":[{"reference":"Practitioner/1"},{"reference":"urn:uuid:2","type":"Practitioner"},{"reference":"Organization/x"}],
                "name":[{"family":"F"},{"family":"G"}],"address":[{"city":"C","line":["1","2"]},{}]}"#,
            r#"{"resourceType":"Patient","id":"b","gender":"male","_gender":{"extension":[{"url":"u","valueString":"x"}]},"deceasedBoolean":false}"#,
            r#"{"resourceType":"Patient","id":"c","gender":"male","gender":"other","managingOrganization":{"reference":"Group/g"}}"#,
            r#"{"resourceType":"Patient","id":"d","_birthDate":{"id":"x"},"maritalStatus":{"text":null},
                "managingOrganization":{"display":"O","_display":{"extension":[{"url":"u","valueString":"x"}]}}}"#,
            r#"{"resourceType":"Patient","id":"e","maritalStatus":[{"text":"M"},{"text":"S"}],"managingOrganization":[{"display":"P"}]}"#,
            r#"{"resourceType":"Patient","id":"f","maritalStatus":{"text":"W","text":"X"},"managingOrganization":{"display":["Q","R"]}}"#,
            r#"{"resourceType":"Observation","id":"o"}"#,
        ];
        let json: serde_json::Value = serde_json::from_str(view).unwrap();
        let view = ViewDefinition::from_json(&json).unwrap();
        let runner = ViewRunner::new(&view).unwrap();
        assert_eq!(runner.direct_columns(), 12, "every column is read directly");
        for text in resources {
            let resource = crate::json::parse(text).unwrap();
            let mut vars = runner.variables();
            let mut cells = Vec::new();
            let general = runner.rows_into(&resource, &mut vars, &mut cells).and_then(|rows| {
                let mut typed = Vec::new();
                typed_cells(runner.schema(), &cells, &mut typed)?;
                Ok((rows, typed))
            });
            let mut typed = Vec::new();
            let direct = runner
                .typed_rows_into(&resource, &mut vars, &mut typed)
                .map(|rows| (rows, typed));
            // Both succeed with the same rows, or both fail with the same error.
            assert_eq!(format!("{direct:?}"), format!("{general:?}"), "{text}");
        }
    }
}

#[cfg(test)]
mod coverage {
    use super::*;

    /// The shipped views are read directly: a path the plan stops covering
    /// would silently take the general evaluator (slower, same rows).
    #[test]
    fn shipped_view_columns_are_read_directly() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../sql/views");
        let (mut direct, mut total) = (0, 0);
        for entry in std::fs::read_dir(dir).unwrap() {
            let json: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(entry.unwrap().path()).unwrap()).unwrap();
            let view = ViewDefinition::from_json(&json).unwrap();
            let runner = ViewRunner::new(&view).unwrap();
            direct += runner.direct_columns();
            total += view.columns.len();
        }
        assert!(total > 50, "{total} columns");
        assert!(direct * 10 >= total * 9, "{direct} of {total} columns read directly");
    }
}
