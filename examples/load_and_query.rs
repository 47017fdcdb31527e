//! Load FHIR NDJSON into a warehouse and query it with SQL.
//!
//! `cargo run --example load_and_query [NDJSON_DIR]` (default: the bundled
//! `data/synthea-10`). The warehouse goes to a temporary folder.

use fhirlake::ingest::{LoadOptions, load};
use fhirlake::query::{open_session, run_statements};
use fhirlake::warehouse::Warehouse;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let data = std::env::args()
        .nth(1)
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/data/synthea-10").to_string());
    let dir = tempfile::tempdir()?;
    let warehouse = Warehouse::open(&dir.path().display().to_string())?;

    // One commit: resource tables, the shipped views, the search index.
    let options = LoadOptions {
        quiet: true,
        ..LoadOptions::default()
    };
    let report = load(&warehouse, &[data], &options).await?;
    println!("loaded warehouse version {}", report.version);

    // Views are tables in the default schema; resources are in `fhir`.
    let ctx = open_session(&warehouse).await?;
    let sql = "SELECT gender, count(*) AS patients FROM patient GROUP BY gender ORDER BY gender";
    for result in run_statements(&ctx, sql).await? {
        let table = datafusion::arrow::util::pretty::pretty_format_batches(&result.batches)?;
        println!("{table}");
    }
    Ok(())
}
