//! Evaluating a ViewDefinition over resources: the row semantics of the
//! SQL-on-FHIR processing model (cross-joined selections, forEach /
//! forEachOrNull / repeat iteration, unionAll, `%rowIndex`).

use std::collections::HashMap;

use serde_json::Value as Json;

use super::ViewError;
use super::model::{Column, Iteration, Select, ViewDefinition, all_columns};
use crate::fhir::model::FhirModel;
use crate::fhirpath::temporal::{DateTimeValue, TimeValue};
use crate::fhirpath::value::{Node, parse_decimal};
use crate::fhirpath::{Collection, FhirPath, Value};
use crate::json::JsonValue;

/// One output value (FHIR lexical forms kept: decimals and dates as text).
#[derive(Debug, Clone, PartialEq)]
pub enum CellValue {
    /// boolean
    Bool(bool),
    /// integer types
    Int(i64),
    /// decimal, as written (`1.0` stays `1.0`)
    Decimal(String),
    /// every other primitive (and JSON text of complex values)
    Str(String),
}

/// One cell of a row.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    /// No value.
    Null,
    /// One value.
    One(CellValue),
    /// A `collection: true` column (possibly empty).
    Many(Vec<CellValue>),
}

/// A row: one cell per view column, in column order.
pub type Row = Vec<Cell>;

/// A cell before conversion: the FHIRPath values themselves, borrowing the
/// resource's strings (rows are built per resource, then copied once into
/// Arrow builders or into [`Cell`]s).
#[derive(Debug, Clone)]
pub enum RawCell<'a> {
    /// No value.
    Null,
    /// One value.
    One(Value<'a>),
    /// A `collection: true` column (possibly empty).
    Many(Collection<'a>),
}

impl RawCell<'_> {
    /// The owned cell.
    pub fn to_cell(&self) -> Cell {
        match self {
            RawCell::Null => Cell::Null,
            RawCell::One(v) => Cell::One(cell_value(v)),
            RawCell::Many(values) => Cell::Many(values.iter().map(cell_value).collect()),
        }
    }
}

/// A row of [`RawCell`]s, in column order.
pub type RawRow<'a> = Vec<RawCell<'a>>;

type Partial<'a> = Vec<(usize, RawCell<'a>)>;

/// The variables a view's paths see: its constants and `%rowIndex`. Kept
/// by the caller across resources (their values never borrow a resource).
#[derive(Debug, Clone)]
pub struct ViewVariables(HashMap<String, Collection<'static>>);

impl ViewVariables {
    fn set_row_index(&mut self, index: usize) {
        let value = Value::Integer(index as i64);
        match self.0.get_mut("rowIndex") {
            Some(slot) if slot.len() == 1 => slot[0] = value,
            Some(slot) => *slot = vec![value],
            None => {
                self.0.insert("rowIndex".into(), vec![value]);
            }
        }
    }

    fn row_index(&self) -> Option<Value<'static>> {
        self.0.get("rowIndex").and_then(|v| v.first()).cloned()
    }

    fn restore_row_index(&mut self, value: Option<Value<'static>>) {
        if let (Some(value), Some(slot)) = (value, self.0.get_mut("rowIndex")) {
            slot.clear();
            slot.push(value);
        }
    }
}

/// Converts one FHIRPath item to an output value.
pub fn cell_value(value: &Value<'_>) -> CellValue {
    match value {
        Value::Node(Node { json, fhir_type, .. }) => match json {
            JsonValue::Bool(b) => CellValue::Bool(*b),
            JsonValue::Number(n) => {
                let integer = matches!(fhir_type, Some("integer" | "positiveInt" | "unsignedInt" | "integer64"))
                    || (fhir_type.is_none() && !n.contains(['.', 'e', 'E']));
                match n.parse::<i64>() {
                    Ok(i) if integer => CellValue::Int(i),
                    _ => CellValue::Decimal(n.to_string()),
                }
            }
            JsonValue::String(s) => CellValue::Str(s.to_string()),
            other => CellValue::Str(other.to_json_string()),
        },
        Value::Boolean(b) => CellValue::Bool(*b),
        Value::Integer(i) => CellValue::Int(*i),
        Value::Decimal(d) => CellValue::Decimal(d.to_string()),
        Value::String(s) => CellValue::Str(s.clone()),
        Value::Date(d) | Value::DateTime(d) => CellValue::Str(d.format()),
        Value::Time(t) => CellValue::Str(t.format()),
        Value::Quantity(q) => CellValue::Str(format!("{} '{}'", q.value, q.unit)),
        Value::ReferenceTarget { resource_type, id } => CellValue::Str(format!("{resource_type}/{id}")),
        Value::TypeInfo { namespace, name } => CellValue::Str(format!("{namespace}.{name}")),
    }
}

/// The FHIRPath value of a constant's `value[x]`.
fn constant_value(fhir_type: &str, json: &Json) -> Option<Value<'static>> {
    Some(match (fhir_type, json) {
        ("boolean", Json::Bool(b)) => Value::Boolean(*b),
        ("integer" | "positiveInt" | "unsignedInt" | "integer64", Json::Number(n)) => Value::Integer(n.as_i64()?),
        ("integer64", Json::String(s)) => Value::Integer(s.parse().ok()?),
        ("decimal", Json::Number(n)) => Value::Decimal(parse_decimal(&n.to_string())?),
        ("date", Json::String(s)) => Value::Date(DateTimeValue::parse(s)?),
        ("dateTime" | "instant", Json::String(s)) => Value::DateTime(DateTimeValue::parse(s)?),
        ("time", Json::String(s)) => Value::Time(TimeValue::parse(s)?),
        (_, Json::String(s)) => Value::String(s.clone()),
        _ => return None,
    })
}

/// A ViewDefinition ready to run: constants typed once.
pub struct ViewRunner<'v> {
    view: &'v ViewDefinition,
    constants: Vec<(String, Value<'static>)>,
    /// Whether a path reads `%rowIndex`: if none does, it is not kept up to
    /// date (three hash look-ups per resource and focus otherwise).
    row_index: bool,
}

/// Whether `path` mentions `%rowIndex` (by its text: a false positive only
/// costs the bookkeeping).
fn mentions_row_index(path: &FhirPath) -> bool {
    path.text().contains("rowIndex")
}

/// Whether a path of `select` or of a selection below it mentions
/// `%rowIndex`.
fn reads_row_index(select: &Select) -> bool {
    select.columns.iter().any(|c| mentions_row_index(&c.path))
        || match &select.iteration {
            Some(Iteration::ForEach(p) | Iteration::ForEachOrNull(p)) => mentions_row_index(p),
            Some(Iteration::Repeat(paths)) => paths.iter().any(mentions_row_index),
            None => false,
        }
        || select.selects.iter().any(reads_row_index)
        || select.union_all.iter().any(reads_row_index)
}

impl<'v> ViewRunner<'v> {
    /// Prepares `view`; a constant whose value does not fit its type is an error.
    pub fn new(view: &'v ViewDefinition) -> Result<Self, ViewError> {
        let mut constants = Vec::new();
        for (name, t, value) in &view.constants {
            let v = constant_value(t, value)
                .ok_or_else(|| ViewError::invalid(&format!("constant {name}"), &format!("value is not a valid {t}")))?;
            constants.push((name.clone(), v));
        }
        let row_index = view.select.iter().any(reads_row_index) || view.where_paths.iter().any(mentions_row_index);
        Ok(Self {
            view,
            constants,
            row_index,
        })
    }

    /// The view being run.
    pub fn view(&self) -> &ViewDefinition {
        self.view
    }

    /// The variables of this view (constants, `%rowIndex`), for [`ViewRunner::raw_rows`].
    pub fn variables(&self) -> ViewVariables {
        let mut vars = HashMap::new();
        for (name, value) in &self.constants {
            vars.insert(name.clone(), vec![value.clone()]);
        }
        vars.insert("rowIndex".into(), vec![Value::Integer(0)]);
        ViewVariables(vars)
    }

    /// The rows `resource` yields (none if it is of another type or filtered out).
    pub fn rows(&self, resource: &JsonValue<'_>) -> Result<Vec<Row>, ViewError> {
        let mut vars = self.variables();
        Ok(self
            .raw_rows(resource, &mut vars)?
            .iter()
            .map(|row| row.iter().map(RawCell::to_cell).collect())
            .collect())
    }

    /// Like [`ViewRunner::rows`], with the values still borrowing `resource`;
    /// `vars` from [`ViewRunner::variables`] of this runner.
    pub fn raw_rows<'a>(
        &self,
        resource: &'a JsonValue<'a>,
        vars: &mut ViewVariables,
    ) -> Result<Vec<RawRow<'a>>, ViewError> {
        if resource.get("resourceType").and_then(JsonValue::as_str) != Some(self.view.resource.as_str()) {
            return Ok(Vec::new());
        }
        let model = FhirModel::r4().map_err(|e| ViewError::invalid("model", &e.to_string()))?;
        let root = [Value::resource(resource, model)];
        if self.row_index {
            vars.set_row_index(0);
        }
        let mut result = Vec::new();
        for path in &self.view.where_paths {
            result.clear();
            path.evaluate_into(&root[0], &root, &vars.0, &mut result)
                .map_err(|source| ViewError::Path {
                    at: "where".into(),
                    source,
                })?;
            let keep = match result.as_slice() {
                [] => false,
                [v] => match v.to_system() {
                    Value::Boolean(b) => b,
                    other => {
                        return Err(ViewError::NotBoolean {
                            path: path.text().to_string(),
                            found: other.type_name().to_string(),
                        });
                    }
                },
                many => {
                    return Err(ViewError::NotBoolean {
                        path: path.text().to_string(),
                        found: format!("{} items", many.len()),
                    });
                }
            };
            if !keep {
                return Ok(Vec::new());
            }
        }
        let mut rows: Vec<Partial<'a>> = vec![Vec::new()];
        for select in &self.view.select {
            let part = self.process(select, &root[0], &root, vars)?;
            rows = product(rows, part);
        }
        let n = self.view.columns.len();
        Ok(rows
            .into_iter()
            .map(|partial| {
                let mut row = vec![RawCell::Null; n];
                for (i, cell) in partial {
                    row[i] = cell;
                }
                row
            })
            .collect())
    }

    fn process<'a>(
        &self,
        select: &Select,
        node: &Value<'a>,
        root: &[Value<'a>],
        vars: &mut ViewVariables,
    ) -> Result<Vec<Partial<'a>>, ViewError> {
        let eval = |path: &FhirPath, focus: &Value<'a>, vars: &ViewVariables| {
            let mut out = Vec::new();
            path.evaluate_into(focus, root, &vars.0, &mut out)
                .map_err(|source| ViewError::Path {
                    at: path.text().to_string(),
                    source,
                })?;
            Ok(out)
        };
        let foci: Option<Collection<'a>> = match &select.iteration {
            None => None,
            Some(Iteration::ForEach(p) | Iteration::ForEachOrNull(p)) => Some(eval(p, node, vars)?),
            Some(Iteration::Repeat(paths)) => {
                let mut out = Vec::new();
                repeat(paths, node, &eval, vars, &mut out, 0)?;
                Some(out)
            }
        };
        let saved_index = if self.row_index { vars.row_index() } else { None };
        let mut rows = Vec::new();
        match foci {
            None => rows = self.focus_rows(select, node, root, vars)?,
            Some(foci) if foci.is_empty() => {
                if matches!(select.iteration, Some(Iteration::ForEachOrNull(_))) {
                    // One row of nulls, but %rowIndex columns are 0.
                    let mut row = Partial::new();
                    for c in all_columns(select) {
                        let value = if c.path.text().trim() == "%rowIndex" {
                            RawCell::One(Value::Integer(0))
                        } else {
                            null_cell(&c)
                        };
                        row.push((c.index, value));
                    }
                    rows.push(row);
                }
            }
            Some(foci) => {
                for (i, focus) in foci.iter().enumerate() {
                    if self.row_index {
                        vars.set_row_index(i);
                    }
                    rows.extend(self.focus_rows(select, focus, root, vars)?);
                }
            }
        }
        vars.restore_row_index(saved_index);
        Ok(rows)
    }

    fn focus_rows<'a>(
        &self,
        select: &Select,
        focus: &Value<'a>,
        root: &[Value<'a>],
        vars: &mut ViewVariables,
    ) -> Result<Vec<Partial<'a>>, ViewError> {
        let mut own = Partial::with_capacity(select.columns.len());
        // One buffer for every column's result (a single value is moved out).
        let mut result = Vec::new();
        for column in &select.columns {
            result.clear();
            column
                .path
                .evaluate_into(focus, root, &vars.0, &mut result)
                .map_err(|source| ViewError::Path {
                    at: format!("column {}", column.name),
                    source,
                })?;
            own.push((column.index, column_cell(column, &mut result)?));
        }
        let mut rows = vec![own];
        for nested in &select.selects {
            let part = self.process(nested, focus, root, vars)?;
            rows = product(rows, part);
        }
        if !select.union_all.is_empty() {
            let mut union = Vec::new();
            for branch in &select.union_all {
                union.extend(self.process(branch, focus, root, vars)?);
            }
            rows = product(rows, union);
        }
        Ok(rows)
    }
}

fn null_cell<'a>(column: &Column) -> RawCell<'a> {
    if column.collection {
        RawCell::Many(Vec::new())
    } else {
        RawCell::Null
    }
}

fn column_cell<'a>(column: &Column, result: &mut Collection<'a>) -> Result<RawCell<'a>, ViewError> {
    if column.collection {
        return Ok(RawCell::Many(std::mem::take(result)));
    }
    if result.len() > 1 {
        return Err(ViewError::MultipleValues {
            column: column.name.clone(),
            path: column.path.text().to_string(),
            count: result.len(),
        });
    }
    Ok(result.pop().map_or(RawCell::Null, RawCell::One))
}

type EvalFn<'e, 'a> = dyn Fn(&FhirPath, &Value<'a>, &ViewVariables) -> Result<Collection<'a>, ViewError> + 'e;

fn repeat<'a>(
    paths: &[FhirPath],
    node: &Value<'a>,
    eval: &EvalFn<'_, 'a>,
    vars: &ViewVariables,
    out: &mut Collection<'a>,
    depth: usize,
) -> Result<(), ViewError> {
    if depth > 64 {
        return Err(ViewError::invalid("repeat", "nesting deeper than 64 levels"));
    }
    for path in paths {
        for child in eval(path, node, vars)? {
            out.push(child.clone());
            repeat(paths, &child, eval, vars, out, depth + 1)?;
        }
    }
    Ok(())
}

fn product<'a>(mut left: Vec<Partial<'a>>, mut right: Vec<Partial<'a>>) -> Vec<Partial<'a>> {
    // The common shapes avoid copying: one side a single row.
    if left.len() == 1 && left[0].is_empty() {
        return right;
    }
    if right.len() == 1 {
        let r = right.pop().unwrap_or_default();
        for l in &mut left {
            l.extend(r.iter().cloned());
        }
        return left;
    }
    let mut out = Vec::with_capacity(left.len() * right.len());
    for l in &left {
        for r in &right {
            let mut row = l.clone();
            row.extend(r.iter().cloned());
            out.push(row);
        }
    }
    out
}
