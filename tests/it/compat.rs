//! Warehouses, Groups and job records written by an earlier release (the
//! fixture `tests/fixtures/warehouse-v0.1`, written by fhirlake 0.1) stay
//! readable: its tables answer SQL, its Groups are served and exported, and
//! its finished jobs answer their pollers as they did.

use std::path::Path;

use crate::common::{fhirlake, repo};
use crate::http_client::{Server, http, poll_status};

/// Copies the fixture into a fresh folder (the server writes beside it).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("fixture") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

#[tokio::test]
async fn a_warehouse_of_release_0_1_stays_readable() {
    let temp = tempfile::tempdir().expect("tempdir");
    let warehouse = temp.path().join("wh");
    copy_dir(&repo().join("tests/fixtures/warehouse-v0.1"), &warehouse);
    let wh = warehouse.to_str().expect("path");

    let out = fhirlake(&[
        "--warehouse",
        wh,
        "sql",
        "--format",
        "csv",
        "SELECT count(*) AS n FROM patient",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "n\n10");

    let server = Server::start(&warehouse, &["--export-retention", "3650d"]);
    let base = &server.base;
    // A cohort Group created synchronously.
    let group = http(
        "GET",
        &format!("{base}/Group/1c03da3d-b9f0-4eeb-a5ec-06b15f318a1c"),
        &[],
        None,
    );
    assert_eq!(group.status, 200);
    assert_eq!(group.json()["name"], "women");
    let members = http(
        "GET",
        &format!("{base}/Group/1c03da3d-b9f0-4eeb-a5ec-06b15f318a1c/$members"),
        &[],
        None,
    );
    assert_eq!(members.status, 200);
    let females = members.json()["total"].as_u64().expect("total");
    assert!(females > 0, "{}", members.json());

    // A finished create job: 201 with the Group it made.
    let done = http(
        "GET",
        &format!("{base}/_jobs/53afdfb6-cc39-4bd6-9590-ee6580e5ccbb"),
        &[],
        None,
    );
    assert_eq!(done.status, 200);
    let entry = &done.json()["entry"][0];
    assert_eq!(entry["response"]["status"], "201 Created");
    assert_eq!(entry["resource"]["id"], "535b3e27-ff90-49f1-8421-e34a8030ee3e");

    // A failed create job: its recorded 400 and OperationOutcome.
    let failed = http(
        "GET",
        &format!("{base}/_jobs/c454e7c0-78bc-4251-a89e-787144fed1b4"),
        &[],
        None,
    );
    assert_eq!(failed.status, 200);
    let response = &failed.json()["entry"][0]["response"];
    assert_eq!(response["status"], "400 Bad Request");
    let text = response["outcome"]["issue"][0]["diagnostics"].as_str().expect("text");
    assert!(text.contains("Group/nope"), "{text}");

    // A failed export: its recorded 410.
    let export = http(
        "GET",
        &format!("{base}/_export/5de625fa-52d7-42fe-893a-6d5e30d88328"),
        &[],
        None,
    );
    assert_eq!(export.status, 410);
    assert_eq!(export.json()["issue"][0]["code"], "not-found");

    // The old cohort Group still exports, through today's job model.
    let kickoff = http(
        "GET",
        &format!("{base}/Group/1c03da3d-b9f0-4eeb-a5ec-06b15f318a1c/$export?_type=Patient"),
        &[("Prefer", "respond-async")],
        None,
    );
    assert_eq!(kickoff.status, 202);
    let status_url = kickoff.header("content-location").expect("status URL").to_string();
    let polled = poll_status(&status_url, &[], std::time::Duration::from_secs(60)).await;
    assert_eq!(polled.status, 200, "{}", String::from_utf8_lossy(&polled.body));
    let manifest = polled.json();
    assert_eq!(manifest["output"][0]["type"], "Patient");
    assert_eq!(manifest["output"][0]["count"].as_u64(), Some(females));
    server.stop();
}
