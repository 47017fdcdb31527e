//! The Postgres wire front (`serve --pg-addr`) with real clients on
//! loopback: `psql` (Debian's postgresql-client) and psycopg / SQLAlchemy
//! in the virtualenv `scripts/test.sh` makes (`tests/pg/clients.py`).
//! Without those clients the tests say so and skip, unless
//! `FHIRLAKE_REQUIRE_PG_CLIENTS` is set (the test script sets it), when
//! they fail.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::auth::{add_client, assertion, claims, make_key, token};
use crate::common::{fhirlake, repo, sql_csv_rows};
use crate::http_client::Server;

/// The Python with psycopg and SQLAlchemy, and psql; `None` (after saying
/// so) when they are missing and not required.
fn clients() -> Option<(PathBuf, PathBuf)> {
    let python = std::env::var_os("FHIRLAKE_PYTHON").map(PathBuf::from);
    let psql = which("psql");
    let required = std::env::var_os("FHIRLAKE_REQUIRE_PG_CLIENTS").is_some();
    match (python, psql) {
        (Some(python), Some(psql)) if python.exists() => Some((python, psql)),
        (python, psql) => {
            let missing = format!(
                "Postgres clients missing (FHIRLAKE_PYTHON={python:?}, psql={psql:?}): run scripts/test.sh, which installs them"
            );
            assert!(!required, "{missing}");
            eprintln!("SKIPPED: {missing}");
            None
        }
    }
}

fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// Runs `command`, killed after `limit`.
fn run_with_deadline(command: &mut Command, limit: Duration) -> Output {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start client");
    let started = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("{command:?} ran longer than {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

/// `tests/pg/clients.py COMMAND PORT ARGS…`, its JSON answer.
fn python_client(python: &Path, command: &str, port: &str, args: &[&str]) -> Value {
    let out = run_with_deadline(
        Command::new(python)
            .arg(repo().join("tests/pg/clients.py"))
            .args([command, port])
            .args(args),
        Duration::from_secs(120),
    );
    assert!(
        out.status.success(),
        "clients.py {command}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("clients.py {command}: {e}"))
}

/// `psql` with `args` as `user`; stdout and stderr.
fn psql(psql: &Path, port: &str, user: &str, args: &[&str]) -> (bool, String, String) {
    let out = run_with_deadline(
        Command::new(psql)
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                port,
                "-U",
                user,
                "-d",
                "fhirlake",
                "-X",
                "-v",
                "VERBOSITY=verbose",
            ])
            .args(args)
            .env("PGCONNECT_TIMEOUT", "10"),
        Duration::from_secs(60),
    );
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn port_of(server: &Server) -> String {
    let addr = server.pg.as_deref().expect("the Postgres front announced its address");
    addr.rsplit(':').next().expect("port").to_string()
}

#[test]
fn psql_psycopg_and_sqlalchemy_read_the_warehouse() {
    let Some((python, psql_bin)) = clients() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let warehouse = dir.path().join("wh");
    let log = dir.path().join("server.log");
    let server = Server::start_logged(
        warehouse.to_str().expect("path"),
        &["--pg-addr", "127.0.0.1:0", "--sql-memory-mib", "64"],
        &[("NO_COLOR".into(), "1".into())],
        Stdio::from(std::fs::File::create(&log).expect("log")),
    );
    let port = port_of(&server);
    let cli = |sql: &str| sql_csv_rows(&warehouse, sql);

    // psql: listing, describing, querying, a prepared statement, refusals.
    let (ok, tables, err) = psql(&psql_bin, &port, "analyst", &["-c", "\\dt"]);
    assert!(ok, "\\dt: {err}");
    for expected in [
        "public | patient",
        "public | condition",
        "fhir   | Patient",
        "fhir   | Observation",
    ] {
        assert!(tables.contains(expected), "\\dt lists {expected}:\n{tables}");
    }
    let (ok, described, err) = psql(&psql_bin, &port, "analyst", &["-At", "-c", "\\d patient"]);
    assert!(ok, "\\d patient: {err}");
    let described: Vec<String> = described
        .lines()
        .filter_map(|l| l.split('|').next().map(str::to_string))
        .collect();
    let columns = cli(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = 'public' AND table_name = 'patient' ORDER BY ordinal_position",
    );
    assert_eq!(described, columns, "\\d patient shows the view's columns");
    let count_sql = "SELECT count(*) FROM condition";
    let (ok, count, err) = psql(&psql_bin, &port, "analyst", &["-At", "-c", count_sql]);
    assert!(ok, "{err}");
    assert_eq!(vec![count.trim().to_string()], cli(count_sql));
    let (ok, prepared, err) = psql(
        &psql_bin,
        &port,
        "analyst",
        &[
            "-At",
            "-c",
            "PREPARE by_gender(text) AS SELECT count(*) FROM patient WHERE gender = $1",
            "-c",
            "EXECUTE by_gender('female')",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(
        prepared.lines().last().map(str::trim),
        cli("SELECT count(*) FROM patient WHERE gender = 'female'")
            .first()
            .map(String::as_str)
    );
    let (ok, _, err) = psql(
        &psql_bin,
        &port,
        "analyst",
        &["-c", "CREATE TABLE copy AS SELECT * FROM patient"],
    );
    assert!(!ok && err.contains("25006") && err.contains("read-only"), "{err}");

    // psycopg: typed parameters, binary results, streaming, settings per
    // connection, limits and refusals with their SQLSTATEs.
    let answer = python_client(&python, "queries", &port, &[]);
    let female = cli("SELECT id FROM patient WHERE gender = 'female' ORDER BY id");
    assert_eq!(answer["female_ids"], serde_json::json!(female));
    assert_eq!(
        answer["born_after_1990"].to_string(),
        cli("SELECT count(*) FROM patient WHERE birth_date > '1990-01-01'")[0]
    );
    assert_eq!(answer["typed"], serde_json::json!([42, 2.5, false]));
    assert_eq!(answer["binary"]["patients_is_list"], true);
    assert_eq!(
        answer["observations_streamed"].to_string(),
        cli("SELECT count(*) FROM observation")[0]
    );
    assert_eq!(answer["series_streamed"], 250_000);
    let by_gender: Vec<String> = ["female", "male", "other"]
        .iter()
        .map(|g| cli(&format!("SELECT count(*) FROM patient WHERE gender = '{g}'"))[0].clone())
        .collect();
    assert_eq!(
        answer["prepared_counts"]
            .as_array()
            .expect("counts")
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        by_gender
    );
    assert_eq!(
        answer["cohort_join"].to_string(),
        cli("SELECT count(*) FROM condition c JOIN cohort('Patient?gender=female') p ON c.patient_id = p.id")[0]
    );
    // A bound filter is one value: the text after the quote is part of the
    // gender searched for (no patient has it), not SQL.
    assert_eq!(answer["cohort_injection"], 0, "{}", answer["cohort_injection"]);
    assert_eq!(answer["timeout"]["sqlstate"], "57014", "{}", answer["timeout"]);
    let refused = answer["refused"].as_object().expect("refusals");
    let state_of = |prefix: &str| {
        refused
            .iter()
            .find(|(sql, _)| sql.starts_with(prefix))
            .map(|(_, e)| e["sqlstate"].as_str().unwrap_or("accepted").to_string())
            .expect("refusal recorded")
    };
    assert_eq!(state_of("INSERT"), "25006");
    assert_eq!(state_of("CREATE TABLE"), "25006");
    assert_eq!(state_of("COPY"), "25006");
    assert_eq!(state_of("SET datafusion"), "55P02");
    assert_eq!(state_of("SELECT * FROM no_such_table"), "42P01");
    assert_eq!(answer["after_refusals"], 1);
    let settings = &answer["settings"];
    assert_eq!(settings["a_application_name"], "first");
    assert_eq!(
        settings["b_application_name"], "",
        "one connection's SET leaves the other's alone"
    );
    assert_eq!(
        settings["a_patient_columns"][5], "patients",
        "search_path = fhir reads fhir.patient"
    );
    assert_eq!(
        settings["b_patient_columns"][1], "gender",
        "the other connection reads the view"
    );
    assert_eq!(
        answer["in_transaction"].to_string(),
        cli("SELECT count(*) FROM patient")[0]
    );

    // Over the memory limit: a clear error, not a crash.
    let memory = python_client(&python, "memory", &port, &[]);
    assert_eq!(memory["result"]["sqlstate"], "53200", "{memory}");
    assert!(
        memory["result"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("memory limit of 64 MiB")),
        "{memory}"
    );

    // A client that goes away mid-result stops its query within 5 s (the
    // audit record is written when the result stream is dropped).
    let gone = python_client(&python, "disconnect", &port, &[]);
    assert!(gone["read"].as_u64().is_some_and(|n| n >= 1000), "{gone}");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.lines().any(|l| {
            l.contains("event=\"sql_query\"")
                && l.contains("outcome=\"cancelled\"")
                && l.contains("generate_series(1, 2000000000)")
        }) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no cancelled query in the audit log within 5 s:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // A cancel request (psycopg's cancel_safe, from another thread) stops
    // a result being streamed; the connection stays usable.
    let cancelled = python_client(&python, "cancel", &port, &[]);
    assert_eq!(cancelled["outcome"]["sqlstate"], "57014", "{cancelled}");
    assert_eq!(cancelled["after"], 1, "{cancelled}");

    // SQLAlchemy's inspector and the catalog queries BI tools send.
    let queries = repo().join("tests/pg/catalog-queries");
    let inspected = python_client(&python, "inspect", &port, &[queries.to_str().expect("path")]);
    let has = |list: &Value, name: &str| list.as_array().is_some_and(|l| l.iter().any(|v| v == name));
    assert!(
        has(&inspected["schemas"], "public") && has(&inspected["schemas"], "fhir"),
        "{inspected}"
    );
    assert!(
        has(&inspected["tables"], "patient") && has(&inspected["tables"], "condition"),
        "{inspected}"
    );
    assert!(has(&inspected["fhir_tables"], "Patient"), "{inspected}");
    assert_eq!(inspected["has_condition"], true);
    assert_eq!(
        inspected["pandas_like_read"].to_string(),
        cli("SELECT count(*) FROM patient")[0]
    );
    let tools = inspected["tool_queries"].as_object().expect("tool queries");
    assert!(tools.len() >= 6, "every committed catalog query ran: {tools:?}");
    for (file, result) in tools {
        assert!(result.get("error").is_none(), "{file}: {result}");
        assert!(
            result["rows"].as_u64().is_some_and(|n| n > 0),
            "{file} returned no rows"
        );
        if file.contains("tables") || file.contains("columns") {
            let text = result["text"].as_str().unwrap_or_default();
            assert!(text.contains("patient"), "{file} names patient: {text}");
        }
    }
    drop(server);

    // Off loopback, a front without authentication does not start.
    let out = fhirlake(&[
        "--warehouse",
        warehouse.to_str().expect("path"),
        "serve",
        "--addr",
        "127.0.0.1:0",
        "--pg-addr",
        "0.0.0.0:0",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--clients"), "{out:?}");
}

#[test]
fn postgres_logins_use_access_tokens_and_follow_their_scopes() {
    let Some((python, _)) = clients() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let warehouse = dir.path().join("wh");
    let file = dir.path().join("clients.json");
    let key = make_key(dir.path(), "pg", false);
    add_client(&file, "pg-patients", &key, "k1", "system/Patient.rs", &[]);
    add_client(&file, "pg-all", &key, "k1", "system/*.rs", &["roster-a"]);
    add_client(&file, "pg-groups", &key, "k1", "system/Group.rs system/Patient.rs", &[]);
    let server = Server::start(
        &warehouse,
        &["--clients", file.to_str().expect("path"), "--pg-addr", "127.0.0.1:0"],
    );
    let port = port_of(&server);
    let audience = format!("{}/auth/token", server.base);
    let token_of = |client: &str, scope: &str| {
        let signed = assertion(&key, jsonwebtoken::Algorithm::ES384, "k1", &claims(client, &audience));
        token(&server.base, &signed, scope)
    };
    let patients_token = token_of("pg-patients", "system/Patient.rs");
    let all_token = token_of("pg-all", "system/*.rs");
    let login = |user: &str, password: &str, sql: &str| python_client(&python, "login", &port, &[user, password, sql]);
    let state = |answer: &Value| answer["error"]["sqlstate"].as_str().unwrap_or("none").to_string();

    let patients = login("pg-patients", &patients_token, "SELECT count(*) FROM patient");
    assert_eq!(
        patients["rows"][0][0].to_string(),
        sql_csv_rows(&warehouse, "SELECT count(*) FROM patient")[0]
    );
    let female = login(
        "pg-patients",
        &patients_token,
        "SELECT count(*) FROM cohort('Patient?gender=female')",
    );
    assert!(female["rows"][0][0].as_i64().is_some_and(|n| n > 0), "{female}");
    for sql in [
        "SELECT count(*) FROM condition",
        "SELECT count(*) FROM fhir.\"Condition\"",
        "SELECT count(*) FROM fhir.compartment",
        "SELECT count(*) FROM index_token",
        "SELECT count(*) FROM group_members",
        "SELECT count(*) FROM patient WHERE id IN (SELECT patient_id FROM condition)",
        "SELECT count(*) FROM cohort('Condition?code=http://snomed.info/sct|15777000')",
    ] {
        let refused = login("pg-patients", &patients_token, sql);
        assert_eq!(state(&refused), "42501", "{sql}: {refused}");
    }
    // Group tables show a login its own and its granted Groups: a roster
    // loaded while the server runs (the next statement reads the new
    // version) is seen by the client it is granted to only.
    let ids = sql_csv_rows(&warehouse, "SELECT id FROM patient ORDER BY id LIMIT 2");
    let roster = serde_json::json!({
        "resourceType": "Group", "id": "roster-a", "type": "person", "actual": true,
        "member": ids.iter().map(|id| serde_json::json!({"entity": {"reference": format!("Patient/{id}")}})).collect::<Vec<_>>()
    });
    let roster_file = dir.path().join("Group.ndjson");
    std::fs::write(&roster_file, format!("{roster}\n")).expect("roster");
    let loaded = fhirlake(&[
        "--warehouse",
        warehouse.to_str().expect("path"),
        "load",
        "--quiet",
        roster_file.to_str().expect("path"),
    ]);
    assert!(loaded.status.success(), "{loaded:?}");
    let members_sql = "SELECT count(*) FROM group_members WHERE group_id = 'roster-a'";
    let granted = login("pg-all", &all_token, members_sql);
    assert_eq!(granted["rows"][0][0], 2, "{granted}");
    let groups_token = token_of("pg-groups", "system/Group.rs system/Patient.rs");
    let not_granted = login("pg-groups", &groups_token, members_sql);
    assert_eq!(not_granted["rows"][0][0], 0, "{not_granted}");
    let all = login("pg-all", &all_token, "SELECT count(*) FROM condition");
    assert_eq!(
        all["rows"][0][0].to_string(),
        sql_csv_rows(&warehouse, "SELECT count(*) FROM condition")[0]
    );
    // Wrong password, someone else's token, no password.
    // (libpq reports a failed login without its SQLSTATE: the message says it.)
    let refused_login = |answer: Value, why: &str| {
        let message = answer["error"]["message"].as_str().unwrap_or_default().to_string();
        assert!(
            message.contains("password authentication failed") && message.contains(why),
            "{answer}"
        );
    };
    refused_login(login("pg-all", "not-a-token", "SELECT 1"), "access token");
    refused_login(
        login("pg-all", &patients_token, "SELECT 1"),
        "issued to client \"pg-patients\"",
    );
    assert!(login("pg-all", "", "SELECT 1").get("error").is_some());
}
