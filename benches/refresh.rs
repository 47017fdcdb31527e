//! Refreshing cohorts after a 1 % delta load at 100,000 patients (issue
//! 29): the incremental refresh (only the patients the load touched)
//! against a full recompute, same run, same Groups, deltas of the same
//! size; and the history each refresh adds.
//!
//! Data: the Patients and Conditions of `../shared/data/synthea-615` scaled
//! with `fhirlake gen` (`FHIRLAKE_BENCH_COPIES`, default 163: 100,245
//! Patients, ~741k Conditions), generated and loaded under
//! `target/bench-data/` when missing, never committed. Each delta picks 1 %
//! of the patients (seeded by the warehouse version, so reruns pick
//! others), flips their gender and recodes one Condition each: a delta
//! clustered on patients, as monthly feeds are.
//!
//! Run: `cargo bench --bench refresh`. Prints Markdown, writes
//! `target/bench-refresh.json`.

mod common;

use common::{Server, bytes_under, fhirlake};

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const CODE: &str = "444814009";
const MOVED_TO: &str = "38341003";

fn create_group(server: &Server, name: &str, filter: &str, work: &Path) -> String {
    let group = json!({"resourceType": "Group", "name": name, "type": "person", "actual": true,
        "modifierExtension": [{"url": "http://hl7.org/fhir/uv/bulkdata/StructureDefinition/member-filter",
            "valueExpression": {"language": "application/x-fhir-query", "expression": filter}}]});
    let file = work.join("refresh-group.json");
    std::fs::write(&file, group.to_string()).expect("write");
    let out = Command::new("curl")
        .args(["-s", "-X", "POST", &format!("{}/Group", server.base)])
        .args(["-H", "Content-Type: application/fhir+json", "--data-binary"])
        .arg(format!("@{}", file.display()))
        .output()
        .expect("curl");
    let created: Value = serde_json::from_slice(&out.stdout).expect("Group");
    created["id"].as_str().expect("id").to_string()
}

/// The Patient and Condition lines of the scaled set, by patient.
struct Lines {
    patients: BTreeMap<String, String>,
    conditions: BTreeMap<String, Vec<String>>,
}

fn read_lines(scaled: &Path) -> Lines {
    let mut lines = Lines {
        patients: BTreeMap::new(),
        conditions: BTreeMap::new(),
    };
    for entry in std::fs::read_dir(scaled).expect("scaled").filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().to_string();
        let is_patient = name.starts_with("Patient");
        if !is_patient && !name.starts_with("Condition") {
            continue;
        }
        let file = std::fs::File::open(entry.path()).expect("open");
        let reader: Box<dyn BufRead> = if name.ends_with(".gz") {
            Box::new(BufReader::new(flate2::read::MultiGzDecoder::new(file)))
        } else {
            Box::new(BufReader::new(file))
        };
        for line in reader.lines() {
            let line = line.expect("line");
            if is_patient {
                let id = between(&line, "\"id\":\"", "\"");
                lines.patients.insert(id, line);
            } else {
                let subject = between(&line, "\"reference\":\"Patient/", "\"");
                lines.conditions.entry(subject).or_default().push(line);
            }
        }
    }
    lines
}

fn between(text: &str, start: &str, end: &str) -> String {
    let from = text.find(start).map(|i| i + start.len()).unwrap_or(0);
    let to = text[from..].find(end).map(|i| from + i).unwrap_or(text.len());
    text[from..to].to_string()
}

/// Writes a delta of `chosen` patients (gender flipped, first Condition
/// recoded) under `dir`.
fn write_delta(lines: &mut Lines, chosen: &[String], dir: &Path) {
    std::fs::create_dir_all(dir).expect("mkdir");
    let mut patients = std::fs::File::create(dir.join("Patient.ndjson")).expect("create");
    let mut conditions = std::fs::File::create(dir.join("Condition.ndjson")).expect("create");
    for id in chosen {
        let Some(line) = lines.patients.get_mut(id) else {
            continue;
        };
        let mut patient: Value = serde_json::from_str(line).expect("Patient");
        patient["gender"] = json!(if patient["gender"] == "female" {
            "male"
        } else {
            "female"
        });
        *line = patient.to_string();
        writeln!(patients, "{line}").expect("write");
        if let Some(first) = lines.conditions.get_mut(id).and_then(|c| c.first_mut()) {
            let mut condition: Value = serde_json::from_str(first).expect("Condition");
            let code = if first.contains(CODE) { MOVED_TO } else { CODE };
            condition["code"] = json!({"coding": [{"system": "http://snomed.info/sct", "code": code}]});
            *first = condition.to_string();
            writeln!(conditions, "{first}").expect("write");
        }
    }
}

/// The refresh of `group` on warehouse version `version` or later.
fn wait_refresh(warehouse: &Path, group: &str, version: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let out = fhirlake()
            .args([
                "--warehouse",
                warehouse.to_str().unwrap_or_default(),
                "groups",
                "refreshes",
                group,
            ])
            .output()
            .expect("refreshes");
        let found = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|r| r["warehouse_version"].as_u64().is_some_and(|v| v >= version));
        if let Some(record) = found {
            return record;
        }
        assert!(Instant::now() < deadline, "no refresh of {group} in 15 minutes");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn latest_version(warehouse: &Path) -> u64 {
    std::fs::read_dir(warehouse.join("_manifest"))
        .expect("manifests")
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            name.trim_start_matches('v')
                .split('.')
                .next()
                .and_then(|v| v.parse().ok())
        })
        .max()
        .unwrap_or(0)
}

/// Loads `delta`, then waits for every Group's refresh: (load seconds,
/// records, bytes the refreshes added under `_server/`).
fn load_and_refresh(warehouse: &Path, delta: &Path, groups: &[(&str, String)]) -> (f64, Vec<Value>, u64) {
    let before = bytes_under(&warehouse.join("_server"));
    let started = Instant::now();
    let status = fhirlake()
        .args(["--warehouse", warehouse.to_str().unwrap_or_default(), "load", "--quiet"])
        .arg(delta)
        .status()
        .expect("load");
    assert!(status.success());
    let load = started.elapsed().as_secs_f64();
    let version = latest_version(warehouse);
    let records: Vec<Value> = groups
        .iter()
        .map(|(_, id)| wait_refresh(warehouse, id, version))
        .collect();
    (
        load,
        records,
        bytes_under(&warehouse.join("_server")).saturating_sub(before),
    )
}

fn main() {
    let Some(source) = common::synthea_615() else {
        return;
    };
    let work = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-data");
    let subset = common::types_subset(
        &source,
        &work,
        "patients-conditions-source",
        &["Patient.", "Condition."],
    );
    let (work, scaled, copies) = common::scaled_dataset_of(&subset, "patients-conditions", 163);
    let warehouse = work.join(format!("refresh-warehouse-x{copies}"));
    common::loaded_warehouse(&warehouse, &scaled);
    let mut lines = read_lines(&scaled);
    let ids: Vec<String> = lines.patients.keys().cloned().collect();
    // Seeded by the warehouse version: a rerun (over the deltas of the
    // runs before) picks other patients, whose lines are still current.
    let mut seed = 0x9E37_79B9_7F4A_7C15_u64 ^ latest_version(&warehouse).wrapping_mul(0x1000_0000_01B3);
    let mut pick = |n: usize, taken: &mut HashSet<String>| -> Vec<String> {
        let mut chosen = Vec::new();
        while chosen.len() < n {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let id = &ids[(seed % ids.len() as u64) as usize];
            if taken.insert(id.clone()) {
                chosen.push(id.clone());
            }
        }
        chosen
    };
    let one_percent = ids.len() / 100;
    let mut taken = HashSet::new();
    let mut report = Vec::new();
    println!(
        "| refresh | Group | strategy | patients recomputed | joined | left | compute s | total s |\n|---|---|---|---:|---:|---:|---:|---:|"
    );
    for (round, limit) in [("incremental", None), ("full", Some("0"))] {
        let extra: Vec<&str> = limit
            .map(|l| vec!["--refresh-incremental-limit", l])
            .unwrap_or_default();
        let mut flags = vec!["--membership-mode", "refreshed"];
        flags.extend(&extra);
        let server = common::start_server(&warehouse, &flags);
        let groups: Vec<(&str, String)> = [
            ("Patient?gender=female", "women"),
            ("Condition?code=http://snomed.info/sct|444814009", "coded"),
            (
                "Patient?_has:Condition:patient:code=http://snomed.info/sct|444814009",
                "has",
            ),
        ]
        .iter()
        .map(|(filter, name)| (*filter, create_group(&server, name, filter, &work)))
        .collect();
        let delta = work.join(format!("refresh-delta-{round}"));
        let _ = std::fs::remove_dir_all(&delta);
        write_delta(&mut lines, &pick(one_percent, &mut taken), &delta);
        let (load, records, bytes) = load_and_refresh(&warehouse, &delta, &groups);
        for ((filter, _), record) in groups.iter().zip(&records) {
            println!(
                "| {round} | `{filter}` | {} | {} | {} | {} | {:.3} | {:.3} |",
                record["strategy"].as_str().unwrap_or("?"),
                record["patients"].as_u64().map_or("all".into(), |p| p.to_string()),
                record["joined"],
                record["left"],
                record["compute_seconds"].as_f64().unwrap_or(f64::NAN),
                record["seconds"].as_f64().unwrap_or(f64::NAN)
            );
            report.push(json!({"round": round, "filter": filter, "record": record}));
        }
        println!(
            "| {round} | (the 1 % delta load: {load:.2} s; the refreshes wrote {bytes} B under _server/) | | | | | |"
        );
        report.push(json!({"round": round, "delta_load_seconds": load, "server_bytes": bytes}));
        drop(server);
    }
    std::fs::write(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-refresh.json"),
        serde_json::to_vec_pretty(&report).unwrap_or_default(),
    )
    .expect("report");
}
