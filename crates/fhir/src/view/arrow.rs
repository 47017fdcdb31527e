//! View rows → Arrow record batches, with the SQL-on-FHIR type mapping.

use std::borrow::Cow;
use std::sync::Arc;

use arrow::array::{
    ArrayBuilder, ArrayRef, BooleanBuilder, Int32Builder, Int64Builder, ListBuilder, RecordBatch, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use super::ViewError;
use super::model::{Column, ViewDefinition};
use super::run::{Cell, CellValue, RawCell, Row, cell_value};
use crate::fhirpath::Value;
use crate::fhirpath::ast::{BinaryOp, Expr};
use crate::fhirpath::value::Node;
use crate::json::JsonValue;

/// The Arrow type of FHIR `instant`s (and every stored timestamp):
/// microseconds in UTC.
pub fn timestamp_type() -> DataType {
    DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, Some("UTC".into()))
}

const BOOLEAN_FUNCTIONS: [&str; 18] = [
    "exists",
    "empty",
    "not",
    "all",
    "allTrue",
    "anyTrue",
    "allFalse",
    "anyFalse",
    "subsetOf",
    "supersetOf",
    "isDistinct",
    "is",
    "hasValue",
    "startsWith",
    "endsWith",
    "contains",
    "matches",
    "convertsToString",
];

/// The Arrow type of a column value (before `collection` wrapping).
fn scalar_type(column: &Column) -> DataType {
    if let Some(t) = &column.fhir_type {
        return match t.as_str() {
            "boolean" => DataType::Boolean,
            "integer" | "positiveInt" | "unsignedInt" => DataType::Int32,
            "integer64" => DataType::Int64,
            "instant" => timestamp_type(),
            _ => DataType::Utf8,
        };
    }
    // Untyped: infer what the expression's last operation returns.
    match column.path.ast() {
        Expr::Binary(op, _, _)
            if !matches!(
                op,
                BinaryOp::Union
                    | BinaryOp::Add
                    | BinaryOp::Sub
                    | BinaryOp::Mul
                    | BinaryOp::Div
                    | BinaryOp::IntDiv
                    | BinaryOp::Mod
                    | BinaryOp::Concat
            ) =>
        {
            DataType::Boolean
        }
        Expr::Is(..) => DataType::Boolean,
        Expr::Function { name, .. } if BOOLEAN_FUNCTIONS.contains(&name.as_str()) || name.starts_with("convertsTo") => {
            DataType::Boolean
        }
        Expr::Function { name, .. } if matches!(name.as_str(), "count" | "length" | "indexOf") => DataType::Int64,
        Expr::External(name) if name == "rowIndex" => DataType::Int64,
        _ => DataType::Utf8,
    }
}

/// The Arrow schema of a view.
pub fn view_schema(view: &ViewDefinition) -> SchemaRef {
    let fields: Vec<Field> = view
        .columns
        .iter()
        .map(|c| {
            let t = scalar_type(c);
            if c.collection {
                Field::new(&c.name, DataType::List(Arc::new(Field::new_list_field(t, true))), true)
            } else {
                Field::new(&c.name, t, true)
            }
        })
        .collect();
    Arc::new(Schema::new(fields))
}

fn value_error(column: &str, value: &CellValue, t: &DataType) -> ViewError {
    ViewError::ColumnType {
        column: column.to_string(),
        value: format!("{value:?}"),
        expected: t.to_string(),
    }
}

/// A cell converted to its column's Arrow type, ready to append: converting
/// can fail (a value that does not fit the type), appending cannot, so a
/// resource's rows are converted whole before any is appended.
#[derive(Debug, Clone)]
pub enum Typed<'b> {
    /// Null.
    Null,
    /// Boolean.
    Bool(bool),
    /// Int32 / Int64, or a timestamp in microseconds.
    Int(i64),
    /// Utf8 (borrowed from the resource where it can be).
    Text(Cow<'b, str>),
    /// A list column's values (`None`: a null list).
    List(Option<Vec<Typed<'b>>>),
}

/// Converts an owned value to type `t`.
pub(super) fn typed_value(t: &DataType, value: CellValue, column: &str) -> Result<Typed<'static>, ViewError> {
    Ok(match (t, value) {
        (DataType::Boolean, CellValue::Bool(v)) => Typed::Bool(v),
        (DataType::Int32, CellValue::Int(v)) => {
            i32::try_from(v).map_err(|_| value_error(column, &CellValue::Int(v), t))?;
            Typed::Int(v)
        }
        (DataType::Int64, CellValue::Int(v)) => Typed::Int(v),
        (DataType::Int64, CellValue::Str(s)) => match s.parse() {
            Ok(v) => Typed::Int(v),
            Err(_) => return Err(value_error(column, &CellValue::Str(s), t)),
        },
        (DataType::Timestamp(..), CellValue::Str(s)) => match crate::fhir::parse_instant(&s) {
            Some(micros) => Typed::Int(micros),
            None => return Err(value_error(column, &CellValue::Str(s), t)),
        },
        (DataType::Boolean | DataType::Int32 | DataType::Int64 | DataType::Timestamp(..), other) => {
            return Err(value_error(column, &other, t));
        }
        (_, CellValue::Bool(v)) => Typed::Text(Cow::Owned(v.to_string())),
        (_, CellValue::Int(v)) => Typed::Text(Cow::Owned(v.to_string())),
        (_, CellValue::Decimal(s) | CellValue::Str(s)) => Typed::Text(Cow::Owned(s)),
    })
}

/// Converts a FHIRPath value to type `t`; strings of the resource stay
/// borrowed, computed strings (`getResourceKey()` on the general path) are
/// copied.
fn typed_item<'a>(t: &DataType, value: &Value<'a>, column: &str) -> Result<Typed<'a>, ViewError> {
    match value {
        Value::Node(node) => typed_node(t, *node, column),
        Value::String(s) if *t == DataType::Utf8 => Ok(Typed::Text(Cow::Owned(s.clone()))),
        other => typed_value(t, cell_value(other), column),
    }
}

/// Converts a node of the resource to type `t` (strings stay borrowed).
pub(super) fn typed_node<'a>(t: &DataType, node: Node<'a>, column: &str) -> Result<Typed<'a>, ViewError> {
    if let JsonValue::String(s) = node.json {
        match t {
            DataType::Utf8 => return Ok(Typed::Text(Cow::Borrowed(s.as_ref()))),
            DataType::Timestamp(..) => {
                if let Some(micros) = crate::fhir::parse_instant(s) {
                    return Ok(Typed::Int(micros));
                }
            }
            _ => {}
        }
    }
    typed_value(t, cell_value(&Value::Node(node)), column)
}

/// Converts a string of the resource (a key) to type `t`.
pub(super) fn typed_str<'a>(t: &DataType, s: &'a str, column: &str) -> Result<Typed<'a>, ViewError> {
    match t {
        DataType::Utf8 => Ok(Typed::Text(Cow::Borrowed(s))),
        _ => typed_value(t, CellValue::Str(s.to_string()), column),
    }
}

/// A cell's shape, whatever form its values take.
enum Shape<'c, V> {
    Null,
    One(&'c V),
    Many(&'c [V]),
}

/// Converts one cell (seen through its shape) to the type of `field`, each
/// value by `item`.
fn convert_cell<'c, 'b, V: 'c>(
    field: &Field,
    shape: Shape<'c, V>,
    item: &impl Fn(&DataType, &'c V, &str) -> Result<Typed<'b>, ViewError>,
) -> Result<Typed<'b>, ViewError> {
    let name = field.name();
    match (field.data_type(), shape) {
        (DataType::List(_), Shape::Null) => Ok(Typed::List(None)),
        (DataType::List(t), Shape::One(v)) => Ok(Typed::List(Some(vec![item(t.data_type(), v, name)?]))),
        (DataType::List(t), Shape::Many(values)) => Ok(Typed::List(Some(
            values
                .iter()
                .map(|v| item(t.data_type(), v, name))
                .collect::<Result<_, _>>()?,
        ))),
        (_, Shape::Null | Shape::Many(_)) => Ok(Typed::Null),
        (t, Shape::One(v)) => item(t, v, name),
    }
}

/// Converts row-major `cells` (one per field of `schema`, row after row) to
/// the types of `schema`, appending one [`Typed`] per cell to `out`.
pub(super) fn typed_cells<'a>(
    schema: &SchemaRef,
    cells: &[RawCell<'a>],
    out: &mut Vec<Typed<'a>>,
) -> Result<(), ViewError> {
    let fields = schema.fields();
    if fields.is_empty() {
        return Ok(());
    }
    out.reserve(cells.len());
    for row in cells.chunks(fields.len()) {
        for (cell, field) in row.iter().zip(fields.iter()) {
            out.push(typed_cell(field, cell)?);
        }
    }
    Ok(())
}

/// Converts one cell to the type of `field`.
pub(super) fn typed_cell<'a>(field: &Field, cell: &RawCell<'a>) -> Result<Typed<'a>, ViewError> {
    convert_cell(field, raw_shape(cell), &typed_item)
}

/// Converts owned rows to the types of `schema`, row-major (see [`typed_cells`]).
fn typed_owned_rows(schema: &SchemaRef, rows: &[Row]) -> Result<Vec<Typed<'static>>, ViewError> {
    let item = |t: &DataType, v: &CellValue, name: &str| typed_value(t, v.clone(), name);
    let mut out = Vec::with_capacity(rows.len() * schema.fields().len());
    for row in rows {
        for (cell, field) in row.iter().zip(schema.fields().iter()) {
            out.push(convert_cell(field, owned_shape(cell), &item)?);
        }
    }
    Ok(out)
}

fn raw_shape<'c, 'a>(cell: &'c RawCell<'a>) -> Shape<'c, Value<'a>> {
    match cell {
        RawCell::Null => Shape::Null,
        RawCell::One(v) => Shape::One(v),
        RawCell::Many(values) => Shape::Many(values.as_slice()),
    }
}

fn owned_shape(cell: &Cell) -> Shape<'_, CellValue> {
    match cell {
        Cell::Null => Shape::Null,
        Cell::One(v) => Shape::One(v),
        Cell::Many(values) => Shape::Many(values.as_slice()),
    }
}

/// The builder of one view column, by the column's Arrow type: appending a
/// value is a match, not a downcast of a `dyn ArrayBuilder` per value (list
/// items keep the generic builders).
pub enum ColumnBuilder {
    /// Boolean.
    Boolean(BooleanBuilder),
    /// Int32.
    Int32(Int32Builder),
    /// Int64.
    Int64(Int64Builder),
    /// Timestamp (µs, UTC).
    Timestamp(TimestampMicrosecondBuilder),
    /// Utf8.
    Utf8(StringBuilder),
    /// A list (a `collection: true` column).
    List(ListBuilder<Box<dyn ArrayBuilder>>),
}

impl ColumnBuilder {
    /// The builder of a column of type `t`, with room for `capacity` rows.
    pub fn new(t: &DataType, capacity: usize) -> Self {
        match t {
            DataType::Boolean => Self::Boolean(BooleanBuilder::with_capacity(capacity)),
            DataType::Int32 => Self::Int32(Int32Builder::with_capacity(capacity)),
            DataType::Int64 => Self::Int64(Int64Builder::with_capacity(capacity)),
            DataType::Timestamp(..) => {
                Self::Timestamp(TimestampMicrosecondBuilder::with_capacity(capacity).with_data_type(t.clone()))
            }
            DataType::List(item) => Self::List(
                ListBuilder::new(Self::new(item.data_type(), capacity).into_boxed()).with_field(item.clone()),
            ),
            _ => Self::Utf8(StringBuilder::with_capacity(capacity, capacity * 16)),
        }
    }

    /// The builder behind the enum (a list's item builder).
    fn into_boxed(self) -> Box<dyn ArrayBuilder> {
        match self {
            Self::Boolean(b) => Box::new(b),
            Self::Int32(b) => Box::new(b),
            Self::Int64(b) => Box::new(b),
            Self::Timestamp(b) => Box::new(b),
            Self::Utf8(b) => Box::new(b),
            Self::List(b) => Box::new(b),
        }
    }

    /// Appends one converted value of a column of type `t`.
    fn append(&mut self, t: &DataType, value: &Typed<'_>) -> Result<(), ViewError> {
        let wrong = || ViewError::invalid("view batch", &format!("no {t} builder for {value:?}"));
        match (self, value) {
            (Self::Boolean(b), Typed::Null) => b.append_null(),
            (Self::Boolean(b), Typed::Bool(v)) => b.append_value(*v),
            (Self::Int32(b), Typed::Null) => b.append_null(),
            (Self::Int32(b), Typed::Int(v)) => b.append_value(i32::try_from(*v).map_err(|_| wrong())?),
            (Self::Int64(b), Typed::Null) => b.append_null(),
            (Self::Int64(b), Typed::Int(v)) => b.append_value(*v),
            (Self::Timestamp(b), Typed::Null) => b.append_null(),
            (Self::Timestamp(b), Typed::Int(v)) => b.append_value(*v),
            (Self::Utf8(b), Typed::Null) => b.append_null(),
            (Self::Utf8(b), Typed::Text(s)) => b.append_value(s),
            (Self::List(b), Typed::List(values)) => {
                let DataType::List(item) = t else {
                    return Err(wrong());
                };
                match values {
                    None => b.append(false),
                    Some(values) => {
                        for v in values {
                            append_item(b.values().as_mut(), item.data_type(), v)?;
                        }
                        b.append(true);
                    }
                }
            }
            _ => return Err(wrong()),
        }
        Ok(())
    }

    /// The column built so far (the builder is left empty).
    fn finish(&mut self) -> ArrayRef {
        match self {
            Self::Boolean(b) => Arc::new(b.finish()),
            Self::Int32(b) => Arc::new(b.finish()),
            Self::Int64(b) => Arc::new(b.finish()),
            Self::Timestamp(b) => Arc::new(b.finish()),
            Self::Utf8(b) => Arc::new(b.finish()),
            Self::List(b) => Arc::new(b.finish()),
        }
    }
}

/// Appends one converted value to a list's item builder (made by
/// [`ColumnBuilder::new`] for the scalar type `t`).
fn append_item(builder: &mut dyn ArrayBuilder, t: &DataType, value: &Typed<'_>) -> Result<(), ViewError> {
    let wrong = || ViewError::invalid("view batch", &format!("no {t} builder for {value:?}"));
    let any = builder.as_any_mut();
    match (t, value) {
        (DataType::Boolean, Typed::Null) => any.downcast_mut::<BooleanBuilder>().ok_or_else(wrong)?.append_null(),
        (DataType::Boolean, Typed::Bool(v)) => any.downcast_mut::<BooleanBuilder>().ok_or_else(wrong)?.append_value(*v),
        (DataType::Int32, Typed::Null) => any.downcast_mut::<Int32Builder>().ok_or_else(wrong)?.append_null(),
        (DataType::Int32, Typed::Int(v)) => any
            .downcast_mut::<Int32Builder>()
            .ok_or_else(wrong)?
            .append_value(i32::try_from(*v).map_err(|_| wrong())?),
        (DataType::Int64, Typed::Null) => any.downcast_mut::<Int64Builder>().ok_or_else(wrong)?.append_null(),
        (DataType::Int64, Typed::Int(v)) => any.downcast_mut::<Int64Builder>().ok_or_else(wrong)?.append_value(*v),
        (DataType::Timestamp(..), Typed::Null) => any
            .downcast_mut::<TimestampMicrosecondBuilder>()
            .ok_or_else(wrong)?
            .append_null(),
        (DataType::Timestamp(..), Typed::Int(v)) => any
            .downcast_mut::<TimestampMicrosecondBuilder>()
            .ok_or_else(wrong)?
            .append_value(*v),
        (DataType::Utf8, Typed::Null) => any.downcast_mut::<StringBuilder>().ok_or_else(wrong)?.append_null(),
        (DataType::Utf8, Typed::Text(s)) => any.downcast_mut::<StringBuilder>().ok_or_else(wrong)?.append_value(s),
        _ => return Err(wrong()),
    }
    Ok(())
}

/// Appends converted values to `builders` (one per field of `schema`),
/// row-major as [`typed_cells`] makes them.
pub fn append_rows(schema: &SchemaRef, builders: &mut [ColumnBuilder], values: &[Typed<'_>]) -> Result<(), ViewError> {
    let fields = schema.fields();
    if fields.is_empty() {
        return Ok(());
    }
    for row in values.chunks(fields.len()) {
        for ((builder, field), value) in builders.iter_mut().zip(fields.iter()).zip(row) {
            builder.append(field.data_type(), value)?;
        }
    }
    Ok(())
}

/// A record batch of what `builders` hold (they are left empty).
pub fn finish_batch(schema: &SchemaRef, builders: &mut [ColumnBuilder]) -> Result<RecordBatch, ViewError> {
    let columns: Vec<ArrayRef> = builders.iter_mut().map(|b| b.finish()).collect();
    RecordBatch::try_new(schema.clone(), columns).map_err(|e| ViewError::invalid("record batch", &e.to_string()))
}

/// Builds a record batch of `rows` with `schema`.
pub fn rows_to_batch(schema: &SchemaRef, rows: &[Row]) -> Result<RecordBatch, ViewError> {
    let typed = typed_owned_rows(schema, rows)?;
    let mut builders: Vec<_> = schema
        .fields()
        .iter()
        .map(|f| ColumnBuilder::new(f.data_type(), rows.len()))
        .collect();
    append_rows(schema, &mut builders, &typed)?;
    finish_batch(schema, &mut builders)
}
