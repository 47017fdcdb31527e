//! `fhirlake serve` end to end: the real binary on an ephemeral loopback
//! port, an HTTP/1.1 client over a real TCP socket. Bulk Cohort creation (async and
//! sync), polling, cancel, 429, every rejection path, restart, and a crash
//! in the middle of a job.

use std::path::Path;
use std::time::Duration;

use fhirlake::warehouse::Warehouse;
use serde_json::{Value, json};

use crate::common::{load_into, sample_data, shared_dataset};
use crate::http_client::{HttpResponse, Server, http};

const MEMBER_FILTER: &str = "http://hl7.org/fhir/uv/bulkdata/StructureDefinition/member-filter";

fn cohort_group(name: &str, filters: &[&str]) -> Value {
    json!({
        "resourceType": "Group",
        "name": name,
        "type": "person",
        "actual": true,
        "modifierExtension": filters.iter().map(|f| json!({
            "url": MEMBER_FILTER,
            "valueExpression": {"language": "application/x-fhir-query", "expression": f}
        })).collect::<Vec<_>>(),
    })
}

async fn post_async(server: &Server, group: &Value) -> HttpResponse {
    http(
        "POST",
        &format!("{}/Group", server.base),
        &[
            ("Prefer", "respond-async"),
            ("Content-Type", "application/fhir+json"),
            ("Accept", "application/fhir+json"),
        ],
        Some(&group.to_string()),
    )
}

/// Polls `url` (honouring Retry-After) until it stops answering 202.
pub(crate) async fn poll(url: &str) -> (u16, Value) {
    for _ in 0..120 {
        let response = http("GET", url, &[], None);
        if response.status == 202 {
            assert!(response.header("x-progress").is_some(), "202 carries X-Progress");
            let wait: u64 = response
                .header("retry-after")
                .and_then(|v| v.parse().ok())
                .expect("202 carries Retry-After");
            tokio::time::sleep(Duration::from_secs(wait)).await;
            continue;
        }
        return (response.status, response.json());
    }
    panic!("{url} still 202 after two minutes");
}

/// Creates a Group asynchronously; returns (its id, the batch-response).
async fn create(server: &Server, group: &Value) -> (String, Value) {
    let response = post_async(server, group).await;
    assert_eq!(response.status, 202, "{}", String::from_utf8_lossy(&response.body));
    let location = response
        .header("content-location")
        .expect("Content-Location")
        .to_string();
    assert!(
        location.starts_with("http://127.0.0.1:"),
        "absolute polling URL: {location}"
    );
    let (status, bundle) = poll(&location).await;
    assert_eq!(status, 200, "{bundle}");
    assert_eq!(bundle["type"], "batch-response");
    let entry = &bundle["entry"][0];
    assert_eq!(entry["response"]["status"], "201 Created", "{bundle}");
    let location = entry["response"]["location"].as_str().expect("location");
    let id = location
        .strip_prefix("Group/")
        .and_then(|rest| rest.split('/').next())
        .expect("Group/<id>/_history/<v>")
        .to_string();
    assert!(location.ends_with("/_history/1"), "{location}");
    (id, bundle)
}

/// The refresh of Group `id` on warehouse version `version` (or later)
/// from its refresh log (`fhirlake groups refreshes`), within a minute.
pub(crate) async fn wait_for_refresh(warehouse: &Path, id: &str, version: u64) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let out = crate::common::fhirlake(&[
            "--warehouse",
            &warehouse.display().to_string(),
            "groups",
            "refreshes",
            id,
        ]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let found = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .find(|r| r["warehouse_version"].as_u64().is_some_and(|v| v >= version));
        if let Some(record) = found {
            return record;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "Group/{id}: no refresh on version {version} in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn get_json(url: &str) -> (u16, Value) {
    let response = http("GET", url, &[], None);
    (response.status, response.json())
}

/// A warehouse with synthea-100 (or the bundled synthea-10 when the shared
/// data is absent) and the expected counts of the README's X1 and X4.
async fn warehouse(dir: &Path) -> (usize, usize) {
    let warehouse = Warehouse::open(&dir.display().to_string()).expect("warehouse");
    match shared_dataset("synthea-100") {
        Some(data) => {
            load_into(&warehouse, &[&data], false).await;
            (13, 57)
        }
        None => {
            load_into(&warehouse, &[&sample_data()], false).await;
            (1, 6)
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cohorts_are_created_polled_read_and_restarted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (x1, x4) = warehouse(dir.path()).await;
    let server = Server::start(dir.path(), &[]);

    let (metadata_status, metadata) = get_json(&format!("{}/metadata", server.base)).await;
    assert_eq!(metadata_status, 200);
    assert_eq!(
        metadata["instantiates"][0],
        "http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data"
    );
    let group_resource = metadata["rest"][0]["resource"]
        .as_array()
        .expect("resources")
        .iter()
        .find(|r| r["type"] == "Group")
        .expect("Group")
        .clone();
    assert_eq!(
        group_resource["supportedProfile"][0],
        "http://hl7.org/fhir/uv/bulkdata/StructureDefinition/bulk-cohort-group"
    );
    // Every type a system export returns is in the CapabilityStatement.
    let listed: Vec<&str> = metadata["rest"][0]["resource"]
        .as_array()
        .expect("resources")
        .iter()
        .filter_map(|r| r["type"].as_str())
        .collect();
    let (_, manifest) = crate::export::export_ok("GET", &format!("{}/$export", server.base), None).await;
    let exported: std::collections::BTreeSet<&str> = manifest["output"]
        .as_array()
        .expect("output")
        .iter()
        .filter_map(|o| o["type"].as_str())
        .collect();
    assert!(
        exported.contains("Organization") && exported.contains("Practitioner"),
        "{exported:?}"
    );
    let missing: Vec<&&str> = exported.iter().filter(|t| !listed.contains(t)).collect();
    assert!(
        missing.is_empty(),
        "exported but not in the CapabilityStatement: {missing:?}"
    );

    // The README's two-filter cohorts: each filter may be met by another resource.
    let (x1_id, x1_bundle) = create(
        &server,
        &cohort_group(
            "female prediabetic",
            &[
                "Patient?gender=female",
                "Condition?code=http://snomed.info/sct|15777000",
            ],
        ),
    )
    .await;
    assert_eq!(x1_bundle["entry"][0]["resource"]["quantity"], x1);
    let (x4_id, _) = create(
        &server,
        &cohort_group(
            "male stopped",
            &["Patient?gender=male", "MedicationRequest?status=stopped"],
        ),
    )
    .await;
    // The spec's example shape: an active problem AND an ambulatory encounter.
    let (dm_id, dm) = create(
        &server,
        &cohort_group(
            "DM Dx and ambulatory encounter",
            &[
                "Condition?clinical-status=http://terminology.hl7.org/CodeSystem/condition-clinical|active&code=http://snomed.info/sct|15777000",
                "Encounter?class=http://terminology.hl7.org/CodeSystem/v3-ActCode|AMB&date=ge2000-01-01",
            ],
        ),
    )
    .await;
    let dm_count = dm["entry"][0]["resource"]["quantity"].as_u64().expect("quantity");
    assert!(dm_count > 0 && dm_count as usize <= x1.max(26), "{dm_count}");

    let (status, group) = get_json(&format!("{}/Group/{x4_id}", server.base)).await;
    assert_eq!(status, 200);
    assert_eq!(group["quantity"], x4);
    assert_eq!(
        group["modifierExtension"][1]["url"], MEMBER_FILTER,
        "the stored Group keeps its filters"
    );
    let extension = |url: &str| {
        group["extension"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["url"] == url)
            .cloned()
            .unwrap_or(Value::Null)
    };
    assert!(
        extension("http://hl7.org/fhir/uv/bulkdata/StructureDefinition/members-refreshed")["valueDateTime"].is_string(),
        "members-refreshed is set: {group}"
    );
    assert_eq!(
        extension("https://fhirlake.dev/fhir/StructureDefinition/membership-mode")["valueCode"],
        "snapshot",
        "the server default is written onto the Group: {group}"
    );
    let (status, members) = get_json(&format!("{}/Group/{x4_id}/$members?_count=20", server.base)).await;
    assert_eq!(status, 200);
    assert_eq!(members["total"], x4);
    assert_eq!(members["entry"].as_array().map(Vec::len), Some(x4.min(20)));
    assert_eq!(members["entry"][0]["resource"]["resourceType"], "Patient");
    assert_eq!(members["entry"][0]["resource"]["gender"], "male");
    let (_, found) = get_json(&format!("{}/Group?name=MALE%20st", server.base)).await;
    assert_eq!(found["total"], 1, "{found}");
    let (status, _) = get_json(&format!("{}/Group/{dm_id}/_history/1", server.base)).await;
    assert_eq!(status, 200);

    // Base population: the filters apply only to the listed members.
    let x1_members: Vec<String> = get_json(&format!("{}/Group/{x1_id}/$members", server.base)).await.1["entry"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["resource"]["id"].as_str().unwrap_or_default().to_string())
        .collect();
    let mut based = cohort_group("based", &["Patient?gender=female"]);
    based["member"] = json!([{"entity": {"reference": format!("Group/{x1_id}")}}]);
    let (_, bundle) = create(&server, &based).await;
    assert_eq!(bundle["entry"][0]["resource"]["quantity"], x1_members.len());

    // Synchronous create: 201 + Location.
    let response = http(
        "POST",
        &format!("{}/Group", server.base),
        &[("Content-Type", "application/fhir+json")],
        Some(&cohort_group("sync", &["Patient?gender=female"]).to_string()),
    );
    assert_eq!(response.status, 201);
    assert!(response.header("location").is_some());

    // Async update: version 2, recomputed.
    let response = http(
        "PUT",
        &format!("{}/Group/{x4_id}", server.base),
        &[("Prefer", "respond-async"), ("Content-Type", "application/fhir+json")],
        Some(&cohort_group("male stopped", &["Patient?gender=male"]).to_string()),
    );
    assert_eq!(response.status, 202);
    let poll_url = response.header("content-location").expect("url").to_string();
    let (status, updated) = poll(&poll_url).await;
    assert_eq!(status, 200);
    assert_eq!(updated["entry"][0]["response"]["status"], "200 OK");
    assert!(
        updated["entry"][0]["response"]["location"]
            .as_str()
            .unwrap_or_default()
            .ends_with("/_history/2")
    );

    // Restart: the same Groups and polling URLs answer the same.
    let (_, before) = get_json(&format!("{}/Group/{x1_id}", server.base)).await;
    let (_, poll_before) = get_json(&poll_url).await;
    server.stop();
    let server = Server::start(dir.path(), &[]);
    let (status, after) = get_json(&format!("{}/Group/{x1_id}", server.base)).await;
    assert_eq!(status, 200);
    assert_eq!(before, after);
    let poll_url = poll_url.replace(poll_url.split("/_jobs/").next().unwrap_or_default(), &server.base);
    let (status, poll_after) = get_json(&poll_url).await;
    assert_eq!(status, 200);
    assert_eq!(poll_before["entry"][0]["response"], poll_after["entry"][0]["response"]);

    // Delete: 204, then 404 with an OperationOutcome.
    let response = http("DELETE", &format!("{}/Group/{dm_id}", server.base), &[], None);
    assert_eq!(response.status, 204);
    let (status, outcome) = get_json(&format!("{}/Group/{dm_id}", server.base)).await;
    assert_eq!(status, 404);
    assert_eq!(outcome["resourceType"], "OperationOutcome");
    server.stop();
}

/// What only a real connection shows (the other malformed requests are
/// sent to the router in process: `crates/http/tests/requests.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_and_headers_on_the_wire() {
    let dir = tempfile::tempdir().expect("tempdir");
    let warehouse = Warehouse::open(&dir.path().display().to_string()).expect("warehouse");
    load_into(&warehouse, &[&sample_data()], false).await;
    let server = Server::start(dir.path(), &[]);
    // A body over the limit (64 MiB): still an OperationOutcome.
    let huge = "x".repeat(fhirlake::server::GROUP_BODY_LIMIT + 1);
    let response = http(
        "POST",
        &format!("{}/Group", server.base),
        &[("Content-Type", "application/fhir+json")],
        Some(&huge),
    );
    assert_eq!(response.status, 413);
    assert_eq!(response.json()["resourceType"], "OperationOutcome");
    let response = http("PATCH", &format!("{}/Group", server.base), &[], None);
    assert_eq!(response.status, 405);
    assert_eq!(response.json()["resourceType"], "OperationOutcome");
    let response = http("GET", &format!("{}/metadata?_format=json", server.base), &[], None);
    assert_eq!(response.header("content-type"), Some("application/fhir+json"));
    let response = http(
        "GET",
        &format!("{}/metadata", server.base),
        &[("Accept", "application/json")],
        None,
    );
    assert_eq!(response.header("content-type"), Some("application/json"));
    assert!(response.header("x-request-id").is_some());
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_can_be_cancelled_throttle_fast_polls_and_survive_a_crash() {
    let dir = tempfile::tempdir().expect("tempdir");
    let warehouse = Warehouse::open(&dir.path().display().to_string()).expect("warehouse");
    load_into(&warehouse, &[&sample_data()], false).await;
    let server = Server::start(dir.path(), &["--job-delay-ms", "4000", "--retry-after", "2"]);
    let group = cohort_group("slow", &["Patient?gender=female"]);

    // 202 with progress, then 429 when polled again at once.
    let response = post_async(&server, &group).await;
    let url = response.header("content-location").expect("url").to_string();
    let first = http("GET", &url, &[], None);
    assert_eq!(first.status, 202);
    assert!(first.header("x-progress").is_some());
    assert_eq!(first.header("retry-after"), Some("2"));
    let second = http("GET", &url, &[], None);
    assert_eq!(second.status, 429);
    assert_eq!(second.header("retry-after"), Some("2"));
    assert_eq!(second.json()["issue"][0]["code"], "throttled");

    // Cancel: 202, then 404 on every poll, and no Group appears.
    let response = http("DELETE", &url, &[], None);
    assert_eq!(response.status, 202);
    for _ in 0..2 {
        let (status, outcome) = get_json(&url).await;
        assert_eq!(status, 404);
        assert_eq!(outcome["resourceType"], "OperationOutcome");
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (_, found) = get_json(&format!("{}/Group?name=slow", server.base)).await;
    assert_eq!(found["total"], 0, "a cancelled job publishes nothing: {found}");

    // A crash while a job waits to start (held by --job-delay-ms): the
    // restarted server runs it. (A Group job writes one record at its end;
    // exports, which write parts, are killed mid-run in export.rs.)
    let response = post_async(&server, &group).await;
    let url = response.header("content-location").expect("url").to_string();
    server.kill();
    let server = Server::start(dir.path(), &[]);
    let url = url.replace(url.split("/_jobs/").next().unwrap_or_default(), &server.base);
    let (status, bundle) = poll(&url).await;
    assert_eq!(status, 200, "{bundle}");
    assert_eq!(bundle["entry"][0]["response"]["status"], "201 Created");
    assert_eq!(bundle["entry"][0]["resource"]["quantity"], 4);
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loaded_groups_are_bases_and_cohorts_refresh_after_loads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let warehouse = Warehouse::open(&dir.path().display().to_string()).expect("warehouse");
    load_into(&warehouse, &[&sample_data()], false).await;
    let server = Server::start(dir.path(), &["--refresh-interval", "1s"]);
    let (_, females) = create(&server, &cohort_group("women", &["Patient?gender=female"])).await;
    assert_eq!(females["entry"][0]["resource"]["quantity"], 4);
    let women = females["entry"][0]["resource"]["id"].as_str().expect("id").to_string();

    // A later load adds a woman and a plain member-list Group of the data.
    let extra = dir.path().join("extra");
    std::fs::create_dir(&extra).expect("mkdir");
    std::fs::write(
        extra.join("Patient.ndjson"),
        r#"{"resourceType":"Patient","id":"new-woman","gender":"female"}"#,
    )
    .expect("write");
    let (_, members) = get_json(&format!("{}/Group/{women}/$members", server.base)).await;
    let first_two: Vec<String> = members["entry"]
        .as_array()
        .expect("entries")
        .iter()
        .take(2)
        .map(|e| {
            format!(
                r#"{{"entity":{{"reference":"Patient/{}"}}}}"#,
                e["resource"]["id"].as_str().unwrap_or("")
            )
        })
        .collect();
    std::fs::write(
        extra.join("Group.ndjson"),
        format!(
            r#"{{"resourceType":"Group","id":"plan","type":"person","actual":true,"member":[{},{{"entity":{{"reference":"Patient/new-woman"}}}}]}}"#,
            first_two.join(",")
        ),
    )
    .expect("write");
    load_into(&warehouse, &[&extra], false).await;

    // The refresh picks the new woman up (version 2), within a minute.
    let mut refreshed = Value::Null;
    for _ in 0..120 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        refreshed = get_json(&format!("{}/Group/{women}", server.base)).await.1;
        if refreshed["meta"]["versionId"] == "2" {
            break;
        }
    }
    assert_eq!(refreshed["meta"]["versionId"], "2", "{refreshed}");
    assert_eq!(refreshed["quantity"], 5);

    // The loaded Group is readable, read-only, and a base population.
    let (status, plan) = get_json(&format!("{}/Group/plan", server.base)).await;
    assert_eq!(status, 200);
    assert_eq!(plan["member"].as_array().map(Vec::len), Some(3));
    let response = http("DELETE", &format!("{}/Group/plan", server.base), &[], None);
    assert_eq!(response.status, 405);
    let sql = "SELECT count(*) FROM group_members WHERE group_id = 'plan' AND source = 'data'";
    assert_eq!(
        crate::common::sql_csv_rows(dir.path(), sql),
        ["3"],
        "the loaded Group's members in SQL"
    );
    let mut based = cohort_group("plan women", &["Patient?gender=female"]);
    based["member"] = json!([{"entity": {"reference": "Group/plan"}}]);
    let (_, bundle) = create(&server, &based).await;
    assert_eq!(bundle["entry"][0]["resource"]["quantity"], 3);

    // Search pages with links.
    let (_, page) = get_json(&format!("{}/Group?_count=1", server.base)).await;
    assert_eq!(page["total"], 3, "two cohorts and the loaded Group: {page}");
    assert_eq!(page["entry"].as_array().map(Vec::len), Some(1));
    let next = page["link"]
        .as_array()
        .expect("links")
        .iter()
        .find(|l| l["relation"] == "next")
        .and_then(|l| l["url"].as_str())
        .expect("a next link")
        .to_string();
    let (_, second) = get_json(&next).await;
    assert_ne!(second["entry"][0]["resource"]["id"], page["entry"][0]["resource"]["id"]);

    // A base Group that exists nowhere is refused before the 202 (a job
    // failing after it is answered in entry[0].response: see
    // members::changes_wait_for_an_operator_with_manual_approval).
    let mut missing = cohort_group("missing base", &["Patient?gender=female"]);
    missing["member"] = json!([{"entity": {"reference": "Group/nowhere"}}]);
    let response = post_async(&server, &missing).await;
    assert_eq!(response.status, 400, "{}", String::from_utf8_lossy(&response.body));
    assert_eq!(response.json()["resourceType"], "OperationOutcome");
    server.stop();
}

/// Member-based Groups (no member-filter): created synchronously and
/// asynchronously, served with their member entries, exported with the
/// members that count (not inactive, within their period), usable as a
/// criteria Group's base population, and left alone by the refresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_based_groups_are_created_exported_and_used_as_bases() {
    let dir = tempfile::tempdir().expect("tempdir");
    let warehouse = Warehouse::open(&dir.path().display().to_string()).expect("warehouse");
    load_into(&warehouse, &[&sample_data()], false).await;
    let patients = crate::common::query_strings(&warehouse, "SELECT id FROM patient ORDER BY gender, id").await;
    let women =
        crate::common::query_strings(&warehouse, "SELECT id FROM patient WHERE gender = 'female' ORDER BY id").await;
    let server = Server::start(dir.path(), &["--refresh-interval", "1s"]);
    // Two women and two men, one of the men inactive, one woman's period over.
    let (w1, w2) = (&women[0], &women[1]);
    let men: Vec<&String> = patients.iter().filter(|p| !women.contains(p)).take(2).collect();
    let roster = json!({
        "resourceType": "Group", "type": "person", "actual": true, "name": "clinic roster",
        "member": [
            {"entity": {"reference": format!("Patient/{w1}")}},
            {"entity": {"reference": format!("Patient/{w2}")}, "period": {"start": "2001", "end": "2002"}},
            {"entity": {"reference": format!("Patient/{}", men[0])}},
            {"entity": {"reference": format!("Patient/{}", men[1])}, "inactive": true},
        ],
    });
    let created = http(
        "POST",
        &format!("{}/Group", server.base),
        &[("Content-Type", "application/fhir+json")],
        Some(&roster.to_string()),
    );
    assert_eq!(created.status, 201, "{}", String::from_utf8_lossy(&created.body));
    let group = created.json();
    let id = group["id"].as_str().expect("id").to_string();
    assert_eq!(group["quantity"], 2, "{group}");
    assert_eq!(
        group["member"].as_array().map(Vec::len),
        Some(4),
        "entries kept: {group}"
    );
    assert_eq!(group["member"][1]["period"]["end"], "2002");
    assert!(group.get("modifierExtension").is_none());

    // $members and $export: the two members that count.
    let (status, members) = get_json(&format!("{}/Group/{id}/$members", server.base)).await;
    assert_eq!(status, 200, "{members}");
    let mut listed: Vec<String> = members["entry"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| {
            e["resource"]["id"]
                .as_str()
                .or(e["fullUrl"].as_str())
                .map(|s| s.rsplit('/').next().unwrap_or(s).to_string())
        })
        .collect();
    listed.sort();
    let mut expected = vec![w1.clone(), men[0].clone()];
    expected.sort();
    assert_eq!(listed, expected, "{members}");
    let (_, manifest) = crate::export::export_ok(
        "GET",
        &format!("{}/Group/{id}/$export?_type=Patient", server.base),
        None,
    )
    .await;
    let (_, lines) = crate::export::manifest_counts(&manifest, |url| http("GET", url, &[], None).body);
    let mut exported: Vec<String> = lines
        .iter()
        .filter_map(|r| r["id"].as_str().map(str::to_string))
        .collect();
    exported.sort();
    assert_eq!(exported, expected);

    // PUT replaces the entries: the inactive man becomes active (version 2).
    let mut changed = roster.clone();
    changed["id"] = json!(id);
    changed["member"][3] = json!({"entity": {"reference": format!("Patient/{}", men[1])}});
    let put = http(
        "PUT",
        &format!("{}/Group/{id}", server.base),
        &[("Content-Type", "application/fhir+json")],
        Some(&changed.to_string()),
    );
    assert_eq!(put.status, 200, "{}", String::from_utf8_lossy(&put.body));
    assert_eq!(put.json()["quantity"], 3);
    assert_eq!(put.json()["meta"]["versionId"], "2");

    // Async creation, and a criteria Group over the roster: its women.
    let (async_id, bundle) = create(&server, &roster).await;
    assert_eq!(bundle["entry"][0]["resource"]["quantity"], 2, "{bundle}");
    let mut subset = cohort_group("roster women", &["Patient?gender=female"]);
    subset["member"] = json!([{"entity": {"reference": format!("Group/{async_id}")}}]);
    let (subset_id, bundle) = create(&server, &subset).await;
    assert_eq!(bundle["entry"][0]["resource"]["quantity"], 1, "{bundle}");

    // After a load the refresh recomputes the criteria Group: its
    // membership did not change, so neither does its version; the roster
    // is not recomputed at all.
    load_into(&warehouse, &[&sample_data()], false).await;
    let record = wait_for_refresh(dir.path(), &subset_id, 2).await;
    assert_eq!(record["outcome"], "unchanged", "{record}");
    assert_eq!(record["trigger"], "load", "{record}");
    let (_, read) = get_json(&format!("{}/Group/{subset_id}", server.base)).await;
    assert_eq!(
        read["meta"]["versionId"], "1",
        "an unchanged refresh writes no version: {read}"
    );
    let (_, read) = get_json(&format!("{}/Group/{id}", server.base)).await;
    assert_eq!(read["meta"]["versionId"], "2", "not recomputed by the refresh: {read}");
    assert!(
        crate::common::fhirlake(&[
            "--warehouse",
            &dir.path().display().to_string(),
            "groups",
            "refreshes",
            &id
        ])
        .stdout
        .is_empty(),
        "a member-based Group has no refreshes"
    );

    // If-Match: a stale version is a 412 and changes nothing; the current
    // one is accepted; every answer carries the ETag.
    let url = format!("{}/Group/{id}", server.base);
    assert_eq!(http("GET", &url, &[], None).header("etag"), Some("W/\"2\""));
    let put_with = |tag: &str| {
        http(
            "PUT",
            &url,
            &[("Content-Type", "application/fhir+json"), ("If-Match", tag)],
            Some(&changed.to_string()),
        )
    };
    let stale = put_with("W/\"1\"");
    assert_eq!(stale.status, 412, "{}", String::from_utf8_lossy(&stale.body));
    assert_eq!(stale.json()["resourceType"], "OperationOutcome");
    assert_eq!(
        get_json(&url).await.1["meta"]["versionId"],
        "2",
        "a stale If-Match changed nothing"
    );
    let current = put_with("W/\"2\"");
    assert_eq!(current.status, 200, "{}", String::from_utf8_lossy(&current.body));
    assert_eq!(current.header("etag"), Some("W/\"3\""));

    // A Group another Group uses as its base cannot be deleted (409, naming
    // it); a stale If-Match on DELETE is a 412.
    let async_url = format!("{}/Group/{async_id}", server.base);
    let in_use = http("DELETE", &async_url, &[], None);
    assert_eq!(in_use.status, 409, "{}", String::from_utf8_lossy(&in_use.body));
    assert!(String::from_utf8_lossy(&in_use.body).contains(&format!("Group/{subset_id}")));
    let stale = http("DELETE", &url, &[("If-Match", "W/\"1\"")], None);
    assert_eq!(stale.status, 412);
    assert_eq!(http("DELETE", &url, &[("If-Match", "W/\"3\"")], None).status, 204);
    assert_eq!(get_json(&url).await.0, 404);
    unknown_members_are_refused_or_skipped(&server, w1).await;
    server.stop();
}

/// A member-based Group naming a Patient the server lacks: refused with a
/// 400 that names it; with `Prefer: handling=lenient` written without it
/// and the skipped entry listed (sync: the `return=OperationOutcome` body;
/// async: the batch-response entry's outcome).
async fn unknown_members_are_refused_or_skipped(server: &Server, known: &str) {
    let roster = json!({
        "resourceType": "Group", "type": "person", "actual": true,
        "member": [
            {"entity": {"reference": format!("Patient/{known}")}},
            {"entity": {"reference": "Patient/no-such-patient"}},
        ],
    });
    let post = |prefer: &str| {
        http(
            "POST",
            &format!("{}/Group", server.base),
            &[("Content-Type", "application/fhir+json"), ("Prefer", prefer)],
            Some(&roster.to_string()),
        )
    };
    let refused = post("return=representation");
    assert_eq!(refused.status, 400, "{}", String::from_utf8_lossy(&refused.body));
    assert!(String::from_utf8_lossy(&refused.body).contains("no-such-patient"));
    let skipped = post("handling=lenient, return=OperationOutcome");
    assert_eq!(skipped.status, 201, "{}", String::from_utf8_lossy(&skipped.body));
    let outcome = skipped.json();
    assert_eq!(outcome["resourceType"], "OperationOutcome", "{outcome}");
    let warnings: Vec<&Value> = outcome["issue"]
        .as_array()
        .expect("issues")
        .iter()
        .filter(|i| i["severity"] == "warning")
        .collect();
    assert_eq!(warnings.len(), 1, "{outcome}");
    assert!(
        warnings[0]["diagnostics"]
            .as_str()
            .unwrap_or_default()
            .contains("Patient/no-such-patient")
    );
    let location = skipped.header("location").expect("Location").to_string();
    let (_, group) = get_json(location.split("/_history").next().unwrap_or(&location)).await;
    assert_eq!(group["quantity"], 1, "{group}");
    assert_eq!(group["member"].as_array().map(Vec::len), Some(1), "{group}");

    let accepted = post("respond-async, handling=lenient");
    assert_eq!(accepted.status, 202, "{}", String::from_utf8_lossy(&accepted.body));
    let status_url = accepted
        .header("content-location")
        .expect("Content-Location")
        .to_string();
    let (status, bundle) = poll(&status_url).await;
    assert_eq!(status, 200, "{bundle}");
    let entry = &bundle["entry"][0];
    assert_eq!(entry["response"]["status"], "201 Created", "{bundle}");
    assert_eq!(entry["resource"]["quantity"], 1, "{bundle}");
    let issues = entry["response"]["outcome"]["issue"]
        .as_array()
        .expect("outcome issues");
    assert!(
        issues.iter().any(|i| i["severity"] == "warning"
            && i["diagnostics"]
                .as_str()
                .unwrap_or_default()
                .contains("no-such-patient")),
        "{bundle}"
    );
}
