//! `fhirlake sql`: DataFusion SQL over the warehouse.

use std::io::Read;
use std::path::PathBuf;

use anyhow::Context;
use fhirlake::analyst::open_analyst_session;
use fhirlake::query::{OutputFormat, run_statements, write_batches};
use fhirlake::warehouse::Warehouse;

use super::output::{open_output, output_format};

/// Arguments of `fhirlake sql`.
#[derive(clap::Args)]
pub struct Args {
    /// The SQL; several statements may be separated by `;`.
    query: Option<String>,
    /// Output format.
    #[arg(long, default_value = "table", value_parser = output_format())]
    format: OutputFormat,
    /// Write results to this file instead of stdout.
    #[arg(long)]
    output: Option<PathBuf>,
}

impl Args {
    /// Runs the statements and writes every result.
    pub async fn run(self, warehouse: &str) -> anyhow::Result<()> {
        let sql = match self.query {
            Some(q) => q,
            None => {
                let mut text = String::new();
                std::io::stdin()
                    .read_to_string(&mut text)
                    .context("reading SQL from stdin")?;
                text
            }
        };
        let warehouse = Warehouse::open(warehouse)?;
        let ctx = open_analyst_session(&warehouse).await?;
        let results = run_statements(&ctx, &sql).await?;
        let (mut sink, target) = open_output(self.format, self.output.as_deref())?;
        for result in &results {
            write_batches(result.schema.clone(), &result.batches, self.format, &mut sink, &target)?;
        }
        Ok(())
    }
}
