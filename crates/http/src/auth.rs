//! Authorization over HTTP: SMART discovery, the token endpoint, and the
//! bearer-token check in front of every FHIR route, which hands handlers a
//! [`Caller`] to check scopes and ownership against.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::SharedState;
use super::outcome::{FhirError, fhir_json, operation_outcome};
use fhirlake_auth::{AccessGrant, Permission, TokenRejection};

/// Who is calling: anyone (authorization off) or an authenticated client.
#[derive(Debug, Clone)]
pub enum Caller {
    /// The server runs without authorization.
    Open,
    /// A client with a valid access token.
    Client(Arc<ClientCaller>),
}

/// An authenticated client and what it may do.
#[derive(Debug)]
pub struct ClientCaller {
    /// Its token's grant.
    pub grant: AccessGrant,
    /// Groups granted to it in the clients file (read when the request came).
    pub granted_groups: Vec<String>,
}

impl Caller {
    /// The client id (`None` when authorization is off).
    pub fn client_id(&self) -> Option<&str> {
        match self {
            Caller::Open => None,
            Caller::Client(c) => Some(&c.grant.client_id),
        }
    }

    /// 403 unless the scopes allow `permission` on `resource_type`.
    pub fn require(&self, resource_type: &str, permission: Permission) -> Result<(), FhirError> {
        match self {
            Caller::Open => Ok(()),
            Caller::Client(c) if c.grant.scopes.allows(resource_type, permission) => Ok(()),
            Caller::Client(c) => Err(FhirError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "the access token's scopes ({}) do not allow {permission:?} on {resource_type}",
                    c.grant.scopes
                ),
            )),
        }
    }

    /// 403 unless the caller may read every type `queries` read (member
    /// filters, `_typeFilter`): a search over a type is a way of reading it.
    /// Searches touching Groups are refused for clients, as `Group?_id=X` or
    /// `_has:Group:member:…` would reveal the members of any Group; clients
    /// name Groups they may see as `member` entries instead.
    pub fn require_search(&self, queries: &[fhirlake_engine::search::SearchQuery]) -> Result<(), FhirError> {
        if matches!(self, Caller::Open) {
            return Ok(());
        }
        for query in queries {
            for resource_type in query.types_read() {
                if resource_type == "Group" {
                    return Err(FhirError::new(
                        StatusCode::FORBIDDEN,
                        "forbidden",
                        "searches over Group resources are not allowed with an access token; \
                         name a Group you may see as a member entry (base population) instead",
                    ));
                }
                self.require(resource_type, Permission::Read)?;
            }
        }
        Ok(())
    }

    /// The resource types this caller may read, `None` for every type.
    pub fn readable_types(&self) -> Option<Vec<String>> {
        match self {
            Caller::Open => None,
            Caller::Client(c) if c.grant.scopes.allows_all_types(Permission::Read) => None,
            Caller::Client(c) => Some(c.grant.scopes.named_types(Permission::Read)),
        }
    }

    /// Whether this caller may see Group `id` owned by `owner` (`None`: a
    /// Group of the loaded data, or one made before authorization was on):
    /// its own cohort Groups and those granted to it.
    pub fn sees_group(&self, id: &str, owner: Option<&str>) -> bool {
        match self {
            Caller::Open => true,
            Caller::Client(c) => owner == Some(c.grant.client_id.as_str()) || c.granted_groups.iter().any(|g| g == id),
        }
    }

    /// Whether this caller made the thing (cohort Group, export, async job)
    /// whose owner is `owner`: only its maker may change or cancel it.
    pub fn owns(&self, owner: Option<&str>) -> bool {
        match self {
            Caller::Open => true,
            Caller::Client(c) => owner == Some(c.grant.client_id.as_str()),
        }
    }
}

/// `GET /.well-known/smart-configuration`.
pub async fn smart_configuration(State(state): State<SharedState>) -> Response {
    let body = json!({
        "issuer": state.base_url,
        "token_endpoint": format!("{}/auth/token", state.base_url),
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
        "scopes_supported": ["system/*.rs", "system/*.read", "system/Group.cud", "system/Group.write", "system/Patient.rs"],
        "capabilities": ["client-confidential-asymmetric", "permission-v1", "permission-v2"],
        "authorization_required": state.auth.is_some(),
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        body.to_string(),
    )
        .into_response()
}

/// `POST /auth/token`: the SMART Backend Services token endpoint.
pub async fn token(State(state): State<SharedState>, headers: HeaderMap, body: Bytes) -> Response {
    let oauth_error = |status: StatusCode, code: &str, description: &str| {
        let mut response = (
            status,
            [
                (header::CONTENT_TYPE, HeaderValue::from_static("application/json")),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            ],
            json!({"error": code, "error_description": description}).to_string(),
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"fhirlake\""),
            );
        }
        response
    };
    let Some(issuer) = &state.auth else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "authorization is off on this server (start it with --clients FILE)",
        );
    };
    let form_encoded = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/x-www-form-urlencoded"));
    if !form_encoded {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the token request must be application/x-www-form-urlencoded",
        );
    }
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    match issuer.issue(&form).await {
        Ok(issued) => {
            tracing::info!(target: "fhirlake::audit", event = "token_issued", client_id = %issued.client_id, scope = %issued.scope);
            (
                StatusCode::OK,
                [
                    (header::CONTENT_TYPE, HeaderValue::from_static("application/json")),
                    (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
                    (header::PRAGMA, HeaderValue::from_static("no-cache")),
                ],
                json!({
                    "access_token": issued.access_token,
                    "token_type": "bearer",
                    "expires_in": issued.expires_in,
                    "scope": issued.scope,
                })
                .to_string(),
            )
                .into_response()
        }
        Err(e) => {
            // `{:?}`: the description may quote what the client sent.
            tracing::info!(target: "fhirlake::audit", event = "token_refused", error = e.code, reason = ?e.description);
            let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST);
            oauth_error(status, e.code, &e.description)
        }
    }
}

/// A 401 with `WWW-Authenticate` and an OperationOutcome.
fn unauthorized(error: &str, text: &str) -> Response {
    let mut response = fhir_json(StatusCode::UNAUTHORIZED, &operation_outcome("error", "login", text));
    let challenge = format!("Bearer realm=\"fhirlake\", error=\"{error}\", error_description=\"{text}\"");
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

/// Middleware: with authorization on, every request needs a valid bearer
/// token; handlers get the [`Caller`] as an extension.
pub async fn authorize(State(state): State<SharedState>, mut request: Request, next: Next) -> Response {
    let Some(issuer) = &state.auth else {
        request.extensions_mut().insert(Caller::Open);
        return next.run(request).await;
    };
    let header_value = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let Some(value) = header_value else {
        return unauthorized(
            "invalid_request",
            "an access token is required (Authorization: Bearer …)",
        );
    };
    let token = match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() => token.trim(),
        _ => return unauthorized("invalid_request", "the Authorization header must be 'Bearer <token>'"),
    };
    let grant = match issuer.check(token) {
        Ok(grant) => grant,
        Err(TokenRejection::Expired) => return unauthorized("invalid_token", "the access token has expired"),
        Err(TokenRejection::Unknown) => return unauthorized("invalid_token", "the access token is not valid"),
    };
    // The clients file applies as it is now (it reloads): a removed client's
    // tokens stop working, granted Groups change with it.
    let Some(client) = issuer.client(&grant.client_id) else {
        return unauthorized("invalid_token", "the token's client is no longer registered");
    };
    let granted_groups = client.config.groups.clone();
    // Scopes narrowed in the file since the token was issued apply now.
    let mut grant = grant;
    grant.scopes = grant.scopes.intersect(&client.allowed);
    request
        .extensions_mut()
        .insert(Caller::Client(Arc::new(ClientCaller { grant, granted_groups })));
    next.run(request).await
}

/// What `FhirError` a caller gets for a resource it may not see: 404, so
/// the existence of other clients' Groups and jobs does not leak.
pub fn hidden(what: &str) -> FhirError {
    FhirError::not_found(format!("{what} does not exist"))
}
