//! Loading real Synthea data and the load semantics (versions, bad input).

use std::io::Write;
use std::path::Path;

use fhirlake::ingest::{IngestError, LoadOptions, load};
use fhirlake::warehouse::Warehouse;

use crate::common::*;

async fn check_dataset(name: &str, patients: i64, female: i64) {
    let Some(dir) = shared_dataset(name) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let warehouse = Warehouse::open(tmp.path().to_str().unwrap()).unwrap();
    let report = load_into(&warehouse, &[&dir], false).await;
    let expected = expected_counts(&dir);
    assert_eq!(report.resources as i64, expected.iter().map(|(_, n)| n).sum::<i64>());
    assert_eq!(report.rejected, 0);
    for (resource_type, lines) in &expected {
        let count = query_i64(&warehouse, &format!("SELECT count(*) FROM fhir.\"{resource_type}\"")).await;
        assert_eq!(count, *lines, "{name} {resource_type}");
        assert!(
            !report.tables[resource_type].merged,
            "{resource_type} has unique ids: no merge needed"
        );
    }
    assert_eq!(
        query_i64(&warehouse, "SELECT count(*) FROM fhir.patient").await,
        patients
    );
    let female_sql = "SELECT count(*) FROM fhir.patient WHERE json_get_str(resource, 'gender') = 'female'";
    assert_eq!(query_i64(&warehouse, female_sql).await, female);
    // Every clinical resource of Synthea has a subject or patient: each is in one
    // patient's compartment, and the compartment view agrees.
    let orphans = "SELECT count(*) FROM fhir.\"Condition\" WHERE cardinality(patients) <> 1";
    assert_eq!(query_i64(&warehouse, orphans).await, 0);
    let in_compartments = "SELECT count(DISTINCT patient_id) FROM fhir.compartment WHERE resource_type = 'Observation'";
    assert_eq!(query_i64(&warehouse, in_compartments).await, patients);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loads_synthea_100_with_exact_counts() {
    check_dataset("synthea-100", 100, 40).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loads_gzipped_synthea_615_with_exact_counts() {
    check_dataset("synthea-615", 615, 284).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loads_bundled_sample_and_reload_is_idempotent() {
    let tmp = tempfile::tempdir().unwrap();
    let warehouse = Warehouse::open(tmp.path().to_str().unwrap()).unwrap();
    let first = load_into(&warehouse, &[&sample_data()], false).await;
    assert_eq!(first.version, 1);
    assert_eq!(query_i64(&warehouse, "SELECT count(*) FROM fhir.patient").await, 10);
    let before = query_strings(&warehouse, "SELECT resource FROM fhir.\"Observation\" ORDER BY id").await;
    let second = load_into(&warehouse, &[&sample_data()], false).await;
    assert_eq!(second.version, 2);
    assert!(second.tables["Observation"].merged);
    for (table, t) in &second.tables {
        assert_eq!(
            t.rows, first.tables[table].rows,
            "{table} row count unchanged by a reload"
        );
    }
    let after = query_strings(&warehouse, "SELECT resource FROM fhir.\"Observation\" ORDER BY id").await;
    assert_eq!(before, after, "reload leaves identical resources");
}

fn write_file(dir: &Path, name: &str, lines: &[&str]) {
    let mut f = std::fs::File::create(dir.join(name)).unwrap();
    for line in lines {
        writeln!(f, "{line}").unwrap();
    }
}

fn patient(id: &str, gender: &str, last_updated: Option<&str>) -> String {
    match last_updated {
        Some(t) => {
            format!(r#"{{"resourceType":"Patient","id":"{id}","meta":{{"lastUpdated":"{t}"}},"gender":"{gender}"}}"#)
        }
        None => format!(r#"{{"resourceType":"Patient","id":"{id}","gender":"{gender}"}}"#),
    }
}

async fn gender_of(warehouse: &Warehouse, id: &str) -> Vec<String> {
    query_strings(
        warehouse,
        &format!("SELECT json_get_str(resource, 'gender') FROM fhir.patient WHERE id = '{id}'"),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newer_versions_replace_older_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let warehouse = Warehouse::open(tmp.path().join("wh").to_str().unwrap()).unwrap();
    let (a, b, c, d) = (
        tmp.path().join("a"),
        tmp.path().join("b"),
        tmp.path().join("c"),
        tmp.path().join("d"),
    );
    for dir in [&a, &b, &c, &d] {
        std::fs::create_dir(dir).unwrap();
    }
    // Same id twice in one load: the later line wins (no lastUpdated).
    write_file(
        &a,
        "Patient.ndjson",
        &[
            &patient("p1", "male", Some("2021-01-01T00:00:00Z")),
            &patient("p2", "male", None),
            &patient("p2", "female", None),
        ],
    );
    load_into(&warehouse, &[&a], false).await;
    assert_eq!(gender_of(&warehouse, "p1").await, ["male"]);
    assert_eq!(gender_of(&warehouse, "p2").await, ["female"]);
    // A newer lastUpdated replaces; an older one does not.
    write_file(
        &b,
        "Patient.ndjson",
        &[&patient("p1", "female", Some("2022-01-01T00:00:00+02:00"))],
    );
    load_into(&warehouse, &[&b], false).await;
    assert_eq!(gender_of(&warehouse, "p1").await, ["female"]);
    write_file(
        &c,
        "Patient.ndjson",
        &[
            &patient("p1", "other", Some("2019-06-01T00:00:00Z")),
            &patient("p2", "other", None),
        ],
    );
    load_into(&warehouse, &[&c], false).await;
    assert_eq!(gender_of(&warehouse, "p1").await, ["female"], "older version ignored");
    assert_eq!(
        gender_of(&warehouse, "p2").await,
        ["other"],
        "without lastUpdated the later load wins"
    );
    assert_eq!(query_i64(&warehouse, "SELECT count(*) FROM fhir.patient").await, 2);
    // Loads into other tables leave the Patient table as it was.
    write_file(
        &d,
        "Observation.000.ndjson",
        &[r#"{"resourceType":"Observation","id":"o1","status":"final","subject":{"reference":"Patient/p1"}}"#],
    );
    load_into(&warehouse, &[&d], false).await;
    assert_eq!(query_i64(&warehouse, "SELECT count(*) FROM fhir.patient").await, 2);
    let patients = query_strings(
        &warehouse,
        "SELECT patient_id FROM fhir.compartment WHERE resource_id = 'o1'",
    )
    .await;
    assert_eq!(patients, ["p1"]);
}

async fn load_error(warehouse: &Warehouse, source: &Path) -> IngestError {
    let options = LoadOptions {
        quiet: true,
        ..LoadOptions::default()
    };
    load(warehouse, &[source.display().to_string()], &options)
        .await
        .expect_err("load fails")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_lines_fail_the_load_and_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let wh_dir = tmp.path().join("wh");
    let warehouse = Warehouse::open(wh_dir.to_str().unwrap()).unwrap();
    load_into(&warehouse, &[&sample_data()], false).await;
    let files_before = count_files(&wh_dir);
    let good = patient("ok", "male", None);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "malformed",
            format!("{good}\n{good}\n{{\"resourceType\":\"Patient\",\"id\":\"x\"\n").into_bytes(),
            ":3: malformed JSON",
        ),
        (
            "unknown-type",
            format!("{good}\n{{\"resourceType\":\"Pateint\",\"id\":\"x\"}}\n").into_bytes(),
            ":2: resourceType 'Pateint' is not a FHIR R4 resource type",
        ),
        ("no-type", b"{\"id\":\"x\"}\n".to_vec(), ":1: missing resourceType"),
        (
            "no-id",
            format!("{good}\n{good}\n{good}\n{{\"resourceType\":\"Patient\"}}\n").into_bytes(),
            ":4: missing id",
        ),
        (
            "bad-utf8",
            [good.as_bytes(), b"\n{\"resourceType\":\"Patient\",\"id\":\"\xff\"}\n"].concat(),
            ":2: invalid UTF-8 at byte 32",
        ),
    ];
    for (name, content, expected) in cases {
        let dir = tmp.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("Patient.000.ndjson"), content).unwrap();
        let message = load_error(&warehouse, &dir).await.to_string();
        assert!(
            message.contains("Patient.000.ndjson") && message.contains(expected),
            "{name}: {message}"
        );
        assert_eq!(
            warehouse.current().await.unwrap().unwrap().version,
            1,
            "{name}: nothing committed"
        );
        assert_eq!(count_files(&wh_dir), files_before, "{name}: no files left behind");
    }
    assert_eq!(query_i64(&warehouse, "SELECT count(*) FROM fhir.patient").await, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_gzip_names_the_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let warehouse = Warehouse::open(tmp.path().join("wh").to_str().unwrap()).unwrap();
    let dir = tmp.path().join("gz");
    std::fs::create_dir(&dir).unwrap();
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    for i in 0..2000 {
        writeln!(encoder, "{}", patient(&format!("p{i}"), "male", None)).unwrap();
    }
    let full = encoder.finish().unwrap();
    std::fs::write(dir.join("Patient.ndjson.gz"), &full[..full.len() / 2]).unwrap();
    let message = load_error(&warehouse, &dir).await.to_string();
    assert!(
        message.contains("Patient.ndjson.gz:") && message.contains("unreadable input"),
        "{message}"
    );
    assert!(warehouse.current().await.unwrap().is_none());

    // Lenient: the lines before the damage are loaded, the damage is a reject.
    let report = load_into(&warehouse, &[&dir], true).await;
    assert!(report.resources > 0 && report.resources < 2000, "{report:?}");
    assert_eq!(report.rejected, 1);
    let reasons = query_strings(&warehouse, "SELECT reason FROM _rejects").await;
    assert!(reasons[0].starts_with("unreadable input"), "{reasons:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_invalid_keeps_rejects_with_file_line_and_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let warehouse = Warehouse::open(tmp.path().join("wh").to_str().unwrap()).unwrap();
    let dir = tmp.path().join("in");
    std::fs::create_dir(&dir).unwrap();
    write_file(
        &dir,
        "1.Patient.ndjson",
        &[
            &patient("a", "male", None),
            "not json",
            &patient("b", "female", None),
            r#"{"resourceType":"Patient","id":"b!"}"#,
        ],
    );
    let report = load_into(&warehouse, &[&dir], true).await;
    assert_eq!((report.resources, report.rejected), (2, 2));
    assert_eq!(query_i64(&warehouse, "SELECT count(*) FROM fhir.patient").await, 2);
    let rejects = query_strings(
        &warehouse,
        "SELECT concat(file, ':', line, ' ', reason, ' | ', content) FROM _rejects ORDER BY line",
    )
    .await;
    assert_eq!(rejects.len(), 2);
    assert!(
        rejects[0].ends_with("1.Patient.ndjson:2 malformed JSON: invalid JSON at byte 0: invalid literal | not json"),
        "{}",
        rejects[0]
    );
    assert!(rejects[1].contains(":4 invalid id '\"b!\"'"), "{}", rejects[1]);
    // A second lenient load appends to _rejects.
    load_into(&warehouse, &[&dir], true).await;
    assert_eq!(query_i64(&warehouse, "SELECT count(*) FROM _rejects").await, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_sources_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let warehouse = Warehouse::open(tmp.path().join("wh").to_str().unwrap()).unwrap();
    let missing = tmp.path().join("nope");
    let message = load_error(&warehouse, &missing).await.to_string();
    assert!(
        message.contains("source not found") && message.contains("nope"),
        "{message}"
    );
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    std::fs::write(empty.join("notes.txt"), "x").unwrap();
    let message = load_error(&warehouse, &empty).await.to_string();
    assert!(message.contains("no NDJSON files"), "{message}");
}

pub fn count_files(dir: &Path) -> usize {
    files_under(dir).len()
}

/// Every file below `dir`, recursively.
fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vacuum_deletes_only_unreferenced_files() {
    use fhirlake::warehouse::vacuum::vacuum;
    use std::time::Duration;
    let tmp = tempfile::tempdir().unwrap();
    let wh_dir = tmp.path().join("wh");
    let warehouse = Warehouse::open(wh_dir.to_str().unwrap()).unwrap();
    load_into(&warehouse, &[&sample_data()], false).await;
    load_into(&warehouse, &[&sample_data()], false).await; // merges: v1's files are superseded
    std::fs::write(
        wh_dir.join("tables/Patient/orphan-of-a-killed-load.parquet"),
        b"partial",
    )
    .unwrap();
    let before = count_files(&wh_dir);
    // Young files are protected (a load may be writing them).
    let report = vacuum(&warehouse, 1, Duration::from_secs(3600)).await.unwrap();
    assert_eq!(report.files, 0);
    let report = vacuum(&warehouse, 1, Duration::ZERO).await.unwrap();
    assert!(report.files > 15, "{report:?}");
    assert_eq!(count_files(&wh_dir), before - report.files as usize);
    assert!(!wh_dir.join("tables/Patient/orphan-of-a-killed-load.parquet").exists());
    assert_eq!(query_i64(&warehouse, "SELECT count(*) FROM fhir.patient").await, 10);
    assert_eq!(query_i64(&warehouse, "SELECT count(*) FROM condition").await, 68);
    // Nothing left to delete.
    assert_eq!(vacuum(&warehouse, 1, Duration::ZERO).await.unwrap().files, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_commits_of_one_version_let_exactly_one_win() {
    use fhirlake::warehouse::{Snapshot, WarehouseError, manifest};
    let tmp = tempfile::tempdir().unwrap();
    let warehouse = Warehouse::open(tmp.path().to_str().unwrap()).unwrap();
    let snapshot = Snapshot {
        format: manifest::FORMAT.into(),
        version: 1,
        ..Default::default()
    };
    let (a, b) = tokio::join!(warehouse.commit(&snapshot), warehouse.commit(&snapshot));
    let conflicts = [&a, &b]
        .iter()
        .filter(|r| matches!(r, Err(WarehouseError::ConcurrentCommit { version: 1 })))
        .count();
    assert_eq!((a.is_ok() as u8 + b.is_ok() as u8, conflicts), (1, 1), "{a:?} {b:?}");
    assert_eq!(warehouse.current().await.unwrap().unwrap().version, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_index_tables_keep_their_final_runs_and_leave_no_scratch() {
    let tmp = tempfile::tempdir().unwrap();
    let wh_dir = tmp.path().join("wh");
    let warehouse = Warehouse::open(wh_dir.to_str().unwrap()).unwrap();
    load_into(&warehouse, &[&sample_data()], false).await;
    let snapshot = warehouse.current().await.unwrap().expect("a version");
    let index_files: Vec<String> = snapshot
        .tables
        .iter()
        .filter(|(name, _)| name.starts_with("index/"))
        .flat_map(|(_, entry)| entry.files.iter().map(|f| f.path.clone()))
        .collect();
    assert!(!index_files.is_empty());
    // The sample fits the writers' buffers: every table is one final run per
    // worker, kept as it is instead of being merged again.
    assert!(
        index_files.iter().all(|p| p.ends_with("-final.parquet")),
        "{index_files:?}"
    );
    // Every index file on disk is one the manifest lists (no scratch left).
    let mut on_disk: Vec<String> = files_under(&wh_dir.join("tables/index"))
        .iter()
        .map(|path| path.strip_prefix(&wh_dir).unwrap().display().to_string())
        .collect();
    on_disk.sort();
    let mut listed = index_files.clone();
    listed.sort();
    assert_eq!(on_disk, listed);
    // And they answer searches: the README's C1 count on synthea-10.
    let engine = fhirlake::cohort::CohortEngine::open(&warehouse).await.unwrap();
    let result = engine
        .evaluate(&["Condition?code=http://snomed.info/sct|15777000"], None)
        .await
        .unwrap();
    assert_eq!(result.patients.len(), 2);
}
