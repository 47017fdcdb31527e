//! The README's commands, as written there, against the real binary: the
//! curl flow against `serve` (create a cohort, poll it, export its members,
//! download the files), `load` and `sql`, and the `cohort` examples. The
//! commands are read from README.md, so a README that drifts from what the
//! binary does fails here.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{fhirlake, repo};
use crate::http_client::Server;

/// The address the README's commands use.
const README_BASE: &str = "http://127.0.0.1:8080";

fn readme() -> String {
    std::fs::read_to_string(repo().join("README.md")).expect("README.md")
}

/// The lines of every ```sh block of the README.
fn shell_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        match (&mut current, line.trim_start()) {
            (None, "```sh") => current = Some(String::new()),
            (Some(block), "```") => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

/// The shell command of `block` that starts with `prefix`, joined across
/// `\` continuations and `'…'` spanning lines, comments dropped.
fn command(blocks: &[String], prefix: &str) -> String {
    for block in blocks {
        let mut lines = block.lines().peekable();
        while let Some(line) = lines.next() {
            if !line.starts_with(prefix) {
                continue;
            }
            let mut text = line.to_string();
            while text.ends_with('\\') || text.matches('\'').count() % 2 == 1 {
                let Some(next) = lines.next() else { break };
                // `\` + newline is a continuation to the shell as well.
                text.push('\n');
                text.push_str(next);
            }
            return text.split("  #").next().unwrap_or(&text).trim().to_string();
        }
    }
    panic!("README has no command starting with {prefix:?}")
}

/// Runs `command` in `sh` and returns its stdout (it must succeed).
fn sh(command: &str) -> String {
    let out = Command::new("sh").args(["-c", command]).output().expect("sh");
    assert!(
        out.status.success(),
        "{command}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Status code and body of a plain GET with curl.
fn curl_get(url: &str) -> (u16, String) {
    let out = sh(&format!("curl -s -w '\\n%{{http_code}}' '{url}'"));
    let (body, status) = out.rsplit_once('\n').expect("status line");
    (status.trim().parse().expect("status"), body.to_string())
}

/// Polls `url` until it answers 200, within 60 s.
fn poll(url: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = curl_get(url);
        if status == 200 {
            return serde_json::from_str(&body).expect("JSON");
        }
        assert_eq!(status, 202, "{url}: {body}");
        assert!(Instant::now() < deadline, "{url} still running after 60 s");
        std::thread::sleep(Duration::from_millis(1100));
    }
}

fn content_location(headers: &str) -> String {
    headers
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-location")
                .then(|| value.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no Content-Location in {headers}"))
}

#[test]
fn readme_curl_flow_against_serve() {
    let blocks = shell_blocks(&readme());
    assert_eq!(command(&blocks, "cargo run -- serve"), "cargo run -- serve");
    let temp = tempfile::tempdir().expect("tempdir");
    // An empty warehouse: `serve` loads the bundled sample first.
    let server = Server::start(&temp.path().join("warehouse"), &[]);
    let at = |cmd: &str| cmd.replace(README_BASE, &server.base);

    let create = at(&command(&blocks, "curl -si -X POST"));
    let accepted = sh(&create);
    assert!(accepted.starts_with("HTTP/1.1 202"), "{accepted}");
    let bundle = poll(&content_location(&accepted));
    let response = &bundle["entry"][0]["response"];
    assert_eq!(response["status"], "201 Created", "{bundle}");
    let location = response["location"].as_str().expect("location");
    let group_id = location.split('/').nth(1).expect("Group/<id>/…");
    let members = bundle["entry"][0]["resource"]["quantity"].as_u64().expect("quantity");
    assert!(
        members > 0,
        "the README's cohort finds prediabetic women in the sample: {bundle}"
    );

    let export = at(&command(&blocks, "curl -si 'http://127.0.0.1:8080/Group/<id>/$export")).replace("<id>", group_id);
    let accepted = sh(&export);
    assert!(accepted.starts_with("HTTP/1.1 202"), "{accepted}");
    let manifest = poll(&content_location(&accepted));
    let output = manifest["output"].as_array().expect("output");
    let types: Vec<&str> = output.iter().filter_map(|f| f["type"].as_str()).collect();
    assert!(types.contains(&"Patient") && types.contains(&"Condition"), "{manifest}");
    for file in output {
        let (status, body) = curl_get(file["url"].as_str().expect("url"));
        assert_eq!(status, 200);
        assert_eq!(body.lines().count() as u64, file["count"].as_u64().expect("count"));
    }
    let patients = output.iter().find(|f| f["type"] == "Patient").expect("Patient file");
    assert_eq!(patients["count"].as_u64(), Some(members));

    // The README's $viewdefinition-run: the sample's Patients as CSV.
    let run = at(&command(
        &blocks,
        "curl -s -X POST \"http://127.0.0.1:8080/\\$viewdefinition-run",
    ));
    let csv = sh(&run);
    assert!(csv.starts_with("id,gender\n"), "{csv}");
    assert_eq!(csv.lines().count(), 1 + 10, "{csv}");
    server.stop();
}

#[test]
fn readme_load_sql_and_cohort_commands() {
    let blocks = shell_blocks(&readme());
    let line = command(&blocks, "cargo run -- load && cargo run -- sql");
    let query = line
        .split("sql \"")
        .nth(1)
        .and_then(|rest| rest.strip_suffix('"'))
        .expect("sql \"QUERY\"");
    let temp = tempfile::tempdir().expect("tempdir");
    let warehouse = temp.path().join("warehouse");
    let wh = warehouse.to_str().expect("path");
    let out = fhirlake(&["--warehouse", wh, "load", "--quiet"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = fhirlake(&["--warehouse", wh, "sql", "--format", "csv", query]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let total: i64 = text
        .lines()
        .skip(1)
        .filter_map(|l| l.rsplit(',').next()?.parse::<i64>().ok())
        .sum();
    assert_eq!(total, 10, "the sample has 10 patients: {text}");

    // Every `fhirlake cohort` example of the README runs and counts.
    let cohorts: Vec<String> = blocks
        .iter()
        .flat_map(|b| b.lines())
        .filter(|l| l.starts_with("fhirlake cohort "))
        .map(str::to_string)
        .collect();
    assert!(cohorts.len() >= 3, "{cohorts:?}");
    let binary = Path::new(env!("CARGO_BIN_EXE_fhirlake"));
    for example in cohorts {
        let command = example.replacen("fhirlake", &format!("'{}' --warehouse '{wh}'", binary.display()), 1);
        let out = sh(&command);
        let count = out.lines().next().and_then(|l| l.trim().parse::<u64>().ok());
        assert!(count.is_some(), "{example}: {out}");
    }
}
