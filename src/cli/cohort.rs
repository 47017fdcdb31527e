//! `fhirlake cohort`: counting the patients meeting FHIR searches, planned
//! as the server plans cohort Groups (`group::cohort_plan`).

use std::io::Write;

use fhirlake::cohort::CohortEngine;
use fhirlake::group::cohort_plan;
use fhirlake::warehouse::Warehouse;

/// Arguments of `fhirlake cohort`.
#[derive(clap::Args)]
pub struct Args {
    /// FHIR search expressions (`Type?param=value&…`); none with
    /// `--base-group` counts the group's members.
    #[arg(required_unless_present = "base_group")]
    expressions: Vec<String>,
    /// Only patients who are members of this Group (a Group of the loaded
    /// data, or one created through the server).
    #[arg(long)]
    base_group: Option<String>,
    /// Print the optimized logical plan and the physical plan with its
    /// metrics (rows, row groups pruned) and the time taken.
    #[arg(long)]
    explain: bool,
    /// Print the patient ids, one per line, after the count.
    #[arg(long)]
    ids: bool,
}

impl Args {
    /// Computes the cohort and prints its size (and ids, plans).
    pub async fn run(self, warehouse: &str) -> anyhow::Result<()> {
        let started = std::time::Instant::now();
        let queries = CohortEngine::parse(&self.expressions)?;
        let warehouse = Warehouse::open(warehouse)?;
        let engine = CohortEngine::open(&warehouse).await?;
        if !engine.has_index() {
            anyhow::bail!("the warehouse has no search index: reload without --no-index");
        }
        let base_groups: Vec<String> = self.base_group.iter().cloned().collect();
        let plan = cohort_plan(&engine, &queries, &[], &base_groups).await?;
        let mut out = std::io::stdout().lock();
        if self.explain {
            writeln!(out, "{}", engine.explain(plan.clone()).await?)?;
        }
        let result = engine.run(plan).await?;
        writeln!(out, "{}", result.patients.len())?;
        if self.ids {
            for id in &result.patients {
                writeln!(out, "{id}")?;
            }
        }
        tracing::debug!(
            patients = result.patients.len(),
            seconds = started.elapsed().as_secs_f64(),
            "cohort computed"
        );
        Ok(())
    }
}
