//! Helpers shared by the integration tests.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::Int64Type;
use fhirlake::ingest::{LoadOptions, LoadReport, load};
use fhirlake::query::{open_session, run_statements};
use fhirlake::warehouse::Warehouse;

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The bundled sample data (synthea-10).
pub fn sample_data() -> PathBuf {
    repo().join("data/synthea-10")
}

/// Set by `scripts/test.sh` when `../shared/data` exists: a missing
/// dataset is then a failure, not a skip.
pub const REQUIRE_SHARED_DATA: &str = "FHIRLAKE_REQUIRE_SHARED_DATA";

/// A dataset from `../shared/data`, or `None` (with a note) when it is
/// absent and [`REQUIRE_SHARED_DATA`] is not set.
pub fn shared_dataset(name: &str) -> Option<PathBuf> {
    let dir = repo().join("../shared/data").join(name);
    if dir.is_dir() {
        return Some(dir);
    }
    assert!(
        std::env::var_os(REQUIRE_SHARED_DATA).is_none(),
        "{} is absent but {REQUIRE_SHARED_DATA} is set (the test command saw ../shared/data)",
        dir.display()
    );
    eprintln!("SKIPPED: {} is absent", dir.display());
    None
}

/// Clears every inherited `AWS_*` variable and points the AWS profile files
/// at nothing, so the machine's AWS settings cannot reach a test; the test
/// sets what it uses afterwards.
pub fn isolate_aws(command: &mut Command) -> &mut Command {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("AWS_") {
            command.env_remove(&key);
        }
    }
    command
        .env("AWS_CONFIG_FILE", "/nonexistent/fhirlake-tests/aws-config")
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            "/nonexistent/fhirlake-tests/aws-credentials",
        )
}

/// Loads `sources` quietly into `warehouse`.
pub async fn load_into(warehouse: &Warehouse, sources: &[&Path], skip_invalid: bool) -> LoadReport {
    let sources: Vec<String> = sources.iter().map(|p| p.display().to_string()).collect();
    let options = LoadOptions {
        skip_invalid,
        quiet: true,
        ..LoadOptions::default()
    };
    load(warehouse, &sources, &options).await.expect("load succeeds")
}

/// Runs a query returning one BIGINT, e.g. a `count(*)`.
pub async fn query_i64(warehouse: &Warehouse, sql: &str) -> i64 {
    let ctx = open_session(warehouse).await.expect("session");
    let results = run_statements(&ctx, sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    let batch = &results[0].batches[0];
    let column = batch.column(0);
    assert_eq!(column.len(), 1, "{sql} returns one row");
    column.as_primitive::<Int64Type>().value(0)
}

/// Runs a query returning strings in its first column.
pub async fn query_strings(warehouse: &Warehouse, sql: &str) -> Vec<String> {
    let ctx = open_session(warehouse).await.expect("session");
    let results = run_statements(&ctx, sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    let mut out = Vec::new();
    for batch in &results[0].batches {
        let column = datafusion::arrow::compute::cast(batch.column(0), &datafusion::arrow::datatypes::DataType::Utf8)
            .expect("castable to text");
        let strings = column.as_string::<i32>();
        out.extend((0..strings.len()).map(|i| strings.value(i).to_string()));
    }
    out
}

/// Runs the `fhirlake` binary.
pub fn fhirlake(args: &[&str]) -> Output {
    isolate_aws(&mut Command::new(env!("CARGO_BIN_EXE_fhirlake")))
        .args(args)
        .output()
        .expect("run fhirlake")
}

/// The rows (CSV lines, header dropped) of `sql` run by `fhirlake sql`
/// over the warehouse at `warehouse`; the command must succeed.
pub fn sql_csv_rows(warehouse: &Path, sql: &str) -> Vec<String> {
    let out = fhirlake(&[
        "--warehouse",
        &warehouse.display().to_string(),
        "sql",
        "--format",
        "csv",
        sql,
    ]);
    assert!(out.status.success(), "{sql}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .map(str::to_string)
        .collect()
}

/// Per-type line counts from a dataset's `dataset-stats.json`.
pub fn expected_counts(dataset: &Path) -> Vec<(String, i64)> {
    let stats: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dataset.join("dataset-stats.json")).expect("stats")).expect("json");
    let mut out: Vec<(String, i64)> = stats["types"]
        .as_object()
        .expect("types")
        .iter()
        .map(|(t, v)| (t.clone(), v["lines"].as_i64().expect("lines")))
        .collect();
    out.sort();
    out
}

/// A Bulk Cohort Group named `name` with one member-filter `expression`.
pub fn cohort_group(name: &str, expression: &str) -> serde_json::Value {
    serde_json::json!({
        "resourceType": "Group", "name": name, "type": "person", "actual": true,
        "modifierExtension": [{
            "url": "http://hl7.org/fhir/uv/bulkdata/StructureDefinition/member-filter",
            "valueExpression": {"language": "application/x-fhir-query", "expression": expression}
        }],
    })
}
