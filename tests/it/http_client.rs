//! Test helpers for the server: the real `fhirlake serve` binary on an
//! ephemeral loopback port, and an HTTP client (reqwest) for it.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

/// A running `fhirlake serve`.
pub struct Server {
    child: Child,
    /// Base URL (`http://127.0.0.1:PORT`).
    pub base: String,
    /// The Postgres front's address (`127.0.0.1:PORT`), when `--pg-addr` was given.
    pub pg: Option<String>,
}

impl Server {
    /// Starts the server over `warehouse` with `extra` arguments.
    pub fn start(warehouse: &Path, extra: &[&str]) -> Server {
        Self::start_with(warehouse.to_str().expect("path"), extra, &[])
    }

    /// Starts the server over the warehouse at `warehouse` (a path or URL)
    /// with `extra` arguments and environment variables `envs`.
    pub fn start_with(warehouse: &str, extra: &[&str], envs: &[(String, String)]) -> Server {
        Self::start_logged(warehouse, extra, envs, Stdio::null())
    }

    /// [`Server::start_with`], its log (stderr) going to `log`.
    pub fn start_logged(warehouse: &str, extra: &[&str], envs: &[(String, String)], log: Stdio) -> Server {
        let mut command = Command::new(env!("CARGO_BIN_EXE_fhirlake"));
        crate::common::isolate_aws(&mut command);
        command.args(["--warehouse", warehouse, "serve"]);
        if !extra.contains(&"--addr") {
            command.args(["--addr", "127.0.0.1:0"]);
        }
        let mut child = command
            .args(extra)
            .envs(envs.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start fhirlake serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut reader = BufReader::new(stdout);
        let mut pg = None;
        // The Postgres front (if any) announces itself first.
        let base = loop {
            let mut line = String::new();
            reader.read_line(&mut line).expect("server announces its address");
            let line = line.trim();
            if let Some(addr) = line.strip_prefix("fhirlake postgres listening on ") {
                pg = Some(addr.to_string());
                continue;
            }
            break line
                .strip_prefix("fhirlake listening on ")
                .unwrap_or_else(|| panic!("unexpected first line: {line}"))
                .to_string();
        };
        Server { child, base, pg }
    }

    /// SIGTERM, then wait: the graceful path.
    pub fn stop(mut self) {
        // SAFETY: signalling our own child process.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "graceful shutdown exits 0, got {status:?}");
    }

    /// SIGKILL: a crash.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP response as the client read it off the socket.
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// Body (chunked encoding removed).
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (`Null` when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// One request through reqwest, on a thread and runtime of its own (most
/// server tests are plain functions, and the async ones must not block
/// their runtime on a nested one). It follows no redirects, uses no proxy
/// and decompresses nothing: tests check all three. A transport error (the
/// server closed early, the 60 s deadline) panics with the request named.
pub fn http(method: &str, url: &str, headers: &[(&str, &str)], body: Option<&str>) -> HttpResponse {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("HTTP method");
    let headers: Vec<(String, String)> = headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let body = body.map(str::to_string);
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                runtime.block_on(send(method.clone(), url, &headers, body))
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

async fn send(method: reqwest::Method, url: &str, headers: &[(String, String)], body: Option<String>) -> HttpResponse {
    let client = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .build()
        .expect("HTTP client");
    let mut request = client.request(method.clone(), url);
    for (name, value) in headers {
        request = request.header(name, value);
    }
    if let Some(body) = body {
        request = request.body(body);
    }
    let response = request.send().await.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = response
        .bytes()
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: reading the body: {e}"))
        .to_vec();
    HttpResponse { status, headers, body }
}

/// Polls a status URL while it answers 202, until `limit` has passed; the
/// first other answer is returned. Past the deadline the test fails with
/// the last response it saw.
pub async fn poll_status(url: &str, headers: &[(&str, &str)], limit: Duration) -> HttpResponse {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let response = http("GET", url, headers, None);
        if response.status != 202 {
            return response;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{url} still answers 202 after {limit:?}; last response: {:?} {}",
            response.headers,
            String::from_utf8_lossy(&response.body)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
