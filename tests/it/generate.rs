//! `fhirlake gen`: scaled data stays a consistent closed world.

use fhirlake::warehouse::Warehouse;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_copies_load_with_consistent_references() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("gen");
    let output = fhirlake(&[
        "gen",
        "--from",
        sample_data().to_str().unwrap(),
        "--copies",
        "3",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    // Deterministic: a second run writes identical files.
    let again = tmp.path().join("gen2");
    fhirlake(&[
        "gen",
        "--from",
        sample_data().to_str().unwrap(),
        "--copies",
        "3",
        "--out",
        again.to_str().unwrap(),
    ]);
    let name = "Patient.c0002-000.ndjson";
    assert_eq!(
        std::fs::read(out.join(name)).unwrap(),
        std::fs::read(again.join(name)).unwrap()
    );

    let warehouse = Warehouse::open(tmp.path().join("wh").to_str().unwrap()).unwrap();
    let report = load_into(&warehouse, &[&out], false).await;
    let expected: i64 = expected_counts(&sample_data()).iter().map(|(_, n)| n).sum();
    assert_eq!(report.resources as i64, 3 * expected);
    assert_eq!(query_i64(&warehouse, "SELECT count(*) FROM fhir.patient").await, 30);
    // Every compartment reference of every Condition points at a loaded Patient.
    let dangling =
        "SELECT count(*) FROM fhir.compartment c LEFT JOIN fhir.patient p ON c.patient_id = p.id WHERE p.id IS NULL";
    assert_eq!(query_i64(&warehouse, dangling).await, 0);
    let per_patient = "SELECT count(*) FROM (SELECT patient_id FROM fhir.compartment WHERE resource_type = 'Condition' GROUP BY patient_id)";
    let source_wh = Warehouse::open(tmp.path().join("wh-src").to_str().unwrap()).unwrap();
    load_into(&source_wh, &[&sample_data()], false).await;
    assert_eq!(
        query_i64(&warehouse, per_patient).await,
        3 * query_i64(&source_wh, per_patient).await
    );
}
