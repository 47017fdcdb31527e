//! Result formats of `fhirlake sql`.

use std::io::Write;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::parquet::arrow::ArrowWriter;

use super::QueryError;

/// How results are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// An aligned text table.
    Table,
    /// CSV with a header row.
    Csv,
    /// One JSON array of row objects.
    Json,
    /// One JSON object per line.
    Ndjson,
    /// A Parquet file (needs an output file).
    Parquet,
}

impl OutputFormat {
    /// Every format's name, as [`OutputFormat::from_str`] reads it.
    pub const NAMES: [&str; 5] = ["table", "csv", "json", "ndjson", "parquet"];
}

impl std::str::FromStr for OutputFormat {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Ok(match name {
            "table" => Self::Table,
            "csv" => Self::Csv,
            "json" => Self::Json,
            "ndjson" => Self::Ndjson,
            "parquet" => Self::Parquet,
            other => {
                return Err(format!(
                    "unknown output format '{other}' (one of {})",
                    Self::NAMES.join(", ")
                ));
            }
        })
    }
}

/// Writes `batches` to `out` in `format`; `target` names `out` in errors.
pub fn write_batches(
    schema: SchemaRef,
    batches: &[RecordBatch],
    format: OutputFormat,
    out: &mut (dyn Write + Send),
    target: &str,
) -> Result<(), QueryError> {
    let mut writer = StreamingWriter::new(format, schema, out)?;
    for batch in batches {
        writer.write(batch)?;
    }
    writer.finish(target)
}

/// `batch` with its decimal columns as floats, for JSON readers that take
/// a decimal for a number (Arrow's JSON writer writes decimals as strings,
/// to keep their precision; SQL-on-FHIR's JSON output has numbers).
pub fn decimals_as_numbers(batch: &RecordBatch) -> Result<RecordBatch, QueryError> {
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    let is_decimal = |t: &DataType| matches!(t, DataType::Decimal128(..) | DataType::Decimal256(..));
    if !batch.schema().fields().iter().any(|f| is_decimal(f.data_type())) {
        return Ok(batch.clone());
    }
    let mut fields = Vec::with_capacity(batch.num_columns());
    let mut columns = Vec::with_capacity(batch.num_columns());
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        if is_decimal(field.data_type()) {
            columns.push(datafusion::arrow::compute::cast(column, &DataType::Float64)?);
            fields.push(Field::new(field.name(), DataType::Float64, field.is_nullable()));
        } else {
            columns.push(column.clone());
            fields.push(field.as_ref().clone());
        }
    }
    Ok(RecordBatch::try_new(std::sync::Arc::new(Schema::new(fields)), columns)?)
}

/// Writes batches one at a time (for results too large to hold): CSV, NDJSON,
/// JSON and Parquet stream; `table` collects (a text table needs all widths).
pub enum StreamingWriter<W: Write + Send> {
    /// CSV with a header row.
    Csv(datafusion::arrow::csv::Writer<W>),
    /// One JSON object per line.
    Ndjson(datafusion::arrow::json::LineDelimitedWriter<W>),
    /// A JSON array.
    Json(datafusion::arrow::json::ArrayWriter<W>),
    /// Parquet.
    Parquet(ArrowWriter<W>),
    /// A text table, printed at the end.
    Table(W, SchemaRef, Vec<RecordBatch>),
}

impl<W: Write + Send> StreamingWriter<W> {
    /// A writer of `format` with `schema` into `out`.
    pub fn new(format: OutputFormat, schema: SchemaRef, out: W) -> Result<Self, QueryError> {
        Ok(match format {
            OutputFormat::Csv => Self::Csv(
                datafusion::arrow::csv::WriterBuilder::new()
                    .with_header(true)
                    .build(out),
            ),
            OutputFormat::Ndjson => Self::Ndjson(datafusion::arrow::json::LineDelimitedWriter::new(out)),
            OutputFormat::Json => Self::Json(datafusion::arrow::json::ArrayWriter::new(out)),
            OutputFormat::Parquet => Self::Parquet(ArrowWriter::try_new(out, schema, None)?),
            OutputFormat::Table => Self::Table(out, schema, Vec::new()),
        })
    }

    /// A CSV writer into `out`, with or without the header row.
    pub fn csv(out: W, header: bool) -> Self {
        Self::Csv(
            datafusion::arrow::csv::WriterBuilder::new()
                .with_header(header)
                .build(out),
        )
    }

    /// Writes one batch.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), QueryError> {
        match self {
            Self::Csv(w) => w.write(batch)?,
            Self::Ndjson(w) => w.write(batch)?,
            Self::Json(w) => w.write(batch)?,
            Self::Parquet(w) => w.write(batch)?,
            Self::Table(_, _, batches) => batches.push(batch.clone()),
        }
        Ok(())
    }

    /// Completes the output.
    pub fn finish(self, target: &str) -> Result<(), QueryError> {
        let io = |source| QueryError::Io {
            target: target.to_string(),
            source,
        };
        match self {
            Self::Csv(w) => w.into_inner().flush().map_err(io),
            Self::Ndjson(mut w) => {
                w.finish()?;
                w.into_inner().flush().map_err(io)
            }
            Self::Json(mut w) => {
                w.finish()?;
                let mut out = w.into_inner();
                writeln!(out).map_err(io)?;
                out.flush().map_err(io)
            }
            Self::Parquet(w) => w.into_inner()?.flush().map_err(io),
            Self::Table(mut out, schema, batches) => {
                let table = if batches.is_empty() {
                    pretty_format_batches(&[RecordBatch::new_empty(schema)])?
                } else {
                    pretty_format_batches(&batches)?
                };
                writeln!(out, "{table}").map_err(io)?;
                out.flush().map_err(io)
            }
        }
    }
}
