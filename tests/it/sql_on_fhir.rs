//! The SQL-on-FHIR v2 conformance suite (tests/conformance/sql-on-fhir-v2),
//! run through the ViewDefinition runner and the Arrow conversion. Writes
//! `target/sof-test-report.json` in the suite's test-report format.

use std::collections::BTreeMap;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::concat_batches;
use fhirlake::json::{JsonValue, parse};
use fhirlake::view::materialize::ViewBuffers;
use fhirlake::view::{Cell, CellValue, ViewDefinition, ViewError, ViewRunner, rows_to_batch, view_schema};
use serde_json::{Value as Json, json};

use crate::common::repo;

fn cell_json(value: &CellValue) -> Json {
    match value {
        CellValue::Bool(b) => Json::Bool(*b),
        CellValue::Int(i) => json!(i),
        CellValue::Decimal(d) => serde_json::from_str(d).unwrap_or(Json::String(d.clone())),
        CellValue::Str(s) => Json::String(s.clone()),
    }
}

fn same(a: &Json, b: &Json) -> bool {
    match (a, b) {
        (Json::Number(x), Json::Number(y)) => {
            (x.as_f64().unwrap_or(f64::NAN) - y.as_f64().unwrap_or(f64::NAN)).abs() < 1e-9
        }
        (Json::Array(x), Json::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same(p, q)),
        (Json::Object(x), Json::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

fn run_view(view: &Json, resources: &[JsonValue<'_>]) -> Result<(Vec<String>, Vec<Json>), String> {
    let view = ViewDefinition::from_json(view).map_err(|e| e.to_string())?;
    let runner = ViewRunner::new(&view).map_err(|e| e.to_string())?;
    let mut rows = Vec::new();
    let general = resources.iter().try_for_each(|resource| {
        rows.extend(runner.rows(resource)?);
        Ok::<_, fhirlake::view::ViewError>(())
    });
    // The typed rows that loads write (read straight from the JSON for flat
    // views) are the general model's rows, converted; or both fail.
    let typed = typed_batch(&runner, resources);
    general.map_err(|e| {
        assert!(
            typed.is_err(),
            "{}: general model failed ({e}), typed rows did not",
            runner.view().resource
        );
        e.to_string()
    })?;
    // The Arrow conversion must accept every row the runner produced.
    let schema = view_schema(&view);
    let batch = rows_to_batch(&schema, &rows).map_err(|e| {
        assert!(typed.is_err(), "conversion failed ({e}), typed rows did not");
        format!("arrow: {e}")
    })?;
    match typed {
        Ok(typed) => assert_eq!(typed, batch, "typed rows differ from the general model's"),
        Err(e) => panic!("typed rows failed ({e}), the general model did not"),
    }
    let names: Vec<String> = view.columns.iter().map(|c| c.name.clone()).collect();
    let objects = rows
        .iter()
        .map(|row| {
            let mut obj = serde_json::Map::new();
            for (name, cell) in names.iter().zip(row) {
                let value = match cell {
                    Cell::Null => Json::Null,
                    Cell::One(v) => cell_json(v),
                    Cell::Many(vs) => Json::Array(vs.iter().map(cell_json).collect()),
                };
                obj.insert(name.clone(), value);
            }
            Json::Object(obj)
        })
        .collect();
    Ok((names, objects))
}

/// The rows of `runner` over `resources` as `ViewRunner::typed_rows_into`
/// makes them for loads, in one batch.
fn typed_batch(runner: &ViewRunner<'_>, resources: &[JsonValue<'_>]) -> Result<RecordBatch, ViewError> {
    let mut buffers = ViewBuffers::new(&[runner]);
    let mut vars = runner.variables();
    let mut batches = Vec::new();
    for resource in resources {
        let mut typed = Vec::new();
        let rows = runner.typed_rows_into(resource, &mut vars, &mut typed)?;
        batches.extend(buffers.push(0, &typed, rows)?);
    }
    batches.push(buffers.take(0)?);
    Ok(concat_batches(runner.schema(), &batches).expect("batches of one schema"))
}

fn check(test: &Json, resources: &[JsonValue<'_>]) -> Result<(), String> {
    check_outcome(test, run_view(&test["view"], resources))
}

/// Judges a run's `outcome` (column names and row objects, or the error)
/// against `test`'s expectation.
pub(crate) fn check_outcome(test: &Json, outcome: Result<(Vec<String>, Vec<Json>), String>) -> Result<(), String> {
    if test.get("expectError").and_then(Json::as_bool) == Some(true) {
        return match outcome {
            Err(_) => Ok(()),
            Ok((_, rows)) => Err(format!("expected an error, got {} rows", rows.len())),
        };
    }
    let (names, rows) = outcome?;
    if let Some(count) = test.get("expectCount").and_then(Json::as_u64) {
        return if rows.len() as u64 == count {
            Ok(())
        } else {
            Err(format!("expected {count} rows, got {}", rows.len()))
        };
    }
    if let Some(columns) = test.get("expectColumns").and_then(Json::as_array) {
        let expected: Vec<&str> = columns.iter().filter_map(Json::as_str).collect();
        if expected != names {
            return Err(format!("columns {names:?}, expected {expected:?}"));
        }
    }
    let expected = test["expect"].as_array().ok_or("test has no expect")?;
    let mut unused: Vec<&Json> = rows.iter().collect();
    for row in expected {
        match unused.iter().position(|r| same(r, row)) {
            Some(i) => {
                unused.remove(i);
            }
            None => return Err(format!("missing row {row}; got {}", Json::Array(rows.clone()))),
        }
    }
    if !unused.is_empty() {
        return Err(format!("unexpected rows {:?}", unused));
    }
    Ok(())
}

#[test]
fn sql_on_fhir_v2_conformance_suite() {
    let dir = repo().join("tests/conformance/sql-on-fhir-v2/tests");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let mut report = BTreeMap::new();
    let (mut passed, mut failed) = (0, 0);
    let mut failures = Vec::new();
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        let suite: Json = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        let texts: Vec<String> = suite["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(Json::to_string)
            .collect();
        let resources: Vec<JsonValue<'_>> = texts.iter().map(|t| parse(t).unwrap()).collect();
        let mut results = Vec::new();
        for test in suite["tests"].as_array().unwrap() {
            let title = test["title"].as_str().unwrap_or("?").to_string();
            let result = check(test, &resources);
            match &result {
                Ok(()) => passed += 1,
                Err(e) => {
                    failed += 1;
                    failures.push(format!("{name} › {title}: {e}"));
                }
            }
            results.push(match result {
                Ok(()) => json!({"name": title, "result": {"passed": true}}),
                Err(e) => json!({"name": title, "result": {"passed": false, "error": e}}),
            });
        }
        report.insert(name, json!({"tests": results}));
    }
    let target = repo().join("target");
    std::fs::create_dir_all(&target).unwrap();
    std::fs::write(
        target.join("sof-test-report.json"),
        serde_json::to_string_pretty(&report).unwrap(),
    )
    .unwrap();
    for f in &failures {
        eprintln!("FAILED {f}");
    }
    println!("sql-on-fhir-v2: {passed} passed, {failed} failed");
    assert_eq!(passed + failed, 144, "the suite has 144 tests");
    assert!(failures.is_empty(), "{failed} SQL-on-FHIR tests failed");
}

#[test]
fn harness_detects_wrong_rows_and_missing_errors() {
    let texts = [r#"{"resourceType":"Patient","id":"p1","name":[{"family":"F","given":["A","B"]}]}"#];
    let resources: Vec<JsonValue<'_>> = texts.iter().map(|t| parse(t).unwrap()).collect();
    let view = json!({"resource": "Patient", "select": [{"column": [{"name": "id", "path": "id"}]}]});
    assert!(check(&json!({"view": view, "expect": [{"id": "p1"}]}), &resources).is_ok());
    assert!(check(&json!({"view": view, "expect": [{"id": "p2"}]}), &resources).is_err());
    assert!(
        check(
            &json!({"view": view, "expect": [{"id": "p1"}, {"id": "p1"}]}),
            &resources
        )
        .is_err()
    );
    assert!(check(&json!({"view": view, "expect": []}), &resources).is_err());
    assert!(check(&json!({"view": view, "expectError": true}), &resources).is_err());
    // A multi-valued non-collection column is an error naming the column and path.
    let multi = json!({"resource": "Patient", "select": [{"column": [{"name": "given", "path": "name.given"}]}]});
    let err = run_view(&multi, &resources).unwrap_err();
    assert!(
        err.contains("'given'") && err.contains("name.given") && err.contains("2 values"),
        "{err}"
    );
}

/// The suite through `POST /$viewdefinition-run` over real HTTP: each
/// test's view with the suite's resources inline, rows as JSON; the same
/// pass count as the in-process runner above.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_on_fhir_v2_suite_over_viewdefinition_run() {
    use crate::http_client::{Server, http};
    let dir = repo().join("tests/conformance/sql-on-fhir-v2/tests");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let warehouse = tempfile::tempdir().unwrap();
    let server = Server::start(warehouse.path(), &[]);
    let url = format!("{}/$viewdefinition-run", server.base);
    let (mut passed, mut failures) = (0, Vec::new());
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        let suite: Json = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        for test in suite["tests"].as_array().unwrap() {
            let mut parameters = vec![json!({"name": "viewResource", "resource": test["view"]})];
            for resource in suite["resources"].as_array().unwrap() {
                parameters.push(json!({"name": "resource", "resource": resource}));
            }
            let body = json!({"resourceType": "Parameters", "parameter": parameters}).to_string();
            let response = http("POST", &url, &[("Content-Type", "application/fhir+json")], Some(&body));
            let outcome = match response.status {
                200 => {
                    let names: Vec<String> = ViewDefinition::from_json(&test["view"])
                        .map(|v| v.columns.iter().map(|c| c.name.clone()).collect())
                        .unwrap_or_default();
                    let rows: Vec<Json> = serde_json::from_slice(&response.body).unwrap_or_default();
                    Ok((names, rows))
                }
                status => Err(format!("{status}: {}", String::from_utf8_lossy(&response.body))),
            };
            match check_outcome(test, outcome) {
                Ok(()) => passed += 1,
                Err(e) => failures.push(format!("{name} › {}: {e}", test["title"])),
            }
        }
    }
    server.stop();
    for f in &failures {
        eprintln!("FAILED over HTTP {f}");
    }
    println!(
        "sql-on-fhir-v2 over $viewdefinition-run: {passed} passed, {} failed",
        failures.len()
    );
    assert_eq!(passed + failures.len(), 144, "the suite has 144 tests");
    assert!(
        failures.is_empty(),
        "{} SQL-on-FHIR tests failed over HTTP",
        failures.len()
    );
}
