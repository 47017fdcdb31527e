//! `fhirlake load`: NDJSON into the warehouse.

use std::io::Write;
use std::path::PathBuf;

use fhirlake::index::parse_index_table_key;
use fhirlake::ingest::{LoadOptions, LoadReport, load};
use fhirlake::warehouse::Warehouse;

use super::view::view_catalog;

/// Arguments of `fhirlake load`.
#[derive(clap::Args)]
pub struct Args {
    /// Files or folders to load; default: the bundled sample data.
    sources: Vec<String>,
    /// Record invalid lines in the `_rejects` table and load the rest.
    #[arg(long)]
    skip_invalid: bool,
    /// Parse threads (default: number of cores).
    #[arg(long)]
    workers: Option<usize>,
    /// No progress display.
    #[arg(long, short)]
    quiet: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
    /// Folder of extra ViewDefinitions (*.json) to materialize besides the
    /// shipped ones (a view with a shipped view's name replaces it).
    #[arg(long)]
    views: Option<PathBuf>,
    /// Do not materialize the shipped views (only those of --views, if any).
    #[arg(long)]
    no_shipped_views: bool,
    /// Do not write the search index (cohorts and `_typeFilter` need it;
    /// useful only to measure or to load data never searched).
    #[arg(long)]
    no_index: bool,
}

impl Args {
    /// Loads and prints the summary.
    pub async fn run(self, warehouse_url: &str) -> anyhow::Result<()> {
        let sources = if self.sources.is_empty() {
            vec![super::sample_data()]
        } else {
            self.sources
        };
        let warehouse = Warehouse::open(warehouse_url)?;
        let mut options = LoadOptions {
            skip_invalid: self.skip_invalid,
            quiet: self.quiet,
            index: !self.no_index,
            ..LoadOptions::default()
        };
        if self.views.is_some() || self.no_shipped_views {
            options.views = Some(view_catalog(self.views.as_deref(), self.no_shipped_views)?);
        }
        if let Some(w) = self.workers {
            options.workers = w;
        }
        let report = load(&warehouse, &sources, &options).await?;
        let mut out = std::io::stdout().lock();
        if self.json {
            serde_json::to_writer_pretty(&mut out, &report)?;
            writeln!(out)?;
        } else {
            print_summary(&mut out, warehouse_url, &report)?;
        }
        Ok(())
    }
}

/// The load's summary: totals, stage times, and rows per table (index
/// tables summed per kind).
fn print_summary(out: &mut impl Write, warehouse: &str, r: &LoadReport) -> std::io::Result<()> {
    writeln!(
        out,
        "loaded {} resources from {} files ({:.1} MiB NDJSON, {:.1} MiB stored) in {:.2} s: {:.1} MiB/s, {:.0} resources/s; {} rejected",
        r.resources,
        r.files,
        r.ndjson_bytes as f64 / 1048576.0,
        r.stored_bytes as f64 / 1048576.0,
        r.seconds,
        r.mib_per_second(),
        r.resources as f64 / r.seconds.max(1e-9),
        r.rejected
    )?;
    let st = &r.stages;
    writeln!(
        out,
        "read {:.2} s (worker time: parse {:.2} s, views {:.2} s, index {:.2} s, tables {:.2} s), then merge and commit {:.2} s",
        st.read_seconds, st.parse_seconds, st.views_seconds, st.index_seconds, st.tables_seconds, st.finish_seconds
    )?;
    writeln!(out, "warehouse {warehouse} is now at version {}", r.version)?;
    writeln!(out, "{:<28} {:>12} {:>12}", "table", "loaded", "rows")?;
    // Index tables are summed per kind (one line each instead of one per type).
    let mut index_rows: std::collections::BTreeMap<&str, (u64, u64, usize)> = Default::default();
    for (name, t) in &r.tables {
        if let Some((kind, _)) = parse_index_table_key(name) {
            let entry = index_rows.entry(kind.name()).or_default();
            entry.0 += t.loaded;
            entry.1 += t.rows;
            entry.2 += 1;
            continue;
        }
        let note = if t.merged {
            "  (merged with earlier versions)"
        } else {
            ""
        };
        writeln!(out, "{name:<28} {:>12} {:>12}{note}", t.loaded, t.rows)?;
    }
    for (kind, (loaded, rows, tables)) in index_rows {
        let name = format!("index_{kind} ({tables} types)");
        writeln!(out, "{name:<28} {loaded:>12} {rows:>12}")?;
    }
    if r.rejected > 0 {
        writeln!(
            out,
            "rejected lines are in the _rejects table: fhirlake sql \"SELECT * FROM _rejects\""
        )?;
    }
    Ok(())
}
