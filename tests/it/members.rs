//! Member operations on member-based Groups over real HTTP with the real
//! binary: `$member-add` / `$member-remove` by Patient id, by
//! `Patient.identifier` and by a Coverage subscriber id or identifier
//! (Coverage generated here for synthea-100 patients: Synthea writes
//! none), idempotence, refusals that change nothing, async operations,
//! small deltas, and a kill -9 in the middle of a large change.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fhirlake::warehouse::Warehouse;
use serde_json::{Value, json};

use crate::common::{load_into, sample_data, shared_dataset};
use crate::http_client::{HttpResponse, Server, http};
use crate::server::poll;

const PAYER: &str = "http://payer.example.org/member-id";
const SSN: &str = "http://hl7.org/fhir/sid/us-ssn";

/// The Patients of `data` (sorted by id) with their SSN identifier.
fn patients_with_ssn(data: &Path) -> Vec<(String, Option<String>)> {
    let mut patients = Vec::new();
    for entry in std::fs::read_dir(data).expect("data folder") {
        let path = entry.expect("entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if !name.starts_with("Patient") {
            continue;
        }
        for line in std::fs::read_to_string(&path).expect("read").lines() {
            let patient: Value = serde_json::from_str(line).expect("Patient JSON");
            let ssn = patient["identifier"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|i| i["system"] == SSN)
                .and_then(|i| i["value"].as_str())
                .map(str::to_string);
            patients.push((patient["id"].as_str().expect("id").to_string(), ssn));
        }
    }
    patients.sort();
    patients
}

/// Coverage NDJSON for the first 10 `patients`: Coverage `i` has
/// subscriberId `SUB-i` and identifier `PAYER|MBR-i`; patients 8 and 9
/// share subscriberId `FAMILY-1` (an ambiguous member id).
fn write_coverage(dir: &Path, patients: &[String]) -> PathBuf {
    let folder = dir.join("coverage");
    std::fs::create_dir_all(&folder).expect("mkdir");
    let lines: Vec<String> = patients
        .iter()
        .take(10)
        .enumerate()
        .map(|(i, patient)| {
            let subscriber = if i >= 8 {
                "FAMILY-1".to_string()
            } else {
                format!("SUB-{i}")
            };
            json!({
                "resourceType": "Coverage", "id": format!("coverage-{i}"), "status": "active",
                "subscriberId": subscriber,
                "identifier": [{"system": PAYER, "value": format!("MBR-{i}")}],
                "beneficiary": {"reference": format!("Patient/{patient}")},
                "payor": [{"reference": "Organization/payer"}],
            })
            .to_string()
        })
        .collect();
    std::fs::write(folder.join("Coverage.ndjson"), lines.join("\n") + "\n").expect("write");
    folder
}

fn url_encode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

fn parameters(parts: Vec<Value>) -> String {
    json!({"resourceType": "Parameters", "parameter": parts}).to_string()
}

fn by_id(patient: &str) -> Value {
    json!({"name": "patientReference", "valueReference": {"reference": format!("Patient/{patient}")}})
}

fn by_identifier(system: Option<&str>, value: &str) -> Value {
    let mut identifier = json!({"value": value});
    if let Some(system) = system {
        identifier["system"] = json!(system);
    }
    json!({"name": "memberId", "valueIdentifier": identifier})
}

fn period_end(end: &str) -> Value {
    json!({"name": "attributionPeriod", "valuePeriod": {"end": end}})
}

fn operation(server: &Server, id: &str, name: &str, body: &str, headers: &[(&str, &str)]) -> HttpResponse {
    let mut all = vec![("Content-Type", "application/fhir+json")];
    all.extend_from_slice(headers);
    http("POST", &format!("{}/Group/{id}/${name}", server.base), &all, Some(body))
}

/// The member ids `$members` lists (those that count now), sorted.
fn counted(server: &Server, id: &str) -> Vec<String> {
    let response = http(
        "GET",
        &format!("{}/Group/{id}/$members?_count=1000", server.base),
        &[],
        None,
    );
    assert_eq!(response.status, 200);
    let mut ids: Vec<String> = response.json()["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["resource"]["id"].as_str().map(str::to_string))
        .collect();
    ids.sort();
    ids
}

fn read(server: &Server, id: &str) -> Value {
    let response = http("GET", &format!("{}/Group/{id}", server.base), &[], None);
    assert_eq!(response.status, 200, "{}", String::from_utf8_lossy(&response.body));
    response.json()
}

fn create_empty(server: &Server) -> String {
    let group = json!({"resourceType": "Group", "type": "person", "actual": true, "name": "attributed"});
    let created = http(
        "POST",
        &format!("{}/Group", server.base),
        &[("Content-Type", "application/fhir+json")],
        Some(&group.to_string()),
    );
    assert_eq!(created.status, 201, "{}", String::from_utf8_lossy(&created.body));
    created.json()["id"].as_str().expect("id").to_string()
}

fn sorted(items: &[&String]) -> Vec<String> {
    let mut items: Vec<String> = items.iter().map(|s| s.to_string()).collect();
    items.sort();
    items
}

/// Every way to name a member, every refusal, and what each leaves.
#[tokio::test]
async fn members_are_added_and_removed_by_id_identifier_and_coverage() {
    let Some(data) = shared_dataset("synthea-100") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let patients = patients_with_ssn(&data);
    let ids: Vec<String> = patients.iter().map(|(id, _)| id.clone()).collect();
    let coverage = write_coverage(dir.path(), &ids);
    let root = dir.path().join("warehouse");
    let warehouse = Warehouse::open(&root.display().to_string()).expect("warehouse");
    load_into(&warehouse, &[&data, &coverage], false).await;
    let server = Server::start(&root, &[]);
    let id = create_empty(&server);
    assert_eq!(read(&server, &id)["quantity"], 0);

    // By id; again (no new version); by SSN; by Coverage subscriberId and
    // by Coverage identifier (system|value); two at once.
    let added = operation(&server, &id, "member-add", &parameters(vec![by_id(&ids[0])]), &[]);
    assert_eq!(added.status, 200, "{}", String::from_utf8_lossy(&added.body));
    assert_eq!(
        (added.json()["quantity"].clone(), added.header("etag")),
        (json!(1), Some("W/\"2\""))
    );
    let again = operation(&server, &id, "member-add", &parameters(vec![by_id(&ids[0])]), &[]);
    assert_eq!(
        again.json()["meta"]["versionId"],
        "2",
        "adding a member twice changes nothing"
    );
    let (ssn_patient, ssn) = patients
        .iter()
        .skip(1)
        .find_map(|(id, ssn)| ssn.as_ref().map(|s| (id.clone(), s.clone())))
        .expect("a Patient with an SSN");
    let body = parameters(vec![by_identifier(Some(SSN), &ssn)]);
    assert_eq!(operation(&server, &id, "member-add", &body, &[]).status, 200);
    let body = parameters(vec![
        json!({"name": "member", "part": [by_identifier(None, "SUB-2")]}),
        json!({"name": "member", "part": [by_identifier(Some(PAYER), "MBR-3")]}),
    ]);
    let added = operation(&server, &id, "member-add", &body, &[]);
    assert_eq!(added.status, 200, "{}", String::from_utf8_lossy(&added.body));
    let members = sorted(&[&ids[0], &ssn_patient, &ids[2], &ids[3]]);
    assert_eq!(counted(&server, &id), members);
    assert_eq!(read(&server, &id)["member"].as_array().map(Vec::len), Some(4));

    // Refusals name what is wrong and change nothing.
    let version = read(&server, &id)["meta"]["versionId"].clone();
    let refused = |body: String, status: u16, text: &str| {
        let response = operation(&server, &id, "member-add", &body, &[]);
        let outcome = String::from_utf8_lossy(&response.body).to_string();
        assert_eq!(response.status, status, "{outcome}");
        assert!(
            outcome.contains("OperationOutcome") && outcome.contains(text),
            "{outcome}"
        );
    };
    let unknown = parameters(vec![
        json!({"name": "member", "part": [by_id(&ids[5])]}),
        json!({"name": "member", "part": [by_identifier(Some(PAYER), "MBR-404")]}),
        json!({"name": "member", "part": [by_id("no-such-patient")]}),
    ]);
    refused(unknown, 400, "MBR-404");
    refused(
        parameters(vec![by_identifier(None, "FAMILY-1")]),
        400,
        "more than one Patient",
    );
    refused(
        parameters(vec![json!({"name": "colour", "valueString": "red"})]),
        400,
        "colour",
    );
    refused(
        parameters(vec![by_id(&ids[5]), period_end("yesterday")]),
        400,
        "attributionPeriod",
    );
    let stale = operation(
        &server,
        &id,
        "member-add",
        &parameters(vec![by_id(&ids[5])]),
        &[("If-Match", "W/\"1\"")],
    );
    assert_eq!(stale.status, 412, "{}", String::from_utf8_lossy(&stale.body));
    let not_member = operation(&server, &id, "member-remove", &parameters(vec![by_id(&ids[6])]), &[]);
    assert_eq!(not_member.status, 400);
    assert_eq!(read(&server, &id)["meta"]["versionId"], version, "nothing applied");
    assert_eq!(counted(&server, &id), members);

    // Removing: one entry deleted; one member's period ended in the past
    // (listed, no longer counted).
    let removed = operation(&server, &id, "member-remove", &parameters(vec![by_id(&ids[0])]), &[]);
    assert_eq!(removed.status, 200, "{}", String::from_utf8_lossy(&removed.body));
    let ended = parameters(vec![by_id(&ids[2]), period_end("2020-01-01")]);
    assert_eq!(operation(&server, &id, "member-remove", &ended, &[]).status, 200);
    let group = read(&server, &id);
    assert_eq!(group["quantity"], 2, "{group}");
    let listed: Vec<&str> = group["member"]
        .as_array()
        .expect("member")
        .iter()
        .filter_map(|m| m["entity"]["reference"].as_str())
        .collect();
    assert_eq!(listed.len(), 3, "{group}");
    assert!(!listed.contains(&format!("Patient/{}", ids[0]).as_str()));
    assert_eq!(counted(&server, &id), sorted(&[&ssn_patient, &ids[3]]));

    // Async: 202, then the batch-response with the changed Group.
    let accepted = operation(
        &server,
        &id,
        "member-add",
        &parameters(vec![by_id(&ids[7])]),
        &[("Prefer", "respond-async")],
    );
    assert_eq!(accepted.status, 202, "{}", String::from_utf8_lossy(&accepted.body));
    let (status, bundle) = poll(accepted.header("content-location").expect("polling URL")).await;
    assert_eq!(status, 200);
    assert_eq!(bundle["entry"][0]["response"]["status"], "200 OK", "{bundle}");
    assert_eq!(bundle["entry"][0]["resource"]["quantity"], 3, "{bundle}");
    // An unknown member is refused before the 202.
    let refused = operation(
        &server,
        &id,
        "member-add",
        &parameters(vec![by_id("no-such-patient")]),
        &[("Prefer", "respond-async")],
    );
    assert_eq!(refused.status, 400);

    // Each change wrote a small delta: the newest segment holds its rows only.
    let segments = dir.path().join(format!("warehouse/_server/membership/{id}"));
    let mut files: Vec<(String, u64)> = std::fs::read_dir(&segments)
        .expect("segments")
        .map(|e| e.expect("entry"))
        .map(|e| {
            (
                e.file_name().to_string_lossy().to_string(),
                e.metadata().expect("meta").len(),
            )
        })
        .collect();
    files.sort();
    assert!(files.len() >= 6, "one segment per change: {files:?}");
    assert!(files.iter().all(|(_, size)| *size < 8 * 1024), "{files:?}");

    // Every version stays readable; _history lists them newest first, and
    // version 2 has the one member it had then.
    let current = read(&server, &id)["meta"]["versionId"]
        .as_str()
        .expect("version")
        .parse::<usize>()
        .expect("n");
    let history = http("GET", &format!("{}/Group/{id}/_history", server.base), &[], None).json();
    assert_eq!(history["type"], "history");
    let versions: Vec<String> = history["entry"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["resource"]["meta"]["versionId"].as_str().map(str::to_string))
        .collect();
    let expected: Vec<String> = (1..=current).rev().map(|v| v.to_string()).collect();
    assert_eq!(versions, expected);
    let second = http("GET", &format!("{}/Group/{id}/_history/2", server.base), &[], None);
    assert_eq!((second.status, second.header("etag")), (200, Some("W/\"2\"")));
    let members_then: Vec<Value> = second.json()["member"].as_array().cloned().unwrap_or_default();
    assert_eq!(
        members_then,
        [json!({"entity": {"reference": format!("Patient/{}", ids[0])}})]
    );
    let unknown = http("GET", &format!("{}/Group/{id}/_history/99", server.base), &[], None);
    assert_eq!(unknown.status, 404);

    // Finding members: Patient and Coverage read and search, compiled as
    // member-filters are, paged.
    let women = crate::common::query_i64(&warehouse, "SELECT count(*) FROM patient WHERE gender = 'female'").await;
    let search = |query: &str| http("GET", &format!("{}/{query}", server.base), &[], None);
    let found = search("Patient?gender=female&_count=5");
    assert_eq!(found.status, 200, "{}", String::from_utf8_lossy(&found.body));
    let bundle = found.json();
    assert_eq!(
        (bundle["type"].clone(), bundle["total"].clone()),
        (json!("searchset"), json!(women))
    );
    assert_eq!(bundle["entry"].as_array().map(Vec::len), Some(5));
    assert!(
        bundle["link"]
            .as_array()
            .expect("links")
            .iter()
            .any(|l| l["relation"] == "next")
    );
    assert!(
        bundle["entry"]
            .as_array()
            .expect("entries")
            .iter()
            .all(|e| e["resource"]["gender"] == "female")
    );
    let by_ssn = search(&format!("Patient?identifier={}", url_encode(&format!("{SSN}|{ssn}")))).json();
    assert_eq!(by_ssn["total"], 1, "{by_ssn}");
    assert_eq!(by_ssn["entry"][0]["resource"]["id"], json!(ssn_patient));
    let coverage = search(&format!("Coverage?beneficiary=Patient/{}", ids[2])).json();
    assert_eq!(coverage["total"], 1, "{coverage}");
    assert_eq!(coverage["entry"][0]["resource"]["subscriberId"], "SUB-2");
    assert_eq!(search("Coverage").json()["total"], 10);
    let patient = search(&format!("Patient/{}", ids[3]));
    assert_eq!((patient.status, patient.json()["id"].clone()), (200, json!(ids[3])));
    assert_eq!(search("Patient/nobody").status, 404);
    assert_eq!(search("Coverage/coverage-4").json()["subscriberId"], "SUB-4");
    let unknown = search("Patient?colour=red");
    assert_eq!(unknown.status, 400, "{}", String::from_utf8_lossy(&unknown.body));

    // Member operations are for member-based Groups only.
    let cohort = crate::common::cohort_group("women", "Patient?gender=female");
    let created = http(
        "POST",
        &format!("{}/Group", server.base),
        &[("Content-Type", "application/fhir+json")],
        Some(&cohort.to_string()),
    );
    let cohort_id = created.json()["id"].as_str().expect("id").to_string();
    let refused = operation(
        &server,
        &cohort_id,
        "member-add",
        &parameters(vec![by_id(&ids[0])]),
        &[],
    );
    assert_eq!(refused.status, 400, "{}", String::from_utf8_lossy(&refused.body));
    let missing = operation(&server, "nope", "member-add", &parameters(vec![by_id(&ids[0])]), &[]);
    assert_eq!(missing.status, 404);

    // The CapabilityStatement names both operations on Group.
    let metadata = http("GET", &format!("{}/metadata", server.base), &[], None).json();
    let group = metadata["rest"][0]["resource"]
        .as_array()
        .expect("resources")
        .iter()
        .find(|r| r["type"] == "Group")
        .expect("Group")
        .clone();
    let operations: Vec<&str> = group["operation"]
        .as_array()
        .expect("operations")
        .iter()
        .filter_map(|o| o["name"].as_str())
        .collect();
    assert_eq!(operations, ["export", "members", "member-add", "member-remove"]);
    let definition = http(
        "GET",
        group["operation"][1]["definition"].as_str().expect("URL"),
        &[],
        None,
    )
    .json();
    assert_eq!(
        (definition["resourceType"].clone(), definition["code"].clone()),
        (json!("OperationDefinition"), json!("members"))
    );
}

/// A kill -9 while a large `$member-add` is written in parts leaves the old
/// membership; the restarted server resumes the job and the new one is
/// there whole.
#[tokio::test]
async fn a_crash_during_a_large_member_add_leaves_old_or_new_membership() {
    let dir = tempfile::tempdir().expect("tempdir");
    let warehouse = Warehouse::open(&dir.path().display().to_string()).expect("warehouse");
    load_into(&warehouse, &[&sample_data()], false).await;
    let ids = crate::common::query_strings(&warehouse, "SELECT id FROM patient ORDER BY id").await;
    let slow = ["--membership-part-rows", "1", "--membership-part-delay-ms", "400"];
    let server = Server::start(dir.path(), &slow);
    let id = create_empty(&server);
    let first = operation(&server, &id, "member-add", &parameters(vec![by_id(&ids[0])]), &[]);
    assert_eq!(first.status, 200);
    let rest: Vec<Value> = ids[1..]
        .iter()
        .map(|p| json!({"name": "member", "part": [by_id(p)]}))
        .collect();
    assert!(rest.len() >= 5, "enough parts to crash between");
    let accepted = operation(
        &server,
        &id,
        "member-add",
        &parameters(rest),
        &[("Prefer", "respond-async")],
    );
    assert_eq!(accepted.status, 202, "{}", String::from_utf8_lossy(&accepted.body));
    let url = accepted.header("content-location").expect("polling URL").to_string();
    let job_path = url.strip_prefix(&server.base).expect("a URL of the server").to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let response = http("GET", &url, &[], None);
        let progress = response.header("x-progress").unwrap_or_default().to_string();
        if progress.contains("wrote part 2 of") {
            break;
        }
        assert!(
            response.status == 202 || response.status == 429,
            "finished before the crash: {progress}"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "no part written in 30 s: {progress}"
        );
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    server.kill();

    // Restarted: the old membership or the new, never a mix; then the new.
    let server = Server::start(dir.path(), &[]);
    let quantity = read(&server, &id)["quantity"].as_u64().expect("quantity");
    assert!(quantity == 1 || quantity == ids.len() as u64, "a mix: {quantity}");
    let (status, bundle) = poll(&format!("{}{job_path}", server.base)).await;
    assert_eq!(status, 200, "{bundle}");
    assert_eq!(
        read(&server, &id)["quantity"],
        ids.len(),
        "the resumed job added everyone"
    );
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(counted(&server, &id), expected);
}

/// An export runs against the Group version current at its kick-off (a
/// member added meanwhile is not exported) and names it; that version stays
/// readable while the export is kept, and goes after the retention.
#[tokio::test]
async fn an_export_runs_against_the_group_version_of_its_kickoff() {
    let dir = tempfile::tempdir().expect("tempdir");
    let warehouse = Warehouse::open(&dir.path().display().to_string()).expect("warehouse");
    load_into(&warehouse, &[&sample_data()], false).await;
    let ids = crate::common::query_strings(&warehouse, "SELECT id FROM patient ORDER BY id").await;
    // The job starts after the member is added: only the pinned version
    // keeps it out.
    let args = [
        "--job-delay-ms",
        "1500",
        "--export-type-delay-ms",
        "500",
        "--export-retention",
        "3s",
        "--group-history-retention",
        "1s",
    ];
    let server = Server::start(dir.path(), &args);
    let id = create_empty(&server);
    let body = parameters(vec![
        json!({"name": "member", "part": [by_id(&ids[0])]}),
        json!({"name": "member", "part": [by_id(&ids[1])]}),
    ]);
    assert_eq!(operation(&server, &id, "member-add", &body, &[]).status, 200);
    let kickoff = http(
        "GET",
        &format!("{}/Group/{id}/$export?_type=Patient,Observation", server.base),
        &[("Accept", "application/fhir+json"), ("Prefer", "respond-async")],
        None,
    );
    assert_eq!(kickoff.status, 202, "{}", String::from_utf8_lossy(&kickoff.body));
    let added = operation(&server, &id, "member-add", &parameters(vec![by_id(&ids[2])]), &[]);
    assert_eq!(added.json()["meta"]["versionId"], "3");
    let done = crate::export::poll_export(kickoff.header("content-location").expect("status URL")).await;
    assert_eq!(done.status, 200, "{}", String::from_utf8_lossy(&done.body));
    let manifest = done.json();
    let named = format!("{}/Group/{id}/_history/2", server.base);
    assert_eq!(
        manifest["extension"][fhirlake::server::export::GROUP_VERSION_EXTENSION],
        json!(named)
    );
    let (_, lines) = crate::export::manifest_counts(&manifest, |url| http("GET", url, &[], None).body);
    let mut exported: Vec<&str> = lines
        .iter()
        .filter(|r| r["resourceType"] == "Patient")
        .filter_map(|r| r["id"].as_str())
        .collect();
    exported.sort();
    assert_eq!(
        exported,
        [ids[0].as_str(), ids[1].as_str()],
        "the member added later is not exported"
    );
    assert_eq!(http("GET", &named, &[], None).status, 200, "kept while the export is");

    // The export expires (3 s), then version 2 goes (superseded > 1 s ago).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while http("GET", &named, &[], None).status == 200 {
        assert!(std::time::Instant::now() < deadline, "version 2 still kept after 30 s");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(http("GET", &named, &[], None).status, 404);
    let current = http("GET", &format!("{}/Group/{id}/_history/3", server.base), &[], None);
    assert_eq!(current.status, 200, "the current version is always kept");
}

fn patch_request(server: &Server, id: &str, media: &str, body: &Value, headers: &[(&str, &str)]) -> HttpResponse {
    let mut all = vec![("Content-Type", media)];
    all.extend_from_slice(headers);
    http(
        "PATCH",
        &format!("{}/Group/{id}", server.base),
        &all,
        Some(&body.to_string()),
    )
}

/// JSON Patch and FHIRPath Patch change a member-based Group's entries and
/// a cohort Group's filters; what does not apply changes nothing.
#[tokio::test]
async fn groups_are_patched_with_json_patch_and_fhirpath_patch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let warehouse = Warehouse::open(&dir.path().display().to_string()).expect("warehouse");
    load_into(&warehouse, &[&sample_data()], false).await;
    let ids = crate::common::query_strings(&warehouse, "SELECT id FROM patient ORDER BY id").await;
    let women = crate::common::query_i64(&warehouse, "SELECT count(*) FROM patient WHERE gender = 'female'").await;
    let server = Server::start(dir.path(), &[]);
    let id = create_empty(&server);
    let reference = |i: usize| json!({"entity": {"reference": format!("Patient/{}", ids[i])}});
    assert_eq!(
        operation(&server, &id, "member-add", &parameters(vec![by_id(&ids[0])]), &[]).status,
        200
    );

    // JSON Patch: a member and a new name.
    let json_patch = json!([
        {"op": "add", "path": "/member/-", "value": reference(1)},
        {"op": "replace", "path": "/name", "value": "renamed"},
    ]);
    let patched = patch_request(&server, &id, "application/json-patch+json", &json_patch, &[]);
    assert_eq!(patched.status, 200, "{}", String::from_utf8_lossy(&patched.body));
    assert_eq!(patched.header("etag"), Some("W/\"3\""));
    let group = patched.json();
    assert_eq!(
        (group["quantity"].clone(), group["name"].clone()),
        (json!(2), json!("renamed"))
    );

    // FHIRPath Patch: remove the first, add a third with a period.
    let fhirpath_patch = json!({"resourceType": "Parameters", "parameter": [
        {"name": "operation", "part": [
            {"name": "type", "valueCode": "delete"},
            {"name": "path", "valueString": format!("Group.member.where(entity.reference = 'Patient/{}')", ids[0])},
        ]},
        {"name": "operation", "part": [
            {"name": "type", "valueCode": "add"},
            {"name": "path", "valueString": "Group"},
            {"name": "name", "valueString": "member"},
            {"name": "value", "part": [
                {"name": "entity", "valueReference": {"reference": format!("Patient/{}", ids[2])}},
                {"name": "period", "valuePeriod": {"start": "2020-01-01"}},
            ]},
        ]},
    ]});
    let patched = patch_request(&server, &id, "application/fhir+json", &fhirpath_patch, &[]);
    assert_eq!(patched.status, 200, "{}", String::from_utf8_lossy(&patched.body));
    assert_eq!(counted(&server, &id), sorted(&[&ids[1], &ids[2]]));
    assert_eq!(read(&server, &id)["member"][1]["period"]["start"], "2020-01-01");

    // What does not apply changes nothing.
    let refusals = [
        (
            json!([{"op": "test", "path": "/name", "value": "other"}]),
            "application/json-patch+json",
            422,
        ),
        (
            json!([{"op": "replace", "path": "/id", "value": "x"}]),
            "application/json-patch+json",
            422,
        ),
        (
            json!([{"op": "add", "path": "/member/-", "value": {"entity": {"reference": "Patient/nobody"}}}]),
            "application/json-patch+json",
            400,
        ),
        (json!({"op": "add"}), "application/json-patch+json", 400),
        (
            json!({"resourceType": "Parameters", "parameter": [{"name": "operation", "part": [
            {"name": "type", "valueCode": "delete"}, {"name": "path", "valueString": "Group.member.exists()"}]}]}),
            "application/fhir+json",
            400,
        ),
        (json!([]), "text/plain", 415),
    ];
    for (body, media, status) in refusals {
        let response = patch_request(&server, &id, media, &body, &[]);
        let text = String::from_utf8_lossy(&response.body).to_string();
        assert_eq!(response.status, status, "{body}: {text}");
        assert!(text.contains("OperationOutcome"), "{text}");
    }
    let stale = patch_request(
        &server,
        &id,
        "application/json-patch+json",
        &json_patch,
        &[("If-Match", "W/\"1\"")],
    );
    assert_eq!(stale.status, 412);
    assert_eq!(read(&server, &id)["meta"]["versionId"], "4", "nothing applied");

    // A cohort Group's filter patched: its members are recomputed.
    let cohort = crate::common::cohort_group("women", "Patient?gender=female");
    let created = http(
        "POST",
        &format!("{}/Group", server.base),
        &[("Content-Type", "application/fhir+json")],
        Some(&cohort.to_string()),
    );
    assert_eq!(created.json()["quantity"], women);
    let cohort_id = created.json()["id"].as_str().expect("id").to_string();
    let to_men = json!([{"op": "replace", "path": "/modifierExtension/0/valueExpression/expression", "value": "Patient?gender=male"}]);
    let patched = patch_request(&server, &cohort_id, "application/json-patch+json", &to_men, &[]);
    assert_eq!(patched.status, 200, "{}", String::from_utf8_lossy(&patched.body));
    assert_eq!(patched.json()["quantity"], ids.len() as i64 - women);
}

/// `GET /Group?…` over stored and loaded Groups by every R4 Group
/// parameter; unknown parameters reported, or refused when strict.
#[tokio::test]
async fn groups_are_searched_by_every_parameter() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ids = {
        let scratch = Warehouse::open(&dir.path().join("scratch").display().to_string()).expect("scratch");
        load_into(&scratch, &[&sample_data()], false).await;
        crate::common::query_strings(&scratch, "SELECT id FROM patient ORDER BY id").await
    };
    let rosters = dir.path().join("rosters");
    std::fs::create_dir_all(&rosters).expect("mkdir");
    let registry = json!({
        "resourceType": "Group", "id": "registry", "name": "Diabetes Registry", "type": "person", "actual": true,
        "code": {"coding": [{"system": "http://example.org/c", "code": "registry"}]},
        "identifier": [{"system": "http://example.org/id", "value": "R-1"}],
        "managingEntity": {"reference": "Organization/payer"},
        "characteristic": [{"code": {"coding": [{"system": "http://snomed.info/sct", "code": "44054006"}]},
            "valueBoolean": true, "exclude": false}],
        "member": [{"entity": {"reference": format!("Patient/{}", ids[0])}}],
    });
    std::fs::write(rosters.join("Group.ndjson"), format!("{registry}\n")).expect("write");
    let root = dir.path().join("warehouse");
    let warehouse = Warehouse::open(&root.display().to_string()).expect("warehouse");
    load_into(&warehouse, &[&sample_data(), &rosters], false).await;
    let server = Server::start(&root, &[]);
    let stored = create_empty(&server);
    assert_eq!(
        operation(&server, &stored, "member-add", &parameters(vec![by_id(&ids[1])]), &[]).status,
        200
    );

    let found = |query: &str| -> Vec<String> {
        let response = http("GET", &format!("{}/Group?{query}", server.base), &[], None);
        assert_eq!(
            response.status,
            200,
            "{query}: {}",
            String::from_utf8_lossy(&response.body)
        );
        let mut ids: Vec<String> = response.json()["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["search"]["mode"] == "match")
            .filter_map(|e| e["resource"]["id"].as_str().map(str::to_string))
            .collect();
        ids.sort();
        ids
    };
    let registry_only = vec!["registry".to_string()];
    for query in [
        "code=http://example.org/c|registry",
        "identifier=R-1",
        "managing-entity=Organization/payer",
        "characteristic=http://snomed.info/sct|44054006",
        "characteristic-value=http://snomed.info/sct|44054006$true",
        "value=true",
        "exclude=false",
        "name:contains=REGISTRY",
    ] {
        assert_eq!(found(query), registry_only, "{query}");
    }
    assert_eq!(found(&format!("member=Patient/{}", ids[1])), vec![stored.clone()]);
    assert_eq!(found(&format!("member={}", ids[0])), registry_only);
    let mut both = vec![stored.clone(), "registry".to_string()];
    both.sort();
    assert_eq!(found("actual=true&type=person"), both);
    // The loaded Group has no meta.lastUpdated; the stored one has.
    assert_eq!(found("_lastUpdated=ge2000-01-01"), vec![stored.clone()]);
    assert!(found("actual=false").is_empty());

    // Unknown parameters: reported and ignored, or refused when strict.
    let lenient = http("GET", &format!("{}/Group?colour=red", server.base), &[], None).json();
    let outcome = lenient["entry"]
        .as_array()
        .expect("entries")
        .iter()
        .find(|e| e["search"]["mode"] == "outcome")
        .expect("an OperationOutcome entry")
        .to_string();
    assert!(outcome.contains("colour"), "{outcome}");
    let strict = http(
        "GET",
        &format!("{}/Group?colour=red", server.base),
        &[("Prefer", "handling=strict")],
        None,
    );
    assert_eq!(strict.status, 400);
    let bad = http(
        "GET",
        &format!("{}/Group?_lastUpdated=notadate", server.base),
        &[],
        None,
    );
    assert_eq!(bad.status, 400);
}

/// `serve --group-approval manual`: changes wait (202, "awaiting
/// approval") until an operator approves or rejects them with the CLI
/// while the server runs; synchronous changes are refused.
#[tokio::test]
async fn changes_wait_for_an_operator_with_manual_approval() {
    let dir = tempfile::tempdir().expect("tempdir");
    let warehouse = Warehouse::open(&dir.path().display().to_string()).expect("warehouse");
    load_into(&warehouse, &[&sample_data()], false).await;
    let ids = crate::common::query_strings(&warehouse, "SELECT id FROM patient ORDER BY id").await;
    let server = Server::start(dir.path(), &["--group-approval", "manual"]);
    let roster = json!({"resourceType": "Group", "type": "person", "actual": true,
        "member": [{"entity": {"reference": format!("Patient/{}", ids[0])}}]});
    let post = |headers: &[(&str, &str)]| {
        let mut all = vec![("Content-Type", "application/fhir+json")];
        all.extend_from_slice(headers);
        http(
            "POST",
            &format!("{}/Group", server.base),
            &all,
            Some(&roster.to_string()),
        )
    };
    let sync = post(&[]);
    assert_eq!(sync.status, 400);
    assert!(String::from_utf8_lossy(&sync.body).contains("respond-async"));

    let accepted = post(&[("Prefer", "respond-async")]);
    assert_eq!(accepted.status, 202);
    let url = accepted.header("content-location").expect("polling URL").to_string();
    let waiting = http("GET", &url, &[], None);
    assert_eq!(
        (waiting.status, waiting.header("x-progress")),
        (202, Some("awaiting approval"))
    );
    let cli = |args: &[&str]| {
        let mut all = vec!["--warehouse", dir.path().to_str().expect("path"), "groups"];
        all.extend_from_slice(args);
        let out = crate::common::fhirlake(&all);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let job = url.rsplit('/').next().expect("job id").to_string();
    let pending = cli(&["pending"]);
    assert!(
        pending.contains(&job) && pending.contains("1 member entries"),
        "{pending}"
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(http("GET", &url, &[], None).status, 202, "still waiting");
    cli(&["approve", &job]);
    // Polled just now: wait Retry-After before the next poll.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, bundle) = poll(&url).await;
    assert_eq!(status, 200);
    assert_eq!(bundle["entry"][0]["response"]["status"], "201 Created", "{bundle}");
    let id = bundle["entry"][0]["resource"]["id"].as_str().expect("id").to_string();

    // A member operation rejected by Group id: the poll says why; nothing changed.
    let add = operation(
        &server,
        &id,
        "member-add",
        &parameters(vec![by_id(&ids[1])]),
        &[("Prefer", "respond-async")],
    );
    assert_eq!(add.status, 202, "{}", String::from_utf8_lossy(&add.body));
    cli(&["reject", &id, "--reason", "not attributed to this practice"]);
    let (status, bundle) = poll(add.header("content-location").expect("polling URL")).await;
    assert_eq!(status, 200);
    let entry = &bundle["entry"][0]["response"];
    assert_eq!(entry["status"], "403 Forbidden", "{bundle}");
    assert!(
        entry["outcome"].to_string().contains("not attributed to this practice"),
        "{bundle}"
    );
    assert_eq!(read(&server, &id)["quantity"], 1);
    assert!(cli(&["pending"]).contains("no Group change is waiting"));
}

fn match_request(server: &Server, patient: &Value, extra: Vec<Value>) -> Value {
    let mut parts = vec![json!({"name": "resource", "resource": patient})];
    parts.extend(extra);
    let response = http(
        "POST",
        &format!("{}/Patient/$match", server.base),
        &[("Content-Type", "application/fhir+json")],
        Some(&json!({"resourceType": "Parameters", "parameter": parts}).to_string()),
    );
    assert_eq!(response.status, 200, "{}", String::from_utf8_lossy(&response.body));
    response.json()
}

/// (id, score, grade) of a `$match` answer.
fn graded(bundle: &Value) -> Vec<(String, f64, String)> {
    bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["resource"]["id"].as_str().unwrap_or_default().to_string(),
                e["search"]["score"].as_f64().unwrap_or_default(),
                e["search"]["extension"][0]["valueCode"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect()
}

/// `Patient/$match`: an identifier is a certain match; demographics are
/// scored and graded; two similar Patients are both returned (ambiguous),
/// and neither with `onlyCertainMatches`.
#[tokio::test]
async fn patients_are_matched_by_identifier_and_demographics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let patients = patients_with_ssn(&sample_data());
    let line = std::fs::read_dir(sample_data())
        .expect("sample")
        .filter_map(Result::ok)
        .find(|e| e.file_name().to_string_lossy().starts_with("Patient"))
        .map(|e| std::fs::read_to_string(e.path()).expect("read"))
        .expect("Patient file");
    let first: Value = serde_json::from_str(line.lines().next().expect("a Patient")).expect("JSON");
    // A twin: same family, birth date, gender and postal code; another given name.
    let mut twin = first.clone();
    twin["id"] = json!("twin-of-first");
    twin["identifier"] = json!([]);
    twin["name"][0]["given"] = json!(["Zebedee"]);
    let extra = dir.path().join("twin");
    std::fs::create_dir_all(&extra).expect("mkdir");
    std::fs::write(extra.join("Patient.ndjson"), format!("{twin}\n")).expect("write");
    let root = dir.path().join("warehouse");
    let warehouse = Warehouse::open(&root.display().to_string()).expect("warehouse");
    load_into(&warehouse, &[&sample_data(), &extra], false).await;
    let server = Server::start(&root, &[]);
    let id = first["id"].as_str().expect("id").to_string();
    let ssn = patients
        .iter()
        .find(|(p, _)| *p == id)
        .and_then(|(_, s)| s.clone())
        .expect("an SSN");

    let by_identifier = json!({"resourceType": "Patient", "identifier": [{"system": SSN, "value": ssn}]});
    assert_eq!(
        graded(&match_request(&server, &by_identifier, vec![])),
        [(id.clone(), 1.0, "certain".to_string())]
    );

    let mut full = json!({"resourceType": "Patient", "name": first["name"].clone(), "birthDate": first["birthDate"],
        "gender": first["gender"], "address": first["address"].clone()});
    let certain = graded(&match_request(&server, &full, vec![]));
    assert_eq!(certain[0].0, id);
    assert_eq!(certain[0].2, "certain", "{certain:?}");

    // A misspelled given name: probable, and the twin as probable too.
    full["name"][0]["given"] = json!(["Misspelt"]);
    let fuzzy = graded(&match_request(&server, &full, vec![]));
    let mut ids: Vec<&str> = fuzzy.iter().map(|(i, _, _)| i.as_str()).collect();
    ids.sort();
    let mut expected = vec![id.as_str(), "twin-of-first"];
    expected.sort();
    assert_eq!(ids, expected, "{fuzzy:?}");
    assert!(
        fuzzy
            .iter()
            .all(|(_, score, grade)| *score < 0.9 && grade == "probable"),
        "{fuzzy:?}"
    );
    let only = match_request(
        &server,
        &full,
        vec![json!({"name": "onlyCertainMatches", "valueBoolean": true})],
    );
    assert!(graded(&only).is_empty(), "ambiguous: no certain match");
    let one = match_request(&server, &full, vec![json!({"name": "count", "valueInteger": 1})]);
    assert_eq!(graded(&one).len(), 1);

    let refused = http(
        "POST",
        &format!("{}/Patient/$match", server.base),
        &[("Content-Type", "application/fhir+json")],
        Some(r#"{"resourceType":"Parameters","parameter":[]}"#),
    );
    assert_eq!(refused.status, 400);
}

fn async_create(server: &Server, group: &Value) -> HttpResponse {
    http(
        "POST",
        &format!("{}/Group", server.base),
        &[("Content-Type", "application/fhir+json"), ("Prefer", "respond-async")],
        Some(&group.to_string()),
    )
}

/// A criteria Group whose filter the compiler refuses, or whose base Group
/// exists nowhere, is refused before the 202 (on an open server too).
#[tokio::test]
async fn criteria_groups_that_cannot_run_are_refused_before_the_202() {
    let dir = tempfile::tempdir().expect("tempdir");
    let warehouse = Warehouse::open(&dir.path().display().to_string()).expect("warehouse");
    load_into(&warehouse, &[&sample_data()], false).await;
    let server = Server::start(dir.path(), &[]);
    let repeating = crate::common::cohort_group(
        "blood pressure",
        "Observation?component-code-value-quantity=http://loinc.org|8480-6$gt140",
    );
    let refused = async_create(&server, &repeating);
    let text = String::from_utf8_lossy(&refused.body).to_string();
    assert_eq!(refused.status, 400, "{text}");
    assert!(text.contains("component-code-value-quantity"), "{text}");
    let mut based = crate::common::cohort_group("women of a Group", "Patient?gender=female");
    based["member"] = json!([{"entity": {"reference": "Group/nowhere"}}]);
    let refused = async_create(&server, &based);
    let text = String::from_utf8_lossy(&refused.body).to_string();
    assert_eq!(refused.status, 400, "{text}");
    assert!(text.contains("Group/nowhere"), "{text}");
}

/// A sample value of a search parameter of type `param_type`.
fn sample_of(param_type: fhirlake::search::ParamType) -> &'static str {
    use fhirlake::search::ParamType;
    match param_type {
        ParamType::Date => "ge2020-01-01",
        ParamType::Quantity | ParamType::Number => "gt5",
        ParamType::Uri => "http://example.org/x",
        _ => "x",
    }
}

/// A sample value of search parameter `param` (composites: one sample per
/// component, joined with `$`).
fn sample_value(registry: &fhirlake::search::SearchRegistry, param: &fhirlake::search::SearchParam) -> String {
    if param.param_type != fhirlake::search::ParamType::Composite {
        return sample_of(param.param_type).to_string();
    }
    param
        .components
        .iter()
        .filter_map(|c| registry.by_url(&c.definition))
        .map(|(_, param_type)| sample_of(param_type))
        .collect::<Vec<_>>()
        .join("$")
}

/// Every member-filter parameter the CapabilityStatement advertises
/// compiles: the statement lists what the compiler accepts, no more.
#[tokio::test]
async fn every_advertised_search_parameter_compiles() {
    let dir = tempfile::tempdir().expect("tempdir");
    let warehouse = Warehouse::open(&dir.path().display().to_string()).expect("warehouse");
    load_into(&warehouse, &[&sample_data()], false).await;
    let server = Server::start(dir.path(), &[]);
    let metadata = http("GET", &format!("{}/metadata", server.base), &[], None).json();
    let registry = fhirlake::search::SearchRegistry::r4().expect("registry");
    let engine = fhirlake::cohort::CohortEngine::open(&warehouse).await.expect("engine");
    let mut advertised = 0;
    let mut refused = Vec::new();
    for resource in metadata["rest"][0]["resource"].as_array().expect("resources") {
        let resource_type = resource["type"].as_str().expect("type");
        if resource_type == "Group" {
            continue; // Group's are its own search, not member-filters.
        }
        for param in resource["searchParam"].as_array().into_iter().flatten() {
            let name = param["name"].as_str().expect("name");
            let Some(definition) = registry.get(resource_type, name) else {
                refused.push(format!("{resource_type}.{name}: not in the registry"));
                continue;
            };
            advertised += 1;
            let expression = format!("{resource_type}?{name}={}", sample_value(registry, definition));
            let compiled = fhirlake::cohort::CohortEngine::parse(&[expression.as_str()])
                .and_then(|queries| engine.plan(&queries, None).map(|_| ()));
            if let Err(e) = compiled {
                refused.push(format!("{expression}: {e}"));
            }
        }
    }
    println!("{advertised} advertised member-filter parameters compile");
    assert!(advertised > 500, "only {advertised} parameters advertised");
    assert!(
        refused.is_empty(),
        "{} advertised but refused:\n{}",
        refused.len(),
        refused.join("\n")
    );
}

/// Twenty changes compact the membership segments (after 16), and every
/// earlier version still reads its members from the compacted rows.
#[tokio::test]
async fn compacted_membership_keeps_every_version() {
    let dir = tempfile::tempdir().expect("tempdir");
    let warehouse = Warehouse::open(&dir.path().display().to_string()).expect("warehouse");
    load_into(&warehouse, &[&sample_data()], false).await;
    let ids = crate::common::query_strings(&warehouse, "SELECT id FROM patient ORDER BY id").await;
    let server = Server::start(dir.path(), &[]);
    let id = create_empty(&server);
    let added: Vec<&String> = ids.iter().take(10).collect();
    for patient in &added {
        assert_eq!(
            operation(&server, &id, "member-add", &parameters(vec![by_id(patient)]), &[]).status,
            200
        );
    }
    for patient in &added {
        assert_eq!(
            operation(&server, &id, "member-remove", &parameters(vec![by_id(patient)]), &[]).status,
            200
        );
    }
    let group = read(&server, &id);
    assert_eq!(
        (group["meta"]["versionId"].clone(), group["quantity"].clone()),
        (json!("21"), json!(0))
    );
    let at_11 = http("GET", &format!("{}/Group/{id}/_history/11", server.base), &[], None).json();
    assert_eq!(at_11["member"].as_array().map(Vec::len), Some(10), "{at_11}");
    let at_15 = http("GET", &format!("{}/Group/{id}/_history/15", server.base), &[], None).json();
    assert_eq!(at_15["member"].as_array().map(Vec::len), Some(6), "{at_15}");
    let files = std::fs::read_dir(dir.path().join(format!("_server/membership/{id}")))
        .expect("segments")
        .count();
    assert!(files <= 2 * 16, "compaction bounds the segment files: {files}");
    let record: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join(format!("_server/groups/{id}.json"))).expect("record"))
            .expect("JSON");
    let segments = record["segments"].as_array().map_or(0, Vec::len);
    assert!(segments < 16, "compacted: {segments} segments");
    assert!(
        !record["retired"].as_array().map(Vec::is_empty).unwrap_or(true),
        "the replaced ones retired"
    );
}
