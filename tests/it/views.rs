//! Analyst views: materialized at load, cross-checked against SQL over the raw
//! resources; `fhirlake view run`; user views; view errors.

use fhirlake::ingest::{LoadOptions, load};
use fhirlake::view::{ViewCatalog, ViewDefinition};
use fhirlake::warehouse::Warehouse;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_agree_with_raw_resources_on_synthea_100() {
    let Some(dir) = shared_dataset("synthea-100") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let warehouse = Warehouse::open(tmp.path().to_str().unwrap()).unwrap();
    load_into(&warehouse, &[&dir], false).await;
    // One condition row per coding.
    let codings = "SELECT CAST(sum(json_length(resource, 'code', 'coding')) AS BIGINT) FROM fhir.condition";
    assert_eq!(
        query_i64(&warehouse, "SELECT count(*) FROM condition").await,
        query_i64(&warehouse, codings).await
    );
    assert_eq!(query_i64(&warehouse, "SELECT count(*) FROM patient").await, 100);
    assert_eq!(
        query_i64(&warehouse, "SELECT count(*) FROM patient WHERE gender = 'female'").await,
        40
    );
    // Every view's row count matches its resource table where views are one row per resource.
    for (view, table) in [
        ("encounter", "encounter"),
        ("observation", "observation"),
        ("medication_request", "medicationrequest"),
        ("procedure", "procedure"),
        ("immunization", "immunization"),
        ("allergy_intolerance", "allergyintolerance"),
        ("diagnostic_report", "diagnosticreport"),
        ("claim", "claim"),
        ("explanation_of_benefit", "explanationofbenefit"),
    ] {
        let v = query_i64(&warehouse, &format!("SELECT count(*) FROM {view}")).await;
        let t = query_i64(&warehouse, &format!("SELECT count(*) FROM fhir.{table}")).await;
        assert_eq!(v, t, "{view}");
    }
    let with_quantity = "SELECT count(*) FROM fhir.observation WHERE json_contains(resource, 'valueQuantity')";
    let view_quantity = "SELECT count(*) FROM observation WHERE value_quantity IS NOT NULL";
    assert_eq!(
        query_i64(&warehouse, view_quantity).await,
        query_i64(&warehouse, with_quantity).await
    );
    // Patients of conditions resolve to patients (getReferenceKey agrees with the compartment).
    let dangling = "SELECT count(*) FROM condition c LEFT JOIN patient p ON c.patient_id = p.id WHERE p.id IS NULL";
    assert_eq!(query_i64(&warehouse, dangling).await, 0);
    let diabetics = "SELECT count(DISTINCT patient_id) FROM condition WHERE system = 'http://snomed.info/sct' AND code = '15777000'";
    assert_eq!(
        query_i64(&warehouse, diabetics).await,
        26,
        "README example C1 (prediabetes) on synthea-100"
    );
}

#[test]
fn view_run_streams_rows_in_every_format() {
    let tmp = tempfile::tempdir().unwrap();
    let wh = tmp.path().join("wh");
    let wh = wh.to_str().unwrap();
    assert!(
        fhirlake(&["--warehouse", wh, "load", "--quiet", sample_data().to_str().unwrap()])
            .status
            .success()
    );
    let view = repo().join("sql/views/condition.json");
    let csv = fhirlake(&[
        "--warehouse",
        wh,
        "view",
        "run",
        view.to_str().unwrap(),
        "--format",
        "csv",
    ]);
    assert!(csv.status.success(), "{}", String::from_utf8_lossy(&csv.stderr));
    let text = String::from_utf8(csv.stdout).unwrap();
    assert!(text.starts_with("id,patient_id,encounter_id,clinical_status"), "{text}");
    assert_eq!(text.lines().count(), 1 + 68, "header + one row per Condition coding");
    let ndjson = fhirlake(&[
        "--warehouse",
        wh,
        "view",
        "run",
        view.to_str().unwrap(),
        "--format",
        "ndjson",
    ]);
    assert_eq!(String::from_utf8(ndjson.stdout).unwrap().lines().count(), 68);
    let out = tmp.path().join("c.parquet");
    let parquet = fhirlake(&[
        "--warehouse",
        wh,
        "view",
        "run",
        view.to_str().unwrap(),
        "--format",
        "parquet",
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(parquet.status.success());
    let reader = datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        std::fs::File::open(&out).unwrap(),
    )
    .unwrap()
    .build()
    .unwrap();
    assert_eq!(reader.map(|b| b.unwrap().num_rows()).sum::<usize>(), 68);
    // A bad view names the view, the column and the problem.
    let bad = tmp.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"resource":"Patient","select":[{"column":[{"name":"given","path":"name.given"}]}]}"#,
    )
    .unwrap();
    let failed = fhirlake(&["--warehouse", wh, "view", "run", bad.to_str().unwrap()]);
    assert!(!failed.status.success());
    let err = String::from_utf8_lossy(&failed.stderr);
    assert!(
        err.contains("bad.json") && err.contains("column 'given'") && err.contains("collection"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_views_are_materialized_and_view_errors_reject_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let warehouse = Warehouse::open(tmp.path().join("wh").to_str().unwrap()).unwrap();
    let dir = tmp.path().join("views");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(
        dir.join("patient_names.json"),
        r#"{"name":"patient_names","resource":"Patient","select":[{"column":[{"name":"id","path":"id"}]},
            {"forEach":"name","column":[{"name":"family","path":"family"}]}]}"#,
    )
    .unwrap();
    let mut catalog = ViewCatalog::shipped().unwrap();
    catalog.add_dir(&dir).unwrap();
    let options = LoadOptions {
        quiet: true,
        views: Some(catalog.clone()),
        ..LoadOptions::default()
    };
    load(&warehouse, &[sample_data().display().to_string()], &options)
        .await
        .unwrap();
    assert!(query_i64(&warehouse, "SELECT count(*) FROM patient_names").await >= 10);

    // A view that fails on a resource fails a strict load, naming file, line, view and column.
    let strict_dir = tmp.path().join("strict");
    std::fs::create_dir(&strict_dir).unwrap();
    let view: serde_json::Value = serde_json::from_str(
        r#"{"name":"given","resource":"Patient","select":[{"column":[{"name":"given","path":"name.given"}]}]}"#,
    )
    .unwrap();
    let mut strict = ViewCatalog::empty();
    strict.add(ViewDefinition::from_json(&view).unwrap());
    std::fs::write(
        strict_dir.join("Patient.ndjson"),
        "{\"resourceType\":\"Patient\",\"id\":\"a\",\"name\":[{\"given\":[\"x\",\"y\"]}]}\n",
    )
    .unwrap();
    let options = LoadOptions {
        quiet: true,
        views: Some(strict),
        ..LoadOptions::default()
    };
    let err = load(&warehouse, &[strict_dir.display().to_string()], &options)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("Patient.ndjson:1") && err.contains("view 'given'") && err.contains("column 'given'"),
        "{err}"
    );

    // A value that does not fit its column's type rejects its line too: with
    // --skip-invalid the other lines and their view rows are committed.
    let typed_dir = tmp.path().join("typed");
    std::fs::create_dir(&typed_dir).unwrap();
    let view: serde_json::Value = serde_json::from_str(
        r#"{"name":"born","resource":"Patient","select":[{"column":[{"name":"id","path":"id"},
            {"name":"born","path":"extension.where(url = 'born').value","type":"integer"}]}]}"#,
    )
    .unwrap();
    let mut typed = ViewCatalog::empty();
    typed.add(ViewDefinition::from_json(&view).unwrap());
    std::fs::write(
        typed_dir.join("Patient.ndjson"),
        concat!(
            "{\"resourceType\":\"Patient\",\"id\":\"ok\",\"extension\":[{\"url\":\"born\",\"valueInteger\":1980}]}\n",
            "{\"resourceType\":\"Patient\",\"id\":\"bad\",\"extension\":[{\"url\":\"born\",\"valueString\":\"x\"}]}\n",
        ),
    )
    .unwrap();
    let typed_warehouse = Warehouse::open(tmp.path().join("typed-wh").to_str().unwrap()).unwrap();
    let options = LoadOptions {
        quiet: true,
        views: Some(typed),
        skip_invalid: true,
        ..LoadOptions::default()
    };
    load(&typed_warehouse, &[typed_dir.display().to_string()], &options)
        .await
        .unwrap();
    assert_eq!(query_i64(&typed_warehouse, "SELECT sum(born) FROM born").await, 1980);
    assert_eq!(
        query_i64(&typed_warehouse, "SELECT count(*) FROM fhir.patient").await,
        1
    );
    let reasons = query_strings(&typed_warehouse, "SELECT reason FROM _rejects").await;
    assert!(
        reasons.len() == 1 && reasons[0].contains("view 'born'") && reasons[0].contains("column 'born'"),
        "{reasons:?}"
    );
}

/// `fhirlake view refresh` materializes views added after the data was
/// loaded, for every loaded type, in one new version; earlier versions
/// keep their view tables as they were, and an empty warehouse is an
/// error that commits nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn view_refresh_materializes_views_added_after_the_load() {
    let tmp = tempfile::tempdir().unwrap();
    let wh_path = tmp.path().join("wh");
    let wh = wh_path.to_str().unwrap();
    let empty = fhirlake(&["--warehouse", wh, "view", "refresh"]);
    assert!(!empty.status.success());
    assert!(
        String::from_utf8_lossy(&empty.stderr).contains("empty"),
        "{}",
        String::from_utf8_lossy(&empty.stderr)
    );
    let loaded = fhirlake(&[
        "--warehouse",
        wh,
        "load",
        "--quiet",
        "--no-shipped-views",
        sample_data().to_str().unwrap(),
    ]);
    assert!(loaded.status.success(), "{}", String::from_utf8_lossy(&loaded.stderr));
    let warehouse = Warehouse::open(wh).unwrap();
    let before = warehouse.current().await.unwrap().unwrap();
    assert!(!before.tables.contains_key("views/patient"));

    // A user view and the shipped ones, after the fact.
    let dir = tmp.path().join("views");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(
        dir.join("encounter_class.json"),
        r#"{"resourceType":"ViewDefinition","name":"encounter_class","resource":"Encounter","status":"active",
            "select":[{"column":[{"name":"id","path":"getResourceKey()"},{"name":"class","path":"class.code"}]}]}"#,
    )
    .unwrap();
    let refreshed = fhirlake(&["--warehouse", wh, "view", "refresh", "--views", dir.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&refreshed.stdout);
    assert!(
        refreshed.status.success(),
        "{}",
        String::from_utf8_lossy(&refreshed.stderr)
    );
    assert!(stdout.contains(&format!("version {}", before.version + 1)), "{stdout}");
    assert!(stdout.contains("views/encounter_class"), "{stdout}");

    let patients = query_i64(&warehouse, "SELECT count(*) FROM fhir.patient").await;
    assert_eq!(query_i64(&warehouse, "SELECT count(*) FROM patient").await, patients);
    let encounters = query_i64(&warehouse, "SELECT count(*) FROM fhir.\"Encounter\"").await;
    assert!(encounters > 0);
    assert_eq!(
        query_i64(&warehouse, "SELECT count(*) FROM encounter").await,
        encounters
    );
    assert_eq!(
        query_i64(
            &warehouse,
            "SELECT count(*) FROM encounter_class WHERE class IS NOT NULL"
        )
        .await,
        encounters
    );
    // Rows as a load computes them: a second warehouse loaded with the views.
    let wh2_path = tmp.path().join("wh2");
    let wh2 = Warehouse::open(wh2_path.to_str().unwrap()).unwrap();
    load_into(&wh2, &[&sample_data()], false).await;
    let conditions = "SELECT count(*) FROM (SELECT DISTINCT * FROM condition)";
    assert_eq!(
        query_i64(&warehouse, conditions).await,
        query_i64(&wh2, conditions).await
    );
    // The refresh is its own version; the one before still reads as it was.
    assert_eq!(warehouse.current().await.unwrap().unwrap().operation, "view refresh");
    let earlier = warehouse.snapshot(before.version).await.unwrap();
    assert!(!earlier.tables.keys().any(|k| k.starts_with("views/")));
    assert_eq!(earlier.tables.len(), before.tables.len());
}

/// `POST /$viewdefinition-run` (SQL-on-FHIR 2.1) over real HTTP: an inline
/// ViewDefinition over the warehouse (the same rows as `fhirlake view run`),
/// in every `_format`, with `_limit` and `header`; over inline resources
/// only; refusals of what is not supported or not valid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewdefinition_run_over_http() {
    use crate::http_client::{Server, http};
    use serde_json::{Value, json};
    let tmp = tempfile::tempdir().unwrap();
    let wh = tmp.path().join("wh");
    let wh_text = wh.to_str().unwrap();
    assert!(
        fhirlake(&[
            "--warehouse",
            wh_text,
            "load",
            "--quiet",
            sample_data().to_str().unwrap()
        ])
        .status
        .success()
    );
    let view_file = repo().join("sql/views/condition.json");
    let view: Value = serde_json::from_str(&std::fs::read_to_string(&view_file).unwrap()).unwrap();
    let cli = fhirlake(&[
        "--warehouse",
        wh_text,
        "view",
        "run",
        view_file.to_str().unwrap(),
        "--format",
        "csv",
    ]);
    let mut expected: Vec<String> = String::from_utf8(cli.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let server = Server::start(&wh, &[]);
    let url = format!("{}/$viewdefinition-run", server.base);
    let run = |query: &str, extra: Vec<Value>| {
        let mut parameters = vec![json!({"name": "viewResource", "resource": view})];
        parameters.extend(extra);
        let body = json!({"resourceType": "Parameters", "parameter": parameters}).to_string();
        http(
            "POST",
            &format!("{url}{query}"),
            &[("Content-Type", "application/fhir+json")],
            Some(&body),
        )
    };

    // csv through the query's _format: the CLI's rows.
    let csv = run("?_format=csv", vec![]);
    assert_eq!(csv.status, 200, "{}", String::from_utf8_lossy(&csv.body));
    assert_eq!(csv.header("content-type"), Some("text/csv"));
    let mut rows: Vec<String> = String::from_utf8(csv.body)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(rows.len(), 1 + 68);
    expected.sort();
    rows.sort();
    assert_eq!(rows, expected, "the same rows as fhirlake view run");
    // json (default), _limit; csv without header; ndjson; parquet.
    let limited = run("", vec![json!({"name": "_limit", "valueInteger": 5})]);
    assert_eq!(limited.status, 200);
    assert_eq!(limited.json().as_array().map(Vec::len), Some(5), "_limit");
    let headless = run(
        "",
        vec![
            json!({"name": "_format", "valueCode": "csv"}),
            json!({"name": "header", "valueBoolean": false}),
        ],
    );
    assert_eq!(
        String::from_utf8(headless.body).unwrap().lines().count(),
        68,
        "no header row"
    );
    let ndjson = run("?_format=ndjson", vec![]);
    assert_eq!(String::from_utf8(ndjson.body).unwrap().lines().count(), 68);
    let parquet = run("?_format=parquet", vec![]);
    assert_eq!(parquet.status, 200);
    assert!(
        parquet.body.starts_with(b"PAR1") && parquet.body.ends_with(b"PAR1"),
        "a whole Parquet file"
    );

    // Inline resources only: the warehouse is not read.
    let inline = run(
        "",
        vec![
            json!({"name": "resource", "resource": {"resourceType": "Condition", "id": "inline-1",
            "subject": {"reference": "Patient/p1"}, "code": {"coding": [{"system": "http://snomed.info/sct", "code": "1"}]}}}),
        ],
    );
    assert_eq!(inline.status, 200, "{}", String::from_utf8_lossy(&inline.body));
    let rows = inline.json();
    assert_eq!(rows.as_array().map(Vec::len), Some(1), "{rows}");
    assert_eq!(rows[0]["id"], "inline-1");

    // Refusals: a stored view reference (not supported), an invalid view,
    // an unknown format.
    let body = json!({"resourceType": "Parameters", "parameter": [{"name": "viewReference", "valueReference": {"reference": "ViewDefinition/x"}}]});
    let refused = http("POST", &url, &[], Some(&body.to_string()));
    assert_eq!(refused.status, 400);
    assert_eq!(refused.json()["resourceType"], "OperationOutcome");
    let bad_view = json!({"resourceType": "Parameters", "parameter": [{"name": "viewResource", "resource": {"resourceType": "ViewDefinition", "resource": "Condition", "select": [{"column": [{"name": "x", "path": "id.where("}]}]}}]});
    let invalid = http("POST", &url, &[], Some(&bad_view.to_string()));
    assert_eq!(invalid.status, 422, "{}", String::from_utf8_lossy(&invalid.body));
    assert_eq!(run("?_format=xml", vec![]).status, 400);
    server.stop();
}
