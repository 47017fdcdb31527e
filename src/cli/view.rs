//! `fhirlake view run` and `fhirlake view refresh`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use fhirlake::query::{OutputFormat, StreamingWriter};
use fhirlake::view::materialize::{refresh_views, run_view};
use fhirlake::view::{ViewCatalog, ViewDefinition, ViewRunner, view_schema};
use fhirlake::warehouse::Warehouse;

use super::output::{open_output, output_format};

/// `fhirlake view …`.
#[derive(clap::Subcommand)]
pub enum Command {
    /// Run a ViewDefinition over the warehouse's stored resources (parallel, streaming).
    Run {
        /// The ViewDefinition (JSON file).
        view: PathBuf,
        /// Output format.
        #[arg(long, default_value = "table", value_parser = output_format())]
        format: OutputFormat,
        /// Write rows to this file instead of stdout.
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Recompute view tables from the stored resources, in one new warehouse
    /// version: for views added or changed after the data was loaded.
    Refresh {
        /// Folder of extra ViewDefinitions (*.json) besides the shipped ones
        /// (a view with a shipped view's name replaces it).
        #[arg(long)]
        views: Option<PathBuf>,
        /// Refresh only the views of --views, not the shipped ones.
        #[arg(long)]
        no_shipped_views: bool,
    },
}

impl Command {
    /// Runs the subcommand.
    pub async fn run(self, warehouse: &str) -> anyhow::Result<()> {
        match self {
            Command::Run { view, format, output } => run(warehouse, &view, format, output.as_deref()).await,
            Command::Refresh {
                views,
                no_shipped_views,
            } => refresh(warehouse, views.as_deref(), no_shipped_views).await,
        }
    }
}

/// Streams the rows of the ViewDefinition in `view` to `output`.
async fn run(warehouse: &str, view: &Path, format: OutputFormat, output: Option<&Path>) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(view).with_context(|| format!("reading {}", view.display()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", view.display()))?;
    let definition = ViewDefinition::from_json(&json).with_context(|| format!("view {}", view.display()))?;
    let runner = ViewRunner::new(&definition)?;
    let warehouse = Warehouse::open(warehouse)?;
    let (sink, target) = open_output(format, output)?;
    let writer = Arc::new(Mutex::new(Some(StreamingWriter::new(
        format,
        view_schema(&definition),
        sink,
    )?)));
    let for_sink = writer.clone();
    let rows = run_view(&warehouse, &runner, move |batch| {
        let mut guard = for_sink.lock().map_err(|_| "output writer poisoned")?;
        match guard.as_mut() {
            Some(w) => Ok(w.write(batch)?),
            None => Ok(()),
        }
    })
    .await
    .with_context(|| format!("view {}", view.display()))?;
    let finished = writer.lock().ok().and_then(|mut g| g.take());
    if let Some(w) = finished {
        w.finish(&target)?;
    }
    tracing::info!(rows, "view run finished");
    Ok(())
}

/// Recomputes the catalog's view tables in one new version.
async fn refresh(warehouse_url: &str, views: Option<&Path>, no_shipped: bool) -> anyhow::Result<()> {
    let catalog = view_catalog(views, no_shipped)?;
    let warehouse = Warehouse::open(warehouse_url)?;
    let report = refresh_views(&warehouse, &catalog).await?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "warehouse {warehouse_url} is now at version {}", report.version)?;
    writeln!(out, "{:<34} {:>12}", "table", "rows")?;
    for (table, rows) in &report.tables {
        writeln!(out, "{table:<34} {rows:>12}")?;
    }
    Ok(())
}

/// The views `load` and `view refresh` materialize: the shipped ones unless
/// `no_shipped`, and those of `dir`.
pub fn view_catalog(dir: Option<&Path>, no_shipped: bool) -> anyhow::Result<ViewCatalog> {
    let mut catalog = if no_shipped {
        ViewCatalog::empty()
    } else {
        ViewCatalog::shipped()?
    };
    if let Some(dir) = dir {
        catalog.add_dir(dir)?;
    }
    Ok(catalog)
}
