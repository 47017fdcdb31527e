//! SMART Backend Services against the real server: keys made by openssl
//! (RSA 2048 and EC P-384), clients registered with `fhirlake clients add`,
//! real signed assertions; the full flow and each attack.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::common::fhirlake;
use crate::export::get_file;
use crate::http_client::{HttpResponse, Server, http, poll_status};

const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// A private key (PEM file) and its public half, made by openssl.
pub(crate) struct Key {
    private: PathBuf,
    public: PathBuf,
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl is installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub(crate) fn make_key(dir: &Path, name: &str, rsa: bool) -> Key {
    let private = dir.join(format!("{name}.pem"));
    let public = dir.join(format!("{name}.pub.pem"));
    let private_s = private.to_str().expect("path");
    if rsa {
        openssl(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            private_s,
        ]);
    } else {
        openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-384",
            "-out",
            private_s,
        ]);
    }
    openssl(&[
        "pkey",
        "-in",
        private_s,
        "-pubout",
        "-out",
        public.to_str().expect("path"),
    ]);
    Key { private, public }
}

pub(crate) fn add_client(file: &Path, id: &str, key: &Key, kid: &str, scopes: &str, groups: &[&str]) {
    let mut args = vec![
        "clients",
        "add",
        "--file",
        file.to_str().expect("path"),
        "--client-id",
        id,
        "--public-key",
        key.public.to_str().expect("path"),
        "--kid",
        kid,
        "--scopes",
        scopes,
    ];
    for g in groups {
        args.extend(["--group", g]);
    }
    let out = fhirlake(&args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A signed client assertion.
pub(crate) fn assertion(key: &Key, alg: Algorithm, kid: &str, claims: &Value) -> String {
    let pem = std::fs::read(&key.private).expect("key");
    let encoding = match alg {
        Algorithm::RS384 => EncodingKey::from_rsa_pem(&pem).expect("rsa key"),
        _ => EncodingKey::from_ec_pem(&pem).expect("ec key"),
    };
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_string());
    jsonwebtoken::encode(&header, claims, &encoding).expect("sign")
}

pub(crate) fn claims(client: &str, aud: &str) -> Value {
    json!({"iss": client, "sub": client, "aud": aud, "exp": now() + 240, "jti": uuid::Uuid::new_v4().to_string()})
}

fn token_request(base: &str, assertion: &str, scope: &str) -> HttpResponse {
    let body: String = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "client_credentials")
        .append_pair("client_assertion_type", ASSERTION_TYPE)
        .append_pair("client_assertion", assertion)
        .append_pair("scope", scope)
        .finish();
    http(
        "POST",
        &format!("{base}/auth/token"),
        &[("Content-Type", "application/x-www-form-urlencoded")],
        Some(&body),
    )
}

pub(crate) fn token(base: &str, assertion: &str, scope: &str) -> String {
    let response = token_request(base, assertion, scope);
    assert_eq!(response.status, 200, "{}", String::from_utf8_lossy(&response.body));
    response.json()["access_token"]
        .as_str()
        .expect("access_token")
        .to_string()
}

/// The refusals a test expects, each checked and reported by its case's
/// name: one wrong answer does not hide the others.
#[derive(Default)]
struct Refusals(Vec<String>);

impl Refusals {
    /// Records `problem` (from [`refused`] or [`unauthorized`]), if any.
    fn check(&mut self, problem: Option<String>) {
        self.0.extend(problem);
    }

    /// Expects `response` to have `status`.
    fn status(&mut self, case: &str, response: &HttpResponse, status: u16) {
        if response.status != status {
            self.0.push(format!(
                "{case}: expected {status}, got {}: {}",
                response.status,
                String::from_utf8_lossy(&response.body)
            ));
        }
    }

    /// Fails with every case that was not refused as expected.
    fn assert_none(&mut self) {
        let problems = std::mem::take(&mut self.0);
        assert!(
            problems.is_empty(),
            "{} case(s) failed:\n{}",
            problems.len(),
            problems.join("\n")
        );
    }
}

impl Drop for Refusals {
    fn drop(&mut self) {
        // A later assertion failed first: still say which cases went wrong.
        if !self.0.is_empty() {
            eprintln!("cases that failed before the panic:\n{}", self.0.join("\n"));
        }
    }
}

/// Whether `response` is the OAuth error `error` with `status`.
fn refused(response: &HttpResponse, status: u16, error: &str, case: &str) -> Option<String> {
    let got = response.json()["error"].as_str().unwrap_or("").to_string();
    (response.status != status || got != error).then(|| {
        format!(
            "{case}: expected {status} {error}, got {} {got}: {}",
            response.status,
            String::from_utf8_lossy(&response.body)
        )
    })
}

fn get(url: &str, token: Option<&str>) -> HttpResponse {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Accept", "application/fhir+json")];
    if let Some(b) = &bearer {
        headers.push(("Authorization", b.as_str()));
    }
    http("GET", url, &headers, None)
}

/// Whether `response` is a 401 with a Bearer challenge and an OperationOutcome.
fn unauthorized(response: &HttpResponse, case: &str) -> Option<String> {
    let challenged = response
        .header("www-authenticate")
        .is_some_and(|h| h.starts_with("Bearer"));
    let outcome = response.json()["resourceType"] == "OperationOutcome";
    (response.status != 401 || !challenged || !outcome).then(|| {
        format!(
            "{case}: expected 401 with a Bearer challenge and an OperationOutcome, got {} (challenge: {challenged}): {}",
            response.status,
            String::from_utf8_lossy(&response.body)
        )
    })
}

fn base64url(value: &Value) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
}

#[tokio::test]
async fn smart_backend_services_flow_and_attacks() {
    let mut refusals = Refusals::default();
    let dir = tempfile::tempdir().expect("tempdir");
    let rsa = make_key(dir.path(), "a", true);
    let ec = make_key(dir.path(), "b", false);
    let rogue = make_key(dir.path(), "rogue", true);
    let clients = dir.path().join("clients.json");
    add_client(&clients, "app-a", &rsa, "a1", "system/*.rs system/Group.cud", &[]);
    add_client(
        &clients,
        "app-b",
        &ec,
        "b1",
        "system/Patient.read system/Group.write system/Group.read",
        &[],
    );
    let listed = fhirlake(&["clients", "list", "--file", clients.to_str().expect("path")]);
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("app-a\tsystem/*.rs system/Group.cud\ta1")),
        "{listed}"
    );
    assert!(listed.lines().any(|l| l.starts_with("app-b\t")), "{listed}");
    let warehouse = dir.path().join("wh");
    let server = Server::start(&warehouse, &["--clients", clients.to_str().expect("path")]);
    let base = server.base.clone();
    let aud = format!("{base}/auth/token");

    // Discovery and the CapabilityStatement are public.
    let config = get(&format!("{base}/.well-known/smart-configuration"), None);
    assert_eq!(config.status, 200);
    let config = config.json();
    assert_eq!(config["token_endpoint"], aud.as_str());
    assert_eq!(
        config["token_endpoint_auth_methods_supported"],
        json!(["private_key_jwt"])
    );
    assert!(
        config["grant_types_supported"]
            .as_array()
            .expect("grants")
            .contains(&json!("client_credentials"))
    );
    let metadata = get(&format!("{base}/metadata"), None);
    assert_eq!(metadata.status, 200);
    let security = &metadata.json()["rest"][0]["security"];
    assert_eq!(security["service"][0]["coding"][0]["code"], "SMART-on-FHIR");
    assert_eq!(security["extension"][0]["extension"][0]["valueUri"], aud.as_str());

    // No token, a garbled header, an unknown token: 401 everywhere.
    refusals.check(unauthorized(&get(&format!("{base}/Group"), None), "no token"));
    let garbled = http(
        "GET",
        &format!("{base}/Group"),
        &[("Authorization", "Basic YTpi")],
        None,
    );
    refusals.check(unauthorized(&garbled, "Basic auth"));
    let empty = http("GET", &format!("{base}/Group"), &[("Authorization", "Bearer ")], None);
    refusals.check(unauthorized(&empty, "empty bearer"));
    refusals.check(unauthorized(
        &get(&format!("{base}/Group"), Some("not-a-token")),
        "unknown token",
    ));

    // Client A (RS384): a token, then create a cohort, export it, download.
    // (v1 scopes asked for, v2 granted.)
    let response = token_request(
        &base,
        &assertion(&rsa, Algorithm::RS384, "a1", &claims("app-a", &aud)),
        "system/*.read system/Group.write",
    );
    assert_eq!(response.status, 200, "{}", String::from_utf8_lossy(&response.body));
    assert_eq!(response.header("cache-control"), Some("no-store"));
    let body = response.json();
    assert_eq!(body["token_type"], "bearer");
    assert!(body["expires_in"].as_u64().is_some_and(|s| s > 0 && s <= 300));
    assert_eq!(body["scope"], "system/*.rs system/Group.cud");
    let token_a = body["access_token"].as_str().expect("token").to_string();
    let bearer_a = format!("Bearer {token_a}");
    let group = crate::common::cohort_group("women of A", "Patient?gender=female");
    let created = http(
        "POST",
        &format!("{base}/Group"),
        &[
            ("Content-Type", "application/fhir+json"),
            ("Accept", "application/fhir+json"),
            ("Authorization", &bearer_a),
        ],
        Some(&group.to_string()),
    );
    assert_eq!(created.status, 201, "{}", String::from_utf8_lossy(&created.body));
    let group_a = created.json()["id"].as_str().expect("id").to_string();
    assert_eq!(get(&format!("{base}/Group/{group_a}"), Some(&token_a)).status, 200);
    let kickoff = http(
        "GET",
        &format!("{base}/Group/{group_a}/$export?_type=Patient"),
        &[
            ("Accept", "application/fhir+json"),
            ("Prefer", "respond-async"),
            ("Authorization", &bearer_a),
        ],
        None,
    );
    assert_eq!(kickoff.status, 202, "{}", String::from_utf8_lossy(&kickoff.body));
    let status_url = kickoff.header("content-location").expect("status URL").to_string();
    let manifest = done(&status_url, &token_a).await;
    assert_eq!(manifest["requiresAccessToken"], true);
    let file_url = manifest["output"][0]["url"].as_str().expect("file url").to_string();
    let download = get_file(&file_url, &[("Authorization", &bearer_a)]);
    assert_eq!(download.status, 200);
    assert_eq!(
        String::from_utf8_lossy(&download.body).lines().count(),
        4,
        "the 4 women of synthea-10"
    );
    refusals.check(unauthorized(&get_file(&file_url, &[]), "download without a token"));

    // Client B (ES384): scopes are intersected, A's things are invisible.
    let response = token_request(
        &base,
        &assertion(&ec, Algorithm::ES384, "b1", &claims("app-b", &aud)),
        "system/Patient.rs system/Group.cud system/Observation.rs",
    );
    assert_eq!(response.status, 200, "{}", String::from_utf8_lossy(&response.body));
    assert_eq!(
        response.json()["scope"],
        "system/Group.cud system/Patient.rs",
        "Observation dropped"
    );
    let token_b = response.json()["access_token"].as_str().expect("token").to_string();
    let bearer_b = format!("Bearer {token_b}");
    assert_eq!(
        get(&format!("{base}/Group/{group_a}"), Some(&token_b)).status,
        403,
        "no Group.r in B's token"
    );
    let token_b_read = token(
        &base,
        &assertion(&ec, Algorithm::ES384, "b1", &claims("app-b", &aud)),
        "system/Patient.rs system/Group.rs",
    );
    assert_eq!(
        get(&format!("{base}/Group/{group_a}"), Some(&token_b_read)).status,
        404,
        "A's Group"
    );
    let search = get(&format!("{base}/Group"), Some(&token_b_read));
    assert_eq!(search.status, 200);
    assert_eq!(search.json()["total"], 0, "B's search does not list A's Group");
    assert_eq!(get(&status_url, Some(&token_b_read)).status, 404, "A's status URL");
    assert_eq!(
        get_file(&file_url, &[("Authorization", &bearer_b)]).status,
        404,
        "A's file"
    );
    let export_b = |types: &str| {
        http(
            "GET",
            &format!("{base}/$export?_type={types}"),
            &[
                ("Accept", "application/fhir+json"),
                ("Prefer", "respond-async"),
                ("Authorization", &format!("Bearer {token_b_read}")),
            ],
            None,
        )
    };
    let forbidden = export_b("Observation");
    assert_eq!(forbidden.status, 403, "{}", String::from_utf8_lossy(&forbidden.body));
    assert_eq!(forbidden.json()["resourceType"], "OperationOutcome");
    let partial = export_b("Patient,Observation");
    assert_eq!(partial.status, 202, "only the allowed types are exported");
    let manifest = done(partial.header("content-location").expect("status"), &token_b_read).await;
    let types: Vec<&str> = manifest["output"]
        .as_array()
        .expect("output")
        .iter()
        .filter_map(|o| o["type"].as_str())
        .collect();
    assert_eq!(types, ["Patient"]);
    assert_eq!(
        manifest["error"].as_array().map(Vec::len),
        Some(1),
        "the dropped type is reported in error[]"
    );

    // Attacks on the token endpoint: (case, assertion, scope, status, error).
    let good = claims("app-a", &aud);
    let none = format!(
        "{}.{}.",
        base64url(&json!({"alg": "none", "kid": "a1", "typ": "JWT"})),
        base64url(&good)
    );
    let public_pem = std::fs::read(&rsa.public).expect("public key");
    let mut hs = Header::new(Algorithm::HS256);
    hs.kid = Some("a1".into());
    let hmac =
        jsonwebtoken::encode(&hs, &claims("app-a", &aud), &EncodingKey::from_secret(&public_pem)).expect("hs256");
    let with = |field: &str, value: Value| {
        let mut c = claims("app-a", &aud);
        c[field] = value;
        assertion(&rsa, Algorithm::RS384, "a1", &c)
    };
    let once = assertion(&rsa, Algorithm::RS384, "a1", &claims("app-a", &aud));
    token(&base, &once, "system/*.rs");
    let attacks: Vec<(&str, String, &str, u16, &str)> = vec![
        ("alg none", none, "system/*.rs", 401, "invalid_client"),
        ("HS256 with the public key", hmac, "system/*.rs", 401, "invalid_client"),
        (
            "wrong key",
            assertion(&rogue, Algorithm::RS384, "a1", &claims("app-a", &aud)),
            "system/*.rs",
            401,
            "invalid_client",
        ),
        (
            "expired assertion",
            with("exp", json!(now() - 120)),
            "system/*.rs",
            401,
            "invalid_client",
        ),
        (
            "exp an hour ahead",
            with("exp", json!(now() + 3600)),
            "system/*.rs",
            401,
            "invalid_client",
        ),
        (
            "wrong aud",
            with("aud", json!("https://elsewhere.example/token")),
            "system/*.rs",
            401,
            "invalid_client",
        ),
        (
            "sub differs from iss",
            with("sub", json!("app-b")),
            "system/*.rs",
            401,
            "invalid_client",
        ),
        ("no jti", with("jti", Value::Null), "system/*.rs", 401, "invalid_client"),
        ("replayed jti", once, "system/*.rs", 401, "invalid_client"),
        (
            "unknown client",
            assertion(&rsa, Algorithm::RS384, "a1", &claims("app-z", &aud)),
            "system/*.rs",
            401,
            "invalid_client",
        ),
        (
            "scope escalation",
            assertion(&ec, Algorithm::ES384, "b1", &claims("app-b", &aud)),
            "system/Observation.rs",
            400,
            "invalid_scope",
        ),
    ];
    for (case, assertion, scope, status, error) in &attacks {
        refusals.check(refused(&token_request(&base, assertion, scope), *status, error, case));
    }
    let grant = http(
        "POST",
        &aud,
        &[("Content-Type", "application/x-www-form-urlencoded")],
        Some("grant_type=password&username=a&password=b"),
    );
    refusals.check(refused(&grant, 400, "unsupported_grant_type", "password grant"));

    // A's async Group job is A's alone.
    let job = http(
        "POST",
        &format!("{base}/Group"),
        &[
            ("Content-Type", "application/fhir+json"),
            ("Accept", "application/fhir+json"),
            ("Prefer", "respond-async"),
            ("Authorization", &bearer_a),
        ],
        Some(&group.to_string()),
    );
    assert_eq!(job.status, 202);
    let job_url = job.header("content-location").expect("job URL").to_string();
    refusals.status("A's job, polled by B", &get(&job_url, Some(&token_b_read)), 404);
    let deleted = http("DELETE", &job_url, &[("Authorization", &bearer_b)], None);
    refusals.status("A's job, cancelled by B", &deleted, 404);

    // A client publishing its keys at a jwks_url.
    let ec_c = make_key(dir.path(), "c", false);
    let jwk = fhirlake::auth::keys::public_jwk(&std::fs::read_to_string(&ec_c.public).expect("key"), Some("c1"))
        .expect("jwk");
    let jwks_url = serve_once_json(json!({"keys": [jwk]}));
    let out = fhirlake(&[
        "clients",
        "add",
        "--file",
        clients.to_str().expect("path"),
        "--client-id",
        "app-c",
        "--jwks-url",
        &jwks_url,
        "--scopes",
        "system/Patient.rs",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The server reloads the clients file within a second or so of a
    // change; a busy machine may take longer.
    let token_c = eventually("app-c is registered", || {
        let response = token_request(
            &base,
            &assertion(&ec_c, Algorithm::ES384, "c1", &claims("app-c", &aud)),
            "system/Patient.rs",
        );
        (response.status == 200).then(|| response.json()["access_token"].as_str().expect("token").to_string())
    })
    .await;
    refusals.status("no Group scope", &get(&format!("{base}/Group"), Some(&token_c)), 403);
    // Finding members follows the scopes: C may read and search Patients,
    // not Coverage; nobody without a token.
    let patients = get(&format!("{base}/Patient?_count=2"), Some(&token_c));
    assert_eq!(patients.status, 200, "{}", String::from_utf8_lossy(&patients.body));
    let first = patients.json()["entry"][0]["resource"]["id"]
        .as_str()
        .expect("a Patient")
        .to_string();
    assert_eq!(get(&format!("{base}/Patient/{first}"), Some(&token_c)).status, 200);
    refusals.status(
        "no Coverage scope",
        &get(&format!("{base}/Coverage"), Some(&token_c)),
        403,
    );
    refusals.status(
        "no Coverage scope (read)",
        &get(&format!("{base}/Coverage/c1"), Some(&token_c)),
        403,
    );
    refusals.check(unauthorized(
        &get(&format!("{base}/Patient"), None),
        "Patient search without a token",
    ));

    // The clients file reloads without a restart: B is granted A's Group.
    add_client(
        &clients,
        "app-b",
        &ec,
        "b1",
        "system/Patient.read system/Group.write system/Group.read",
        &[&group_a],
    );
    eventually("B is granted A's Group", || {
        (get(&format!("{base}/Group/{group_a}"), Some(&token_b_read)).status == 200).then_some(())
    })
    .await;
    let (_, manifest) = export_ok_with(&base, &group_a, &token_b_read).await;
    assert!(manifest["output"].as_array().is_some_and(|o| !o.is_empty()));
    // Granted is read-only: B may not change or delete A's Group.
    let token_b_write = token(
        &base,
        &assertion(&ec, Algorithm::ES384, "b1", &claims("app-b", &aud)),
        "system/Patient.rs system/Group.cruds",
    );
    let bearer_bw = format!("Bearer {token_b_write}");
    let mut changed = group.clone();
    changed["id"] = json!(group_a);
    let put = http(
        "PUT",
        &format!("{base}/Group/{group_a}"),
        &[("Content-Type", "application/fhir+json"), ("Authorization", &bearer_bw)],
        Some(&changed.to_string()),
    );
    refusals.status("B changes A's granted Group", &put, 403);
    let delete = http(
        "DELETE",
        &format!("{base}/Group/{group_a}"),
        &[("Authorization", &bearer_bw)],
        None,
    );
    refusals.status("B deletes A's granted Group", &delete, 403);
    assert_eq!(
        get(&format!("{base}/Group/{group_a}"), Some(&token_a)).status,
        200,
        "A's Group intact"
    );

    // A search reads every type it touches: B (Patient only) may not filter
    // on Conditions, directly, through _has, or in a _typeFilter; nobody
    // searches Groups.
    let cohort = |expression: &str, bearer: &str| {
        let mut body = group.clone();
        body["modifierExtension"][0]["valueExpression"]["expression"] = json!(expression);
        http(
            "POST",
            &format!("{base}/Group"),
            &[("Content-Type", "application/fhir+json"), ("Authorization", bearer)],
            Some(&body.to_string()),
        )
    };
    for expression in [
        "Condition?code=http://snomed.info/sct|15777000",
        "Patient?_has:Condition:patient:code=15777000",
    ] {
        refusals.status(expression, &cohort(expression, &bearer_bw), 403);
    }
    assert_eq!(cohort("Patient?gender=male", &bearer_bw).status, 201);
    let response = cohort(&format!("Patient?_has:Group:member:_id={group_a}"), &bearer_a);
    refusals.status("a search of Groups", &response, 403);
    let filtered = http(
        "GET",
        &format!("{base}/$export?_type=Patient&_typeFilter=Patient%3F_has%3ACondition%3Apatient%3Acode%3D15777000"),
        &[
            ("Accept", "application/fhir+json"),
            ("Prefer", "respond-async"),
            ("Authorization", &bearer_bw),
        ],
        None,
    );
    refusals.status("a _typeFilter reading Conditions", &filtered, 403);
    server.stop();

    // Expired access tokens: good for 5 s (room for a busy machine between
    // issue and first use), refused after 6.
    let server = Server::start(
        &warehouse,
        &[
            "--clients",
            clients.to_str().expect("path"),
            "--access-token-seconds",
            "5",
        ],
    );
    let aud = format!("{}/auth/token", server.base);
    let issued = std::time::Instant::now();
    let short = token(
        &server.base,
        &assertion(&rsa, Algorithm::RS384, "a1", &claims("app-a", &aud)),
        "system/*.rs",
    );
    assert_eq!(get(&format!("{}/Group", server.base), Some(&short)).status, 200);
    tokio::time::sleep(Duration::from_secs(6).saturating_sub(issued.elapsed())).await;
    let late = get(&format!("{}/Group", server.base), Some(&short));
    refusals.check(unauthorized(&late, "expired access token"));
    assert!(
        late.header("www-authenticate")
            .is_some_and(|h| h.contains("invalid_token"))
    );
    server.stop();
    refusals.assert_none();
}

/// Retries `attempt` every 200 ms until it gives a value, for at most 20 s
/// (changes the server picks up in the background, such as a rewritten
/// clients file).
async fn eventually<T>(what: &str, mut attempt: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(value) = attempt() {
            return value;
        }
        assert!(std::time::Instant::now() < deadline, "{what}: not within 20 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Serves `body` as JSON to every request on a loopback port (a client's
/// JWKS endpoint); returns its URL.
fn serve_once_json(body: Value) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/jwks.json", listener.local_addr().expect("addr"));
    let text = body.to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buffer = [0u8; 4096];
            let _ = stream.read(&mut buffer);
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                text.len()
            );
            let _ = stream.write_all(response.as_bytes());
        }
    });
    url
}

/// A Group export by the holder of `token`, polled to completion.
async fn export_ok_with(base: &str, group: &str, token: &str) -> (String, Value) {
    let bearer = format!("Bearer {token}");
    let kickoff = http(
        "GET",
        &format!("{base}/Group/{group}/$export?_type=Patient"),
        &[
            ("Accept", "application/fhir+json"),
            ("Prefer", "respond-async"),
            ("Authorization", &bearer),
        ],
        None,
    );
    assert_eq!(kickoff.status, 202, "{}", String::from_utf8_lossy(&kickoff.body));
    let status = kickoff.header("content-location").expect("status").to_string();
    let manifest = done(&status, token).await;
    (status, manifest)
}

/// Polls an export's status URL with `token` until it completes (200)
/// within two minutes; anything else fails with the response.
async fn done(status_url: &str, token: &str) -> Value {
    let bearer = format!("Bearer {token}");
    let polled = poll_status(status_url, &[("Authorization", &bearer)], Duration::from_secs(120)).await;
    assert_eq!(
        polled.status,
        200,
        "{status_url}: {}",
        String::from_utf8_lossy(&polled.body)
    );
    polled.json()
}

#[test]
fn open_serving_is_refused_off_loopback_unless_asked_for() {
    let dir = tempfile::tempdir().expect("tempdir");
    let warehouse = dir.path().join("wh");
    let out = Command::new(env!("CARGO_BIN_EXE_fhirlake"))
        .args([
            "--warehouse",
            warehouse.to_str().expect("path"),
            "serve",
            "--addr",
            "0.0.0.0:0",
        ])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("--clients") && text.contains("--no-auth"), "{text}");
    let server = Server::start(&warehouse, &["--addr", "0.0.0.0:0", "--no-auth"]);
    let port = server.base.rsplit(':').next().expect("port").to_string();
    let open = get(&format!("http://127.0.0.1:{port}/Group"), None);
    assert_eq!(open.status, 200, "--no-auth serves without tokens");
    server.stop();

    // `clients add` refuses unusable keys before writing anything.
    let bad = dir.path().join("bad.pem");
    std::fs::write(&bad, "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").expect("write");
    let file = dir.path().join("clients.json");
    let out = fhirlake(&[
        "clients",
        "add",
        "--file",
        file.to_str().expect("path"),
        "--client-id",
        "x",
        "--public-key",
        bad.to_str().expect("path"),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("private key"));
    assert!(!file.exists());
}
