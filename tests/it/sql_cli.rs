//! `fhirlake sql` through the real binary: formats, stdin, errors.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::common::*;

fn loaded_warehouse() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let wh = tmp.path().join("wh");
    let out = fhirlake(&[
        "--warehouse",
        wh.to_str().unwrap(),
        "load",
        "--quiet",
        sample_data().to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.contains("loaded 4253 resources from 15 files"), "{summary}");
    assert!(summary.contains("0 rejected"), "{summary}");
    tmp
}

#[test]
fn sql_outputs_table_csv_json_ndjson_parquet() {
    let tmp = loaded_warehouse();
    let wh = tmp.path().join("wh");
    let wh = wh.to_str().unwrap();
    let query =
        "SELECT json_get_str(resource, 'gender') AS gender, count(*) AS n FROM fhir.Patient GROUP BY 1 ORDER BY 1";
    let sql = |format: &str| {
        let out = fhirlake(&["--warehouse", wh, "sql", "--format", format, query]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let table = sql("table");
    assert!(
        table.contains("| gender | n |") && table.contains("| female | 4 |") && table.contains("| male   | 6 |"),
        "{table}"
    );
    assert_eq!(sql("csv"), "gender,n\nfemale,4\nmale,6\n");
    assert_eq!(
        sql("json"),
        "[{\"gender\":\"female\",\"n\":4},{\"gender\":\"male\",\"n\":6}]\n"
    );
    assert_eq!(
        sql("ndjson"),
        "{\"gender\":\"female\",\"n\":4}\n{\"gender\":\"male\",\"n\":6}\n"
    );

    let parquet = tmp.path().join("out.parquet");
    let out = fhirlake(&[
        "--warehouse",
        wh,
        "sql",
        "--format",
        "parquet",
        "--output",
        parquet.to_str().unwrap(),
        query,
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let file = std::fs::File::open(&parquet).unwrap();
    let reader = datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let rows: usize = reader.map(|b| b.unwrap().num_rows()).sum();
    assert_eq!(rows, 2);
}

#[test]
fn sql_reads_statements_from_stdin_and_reports_errors() {
    let tmp = loaded_warehouse();
    let wh = tmp.path().join("wh");
    let mut child = Command::new(env!("CARGO_BIN_EXE_fhirlake"))
        .args(["--warehouse", wh.to_str().unwrap(), "sql", "--format", "csv"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"SELECT count(*) AS c FROM fhir.condition; SELECT count(*) AS e FROM fhir.encounter;")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("c\n") && text.contains("\ne\n"), "{text}");

    let bad = fhirlake(&[
        "--warehouse",
        wh.to_str().unwrap(),
        "sql",
        "SELECT nope FROM fhir.patient",
    ]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("nope"), "{err}");
}

/// The first column of a one-row, one-column result as an integer.
async fn scalar(ctx: &datafusion::prelude::SessionContext, sql: &str) -> i64 {
    use datafusion::arrow::array::AsArray;
    let results = fhirlake::query::run_statements(ctx, sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let batch = &results.last().expect("a result").batches[0];
    let column = datafusion::arrow::compute::cast(batch.column(0), &datafusion::arrow::datatypes::DataType::Int64)
        .expect("an integer");
    column
        .as_primitive::<datafusion::arrow::datatypes::Int64Type>()
        .value(0)
}

/// A session's tables come from one snapshot, resolved as queries name
/// them: a load committed after the session opened is not seen by it (a
/// query never sees half a load, nor a mix of two), the `compartment`
/// view and resource tables in any case resolve, `SHOW TABLES` lists the
/// snapshot's tables, and a view a session creates stays in that session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_read_one_snapshot_through_the_catalog() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let warehouse = fhirlake::warehouse::Warehouse::open(tmp.path().join("wh").to_str().expect("path")).expect("open");
    load_into(&warehouse, &[&sample_data()], false).await;
    let (before, _) = fhirlake::warehouse::catalog::session_for(&warehouse)
        .await
        .expect("session");
    assert_eq!(scalar(&before, "SELECT count(*) FROM fhir.\"Patient\"").await, 10);
    assert_eq!(scalar(&before, "SELECT count(*) FROM fhir.patient").await, 10);
    let in_compartments = scalar(&before, "SELECT count(DISTINCT patient_id) FROM fhir.compartment").await;
    assert_eq!(in_compartments, 10);
    let listed = scalar(
        &before,
        "SELECT count(*) FROM information_schema.tables WHERE table_name IN ('patient', 'condition', 'index_token', 'Patient', 'compartment')",
    )
    .await;
    assert_eq!(
        listed, 5,
        "views, index tables, resource tables and compartment are listed"
    );
    fhirlake::query::run_statements(
        &before,
        "CREATE VIEW women AS SELECT * FROM patient WHERE gender = 'female'",
    )
    .await
    .expect("CREATE VIEW");
    assert_eq!(scalar(&before, "SELECT count(*) FROM women").await, 4);

    // A later load: a new session sees it, the open one keeps its snapshot.
    let extra = tmp.path().join("extra.ndjson");
    std::fs::write(&extra, r#"{"resourceType":"Patient","id":"late-1","gender":"female"}"#).expect("write");
    load_into(&warehouse, &[&extra], false).await;
    let (after, _) = fhirlake::warehouse::catalog::session_for(&warehouse)
        .await
        .expect("session");
    assert_eq!(scalar(&after, "SELECT count(*) FROM patient").await, 11);
    assert_eq!(scalar(&before, "SELECT count(*) FROM patient").await, 10);
    let unknown = fhirlake::query::run_statements(&after, "SELECT * FROM women").await;
    assert!(unknown.is_err(), "a session's views are its own");
}
