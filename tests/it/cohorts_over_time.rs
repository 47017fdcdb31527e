//! Cohorts over time, over real HTTP with the real binary: snapshot,
//! refreshed and on-demand Groups across loads made by the CLI while the
//! server runs; versions written only when membership changes; the refresh
//! log; membership history (`$members?_since`, `$members?_at`, the
//! `group_membership` SQL table).

use std::path::Path;

use fhirlake::warehouse::Warehouse;
use serde_json::{Value, json};

use crate::common::{cohort_group, fhirlake, load_into, sample_data, sql_csv_rows};
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
    let rows = sql_csv_rows(dir.path(), &sql);
    let mut expected = vec![format!("{gone},1,3,true"), "new-woman,2,,true".to_string()];
    expected.sort();
    assert_eq!(rows, expected);

    // Every Group's members now, in SQL: the refreshed Group's count.
    let sql = format!("SELECT count(*) FROM group_members WHERE group_id = '{refreshed_id}' AND source = 'server'");
    assert_eq!(
        sql_csv_rows(dir.path(), &sql),
        [v3["quantity"].to_string()],
        "group_members of the refreshed Group"
    );

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

/// A small deterministic generator (the seed is printed, and
/// `FHIRLAKE_TEST_SEED` replays a run).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const CODE: &str = "162864005";
const SNOMED: &str = "http://snomed.info/sct";

/// What the test believes the warehouse holds: Patients (id → resource)
/// and Conditions (id → resource).
struct Model {
    patients: std::collections::BTreeMap<String, Value>,
    conditions: std::collections::BTreeMap<String, Value>,
}

impl Model {
    fn read(data: &Path) -> Model {
        let mut model = Model {
            patients: Default::default(),
            conditions: Default::default(),
        };
        for entry in std::fs::read_dir(data).expect("data").filter_map(Result::ok) {
            let name = entry.file_name().to_string_lossy().to_string();
            let target = if name.starts_with("Patient.") {
                &mut model.patients
            } else if name.starts_with("Condition.") {
                &mut model.conditions
            } else {
                continue;
            };
            for line in std::fs::read_to_string(entry.path()).expect("read").lines() {
                let resource: Value = serde_json::from_str(line).expect("JSON");
                target.insert(resource["id"].as_str().expect("id").to_string(), resource);
            }
        }
        model
    }

    fn subject(condition: &Value) -> String {
        condition["subject"]["reference"]
            .as_str()
            .unwrap_or_default()
            .trim_start_matches("Patient/")
            .to_string()
    }

    fn has_code(condition: &Value) -> bool {
        condition["code"]["coding"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["code"] == CODE)
    }

    /// The expected members of each refreshed Group's filters.
    fn women(&self) -> std::collections::BTreeSet<String> {
        self.patients
            .iter()
            .filter(|(_, p)| p["gender"] == "female")
            .map(|(id, _)| id.clone())
            .collect()
    }

    fn coded(&self) -> std::collections::BTreeSet<String> {
        self.conditions
            .values()
            .filter(|c| Self::has_code(c))
            .map(Self::subject)
            .filter(|s| self.patients.contains_key(s))
            .collect()
    }
}

/// One generated delta: new, changed and deleted Patients and Conditions,
/// applied to `model`; returns the NDJSON files and the patients touched.
fn delta(
    rng: &mut Rng,
    model: &mut Model,
    round: usize,
) -> (Vec<(&'static str, Vec<Value>)>, std::collections::BTreeSet<String>) {
    let mut touched = std::collections::BTreeSet::new();
    let (mut patients, mut conditions, mut deletions) = (Vec::new(), Vec::new(), Vec::new());
    let ids: Vec<String> = model.patients.keys().cloned().collect();
    for i in 0..2 {
        let id = format!("new-{round}-{i}");
        let gender = if rng.below(2) == 0 { "female" } else { "male" };
        let patient = json!({"resourceType": "Patient", "id": id, "gender": gender});
        let condition = json!({"resourceType": "Condition", "id": format!("cond-{id}"),
            "code": {"coding": [{"system": SNOMED, "code": CODE}]}, "subject": {"reference": format!("Patient/{id}")}});
        model.patients.insert(id.clone(), patient.clone());
        model.conditions.insert(format!("cond-{id}"), condition.clone());
        patients.push(patient);
        conditions.push(condition);
        touched.insert(id);
    }
    for _ in 0..2 {
        let id = rng.pick(&ids).clone();
        let Some(patient) = model.patients.get_mut(&id) else {
            continue;
        };
        patient["gender"] = json!(if patient["gender"] == "female" {
            "male"
        } else {
            "female"
        });
        patients.push(patient.clone());
        touched.insert(id);
    }
    let condition_ids: Vec<String> = model.conditions.keys().cloned().collect();
    for change in 0..3 {
        let id = rng.pick(&condition_ids).clone();
        let Some(condition) = model.conditions.get_mut(&id) else {
            continue;
        };
        touched.insert(Model::subject(condition));
        if change < 2 {
            let code = if Model::has_code(condition) { "38341003" } else { CODE };
            condition["code"] = json!({"coding": [{"system": SNOMED, "code": code}]});
        } else {
            // Moved to another patient: both are touched.
            let to = rng.pick(&ids).clone();
            condition["subject"] = json!({"reference": format!("Patient/{to}")});
            touched.insert(to);
        }
        conditions.push(condition.clone());
    }
    let gone_condition = rng.pick(&condition_ids).clone();
    if let Some(condition) = model.conditions.remove(&gone_condition) {
        touched.insert(Model::subject(&condition));
        conditions.retain(|c| c["id"] != gone_condition.as_str());
        deletions.push(json!({"request": {"method": "DELETE", "url": format!("Condition/{gone_condition}")}}));
    }
    if round % 2 == 1 {
        // A Patient deleted while their Conditions remain.
        let gone = rng.pick(&ids).clone();
        if model.patients.remove(&gone).is_some() {
            patients.retain(|p| p["id"] != gone.as_str());
            touched.insert(gone.clone());
            deletions.push(json!({"request": {"method": "DELETE", "url": format!("Patient/{gone}")}}));
        }
    }
    let mut files = vec![("Patient.ndjson", patients), ("Condition.ndjson", conditions)];
    if !deletions.is_empty() {
        files.push((
            "deleted.ndjson",
            vec![json!({"resourceType": "Bundle", "type": "transaction", "entry": deletions})],
        ));
    }
    (files, touched)
}

/// The member ids of Group `id` (every page).
fn member_ids(server: &Server, id: &str) -> std::collections::BTreeSet<String> {
    let (status, bundle) = members(server, id, "");
    assert_eq!(status, 200, "{bundle}");
    assert!(bundle["total"].as_u64().is_some_and(|t| t < 1000), "one page holds all");
    entry_ids(&bundle).into_iter().collect()
}

/// Randomised delta loads over synthea-100: after each, every refreshed
/// Group equals a full recompute (a fresh Group) and the test's own model;
/// Groups whose filters stay in the compartment refresh incrementally over
/// exactly the touched patients, the chained one and one based on another
/// refreshed Group fully (after its base); the history's joins
/// and leaves are the differences of consecutive memberships; the snapshot
/// Group never changes; the on-demand Group's export is computed at its
/// kick-off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refreshes_after_random_deltas_equal_full_recomputes() {
    let Some(data) = crate::common::shared_dataset("synthea-100") else {
        return;
    };
    let seed: u64 = std::env::var("FHIRLAKE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| chrono::Utc::now().timestamp_micros() as u64 | 1);
    println!("FHIRLAKE_TEST_SEED={seed}");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let warehouse = Warehouse::open(&dir.path().display().to_string()).expect("warehouse");
    load_into(&warehouse, &[&data], false).await;
    let mut model = Model::read(&data);
    let server = Server::start(dir.path(), &["--membership-mode", "refreshed"]);
    let coded = format!("Condition?code={SNOMED}|{CODE}");
    let has = format!("Patient?_has:Condition:patient:code={SNOMED}|{CODE}");
    let filters: Vec<(&str, Vec<String>)> = vec![
        ("women", vec!["Patient?gender=female".into()]),
        ("coded", vec![coded.clone()]),
        ("has", vec![has]),
        ("coded women", vec!["Patient?gender=female".into(), coded.clone()]),
        (
            "chained",
            vec![format!("Condition?subject:Patient.gender=female&code={SNOMED}|{CODE}")],
        ),
    ];
    let group_of = |name: &str, filters: &[String]| {
        let mut group = cohort_group(name, &filters[0]);
        for filter in &filters[1..] {
            let mut extension = group["modifierExtension"][0].clone();
            extension["valueExpression"]["expression"] = json!(filter);
            group["modifierExtension"].as_array_mut().expect("list").push(extension);
        }
        group
    };
    let ids: Vec<String> = filters
        .iter()
        .map(|(name, f)| {
            create(&server, &group_of(name, f))["id"]
                .as_str()
                .expect("id")
                .to_string()
        })
        .collect();
    let snapshot = create(&server, &women("snapshot"));
    let snapshot_id = snapshot["id"].as_str().expect("id").to_string();
    let snapshot_members = member_ids(&server, &snapshot_id);
    let on_demand = create(&server, &women("on-demand"))["id"]
        .as_str()
        .expect("id")
        .to_string();
    // A Group whose base population is the refreshed women Group: refreshed
    // after it, fully.
    let mut based_group = cohort_group("coded, of the women Group", &coded);
    based_group["member"] = json!([{"entity": {"reference": format!("Group/{}", ids[0])}}]);
    let based = create(&server, &based_group)["id"].as_str().expect("id").to_string();
    let mut women_before = member_ids(&server, &ids[0]);
    assert_eq!(women_before, model.women());
    let mut women_updated = read(&server, &ids[0])["meta"]["lastUpdated"]
        .as_str()
        .expect("lastUpdated")
        .to_string();

    for round in 0..4 {
        let (files, touched) = delta(&mut rng, &mut model, round);
        let folder = dir.path().join(format!("delta-{round}"));
        std::fs::create_dir_all(&folder).expect("mkdir");
        for (name, lines) in &files {
            let text: Vec<String> = lines.iter().map(Value::to_string).collect();
            std::fs::write(folder.join(name), text.join("\n") + "\n").expect("write");
        }
        let out = fhirlake(&[
            "--warehouse",
            &dir.path().display().to_string(),
            "load",
            "--quiet",
            &folder.display().to_string(),
        ]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let version = round as u64 + 2;
        for ((name, group_filters), id) in filters.iter().zip(&ids) {
            let record = wait_for_refresh(dir.path(), id, version).await;
            assert_ne!(record["outcome"], "failed", "{name}: {record}");
            if *name == "chained" {
                assert_eq!(record["strategy"], "full", "{name}: {record}");
            } else {
                assert_eq!(record["strategy"], "incremental", "{name} (seed {seed}): {record}");
                assert_eq!(
                    record["patients"],
                    touched.len(),
                    "{name} (seed {seed}): {record} vs {touched:?}"
                );
            }
            let fresh = create(&server, &group_of(&format!("{name} now"), group_filters));
            let fresh_id = fresh["id"].as_str().expect("id");
            assert_eq!(
                member_ids(&server, id),
                member_ids(&server, fresh_id),
                "{name} after round {round} (seed {seed})"
            );
        }
        let record = wait_for_refresh(dir.path(), &based, version).await;
        assert_eq!(record["strategy"], "full", "{record}");
        let expected: std::collections::BTreeSet<String> =
            model.women().intersection(&model.coded()).cloned().collect();
        assert_eq!(
            member_ids(&server, &based),
            expected,
            "the based Group after round {round} (seed {seed})"
        );
        let women_now = member_ids(&server, &ids[0]);
        assert_eq!(women_now, model.women(), "round {round} (seed {seed})");
        assert_eq!(
            member_ids(&server, &ids[1]),
            model.coded(),
            "round {round} (seed {seed})"
        );
        // History: the joins and leaves since the last change.
        let (status, changes) = members(&server, &ids[0], &format!("&_since={}", url_encode(&women_updated)));
        assert_eq!(status, 200, "{changes}");
        let action_of = |e: &Value| {
            e["search"]["extension"][0]["extension"]
                .as_array()
                .and_then(|parts| parts.iter().find(|p| p["url"] == "action"))
                .and_then(|p| p["valueCode"].as_str())
                .unwrap_or_default()
                .to_string()
        };
        let listed = |action: &str| -> std::collections::BTreeSet<String> {
            changes["entry"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|e| action_of(e) == action)
                .filter_map(|e| e["resource"]["id"].as_str().map(str::to_string))
                .collect()
        };
        assert_eq!(
            listed("joined"),
            women_now.difference(&women_before).cloned().collect(),
            "round {round}"
        );
        assert_eq!(
            listed("left"),
            women_before.difference(&women_now).cloned().collect(),
            "round {round}"
        );
        women_before = women_now;
        women_updated = read(&server, &ids[0])["meta"]["lastUpdated"]
            .as_str()
            .expect("lastUpdated")
            .to_string();
    }
    assert_eq!(
        member_ids(&server, &snapshot_id),
        snapshot_members,
        "a snapshot never changes"
    );
    assert_eq!(read(&server, &snapshot_id)["meta"]["versionId"], "1");
    // The on-demand Group, exported: the women at its kick-off.
    let (patients, _) = exported(&server, &on_demand, "").await;
    let exported_women: std::collections::BTreeSet<String> = patients.into_iter().collect();
    assert_eq!(exported_women, model.women(), "seed {seed}");
    server.stop();
}

/// `$member-add` or `$member-remove` of one Patient.
fn change_member(server: &Server, id: &str, operation: &str, patient: &str) {
    let body = json!({"resourceType": "Parameters", "parameter": [
        {"name": "patientReference", "valueReference": {"reference": format!("Patient/{patient}")}}
    ]});
    let response = http(
        "POST",
        &format!("{}/Group/{id}/${operation}", server.base),
        &[("Content-Type", "application/fhir+json")],
        Some(&body.to_string()),
    );
    assert_eq!(response.status, 200, "{}", String::from_utf8_lossy(&response.body));
}

/// History older than `--group-history-retention` is dropped when the
/// membership is next compacted, once no kept version needs it: rows of
/// members who left before the cutoff go, and questions about instants
/// before it are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_older_than_the_retention_is_dropped_at_compaction() {
    let dir = tempfile::tempdir().expect("tempdir");
    let warehouse = Warehouse::open(&dir.path().display().to_string()).expect("warehouse");
    load_into(&warehouse, &[&sample_data()], false).await;
    let patients = crate::common::query_strings(&warehouse, "SELECT id FROM patient ORDER BY id").await;
    let (a, b, c) = (&patients[0], &patients[1], &patients[2]);
    let server = Server::start(
        dir.path(),
        &["--group-history-retention", "2s", "--export-retention", "2s"],
    );
    let group = create(
        &server,
        &json!({"resourceType": "Group", "type": "person", "actual": true}),
    );
    let id = group["id"].as_str().expect("id").to_string();
    change_member(&server, &id, "member-add", a);
    change_member(&server, &id, "member-add", b);
    change_member(&server, &id, "member-remove", a);
    let early = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let rows_of = |patient: &str| {
        let sql = format!("SELECT count(*) FROM group_membership WHERE group_id = '{id}' AND patient_id = '{patient}'");
        sql_csv_rows(dir.path(), &sql).concat()
    };
    assert_eq!(rows_of(a), "1", "the left member's row is history");
    let (status, _) = members(&server, &id, &format!("&_since={}", url_encode(&early)));
    assert_eq!(status, 200);
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    // The superseded versions expire (the expiry loop, every 2 s here):
    // rows only they needed may then go.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let history = http("GET", &format!("{}/Group/{id}/_history", server.base), &[], None).json();
        if history["total"].as_u64().is_some_and(|t| t <= 1) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "old versions not purged: {}",
            history["total"]
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    // Enough changes for a compaction (every 16 delta segments).
    for i in 0..18 {
        let operation = if i % 2 == 0 { "member-add" } else { "member-remove" };
        change_member(&server, &id, operation, c);
    }
    assert_eq!(
        rows_of(a),
        "0",
        "the row of a member who left before the cutoff is gone"
    );
    assert_eq!(rows_of(b), "1", "a current member stays");
    // The version current at the cutoff (the removal of a) still dates
    // the history; the Group's creation no longer does.
    let (status, _) = members(&server, &id, &format!("&_since={}", url_encode(&early)));
    assert_eq!(status, 200);
    let created = group["meta"]["lastUpdated"].as_str().expect("lastUpdated");
    let (status, refused) = members(&server, &id, &format!("&_since={}", url_encode(created)));
    assert_eq!(status, 400, "{}", refused["issue"]);
    assert!(refused.to_string().contains("history starts"), "{}", refused["issue"]);
    let (_, listed) = members(&server, &id, "");
    assert_eq!(
        entry_ids(&listed),
        vec![b.clone()],
        "added and removed nine times: c is out"
    );
    server.stop();
}

/// A refresh that cannot read the warehouse (an index file of the new
/// version damaged while no server ran) is logged as failed and keeps the
/// last membership; once the file is whole again, the next load's refresh
/// applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_refresh_keeps_the_last_membership() {
    let dir = tempfile::tempdir().expect("tempdir");
    let warehouse = Warehouse::open(&dir.path().display().to_string()).expect("warehouse");
    load_into(&warehouse, &[&sample_data()], false).await;
    let server = Server::start(dir.path(), &[]);
    let group = create(&server, &women("refreshed"));
    let id = group["id"].as_str().expect("id").to_string();
    let quantity = group["quantity"].clone();
    server.stop();
    cli_load(
        dir.path(),
        dir.path(),
        "delta-1",
        "Patient.ndjson",
        &[json!({"resourceType": "Patient", "id": "another-woman", "gender": "female"})],
    );
    // Damage the Patient token index of the new version (kept aside).
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("_manifest/v00000000000000000002.json")).expect("manifest"),
    )
    .expect("JSON");
    let damaged: Vec<std::path::PathBuf> = manifest["tables"]
        .as_object()
        .expect("tables")
        .iter()
        .filter(|(name, _)| name.starts_with("index/token/Patient"))
        .flat_map(|(_, table)| table["files"].as_array().cloned().unwrap_or_default())
        .filter_map(|f| f["path"].as_str().map(|p| dir.path().join(p)))
        .collect();
    assert!(!damaged.is_empty(), "{manifest}");
    for file in &damaged {
        std::fs::copy(file, file.with_extension("whole")).expect("keep");
        std::fs::write(file, b"not parquet").expect("damage");
    }
    let server = Server::start(dir.path(), &[]);
    let record = wait_for_refresh(dir.path(), &id, 2).await;
    assert_eq!(record["outcome"], "failed", "{record}");
    assert!(record["error"].as_str().is_some_and(|e| !e.is_empty()), "{record}");
    let after = read(&server, &id);
    assert_eq!(after["meta"]["versionId"], "1", "the last membership stays");
    assert_eq!(after["quantity"], quantity);
    server.stop();
    for file in &damaged {
        std::fs::rename(file.with_extension("whole"), file).expect("restore");
    }
    let server = Server::start(dir.path(), &[]);
    cli_load(
        dir.path(),
        dir.path(),
        "delta-2",
        "Patient.ndjson",
        &[json!({"resourceType": "Patient", "id": "a-third-woman", "gender": "female"})],
    );
    let record = wait_for_refresh(dir.path(), &id, 3).await;
    assert_eq!(record["outcome"], "changed", "{record}");
    let both = quantity.as_u64().expect("quantity") + 2;
    assert_eq!(read(&server, &id)["quantity"], both, "both new women are members");
    server.stop();
}
