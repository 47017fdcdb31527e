//! S3 benchmark: `fhirlake load` with the source and/or the warehouse on a
//! loopback S3-compatible server (`s3s-fs`, SigV4 checked) against the same
//! load from and to local disk, in the same run.
//!
//! Run: `cargo bench --bench s3_load` (needs `s3s-fs`: `scripts/test.sh`
//! installs it into `~/.cache/fhirlake/tools`; env `FHIRLAKE_BENCH_COPIES`,
//! default 4, sets the scale of the generated dataset). Results are printed
//! as a Markdown table and written to `target/bench-s3.json`.
//!
//! After each full S3 → S3 load it also times DuckDB's cohort of the cohort
//! bench over the S3 warehouse, ten requests in one process (the way `serve`
//! answers them), with the in-memory read cache and without it
//! (`FHIRLAKE_READ_CACHE_MB=0`). The cache is process-wide, so each setting
//! runs in a child process of this bench.

mod common;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::run_measured;

const ACCESS_KEY: &str = "fhirlake-bench";
const SECRET_KEY: &str = "fhirlake-bench-secret";

struct Run {
    dataset: String,
    mode: &'static str,
    source: &'static str,
    warehouse: &'static str,
    input_mib: f64,
    resources: u64,
    seconds: f64,
    peak_rss_mib: f64,
}

fn s3s_binary() -> Option<PathBuf> {
    let home = std::env::var("HOME").unwrap_or_default();
    [
        std::env::var("FHIRLAKE_S3S_FS").ok().map(PathBuf::from),
        Some(PathBuf::from(format!("{home}/.cache/fhirlake/tools/bin/s3s-fs"))),
        Some(PathBuf::from(format!("{home}/.cargo/bin/s3s-fs"))),
    ]
    .into_iter()
    .flatten()
    .find(|p| p.is_file())
}

/// Copies (hard-links where possible) the NDJSON files of `dataset` into `dir`.
fn seed(dataset: &Path, dir: &Path) {
    std::fs::create_dir_all(dir).expect("bucket prefix");
    for entry in std::fs::read_dir(dataset).expect("dataset").flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if name.ends_with(".ndjson") || name.ends_with(".ndjson.gz") {
            let target = dir.join(&name);
            if !target.exists() && std::fs::hard_link(entry.path(), &target).is_err() {
                std::fs::copy(entry.path(), &target).expect("copy");
            }
        }
    }
}

/// Set in the child process that times cohorts over this S3 warehouse.
const COHORT_CHILD: &str = "FHIRLAKE_BENCH_S3_COHORT";

/// In the child: ten requests of DuckDB's cohort over the warehouse at
/// `url`, printed as JSON (patients, first s, median of the other nine s).
fn time_cohorts(url: &str) {
    let (patients, first, median) = common::cohort_in_process(url, &common::DUCKDB_COHORT, 10);
    println!(
        "{}",
        serde_json::json!({"patients": patients, "first_s": first, "median_s": median})
    );
}

/// Runs [`time_cohorts`] in a child process with the read cache set to
/// `cache_mb` (`None`: the default).
fn cohort_child(url: &str, endpoint: &str, cache_mb: Option<&str>) -> serde_json::Value {
    let mut command = Command::new(std::env::current_exe().expect("bench binary"));
    command
        .env(COHORT_CHILD, url)
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("AWS_ENDPOINT_URL", endpoint)
        .env_remove("FHIRLAKE_READ_CACHE_MB");
    if let Some(mb) = cache_mb {
        command.env("FHIRLAKE_READ_CACHE_MB", mb);
    }
    let output = command.output().expect("cohort child");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("cohort child output")
}

fn main() {
    if let Ok(url) = std::env::var(COHORT_CHILD) {
        time_cohorts(&url);
        return;
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let Some(shared) = common::synthea_615() else {
        return;
    };
    let Some(binary) = s3s_binary() else {
        eprintln!("SKIPPED: s3s-fs is not installed (scripts/test.sh installs it)");
        return;
    };
    let (work, scaled, copies) = common::scaled_dataset(&shared, 4);
    let s3_data = work.join("s3");
    let _ = std::fs::remove_dir_all(&s3_data);
    std::fs::create_dir_all(s3_data.join("warehouse")).expect("bucket");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let mut server: Child = Command::new(&binary)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
        .arg(&s3_data)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start s3s-fs");
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed() < Duration::from_secs(20), "s3s-fs did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let endpoint = format!("http://127.0.0.1:{port}");

    let mut runs = Vec::new();
    let mut cohorts = Vec::new();
    let datasets = [
        ("synthea-615".to_string(), shared.clone()),
        (format!("synthea-615x{copies}"), scaled.clone()),
    ];
    for (name, data) in &datasets {
        seed(data, &s3_data.join("lake").join(name));
        for (mode, extra) in [
            ("full", &[][..]),
            ("resources only", &["--no-index", "--no-shipped-views"][..]),
        ] {
            for (source, warehouse) in [("local", "local"), ("s3", "local"), ("local", "s3"), ("s3", "s3")] {
                let local_wh = work.join(format!("wh-s3bench-{name}"));
                let _ = std::fs::remove_dir_all(&local_wh);
                let _ = std::fs::remove_dir_all(s3_data.join("warehouse").join(name));
                let wh = match warehouse {
                    "local" => local_wh.display().to_string(),
                    _ => format!("s3://warehouse/{name}"),
                };
                let src = match source {
                    "local" => data.display().to_string(),
                    _ => format!("s3://lake/{name}/"),
                };
                let mut args = vec!["--warehouse", wh.as_str(), "load", "--quiet", "--json", src.as_str()];
                args.extend_from_slice(extra);
                let m = run_measured(
                    Command::new(env!("CARGO_BIN_EXE_fhirlake"))
                        .args(&args)
                        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
                        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
                        .env("AWS_ENDPOINT_URL", &endpoint),
                );
                let report: serde_json::Value = serde_json::from_str(m.stdout.trim()).expect("load --json output");
                runs.push(Run {
                    dataset: name.clone(),
                    mode,
                    source,
                    warehouse,
                    input_mib: report["ndjson_bytes"].as_f64().unwrap_or(0.0) / 1048576.0,
                    resources: report["resources"].as_u64().unwrap_or(0),
                    seconds: m.wall,
                    peak_rss_mib: m.peak_rss_mib,
                });
                if mode == "full" && warehouse == "s3" && source == "s3" {
                    for (label, cache_mb) in [("read cache", None), ("no read cache", Some("0"))] {
                        let timing = cohort_child(&wh, &endpoint, cache_mb);
                        cohorts.push((name.clone(), label, timing));
                    }
                }
            }
        }
    }
    let _ = server.kill();
    let _ = server.wait();

    println!(
        "| dataset | load | source | warehouse | NDJSON MiB | resources | seconds | MiB/s | vs local→local | peak RSS MiB |"
    );
    println!("|---|---|---|---|---:|---:|---:|---:|---:|---:|");
    let mut json = Vec::new();
    for r in &runs {
        let baseline = runs
            .iter()
            .find(|b| b.dataset == r.dataset && b.mode == r.mode && b.source == "local" && b.warehouse == "local")
            .map_or(f64::NAN, |b| b.seconds);
        let ratio = baseline / r.seconds;
        println!(
            "| {} | {} | {} | {} | {:.1} | {} | {:.2} | {:.1} | {:.2}x | {:.0} |",
            r.dataset,
            r.mode,
            r.source,
            r.warehouse,
            r.input_mib,
            r.resources,
            r.seconds,
            r.input_mib / r.seconds,
            ratio,
            r.peak_rss_mib
        );
        json.push(
            serde_json::json!({"dataset": r.dataset, "load": r.mode, "source": r.source,
            "warehouse": r.warehouse, "input_mib": r.input_mib, "resources": r.resources,
            "seconds": r.seconds, "throughput_vs_local": ratio, "peak_rss_mib": r.peak_rss_mib}),
        );
    }
    println!();
    println!("| dataset | cohort over the S3 warehouse | patients | first request s | median of 9 more s |");
    println!("|---|---|---:|---:|---:|");
    let mut cohort_json = Vec::new();
    for (name, label, timing) in &cohorts {
        println!(
            "| {name} | {label} | {} | {:.4} | {:.4} |",
            timing["patients"],
            timing["first_s"].as_f64().unwrap_or(f64::NAN),
            timing["median_s"].as_f64().unwrap_or(f64::NAN)
        );
        cohort_json.push(serde_json::json!({"dataset": name, "setting": label, "timing": timing}));
    }
    let _ = std::fs::write(
        root.join("target/bench-s3.json"),
        serde_json::to_string_pretty(&serde_json::json!({"loads": json, "cohorts": cohort_json})).unwrap_or_default(),
    );
}
