//! Cohort benchmark: `fhirlake cohort` latency for single and multi-filter
//! expressions against the cohort phase of DuckDB's hand-written SQL
//! (`../shared/bench/duckdb_view.py`), on the same data in the same run, plus
//! the search index's size as a share of the raw NDJSON.
//!
//! Run: `cargo bench --bench cohort` (env `FHIRLAKE_BENCH_COPIES`, default
//! 163: 615 × 163 = 100,245 patients; `FHIRLAKE_BENCH_ALTERNATIONS`, default
//! 2: in-process timing runs per tool). Data is generated under
//! `target/bench-data/` by `fhirlake gen`, never committed. Results are
//! printed as Markdown and written to `target/bench-cohort.json`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::run_measured;

/// The filters timed: (label, expressions). The first is DuckDB's cohort
/// (a SNOMED Condition AND an Encounter starting in 2020).
const QUERIES: &[(&str, &[&str])] = &[
    (
        "duckdb cohort: T2 diabetes AND encounter starting in 2020",
        &common::DUCKDB_COHORT,
    ),
    (
        "C1 prediabetes (1 token)",
        &["Condition?code=http://snomed.info/sct|15777000"],
    ),
    ("P1 female (Patient)", &["Patient?gender=female"]),
    (
        "O1 HbA1c > 6.5 (token + quantity, same Observation)",
        &["Observation?code=http://loinc.org|4548-4&value-quantity=gt6.5"],
    ),
    (
        "E3 encounters in 2019 (2 dates)",
        &["Encounter?date=ge2019-01-01&date=lt2020-01-01"],
    ),
    (
        "X1 female AND prediabetes (2 filters)",
        &[
            "Patient?gender=female",
            "Condition?code=http://snomed.info/sct|15777000",
        ],
    ),
    (
        "_has: patients with a BMI Observation",
        &["Patient?_has:Observation:patient:code=http://loinc.org|39156-5"],
    ),
];

struct Timing {
    dataset: String,
    label: String,
    patients: u64,
    seconds: f64,
}

fn fhirlake(args: &[&str]) -> common::Measured {
    run_measured(Command::new(env!("CARGO_BIN_EXE_fhirlake")).args(args))
}

/// Loads `data` into a fresh warehouse; returns (warehouse, NDJSON bytes, seconds).
fn load(data: &Path, work: &Path, name: &str) -> (PathBuf, f64, f64) {
    let wh = work.join(format!("cohort-wh-{name}"));
    let _ = std::fs::remove_dir_all(&wh);
    let m = fhirlake(&[
        "--warehouse",
        wh.to_str().unwrap_or_default(),
        "load",
        "--quiet",
        "--json",
        data.to_str().unwrap_or_default(),
    ]);
    let report: serde_json::Value = serde_json::from_str(&m.stdout).expect("load --json");
    (wh, report["ndjson_bytes"].as_f64().unwrap_or(0.0), m.wall)
}

/// Uncompressed NDJSON bytes of a dataset folder.
fn ndjson_size(dir: &Path) -> f64 {
    let mut bytes = 0u64;
    for entry in std::fs::read_dir(dir).expect("data dir").flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let Ok(file) = std::fs::File::open(entry.path()) else {
            continue;
        };
        bytes += if name.ends_with(".gz") {
            std::io::copy(&mut flate2::read::MultiGzDecoder::new(file), &mut std::io::sink()).unwrap_or(0)
        } else if name.ends_with(".ndjson") {
            entry.metadata().map(|m| m.len()).unwrap_or(0)
        } else {
            0
        };
    }
    bytes as f64
}

/// Bytes of the index tables in the latest manifest of `wh`.
fn index_bytes(wh: &Path) -> f64 {
    let dir = wh.join("_manifest");
    let latest = std::fs::read_dir(&dir)
        .expect("manifests")
        .flatten()
        .map(|e| e.path())
        .max()
        .expect("a manifest");
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(latest).expect("read")).expect("json");
    manifest["tables"]
        .as_object()
        .expect("tables")
        .iter()
        .filter(|(name, _)| name.starts_with("index/"))
        .flat_map(|(_, t)| t["files"].as_array().cloned().unwrap_or_default())
        .map(|f| f["bytes"].as_f64().unwrap_or(0.0))
        .sum()
}

/// Best of three runs (the first also warms the page cache).
fn time_cohort(wh: &Path, filters: &[&str]) -> (u64, f64) {
    let mut best = f64::MAX;
    let mut patients = 0;
    for _ in 0..3 {
        let mut args = vec!["--warehouse", wh.to_str().unwrap_or_default(), "cohort"];
        args.extend_from_slice(filters);
        let m = fhirlake(&args);
        patients = m.stdout.trim().parse().expect("a count");
        best = best.min(m.wall);
    }
    (patients, best)
}

/// Requests per in-process timing run (the first is reported apart).
const IN_PROCESS_RUNS: usize = 30;

/// Alternating in-process timing runs of fhirlake and DuckDB: this VM's
/// speed drifts within minutes, so each tool is timed in both halves.
/// `FHIRLAKE_BENCH_ALTERNATIONS` asks for more, to narrow a close ratio.
fn alternations() -> usize {
    std::env::var("FHIRLAKE_BENCH_ALTERNATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2)
}

/// `benches/peer/duckdb_cohort_repeat.py` over the Parquet files DuckDB's
/// view script wrote to `out_dir`: (first s, median of the rest s).
fn duckdb_repeated(root: &Path, out_dir: &Path) -> Option<(f64, f64)> {
    let output = Command::new("python3")
        .arg(root.join("benches/peer/duckdb_cohort_repeat.py"))
        .arg(out_dir)
        .args(["--runs", &IN_PROCESS_RUNS.to_string()])
        .output()
        .ok()?;
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
    Some((report["first_s"].as_f64()?, report["median_s"].as_f64()?))
}

/// DuckDB's view script; returns (cohort patients, cohort seconds, total seconds).
fn duckdb(data: &Path, work: &Path, name: &str) -> Option<(u64, f64, f64)> {
    let (_, report) = common::run_shared_peer("duckdb_view.py", data, &work.join(format!("cohort-duck-{name}")))?;
    Some((
        report["cohort"]["patients"].as_u64()?,
        report["timings"]["cohort_s"].as_f64()?,
        report["timings"]["total_s"].as_f64()?,
    ))
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let Some(shared) = common::synthea_615() else {
        return;
    };
    let (work, scaled, copies) = common::scaled_dataset(&shared, 163);
    let mut timings = Vec::new();
    let mut summary = Vec::new();
    for (name, data) in [
        ("synthea-615".to_string(), shared.clone()),
        (format!("synthea-615x{copies}"), scaled.clone()),
    ] {
        // FHIRLAKE_BENCH_REUSE=1 keeps a warehouse an earlier run loaded.
        let reuse = work.join(format!("cohort-wh-{name}/_manifest"));
        let (wh, ndjson_bytes, load_seconds) = if std::env::var("FHIRLAKE_BENCH_REUSE").is_ok() && reuse.exists() {
            let ndjson: f64 = ndjson_size(&data);
            (work.join(format!("cohort-wh-{name}")), ndjson, f64::NAN)
        } else {
            load(&data, &work, &name)
        };
        let index = index_bytes(&wh);
        let patients: u64 = fhirlake(&[
            "--warehouse",
            wh.to_str().unwrap_or_default(),
            "sql",
            "--format",
            "csv",
            "SELECT count(*) AS n FROM fhir.patient",
        ])
        .stdout
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0);
        for (label, filters) in QUERIES {
            let (count, seconds) = time_cohort(&wh, filters);
            timings.push(Timing {
                dataset: name.clone(),
                label: label.to_string(),
                patients: count,
                seconds,
            });
        }
        let duck = duckdb(&data, &work, &name);
        // Each tool's medians of its alternations, averaged; the first
        // request of the first run.
        let mut ours = Vec::new();
        let mut theirs = Vec::new();
        let alternations = alternations();
        for _ in 0..alternations {
            ours.push(common::cohort_in_process(
                wh.to_str().unwrap_or_default(),
                QUERIES[0].1,
                IN_PROCESS_RUNS,
            ));
            theirs.extend(duckdb_repeated(&root, &work.join(format!("cohort-duck-{name}"))));
        }
        let warm_patients = ours[0].0;
        let first = ours[0].1;
        let warm = ours.iter().map(|r| r.2).sum::<f64>() / ours.len() as f64;
        let duck_repeated = (!theirs.is_empty()).then(|| {
            (
                theirs[0].0,
                theirs.iter().map(|r| r.1).sum::<f64>() / theirs.len() as f64,
            )
        });
        println!(
            "{name}: DuckDB's cohort in one process, {alternations} alternating runs of {IN_PROCESS_RUNS} requests each: fhirlake first {first:.4} s, then median {warm:.4} s ({warm_patients} patients; run medians {:?}); DuckDB {} (run medians {:?})",
            ours.iter().map(|r| (r.2 * 1e4).round() / 1e4).collect::<Vec<_>>(),
            duck_repeated.map_or("–".into(), |(f, m)| format!("first {f:.4} s, then median {m:.4} s")),
            theirs.iter().map(|r| (r.1 * 1e4).round() / 1e4).collect::<Vec<_>>(),
        );
        if let Some((duck_patients, _, _)) = duck {
            assert_eq!(
                timings
                    .iter()
                    .find(|t| t.dataset == name && t.label == QUERIES[0].0)
                    .map(|t| t.patients),
                Some(duck_patients),
                "fhirlake and DuckDB disagree on the cohort"
            );
        }
        summary.push(serde_json::json!({
            "dataset": name, "patients": patients, "ndjson_mib": ndjson_bytes / 1048576.0,
            "index_mib": index / 1048576.0, "index_ratio": index / ndjson_bytes,
            "load_seconds": load_seconds,
            "duckdb_cohort_patients": duck.map(|d| d.0), "duckdb_cohort_seconds": duck.map(|d| d.1),
            "duckdb_total_seconds": duck.map(|d| d.2),
            "in_process": {"first_s": first, "median_s": warm,
                "duckdb_first_s": duck_repeated.map(|d| d.0), "duckdb_median_s": duck_repeated.map(|d| d.1)},
        }));
    }
    println!(
        "| dataset | patients | NDJSON MiB | index MiB | index / NDJSON | fhirlake load s | DuckDB load+views+cohort s |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for s in &summary {
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.1} % | {:.1} | {} |",
            s["dataset"].as_str().unwrap_or_default(),
            s["patients"],
            s["ndjson_mib"].as_f64().unwrap_or(0.0),
            s["index_mib"].as_f64().unwrap_or(0.0),
            100.0 * s["index_ratio"].as_f64().unwrap_or(0.0),
            s["load_seconds"].as_f64().unwrap_or(0.0),
            s["duckdb_total_seconds"]
                .as_f64()
                .map_or("–".into(), |v| format!("{v:.1}")),
        );
    }
    println!();
    println!(
        "| dataset | cohort | patients | fhirlake cohort s (process, best of 3) | DuckDB cohort phase s | DuckDB s / fhirlake s |"
    );
    println!("|---|---|---:|---:|---:|---:|");
    for t in &timings {
        let duck = summary
            .iter()
            .find(|s| s["dataset"] == t.dataset.as_str())
            .and_then(|s| s["duckdb_cohort_seconds"].as_f64())
            .filter(|_| t.label == QUERIES[0].0);
        println!(
            "| {} | {} | {} | {:.3} | {} | {} |",
            t.dataset,
            t.label,
            t.patients,
            t.seconds,
            duck.map_or("–".into(), |d| format!("{d:.3}")),
            duck.map_or("–".into(), |d| format!("{:.2}", d / t.seconds)),
        );
    }
    let json = serde_json::json!({
        "summary": summary,
        "timings": timings.iter().map(|t| serde_json::json!({
            "dataset": t.dataset, "cohort": t.label, "patients": t.patients, "seconds": t.seconds,
        })).collect::<Vec<_>>(),
    });
    let _ = std::fs::write(
        root.join("target/bench-cohort.json"),
        serde_json::to_string_pretty(&json).unwrap_or_default(),
    );
}
