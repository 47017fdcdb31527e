//! SQL logic tests: the SQL surface analysts rely on, pinned in
//! `tests/sql/*.slt` files the way DataFusion pins its own (sqllogictest
//! format). Each file runs against one warehouse loaded from the bundled
//! sample data (`data/synthea-10`) and `tests/sql/data` (a roster Group and
//! an invalid line for `_rejects`).
//!
//! Beside SQL, a record may be `EXPLAIN COHORT` followed by one search
//! expression per line (and `BASE GROUP <id>` / `BASE PATIENT <id>` lines):
//! the cohort compiler's plan for those filters, explained as the cohort
//! engine plans it, so a DataFusion upgrade that changes pushdown or join
//! order fails here.
//!
//! `FHIRLAKE_SLT_COMPLETE=1 cargo test --test slt` rewrites the expected
//! results from what the engine returns (review the diff before committing).

mod db;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use fhirlake::ingest::{LoadOptions, load};
use fhirlake::warehouse::Warehouse;
use sqllogictest::{Runner, default_column_validator, default_normalizer, default_validator, strict_column_validator};

use db::{FhirlakeDb, Normalize};

/// The partition count the pinned plans show (DataFusion's default is the
/// machine's core count).
const TARGET_PARTITIONS: &str = "2";

fn main() -> ExitCode {
    // SAFETY: no other thread exists yet; every session the engine opens
    // reads DataFusion's settings from the environment.
    unsafe { std::env::set_var("DATAFUSION_EXECUTION_TARGET_PARTITIONS", TARGET_PARTITIONS) };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run_all())
}

async fn run_all() -> ExitCode {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let files = slt_files(&repo.join("tests/sql"));
    let tmp = tempfile::tempdir().expect("temporary directory");
    let warehouse = load_sample(&repo, tmp.path()).await;
    let normalize = Normalize::new(tmp.path(), &repo);
    let complete = std::env::var_os("FHIRLAKE_SLT_COMPLETE").is_some();
    let mut failed = Vec::new();
    for file in &files {
        let name = file.strip_prefix(&repo).unwrap_or(file).display().to_string();
        let (warehouse, normalize) = (warehouse.clone(), normalize.clone());
        let mut runner = Runner::new(move || {
            let (warehouse, normalize) = (warehouse.clone(), normalize.clone());
            async move { FhirlakeDb::open(warehouse, normalize).await }
        });
        runner.with_column_validator(strict_column_validator);
        let outcome = if complete {
            runner
                .update_test_file(
                    file,
                    " ",
                    default_validator,
                    default_normalizer,
                    default_column_validator,
                )
                .await
                .map_err(|e| e.to_string())
        } else {
            runner
                .run_file_async(file)
                .await
                .map_err(|e| e.display(false).to_string())
        };
        match outcome {
            Ok(()) => println!("slt {name} ... ok"),
            Err(e) => {
                println!("slt {name} ... FAILED\n{e}");
                failed.push(name);
            }
        }
    }
    println!(
        "\nslt: {} files, {} passed, {} failed",
        files.len(),
        files.len() - failed.len(),
        failed.len()
    );
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The `.slt` files under `dir`, sorted; an empty list is a failure (a
/// moved folder must not pass as "nothing to check").
fn slt_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "slt"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .slt files in {}", dir.display());
    files
}

/// Loads the sample data with one parse worker, so every table is one file
/// and the pinned plans do not depend on the machine's core count.
async fn load_sample(repo: &Path, dir: &Path) -> Warehouse {
    let warehouse = Warehouse::open(&dir.display().to_string()).expect("open warehouse");
    let sources = [
        repo.join("data/synthea-10").display().to_string(),
        repo.join("tests/sql/data").display().to_string(),
    ];
    let options = LoadOptions {
        skip_invalid: true,
        workers: 1,
        quiet: true,
        ..LoadOptions::default()
    };
    load(&warehouse, &sources, &options)
        .await
        .expect("load the sample data");
    warehouse
}
