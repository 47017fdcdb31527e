//! Bulk `$export`: the CLI twin and the HTTP API against the real binary.
//! Expected contents are computed independently from the source NDJSON
//! (references read with serde_json), never from the warehouse.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::time::Duration;

use datafusion::arrow::array::{Array, AsArray};
use fhirlake::warehouse::Warehouse;
use serde_json::{Value, json};

use crate::common::{fhirlake, load_into, sample_data, shared_dataset};
use crate::http_client::{HttpResponse, Server, http};

const CONTEXT_TYPES: &[&str] = &[
    "Practitioner",
    "PractitionerRole",
    "Organization",
    "Location",
    "Medication",
];

/// Every resource of a dataset folder, parsed.
struct Source {
    resources: Vec<Value>,
}

impl Source {
    fn read(dirs: &[&Path]) -> Source {
        let mut resources = Vec::new();
        for dir in dirs {
            for entry in std::fs::read_dir(dir).expect("dataset folder") {
                let path = entry.expect("entry").path();
                if path.extension().is_some_and(|e| e == "ndjson") {
                    let text = std::fs::read_to_string(&path).expect("read");
                    resources.extend(
                        text.lines()
                            .map(|l| serde_json::from_str::<Value>(l).expect("json line")),
                    );
                }
            }
        }
        Source { resources }
    }

    fn of_type<'a>(&'a self, resource_type: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.resources
            .iter()
            .filter(move |r| r["resourceType"] == resource_type)
    }

    /// The ids of the resources of `resource_type`, sorted.
    fn sorted_ids(&self, resource_type: &str) -> Vec<String> {
        let mut ids: Vec<String> = self
            .of_type(resource_type)
            .map(|r| r["id"].as_str().expect("id").to_string())
            .collect();
        ids.sort();
        ids
    }
}

fn type_of(resource: &Value) -> &str {
    resource["resourceType"].as_str().unwrap_or_default()
}

/// Every `reference` string anywhere in `value`.
fn references(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("reference", Value::String(s)) => out.push(s.clone()),
                    _ => references(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| references(v, out)),
        _ => {}
    }
}

/// The types the R4 Patient CompartmentDefinition lists with parameters.
fn compartment_types() -> BTreeSet<String> {
    let path = crate::common::repo().join("data/fhir-r4/CompartmentDefinition-patient.json");
    let definition: Value = serde_json::from_slice(&std::fs::read(path).expect("definition")).expect("json");
    definition["resource"]
        .as_array()
        .expect("resource[]")
        .iter()
        .filter(|r| r["param"].as_array().is_some_and(|p| !p.is_empty()))
        .map(|r| r["code"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Patients a Synthea resource belongs to: itself for a Patient; for a
/// type of the Patient compartment the Patients it references; none for
/// other types.
fn patients_of(resource: &Value) -> BTreeSet<String> {
    if type_of(resource) == "Patient" {
        return BTreeSet::from([resource["id"].as_str().unwrap_or_default().to_string()]);
    }
    thread_local! {
        static COMPARTMENT: BTreeSet<String> = compartment_types();
    }
    if !COMPARTMENT.with(|c| c.contains(type_of(resource))) {
        return BTreeSet::new();
    }
    let mut refs = Vec::new();
    references(resource, &mut refs);
    refs.iter()
        .filter_map(|r| r.strip_prefix("Patient/"))
        .map(str::to_string)
        .collect()
}

/// Expected per-type counts of a Patient/Group export whose population is
/// `members` (`None`: every patient), resources limited by `keep`.
fn expected_compartment_export(
    source: &Source,
    members: Option<&BTreeSet<String>>,
    keep: impl Fn(&Value) -> bool,
) -> BTreeMap<String, usize> {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut context: BTreeSet<(String, String)> = BTreeSet::new();
    for resource in &source.resources {
        let t = type_of(resource);
        if CONTEXT_TYPES.contains(&t) || !keep(resource) {
            continue;
        }
        let patients = patients_of(resource);
        let included = match members {
            Some(members) => patients.iter().any(|p| members.contains(p)),
            None => !patients.is_empty(),
        };
        if included {
            *counts.entry(t.to_string()).or_default() += 1;
            let mut refs = Vec::new();
            references(resource, &mut refs);
            for r in refs {
                if let Some((rt, id)) = r.split_once('/')
                    && CONTEXT_TYPES.contains(&rt)
                {
                    context.insert((rt.to_string(), id.to_string()));
                }
            }
        }
    }
    for resource in &source.resources {
        let t = type_of(resource);
        if CONTEXT_TYPES.contains(&t)
            && keep(resource)
            && context.contains(&(t.to_string(), resource["id"].as_str().unwrap_or_default().to_string()))
        {
            *counts.entry(t.to_string()).or_default() += 1;
        }
    }
    counts
}

/// Per-type counts of the NDJSON files listed in a manifest (read through
/// `read`), checking each file's `count` and each line's type.
pub(crate) fn manifest_counts(
    manifest: &Value,
    read: impl Fn(&str) -> Vec<u8>,
) -> (BTreeMap<String, usize>, Vec<Value>) {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut all = Vec::new();
    for entry in manifest["output"].as_array().expect("output[]") {
        let t = entry["type"].as_str().expect("type");
        let bytes = read(entry["url"].as_str().expect("url"));
        let text = String::from_utf8(bytes).expect("utf-8");
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("ndjson line"))
            .collect();
        assert_eq!(
            lines.len() as u64,
            entry["count"].as_u64().expect("count"),
            "count of {entry}"
        );
        for line in &lines {
            assert_eq!(type_of(line), t, "one type per file");
        }
        *counts.entry(t.to_string()).or_default() += lines.len();
        all.extend(lines);
    }
    (counts, all)
}

fn cli_export(warehouse: &Path, out: &Path, args: &[&str]) -> Value {
    let mut full = vec![
        "--warehouse",
        warehouse.to_str().expect("path"),
        "export",
        "--out",
        out.to_str().expect("path"),
    ];
    full.extend_from_slice(args);
    let result = fhirlake(&full);
    assert!(
        result.status.success(),
        "export {args:?} failed: {}",
        String::from_utf8_lossy(&result.stderr)
    );
    serde_json::from_slice(&std::fs::read(out.join("manifest.json")).expect("manifest.json")).expect("manifest json")
}

fn read_local(dir: &Path) -> impl Fn(&str) -> Vec<u8> + '_ {
    move |name| std::fs::read(dir.join(name)).expect("exported file")
}

/// A Group resource of the loaded data with `members` as Patient members.
fn write_group(dir: &Path, id: &str, members: &[&str]) {
    let group = json!({
        "resourceType": "Group", "id": id, "type": "person", "actual": true,
        "member": members.iter().map(|m| json!({"entity": {"reference": format!("Patient/{m}")}})).collect::<Vec<_>>(),
    });
    std::fs::write(dir.join(format!("Group.{id}.ndjson")), format!("{group}\n")).expect("write group");
}

/// A roster's members count only while active and within their period:
/// the CLI (now) and the server (at the export's transactionTime) export
/// the same two of five.
#[tokio::test]
async fn roster_members_count_only_while_active_and_within_their_period() {
    let dir = tempfile::tempdir().expect("tempdir");
    let groups = dir.path().join("groups");
    std::fs::create_dir_all(&groups).expect("mkdir");
    let ids = Source::read(&[&sample_data()]).sorted_ids("Patient");
    let entry = |i: usize, extra: Value| {
        let mut member = json!({"entity": {"reference": format!("Patient/{}", ids[i])}});
        if let (Some(member), Some(extra)) = (member.as_object_mut(), extra.as_object()) {
            member.extend(extra.clone());
        }
        member
    };
    let roster = json!({
        "resourceType": "Group", "id": "roster", "type": "person", "actual": true,
        "member": [
            entry(0, json!({})),
            entry(1, json!({"inactive": true})),
            entry(2, json!({"period": {"start": "1990-01-01", "end": "2001"}})),
            entry(3, json!({"period": {"start": "2999-01-01"}})),
            entry(4, json!({"period": {"start": "2001-05"}})),
            entry(5, json!({"period": {"start": "not a date"}})),
        ],
    });
    std::fs::write(groups.join("Group.ndjson"), format!("{roster}\n")).expect("write");
    let wh = dir.path().join("wh");
    let warehouse = Warehouse::open(wh.to_str().expect("path")).expect("open");
    load_into(&warehouse, &[&sample_data(), &groups], false).await;
    let expected = BTreeSet::from([ids[0].clone(), ids[4].clone()]);
    let patients_of_manifest = |manifest: &Value, read: &dyn Fn(&str) -> Vec<u8>| -> BTreeSet<String> {
        let (_, lines) = manifest_counts(manifest, read);
        lines
            .iter()
            .filter(|r| r["resourceType"] == "Patient")
            .filter_map(|r| r["id"].as_str().map(str::to_string))
            .collect()
    };
    let out = dir.path().join("out");
    let manifest = cli_export(&wh, &out, &["--group", "roster", "--type", "Patient"]);
    assert_eq!(
        patients_of_manifest(&manifest, &read_local(&out)),
        expected,
        "CLI export"
    );
    let server = Server::start(&wh, &[]);
    let (_, manifest) = export_ok(
        "GET",
        &format!("{}/Group/roster/$export?_type=Patient", server.base),
        None,
    )
    .await;
    let read = |url: &str| get_file(url, &[]).body;
    assert_eq!(patients_of_manifest(&manifest, &read), expected, "HTTP export");
    server.stop();
}

#[tokio::test]
async fn cli_export_system_patient_and_group_levels_with_parameters() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wh = dir.path().join("wh");
    let groups = dir.path().join("groups");
    std::fs::create_dir_all(&groups).expect("mkdir");
    let patient_ids = Source::read(&[&sample_data()]).sorted_ids("Patient");
    let members: Vec<&str> = patient_ids.iter().take(3).map(String::as_str).collect();
    write_group(&groups, "g1", &members);
    // The Group is in its members' Patient compartments (R4: Group.member).
    let source = Source::read(&[&sample_data(), &groups]);
    let warehouse = Warehouse::open(wh.to_str().expect("path")).expect("open");
    load_into(&warehouse, &[&sample_data(), &groups], false).await;

    // System level: everything, exactly once.
    let out = dir.path().join("system");
    let manifest = cli_export(&wh, &out, &[]);
    let (counts, lines) = manifest_counts(&manifest, read_local(&out));
    let mut expected: BTreeMap<String, usize> = BTreeMap::new();
    for r in &source.resources {
        *expected.entry(type_of(r).to_string()).or_default() += 1;
    }
    assert_eq!(counts, expected);
    let ids: BTreeSet<(String, String)> = lines
        .iter()
        .map(|l| (type_of(l).to_string(), l["id"].as_str().unwrap_or_default().to_string()))
        .collect();
    assert_eq!(ids.len(), lines.len(), "no resource twice");

    // Patient level: the compartments plus referenced context resources.
    let out = dir.path().join("patients");
    let manifest = cli_export(&wh, &out, &["--patients"]);
    let (counts, _) = manifest_counts(&manifest, read_local(&out));
    assert_eq!(counts, expected_compartment_export(&source, None, |_| true));
    assert_eq!(counts["Group"], 1, "a Group is in its members' compartments");

    // Group level.
    let member_set: BTreeSet<String> = members.iter().map(|m| m.to_string()).collect();
    let out = dir.path().join("group");
    let manifest = cli_export(&wh, &out, &["--group", "g1"]);
    let (counts, lines) = manifest_counts(&manifest, read_local(&out));
    let expected_group = expected_compartment_export(&source, Some(&member_set), |_| true);
    assert_eq!(counts, expected_group);
    assert_eq!(counts["Patient"], 3);
    assert!(counts["Practitioner"] > 0 && counts["Organization"] > 0, "{counts:?}");
    for line in lines.iter().filter(|l| !CONTEXT_TYPES.contains(&type_of(l))) {
        assert!(
            patients_of(line).iter().any(|p| member_set.contains(p)),
            "{} is not a member's",
            line["id"]
        );
    }

    // _type and _typeFilter (ORed filters; commas inside values kept).
    let out = dir.path().join("filtered");
    let manifest = cli_export(
        &wh,
        &out,
        &[
            "--group",
            "g1",
            "--type",
            "Condition,Patient",
            "--type-filter",
            "Condition?clinical-status=resolved,inactive",
            "--type-filter",
            "Condition?clinical-status=active&code=http://snomed.info/sct|444814009",
        ],
    );
    let (counts, lines) = manifest_counts(&manifest, read_local(&out));
    let wanted_condition = |r: &Value| {
        if type_of(r) != "Condition" {
            return true;
        }
        let status = r["clinicalStatus"]["coding"][0]["code"].as_str().unwrap_or_default();
        let codes: Vec<&str> = r["code"]["coding"]
            .as_array()
            .map(|c| c.iter().filter_map(|c| c["code"].as_str()).collect())
            .unwrap_or_default();
        matches!(status, "resolved" | "inactive") || (status == "active" && codes.contains(&"444814009"))
    };
    let mut expected = expected_compartment_export(&source, Some(&member_set), wanted_condition);
    expected.retain(|t, _| t == "Condition" || t == "Patient");
    assert_eq!(counts, expected);
    assert!(counts["Condition"] > 0);
    for line in lines.iter().filter(|l| type_of(l) == "Condition") {
        assert!(
            wanted_condition(line),
            "a filtered-out Condition was exported: {}",
            line["id"]
        );
    }

    // _elements: kept and mandatory elements only, tagged SUBSETTED.
    let out = dir.path().join("elements");
    let manifest = cli_export(
        &wh,
        &out,
        &[
            "--type",
            "Patient,Encounter",
            "--elements",
            "Patient.gender,Encounter.period",
        ],
    );
    let (_, lines) = manifest_counts(&manifest, read_local(&out));
    for line in &lines {
        let keys: BTreeSet<&str> = line.as_object().expect("object").keys().map(String::as_str).collect();
        let allowed: &[&str] = if type_of(line) == "Patient" {
            &["resourceType", "id", "meta", "gender"]
        } else {
            // status and class are 1..1 in R4 Encounter.
            &["resourceType", "id", "meta", "period", "status", "class"]
        };
        assert!(keys.iter().all(|k| allowed.contains(k)), "{keys:?}");
        assert_eq!(line["meta"]["tag"][0]["code"], "SUBSETTED");
    }

    // An earlier export is never overwritten.
    let again = fhirlake(&[
        "--warehouse",
        wh.to_str().expect("path"),
        "export",
        "--out",
        out.to_str().expect("path"),
    ]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("not empty"));

    // patient: only members; a non-member is an error.
    let out = dir.path().join("one");
    let manifest = cli_export(
        &wh,
        &out,
        &["--group", "g1", "--patient", members[0], "--type", "Patient"],
    );
    let (counts, _) = manifest_counts(&manifest, read_local(&out));
    assert_eq!(counts["Patient"], 1);
    let outsider = &patient_ids[9];
    let result = fhirlake(&[
        "--warehouse",
        wh.to_str().expect("path"),
        "export",
        "--out",
        dir.path().join("bad").to_str().expect("path"),
        "--group",
        "g1",
        "--patient",
        outsider,
    ]);
    assert!(!result.status.success());
    assert!(
        String::from_utf8_lossy(&result.stderr).contains(outsider.as_str()),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );

    // organizeOutputBy=Patient: header, the Patient, then its resources.
    let out = dir.path().join("blocks");
    let manifest = cli_export(
        &wh,
        &out,
        &["--group", "g1", "--organize-by-patient", "--max-file-mib", "1"],
    );
    assert_eq!(manifest["outputOrganizedBy"], "Patient");
    let mut blocks: BTreeMap<String, usize> = BTreeMap::new();
    let mut by_type: BTreeMap<String, usize> = BTreeMap::new();
    for entry in manifest["output"].as_array().expect("output") {
        assert!(entry.get("type").is_none(), "organized files carry no type");
        let text = std::fs::read_to_string(out.join(entry["url"].as_str().expect("url"))).expect("file");
        let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).expect("json")).collect();
        let mut current: Option<String> = None;
        let mut resources = 0;
        for (i, line) in lines.iter().enumerate() {
            if type_of(line) == "Parameters" {
                let reference = line["parameter"][0]["valueReference"]["reference"]
                    .as_str()
                    .expect("header");
                let patient = reference.strip_prefix("Patient/").expect("Patient header").to_string();
                assert!(member_set.contains(&patient), "{patient} is not a member");
                assert_eq!(type_of(&lines[i + 1]), "Patient", "the Patient follows its header");
                assert_eq!(lines[i + 1]["id"].as_str(), Some(patient.as_str()));
                *blocks.entry(patient.clone()).or_default() += 1;
                current = Some(patient);
                continue;
            }
            let patient = current.as_ref().expect("a resource before any header");
            assert!(patients_of(line).contains(patient), "{} outside its block", line["id"]);
            *by_type.entry(type_of(line).to_string()).or_default() += 1;
            resources += 1;
        }
        assert_eq!(entry["count"].as_u64(), Some(resources), "count excludes headers");
    }
    assert_eq!(blocks.len(), 3);
    assert!(blocks.values().all(|&n| n == 1), "blocks are never split: {blocks:?}");
    // A resource is in the block of each member whose compartment holds it.
    let mut expected: BTreeMap<String, usize> = BTreeMap::new();
    for r in source.resources.iter().filter(|r| !CONTEXT_TYPES.contains(&type_of(r))) {
        let n = patients_of(r).intersection(&member_set).count();
        if n > 0 {
            *expected.entry(type_of(r).to_string()).or_default() += n;
        }
    }
    assert_eq!(by_type, expected);

    // File splitting: 1 MiB files, every line in exactly one of them.
    let out = dir.path().join("split");
    let manifest = cli_export(&wh, &out, &["--type", "ExplanationOfBenefit", "--max-file-mib", "1"]);
    let files = manifest["output"].as_array().expect("output");
    assert!(files.len() >= 2, "2.2 MB of EOBs make several 1 MiB files: {files:?}");
    let (counts, _) = manifest_counts(&manifest, read_local(&out));
    assert_eq!(
        counts["ExplanationOfBenefit"],
        source.of_type("ExplanationOfBenefit").count()
    );
    for file in files {
        let size = std::fs::metadata(out.join(file["url"].as_str().expect("url")))
            .expect("file")
            .len();
        assert!(size <= 1024 * 1024, "{file} is {size} bytes");
    }
}

#[tokio::test]
async fn cli_export_parquet_reads_back_with_datafusion() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wh = dir.path().join("wh");
    let warehouse = Warehouse::open(wh.to_str().expect("path")).expect("open");
    load_into(&warehouse, &[&sample_data()], false).await;
    let source = Source::read(&[&sample_data()]);
    let out = dir.path().join("parquet");
    let manifest = cli_export(&wh, &out, &["--format", "parquet", "--type", "Observation,Patient"]);
    let ctx = datafusion::prelude::SessionContext::new();
    for entry in manifest["output"].as_array().expect("output") {
        let path = out.join(entry["url"].as_str().expect("url"));
        assert!(path.extension().is_some_and(|e| e == "parquet"));
        let frame = ctx
            .read_parquet(path.to_str().expect("path"), Default::default())
            .await
            .expect("parquet readable");
        let batches = frame.collect().await.expect("rows");
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        assert_eq!(rows as u64, entry["count"].as_u64().expect("count"));
        let schema = batches[0].schema();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["id", "version_id", "last_updated", "resource"]);
        for batch in &batches {
            // DataFusion reads text as Utf8View by default.
            let column =
                datafusion::arrow::compute::cast(batch.column(3), &datafusion::arrow::datatypes::DataType::Utf8)
                    .expect("text");
            let resources = column.as_string::<i32>();
            for i in 0..resources.len() {
                let value: Value = serde_json::from_str(resources.value(i)).expect("resource JSON");
                assert_eq!(value["resourceType"], entry["type"]);
            }
        }
    }
    let total: u64 = manifest["output"]
        .as_array()
        .expect("output")
        .iter()
        .map(|e| e["count"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(
        total as usize,
        source.of_type("Observation").count() + source.of_type("Patient").count()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_export_since_returns_only_later_changes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wh = dir.path().join("wh");
    let warehouse = Warehouse::open(wh.to_str().expect("path")).expect("open");
    load_into(&warehouse, &[&sample_data()], false).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let since = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    tokio::time::sleep(Duration::from_millis(50)).await;
    // A new version of one Patient (no meta.lastUpdated: the load time counts).
    let source = Source::read(&[&sample_data()]);
    let mut patient = source.of_type("Patient").next().expect("patient").clone();
    patient["gender"] = json!("other");
    let update = dir.path().join("update");
    std::fs::create_dir_all(&update).expect("mkdir");
    std::fs::write(update.join("Patient.ndjson"), format!("{patient}\n")).expect("write");
    // Loaded after _since, though its lastUpdated is years older: a client
    // syncing with _since must still receive it.
    let mut late = source.of_type("Condition").next().expect("condition").clone();
    late["id"] = json!("late-arrival");
    late["meta"] = json!({"lastUpdated": "2015-01-01T00:00:00Z"});
    std::fs::write(update.join("Condition.ndjson"), format!("{late}\n")).expect("write");
    load_into(&warehouse, &[&update], false).await;
    let out = dir.path().join("since");
    let manifest = cli_export(&wh, &out, &["--since", &since]);
    let (counts, lines) = manifest_counts(&manifest, read_local(&out));
    assert_eq!(
        counts,
        BTreeMap::from([("Condition".to_string(), 1), ("Patient".to_string(), 1)])
    );
    let patient_line = lines.iter().find(|l| type_of(l) == "Patient").expect("patient");
    assert_eq!(patient_line["gender"], "other", "the latest version only");
    let out = dir.path().join("until");
    let manifest = cli_export(&wh, &out, &["--until", &since, "--type", "Patient"]);
    let (counts, _) = manifest_counts(&manifest, read_local(&out));
    assert_eq!(counts["Patient"], source.of_type("Patient").count() - 1);
}

/// Follows `Retry-After` until the status URL stops answering 202.
pub(crate) async fn poll_export(url: &str) -> HttpResponse {
    for _ in 0..240 {
        let response = http("GET", url, &[("Accept", "application/json")], None);
        if response.status != 202 {
            return response;
        }
        assert!(response.header("x-progress").is_some(), "202 carries X-Progress");
        let wait: u64 = response
            .header("retry-after")
            .and_then(|v| v.parse().ok())
            .expect("Retry-After");
        tokio::time::sleep(Duration::from_secs(wait)).await;
    }
    panic!("{url} still running after four minutes");
}

fn kickoff(method: &str, url: &str, body: Option<&Value>, extra: &[(&str, &str)]) -> HttpResponse {
    let mut headers = vec![("Accept", "application/fhir+json"), ("Prefer", "respond-async")];
    headers.extend_from_slice(extra);
    if body.is_some() {
        headers.push(("Content-Type", "application/fhir+json"));
    }
    let text = body.map(Value::to_string);
    http(method, url, &headers, text.as_deref())
}

pub(crate) fn get_file(url: &str, headers: &[(&str, &str)]) -> HttpResponse {
    http("GET", url, headers, None)
}

/// Kicks off, polls and returns (status URL, manifest).
pub(crate) async fn export_ok(method: &str, url: &str, body: Option<&Value>) -> (String, Value) {
    let response = kickoff(method, url, body, &[]);
    assert_eq!(
        response.status,
        202,
        "{url}: {}",
        String::from_utf8_lossy(&response.body)
    );
    let location = response
        .header("content-location")
        .expect("Content-Location")
        .to_string();
    assert!(location.starts_with("http://127.0.0.1:"), "absolute: {location}");
    let done = poll_export(&location).await;
    assert_eq!(done.status, 200, "{}", String::from_utf8_lossy(&done.body));
    assert!(
        done.header("content-type")
            .is_some_and(|t| t.starts_with("application/json"))
    );
    assert!(done.header("expires").is_some(), "Expires on the manifest");
    (location, done.json())
}

#[tokio::test]
async fn http_export_kickoff_poll_download() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wh = dir.path().join("wh");
    let warehouse = Warehouse::open(wh.to_str().expect("path")).expect("open");
    load_into(&warehouse, &[&sample_data()], false).await;
    let source = Source::read(&[&sample_data()]);
    let server = Server::start(&wh, &[]);

    // System level, GET, repeated _type = one list.
    let (_, manifest) = export_ok(
        "GET",
        &format!("{}/$export?_type=Patient&_type=Condition", server.base),
        None,
    )
    .await;
    assert_eq!(manifest["requiresAccessToken"], false);
    assert!(
        manifest["request"]
            .as_str()
            .is_some_and(|r| r.contains("$export?_type=Patient"))
    );
    assert_eq!(manifest["error"], json!([]));
    assert_eq!(manifest["deleted"], json!([]));
    let read = |url: &str| {
        let response = get_file(url, &[("Accept", "application/fhir+ndjson")]);
        assert_eq!(response.status, 200);
        assert_eq!(response.header("content-type"), Some("application/fhir+ndjson"));
        response.body
    };
    let (counts, _) = manifest_counts(&manifest, read);
    assert_eq!(
        counts,
        BTreeMap::from([
            ("Condition".to_string(), source.of_type("Condition").count()),
            ("Patient".to_string(), source.of_type("Patient").count()),
        ])
    );

    // gzip and ranges on one file.
    let url = manifest["output"][0]["url"].as_str().expect("url").to_string();
    let plain = get_file(&url, &[]).body;
    let gz = get_file(&url, &[("Accept-Encoding", "gzip")]);
    assert_eq!(gz.header("content-encoding"), Some("gzip"));
    let mut decoded = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(gz.body.as_slice()), &mut decoded).expect("gunzip");
    assert_eq!(decoded, plain);
    let part = get_file(&url, &[("Range", "bytes=10-19")]);
    assert_eq!(part.status, 206);
    assert_eq!(part.body, plain[10..20]);
    assert_eq!(
        part.header("content-range"),
        Some(format!("bytes 10-19/{}", plain.len()).as_str())
    );
    assert_eq!(get_file(&url, &[("Range", "bytes=999999999-")]).status, 416);
    // Only listed files are served.
    let base = url.rsplit_once('/').expect("slash").0;
    for bad in ["..%2F..%2F_manifest%2Fv00000000000000000001.json", "nope.ndjson"] {
        let response = get_file(&format!("{base}/{bad}"), &[]);
        assert_eq!(response.status, 404, "{bad}");
        assert_eq!(response.json()["resourceType"], "OperationOutcome");
    }

    // Patient level, POST with Parameters, Parquet.
    let body = json!({"resourceType": "Parameters", "parameter": [
        {"name": "_outputFormat", "valueString": "application/vnd.apache.parquet"},
        {"name": "_type", "valueString": "Immunization"},
    ]});
    let (_, manifest) = export_ok("POST", &format!("{}/Patient/$export", server.base), Some(&body)).await;
    let entry = &manifest["output"][0];
    assert_eq!(entry["type"], "Immunization");
    assert_eq!(
        entry["count"].as_u64(),
        Some(source.of_type("Immunization").count() as u64)
    );
    assert_eq!(manifest["request"], format!("{}/Patient/$export", server.base));
    let file = get_file(entry["url"].as_str().expect("url"), &[]);
    assert_eq!(file.header("content-type"), Some("application/vnd.apache.parquet"));
    let local = dir.path().join("imm.parquet");
    std::fs::write(&local, &file.body).expect("write");
    let ctx = datafusion::prelude::SessionContext::new();
    let rows = ctx
        .read_parquet(local.to_str().expect("path"), Default::default())
        .await
        .expect("parquet")
        .count()
        .await
        .expect("count");
    assert_eq!(rows, source.of_type("Immunization").count());

    // A cohort Group created through the API, exported.
    let group = crate::common::cohort_group("women", "Patient?gender=female");
    let created = http(
        "POST",
        &format!("{}/Group", server.base),
        &[("Content-Type", "application/fhir+json")],
        Some(&group.to_string()),
    );
    assert_eq!(created.status, 201);
    let group_id = created.json()["id"].as_str().expect("id").to_string();
    let women: BTreeSet<String> = source
        .of_type("Patient")
        .filter(|p| p["gender"] == "female")
        .map(|p| p["id"].as_str().unwrap_or_default().to_string())
        .collect();
    let (_, manifest) = export_ok("GET", &format!("{}/Group/{group_id}/$export", server.base), None).await;
    let read = |url: &str| get_file(url, &[]).body;
    let (counts, _) = manifest_counts(&manifest, read);
    assert_eq!(counts, expected_compartment_export(&source, Some(&women), |_| true));

    // separate-export-status.
    let response = kickoff(
        "GET",
        &format!("{}/$export?_type=Patient", server.base),
        None,
        &[("Prefer", "respond-async,separate-export-status")],
    );
    assert_eq!(response.status, 202);
    assert!(
        response
            .header("preference-applied")
            .is_some_and(|p| p.contains("separate-export-status"))
    );
    let location = response.header("content-location").expect("location").to_string();
    let mut done = None;
    for _ in 0..60 {
        let poll = http("GET", &location, &[], None);
        assert_eq!(poll.status, 200, "separate status answers 200");
        match poll.header("x-export-status") {
            Some(s) if s.starts_with("200") => {
                done = Some(poll.json());
                break;
            }
            Some(s) => assert!(s.starts_with("202"), "{s}"),
            None => panic!("no X-Export-Status"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(done.expect("finished")["output"][0]["type"], "Patient");
    server.stop();
}

#[tokio::test]
async fn http_export_rejections_lenient_handling_and_limits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wh = dir.path().join("wh");
    let groups = dir.path().join("groups");
    std::fs::create_dir_all(&groups).expect("mkdir");
    let source = Source::read(&[&sample_data()]);
    let ids: Vec<String> = source
        .of_type("Patient")
        .map(|p| p["id"].as_str().expect("id").to_string())
        .collect();
    write_group(&groups, "g1", &[&ids[0]]);
    let warehouse = Warehouse::open(wh.to_str().expect("path")).expect("open");
    load_into(&warehouse, &[&sample_data(), &groups], false).await;
    let server = Server::start(&wh, &[]);
    let base = server.base.clone();

    let rejected: Vec<(String, Option<Value>, u16, &str)> = vec![
        (format!("{base}/$export?_foo=1"), None, 400, "_foo"),
        (format!("{base}/$export?_type=Nope"), None, 400, "Nope"),
        (format!("{base}/$export?_outputFormat=text/csv"), None, 400, "text/csv"),
        (format!("{base}/$export?_since=yesterday"), None, 400, "instant"),
        (
            format!("{base}/$export?_typeFilter=Condition%3Fbogus%3D1"),
            None,
            400,
            "bogus",
        ),
        (format!("{base}/Group/nope/$export"), None, 404, "nope"),
        (
            format!("{base}/Group/g1/$export?_type=ValueSet"),
            None,
            400,
            "compartment",
        ),
        (format!("{base}/Patient/$export?patient=Patient/1"), None, 400, "POST"),
        (
            format!("{base}/Group/g1/$export"),
            Some(
                json!({"resourceType": "Parameters", "parameter": [{"name": "patient", "valueReference": {"reference": format!("Patient/{}", ids[1])}}]}),
            ),
            400,
            "not members",
        ),
        (
            format!("{base}/Group/g1/$export"),
            Some(json!({"resourceType": "Patient"})),
            400,
            "Parameters",
        ),
    ];
    for (url, body, status, text) in rejected {
        let method = if body.is_some() { "POST" } else { "GET" };
        let response = kickoff(method, &url, body.as_ref(), &[]);
        assert_eq!(
            response.status,
            status,
            "{url}: {}",
            String::from_utf8_lossy(&response.body)
        );
        let outcome = response.json();
        assert_eq!(outcome["resourceType"], "OperationOutcome", "{url}");
        assert!(outcome.to_string().contains(text), "{url}: {outcome}");
    }

    // Lenient: the unsupported parameter is reported in error[].
    let response = kickoff(
        "GET",
        &format!("{base}/Group/g1/$export?_type=Patient,Nope&_foo=1"),
        None,
        &[("Prefer", "respond-async, handling=lenient")],
    );
    assert_eq!(response.status, 202, "{}", String::from_utf8_lossy(&response.body));
    let location = response.header("content-location").expect("location").to_string();
    let done = poll_export(&location).await;
    assert_eq!(done.status, 200);
    let manifest = done.json();
    assert_eq!(manifest["output"].as_array().map(Vec::len), Some(1));
    let error_url = manifest["error"][0]["url"].as_str().expect("error file");
    let errors = String::from_utf8(get_file(error_url, &[]).body).expect("utf-8");
    let outcomes: Vec<Value> = errors.lines().map(|l| serde_json::from_str(l).expect("json")).collect();
    assert_eq!(outcomes.len(), 2);
    assert!(outcomes.iter().all(|o| o["resourceType"] == "OperationOutcome"));
    assert!(errors.contains("Nope") && errors.contains("_foo"));

    // DELETE on a finished export purges it; later polls are 404.
    let files_dir = wh
        .join("_server/export-files")
        .join(location.rsplit('/').next().expect("id"));
    assert!(files_dir.is_dir());
    let deleted = http("DELETE", &location, &[], None);
    assert_eq!(deleted.status, 202);
    assert_eq!(http("GET", &location, &[], None).status, 404);
    assert_eq!(http("DELETE", &location, &[], None).status, 404);
    assert!(!files_dir.exists(), "files purged");
    assert_eq!(get_file(error_url, &[]).status, 404);
    server.stop();

    // Concurrency limit and cancelling a running export.
    let server = Server::start(&wh, &["--max-exports", "1", "--job-delay-ms", "4000"]);
    let first = kickoff("GET", &format!("{}/$export", server.base), None, &[]);
    assert_eq!(first.status, 202);
    let second = kickoff("GET", &format!("{}/$export", server.base), None, &[]);
    assert_eq!(second.status, 429);
    assert!(second.header("retry-after").is_some());
    let location = first.header("content-location").expect("location").to_string();
    let running = http("GET", &location, &[], None);
    assert_eq!(running.status, 202);
    assert_eq!(http("GET", &location, &[], None).status, 429, "polled too soon");
    assert_eq!(http("DELETE", &location, &[], None).status, 202);
    assert_eq!(http("GET", &location, &[], None).status, 404);
    // The slot is free again.
    let third = kickoff("GET", &format!("{}/$export?_type=Patient", server.base), None, &[]);
    assert_eq!(third.status, 202);
    server.stop();
}

#[tokio::test]
async fn http_export_survives_a_crash() {
    // Enough data that the export is still writing when its first file
    // appears: 20 copies of synthea-10 (~31k Observations), 1 MiB parts.
    let dir = tempfile::tempdir().expect("tempdir");
    let big = dir.path().join("big");
    let generated = fhirlake(&[
        "gen",
        "--from",
        sample_data().to_str().expect("path"),
        "--copies",
        "20",
        "--out",
        big.to_str().expect("path"),
    ]);
    assert!(
        generated.status.success(),
        "{}",
        String::from_utf8_lossy(&generated.stderr)
    );
    let wh = dir.path().join("wh");
    let warehouse = Warehouse::open(wh.to_str().expect("path")).expect("open");
    load_into(&warehouse, &[&big], false).await;
    let source = Source::read(&[&big]);
    let server = Server::start(&wh, &["--export-file-mib", "1"]);
    let response = kickoff(
        "GET",
        &format!("{}/$export?_type=Observation,Claim", server.base),
        None,
        &[],
    );
    assert_eq!(response.status, 202);
    let id = response
        .header("content-location")
        .and_then(|l| l.rsplit('/').next())
        .expect("id")
        .to_string();
    // Kill as soon as the job has written into its folder: mid-run.
    let files_dir = wh.join("_server/export-files").join(&id);
    let started = std::time::Instant::now();
    while std::fs::read_dir(&files_dir).map_or(true, |mut entries| entries.next().is_none()) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the export wrote nothing in 60 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    server.kill();
    let record: Value = serde_json::from_slice(
        &std::fs::read(wh.join("_server/exports").join(format!("{id}.json"))).expect("job record"),
    )
    .expect("job record JSON");
    assert_eq!(
        record["state"]["state"], "running",
        "the export finished before the kill, so the test checked nothing: give it more data"
    );
    let server = Server::start(&wh, &[]);
    let (_, manifest) = {
        let location = format!("{}/_export/{id}", server.base);
        let done = poll_export(&location).await;
        assert_eq!(done.status, 200, "{}", String::from_utf8_lossy(&done.body));
        (location, done.json())
    };
    let read = |url: &str| get_file(url, &[]).body;
    let (counts, _) = manifest_counts(&manifest, read);
    assert_eq!(
        counts,
        BTreeMap::from([
            ("Claim".to_string(), source.of_type("Claim").count()),
            ("Observation".to_string(), source.of_type("Observation").count()),
        ])
    );
    // Exactly the listed files exist (no half file from the killed run).
    let on_disk: BTreeSet<String> = std::fs::read_dir(&files_dir)
        .expect("files")
        .map(|e| e.expect("entry").file_name().to_string_lossy().to_string())
        .collect();
    let listed: BTreeSet<String> = manifest["output"]
        .as_array()
        .expect("output")
        .iter()
        .map(|e| {
            e["url"]
                .as_str()
                .and_then(|u| u.rsplit('/').next())
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert_eq!(on_disk, listed);
    server.stop();
}

#[tokio::test]
async fn export_counts_on_synthea_100() {
    let Some(data) = shared_dataset("synthea-100") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let wh = dir.path().join("wh");
    let groups = dir.path().join("groups");
    std::fs::create_dir_all(&groups).expect("mkdir");
    let ids = Source::read(&[&data]).sorted_ids("Patient");
    let half: Vec<&str> = ids.iter().step_by(2).map(String::as_str).collect();
    write_group(&groups, "half", &half);
    let source = Source::read(&[&data, &groups]);
    let warehouse = Warehouse::open(wh.to_str().expect("path")).expect("open");
    load_into(&warehouse, &[&data, &groups], false).await;

    let out = dir.path().join("system");
    let (counts, _) = manifest_counts(&cli_export(&wh, &out, &[]), read_local(&out));
    let mut expected: HashMap<String, usize> = HashMap::new();
    for r in &source.resources {
        *expected.entry(type_of(r).to_string()).or_default() += 1;
    }
    assert_eq!(counts.into_iter().collect::<HashMap<_, _>>(), expected);

    let out = dir.path().join("patients");
    let (counts, _) = manifest_counts(&cli_export(&wh, &out, &["--patients"]), read_local(&out));
    assert_eq!(counts, expected_compartment_export(&source, None, |_| true));

    let members: BTreeSet<String> = half.iter().map(|s| s.to_string()).collect();
    let out = dir.path().join("group");
    let (counts, _) = manifest_counts(&cli_export(&wh, &out, &["--group", "half"]), read_local(&out));
    assert_eq!(counts, expected_compartment_export(&source, Some(&members), |_| true));

    let out = dir.path().join("diabetes");
    let filter = "Condition?code=http://snomed.info/sct|44054006";
    let manifest = cli_export(
        &wh,
        &out,
        &["--group", "half", "--type", "Condition", "--type-filter", filter],
    );
    let (counts, lines) = manifest_counts(&manifest, read_local(&out));
    let expected = source
        .of_type("Condition")
        .filter(|c| patients_of(c).iter().any(|p| members.contains(p)))
        .filter(|c| {
            c["code"]["coding"]
                .as_array()
                .is_some_and(|cs| cs.iter().any(|c| c["code"] == "44054006"))
        })
        .count();
    assert_eq!(counts.get("Condition").copied().unwrap_or(0), expected);
    assert!(lines.iter().all(|l| l["code"].to_string().contains("44054006")));
}

#[tokio::test]
async fn http_export_partial_manifests_are_immutable_pages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wh = dir.path().join("wh");
    let warehouse = Warehouse::open(wh.to_str().expect("path")).expect("open");
    load_into(&warehouse, &[&sample_data()], false).await;
    let source = Source::read(&[&sample_data()]);
    let server = Server::start(&wh, &["--export-type-delay-ms", "2500"]);
    let response = kickoff(
        "GET",
        &format!(
            "{}/$export?_type=Condition,Observation,Patient&allowPartialManifests=true",
            server.base
        ),
        None,
        &[],
    );
    assert_eq!(response.status, 202);
    let location = response.header("content-location").expect("location").to_string();
    // Follow pages: each page, once returned, keeps its files.
    let mut pages: Vec<Value> = Vec::new();
    let mut url = location.clone();
    let mut finished = false;
    let mut partial_seen = false;
    for _ in 0..120 {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let poll = http("GET", &url, &[], None);
        match poll.status {
            202 if poll.body.is_empty() => continue,
            202 | 200 => {
                let page = poll.json();
                if poll.status == 202 {
                    partial_seen = true;
                    // Files of a partial page are downloadable already.
                    for entry in page["output"].as_array().expect("output") {
                        assert_eq!(get_file(entry["url"].as_str().expect("url"), &[]).status, 200);
                    }
                }
                let index = pages
                    .iter()
                    .position(|p: &Value| p["output"] == page["output"])
                    .unwrap_or(pages.len());
                if index < pages.len() {
                    // The same page again: only a link may have been added.
                    let mut without_link = page.clone();
                    without_link.as_object_mut().expect("object").remove("link");
                    let mut earlier = pages[index].clone();
                    earlier.as_object_mut().expect("object").remove("link");
                    assert_eq!(without_link, earlier, "a returned manifest page never changes");
                } else {
                    pages.push(page.clone());
                }
                if let Some(next) = page["link"][0]["url"].as_str() {
                    assert_eq!(page["link"][0]["relation"], "next");
                    url = next.to_string();
                    continue;
                }
                if poll.status == 200 {
                    finished = true;
                    break;
                }
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(finished, "the export finished");
    assert!(partial_seen, "at least one partial page while running");
    assert!(pages.len() >= 2, "{pages:?}");
    let mut all = json!({"output": []});
    for page in &pages {
        for entry in page["output"].as_array().expect("output") {
            all["output"].as_array_mut().expect("array").push(entry.clone());
        }
    }
    let (counts, _) = manifest_counts(&all, |url| get_file(url, &[]).body);
    assert_eq!(
        counts,
        BTreeMap::from([
            ("Condition".to_string(), source.of_type("Condition").count()),
            ("Observation".to_string(), source.of_type("Observation").count()),
            ("Patient".to_string(), source.of_type("Patient").count()),
        ])
    );
    // Re-reading the first page after completion gives the same files.
    let first = http("GET", &location, &[], None);
    assert_eq!(first.status, 200);
    assert_eq!(first.json()["output"], pages[0]["output"]);
    server.stop();
}

fn deletion_bundle(urls: &[String]) -> String {
    let bundle = json!({
        "resourceType": "Bundle", "type": "transaction",
        "entry": urls.iter().map(|u| json!({"request": {"method": "DELETE", "url": u}})).collect::<Vec<_>>(),
    });
    format!("{bundle}\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletions_are_applied_and_exported_as_deleted_bundles() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wh = dir.path().join("wh");
    let groups = dir.path().join("groups");
    std::fs::create_dir_all(&groups).expect("mkdir");
    let source = Source::read(&[&sample_data()]);
    let patient_ids = source.sorted_ids("Patient");
    let owner = patient_ids[0].clone();
    write_group(&groups, "owner", &[&owner]);
    write_group(&groups, "others", &[&patient_ids[1]]);
    let warehouse = Warehouse::open(wh.to_str().expect("path")).expect("open");
    load_into(&warehouse, &[&sample_data(), &groups], false).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let since = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    tokio::time::sleep(Duration::from_millis(50)).await;

    // Delete two of the owner's Conditions and one Practitioner.
    let conditions: Vec<&Value> = source
        .of_type("Condition")
        .filter(|c| patients_of(c).contains(&owner))
        .take(2)
        .collect();
    assert_eq!(conditions.len(), 2);
    let condition_ids: Vec<String> = conditions
        .iter()
        .map(|c| c["id"].as_str().expect("id").to_string())
        .collect();
    let practitioner = source.of_type("Practitioner").next().expect("practitioner")["id"]
        .as_str()
        .expect("id")
        .to_string();
    let deletions = dir.path().join("deletions");
    std::fs::create_dir_all(&deletions).expect("mkdir");
    let urls = vec![
        format!("Condition/{}", condition_ids[0]),
        format!("Condition/{}", condition_ids[1]),
        format!("Practitioner/{practitioner}"),
    ];
    std::fs::write(deletions.join("Bundle.ndjson"), deletion_bundle(&urls)).expect("write");
    load_into(&warehouse, &[&deletions], false).await;

    // Gone from the table, the views and the index; remembered as tombstones.
    let conditions_left = crate::common::query_i64(&warehouse, "SELECT count(*) FROM fhir.condition").await;
    assert_eq!(conditions_left as usize, source.of_type("Condition").count() - 2);
    let view_rows = crate::common::query_i64(
        &warehouse,
        &format!("SELECT count(*) FROM condition WHERE id = '{}'", condition_ids[0]),
    )
    .await;
    assert_eq!(view_rows, 0, "views are rebuilt without the deleted resource");
    let index_rows = crate::common::query_i64(
        &warehouse,
        &format!(
            "SELECT count(*) FROM index_token WHERE resource_id = '{}'",
            condition_ids[0]
        ),
    )
    .await;
    assert_eq!(index_rows, 0, "the index forgets the deleted resource");
    let tombstones = crate::common::query_i64(&warehouse, "SELECT count(*) FROM _tombstones").await;
    assert_eq!(tombstones, 3);

    // System export since: the three deletions, nothing in output.
    let out = dir.path().join("since");
    let manifest = cli_export(&wh, &out, &["--since", &since]);
    assert_eq!(manifest["output"], json!([]));
    let deleted_urls = |manifest: &Value, out: &Path| -> BTreeSet<String> {
        let mut found = BTreeSet::new();
        for entry in manifest["deleted"].as_array().expect("deleted[]") {
            assert_eq!(entry["type"], "Bundle");
            let text = std::fs::read_to_string(out.join(entry["url"].as_str().expect("url"))).expect("file");
            for line in text.lines() {
                let bundle: Value = serde_json::from_str(line).expect("json");
                assert_eq!(bundle["type"], "transaction");
                for e in bundle["entry"].as_array().expect("entries") {
                    assert_eq!(e["request"]["method"], "DELETE");
                    found.insert(e["request"]["url"].as_str().expect("url").to_string());
                }
            }
        }
        found
    };
    assert_eq!(deleted_urls(&manifest, &out), urls.iter().cloned().collect());
    // Without _since there is no deleted[].
    let out = dir.path().join("all");
    let manifest = cli_export(&wh, &out, &["--type", "Patient"]);
    assert_eq!(manifest["deleted"], json!([]));

    // Group exports list only their members' deletions (Practitioners
    // belong to no compartment).
    let out = dir.path().join("owner");
    let manifest = cli_export(&wh, &out, &["--group", "owner", "--since", &since]);
    assert_eq!(deleted_urls(&manifest, &out), urls[..2].iter().cloned().collect());
    let out = dir.path().join("others");
    let manifest = cli_export(&wh, &out, &["--group", "others", "--since", &since]);
    assert_eq!(manifest["deleted"], json!([]));

    // Loaded again: in output, no longer in deleted.
    let again = dir.path().join("again");
    std::fs::create_dir_all(&again).expect("mkdir");
    std::fs::write(again.join("Condition.ndjson"), format!("{}\n", conditions[0])).expect("write");
    load_into(&warehouse, &[&again], false).await;
    let out = dir.path().join("resurrected");
    let manifest = cli_export(&wh, &out, &["--since", &since, "--type", "Condition"]);
    let (counts, _) = manifest_counts(&manifest, read_local(&out));
    assert_eq!(counts, BTreeMap::from([("Condition".to_string(), 1)]));
    assert_eq!(deleted_urls(&manifest, &out), BTreeSet::from([urls[1].clone()]));

    // A malformed deletion entry is a clear error naming the line.
    let bad = dir.path().join("bad");
    std::fs::create_dir_all(&bad).expect("mkdir");
    std::fs::write(bad.join("Bundle.ndjson"), deletion_bundle(&["Nope/1".to_string()])).expect("write");
    let result = fhirlake(&[
        "--warehouse",
        wh.to_str().expect("path"),
        "load",
        "--quiet",
        bad.to_str().expect("path"),
    ]);
    assert!(!result.status.success());
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(
        stderr.contains("Bundle.ndjson:1") && stderr.contains("Nope/1"),
        "{stderr}"
    );
}

#[tokio::test]
async fn group_exports_carry_the_provenance_of_their_resources() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wh = dir.path().join("wh");
    let extra = dir.path().join("extra");
    std::fs::create_dir_all(&extra).expect("mkdir");
    let source = Source::read(&[&sample_data()]);
    let ids = source.sorted_ids("Patient");
    let (member, outsider) = (&ids[0], &ids[1]);
    write_group(&extra, "g1", &[member]);
    let condition_of = |patient: &str| {
        source
            .of_type("Condition")
            .find(|c| patients_of(c).contains(patient))
            .and_then(|c| c["id"].as_str())
            .expect("a condition")
            .to_string()
    };
    let provenance = |id: &str, target: String| {
        json!({"resourceType": "Provenance", "id": id, "recorded": "2020-01-01T00:00:00Z",
            "target": [{"reference": target}], "agent": [{"who": {"display": "x"}}]})
    };
    let lines = [
        provenance("prov-member-condition", format!("Condition/{}", condition_of(member))),
        provenance("prov-member-patient", format!("Patient/{member}")),
        provenance(
            "prov-outsider-condition",
            format!("Condition/{}", condition_of(outsider)),
        ),
    ];
    std::fs::write(
        extra.join("Provenance.ndjson"),
        lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
    )
    .expect("write");
    let warehouse = Warehouse::open(wh.to_str().expect("path")).expect("open");
    load_into(&warehouse, &[&sample_data(), &extra], false).await;
    let out = dir.path().join("group");
    let manifest = cli_export(&wh, &out, &["--group", "g1"]);
    let (_, lines) = manifest_counts(&manifest, read_local(&out));
    let provenance: BTreeSet<&str> = lines
        .iter()
        .filter(|l| type_of(l) == "Provenance")
        .filter_map(|l| l["id"].as_str())
        .collect();
    assert_eq!(
        provenance,
        BTreeSet::from(["prov-member-condition", "prov-member-patient"])
    );
    // _type without Provenance, but includeAssociatedData asks for it.
    let out = dir.path().join("associated");
    let manifest = cli_export(
        &wh,
        &out,
        &[
            "--group",
            "g1",
            "--type",
            "Condition",
            "--include-associated-data",
            "LatestProvenanceResources",
        ],
    );
    let (_, lines) = manifest_counts(&manifest, read_local(&out));
    let provenance: Vec<&str> = lines
        .iter()
        .filter(|l| type_of(l) == "Provenance")
        .filter_map(|l| l["id"].as_str())
        .collect();
    // Only the Provenance of what is exported (the Patient is not).
    assert_eq!(provenance, ["prov-member-condition"]);
}
