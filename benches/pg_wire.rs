//! One view's rows over the Postgres wire protocol: fhirlake's front
//! (`serve --pg-addr`) against a real PostgreSQL server (Debian's, started
//! here on a loopback port) holding the same rows, read by the same
//! psycopg client (`benches/peer/pg_fetch.py`) in the same run.
//!
//! `cargo bench --bench pg_wire` (needs ../shared/data, PostgreSQL's
//! server binaries under /usr/lib/postgresql, `runuser`, and a Python with
//! psycopg: `FHIRLAKE_PYTHON`, default the test script's virtualenv).
//! Rows: the `observation` view of the Observations of synthea-615 ×
//! `FHIRLAKE_BENCH_COPIES` (default 12: ~1.06 M rows).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{loaded_warehouse, median, scaled_dataset_of, types_subset};
use serde_json::Value;

const QUERY: &str = "SELECT * FROM observation";
const RUNS: &str = "3";

fn python() -> Option<PathBuf> {
    let python = std::env::var_os("FHIRLAKE_PYTHON").map(PathBuf::from).or_else(|| {
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/fhirlake/tools/pg-venv/bin/python"))
    })?;
    python.exists().then_some(python)
}

fn postgres_bin() -> Option<PathBuf> {
    let root = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<PathBuf> = std::fs::read_dir(root)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|v| v.join("bin"))
        .filter(|b| b.join("initdb").exists())
}

/// Runs the fetch client against `port` as `user`.
fn fetch(python: &Path, port: u16, user: &str) -> (u64, f64) {
    let out = Command::new(python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/peer/pg_fetch.py"))
        .args([&port.to_string(), user, QUERY, RUNS])
        .output()
        .expect("pg_fetch.py");
    assert!(
        out.status.success(),
        "pg_fetch.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: Value = serde_json::from_slice(&out.stdout).expect("json");
    let mut seconds: Vec<f64> = answer["seconds"]
        .as_array()
        .expect("seconds")
        .iter()
        .filter_map(Value::as_f64)
        .collect();
    (answer["rows"].as_u64().unwrap_or(0), median(&mut seconds))
}

/// A PostgreSQL server in `dir` on `port` (as the `postgres` user: it
/// refuses to run as root), stopped when dropped.
struct Postgres {
    bin: PathBuf,
    data: PathBuf,
}

impl Postgres {
    fn start(bin: &Path, dir: &Path, port: u16) -> Self {
        let data = dir.join("pgdata");
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(&data).expect("mkdir");
        run(Command::new("chown").args(["-R", "postgres"]).arg(dir));
        let as_postgres = |program: &str| {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(bin.join(program));
            command
        };
        run(as_postgres("initdb")
            .args(["--auth=trust", "--encoding=UTF8", "--no-sync", "-D"])
            .arg(&data));
        let options = format!("-p {port} -k {} -c listen_addresses=127.0.0.1", dir.display());
        run(as_postgres("pg_ctl")
            .args(["-w", "-D"])
            .arg(&data)
            .args(["-o", &options, "-l"])
            .arg(dir.join("log"))
            .arg("start"));
        Self {
            bin: bin.to_path_buf(),
            data,
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .args(["-w", "-m", "fast", "-D"])
            .arg(&self.data)
            .arg("stop")
            .status();
    }
}

fn run(command: &mut Command) {
    let status = command.stdout(Stdio::null()).status().expect("run");
    assert!(status.success(), "{command:?} failed");
}

/// The view's columns with the PostgreSQL type holding the same values.
fn columns(warehouse: &Path) -> Vec<(String, &'static str)> {
    let out = common::sql_csv(warehouse)
        .arg("SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'observation' ORDER BY ordinal_position")
        .output()
        .expect("sql");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .filter_map(|line| {
            let (name, arrow) = line.split_once(',')?;
            let pg = match arrow {
                "Float64" => "double precision",
                "Int64" => "bigint",
                "Int32" => "integer",
                "Boolean" => "boolean",
                _ => "text",
            };
            Some((name.to_string(), pg))
        })
        .collect()
}

fn main() {
    let (Some(source), Some(python), Some(bin)) = (common::synthea_615(), python(), postgres_bin()) else {
        eprintln!("SKIPPED: needs ../shared/data, a Python with psycopg and PostgreSQL's server binaries");
        return;
    };
    let work = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-data");
    std::fs::create_dir_all(&work).expect("bench folder");
    let observations = types_subset(&source, &work, "observations-source", &["Observation", "Patient"]);
    let (work, scaled, copies) = scaled_dataset_of(&observations, "observations", 12);
    let warehouse = work.join(format!("pg-wire-warehouse-x{copies}"));
    loaded_warehouse(&warehouse, &scaled);

    // The same rows in PostgreSQL: the view exported as CSV, copied in.
    let csv = work.join(format!("observation-x{copies}.csv"));
    if !csv.exists() {
        let file = std::fs::File::create(&csv).expect("csv");
        let status = common::sql_csv(&warehouse)
            .arg(QUERY)
            .stdout(file)
            .status()
            .expect("export csv");
        assert!(status.success());
    }
    let pg_dir = std::env::temp_dir().join("fhirlake-bench-postgres");
    let (pg_port, fhirlake_port) = (55491u16, 55492u16);
    let postgres = Postgres::start(&bin, &pg_dir, pg_port);
    let columns = columns(&warehouse);
    let ddl = columns
        .iter()
        .map(|(n, t)| format!("\"{n}\" {t}"))
        .collect::<Vec<_>>()
        .join(", ");
    let psql = |sql: &str| {
        run(Command::new(bin.join("psql")).args([
            "-h",
            "127.0.0.1",
            "-p",
            &pg_port.to_string(),
            "-U",
            "postgres",
            "-X",
            "-q",
            "-c",
            sql,
        ]));
    };
    psql(&format!("CREATE TABLE observation ({ddl})"));
    psql(&format!("\\copy observation FROM '{}' CSV HEADER", csv.display()));
    psql("VACUUM ANALYZE observation");

    let server = common::start_server(&warehouse, &["--pg-addr", &format!("127.0.0.1:{fhirlake_port}")]);
    let (ours_rows, ours) = fetch(&python, fhirlake_port, "analyst");
    let (peer_rows, peer) = fetch(&python, pg_port, "postgres");
    drop(server);
    drop(postgres);
    assert_eq!(ours_rows, peer_rows, "both servers return the same rows");
    println!("| server | rows | median s | rows/s |\n|---|---:|---:|---:|");
    println!(
        "| fhirlake --pg-addr | {ours_rows} | {ours:.3} | {:.0} |",
        ours_rows as f64 / ours
    );
    println!(
        "| PostgreSQL (same rows) | {peer_rows} | {peer:.3} | {:.0} |",
        peer_rows as f64 / peer
    );
    println!("fhirlake / PostgreSQL throughput: {:.2}×", peer / ours);
}
