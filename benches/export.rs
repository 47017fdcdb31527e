//! Export benchmark: `fhirlake export` of a Group holding half the patients
//! (NDJSON and Parquet) against DuckDB `COPY` of the same compartment rows
//! from the same warehouse files (`benches/peer/duckdb_export.py`), in the
//! same run: seconds, resources/s, MiB/s written, peak RSS.
//!
//! Run: `cargo bench --bench export` (env `FHIRLAKE_BENCH_COPIES`, default 8,
//! for the scaled set; `FHIRLAKE_BENCH_REUSE=1` keeps loaded warehouses).
//! Data is generated under `target/bench-data/`, never committed. Results
//! are printed as Markdown and written to `target/bench-export.json`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Measured, run_measured};

fn fhirlake(args: &[&str]) -> Measured {
    run_measured(Command::new(env!("CARGO_BIN_EXE_fhirlake")).args(args))
}

/// Loads `data` plus a Group of every other patient into a warehouse;
/// returns (warehouse, members file).
fn prepare(data: &Path, work: &Path, name: &str) -> (PathBuf, PathBuf) {
    let wh = work.join(format!("export-wh-{name}"));
    let members = work.join(format!("export-members-{name}.txt"));
    let reuse = std::env::var("FHIRLAKE_BENCH_REUSE").is_ok_and(|v| v == "1");
    if reuse && wh.join("_manifest").is_dir() && members.is_file() {
        return (wh, members);
    }
    let _ = std::fs::remove_dir_all(&wh);
    let wh_arg = wh.to_str().unwrap_or_default();
    fhirlake(&[
        "--warehouse",
        wh_arg,
        "load",
        "--quiet",
        data.to_str().unwrap_or_default(),
    ]);
    let ids = fhirlake(&[
        "--warehouse",
        wh_arg,
        "sql",
        "--format",
        "csv",
        "SELECT id FROM fhir.patient ORDER BY id",
    ]);
    let half: Vec<&str> = ids.stdout.lines().skip(1).step_by(2).collect();
    std::fs::write(&members, half.join("\n") + "\n").expect("members file");
    let group = serde_json::json!({
        "resourceType": "Group", "id": "half", "type": "person", "actual": true,
        "member": half.iter().map(|id| serde_json::json!({"entity": {"reference": format!("Patient/{id}")}})).collect::<Vec<_>>(),
    });
    let group_dir = work.join(format!("export-group-{name}"));
    std::fs::create_dir_all(&group_dir).expect("group folder");
    std::fs::write(group_dir.join("Group.ndjson"), format!("{group}\n")).expect("group file");
    fhirlake(&[
        "--warehouse",
        wh_arg,
        "load",
        "--quiet",
        group_dir.to_str().unwrap_or_default(),
    ]);
    (wh, members)
}

struct Row {
    dataset: String,
    tool: String,
    format: String,
    rows: u64,
    bytes: f64,
    seconds: f64,
    rss: f64,
}

fn bench(data: &Path, work: &Path, name: &str, rows: &mut Vec<Row>) {
    let (wh, members) = prepare(data, work, name);
    for format in ["ndjson", "parquet"] {
        let out = work.join(format!("export-out-{name}-{format}"));
        let _ = std::fs::remove_dir_all(&out);
        let m = fhirlake(&[
            "--warehouse",
            wh.to_str().unwrap_or_default(),
            "export",
            "--group",
            "half",
            "--format",
            format,
            "--out",
            out.to_str().unwrap_or_default(),
        ]);
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("manifest.json")).expect("manifest")).expect("json");
        let files = manifest["output"].as_array().cloned().unwrap_or_default();
        let count: u64 = files.iter().map(|f| f["count"].as_u64().unwrap_or(0)).sum();
        let bytes: u64 = files
            .iter()
            .filter_map(|f| std::fs::metadata(out.join(f["url"].as_str().unwrap_or_default())).ok())
            .map(|m| m.len())
            .sum();
        rows.push(Row {
            dataset: name.into(),
            tool: "fhirlake".into(),
            format: format.into(),
            rows: count,
            bytes: bytes as f64,
            seconds: m.wall,
            rss: m.peak_rss_mib,
        });
        let _ = std::fs::remove_dir_all(&out);

        let duck_out = work.join(format!("export-duckdb-{name}-{format}"));
        let _ = std::fs::remove_dir_all(&duck_out);
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/peer/duckdb_export.py");
        let m = run_measured(Command::new("python3").args([
            script.to_str().unwrap_or_default(),
            wh.to_str().unwrap_or_default(),
            members.to_str().unwrap_or_default(),
            duck_out.to_str().unwrap_or_default(),
            "--format",
            format,
        ]));
        let report: serde_json::Value = serde_json::from_str(m.stdout.trim()).expect("duckdb report");
        rows.push(Row {
            dataset: name.into(),
            tool: "duckdb COPY".into(),
            format: format.into(),
            rows: report["rows"].as_u64().unwrap_or(0),
            bytes: report["bytes"].as_f64().unwrap_or(0.0),
            seconds: report["seconds"].as_f64().unwrap_or(0.0),
            rss: m.peak_rss_mib,
        });
        let _ = std::fs::remove_dir_all(&duck_out);
    }
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let Some(source) = common::synthea_615() else {
        return;
    };
    let (work, scaled, copies) = common::scaled_dataset(&source, 8);
    let mut rows = Vec::new();
    bench(&source, &work, "synthea-615", &mut rows);
    bench(&scaled, &work, &format!("synthea-615x{copies}"), &mut rows);
    println!("| dataset | tool | format | resources | MiB written | seconds | resources/s | MiB/s | peak RSS MiB |");
    println!("|---|---|---|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {} | {:.0} | {:.2} | {:.0} | {:.0} | {:.0} |",
            r.dataset,
            r.tool,
            r.format,
            r.rows,
            r.bytes / 1048576.0,
            r.seconds,
            r.rows as f64 / r.seconds,
            r.bytes / 1048576.0 / r.seconds,
            r.rss
        );
    }
    let json: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            serde_json::json!({"dataset": r.dataset, "tool": r.tool, "format": r.format, "resources": r.rows,
                "bytes": r.bytes, "seconds": r.seconds, "peak_rss_mib": r.rss})
        })
        .collect();
    let _ = std::fs::write(
        root.join("target/bench-export.json"),
        serde_json::to_vec_pretty(&json).unwrap_or_default(),
    );
}
