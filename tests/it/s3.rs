//! S3 data lakes against a real S3-compatible server: `s3s-fs` (SigV4
//! checked, buckets stored as folders) started on a loopback port. Loads
//! from a bucket into a warehouse in a bucket, queries, cohorts and exports
//! it, exports through the server into a bucket (streamed and presigned),
//! and checks the errors and the atomicity of an interrupted load.
//!
//! `scripts/test.sh` installs `s3s-fs` and sets `FHIRLAKE_REQUIRE_S3`, so a
//! missing server fails these tests there; a plain `cargo test` without it
//! skips them with a note.

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cohort::EXAMPLES;
use crate::common::{expected_counts, sample_data, shared_dataset};
use crate::export::{export_ok, get_file, manifest_counts};
use crate::http_client::{Server, http};

const ACCESS_KEY: &str = "fhirlake-test";
const SECRET_KEY: &str = "fhirlake-test-secret";

/// The `s3s-fs` binary, or `None` (with a note) when it is not installed
/// and the run does not require it.
fn s3s_binary() -> Option<PathBuf> {
    let home = std::env::var("HOME").unwrap_or_default();
    let candidates = [
        std::env::var("FHIRLAKE_S3S_FS").ok().map(PathBuf::from),
        std::env::var("PATH").ok().and_then(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join("s3s-fs"))
                .find(|p| p.is_file())
        }),
        Some(PathBuf::from(format!("{home}/.cache/fhirlake/tools/bin/s3s-fs"))),
        Some(PathBuf::from(format!("{home}/.cargo/bin/s3s-fs"))),
    ];
    if let Some(found) = candidates.into_iter().flatten().find(|p| p.is_file()) {
        return Some(found);
    }
    assert!(
        std::env::var_os("FHIRLAKE_REQUIRE_S3").is_none(),
        "s3s-fs is required (FHIRLAKE_REQUIRE_S3) but not installed: run scripts/test.sh"
    );
    eprintln!("SKIPPED: s3s-fs is not installed (scripts/test.sh installs it)");
    None
}

/// A running `s3s-fs` serving the buckets (folders) of `data`.
struct S3Server {
    binary: PathBuf,
    child: Option<Child>,
    port: u16,
    data: PathBuf,
}

impl S3Server {
    /// Starts a server over `data` (created) on a free port.
    fn start(data: &Path) -> Option<S3Server> {
        let binary = s3s_binary()?;
        std::fs::create_dir_all(data).expect("data dir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut server = S3Server {
            binary,
            child: None,
            port,
            data: data.to_path_buf(),
        };
        server.restart();
        Some(server)
    }

    /// (Re)starts the server on its port and waits until it accepts connections.
    fn restart(&mut self) {
        let child = Command::new(&self.binary)
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(&self.data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start s3s-fs");
        self.child = Some(child);
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(started.elapsed() < Duration::from_secs(20), "s3s-fs did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: the server vanishes mid-request.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates bucket `name`.
    fn bucket(&self, name: &str) -> PathBuf {
        let dir = self.data.join(name);
        std::fs::create_dir_all(&dir).expect("bucket");
        dir
    }

    /// Copies the NDJSON files of `dataset` into `bucket/prefix/`.
    fn seed(&self, bucket: &str, prefix: &str, dataset: &Path) {
        let target = self.bucket(bucket).join(prefix);
        std::fs::create_dir_all(&target).expect("prefix");
        for entry in std::fs::read_dir(dataset).expect("dataset") {
            let path = entry.expect("entry").path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if name.ends_with(".ndjson") || name.ends_with(".ndjson.gz") {
                std::fs::copy(&path, target.join(name)).expect("copy");
            }
        }
    }

    /// The environment a client of this server gets: credentials, endpoint,
    /// region, and a short retry window so failures surface quickly.
    fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID".into(), ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY".into(), SECRET_KEY.into()),
            ("AWS_ENDPOINT_URL".into(), self.endpoint()),
            ("AWS_REGION".into(), "us-east-1".into()),
            ("FHIRLAKE_S3_RETRY_SECONDS".into(), "3".into()),
        ]
    }

    /// [`S3Server::env`] without the variables named in `remove`, plus `add`.
    fn env_with(&self, remove: &[&str], add: &[(&str, String)]) -> Vec<(String, String)> {
        let mut env = self.env();
        env.retain(|(k, _)| !remove.contains(&k.as_str()) && !add.iter().any(|(a, _)| a == k));
        env.extend(add.iter().map(|(k, v)| (k.to_string(), v.clone())));
        env
    }

    /// Runs `fhirlake` as a client of this server.
    fn fhirlake(&self, args: &[&str]) -> Output {
        run_fhirlake(args, &self.env())
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.kill();
    }
}

fn run_fhirlake(args: &[&str], env: &[(String, String)]) -> Output {
    crate::common::isolate_aws(&mut Command::new(env!("CARGO_BIN_EXE_fhirlake")))
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("run fhirlake")
}

fn ok(output: Output, what: &str) -> String {
    assert!(
        output.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Rows per resource type of the warehouse at `warehouse`, by SQL.
fn table_counts(server: &S3Server, warehouse: &str, types: &[String]) -> BTreeMap<String, i64> {
    let sql = types
        .iter()
        .map(|t| format!("SELECT '{t}' AS t, count(*) AS n FROM fhir.\"{t}\""))
        .collect::<Vec<_>>()
        .join(" UNION ALL ");
    let out = ok(
        server.fhirlake(&["--warehouse", warehouse, "sql", &sql, "--format", "csv"]),
        "sql",
    );
    out.lines()
        .skip(1)
        .filter_map(|l| l.split_once(','))
        .map(|(t, n)| (t.to_string(), n.trim().parse().expect("count")))
        .collect()
}

/// Every file under `dir`.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

/// synthea-100 from `../shared/data` when present (the dataset),
/// else the bundled synthea-10; with the README example column to expect.
fn lake_dataset() -> (PathBuf, String, usize) {
    match shared_dataset("synthea-100") {
        Some(dir) => (dir, "synthea-100".into(), 1),
        None => (sample_data(), "synthea-10".into(), 0),
    }
}

#[tokio::test]
async fn load_from_s3_into_an_s3_warehouse_then_sql_cohorts_and_export() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(server) = S3Server::start(&dir.path().join("s3")) else {
        return;
    };
    let (dataset, name, column) = lake_dataset();
    server.seed("lake", &name, &dataset);
    server.bucket("warehouse");
    server.bucket("out");
    let source = format!("s3://lake/{name}/");
    let warehouse = "s3://warehouse/fhir";

    let summary = ok(
        server.fhirlake(&["--warehouse", warehouse, "load", &source, "--quiet", "--json"]),
        "load from S3",
    );
    let summary: Value = serde_json::from_str(summary.trim()).expect("summary json");
    let expected = expected_counts(&dataset);
    let total: i64 = expected.iter().map(|(_, n)| n).sum();
    assert_eq!(summary["resources"].as_i64(), Some(total), "{summary}");
    // The warehouse really is in the bucket: manifests and Parquet files.
    let stored = files_under(&server.data.join("warehouse/fhir"));
    assert!(
        stored.iter().any(|p| p.to_string_lossy().contains("_manifest")),
        "{stored:?}"
    );
    assert!(stored.iter().any(|p| p.extension().is_some_and(|e| e == "parquet")));

    // Per-type row counts equal the dataset's own statistics.
    let types: Vec<String> = expected.iter().map(|(t, _)| t.clone()).collect();
    let counts = table_counts(&server, warehouse, &types);
    assert_eq!(counts, expected.iter().cloned().collect::<BTreeMap<_, _>>());

    // Cohorts: the README example counts, from the warehouse on S3.
    for (id, filters, ten, hundred, _) in EXAMPLES {
        let want = if column == 1 { *hundred } else { *ten };
        let mut args = vec!["--warehouse", warehouse, "cohort"];
        args.extend_from_slice(filters);
        let out = ok(server.fhirlake(&args), id);
        assert_eq!(out.lines().next(), Some(want.to_string().as_str()), "{id} {filters:?}");
    }

    // Export into a bucket: the manifest and files are objects there.
    ok(
        server.fhirlake(&[
            "--warehouse",
            warehouse,
            "export",
            "--out",
            "s3://out/run1",
            "--type",
            "Patient,Condition",
        ]),
        "export to S3",
    );
    let out_dir = server.data.join("out/run1");
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("manifest.json")).expect("manifest in bucket"))
            .expect("json");
    let (exported, _) = manifest_counts(&manifest, |name| std::fs::read(out_dir.join(name)).expect("file"));
    let want: BTreeMap<String, usize> = expected
        .iter()
        .filter(|(t, _)| t == "Patient" || t == "Condition")
        .map(|(t, n)| (t.clone(), *n as usize))
        .collect();
    assert_eq!(exported, want);
    // A second export into the same prefix is refused (no mixing).
    let again = server.fhirlake(&["--warehouse", warehouse, "export", "--out", "s3://out/run1"]);
    assert!(!again.status.success());
    assert!(stderr_of(&again).contains("not empty"), "{}", stderr_of(&again));

    // The server runs over the S3 warehouse (its own state goes there too):
    // a cohort Group and its export.
    let fhir = Server::start_with(warehouse, &[], &server.env());
    let group = crate::common::cohort_group("women", "Patient?gender=female");
    let created = http(
        "POST",
        &format!("{}/Group", fhir.base),
        &[
            ("Content-Type", "application/fhir+json"),
            ("Accept", "application/fhir+json"),
        ],
        Some(&group.to_string()),
    );
    assert_eq!(created.status, 201, "{}", String::from_utf8_lossy(&created.body));
    let group_id = created.json()["id"].as_str().expect("id").to_string();
    let (_, manifest) = export_ok(
        "GET",
        &format!("{}/Group/{group_id}/$export?_type=Patient", fhir.base),
        None,
    )
    .await;
    let (exported, _) = manifest_counts(&manifest, |url| get_file(url, &[]).body);
    let women = EXAMPLES
        .iter()
        .find(|e| e.0 == "P1")
        .map(|e| if column == 1 { e.3 } else { e.2 });
    assert_eq!(exported.get("Patient").copied(), women);
    // Every single-filter example through the one server process, twice:
    // its reads of the warehouse's files go through the in-memory read cache
    // (the second round is served from memory) and give the same counts.
    for round in 0..2 {
        for (id, filters, ten, hundred, _) in EXAMPLES.iter().filter(|e| e.1.len() == 1) {
            let want = if column == 1 { *hundred } else { *ten };
            let created = http(
                "POST",
                &format!("{}/Group", fhir.base),
                &[("Content-Type", "application/fhir+json")],
                Some(&crate::common::cohort_group(id, filters[0]).to_string()),
            );
            assert_eq!(created.status, 201, "{}", String::from_utf8_lossy(&created.body));
            assert_eq!(created.json()["quantity"], want, "{id} {filters:?}, round {round}");
        }
    }
    assert!(
        files_under(&server.data.join("warehouse/fhir/_server")).len() >= 2,
        "the Group and the export job are stored in the bucket"
    );
    fhir.stop();

    // A reload of the same data is idempotent on S3 too.
    ok(
        server.fhirlake(&["--warehouse", warehouse, "load", &source, "--quiet"]),
        "reload",
    );
    assert_eq!(
        table_counts(&server, warehouse, &types),
        expected.iter().cloned().collect::<BTreeMap<_, _>>()
    );
}

#[test]
fn s3_errors_say_what_and_where() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(server) = S3Server::start(&dir.path().join("s3")) else {
        return;
    };
    server.seed("lake", "sample", &sample_data());
    let local_wh = dir.path().join("warehouse");
    let local_wh = local_wh.to_str().expect("path");

    // Wrong secret: refused, naming the object and the cause.
    let env = server.env_with(&[], &[("AWS_SECRET_ACCESS_KEY", "wrong-secret".into())]);
    let out = run_fhirlake(&["--warehouse", local_wh, "load", "s3://lake/sample/", "--quiet"], &env);
    assert!(!out.status.success());
    let text = stderr_of(&out);
    assert!(text.contains("s3://lake/sample"), "{text}");
    assert!(text.contains("forbidden") || text.contains("credentials"), "{text}");

    // A bucket that does not exist.
    let out = server.fhirlake(&["--warehouse", local_wh, "load", "s3://no-such-bucket/x/", "--quiet"]);
    assert!(!out.status.success());
    let text = stderr_of(&out);
    assert!(text.contains("s3://no-such-bucket"), "{text}");
    assert!(text.contains("bucket not found"), "{text}");

    // A prefix with nothing under it.
    let out = server.fhirlake(&["--warehouse", local_wh, "load", "s3://lake/nothing-here/", "--quiet"]);
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("s3://lake/nothing-here"),
        "{}",
        stderr_of(&out)
    );

    // A warehouse in a missing bucket.
    let out = server.fhirlake(&["--warehouse", "s3://no-such-bucket/w", "sql", "SELECT 1"]);
    assert!(!out.status.success());
    assert!(stderr_of(&out).contains("bucket not found"), "{}", stderr_of(&out));

    // No credentials anywhere (environment, profile files).
    let env = server.env_with(
        &["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"],
        &[
            ("HOME", dir.path().display().to_string()),
            ("FHIRLAKE_S3_RETRY_SECONDS", "1".into()),
        ],
    );
    let out = run_fhirlake(&["--warehouse", local_wh, "load", "s3://lake/sample/", "--quiet"], &env);
    assert!(!out.status.success());
    let text = stderr_of(&out);
    assert!(
        text.contains("no credentials") && text.contains("s3://lake/sample"),
        "{text}"
    );

    // Nobody listening at the endpoint.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let env = server.env_with(
        &[],
        &[
            ("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{closed}")),
            ("FHIRLAKE_S3_RETRY_SECONDS", "1".into()),
        ],
    );
    let out = run_fhirlake(&["--warehouse", local_wh, "load", "s3://lake/sample/", "--quiet"], &env);
    assert!(!out.status.success());
    let text = stderr_of(&out);
    assert!(
        text.contains("unreachable") && text.contains("s3://lake/sample"),
        "{text}"
    );
}

#[test]
fn interrupted_load_into_an_s3_warehouse_keeps_the_previous_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(mut server) = S3Server::start(&dir.path().join("s3")) else {
        return;
    };
    server.bucket("warehouse");
    let warehouse = "s3://warehouse/w";
    let sample = sample_data();
    let sample_path = sample.to_str().expect("path");
    ok(
        server.fhirlake(&["--warehouse", warehouse, "load", sample_path, "--quiet"]),
        "first load",
    );
    let types: Vec<String> = expected_counts(&sample).into_iter().map(|(t, _)| t).collect();
    let before = table_counts(&server, warehouse, &types);

    // A larger second load, killed from under it: the S3 server dies once
    // the load has started writing data files.
    let big = dir.path().join("big");
    let gen_out = crate::common::fhirlake(&[
        "gen",
        "--from",
        sample_path,
        "--copies",
        "12",
        "--out",
        big.to_str().expect("path"),
    ]);
    assert!(gen_out.status.success(), "{}", String::from_utf8_lossy(&gen_out.stderr));
    let existing: std::collections::HashSet<PathBuf> =
        files_under(&server.data.join("warehouse")).into_iter().collect();
    let mut load = crate::common::isolate_aws(&mut Command::new(env!("CARGO_BIN_EXE_fhirlake")))
        .args(["--warehouse", warehouse, "load", big.to_str().expect("path"), "--quiet"])
        .envs(server.env())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("second load");
    let started = Instant::now();
    loop {
        let fresh = files_under(&server.data.join("warehouse"))
            .into_iter()
            .any(|p| !existing.contains(&p));
        if fresh {
            break;
        }
        assert!(
            load.try_wait().expect("wait").is_none(),
            "the load ended before writing anything new"
        );
        assert!(started.elapsed() < Duration::from_secs(120), "no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    server.kill();
    let result = load.wait_with_output().expect("load ends");
    assert!(!result.status.success(), "a load whose store vanished must fail");
    let text = String::from_utf8_lossy(&result.stderr);
    assert!(text.contains("s3://warehouse/w"), "{text}");

    // The store is back: the previous state is intact and readable.
    server.restart();
    assert_eq!(table_counts(&server, warehouse, &types), before);
}

#[tokio::test]
async fn export_store_on_s3_with_streamed_and_presigned_downloads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(s3) = S3Server::start(&dir.path().join("s3")) else {
        return;
    };
    s3.bucket("exports");
    let warehouse = dir.path().join("warehouse");
    let warehouse = warehouse.to_str().expect("path");
    ok(
        s3.fhirlake(&["--warehouse", warehouse, "load", "--quiet"]),
        "load sample",
    );
    let patients = expected_counts(&sample_data())
        .into_iter()
        .find(|(t, _)| t == "Patient")
        .map(|(_, n)| n as usize)
        .expect("Patient count");

    // Streamed through the server: URLs point at the server, files live in the bucket.
    let server = Server::start_with(warehouse, &["--export-store", "s3://exports/jobs"], &s3.env());
    let (status_url, manifest) = export_ok("GET", &format!("{}/$export?_type=Patient", server.base), None).await;
    assert_eq!(manifest["requiresAccessToken"], Value::Bool(false));
    let (counts, _) = manifest_counts(&manifest, |url| {
        assert!(url.starts_with(&server.base), "{url}");
        let response = get_file(url, &[]);
        assert_eq!(response.status, 200);
        response.body
    });
    assert_eq!(counts.get("Patient"), Some(&patients));
    let id = status_url.rsplit('/').next().expect("job id").to_string();
    let job_dir = s3.data.join("exports/jobs").join(&id);
    assert!(!files_under(&job_dir).is_empty(), "files are in the bucket");
    // DELETE purges the bucket's files.
    let deleted = http("DELETE", &status_url, &[], None);
    assert_eq!(deleted.status, 202);
    let started = Instant::now();
    while !files_under(&job_dir).is_empty() {
        assert!(started.elapsed() < Duration::from_secs(10), "files purged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.stop();

    // Presigned: the manifest's URLs go straight to S3, signed, and expire.
    let server = Server::start_with(
        warehouse,
        &[
            "--export-store",
            "s3://exports/signed",
            "--export-downloads",
            "presigned",
            "--download-url-expiry",
            "10s",
        ],
        &s3.env(),
    );
    // URLs are signed when the manifest is served: good for 10 s (room for
    // a busy machine to download), refused after 11.
    let (_, manifest) = export_ok("GET", &format!("{}/$export?_type=Patient", server.base), None).await;
    let signed = Instant::now();
    assert_eq!(manifest["requiresAccessToken"], Value::Bool(false));
    let url = manifest["output"][0]["url"].as_str().expect("url").to_string();
    assert!(url.starts_with(&s3.endpoint()), "{url}");
    assert!(url.contains("X-Amz-Signature="), "{url}");
    let (counts, _) = manifest_counts(&manifest, |url| {
        let response = http("GET", url, &[], None);
        assert_eq!(response.status, 200, "{}", String::from_utf8_lossy(&response.body));
        response.body
    });
    assert_eq!(counts.get("Patient"), Some(&patients));
    // Without the signature, or after expiry, S3 refuses.
    let unsigned = url.split('?').next().expect("path");
    assert_eq!(http("GET", unsigned, &[], None).status, 403);
    tokio::time::sleep(Duration::from_secs(11).saturating_sub(signed.elapsed())).await;
    assert_eq!(http("GET", &url, &[], None).status, 403, "expired");
    server.stop();

    // Presigned downloads need a store that can sign.
    let refused = run_fhirlake(
        &[
            "--warehouse",
            warehouse,
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--export-downloads",
            "presigned",
        ],
        &s3.env(),
    );
    assert!(!refused.status.success());
    assert!(stderr_of(&refused).contains("presigned"), "{}", stderr_of(&refused));
}

#[tokio::test]
async fn conflicting_commits_on_s3_leave_the_first_intact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(s3) = S3Server::start(&dir.path().join("s3")) else {
        return;
    };
    s3.bucket("warehouse");
    let options = fhirlake::store::S3Options {
        endpoint: Some(s3.endpoint()),
        credentials: Some((ACCESS_KEY.into(), SECRET_KEY.into())),
        retry_timeout: Some(Duration::from_secs(3)),
        ..Default::default()
    };
    let open = || {
        let root =
            fhirlake::store::StoreLocation::parse_with("s3://warehouse/race", false, &options).expect("location");
        fhirlake::warehouse::Warehouse::at(root)
    };
    let (first, second) = (open(), open());
    let snapshot = |operation: &str| fhirlake::warehouse::Snapshot {
        format: fhirlake::warehouse::manifest::FORMAT.to_string(),
        version: 1,
        committed_at: fhirlake::warehouse::now_rfc3339(),
        operation: operation.to_string(),
        operation_details: Value::Null,
        tables: BTreeMap::new(),
    };
    // Two writers both read "empty" and both create version 1: the
    // conditional put (If-None-Match: *) lets only the first win; the second
    // learns of the conflict instead of overwriting the first's commit.
    // (They commit one after the other: s3s-fs checks the condition and then
    // writes, so truly simultaneous puts are atomic only on servers that
    // make them so, as AWS S3 does.)
    assert!(first.current().await.expect("read").is_none());
    assert!(second.current().await.expect("read").is_none());
    first.commit(&snapshot("a")).await.expect("first commit wins");
    let loser = second.commit(&snapshot("b")).await;
    assert!(
        matches!(
            loser,
            Err(fhirlake::warehouse::WarehouseError::ConcurrentCommit { version: 1 })
        ),
        "{loser:?}"
    );
    let current = first.current().await.expect("read").expect("a version");
    assert_eq!(current.version, 1);
    assert_eq!(current.operation, "a", "the first commit is intact");
}
