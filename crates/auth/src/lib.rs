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
    /// The clients file cannot be read or written.
    #[error("clients file {}: {source}", path.display())]
    ClientsFileIo {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The clients file is not JSON of the expected shape.
    #[error("clients file {}: {source}", path.display())]
    ClientsFileJson {
        /// The file.
        path: std::path::PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// A client entry of the clients file is invalid.
    #[error("clients file {}: client '{client_id}': {problem}", path.display())]
    InvalidClient {
        /// The file.
        path: std::path::PathBuf,
        /// The client's id (empty when that is the problem).
        client_id: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The HTTP client for `jwks_url`s cannot be set up.
    #[error("cannot set up the HTTP client for jwks_url keys: {0}")]
    HttpClient(#[source] reqwest::Error),
}
