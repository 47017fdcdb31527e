//! The FHIR REST front (`fhirlake serve`): axum over the warehouse, with the
//! Bulk Cohort API (async Group creation) and the Group interactions.
//!
//! Conventions: every response is FHIR JSON (`application/fhir+json`, or
//! `application/json` when asked for), every error an OperationOutcome with
//! a fitting status; each request gets an id (`X-Request-Id`, and in logs).

pub mod auth;
pub mod capability;
pub mod export;
pub mod groups;
pub mod members;
pub mod membership;
pub mod outcome;
pub mod prefer;
pub mod resources;
pub mod views;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tower_http::compression::{CompressionLayer, CompressionLevel};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};

pub use self::export::DownloadMode;
use self::outcome::FhirError;
use fhirlake_engine::service::{Service, ServiceOptions};
use fhirlake_engine::warehouse::Warehouse;

/// Errors of starting or running the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The address cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Serving failed.
    #[error("server failed: {0}")]
    Serve(#[source] std::io::Error),
    /// Reading the server state failed.
    #[error(transparent)]
    Store(#[from] fhirlake_engine::store::StoreError),
    /// Authorization cannot be set up (the clients file, the HTTP client
    /// for `jwks_url` keys).
    #[error(transparent)]
    Auth(#[from] fhirlake_auth::AuthError),
    /// Authorization is on, off loopback, and no base URL says where
    /// clients reach the server.
    #[error(
        "give --base-url (the URL clients reach this server at): it is the token endpoint's audience, and http://{addr} is not an address clients can use"
    )]
    NeedsBaseUrl {
        /// The address listened on.
        addr: SocketAddr,
    },
    /// A non-loopback address without authorization and without `--no-auth`.
    #[error(
        "refusing to serve on {addr} without authorization: give --clients FILE (SMART Backend Services), or --no-auth to serve this non-loopback address openly"
    )]
    OpenOffLoopback {
        /// The address listened on.
        addr: SocketAddr,
    },
    /// Presigned downloads need an export store that can sign URLs.
    #[error("presigned downloads need an S3 export store (--export-store s3://…); {store} cannot sign URLs")]
    PresignedNeedsS3 {
        /// The export store's URL.
        store: String,
    },
}

/// How to serve.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Address to listen on.
    pub addr: SocketAddr,
    /// Absolute base URL clients reach the server at (default
    /// `http://<addr>`); polling URLs and `Location`s are built from it.
    pub base_url: Option<String>,
    /// How the engine runs jobs (refresh, polling interval, export limits
    /// and store).
    pub service: ServiceOptions,
    /// How clients download export files.
    pub export_downloads: export::DownloadMode,
    /// The clients file: authorization (SMART Backend Services) is on.
    pub clients: Option<std::path::PathBuf>,
    /// Serve without authorization on a non-loopback address.
    pub no_auth: bool,
    /// Lifetime of access tokens (at most five minutes).
    pub access_token_lifetime: Duration,
    /// Groups are published, not managed: clients may not create, change
    /// or delete them (deployments that serve rosters only).
    pub read_only_groups: bool,
}

/// What every handler shares: the engine's service, and how this front
/// addresses and authorizes clients.
pub struct AppState {
    /// The engine (warehouse, Groups, jobs).
    pub service: Arc<Service>,
    /// Absolute base URL, no trailing slash.
    pub base_url: String,
    /// How clients download export files.
    pub downloads: DownloadMode,
    /// Token issuing and checking; `None` when authorization is off.
    pub auth: Option<Arc<fhirlake_auth::TokenIssuer>>,
    /// Clients may not create, change or delete Groups.
    pub read_only_groups: bool,
}

impl AppState {
    /// Advised seconds between polls (`Retry-After`).
    pub fn retry_after(&self) -> u64 {
        self.service.options.retry_after
    }
}

/// Shared state handle.
pub type SharedState = Arc<AppState>;

/// Largest request body accepted (a Group with its members, a member
/// operation, an export kick-off): 64 MiB, some 600,000 members.
pub const GROUP_BODY_LIMIT: usize = 64 * 1024 * 1024;

/// Builds the router over `state`.
pub fn router(state: SharedState) -> Router {
    // Export files are not FHIR JSON: they skip content negotiation. They
    // are gzipped for clients that accept it (fast level: the network, not
    // the ratio, is what a download waits for); byte ranges never are.
    let compression = CompressionLayer::new().gzip(true).quality(CompressionLevel::Fastest);
    let files = Router::new()
        .route("/_export/{id}/files/{name}", get(export::download))
        .layer(compression);
    let fhir = Router::new()
        .route("/$export", get(export::kickoff_system).post(export::kickoff_system))
        .route("/$viewdefinition-run", axum::routing::post(views::run))
        .route("/ViewDefinition/$viewdefinition-run", axum::routing::post(views::run))
        .route(
            "/Patient/$export",
            get(export::kickoff_system).post(export::kickoff_system),
        )
        .route(
            "/Group/{id}/$export",
            get(export::kickoff_group).post(export::kickoff_group),
        )
        .route("/_export/{id}", get(export::status).delete(export::cancel))
        .route("/Group", get(groups::search).post(groups::create))
        .route(
            "/Group/{id}",
            get(groups::read)
                .put(groups::update)
                .patch(groups::patch)
                .delete(groups::delete),
        )
        .route("/Group/{id}/_history", get(groups::history))
        .route("/Group/{id}/_history/{version}", get(groups::vread))
        .route("/Group/{id}/$members", get(membership::members))
        .route("/Group/{id}/$member-add", axum::routing::post(members::member_add))
        .route(
            "/Group/{id}/$member-remove",
            axum::routing::post(members::member_remove),
        )
        .route("/_jobs/{id}", get(groups::poll).delete(groups::cancel))
        .route("/Patient", get(resources::search_patients))
        .route("/Patient/{id}", get(resources::read_patient))
        .route("/Patient/$match", axum::routing::post(resources::match_patients))
        .route("/Coverage", get(resources::search_coverage))
        .route("/Coverage/{id}", get(resources::read_coverage))
        // A Group of 100,000 members, or a member operation naming them,
        // is ~10 MB of JSON; axum's default limit is 2 MB.
        .layer(axum::extract::DefaultBodyLimit::max(GROUP_BODY_LIMIT))
        .layer(axum::middleware::from_fn(negotiate));
    // Every FHIR route and download needs a token when authorization is on;
    // discovery, the token endpoint and the CapabilityStatement do not.
    let protected = fhir
        .merge(files)
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth::authorize));
    let public = Router::new()
        .route("/metadata", get(capability::metadata))
        .route(
            "/OperationDefinition/group-members",
            get(capability::members_definition),
        )
        .layer(axum::middleware::from_fn(negotiate))
        .route("/.well-known/smart-configuration", get(auth::smart_configuration))
        .route("/auth/token", axum::routing::post(auth::token));
    public
        .merge(protected)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // Outermost last: every request gets an id (a client's own
        // `x-request-id` is kept), its log span carries it, and the
        // response returns it.
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_request(())
                .on_response(DefaultOnResponse::new().level(tracing::Level::INFO))
                .on_failure(()),
        )
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .with_state(state)
}

async fn not_found(request: Request) -> FhirError {
    FhirError::new(
        StatusCode::NOT_FOUND,
        "not-supported",
        format!("no such endpoint: {} {}", request.method(), request.uri().path()),
    )
}

async fn method_not_allowed(request: Request) -> FhirError {
    FhirError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "not-supported",
        format!("{} is not supported on {}", request.method(), request.uri().path()),
    )
}

/// The log span of a request: its id, method and path.
fn request_span(request: &Request) -> tracing::Span {
    let id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    tracing::info_span!("request", id = %id, method = %request.method(), path = %request.uri().path())
}

/// Honours `_format` and `Accept`: JSON forms are served (as
/// `application/json` when that is what was asked for); XML and other
/// formats get 406 (except on `$viewdefinition-run`, whose `_format`
/// chooses the rows' format).
async fn negotiate(request: Request, next: Next) -> Response {
    // `$viewdefinition-run` answers in the `_format` it is asked for
    // (json, ndjson, csv, parquet) and checks it itself.
    if request.uri().path().ends_with("/$viewdefinition-run") {
        return next.run(request).await;
    }
    let format = request.uri().query().and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "_format")
            .map(|(_, v)| v.to_string())
    });
    let accept = request
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let wanted = format.or(accept);
    let plain_json = match wanted.as_deref() {
        None => false,
        Some(w) => {
            let kinds: Vec<&str> = w.split(',').map(|k| k.split(';').next().unwrap_or("").trim()).collect();
            let fhir = kinds.iter().any(|k| {
                matches!(
                    *k,
                    "application/fhir+json" | "json" | "*/*" | "application/*" | "" | "application/json+fhir"
                )
            });
            let json = kinds.contains(&"application/json");
            if !fhir && !json {
                return FhirError::new(
                    StatusCode::NOT_ACCEPTABLE,
                    "not-supported",
                    format!("fhirlake serves JSON only (application/fhir+json, application/json); asked for '{w}'"),
                )
                .into_response();
            }
            json && !fhir
        }
    };
    let mut response = next.run(request).await;
    // Errors raised by axum itself (body too large, bad path) come as plain
    // text: answer them as OperationOutcomes too.
    let status = response.status();
    if (status.is_client_error() || status.is_server_error())
        && !response
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/fhir+json"))
    {
        let text = match axum::body::to_bytes(std::mem::take(response.body_mut()), 64 * 1024).await {
            Ok(bytes) if !bytes.is_empty() => String::from_utf8_lossy(&bytes).to_string(),
            _ => status.canonical_reason().unwrap_or("error").to_string(),
        };
        let code = if status.is_server_error() {
            "exception"
        } else {
            "invalid"
        };
        response = FhirError::new(status, code, text).into_response();
    }
    if plain_json
        && response
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/fhir+json"))
    {
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    response
}

/// Serves until SIGINT/SIGTERM. Jobs that were running when an earlier
/// process stopped are resumed first.
pub async fn serve(warehouse: Warehouse, options: ServeOptions) -> Result<(), ServerError> {
    HttpFront::bind(warehouse, options).await?.run().await
}

/// The FHIR front, bound, with its jobs resumed, not yet serving: what
/// other fronts of the same process (the Postgres front) share with it.
pub struct HttpFront {
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
}

impl HttpFront {
    /// The token issuer (`None`: authorization is off).
    pub fn token_issuer(&self) -> Option<Arc<fhirlake_auth::TokenIssuer>> {
        self.state.auth.clone()
    }

    /// Serves until SIGINT/SIGTERM.
    pub async fn run(self) -> Result<(), ServerError> {
        let base_url = self.state.base_url.clone();
        tracing::info!(%base_url, "fhirlake serving");
        // A line on stdout for whoever started us (scripts wait for it).
        println!("fhirlake listening on {base_url}");
        axum::serve(self.listener, router(self.state))
            .with_graceful_shutdown(shutdown_signal())
            .await
            .map_err(ServerError::Serve)
    }

    /// Binds `options.addr`, sets up authorization and resumes the jobs of
    /// an earlier process.
    pub async fn bind(warehouse: Warehouse, options: ServeOptions) -> Result<Self, ServerError> {
        bind_front(warehouse, options).await
    }
}

async fn bind_front(warehouse: Warehouse, options: ServeOptions) -> Result<HttpFront, ServerError> {
    let listener = tokio::net::TcpListener::bind(options.addr)
        .await
        .map_err(|source| ServerError::Bind {
            addr: options.addr,
            source,
        })?;
    let local = listener.local_addr().map_err(ServerError::Serve)?;
    let base_url = options
        .base_url
        .clone()
        .unwrap_or_else(|| format!("http://{local}"))
        .trim_end_matches('/')
        .to_string();
    let auth = match &options.clients {
        Some(path) => {
            let registry = fhirlake_auth::ClientRegistry::load(path)?;
            tracing::info!(clients = %path.display(), "authorization on: SMART Backend Services (private_key_jwt)");
            if options.base_url.is_none() && !local.ip().is_loopback() {
                return Err(ServerError::NeedsBaseUrl { addr: local });
            }
            Some(Arc::new(fhirlake_auth::TokenIssuer::new(
                registry,
                format!("{base_url}/auth/token"),
                options.access_token_lifetime,
            )?))
        }
        None if local.ip().is_loopback() => {
            tracing::warn!(
                "authorization is off: serving loopback clients only, without tokens (use --clients FILE to require them)"
            );
            None
        }
        None if options.no_auth => {
            tracing::warn!(addr = %local, "AUTHORIZATION IS OFF (--no-auth) ON A NON-LOOPBACK ADDRESS: anyone who can reach it reads every patient's data");
            eprintln!(
                "WARNING: --no-auth: {local} serves every patient's data to anyone who can reach it, without authorization"
            );
            None
        }
        None => {
            return Err(ServerError::OpenOffLoopback { addr: local });
        }
    };
    let service = Service::new(warehouse, options.service.clone())?;
    if matches!(options.export_downloads, DownloadMode::Presigned { .. }) && service.export_files.signer.is_none() {
        return Err(ServerError::PresignedNeedsS3 {
            store: service.export_files.url(),
        });
    }
    service.start().await?;
    let state = Arc::new(AppState {
        service,
        base_url,
        downloads: options.export_downloads,
        auth,
        read_only_groups: options.read_only_groups,
    });
    Ok(HttpFront { listener, state })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down");
}

/// Parses a duration as humantime reads it (`30s`, `15m`, `1h 30m`, `2d`),
/// or a bare number of seconds; `off` is `None`.
pub fn parse_interval(text: &str) -> Result<Option<Duration>, String> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let duration = if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        text.parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|_| format!("interval '{text}' is too long"))?
    } else {
        humantime::parse_duration(text)
            .map_err(|e| format!("invalid interval '{text}' (e.g. 30s, 15m, 1h, off): {e}"))?
    };
    if duration.is_zero() {
        return Err("the interval must be positive (or 'off')".into());
    }
    Ok(Some(duration))
}

/// `State` extractor alias for handlers.
pub type AppStateExtractor = State<SharedState>;
