//! View rows → Arrow record batches, with the SQL-on-FHIR type mapping.

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayBuilder, ArrayRef, BooleanBuilder, Int32Builder, Int64Builder, ListBuilder, RecordBatch, StringBuilder,
    TimestampMicrosecondBuilder,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use super::ViewError;
use super::model::{Column, ViewDefinition};
use super::run::{Cell, CellValue, Row};
use crate::fhirpath::ast::{BinaryOp, Expr};
use crate::warehouse::schema::timestamp_type;

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

fn append(
    builder: &mut dyn ArrayBuilder,
    t: &DataType,
    value: Option<&CellValue>,
    column: &str,
) -> Result<(), ViewError> {
    let any = builder.as_any_mut();
    match t {
        DataType::Boolean => {
            let b = any
                .downcast_mut::<BooleanBuilder>()
                .ok_or_else(|| ViewError::invalid(column, "builder"))?;
            match value {
                None => b.append_null(),
                Some(CellValue::Bool(v)) => b.append_value(*v),
                Some(other) => return Err(value_error(column, other, t)),
            }
        }
        DataType::Int32 => {
            let b = any
                .downcast_mut::<Int32Builder>()
                .ok_or_else(|| ViewError::invalid(column, "builder"))?;
            match value {
                None => b.append_null(),
                Some(CellValue::Int(v)) => {
                    b.append_value(i32::try_from(*v).map_err(|_| value_error(column, &CellValue::Int(*v), t))?)
                }
                Some(other) => return Err(value_error(column, other, t)),
            }
        }
        DataType::Int64 => {
            let b = any
                .downcast_mut::<Int64Builder>()
                .ok_or_else(|| ViewError::invalid(column, "builder"))?;
            match value {
                None => b.append_null(),
                Some(CellValue::Int(v)) => b.append_value(*v),
                Some(CellValue::Str(s)) => b.append_value(
                    s.parse()
                        .map_err(|_| value_error(column, &CellValue::Str(s.clone()), t))?,
                ),
                Some(other) => return Err(value_error(column, other, t)),
            }
        }
        DataType::Timestamp(..) => {
            let b = any
                .downcast_mut::<TimestampMicrosecondBuilder>()
                .ok_or_else(|| ViewError::invalid(column, "builder"))?;
            match value {
                None => b.append_null(),
                Some(CellValue::Str(s)) => match crate::ingest::record::parse_instant(s) {
                    Some(micros) => b.append_value(micros),
                    None => return Err(value_error(column, &CellValue::Str(s.clone()), t)),
                },
                Some(other) => return Err(value_error(column, other, t)),
            }
        }
        _ => {
            let b = any
                .downcast_mut::<StringBuilder>()
                .ok_or_else(|| ViewError::invalid(column, "builder"))?;
            match value {
                None => b.append_null(),
                Some(CellValue::Bool(v)) => b.append_value(v.to_string()),
                Some(CellValue::Int(v)) => b.append_value(v.to_string()),
                Some(CellValue::Decimal(s) | CellValue::Str(s)) => b.append_value(s),
            }
        }
    }
    Ok(())
}

fn scalar_builder(t: &DataType, capacity: usize) -> Box<dyn ArrayBuilder> {
    match t {
        DataType::Boolean => Box::new(BooleanBuilder::with_capacity(capacity)),
        DataType::Int32 => Box::new(Int32Builder::with_capacity(capacity)),
        DataType::Int64 => Box::new(Int64Builder::with_capacity(capacity)),
        DataType::Timestamp(..) => {
            Box::new(TimestampMicrosecondBuilder::with_capacity(capacity).with_data_type(t.clone()))
        }
        _ => Box::new(StringBuilder::with_capacity(capacity, capacity * 16)),
    }
}

/// Builds a record batch of `rows` with `schema`.
pub fn rows_to_batch(schema: &SchemaRef, rows: &[Row]) -> Result<RecordBatch, ViewError> {
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for (i, field) in schema.fields().iter().enumerate() {
        let name = field.name();
        match field.data_type() {
            DataType::List(item) => {
                let t = item.data_type().clone();
                let mut builder = ListBuilder::new(scalar_builder(&t, rows.len())).with_field(item.clone());
                for row in rows {
                    match &row[i] {
                        Cell::Null => builder.append(false),
                        Cell::One(v) => {
                            append(builder.values().as_mut(), &t, Some(v), name)?;
                            builder.append(true);
                        }
                        Cell::Many(values) => {
                            for v in values {
                                append(builder.values().as_mut(), &t, Some(v), name)?;
                            }
                            builder.append(true);
                        }
                    }
                }
                columns.push(Arc::new(builder.finish()));
            }
            t => {
                let mut builder = scalar_builder(t, rows.len());
                for row in rows {
                    match &row[i] {
                        Cell::Null | Cell::Many(_) => append(builder.as_mut(), t, None, name)?,
                        Cell::One(v) => append(builder.as_mut(), t, Some(v), name)?,
                    }
                }
                columns.push(builder.finish());
            }
        }
    }
    RecordBatch::try_new(schema.clone(), columns).map_err(|e| ViewError::invalid("record batch", &e.to_string()))
}
