//! Flat views (see [`super::run`]'s `is_flat`) read straight into typed
//! rows: a column whose path is a [`DirectPath`] on its focus type (member
//! chains, `first()`, `ofType()`, `getResourceKey()`,
//! `getReferenceKey(T)`, `exists()`, `count()`: every column of the shipped
//! views) reads the resource's JSON and converts what it finds to its
//! Arrow type at once. No FHIRPath collection, cell or computed key string
//! is built on the way. Other columns, and any column whose data needs the
//! general evaluator (a primitive's `_name` companion), go through it: the
//! rows are the same either way (tested against the general model).

use datafusion::arrow::datatypes::{DataType, Field};

use super::ViewError;
use super::arrow::{Typed, typed_cell, typed_node, typed_str};
use super::model::{Column, Iteration, ViewDefinition};
use super::run::{CellValue, ViewRunner, ViewVariables, column_value};
use crate::fhir::model::FhirModel;
use crate::fhirpath::{DirectPath, DirectValue, Value};
use crate::json::JsonValue;

/// How a flat view reads each of its columns.
pub(super) struct FlatPlan {
    /// The view's resource type, as the model names it (`None`: not a type
    /// the model knows, so every column takes the general evaluator).
    root_type: Option<&'static str>,
    /// Per view column, by index.
    reads: Vec<ColumnRead>,
}

/// How one column is read.
enum ColumnRead {
    /// Straight from the JSON of foci of this type and children owner.
    Direct {
        path: DirectPath,
        fhir_type: &'static str,
        owner: &'static str,
    },
    /// By the general evaluator.
    General,
}

impl FlatPlan {
    /// The plan of `view` (a flat view).
    pub(super) fn new(view: &ViewDefinition) -> Self {
        let root_type = FhirModel::r4().ok().and_then(|m| m.type_name(&view.resource));
        let mut reads: Vec<ColumnRead> = view.columns.iter().map(|_| ColumnRead::General).collect();
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
                    if let Some(path) = column.path.direct(fhir_type, owner) {
                        reads[column.index] = ColumnRead::Direct { path, fhir_type, owner };
                    }
                }
            }
        }
        Self { root_type, reads }
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
            if let Some(cell) = self.direct_cell(column, field, focus)? {
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
    ) -> Result<Option<Typed<'a>>, ViewError> {
        let ColumnRead::Direct { path, fhir_type, owner } = &self.reads[column.index] else {
            return Ok(None);
        };
        let Value::Node(node) = focus else {
            return Ok(None);
        };
        let same = |a: Option<&'static str>, b: &'static str| a.is_some_and(|a| std::ptr::eq(a, b) || a == b);
        if node.primitive_element.is_some() || !same(node.fhir_type, fhir_type) || !same(node.children_owner, owner) {
            return Ok(None);
        }
        if let DataType::List(item) = field.data_type() {
            let mut values = Vec::new();
            if !path.for_each(*node, |v| values.push(v)) {
                return Ok(None);
            }
            let items = values
                .into_iter()
                .map(|v| direct_typed(item.data_type(), v, &column.name))
                .collect::<Result<_, _>>()?;
            return Ok(Some(Typed::List(Some(items))));
        }
        let (mut first, mut count) = (None, 0usize);
        let complete = path.for_each(*node, |v| {
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
