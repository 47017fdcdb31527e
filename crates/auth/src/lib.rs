//! SMART Backend Services authorization: the client registry, the token
//! endpoint's logic (signed JWT assertions → short-lived access tokens) and
//! SMART system scopes. The HTTP side (discovery, the token route, bearer
//! checks on every FHIR route) is in `server::auth`.

pub mod clients;
pub mod keys;
pub mod scopes;
pub mod token;

pub use clients::{ClientConfig, ClientRegistry, ClientsFile};
pub use scopes::{Permission, ScopeSet};
pub use token::{AccessGrant, OAuthError, TokenIssuer, TokenRejection};

/// Errors of setting authorization up.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The clients file cannot be read or is invalid.
    #[error("clients file {0}")]
    ClientsFile(String),
    /// The HTTP client for `jwks_url`s cannot be set up.
    #[error("cannot set up the HTTP client for jwks_url keys: {0}")]
    HttpClient(String),
}
