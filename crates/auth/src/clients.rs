//! The client registry: `--clients FILE`, JSON of the form
//! `{"clients": [{"client_id", "jwks" | "jwks_url", "scopes", "groups"}]}`,
//! reloaded when the file changes (checked at most once a second), so
//! clients are added, changed and removed without a restart.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Instant, SystemTime};

use jsonwebtoken::jwk::JwkSet;
use serde::{Deserialize, Serialize};

use super::AuthError;
use super::scopes::ScopeSet;

/// One registered client as written in the file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientConfig {
    /// The client's id (`iss` and `sub` of its assertions).
    pub client_id: String,
    /// Its public keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<JwkSet>,
    /// Where its public keys are published (instead of `jwks`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    /// The scopes it may be granted (space-separated SMART system scopes).
    pub scopes: String,
    /// Groups it may see and export besides the cohort Groups it creates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
}

/// The file's content.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClientsFile {
    /// The clients.
    pub clients: Vec<ClientConfig>,
}

/// A validated client.
#[derive(Debug)]
pub struct Client {
    /// As configured.
    pub config: ClientConfig,
    /// Its scopes, parsed.
    pub allowed: ScopeSet,
}

struct Loaded {
    clients: HashMap<String, Arc<Client>>,
    /// Modification time of the file the clients came from.
    modified: Option<SystemTime>,
    /// Modification time of a version found invalid (logged once).
    rejected: Option<SystemTime>,
    checked: Instant,
}

/// The registry, reloading its file when it changes.
pub struct ClientRegistry {
    path: PathBuf,
    loaded: RwLock<Loaded>,
}

impl ClientsFile {
    /// Reads `path` (an absent file is an empty registry when `missing_ok`).
    pub fn read(path: &Path, missing_ok: bool) -> Result<Self, AuthError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if missing_ok && e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => {
                return Err(AuthError::ClientsFileIo {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        serde_json::from_str(&text).map_err(|source| AuthError::ClientsFileJson {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Validates every client: unique ids, parseable scopes, keys or a key URL.
    pub fn validate(&self, path: &Path) -> Result<HashMap<String, Arc<Client>>, AuthError> {
        let mut clients = HashMap::new();
        for config in &self.clients {
            let problem = |what: String| AuthError::InvalidClient {
                path: path.to_path_buf(),
                client_id: config.client_id.clone(),
                problem: what,
            };
            if config.client_id.trim().is_empty() {
                return Err(problem("a client has an empty client_id".into()));
            }
            let allowed = ScopeSet::parse(&config.scopes).map_err(|e| problem(e.to_string()))?;
            match (&config.jwks, &config.jwks_url) {
                (Some(jwks), None) => {
                    for key in &jwks.keys {
                        check_key(key).map_err(problem)?;
                    }
                }
                (None, Some(url)) if is_trusted_key_url(url) => {}
                (None, Some(url)) => {
                    return Err(problem(format!(
                        "jwks_url '{url}' must be https:// (plain http only on a loopback host): keys fetched in clear could be swapped"
                    )));
                }
                _ => return Err(problem("give exactly one of 'jwks' and 'jwks_url'".into())),
            }
            let client = Arc::new(Client {
                config: config.clone(),
                allowed,
            });
            if clients.insert(config.client_id.clone(), client).is_some() {
                return Err(problem("listed twice".into()));
            }
        }
        Ok(clients)
    }

    /// Writes the file atomically (a temporary file renamed over it).
    pub fn write(&self, path: &Path) -> Result<(), AuthError> {
        let text = serde_json::to_string_pretty(self).map_err(|source| AuthError::ClientsFileJson {
            path: path.to_path_buf(),
            source,
        })?;
        let temporary = path.with_extension("json.tmp");
        std::fs::write(&temporary, text + "\n")
            .and_then(|()| std::fs::rename(&temporary, path))
            .map_err(|source| AuthError::ClientsFileIo {
                path: path.to_path_buf(),
                source,
            })
    }
}

/// A key fhirlake can verify assertions with: RSA (RS384) or EC P-384
/// (ES384), with a `kid`; anything else (HMAC secrets, other curves or
/// algorithms) is refused when registered, not only when used.
pub fn check_key(key: &jsonwebtoken::jwk::Jwk) -> Result<(), String> {
    use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, KeyAlgorithm};
    if key.common.key_id.is_none() {
        return Err("every key needs a 'kid'".into());
    }
    let expected = match &key.algorithm {
        AlgorithmParameters::RSA(_) => KeyAlgorithm::RS384,
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P384 => KeyAlgorithm::ES384,
        _ => return Err("keys must be RSA (RS384) or EC P-384 (ES384)".into()),
    };
    if let Some(alg) = key.common.key_algorithm
        && alg != expected
    {
        return Err(format!("key alg {alg:?} is not accepted; use {expected:?}"));
    }
    jsonwebtoken::DecodingKey::from_jwk(key).map_err(|e| format!("unusable key: {e}"))?;
    Ok(())
}

/// `https://`, or `http://` to a loopback host (a key server beside us).
pub fn is_trusted_key_url(url: &str) -> bool {
    let Ok(parsed) = url::Url::parse(url) else {
        return false;
    };
    match parsed.scheme() {
        "https" => true,
        "http" => {
            matches!(parsed.host(), Some(url::Host::Domain("localhost")))
                || matches!(parsed.host(), Some(url::Host::Ipv4(ip)) if ip.is_loopback())
                || matches!(parsed.host(), Some(url::Host::Ipv6(ip)) if ip.is_loopback())
        }
        _ => false,
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl ClientRegistry {
    /// Loads and validates `path`.
    pub fn load(path: &Path) -> Result<Self, AuthError> {
        let file = ClientsFile::read(path, false)?;
        let clients = file.validate(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            loaded: RwLock::new(Loaded {
                clients,
                modified: modified(path),
                rejected: None,
                checked: Instant::now(),
            }),
        })
    }

    /// Client `client_id`, after reloading the file if it changed. A file
    /// that became invalid is reported in the log and the previous clients
    /// stay in force.
    pub fn get(&self, client_id: &str) -> Option<Arc<Client>> {
        self.reload_if_changed();
        let loaded = self.loaded.read().unwrap_or_else(|e| e.into_inner());
        loaded.clients.get(client_id).cloned()
    }

    fn reload_if_changed(&self) {
        {
            let loaded = self.loaded.read().unwrap_or_else(|e| e.into_inner());
            if loaded.checked.elapsed().as_secs() < 1 {
                return;
            }
        }
        let mut loaded = self.loaded.write().unwrap_or_else(|e| e.into_inner());
        loaded.checked = Instant::now();
        let now = modified(&self.path);
        if now == loaded.modified {
            return;
        }
        // An invalid version is retried every second (it may be half
        // written) but reported once.
        match ClientsFile::read(&self.path, false).and_then(|f| f.validate(&self.path)) {
            Ok(clients) => {
                tracing::info!(target: "fhirlake::audit", event = "clients_reloaded", clients = clients.len(), file = %self.path.display());
                loaded.clients = clients;
                loaded.modified = now;
                loaded.rejected = None;
            }
            Err(e) if loaded.rejected != now => {
                loaded.rejected = now;
                tracing::error!(error = %e, "the clients file changed but is invalid; keeping the previous clients");
            }
            Err(_) => {}
        }
    }
}
