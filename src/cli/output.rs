//! Where and how query and view results are written.

use std::io::Write;

use anyhow::Context;
use fhirlake::query::OutputFormat;

/// Parses `--format` into the engine's output format, listing the names
/// in `--help`.
pub fn output_format() -> impl clap::builder::TypedValueParser<Value = OutputFormat> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(OutputFormat::NAMES).try_map(|name| name.parse::<OutputFormat>())
}

/// Where results go: `path`, or stdout (which cannot take Parquet).
pub fn open_output(
    format: OutputFormat,
    path: Option<&std::path::Path>,
) -> anyhow::Result<(Box<dyn Write + Send>, String)> {
    match path {
        Some(path) => {
            let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
            Ok((Box::new(std::io::BufWriter::new(file)), path.display().to_string()))
        }
        None if format == OutputFormat::Parquet => anyhow::bail!("--format parquet needs --output FILE"),
        None => Ok((
            Box::new(std::io::BufWriter::new(std::io::stdout())),
            "stdout".to_string(),
        )),
    }
}
