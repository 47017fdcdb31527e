//! Ingest benchmark: `fhirlake load` against DuckDB's NDJSON → Parquet landing
//! (`../shared/bench/duckdb_ingest.py`) and DuckDB's view script load phase
//! (`../shared/bench/duckdb_view.py`), on the same data in the same run.
//!
//! Run: `cargo bench --bench ingest` (env `FHIRLAKE_BENCH_COPIES`, default 8,
//! sets the scale of the generated dataset; `FHIRLAKE_BENCH_ROUNDS`, default
//! 1, repeats every run in alternating rounds and reports each tool's median
//! time, since this VM's speed drifts by ±20 % between runs). Data is generated under
//! `target/bench-data/` by `fhirlake gen`, never committed. Results are printed
//! as a Markdown table and written to `target/bench-ingest.json`.

use std::path::{Path, PathBuf};
mod common;

use std::process::Command;

use common::run_measured;

struct Run {
    tool: String,
    dataset: String,
    input_mib: f64,
    resources: u64,
    seconds: f64,
    peak_rss_mib: f64,
    /// fhirlake's own account of where the load's time went (`stages`).
    stages: Option<serde_json::Value>,
}

impl Run {
    fn mib_per_s(&self) -> f64 {
        self.input_mib / self.seconds
    }
}

/// What a measured load computes besides the resource tables.
#[derive(Clone, Copy)]
enum Load {
    /// The default load: resource tables, the 11 shipped views, the search
    /// index.
    Full,
    /// Resource tables and the search index.
    NoViews,
    /// Resource tables only (with compartments): what the foundation issue
    /// asks of a load, and the same output as DuckDB's landing (one Parquet
    /// table per type).
    TablesOnly,
}

impl Load {
    fn tool(self) -> &'static str {
        match self {
            Load::Full => "fhirlake load",
            Load::NoViews => "fhirlake load --no-shipped-views",
            Load::TablesOnly => "fhirlake load --no-shipped-views --no-index",
        }
    }
}

fn fhirlake_load(data: &Path, work: &Path, name: &str, load: Load) -> Run {
    let wh = work.join(format!("wh-{name}"));
    let _ = std::fs::remove_dir_all(&wh);
    let mut args = vec!["--warehouse", wh.to_str().unwrap(), "load", "--quiet", "--json"];
    match load {
        Load::Full => {}
        Load::NoViews => args.push("--no-shipped-views"),
        Load::TablesOnly => args.extend(["--no-shipped-views", "--no-index"]),
    }
    args.push(data.to_str().unwrap());
    let m = run_measured(Command::new(env!("CARGO_BIN_EXE_fhirlake")).args(&args));
    let (out, seconds, rss) = (m.stdout, m.wall, m.peak_rss_mib);
    let report: serde_json::Value = serde_json::from_str(&out).expect("load --json output");
    Run {
        tool: load.tool().into(),
        dataset: name.into(),
        input_mib: report["ndjson_bytes"].as_f64().unwrap_or(0.0) / 1048576.0,
        resources: report["resources"].as_u64().unwrap_or(0),
        seconds,
        peak_rss_mib: rss,
        stages: Some(report["stages"].clone()),
    }
}

fn duckdb(script: &str, data: &Path, work: &Path, name: &str) -> Option<Run> {
    let (m, report) = common::run_shared_peer(script, data, &work.join(format!("duck-{name}")))?;
    let (seconds, rss) = (m.wall, m.peak_rss_mib);
    let (input_mib, inner_seconds, resources) = if script == "duckdb_ingest.py" {
        (
            report["input_mib"].as_f64()?,
            report["seconds"].as_f64()?,
            report["resources"].as_u64().unwrap_or(0),
        )
    } else {
        // duckdb_view.py's `load` phase parses only Patient, Condition and
        // Encounter; measure their NDJSON size (uncompressed) ourselves.
        let types = ["Patient", "Condition", "Encounter"];
        let resources = types.iter().filter_map(|t| report["rows"][t].as_u64()).sum();
        (
            ndjson_mib(data, &types),
            report["timings"]["load_s"].as_f64()?,
            resources,
        )
    };
    let _ = seconds;
    Some(Run {
        tool: format!("duckdb {}", script.trim_end_matches(".py")),
        dataset: name.into(),
        input_mib,
        resources,
        seconds: inner_seconds,
        peak_rss_mib: rss,
        stages: None,
    })
}

/// One run per tool: the one with the median time of its rounds (the
/// upper median for an even count).
fn medians(mut all: Vec<Run>) -> Vec<Run> {
    let mut tools: Vec<String> = Vec::new();
    for r in &all {
        if !tools.contains(&r.tool) {
            tools.push(r.tool.clone());
        }
    }
    if all.len() > tools.len() {
        for r in &all {
            println!("round: {} / {}: {:.2} s", r.dataset, r.tool, r.seconds);
        }
    }
    let mut out = Vec::new();
    for tool in tools {
        let mut mine: Vec<Run> = Vec::new();
        let mut rest = Vec::new();
        for r in all {
            if r.tool == tool { mine.push(r) } else { rest.push(r) }
        }
        all = rest;
        mine.sort_by(|a, b| a.seconds.total_cmp(&b.seconds));
        let mid = mine.len() / 2;
        out.extend(mine.into_iter().nth(mid));
    }
    out
}

/// Uncompressed NDJSON MiB of the files of `types` in `dir`.
fn ndjson_mib(dir: &Path, types: &[&str]) -> f64 {
    let mut bytes = 0u64;
    for entry in std::fs::read_dir(dir).expect("data dir").flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let type_name = name
            .split('.')
            .find(|p| p.chars().next().is_some_and(char::is_uppercase))
            .unwrap_or("");
        if !types.contains(&type_name) {
            continue;
        }
        let file = std::fs::File::open(entry.path()).expect("open");
        bytes += if name.ends_with(".gz") {
            std::io::copy(&mut flate2::read::MultiGzDecoder::new(file), &mut std::io::sink()).expect("gunzip")
        } else {
            entry.metadata().map(|m| m.len()).unwrap_or(0)
        };
    }
    bytes as f64 / 1048576.0
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let Some(shared) = common::synthea_615() else {
        return;
    };
    let (work, scaled, copies) = common::scaled_dataset(&shared, 8);
    let rounds: usize = std::env::var("FHIRLAKE_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1);
    let mut runs = Vec::new();
    for (name, data) in [
        ("synthea-615".to_string(), shared.clone()),
        (format!("synthea-615x{copies}"), scaled.clone()),
    ] {
        let mut all = Vec::new();
        for _ in 0..rounds {
            for load in [Load::Full, Load::NoViews, Load::TablesOnly] {
                all.push(fhirlake_load(&data, &work, &name, load));
            }
            all.extend(duckdb("duckdb_ingest.py", &data, &work, &name));
            all.extend(duckdb("duckdb_view.py", &data, &work, &name));
        }
        runs.extend(medians(all));
    }
    println!("| dataset | tool | NDJSON MiB | resources | seconds | MiB/s | resources/s | peak RSS MiB |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    for r in &runs {
        println!(
            "| {} | {} | {:.1} | {} | {:.2} | {:.1} | {:.0} | {:.0} |",
            r.dataset,
            r.tool,
            r.input_mib,
            r.resources,
            r.seconds,
            r.mib_per_s(),
            r.resources as f64 / r.seconds,
            r.peak_rss_mib
        );
    }
    for r in &runs {
        if let Some(st) = &r.stages {
            let f = |k: &str| st[k].as_f64().unwrap_or(f64::NAN);
            println!(
                "{} / {}: read {:.2} s (worker s: parse {:.2}, views {:.2}, index {:.2}, tables {:.2}), merge and commit {:.2} s",
                r.dataset,
                r.tool,
                f("read_seconds"),
                f("parse_seconds"),
                f("views_seconds"),
                f("index_seconds"),
                f("tables_seconds"),
                f("finish_seconds"),
            );
        }
    }
    let mut json = Vec::new();
    for dataset in runs
        .iter()
        .map(|r| r.dataset.clone())
        .collect::<std::collections::BTreeSet<_>>()
    {
        let duck = runs
            .iter()
            .find(|r| r.dataset == dataset && r.tool == "duckdb duckdb_ingest");
        for load in [Load::Full, Load::NoViews, Load::TablesOnly] {
            let ours = runs.iter().find(|r| r.dataset == dataset && r.tool == load.tool());
            if let (Some(o), Some(d)) = (ours, duck) {
                println!(
                    "{dataset}: {} throughput = {:.2}x DuckDB's landing",
                    load.tool(),
                    o.mib_per_s() / d.mib_per_s()
                );
            }
        }
    }
    for r in &runs {
        json.push(
            serde_json::json!({"dataset": r.dataset, "tool": r.tool, "input_mib": r.input_mib, "resources": r.resources,
            "seconds": r.seconds, "mib_per_s": r.mib_per_s(), "peak_rss_mib": r.peak_rss_mib, "stages": r.stages}),
        );
    }
    let _ = std::fs::write(
        root.join("target/bench-ingest.json"),
        serde_json::to_string_pretty(&json).unwrap_or_default(),
    );
}
