//! Cohorts over time, over real HTTP with the real binary: snapshot,
//! refreshed and on-demand Groups across loads made by the CLI while the
//! server runs; versions written only when membership changes; the refresh
//! log; membership history (`$members?_since`, `$members?_at`, the
//! `group_membership` SQL table).

use std::path::Path;

use fhirlake::warehouse::Warehouse;
use serde_json::{Value, json};

use crate::common::{cohort_group, fhirlake, load_into, sample_data};
use crate::http_client::{Server, http};
use crate::server::wait_for_refresh;

const MODE: &str = "https://fhirlake.dev/fhir/StructureDefinition/membership-mode";
const REFRESHED: &str = "http://hl7.org/fhir/uv/bulkdata/StructureDefinition/members-refreshed";
const CHANGE: &str = "https://fhirlake.dev/fhir/StructureDefinition/membership-change";

fn women(mode: &str) -> Value {
    let mut group = cohort_group(&format!("women ({mode})"), "Patient?gender=female");
    group["extension"] = json!([{"url": MODE, "valueCode": mode}]);
    group
}

fn create(server: &Server, group: &Value) -> Value {
    let created = http(
        "POST",
        &format!("{}/Group", server.base),
        &[("Content-Type", "application/fhir+json")],
        Some(&group.to_string()),
    );
    assert_eq!(created.status, 201, "{}", String::from_utf8_lossy(&created.body));
    created.json()
}

fn read(server: &Server, id: &str) -> Value {
    let response = http("GET", &format!("{}/Group/{id}", server.base), &[], None);
    assert_eq!(response.status, 200, "{}", String::from_utf8_lossy(&response.body));
    response.json()
}

fn extension<'g>(group: &'g Value, url: &str) -> Option<&'g Value> {
    group["extension"].as_array()?.iter().find(|e| e["url"] == url)
}

/// `$members` with `query` (all pages: `_count=1000` is enough here).
fn members(server: &Server, id: &str, query: &str) -> (u16, Value) {
    let response = http(
        "GET",
        &format!("{}/Group/{id}/$members?_count=1000{query}", server.base),
        &[],
        None,
    );
    (response.status, response.json())
}

fn entry_ids(bundle: &Value) -> Vec<String> {
    let mut ids: Vec<String> = bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["resource"]["id"].as_str().map(str::to_string))
        .collect();
    ids.sort();
    ids
}

/// Loads `lines` as `file` with the CLI (another process than the server).
fn cli_load(warehouse: &Path, work: &Path, name: &str, file: &str, lines: &[Value]) {
    let folder = work.join(name);
    std::fs::create_dir_all(&folder).expect("mkdir");
    let text: Vec<String> = lines.iter().map(Value::to_string).collect();
    std::fs::write(folder.join(file), text.join("\n") + "\n").expect("write");
    let out = fhirlake(&[
        "--warehouse",
        &warehouse.display().to_string(),
        "load",
        "--quiet",
        &folder.display().to_string(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Snapshot, refreshed and on-demand Groups across two CLI loads (one
/// adding a woman, one deleting one), with their history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_modes_follow_loads_and_keep_history() {
    let dir = tempfile::tempdir().expect("tempdir");
    let warehouse = Warehouse::open(&dir.path().display().to_string()).expect("warehouse");
    load_into(&warehouse, &[&sample_data()], false).await;
    let women_before =
        crate::common::query_strings(&warehouse, "SELECT id FROM patient WHERE gender = 'female' ORDER BY id").await;
    // The server default is snapshot: no flag needed for it.
    let server = Server::start(dir.path(), &[]);
    let snapshot = create(&server, &women("snapshot"));
    let refreshed = create(&server, &women("refreshed"));
    let on_demand = create(&server, &women("on-demand"));
    let defaulted = create(&server, &cohort_group("women (default)", "Patient?gender=female"));
    assert_eq!(
        extension(&defaulted, MODE).map(|e| e["valueCode"].clone()),
        Some(json!("snapshot"))
    );
    assert!(
        extension(&on_demand, REFRESHED).is_none(),
        "on-demand has no members-refreshed: {on_demand}"
    );
    assert!(extension(&refreshed, REFRESHED).is_some());
    let id = |g: &Value| g["id"].as_str().expect("id").to_string();
    let (snapshot_id, refreshed_id, on_demand_id) = (id(&snapshot), id(&refreshed), id(&on_demand));
    let v1_time = refreshed["meta"]["lastUpdated"]
        .as_str()
        .expect("lastUpdated")
        .to_string();

    // A load by the CLI adds a woman: the refreshed Group follows within
    // the watch's poll, no interval configured.
    cli_load(
        dir.path(),
        dir.path(),
        "delta-1",
        "Patient.ndjson",
        &[json!({"resourceType": "Patient", "id": "new-woman", "gender": "female"})],
    );
    let record = wait_for_refresh(dir.path(), &refreshed_id, 2).await;
    assert_eq!(record["outcome"], "changed", "{record}");
    assert_eq!(
        (record["joined"].as_u64(), record["left"].as_u64()),
        (Some(1), Some(0)),
        "{record}"
    );
    let after = read(&server, &refreshed_id);
    assert_eq!(after["meta"]["versionId"], "2");
    assert_eq!(after["quantity"], women_before.len() + 1);
    assert_ne!(
        extension(&after, REFRESHED),
        extension(&refreshed, REFRESHED),
        "members-refreshed moved"
    );
    let snapshot_now = read(&server, &snapshot_id);
    assert_eq!(snapshot_now["meta"]["versionId"], "1", "a snapshot never changes");
    assert_eq!(snapshot_now["quantity"], women_before.len());

    // On-demand: computed by $members (and written as a version since it changed).
    let (status, listed) = members(&server, &on_demand_id, "");
    assert_eq!(status, 200, "{listed}");
    assert!(entry_ids(&listed).contains(&"new-woman".to_string()));
    assert_eq!(read(&server, &on_demand_id)["meta"]["versionId"], "2");
    let (_, again) = members(&server, &on_demand_id, "");
    assert_eq!(entry_ids(&again), entry_ids(&listed));
    assert_eq!(
        read(&server, &on_demand_id)["meta"]["versionId"],
        "2",
        "unchanged: no new version"
    );

    // A second load deletes a woman (a Bulk Data deletion Bundle).
    let gone = women_before[0].clone();
    cli_load(
        dir.path(),
        dir.path(),
        "delta-2",
        "deleted.ndjson",
        &[json!({
            "resourceType": "Bundle", "type": "transaction",
            "entry": [{"request": {"method": "DELETE", "url": format!("Patient/{gone}")}}],
        })],
    );
    let record = wait_for_refresh(dir.path(), &refreshed_id, 3).await;
    assert_eq!(record["outcome"], "changed", "{record}");
    assert_eq!(record["left"], 1, "{record}");
    let v3 = read(&server, &refreshed_id);
    assert_eq!(v3["meta"]["versionId"], "3");

    // History: the changes since version 1, and the membership as of it.
    let (status, changes) = members(&server, &refreshed_id, &format!("&_since={}", url_encode(&v1_time)));
    assert_eq!(status, 200, "{changes}");
    let actions: Vec<(String, String)> = changes["entry"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| {
            let change = &e["search"]["extension"][0];
            assert_eq!(change["url"], CHANGE);
            let action = change["extension"]
                .as_array()
                .expect("parts")
                .iter()
                .find(|p| p["url"] == "action");
            (
                e["resource"]["id"].as_str().unwrap_or_default().to_string(),
                action
                    .and_then(|a| a["valueCode"].as_str())
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect();
    assert_eq!(
        actions,
        [
            ("new-woman".to_string(), "joined".to_string()),
            (gone.clone(), "left".to_string())
        ]
    );
    let (_, as_of_v1) = members(&server, &refreshed_id, &format!("&_at={}", url_encode(&v1_time)));
    assert_eq!(entry_ids(&as_of_v1), women_before, "the membership as of version 1");
    let (status, refused) = members(&server, &refreshed_id, "&_since=2000-01-01T00:00:00Z");
    assert_eq!(status, 400, "before the Group existed: {refused}");
    let (status, refused) = members(&server, &refreshed_id, "&_since=yesterday");
    assert_eq!(status, 400, "{refused}");

    // The history in SQL: one row per membership, with times.
    let sql = format!(
        "SELECT patient_id, added_in_version, removed_in_version, added_at IS NOT NULL AS dated \
         FROM group_membership WHERE group_id = '{refreshed_id}' AND (patient_id = 'new-woman' OR patient_id = '{gone}') \
         ORDER BY patient_id"
    );
    let out = fhirlake(&[
        "--warehouse",
        &dir.path().display().to_string(),
        "sql",
        "--format",
        "csv",
        &sql,
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut expected = vec![format!("{gone},1,3,true"), "new-woman,2,,true".to_string()];
    expected.sort();
    let rows: Vec<&str> = text.lines().skip(1).collect();
    assert_eq!(rows, expected, "{text}");

    // The snapshot Group was never refreshed.
    let log = fhirlake(&[
        "--warehouse",
        &dir.path().display().to_string(),
        "groups",
        "refreshes",
        &snapshot_id,
    ]);
    assert!(log.stdout.is_empty(), "{}", String::from_utf8_lossy(&log.stdout));
    server.stop();
}

fn url_encode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// The Patient and Condition ids of a Group export of `group` with `query`.
async fn exported(server: &Server, group: &str, query: &str) -> (Vec<String>, Vec<String>) {
    let (_, manifest) = crate::export::export_ok(
        "GET",
        &format!("{}/Group/{group}/$export?_type=Patient,Condition{query}", server.base),
        None,
    )
    .await;
    let (_, lines) = crate::export::manifest_counts(&manifest, |url| http("GET", url, &[], None).body);
    let of = |t: &str| {
        let mut ids: Vec<String> = lines
            .iter()
            .filter(|r| r["resourceType"] == t)
            .filter_map(|r| r["id"].as_str().map(str::to_string))
            .collect();
        ids.sort();
        ids
    };
    (of("Patient"), of("Condition"))
}

/// A man becomes a woman after `_since`: a Group export of the women with
/// `_since` sends his older Conditions only with `newMemberData=all`;
/// continuing members get only what changed, in both readings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_who_joined_after_since_get_their_whole_record_when_asked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let warehouse = Warehouse::open(&dir.path().display().to_string()).expect("warehouse");
    load_into(&warehouse, &[&sample_data()], false).await;
    let men =
        crate::common::query_strings(&warehouse, "SELECT id FROM patient WHERE gender = 'male' ORDER BY id").await;
    let man_conditions = crate::common::query_strings(
        &warehouse,
        &format!(
            "SELECT id FROM fhir.\"Condition\" WHERE array_has(patients, '{}') ORDER BY id",
            men[0]
        ),
    )
    .await;
    assert!(!man_conditions.is_empty(), "the man has Conditions");
    let server = Server::start(dir.path(), &[]);
    let group = create(&server, &women("refreshed"));
    let id = group["id"].as_str().expect("id").to_string();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let since = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;

    // The man, now female (his other resources unchanged since the first load).
    let line = std::fs::read_dir(sample_data())
        .expect("sample")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("Patient"))
        .flat_map(|e| {
            std::fs::read_to_string(e.path())
                .expect("read")
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .find(|l| l.contains(&men[0]))
        .expect("the man's line");
    let mut patient: Value = serde_json::from_str(&line).expect("JSON");
    patient["gender"] = json!("female");
    cli_load(dir.path(), dir.path(), "changed", "Patient.ndjson", &[patient]);
    let record = wait_for_refresh(dir.path(), &id, 2).await;
    assert_eq!(record["joined"], 1, "{record}");
    assert_eq!(record["strategy"], "incremental", "{record}");
    assert_eq!(record["patients"], 1, "only the man was touched: {record}");

    let since_query = format!("&_since={}", url_encode(&since));
    let (patients, conditions) = exported(&server, &id, &since_query).await;
    assert_eq!(patients, vec![men[0].clone()], "only the changed Patient");
    assert!(conditions.is_empty(), "the plain _since reading: {conditions:?}");
    let (patients, conditions) = exported(&server, &id, &format!("{since_query}&newMemberData=all")).await;
    assert_eq!(patients, vec![men[0].clone()]);
    assert_eq!(
        conditions, man_conditions,
        "the new member's whole record, no one else's"
    );

    // Refused before the 202: a value that is not all or since; a system export.
    let kickoff = |url: String| {
        http(
            "GET",
            &url,
            &[("Prefer", "respond-async"), ("Accept", "application/fhir+json")],
            None,
        )
    };
    let bad = kickoff(format!("{}/Group/{id}/$export?newMemberData=some", server.base));
    assert_eq!(bad.status, 400, "{}", String::from_utf8_lossy(&bad.body));
    let system = kickoff(format!("{}/$export?newMemberData=all", server.base));
    assert_eq!(system.status, 400, "{}", String::from_utf8_lossy(&system.body));
    server.stop();
}
