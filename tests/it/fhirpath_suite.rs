//! The official FHIRPath test suite (tests/conformance/fhirpath/r4), over the
//! inputs available as JSON. Prints `N passed, M failed, K skipped` per group
//! and overall; a failure not listed in `fhirpath-known-failures.txt` fails
//! the build, so regressions cannot slip in.

use std::collections::{BTreeMap, HashMap, HashSet};

use fhirlake::fhirpath::{FhirPath, Value};
use fhirlake::json::{JsonValue, parse};

use crate::common::repo;

struct Case {
    group: String,
    name: String,
    input: Option<String>,
    expression: String,
    invalid: bool,
    predicate: bool,
    outputs: Vec<(String, String)>,
}

fn load_cases() -> Vec<Case> {
    let path = repo().join("tests/conformance/fhirpath/r4/tests-fhir-r4.xml");
    let text = std::fs::read_to_string(path).unwrap();
    let doc = roxmltree::Document::parse(&text).unwrap();
    let mut cases = Vec::new();
    for group in doc.root_element().children().filter(|n| n.has_tag_name("group")) {
        let group_name = group.attribute("name").unwrap_or("?").to_string();
        for test in group.children().filter(|n| n.has_tag_name("test")) {
            let expression = test.children().find(|n| n.has_tag_name("expression"));
            let outputs = test
                .children()
                .filter(|n| n.has_tag_name("output"))
                .map(|o| {
                    (
                        o.attribute("type").unwrap_or("").to_string(),
                        o.text().unwrap_or("").to_string(),
                    )
                })
                .collect();
            cases.push(Case {
                group: group_name.clone(),
                name: test.attribute("name").unwrap_or("?").to_string(),
                input: test.attribute("inputfile").map(str::to_string),
                expression: expression.and_then(|e| e.text()).unwrap_or("").to_string(),
                invalid: expression.and_then(|e| e.attribute("invalid")).is_some(),
                predicate: test.attribute("predicate") == Some("true"),
                outputs,
            });
        }
    }
    cases
}

/// The JSON form of an input file, if the suite ships one.
fn json_input(name: &str) -> Option<String> {
    let stem = name.trim_end_matches(".xml").trim_end_matches(".json");
    let dir = repo().join("tests/conformance/fhirpath/r4");
    for candidate in [
        dir.join("input-json-converted").join(format!("{stem}.json")),
        dir.join("input").join(format!("{stem}.json")),
    ] {
        if let Ok(text) = std::fs::read_to_string(candidate) {
            return Some(text);
        }
    }
    None
}

fn render(v: &Value<'_>) -> (String, String) {
    let t = v.type_name().to_string();
    let s = v.to_fhirpath_string().unwrap_or_else(|| format!("<{t}>"));
    (t, s)
}

fn output_matches(expected: &(String, String), actual: &(String, String)) -> bool {
    let (et, ev) = expected;
    let ev = ev.trim_start_matches('@').trim_start_matches('T');
    let av = actual.1.trim_start_matches('T');
    match et.as_str() {
        "decimal" | "integer" => match (ev.parse::<f64>(), av.parse::<f64>()) {
            (Ok(a), Ok(b)) => (a - b).abs() < 1e-9,
            _ => ev == av,
        },
        "date" | "dateTime" | "time" => ev == av,
        "Quantity" => ev.replace('\'', "") == av.replace('\'', ""),
        _ => ev == av,
    }
}

fn run_case(case: &Case, inputs: &HashMap<String, String>) -> Result<(), String> {
    let text = match &case.input {
        Some(name) => inputs.get(name).cloned().unwrap_or_default(),
        None => "{}".to_string(),
    };
    let resource: JsonValue<'_> = parse(&text).map_err(|e| e.to_string())?;
    let outcome = FhirPath::parse(&case.expression).and_then(|p| p.evaluate(&resource, &HashMap::new()));
    if case.invalid {
        return match outcome {
            Err(_) => Ok(()),
            Ok(v) => Err(format!("expected an error, got {} items", v.len())),
        };
    }
    let mut result = outcome.map_err(|e| e.to_string())?;
    if case.predicate {
        result = vec![Value::Boolean(!result.is_empty())];
    }
    if result.len() != case.outputs.len() {
        return Err(format!(
            "expected {:?}, got {:?}",
            case.outputs,
            result.iter().map(render).collect::<Vec<_>>()
        ));
    }
    for (expected, value) in case.outputs.iter().zip(&result) {
        let actual = render(value);
        if !output_matches(expected, &actual) {
            return Err(format!("expected {expected:?}, got {actual:?}"));
        }
    }
    Ok(())
}

#[test]
fn official_fhirpath_suite_r4() {
    let known: HashSet<String> = std::fs::read_to_string(repo().join("tests/conformance/fhirpath-known-failures.txt"))
        .unwrap_or_default()
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    let cases = load_cases();
    let mut inputs = HashMap::new();
    for case in &cases {
        if let Some(name) = &case.input
            && !inputs.contains_key(name)
            && let Some(text) = json_input(name)
        {
            inputs.insert(name.clone(), text);
        }
    }
    let mut by_group: BTreeMap<String, (usize, usize, usize)> = BTreeMap::new();
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    let mut regressions = Vec::new();
    let mut fixed = Vec::new();
    for case in &cases {
        let entry = by_group.entry(case.group.clone()).or_default();
        if case.input.as_ref().is_some_and(|n| !inputs.contains_key(n)) {
            entry.2 += 1;
            skipped += 1;
            continue;
        }
        let outcome = std::panic::catch_unwind(|| run_case(case, &inputs)).unwrap_or_else(|_| Err("panicked".into()));
        match outcome {
            Ok(()) => {
                entry.0 += 1;
                passed += 1;
                if known.contains(&case.name) {
                    fixed.push(case.name.clone());
                }
            }
            Err(e) => {
                entry.1 += 1;
                failed += 1;
                if !known.contains(&case.name) {
                    regressions.push(format!(
                        "{} › {} `{}`: {e}",
                        case.group,
                        case.name,
                        case.expression.trim()
                    ));
                }
            }
        }
    }
    for (group, (p, f, s)) in &by_group {
        println!("  {group}: {p} passed, {f} failed, {s} skipped");
    }
    for name in &fixed {
        println!("now passing (remove from known failures): {name}");
    }
    for r in &regressions {
        eprintln!("FAILED {r}");
    }
    println!("fhirpath-r4: {passed} passed, {failed} failed, {skipped} skipped");
    let rate = passed as f64 / (passed + failed).max(1) as f64;
    assert!(
        regressions.is_empty(),
        "{} FHIRPath tests failed that are not known failures",
        regressions.len()
    );
    assert!(rate >= 0.90, "pass rate {rate:.3} below 90%");
}
