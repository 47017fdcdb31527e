//! Malformed and unsupported requests against the router in process
//! (`tower::ServiceExt::oneshot`): each case is about a request and its
//! answer, so it needs no server process or socket (the process, its
//! shutdown and its crashes are tested in `tests/it/server.rs`). Every case
//! is checked and reported by name.

use std::path::Path;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::http::Request;
use fhirlake_engine::ingest::{LoadOptions, load};
use fhirlake_engine::service::{Service, ServiceOptions};
use fhirlake_engine::warehouse::Warehouse;
use fhirlake_http::{AppState, DownloadMode, router};
use serde_json::{Value, json};
use tower::ServiceExt;

/// One request and the answer it must get: the status, and for errors an
/// OperationOutcome whose first issue has `code` and mentions `needle`.
struct Case {
    name: &'static str,
    method: &'static str,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    body: String,
    status: u16,
    outcome: Option<(&'static str, &'static str)>,
}

const ASYNC_JSON: &[(&str, &str)] = &[("Prefer", "respond-async"), ("Content-Type", "application/fhir+json")];

/// A Bulk Cohort Group with the given member-filters.
fn cohort_group(name: &str, filters: &[&str]) -> Value {
    json!({
        "resourceType": "Group", "name": name, "type": "person", "actual": true,
        "modifierExtension": filters.iter().map(|f| json!({
            "url": "http://hl7.org/fhir/uv/bulkdata/StructureDefinition/member-filter",
            "valueExpression": {"language": "application/x-fhir-query", "expression": f}
        })).collect::<Vec<_>>(),
    })
}

/// A Group POST that must be refused with `code`, mentioning `needle`.
fn refused_group(name: &'static str, body: String, code: &'static str, needle: &'static str) -> Case {
    Case {
        name,
        method: "POST",
        path: "/Group",
        headers: ASYNC_JSON,
        body,
        status: 400,
        outcome: Some((code, needle)),
    }
}

fn group_cases() -> Vec<Case> {
    let with = |change: &dyn Fn(&mut Value)| {
        let mut group = cohort_group("g", &["Patient?gender=female"]);
        change(&mut group);
        group.to_string()
    };
    let group = |filters: &[&str]| cohort_group("g", filters).to_string();
    vec![
        refused_group("not JSON", "{not json".into(), "invalid", "not valid JSON"),
        refused_group(
            "not a Group",
            json!({"resourceType": "Patient"}).to_string(),
            "invalid",
            "Group",
        ),
        refused_group(
            "no name",
            with(&|g| {
                if let Some(group) = g.as_object_mut() {
                    group.remove("name");
                }
            }),
            "invalid",
            "name",
        ),
        refused_group(
            "characteristic",
            with(&|g| g["characteristic"] = json!([{"code": {"text": "x"}, "exclude": false}])),
            "invalid",
            "characteristic",
        ),
        refused_group(
            "practitioner Group",
            with(&|g| g["type"] = json!("practitioner")),
            "not-supported",
            "practitioner",
        ),
        refused_group(
            "CQL filter",
            with(&|g| g["modifierExtension"][0]["valueExpression"]["language"] = json!("text/cql")),
            "not-supported",
            "text/cql",
        ),
        refused_group(
            "cohort profile without a member-filter",
            with(&|g| {
                g["modifierExtension"] = json!([]);
                g["meta"] =
                    json!({"profile": ["http://hl7.org/fhir/uv/bulkdata/StructureDefinition/bulk-cohort-group"]});
            }),
            "invalid",
            "needs at least one member-filter",
        ),
        refused_group(
            "member-based Group naming a Group",
            json!({"resourceType": "Group", "type": "person", "actual": true,
                   "member": [{"entity": {"reference": "Group/other"}}]})
            .to_string(),
            "invalid",
            "a member-based Group lists Patients",
        ),
        refused_group(
            "member-based Group naming unknown Patients",
            json!({"resourceType": "Group", "type": "person", "actual": true,
                   "member": [{"entity": {"reference": "Patient/nobody"}}, {"entity": {"reference": "Patient/ghost"}}]})
            .to_string(),
            "invalid",
            "Patients that do not exist: Patient/ghost, Patient/nobody",
        ),
        refused_group(
            "unknown parameter",
            group(&["Condition?bogus=1"]),
            "invalid",
            "supported: ",
        ),
        refused_group("_sort", group(&["Condition?_sort=date"]), "invalid", "_sort"),
        refused_group("unknown type", group(&["Foo?x=1"]), "invalid", "Foo"),
        refused_group(
            "type in no Patient compartment",
            group(&["Practitioner?name=borrego"]),
            "not-supported",
            "Practitioner resources are in no Patient compartment",
        ),
        refused_group(
            "member that is no Patient or Group",
            with(&|g| g["member"] = json!([{"entity": {"reference": "Organization/1"}}])),
            "invalid",
            "Organization/1",
        ),
    ]
}

fn other_cases() -> Vec<Case> {
    let case = |name, method, path, headers, status, outcome| Case {
        name,
        method,
        path,
        headers,
        body: String::new(),
        status,
        outcome,
    };
    vec![
        Case {
            body: "x".into(),
            ..case(
                "text body",
                "POST",
                "/Group",
                &[("Content-Type", "text/plain")],
                415,
                None,
            )
        },
        case(
            "XML",
            "GET",
            "/metadata?_format=xml",
            &[],
            406,
            Some(("not-supported", "xml")),
        ),
        case(
            "no such endpoint",
            "GET",
            "/Nothing",
            &[],
            404,
            Some(("not-supported", "/Nothing")),
        ),
        case(
            "no such Group",
            "GET",
            "/Group/missing",
            &[],
            404,
            Some(("not-found", "missing")),
        ),
        case(
            "no such job",
            "GET",
            "/_jobs/missing",
            &[],
            404,
            Some(("not-found", "missing")),
        ),
        case(
            "no such export",
            "GET",
            "/_export/missing",
            &[],
            404,
            Some(("not-found", "missing")),
        ),
        case("method", "PATCH", "/Group", &[], 405, Some(("not-supported", "PATCH"))),
        case(
            "export of an unknown type",
            "GET",
            "/$export?_type=Nothing",
            &[("Accept", "application/fhir+json"), ("Prefer", "respond-async")],
            400,
            Some(("not-supported", "_type 'Nothing' is not a FHIR R4 resource type")),
        ),
        case("metadata as JSON", "GET", "/metadata?_format=json", &[], 200, None),
    ]
}

/// Sends `case` to `app`; what is wrong with the answer, if anything.
async fn check(app: &Router, case: &Case) -> Option<String> {
    let mut request = Request::builder().method(case.method).uri(case.path);
    for (name, value) in case.headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Body::from(case.body.clone())).expect("request");
    let response = app.clone().oneshot(request).await.expect("infallible");
    let status = response.status().as_u16();
    let has_id = response.headers().contains_key("x-request-id");
    let body = to_bytes(response.into_body(), 1 << 20).await.expect("body");
    let outcome: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let text = String::from_utf8_lossy(&body);
    if status != case.status {
        return Some(format!("{}: expected {}, got {status}: {text}", case.name, case.status));
    }
    if !has_id {
        return Some(format!("{}: no x-request-id", case.name));
    }
    let (code, needle) = case.outcome?;
    let issue = &outcome["issue"][0];
    let diagnostics = issue["diagnostics"].as_str().unwrap_or_default();
    let fits = outcome["resourceType"] == "OperationOutcome" && issue["code"] == code && diagnostics.contains(needle);
    (!fits).then(|| {
        format!(
            "{}: expected an OperationOutcome '{code}' mentioning '{needle}', got {text}",
            case.name
        )
    })
}

/// The router over a warehouse holding the bundled sample, no authorization.
async fn app(dir: &Path) -> Router {
    app_with(dir, false).await
}

/// [`app`], with Groups read-only when `read_only_groups`.
async fn app_with(dir: &Path, read_only_groups: bool) -> Router {
    let warehouse = Warehouse::open(&dir.display().to_string()).expect("warehouse");
    let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/../../data/synthea-10").to_string();
    let options = LoadOptions {
        quiet: true,
        ..LoadOptions::default()
    };
    load(&warehouse, &[sample], &options).await.expect("load the sample");
    let service = Service::new(warehouse, ServiceOptions::default()).expect("service");
    service.start().await.expect("start");
    router(Arc::new(AppState {
        service,
        base_url: "http://fhirlake.test".into(),
        downloads: DownloadMode::Server,
        auth: None,
        read_only_groups,
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_operation_outcomes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = app(dir.path()).await;
    let cases: Vec<Case> = group_cases().into_iter().chain(other_cases()).collect();
    let mut failures = Vec::new();
    for case in &cases {
        failures.extend(check(&app, case).await);
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_groups_refuse_every_write_and_say_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = app_with(dir.path(), true).await;
    let roster = json!({"resourceType": "Group", "type": "person", "actual": true, "member": []}).to_string();
    let refused = |name, method, path: &'static str| Case {
        name,
        method,
        path,
        headers: &[("Content-Type", "application/fhir+json")],
        body: roster.clone(),
        status: 405,
        outcome: Some(("not-supported", "--read-only-groups")),
    };
    let cases = [
        refused("create", "POST", "/Group"),
        refused("update", "PUT", "/Group/roster"),
        refused("delete", "DELETE", "/Group/roster"),
        refused("member-add", "POST", "/Group/roster/$member-add"),
        refused("member-remove", "POST", "/Group/roster/$member-remove"),
    ];
    let mut failures = Vec::new();
    for case in &cases {
        failures.extend(check(&app, case).await);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let metadata = Request::builder()
        .uri("/metadata")
        .body(Body::empty())
        .expect("request");
    let response = app.clone().oneshot(metadata).await.expect("infallible");
    let statement: Value = serde_json::from_slice(&to_bytes(response.into_body(), 1 << 22).await.expect("body"))
        .expect("CapabilityStatement");
    let group = statement["rest"][0]["resource"]
        .as_array()
        .and_then(|resources| resources.iter().find(|r| r["type"] == "Group"))
        .expect("Group in the CapabilityStatement");
    let interactions: Vec<&str> = group["interaction"]
        .as_array()
        .expect("interactions")
        .iter()
        .filter_map(|i| i["code"].as_str())
        .collect();
    assert_eq!(interactions, ["read", "vread", "history-instance", "search-type"]);
    let operations: Vec<&str> = group["operation"]
        .as_array()
        .expect("operations")
        .iter()
        .filter_map(|o| o["name"].as_str())
        .collect();
    assert_eq!(
        operations,
        ["export", "members"],
        "no member operations on read-only Groups"
    );
}
