//! What the benchmarks share: running a command and measuring it.
// Each bench uses the fields it reports.
#![allow(dead_code)]

use std::process::{Command, Stdio};

/// In-process measurements run on the allocator the `fhirlake` binary ships
/// with (the library leaves the choice to its binary).
#[global_allocator]
static GLOBAL: fhirlake::allocator::MiMalloc = fhirlake::allocator::MiMalloc;

use std::time::Instant;

use fhirlake::cohort::CurrentEngine;
use fhirlake::warehouse::Warehouse;

/// The median of `values` (NaN when empty).
pub fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

/// What one run of a command cost.
pub struct Measured {
    /// Its standard output.
    pub stdout: String,
    /// Wall-clock seconds.
    pub wall: f64,
    /// User + system CPU seconds.
    pub cpu: f64,
    /// Peak resident set, MiB.
    pub peak_rss_mib: f64,
}

/// Runs `cmd` to completion and measures it with `wait4`'s resource usage.
#[allow(clippy::zombie_processes)] // reaped by wait4, which also yields its usage
pub fn run_measured(cmd: &mut Command) -> Measured {
    let started = Instant::now();
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn");
    let pid = child.id() as libc::pid_t;
    let stdout = child.stdout.expect("stdout");
    let reader = std::thread::spawn(move || std::io::read_to_string(stdout).unwrap_or_default());
    let mut status = 0;
    // SAFETY: plain FFI call on our own child's pid with valid out-pointers.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let wall = started.elapsed().as_secs_f64();
    assert!(
        rc == pid && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{cmd:?} failed"
    );
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Measured {
        stdout: reader.join().unwrap_or_default(),
        wall,
        cpu: secs(usage.ru_utime) + secs(usage.ru_stime),
        peak_rss_mib: usage.ru_maxrss as f64 / 1024.0,
    }
}

/// Runs a DuckDB peer script of `../shared/bench` as `SCRIPT DATA OUT
/// --threads 2` (OUT emptied first); returns its measurement and its last
/// stdout line parsed as JSON (the script's report). `None` (with a note)
/// when the script is absent.
pub fn run_shared_peer(
    script: &str,
    data: &std::path::Path,
    out: &std::path::Path,
) -> Option<(Measured, serde_json::Value)> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/bench")
        .join(script);
    if !script.exists() {
        eprintln!("SKIPPED: {} is absent", script.display());
        return None;
    }
    let _ = std::fs::remove_dir_all(out);
    let m = run_measured(Command::new("python3").args([
        script.to_str().unwrap_or_default(),
        data.to_str().unwrap_or_default(),
        out.to_str().unwrap_or_default(),
        "--threads",
        "2",
    ]));
    let report = serde_json::from_str(m.stdout.trim().lines().last().unwrap_or("{}")).ok()?;
    Some((m, report))
}

/// `../shared/data/synthea-615`, or `None` (with a note) when it is absent.
pub fn synthea_615() -> Option<std::path::PathBuf> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/synthea-615");
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!("SKIPPED: {} is absent", dir.display());
        None
    }
}

/// The benchmark work folder (`target/bench-data`) and the scaled copy of
/// `source` (`FHIRLAKE_BENCH_COPIES` copies, default `default_copies`),
/// generated with `fhirlake gen --gzip` when missing. Returns (work folder,
/// scaled dataset, copies).
pub fn scaled_dataset(
    source: &std::path::Path,
    default_copies: usize,
) -> (std::path::PathBuf, std::path::PathBuf, usize) {
    scaled_dataset_of(source, "synthea-615", default_copies)
}

/// [`scaled_dataset`] of `source`, named `name` in the work folder.
pub fn scaled_dataset_of(
    source: &std::path::Path,
    name: &str,
    default_copies: usize,
) -> (std::path::PathBuf, std::path::PathBuf, usize) {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let copies: usize = std::env::var("FHIRLAKE_BENCH_COPIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_copies);
    let work = root.join("target/bench-data");
    std::fs::create_dir_all(&work).expect("bench folder");
    let scaled = work.join(format!("{name}x{copies}"));
    if !scaled.exists() {
        let status = Command::new(env!("CARGO_BIN_EXE_fhirlake"))
            .args([
                "gen",
                "--from",
                source.to_str().unwrap_or_default(),
                "--copies",
                &copies.to_string(),
                "--gzip",
                "--out",
            ])
            .arg(&scaled)
            .status()
            .expect("gen");
        assert!(status.success(), "fhirlake gen failed");
    }
    (work, scaled, copies)
}

/// DuckDB's cohort of `../shared/bench/duckdb_view.py`: a SNOMED Condition
/// AND an Encounter starting in 2020.
pub const DUCKDB_COHORT: [&str; 2] = [
    "Condition?code=http://snomed.info/sct|44054006",
    "Encounter?date=sa2019-12-31&date=lt2021-01-01",
];

/// `runs` requests of `filters` in one process over the warehouse at `url`,
/// the way the server answers them: each asks [`CurrentEngine`] for the
/// engine of the newest version (a manifest listing; the engine is built on
/// the first request). Returns (patients, first request s, median of the
/// others s).
pub fn cohort_in_process(url: &str, filters: &[&str], runs: usize) -> (usize, f64, f64) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let current = CurrentEngine::new(Warehouse::open(url).expect("warehouse"));
        let mut times = Vec::new();
        let mut patients = 0;
        for _ in 0..runs.max(2) {
            let started = Instant::now();
            let engine = current.get().await.expect("engine");
            patients = engine.evaluate(filters, None).await.expect("cohort").patients.len();
            times.push(started.elapsed().as_secs_f64());
        }
        let first = times.remove(0);
        times.sort_by(f64::total_cmp);
        (patients, first, times[times.len() / 2])
    })
}

/// The `fhirlake` binary of this build.
pub fn fhirlake() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fhirlake"))
}

/// `fhirlake --warehouse WAREHOUSE sql --format csv`, waiting for its query.
pub fn sql_csv(warehouse: &std::path::Path) -> Command {
    let mut command = fhirlake();
    command.args([
        "--warehouse",
        warehouse.to_str().unwrap_or_default(),
        "sql",
        "--format",
        "csv",
    ]);
    command
}

/// A `fhirlake serve` on a loopback port, stopped when dropped.
pub struct Server {
    child: std::process::Child,
    /// Its base URL.
    pub base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `fhirlake serve` over `warehouse` with `extra` flags.
pub fn start_server(warehouse: &std::path::Path, extra: &[&str]) -> Server {
    use std::io::BufRead;
    let mut child = fhirlake()
        .args(["--warehouse", warehouse.to_str().unwrap_or_default(), "serve"])
        .args(["--addr", "127.0.0.1:0"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("serve");
    let mut reader = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    // Other fronts (`--pg-addr`) announce themselves before the HTTP one.
    let base = loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("address line");
        if let Some(base) = line.trim().strip_prefix("fhirlake listening on ") {
            break base.to_string();
        }
        assert!(!line.is_empty(), "fhirlake serve stopped before listening");
    };
    Server { child, base }
}

/// Bytes of the files under `dir` (recursively).
pub fn bytes_under(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .filter_map(Result::ok)
        .map(|e| {
            let path = e.path();
            if path.is_dir() {
                bytes_under(&path)
            } else {
                e.metadata().map(|m| m.len()).unwrap_or(0)
            }
        })
        .sum()
}

/// A folder `work/name` holding the files of `source` whose names start
/// with one of `prefixes` (copied once): a dataset of some types only.
pub fn types_subset(
    source: &std::path::Path,
    work: &std::path::Path,
    name: &str,
    prefixes: &[&str],
) -> std::path::PathBuf {
    let subset = work.join(name);
    std::fs::create_dir_all(&subset).expect("mkdir");
    for entry in std::fs::read_dir(source).expect("source").filter_map(Result::ok) {
        let file = entry.file_name().to_string_lossy().to_string();
        if prefixes.iter().any(|p| file.starts_with(p)) && !subset.join(&file).exists() {
            std::fs::copy(entry.path(), subset.join(&file)).expect("copy");
        }
    }
    subset
}

/// The warehouse `warehouse`, loaded from `data` with `fhirlake load` when
/// it does not exist yet.
pub fn loaded_warehouse(warehouse: &std::path::Path, data: &std::path::Path) {
    if warehouse.exists() {
        return;
    }
    let status = fhirlake()
        .args(["--warehouse", warehouse.to_str().unwrap_or_default(), "load", "--quiet"])
        .arg(data)
        .status()
        .expect("load");
    assert!(status.success(), "fhirlake load {} failed", data.display());
}
