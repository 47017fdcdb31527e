//! A load killed part-way leaves the previous warehouse state readable.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fhirlake::warehouse::Warehouse;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_load_leaves_previous_state() {
    let Some(big) = shared_dataset("synthea-615") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let wh = tmp.path().join("wh");
    let warehouse = Warehouse::open(wh.to_str().unwrap()).unwrap();
    load_into(&warehouse, &[&sample_data()], false).await;
    let observations = query_i64(&warehouse, "SELECT count(*) FROM fhir.\"Observation\"").await;

    let mut child = Command::new(env!("CARGO_BIN_EXE_fhirlake"))
        .args([
            "--warehouse",
            wh.to_str().unwrap(),
            "load",
            "--quiet",
            big.to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill once the load has started writing data files (but long before it
    // can finish 250 MiB).
    let started = Instant::now();
    let wrote_data = || {
        walk(&wh).iter().any(|p| {
            let s = p.to_string_lossy();
            s.contains("/tables/") && s.contains("v000002-")
        })
    };
    while !wrote_data() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the load wrote no data file in 60 s"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the load ended before it wrote a data file"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Still running: the kill lands during the load's work.
    assert!(child.try_wait().unwrap().is_none(), "the load finished before the kill");
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "the load was killed before it finished");

    let snapshot = warehouse.current().await.unwrap().unwrap();
    assert_eq!(snapshot.version, 1, "the killed load committed nothing");
    assert_eq!(
        query_i64(&warehouse, "SELECT count(*) FROM fhir.\"Observation\"").await,
        observations
    );
    assert_eq!(query_i64(&warehouse, "SELECT count(*) FROM fhir.patient").await, 10);
    // The warehouse stays writable: the next load commits on top.
    let report = load_into(&warehouse, &[&sample_data()], false).await;
    assert_eq!(report.version, 2);
    assert_eq!(query_i64(&warehouse, "SELECT count(*) FROM fhir.patient").await, 10);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                out.extend(walk(&path));
            } else {
                out.push(path);
            }
        }
    }
    out
}
