//! Result formats of `fhirlake sql`.

use std::io::Write;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::parquet::arrow::ArrowWriter;

use super::QueryError;

/// How results are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
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

/// Writes `batches` to `out` in `format`; `target` names `out` in errors.
pub fn write_batches(
    schema: SchemaRef,
    batches: &[RecordBatch],
    format: OutputFormat,
    out: &mut (dyn Write + Send),
    target: &str,
) -> Result<(), QueryError> {
    let io = |source| QueryError::Io {
        target: target.to_string(),
        source,
    };
    match format {
        OutputFormat::Table => {
            let table = if batches.is_empty() {
                pretty_format_batches(&[RecordBatch::new_empty(schema)])?
            } else {
                pretty_format_batches(batches)?
            };
            writeln!(out, "{table}").map_err(io)?;
        }
        OutputFormat::Csv => {
            let mut writer = datafusion::arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(&mut *out);
            for batch in batches {
                writer.write(batch)?;
            }
        }
        OutputFormat::Json => {
            let mut writer = datafusion::arrow::json::ArrayWriter::new(&mut *out);
            for batch in batches {
                writer.write(batch)?;
            }
            writer.finish()?;
            writeln!(out).map_err(io)?;
        }
        OutputFormat::Ndjson => {
            let mut writer = datafusion::arrow::json::LineDelimitedWriter::new(&mut *out);
            for batch in batches {
                writer.write(batch)?;
            }
            writer.finish()?;
        }
        OutputFormat::Parquet => {
            let mut writer = ArrowWriter::try_new(&mut *out, schema, None)?;
            for batch in batches {
                writer.write(batch)?;
            }
            writer.close()?;
        }
    }
    out.flush().map_err(io)
}
