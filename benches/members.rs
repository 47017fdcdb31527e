//! Member-based Group benchmark, against the real server on loopback:
//! `$member-add` of 1k, 10k and 100k members (time, and bytes the change
//! wrote under `_server/`), adding one member to the 100k-member Group
//! (issue 26: well under 1 MiB), and `$export` of the 100k-member roster
//! against a cohort Group with the same members, alternating, same run;
//! then `Patient/$match` latency over the same 100k Patients (by a unique
//! identifier, by demographics, by demographics with a misspelt given
//! name). `fhirlake gen` rewrites ids only, so each name and birth date
//! occurs once per copy: every demographic query scores ~163 candidates
//! (a harder case than a real lake's).
//!
//! Data: the Patients of `../shared/data/synthea-615` scaled with
//! `fhirlake gen` (`FHIRLAKE_BENCH_COPIES`, default 163: 100,245 Patients),
//! generated under `target/bench-data/`, never committed.
//!
//! Run: `cargo bench --bench members`. Prints Markdown, writes
//! `target/bench-members.json`.

mod common;

use common::{Server, bytes_under};

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// One request with curl; (status, body, seconds).
fn curl(method: &str, url: &str, body: Option<&Path>, headers: &[&str]) -> (u16, String, f64) {
    let mut command = Command::new("curl");
    command.args(["-s", "-X", method, "-w", "\n%{http_code}", url]);
    for header in headers {
        command.args(["-H", header]);
    }
    if let Some(body) = body {
        command.arg("--data-binary").arg(format!("@{}", body.display()));
    }
    let started = Instant::now();
    let out = command.output().expect("curl");
    let seconds = started.elapsed().as_secs_f64();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (status.trim().parse().unwrap_or(0), body.to_string(), seconds)
}

const FHIR_JSON: &str = "Content-Type: application/fhir+json";

fn create_group(server: &Server, group: &Value, work: &Path) -> String {
    let file = work.join("group.json");
    std::fs::write(&file, group.to_string()).expect("write");
    let (status, body, _) = curl("POST", &format!("{}/Group", server.base), Some(&file), &[FHIR_JSON]);
    assert_eq!(status, 201, "{body}");
    let created: Value = serde_json::from_str(&body).expect("Group");
    created["id"].as_str().expect("id").to_string()
}

/// `$member-add` of `ids` to a new empty Group: (Group id, seconds, bytes written).
fn member_add(server: &Server, warehouse: &Path, work: &Path, ids: &[String]) -> (String, f64, u64) {
    let group = json!({"resourceType": "Group", "type": "person", "actual": true});
    let id = create_group(server, &group, work);
    let parts: Vec<Value> = ids
        .iter()
        .map(|p| json!({"name": "member", "part": [{"name": "patientReference", "valueReference": {"reference": format!("Patient/{p}")}}]}))
        .collect();
    let file = work.join("member-add.json");
    std::fs::write(
        &file,
        json!({"resourceType": "Parameters", "parameter": parts}).to_string(),
    )
    .expect("write");
    let state = warehouse.join("_server");
    let before = bytes_under(&state);
    let url = format!("{}/Group/{id}/$member-add", server.base);
    let (status, body, seconds) = curl("POST", &url, Some(&file), &[FHIR_JSON]);
    assert_eq!(status, 200, "{}", &body[..body.len().min(500)]);
    (id, seconds, bytes_under(&state).saturating_sub(before))
}

/// A Group export of `_type=Patient` to completion: seconds.
fn export(server: &Server, group: &str) -> f64 {
    let url = format!("{}/Group/{group}/$export?_type=Patient", server.base);
    let started = Instant::now();
    let out = Command::new("curl")
        .args(["-s", "-D", "-", "-o", "/dev/null", &url])
        .args(["-H", "Prefer: respond-async", "-H", "Accept: application/fhir+json"])
        .output()
        .expect("curl");
    let headers = String::from_utf8_lossy(&out.stdout).to_string();
    let status_url = headers
        .lines()
        .find_map(|l| {
            l.strip_prefix("content-location: ")
                .or_else(|| l.strip_prefix("Content-Location: "))
        })
        .expect("Content-Location")
        .trim()
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let (status, _, _) = curl("GET", &status_url, None, &[]);
        if status == 200 {
            return started.elapsed().as_secs_f64();
        }
        assert!(status == 202 || status == 429, "export status {status}");
        assert!(Instant::now() < deadline, "export not done in 10 minutes");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The Patient-only scaled dataset and its warehouse, made when missing.
fn prepare(source: &Path) -> (PathBuf, PathBuf) {
    let work = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-data");
    let patients = common::types_subset(source, &work, "patients-only-source", &["Patient."]);
    let (work, scaled, copies) = common::scaled_dataset_of(&patients, "patients-only", 163);
    let warehouse = work.join(format!("members-warehouse-x{copies}"));
    common::loaded_warehouse(&warehouse, &scaled);
    (work, warehouse)
}

fn main() {
    let Some(source) = common::synthea_615() else {
        return;
    };
    let (work, warehouse) = prepare(&source);
    let ids: Vec<String> = {
        let out = common::sql_csv(&warehouse)
            .arg("SELECT id FROM patient ORDER BY id")
            .output()
            .expect("sql");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(1)
            .map(str::to_string)
            .collect()
    };
    let server = common::start_server(&warehouse, &[]);
    let mut report = Vec::new();
    println!("| change | members | seconds | bytes written |\n|---|---:|---:|---:|");
    let mut largest = String::new();
    for size in [1_000, 10_000, 100_000].into_iter().filter(|n| *n <= ids.len()) {
        let (group, seconds, bytes) = member_add(&server, &warehouse, &work, &ids[..size]);
        println!("| $member-add to an empty Group | {size} | {seconds:.3} | {bytes} |");
        report.push(json!({"change": "member-add", "members": size, "seconds": seconds, "bytes": bytes}));
        largest = group;
    }
    // One more member to the largest Group.
    let spare = work.join("one.json");
    let one = json!({"resourceType": "Parameters", "parameter": [{"name": "patientReference", "valueReference": {"reference": format!("Patient/{}", ids[ids.len() - 1])}}]});
    std::fs::write(&spare, one.to_string()).expect("write");
    let before = bytes_under(&warehouse.join("_server"));
    let (status, _, seconds) = curl(
        "POST",
        &format!("{}/Group/{largest}/$member-add", server.base),
        Some(&spare),
        &[FHIR_JSON],
    );
    assert_eq!(status, 200);
    let bytes = bytes_under(&warehouse.join("_server")).saturating_sub(before);
    println!("| $member-add of 1 to the largest Group | 1 | {seconds:.3} | {bytes} |");
    report.push(json!({"change": "member-add one to largest", "seconds": seconds, "bytes": bytes}));

    // The same members as a cohort Group: the roster as its base
    // population, a filter every Patient meets.
    let cohort = json!({"resourceType": "Group", "type": "person", "actual": true, "name": "roster as a cohort",
        "member": [{"entity": {"reference": format!("Group/{largest}")}}],
        "modifierExtension": [{"url": "http://hl7.org/fhir/uv/bulkdata/StructureDefinition/member-filter",
            "valueExpression": {"language": "application/x-fhir-query",
                "expression": "Patient?gender=female,male,other,unknown"}}]});
    let cohort_id = create_group(&server, &cohort, &work);
    println!("\n| export (_type=Patient) of | round | seconds |\n|---|---:|---:|");
    for round in 1..=3 {
        for (label, group) in [
            ("member-based roster", &largest),
            ("cohort Group, same members", &cohort_id),
        ] {
            let seconds = export(&server, group);
            println!("| {label} | {round} | {seconds:.3} |");
            report.push(json!({"export": label, "round": round, "seconds": seconds}));
        }
    }
    match_latency(&server, &work, &ids, &mut report);
    std::fs::write(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-members.json"),
        serde_json::to_vec_pretty(&report).unwrap_or_default(),
    )
    .expect("report");
}

/// The `$match` bodies for `patient`: (kind, Parameters).
fn match_bodies(patient: &Value) -> Vec<(&'static str, Value)> {
    let wrap = |resource: Value| {
        json!({"resourceType": "Parameters", "parameter": [
            {"name": "resource", "resource": resource},
            {"name": "count", "valueInteger": 100},
        ]})
    };
    let record_number = patient["identifier"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|i| i["type"]["coding"][0]["code"] == "MR")
        .cloned()
        .unwrap_or(Value::Null);
    let by_identifier = json!({"resourceType": "Patient", "identifier": [record_number]});
    let mut demographics = patient.clone();
    if let Some(object) = demographics.as_object_mut() {
        for dropped in ["id", "identifier", "telecom", "extension", "text", "meta"] {
            object.remove(dropped);
        }
    }
    let mut misspelt = demographics.clone();
    if let Some(given) = misspelt["name"][0]["given"][0].as_str() {
        misspelt["name"][0]["given"][0] = json!(format!("{given}x"));
    }
    vec![
        ("identifier (MRN)", wrap(by_identifier)),
        ("demographics", wrap(demographics)),
        ("demographics, given name misspelt", wrap(misspelt)),
    ]
}

/// `Patient/$match` latency for 20 Patients spread over `ids`, per kind
/// of request: median and slowest seconds, and the answers' sizes.
fn match_latency(server: &Server, work: &Path, ids: &[String], report: &mut Vec<Value>) {
    let sample: Vec<&String> = ids.iter().step_by((ids.len() / 20).max(1)).take(20).collect();
    let mut timings: std::collections::BTreeMap<&str, Vec<(f64, usize)>> = Default::default();
    let file = work.join("match.json");
    for id in sample {
        let (status, body, _) = curl("GET", &format!("{}/Patient/{id}", server.base), None, &[]);
        assert_eq!(status, 200, "{body}");
        let patient: Value = serde_json::from_str(&body).expect("Patient");
        for (kind, request) in match_bodies(&patient) {
            std::fs::write(&file, request.to_string()).expect("write");
            let url = format!("{}/Patient/$match", server.base);
            let (status, body, seconds) = curl("POST", &url, Some(&file), &[FHIR_JSON]);
            assert_eq!(status, 200, "{body}");
            let answer: Value = serde_json::from_str(&body).expect("Bundle");
            let found = answer["entry"].as_array().map_or(0, Vec::len);
            assert!(found > 0, "{kind}: no match for Patient/{id}");
            timings.entry(kind).or_default().push((seconds, found));
        }
    }
    println!("\n| Patient/$match by | requests | median s | slowest s | median answers |\n|---|---:|---:|---:|---:|");
    for (kind, mut runs) in timings {
        runs.sort_by(|a, b| a.0.total_cmp(&b.0));
        let median = runs[runs.len() / 2].0;
        let slowest = runs[runs.len() - 1].0;
        let mut sizes: Vec<usize> = runs.iter().map(|r| r.1).collect();
        sizes.sort_unstable();
        let answers = sizes[sizes.len() / 2];
        println!("| {kind} | {} | {median:.3} | {slowest:.3} | {answers} |", runs.len());
        report.push(json!({"match": kind, "requests": runs.len(), "median_seconds": median, "slowest_seconds": slowest, "median_answers": answers}));
    }
}
