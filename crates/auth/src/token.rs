//! The token endpoint's logic: SMART Backend Services `client_credentials`
//! with a `private_key_jwt` assertion (RS384 or ES384), short-lived opaque
//! access tokens held in memory.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;

use super::clients::{Client, ClientRegistry};
use super::scopes::ScopeSet;

/// Longest lifetime of an access token (SMART recommends five minutes).
pub const MAX_ACCESS_TOKEN_LIFETIME: Duration = Duration::from_secs(300);
/// How far ahead an assertion's `exp` may be (SMART: at most five minutes).
const MAX_ASSERTION_LIFETIME_SECONDS: i64 = 300;
/// Clock skew tolerated on `exp`.
const LEEWAY_SECONDS: u64 = 30;
/// How long keys fetched from a `jwks_url` are reused.
const JWKS_CACHE: Duration = Duration::from_secs(300);
/// A `kid` missing from the cached keys triggers a new fetch, at most this often.
const JWKS_REFETCH: Duration = Duration::from_secs(10);
/// Largest JWKS document accepted.
const JWKS_MAX_BYTES: usize = 64 * 1024;
/// The assertion type SMART requires.
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// An OAuth 2.0 token error (RFC 6749 §5.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthError {
    /// `invalid_request`, `invalid_client`, `invalid_scope`,
    /// `unsupported_grant_type`, or `server_error`.
    pub code: &'static str,
    /// What exactly was wrong (`error_description`).
    pub description: String,
}

impl OAuthError {
    fn new(code: &'static str, description: impl Into<String>) -> Self {
        Self {
            code,
            description: description.into(),
        }
    }

    /// The HTTP status: 401 for client authentication failures, 500 for
    /// the server's own, else 400.
    pub fn status(&self) -> u16 {
        match self.code {
            "invalid_client" => 401,
            "server_error" => 500,
            _ => 400,
        }
    }
}

/// An issued access token's facts.
#[derive(Debug, Clone)]
pub struct AccessGrant {
    /// The client it was issued to.
    pub client_id: String,
    /// The scopes granted.
    pub scopes: ScopeSet,
    /// When it stops being accepted.
    pub expires: Instant,
}

/// What the token endpoint answers.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    /// The client it was issued to.
    pub client_id: String,
    /// The bearer token.
    pub access_token: String,
    /// Seconds it lives.
    pub expires_in: u64,
    /// The granted scopes.
    pub scope: String,
}

/// Why a bearer token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRejection {
    /// Unknown (never issued, or issued before a restart).
    Unknown,
    /// Past its lifetime.
    Expired,
}

#[derive(Deserialize)]
struct AssertionClaims {
    iss: String,
    sub: String,
    exp: i64,
    #[serde(default)]
    jti: Option<String>,
}

/// Issues and checks access tokens for the clients of a registry.
pub struct TokenIssuer {
    registry: ClientRegistry,
    token_url: String,
    lifetime: Duration,
    tokens: Mutex<HashMap<String, AccessGrant>>,
    /// `(client_id, jti)` of accepted assertions, with their `exp`.
    seen: Mutex<HashMap<(String, String), i64>>,
    fetched_keys: Mutex<HashMap<String, (Instant, Arc<JwkSet>)>>,
    http: reqwest::Client,
}

impl TokenIssuer {
    /// An issuer for `registry` whose assertions must name `token_url` as
    /// `aud`, issuing tokens that live `lifetime` (at most five minutes).
    pub fn new(registry: ClientRegistry, token_url: String, lifetime: Duration) -> Result<Self, super::AuthError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(super::AuthError::HttpClient)?;
        Ok(Self {
            registry,
            token_url,
            lifetime: lifetime.clamp(Duration::from_secs(1), MAX_ACCESS_TOKEN_LIFETIME),
            tokens: Mutex::new(HashMap::new()),
            seen: Mutex::new(HashMap::new()),
            fetched_keys: Mutex::new(HashMap::new()),
            http,
        })
    }

    /// How long issued tokens live.
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// The token endpoint's absolute URL.
    pub fn token_url(&self) -> &str {
        &self.token_url
    }

    /// Handles a token request's form fields.
    pub async fn issue(&self, form: &HashMap<String, String>) -> Result<IssuedToken, OAuthError> {
        let field = |name: &str| form.get(name).map(String::as_str).unwrap_or("");
        match field("grant_type") {
            "client_credentials" => {}
            "" => return Err(OAuthError::new("invalid_request", "grant_type is missing")),
            other => {
                return Err(OAuthError::new(
                    "unsupported_grant_type",
                    format!("grant_type '{other}' is not supported; use client_credentials"),
                ));
            }
        }
        if field("client_assertion_type") != JWT_BEARER {
            return Err(OAuthError::new(
                "invalid_request",
                format!("client_assertion_type must be {JWT_BEARER}"),
            ));
        }
        let assertion = field("client_assertion");
        if assertion.is_empty() {
            return Err(OAuthError::new("invalid_request", "client_assertion is missing"));
        }
        let requested = ScopeSet::parse(field("scope")).map_err(|e| OAuthError::new("invalid_scope", e.to_string()))?;
        if requested.is_empty() {
            return Err(OAuthError::new(
                "invalid_scope",
                "scope must name at least one system/ scope (e.g. system/*.rs)",
            ));
        }
        let client = self.authenticate(assertion).await?;
        let granted = requested.intersect(&client.allowed);
        if granted.is_empty() {
            return Err(OAuthError::new(
                "invalid_scope",
                format!(
                    "none of the requested scopes is allowed for client '{}'",
                    client.config.client_id
                ),
            ));
        }
        let mut random = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random)
            .map_err(|_| OAuthError::new("server_error", "no randomness available"))?;
        let access_token = URL_SAFE_NO_PAD.encode(random);
        let grant = AccessGrant {
            client_id: client.config.client_id.clone(),
            scopes: granted.clone(),
            expires: Instant::now() + self.lifetime,
        };
        {
            let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
            tokens.retain(|_, g| g.expires > Instant::now());
            tokens.insert(access_token.clone(), grant);
        }
        Ok(IssuedToken {
            client_id: client.config.client_id.clone(),
            access_token,
            expires_in: self.lifetime.as_secs(),
            scope: granted.to_string(),
        })
    }

    /// The grant of bearer token `token`.
    pub fn check(&self, token: &str) -> Result<AccessGrant, TokenRejection> {
        let tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        match tokens.get(token) {
            None => Err(TokenRejection::Unknown),
            Some(grant) if grant.expires <= Instant::now() => Err(TokenRejection::Expired),
            Some(grant) => Ok(grant.clone()),
        }
    }

    /// The client a current token belongs to, for its groups (reloaded).
    pub fn client(&self, client_id: &str) -> Option<Arc<Client>> {
        self.registry.get(client_id)
    }

    /// Verifies the assertion and returns its client.
    async fn authenticate(&self, assertion: &str) -> Result<Arc<Client>, OAuthError> {
        let invalid = |text: String| OAuthError::new("invalid_client", text);
        let header = jsonwebtoken::decode_header(assertion)
            .map_err(|e| invalid(format!("the client_assertion is not a signed JWT: {e}")))?;
        if !matches!(header.alg, Algorithm::RS384 | Algorithm::ES384) {
            return Err(invalid(format!(
                "the assertion is signed with {:?}; only RS384 and ES384 are accepted",
                header.alg
            )));
        }
        let kid = header
            .kid
            .clone()
            .ok_or_else(|| invalid("the assertion's header has no kid".into()))?;
        // The issuer names the client; read it before verifying so the
        // right keys are used (nothing from it is trusted until verified).
        let issuer = unverified_issuer(assertion).ok_or_else(|| invalid("the assertion has no iss".into()))?;
        let client = self
            .registry
            .get(&issuer)
            .ok_or_else(|| invalid(format!("unknown client '{issuer}'")))?;
        let keys = self.keys_of(&client, &kid).await?;
        let jwk = keys
            .find(&kid)
            .ok_or_else(|| invalid(format!("client '{issuer}' has no key with kid '{kid}'")))?;
        let key = DecodingKey::from_jwk(jwk).map_err(|e| invalid(format!("key '{kid}' is unusable: {e}")))?;
        // One clock reading for every time check of this assertion.
        let now = chrono::Utc::now().timestamp();
        let mut validation = Validation::new(header.alg);
        validation.set_audience(&[&self.token_url]);
        validation.set_issuer(&[&issuer]);
        validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
        validation.leeway = LEEWAY_SECONDS;
        let claims = jsonwebtoken::decode::<AssertionClaims>(assertion, &key, &validation)
            .map_err(|e| invalid(format!("the assertion was refused: {e}")))?
            .claims;
        if claims.sub != claims.iss {
            return Err(invalid("the assertion's sub must equal its iss (the client_id)".into()));
        }
        if claims.exp > now + MAX_ASSERTION_LIFETIME_SECONDS + LEEWAY_SECONDS as i64 {
            return Err(invalid("the assertion's exp is more than five minutes ahead".into()));
        }
        let jti = claims
            .jti
            .filter(|j| !j.is_empty())
            .ok_or_else(|| invalid("the assertion has no jti".into()))?;
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        // Kept a second past the last instant the assertion could be
        // accepted, so a replay at the edge is still recognised.
        seen.retain(|_, exp| *exp + LEEWAY_SECONDS as i64 + 1 >= now);
        if seen.contains_key(&(issuer.clone(), jti.clone())) {
            return Err(invalid(format!("the assertion's jti '{jti}' was already used")));
        }
        seen.insert((issuer, jti), claims.exp);
        Ok(client)
    }

    /// The client's keys: registered, or fetched from its `jwks_url`
    /// (cached for five minutes; fetched again, at most every ten seconds,
    /// when `kid` is not among them, so a rotated key works at once).
    async fn keys_of(&self, client: &Client, kid: &str) -> Result<Arc<JwkSet>, OAuthError> {
        if let Some(jwks) = &client.config.jwks {
            return Ok(Arc::new(jwks.clone()));
        }
        let Some(url) = &client.config.jwks_url else {
            return Err(OAuthError::new("invalid_client", "the client has no keys"));
        };
        let cached = self
            .fetched_keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(url)
            .cloned();
        if let Some((at, keys)) = &cached
            && (at.elapsed() < JWKS_REFETCH || (at.elapsed() < JWKS_CACHE && keys.find(kid).is_some()))
        {
            return Ok(keys.clone());
        }
        let failed = |e: String| OAuthError::new("invalid_client", format!("cannot fetch the client's keys: {e}"));
        let response = self.http.get(url).send().await.map_err(|e| failed(e.to_string()))?;
        if !response.status().is_success() {
            return Err(failed(format!("status {}", response.status())));
        }
        if response.content_length().is_some_and(|n| n > JWKS_MAX_BYTES as u64) {
            return Err(failed("the key set is too large".into()));
        }
        let body = response.bytes().await.map_err(|e| failed(e.to_string()))?;
        if body.len() > JWKS_MAX_BYTES {
            return Err(failed("the key set is too large".into()));
        }
        let mut keys: JwkSet = serde_json::from_slice(&body).map_err(|e| failed(e.to_string()))?;
        // Only keys that could be registered are used.
        keys.keys.retain(|k| super::clients::check_key(k).is_ok());
        let keys = Arc::new(keys);
        self.fetched_keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(url.clone(), (Instant::now(), keys.clone()));
        Ok(keys)
    }
}

/// The `iss` claim of a JWT, read without verifying it.
fn unverified_issuer(jwt: &str) -> Option<String> {
    let payload = jwt.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    claims["iss"].as_str().map(str::to_string)
}
