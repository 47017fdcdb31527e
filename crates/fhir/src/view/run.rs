//! Evaluating a ViewDefinition over resources: the row semantics of the
//! SQL-on-FHIR processing model (cross-joined selections, forEach /
//! forEachOrNull / repeat iteration, unionAll, `%rowIndex`).

use std::collections::HashMap;

use serde_json::Value as Json;

use arrow::datatypes::SchemaRef;

use super::ViewError;
use super::arrow::{Typed, typed_cells, view_schema};
use super::flat::FlatPlan;
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
    /// Whether the view is flat (see [`is_flat`]): its rows are then built
    /// in place by [`ViewRunner::flat_rows`].
    flat: bool,
    /// For a flat view, how [`ViewRunner::typed_rows_into`] reads each
    /// column.
    plan: Option<FlatPlan>,
    /// The Arrow schema of its rows.
    schema: SchemaRef,
}

/// Most iterating selections a flat view may have (their fragments are
/// tracked in a fixed array).
const FLAT_ITERATIONS: usize = 8;

/// Whether `view` is flat: every root selection has only columns (no
/// nested `select`, no `unionAll`), at most [`FLAT_ITERATIONS`] of them
/// iterate, and no path reads `%rowIndex`. Every shipped view is. Its rows
/// are then the product of each selection's rows, which
/// [`ViewRunner::flat_rows`] writes straight into one buffer instead of
/// assembling partial rows.
fn is_flat(view: &ViewDefinition, row_index: bool) -> bool {
    !row_index
        && view
            .select
            .iter()
            .all(|s| s.selects.is_empty() && s.union_all.is_empty())
        && view.select.iter().filter(|s| s.iteration.is_some()).count() <= FLAT_ITERATIONS
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
        let flat = is_flat(view, row_index);
        Ok(Self {
            view,
            constants,
            row_index,
            flat,
            plan: flat.then(|| FlatPlan::new(view)),
            schema: view_schema(view),
        })
    }

    /// The view being run.
    pub fn view(&self) -> &ViewDefinition {
        self.view
    }

    /// The Arrow schema of the view's rows ([`view_schema`]).
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// How many columns of a flat view are read straight from the JSON
    /// (none for other views).
    pub fn direct_columns(&self) -> usize {
        self.plan.as_ref().map_or(0, FlatPlan::direct_columns)
    }

    /// Appends the rows `resource` yields to `out` converted to the view's
    /// column types ([`ViewRunner::schema`]), row-major as
    /// [`ViewRunner::rows_into`] orders them; returns how many rows. Flat
    /// views read their columns straight from the JSON where they can (see
    /// `flat`). On an error, `out` may hold part of the rows.
    pub fn typed_rows_into<'a>(
        &self,
        resource: &'a JsonValue<'a>,
        vars: &mut ViewVariables,
        out: &mut Vec<Typed<'a>>,
    ) -> Result<usize, ViewError> {
        if let Some(plan) = &self.plan {
            return plan.rows(self, resource, vars, out);
        }
        let mut cells = Vec::new();
        let rows = self.rows_into(resource, vars, &mut cells)?;
        typed_cells(&self.schema, &cells, out)?;
        Ok(rows)
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
        let Some(root) = self.root(resource, vars)? else {
            return Ok(Vec::new());
        };
        if self.flat {
            let mut cells = Vec::new();
            let rows = self.raw_flat_rows(&root, vars, &mut cells)?;
            let n = self.view.columns.len();
            let mut cells = cells.into_iter();
            return Ok((0..rows).map(|_| cells.by_ref().take(n).collect()).collect());
        }
        self.general_rows(&root, vars)
    }

    /// Appends the rows `resource` yields to `out`, row-major (one cell per
    /// view column, in column order, row after row); returns how many rows.
    /// `vars` from [`ViewRunner::variables`] of this runner. On an error,
    /// `out` may hold part of the rows.
    pub fn rows_into<'a>(
        &self,
        resource: &'a JsonValue<'a>,
        vars: &mut ViewVariables,
        out: &mut Vec<RawCell<'a>>,
    ) -> Result<usize, ViewError> {
        let Some(root) = self.root(resource, vars)? else {
            return Ok(0);
        };
        if self.flat {
            return self.raw_flat_rows(&root, vars, out);
        }
        let rows = self.general_rows(&root, vars)?;
        let count = rows.len();
        out.extend(rows.into_iter().flatten());
        Ok(count)
    }

    /// The root value of `resource`, or `None` when the view does not
    /// apply (another type, or a `where` filter is false).
    pub(super) fn root<'a>(
        &self,
        resource: &'a JsonValue<'a>,
        vars: &mut ViewVariables,
    ) -> Result<Option<[Value<'a>; 1]>, ViewError> {
        if resource.get("resourceType").and_then(JsonValue::as_str) != Some(self.view.resource.as_str()) {
            return Ok(None);
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
                return Ok(None);
            }
        }
        Ok(Some(root))
    }

    /// Rows by the general processing model: each selection's partial rows,
    /// cross-joined.
    fn general_rows<'a>(&self, root: &[Value<'a>; 1], vars: &mut ViewVariables) -> Result<Vec<RawRow<'a>>, ViewError> {
        let mut rows: Vec<Partial<'a>> = vec![Vec::new()];
        for select in &self.view.select {
            let part = self.process(select, &root[0], root, vars)?;
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

    /// [`ViewRunner::flat_rows`] with cells of FHIRPath values.
    fn raw_flat_rows<'a>(
        &self,
        root: &[Value<'a>; 1],
        vars: &ViewVariables,
        out: &mut Vec<RawCell<'a>>,
    ) -> Result<usize, ViewError> {
        let mut result = Vec::new();
        self.flat_rows(root, vars, out, RawCell::Null, null_cell, |column, focus| {
            column_value(column, focus, root, vars, &mut result)
        })
    }

    /// The rows of a flat view (see [`is_flat`]), appended to `out` as in
    /// [`ViewRunner::rows_into`], with cells of any form: `cell` makes a
    /// column's cell on a focus, `null` the cell of a `forEachOrNull`
    /// without foci, `empty` fills slots about to be written. A selection
    /// without iteration yields one fragment, written straight into a row
    /// template at `out`'s end; an iterating one yields a fragment (its
    /// columns) per focus, written after the template. Rows are the product
    /// of the fragments, the first selection outermost (as the general
    /// model orders them); the common case of one fragment each moves the
    /// cells into the template.
    pub(super) fn flat_rows<'a, T: Clone>(
        &self,
        root: &[Value<'a>; 1],
        vars: &ViewVariables,
        out: &mut Vec<T>,
        empty: T,
        null: impl Fn(&Column) -> T,
        mut cell: impl FnMut(&Column, &Value<'a>) -> Result<T, ViewError>,
    ) -> Result<usize, ViewError> {
        let n = self.view.columns.len();
        let base = out.len();
        out.resize(base + n, empty.clone());
        // (selection, first cell of its fragments, number of fragments)
        let mut iterating = [(0usize, 0usize, 0usize); FLAT_ITERATIONS];
        let mut iterations = 0;
        let mut foci = Vec::new();
        for (si, select) in self.view.select.iter().enumerate() {
            let Some(iteration) = &select.iteration else {
                for column in &select.columns {
                    out[base + column.index] = cell(column, &root[0])?;
                }
                continue;
            };
            foci.clear();
            iteration_foci(iteration, &root[0], root, vars, &mut foci)?;
            let start = out.len();
            let fragments = if foci.is_empty() {
                if matches!(iteration, Iteration::ForEachOrNull(_)) {
                    out.extend(select.columns.iter().map(&null));
                    1
                } else {
                    0
                }
            } else {
                for focus in &foci {
                    for column in &select.columns {
                        out.push(cell(column, focus)?);
                    }
                }
                foci.len()
            };
            iterating[iterations] = (si, start, fragments);
            iterations += 1;
        }
        let iterating = &iterating[..iterations];
        let fragments_end = out.len();
        let mut total = 1usize;
        for &(_, _, k) in iterating {
            total = total.saturating_mul(k);
        }
        if total == 1 {
            for &(si, start, _) in iterating {
                for (j, column) in self.view.select[si].columns.iter().enumerate() {
                    out[base + column.index] = std::mem::replace(&mut out[start + j], empty.clone());
                }
            }
            out.truncate(base + n);
            return Ok(1);
        }
        for row in 0..total {
            // The last selection varies fastest.
            let mut rest = row;
            for &(si, start, k) in iterating.iter().rev() {
                let fragment = rest % k;
                rest /= k;
                let columns = &self.view.select[si].columns;
                for (j, column) in columns.iter().enumerate() {
                    let cell = out[start + fragment * columns.len() + j].clone();
                    out[base + column.index] = cell;
                }
            }
            out.extend_from_within(base..base + n);
        }
        out.drain(base..fragments_end);
        Ok(total)
    }

    fn process<'a>(
        &self,
        select: &Select,
        node: &Value<'a>,
        root: &[Value<'a>],
        vars: &mut ViewVariables,
    ) -> Result<Vec<Partial<'a>>, ViewError> {
        let foci: Option<Collection<'a>> = match &select.iteration {
            None => None,
            Some(iteration) => {
                let mut out = Vec::new();
                iteration_foci(iteration, node, root, vars, &mut out)?;
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
            own.push((column.index, column_value(column, focus, root, vars, &mut result)?));
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

/// `column`'s cell on `focus`; `result` is a scratch buffer (a single
/// value is moved out of it).
pub(super) fn column_value<'a>(
    column: &Column,
    focus: &Value<'a>,
    root: &[Value<'a>],
    vars: &ViewVariables,
    result: &mut Collection<'a>,
) -> Result<RawCell<'a>, ViewError> {
    result.clear();
    evaluate(&column.path, focus, root, vars, result, || {
        format!("column {}", column.name)
    })?;
    column_cell(column, result)
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

/// Appends what `path` yields on `focus` to `out`; an error says where
/// (`at`: the column, or the path itself).
fn evaluate<'a>(
    path: &FhirPath,
    focus: &Value<'a>,
    root: &[Value<'a>],
    vars: &ViewVariables,
    out: &mut Collection<'a>,
    at: impl FnOnce() -> String,
) -> Result<(), ViewError> {
    path.evaluate_into(focus, root, &vars.0, out)
        .map_err(|source| ViewError::Path { at: at(), source })
}

/// Appends the foci `iteration` yields on `node` to `out`.
fn iteration_foci<'a>(
    iteration: &Iteration,
    node: &Value<'a>,
    root: &[Value<'a>],
    vars: &ViewVariables,
    out: &mut Collection<'a>,
) -> Result<(), ViewError> {
    match iteration {
        Iteration::ForEach(p) | Iteration::ForEachOrNull(p) => {
            evaluate(p, node, root, vars, out, || p.text().to_string())
        }
        Iteration::Repeat(paths) => repeat(paths, node, root, vars, out, 0),
    }
}

fn repeat<'a>(
    paths: &[FhirPath],
    node: &Value<'a>,
    root: &[Value<'a>],
    vars: &ViewVariables,
    out: &mut Collection<'a>,
    depth: usize,
) -> Result<(), ViewError> {
    if depth > 64 {
        return Err(ViewError::invalid("repeat", "nesting deeper than 64 levels"));
    }
    for path in paths {
        let mut children = Vec::new();
        evaluate(path, node, root, vars, &mut children, || path.text().to_string())?;
        for child in children {
            out.push(child.clone());
            repeat(paths, &child, root, vars, out, depth + 1)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Flat views (built in place) yield exactly the rows, in the order, of
    /// the general processing model: products of several iterations, empty
    /// `forEach` and `forEachOrNull`, collections, `where`.
    #[test]
    fn flat_rows_agree_with_the_general_model() {
        let views = [
            r#"{"resource":"Patient","select":[
                {"column":[{"name":"id","path":"getResourceKey()"}]},
                {"forEach":"name","column":[{"name":"family","path":"family"},{"name":"given","path":"given","collection":true}]},
                {"forEachOrNull":"address","column":[{"name":"city","path":"city"}]},
                {"forEach":"telecom","column":[{"name":"phone","path":"value"}]}]}"#,
            r#"{"resource":"Patient","select":[
                {"forEachOrNull":"address","column":[{"name":"city","path":"city"}]},
                {"column":[{"name":"id","path":"id"},{"name":"gender","path":"gender"}]},
                {"forEachOrNull":"name.given","column":[{"name":"given","path":"$this"}]}]}"#,
            r#"{"resource":"Patient","where":[{"path":"gender = 'female'"}],"select":[
                {"column":[{"name":"id","path":"id"}]}]}"#,
        ];
        let resources = [
            r#"{"resourceType":"Patient","id":"a","gender":"female","name":[{"family":"F","given":["x","y"]},{"given":["z"]}],
                "address":[{"city":"C1"},{"city":"C2"},{}],"telecom":[{"value":"1"},{"value":"2"}]}"#,
            r#"{"resourceType":"Patient","id":"b","gender":"male","name":[{"family":"G"}]}"#,
            r#"{"resourceType":"Patient","id":"c","telecom":[{"value":"3"}]}"#,
            r#"{"resourceType":"Observation","id":"o"}"#,
        ];
        let mut compared = 0;
        for text in views {
            let json: Json = serde_json::from_str(text).unwrap();
            let view = ViewDefinition::from_json(&json).unwrap();
            let runner = ViewRunner::new(&view).unwrap();
            assert!(runner.flat, "{text}");
            for resource in resources {
                let resource = crate::json::parse(resource).unwrap();
                let mut vars = runner.variables();
                let Some(root) = runner.root(&resource, &mut vars).unwrap() else {
                    continue;
                };
                let general = runner.general_rows(&root, &mut vars).unwrap();
                let mut cells = vec![RawCell::One(Value::Integer(42))];
                let rows = runner.raw_flat_rows(&root, &vars, &mut cells).unwrap();
                assert_eq!(rows, general.len());
                // What was in the buffer before stays.
                assert!(matches!(cells[0], RawCell::One(Value::Integer(42))));
                assert_eq!(cells.len(), 1 + rows * view.columns.len());
                let flat: Vec<Vec<Cell>> = cells[1..]
                    .chunks(view.columns.len())
                    .map(|row| row.iter().map(RawCell::to_cell).collect())
                    .collect();
                let general: Vec<Vec<Cell>> = general
                    .iter()
                    .map(|row| row.iter().map(RawCell::to_cell).collect())
                    .collect();
                assert_eq!(flat, general, "{text}");
                compared += rows;
            }
        }
        // Patients a, b, c: 2×3×2, 0 (no telecom), 0 (no name) rows of the
        // first view; 3×1×3, 1, 1 of the second; 1 (a) of the third.
        assert_eq!(compared, 12 + 11 + 1);
    }
}
