//! A Bulk Cohort through the engine API: the patients meeting every
//! `member-filter` search, compiled to one DataFusion plan.
//!
//! `cargo run --example cohort [SEARCH ...]` (default: women with
//! prediabetes). Loads the bundled `data/synthea-10` into a temporary
//! warehouse first.

use fhirlake::cohort::CohortEngine;
use fhirlake::ingest::{LoadOptions, load};
use fhirlake::warehouse::Warehouse;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut searches: Vec<String> = std::env::args().skip(1).collect();
    if searches.is_empty() {
        searches = vec![
            "Patient?gender=female".into(),
            "Condition?code=http://snomed.info/sct|15777000".into(),
        ];
    }
    let dir = tempfile::tempdir()?;
    let warehouse = Warehouse::open(&dir.path().display().to_string())?;
    let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/data/synthea-10").to_string();
    let options = LoadOptions {
        quiet: true,
        ..LoadOptions::default()
    };
    load(&warehouse, &[sample], &options).await?;

    // An engine over the current snapshot; every search is parsed before
    // anything runs, so a bad one fails alone and early.
    let engine = CohortEngine::open(&warehouse).await?;
    let queries = CohortEngine::parse(&searches)?;
    let plan = engine.plan(&queries, None)?;
    let cohort = engine.run(plan).await?;
    println!("{} patient(s) meet {}", cohort.patients.len(), searches.join(" AND "));
    for id in &cohort.patients {
        println!("Patient/{id}");
    }
    Ok(())
}
