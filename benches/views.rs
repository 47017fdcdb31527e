//! View benchmark: the three ViewDefinitions of `../shared/bench/views` run by
//! `fhirlake view run` over a loaded warehouse, against the `views` phase of
//! `../shared/bench/duckdb_view.py` on the same data in the same run.
//!
//! Run: `cargo bench --bench views` (env `FHIRLAKE_BENCH_COPIES`, default 4,
//! scales the generated dataset under `target/bench-data/`;
//! `FHIRLAKE_BENCH_ROUNDS`, default 3, how many times the load of the three
//! types and DuckDB's script run, alternately: their medians are reported).
//! Reports resources per CPU-second (user + system time of the process) and
//! wall time.

use std::path::{Path, PathBuf};
mod common;

use std::process::Command;
use std::time::Instant;

use common::{median, run_measured};

fn run(cmd: &mut Command) -> (String, f64, f64) {
    let m = run_measured(cmd);
    (m.stdout, m.wall, m.cpu)
}

fn count(warehouse: &Path, table: &str) -> u64 {
    let (out, _, _) = run(Command::new(env!("CARGO_BIN_EXE_fhirlake")).args([
        "--warehouse",
        warehouse.to_str().unwrap(),
        "sql",
        "--format",
        "csv",
        &format!("SELECT count(*) FROM fhir.{table}"),
    ]));
    out.lines().nth(1).and_then(|l| l.trim().parse().ok()).unwrap_or(0)
}

/// In-process: parse + evaluate `view` over every line of the `resource_type`
/// files in `dir`, single-threaded; returns (resources, rows, seconds). This
/// is the view engine's own cost, without process start or warehouse I/O.
fn in_process(dir: &Path, view: &Path, resource_type: &str) -> (u64, u64, f64) {
    use std::io::Read;
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(view).expect("view")).expect("json");
    let definition = fhirlake::view::ViewDefinition::from_json(&json).expect("valid view");
    let runner = fhirlake::view::ViewRunner::new(&definition).expect("runner");
    let mut lines = Vec::new();
    for entry in std::fs::read_dir(dir).expect("dir").flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if !name.starts_with(&format!("{resource_type}.")) {
            continue;
        }
        let mut text = String::new();
        let file = std::fs::File::open(entry.path()).expect("open");
        if name.ends_with(".gz") {
            flate2::read::MultiGzDecoder::new(file)
                .read_to_string(&mut text)
                .expect("gunzip");
        } else {
            std::io::BufReader::new(file).read_to_string(&mut text).expect("read");
        }
        lines.extend(text.lines().map(str::to_string));
    }
    let started = Instant::now();
    let mut rows = 0u64;
    for line in &lines {
        let value = fhirlake::json::parse(line).expect("json");
        rows += runner.rows(&value).expect("rows").len() as u64;
    }
    (lines.len() as u64, rows, started.elapsed().as_secs_f64())
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let shared = root.join("../shared");
    let source = shared.join("data/synthea-615");
    if !source.exists() {
        eprintln!("SKIPPED: {} is absent", source.display());
        return;
    }
    let (work, scaled, copies) = common::scaled_dataset(&source, 4);
    let rounds: usize = std::env::var("FHIRLAKE_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3)
        .max(1);
    println!("| dataset | tool | view | resources | rows | wall s | CPU s | resources / CPU-s |");
    println!("|---|---|---|---:|---:|---:|---:|---:|");
    for (name, data) in [
        ("synthea-615".to_string(), source.clone()),
        (format!("synthea-615x{copies}"), scaled),
    ] {
        let wh = work.join(format!("views-wh-{name}"));
        let _ = std::fs::remove_dir_all(&wh);
        run(Command::new(env!("CARGO_BIN_EXE_fhirlake")).args([
            "--warehouse",
            wh.to_str().unwrap(),
            "load",
            "--quiet",
            data.to_str().unwrap(),
        ]));
        let mut total_wall = 0.0;
        for (view, table) in [
            ("patient_demographics", "patient"),
            ("condition_coding", "condition"),
            ("encounter_period", "encounter"),
        ] {
            let resources = count(&wh, table);
            let def = shared.join("bench/views").join(format!("{view}.json"));
            let out = work.join(format!("{view}.parquet"));
            let (_, wall, cpu) = run(Command::new(env!("CARGO_BIN_EXE_fhirlake")).args([
                "--warehouse",
                wh.to_str().unwrap(),
                "view",
                "run",
                def.to_str().unwrap(),
                "--format",
                "parquet",
                "--output",
                out.to_str().unwrap(),
            ]));
            total_wall += wall;
            let rows =
                datafusion::parquet::file::reader::SerializedFileReader::new(std::fs::File::open(&out).expect("out"))
                    .map(|r| {
                        use datafusion::parquet::file::reader::FileReader;
                        r.metadata().file_metadata().num_rows()
                    })
                    .unwrap_or(0);
            println!(
                "| {name} | fhirlake view run | {view} | {resources} | {rows} | {wall:.3} | {cpu:.3} | {:.0} |",
                resources as f64 / cpu
            );
        }
        for (view, resource_type) in [
            ("patient_demographics", "Patient"),
            ("condition_coding", "Condition"),
            ("encounter_period", "Encounter"),
        ] {
            let def = shared.join("bench/views").join(format!("{view}.json"));
            let (resources, rows, secs) = in_process(&data, &def, resource_type);
            println!(
                "| {name} | fhirlake engine in-process (parse + view, 1 thread) | {view} | {resources} | {rows} | {secs:.3} | {secs:.3} | {:.0} |",
                resources as f64 / secs
            );
        }
        // The view phase as fhirlake runs it: views computed during the load
        // from the same parse. The load reports the worker time spent on view
        // rows (evaluation, Arrow batches, Parquet encoding) itself; the
        // difference of two loads was smaller than this VM's noise.
        let bench_views = shared.join("bench/views");
        let wh = work.join(format!("views-phase-{name}"));
        let _ = std::fs::remove_dir_all(&wh);
        let (out, wall, cpu) = run(Command::new(env!("CARGO_BIN_EXE_fhirlake")).args([
            "--warehouse",
            wh.to_str().unwrap(),
            "load",
            "--quiet",
            "--json",
            "--no-shipped-views",
            "--views",
            bench_views.to_str().unwrap(),
            data.to_str().unwrap(),
        ]));
        let report: serde_json::Value = serde_json::from_str(&out).expect("load --json");
        let stage = |key: &str| report["stages"][key].as_f64().unwrap_or(f64::NAN);
        let views_worker = stage("views_seconds");
        let view_resources: u64 = ["Patient", "Condition", "Encounter"]
            .iter()
            .map(|t| report["tables"][*t]["loaded"].as_u64().unwrap_or(0))
            .sum();
        println!(
            "| {name} | fhirlake load with the 3 views: view stage (worker time) | all | {view_resources} | | {:.3} (load {wall:.3}) | {views_worker:.3} (load {cpu:.3}) | {:.0} |",
            views_worker / 2.0,
            view_resources as f64 / views_worker
        );
        println!(
            "{name}: load stages (worker s): parse {:.3}, views {views_worker:.3}, index {:.3}, tables {:.3}",
            stage("parse_seconds"),
            stage("index_seconds"),
            stage("tables_seconds"),
        );
        // End to end, as DuckDB's script does it: NDJSON of the three types
        // to the three view tables (no index, no other views), compared with
        // DuckDB's load + views phases.
        let mut type_files: Vec<String> = std::fs::read_dir(&data)
            .expect("data dir")
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                let name = p
                    .file_name()
                    .map(|n| n.to_string_lossy().to_string())
                    .unwrap_or_default();
                ["Patient.", "Condition.", "Encounter."]
                    .iter()
                    .any(|t| name.starts_with(t))
            })
            .map(|p| p.display().to_string())
            .collect();
        type_files.sort();
        // That load and DuckDB's script, alternately, `rounds` times: the
        // medians go in the report (this VM's speed drifts between runs).
        let mut e2e_walls = Vec::new();
        let mut e2e_stages = Vec::new();
        let mut duck_views = Vec::new();
        let mut duck_loads = Vec::new();
        for round in 0..rounds {
            let e2e_wh = work.join(format!("views-e2e-{name}"));
            let _ = std::fs::remove_dir_all(&e2e_wh);
            let mut args = vec![
                "--warehouse".to_string(),
                e2e_wh.display().to_string(),
                "load".into(),
                "--quiet".into(),
                "--no-index".into(),
                "--no-shipped-views".into(),
                "--views".into(),
                bench_views.display().to_string(),
                "--json".into(),
            ];
            args.extend(type_files.iter().cloned());
            let (e2e_out, e2e_wall, _) = run(Command::new(env!("CARGO_BIN_EXE_fhirlake")).args(&args));
            // The view stage of that load: the same work as DuckDB's script
            // (the three types, the three views), without the other types'
            // index and tables sharing the workers' caches.
            let e2e_report: serde_json::Value = serde_json::from_str(&e2e_out).unwrap_or_default();
            let stage = e2e_report["stages"]["views_seconds"].as_f64().unwrap_or(f64::NAN);
            e2e_walls.push(e2e_wall);
            e2e_stages.push(stage);
            let script = shared.join("bench/duckdb_view.py");
            let (mut views_s, mut load_s) = (f64::NAN, f64::NAN);
            if script.exists() {
                let out_dir = work.join(format!("duck-views-{name}"));
                let (out, _, _) = run(Command::new("python3").args([
                    script.to_str().unwrap(),
                    data.to_str().unwrap(),
                    out_dir.to_str().unwrap(),
                    "--threads",
                    "2",
                ]));
                let report: serde_json::Value =
                    serde_json::from_str(out.trim().lines().last().unwrap_or("{}")).unwrap_or_default();
                views_s = report["timings"]["views_s"].as_f64().unwrap_or(f64::NAN);
                load_s = report["timings"]["load_s"].as_f64().unwrap_or(f64::NAN);
                duck_views.push(views_s);
                duck_loads.push(load_s);
            }
            if rounds > 1 {
                println!(
                    "round {round}: {name}: view stage {stage:.3} worker-s ({:.3} s on 2 workers), load {e2e_wall:.3} s; DuckDB views {views_s:.3} s, load {load_s:.3} s",
                    stage / 2.0
                );
            }
        }
        let (e2e_wall, e2e_views_worker) = (median(&mut e2e_walls), median(&mut e2e_stages));
        println!(
            "| {name} | fhirlake load of Patient, Condition, Encounter with only the 3 views, no index (NDJSON → view tables) | all | {view_resources} | | {e2e_wall:.3} | | |"
        );
        println!(
            "| {name} | fhirlake load of the 3 types with the 3 views, no index: view stage (worker time) | all | {view_resources} | | {:.3} | {e2e_views_worker:.3} | {:.0} |",
            e2e_views_worker / 2.0,
            view_resources as f64 / e2e_views_worker
        );
        if !duck_views.is_empty() {
            let (views_s, load_s) = (median(&mut duck_views), median(&mut duck_loads));
            println!(
                "| {name} | duckdb views phase (3 views, after a {load_s:.2} s load) | all | | | {views_s:.3} | | |"
            );
            println!(
                "{name}: fhirlake 3 views wall {total_wall:.3} s (incl. process start, Parquet scan + parse) vs DuckDB views phase {views_s:.3} s"
            );
            println!(
                "{name}: view stage inside fhirlake load {views_worker:.3} worker-s ({:.3} s on 2 workers) vs DuckDB views phase {views_s:.3} s wall on 2 threads",
                views_worker / 2.0
            );
            println!(
                "{name}: view stage inside the 3-type load {e2e_views_worker:.3} worker-s ({:.3} s on 2 workers) vs DuckDB views phase {views_s:.3} s wall on 2 threads: {:.2}x DuckDB's time (medians of {rounds})",
                e2e_views_worker / 2.0,
                e2e_views_worker / 2.0 / views_s
            );
            println!(
                "{name}: NDJSON → 3 view tables: fhirlake {e2e_wall:.3} s vs DuckDB load + views {:.3} s ({:.2}x)",
                load_s + views_s,
                (load_s + views_s) / e2e_wall
            );
        }
    }
}
