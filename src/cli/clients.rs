//! `fhirlake clients`: the clients file of `serve --clients`.

use std::path::PathBuf;

use anyhow::Context;
use fhirlake::auth::{ClientConfig, ClientsFile};

/// `fhirlake clients …`.
#[derive(clap::Subcommand)]
pub enum Command {
    /// Register a client (or replace the one with the same id) from its
    /// public key: a PEM public key (RSA ≥ 2048 bits for RS384, EC P-384 for
    /// ES384) or a JWK file.
    Add {
        /// The clients file (created when missing).
        #[arg(long)]
        file: PathBuf,
        /// The client's id (its assertions' iss and sub).
        #[arg(long)]
        client_id: String,
        /// The public key file (PEM or JWK).
        #[arg(long, conflicts_with = "jwks_url")]
        public_key: Option<PathBuf>,
        /// Key id for the key (default: the key's own, else its RFC 7638 thumbprint).
        #[arg(long, requires = "public_key")]
        kid: Option<String>,
        /// URL where the client publishes its keys (instead of --public-key).
        #[arg(long)]
        jwks_url: Option<String>,
        /// Scopes the client may be granted.
        #[arg(long, default_value = "system/*.rs system/Group.cud")]
        scopes: String,
        /// Groups the client may see and export besides its own cohorts.
        #[arg(long = "group")]
        groups: Vec<String>,
    },
    /// List the registered clients.
    List {
        /// The clients file.
        #[arg(long)]
        file: PathBuf,
    },
}

impl Command {
    /// Runs the subcommand.
    pub fn run(self) -> anyhow::Result<()> {
        match self {
            Command::Add {
                file,
                client_id,
                public_key,
                kid,
                jwks_url,
                scopes,
                groups,
            } => {
                let jwks = match &public_key {
                    Some(path) => {
                        let text =
                            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
                        let jwk = fhirlake::auth::keys::public_jwk(&text, kid.as_deref())
                            .with_context(|| format!("key file {}", path.display()))?;
                        Some(serde_json::from_value(serde_json::json!({"keys": [jwk]}))?)
                    }
                    None => None,
                };
                anyhow::ensure!(
                    jwks.is_some() || jwks_url.is_some(),
                    "give --public-key FILE or --jwks-url URL"
                );
                let client = ClientConfig {
                    client_id: client_id.clone(),
                    jwks,
                    jwks_url,
                    scopes,
                    groups,
                };
                add(&file, client)?;
                println!("registered client '{client_id}' in {}", file.display());
            }
            Command::List { file } => list(&file)?,
        }
        Ok(())
    }
}

/// Adds `client` to `file`, replacing the one with its id.
fn add(file: &std::path::Path, client: ClientConfig) -> anyhow::Result<()> {
    let mut clients = ClientsFile::read(file, true)?;
    clients.clients.retain(|c| c.client_id != client.client_id);
    clients.clients.push(client);
    // Validated before it is written: a bad entry never reaches the file.
    clients.validate(file)?;
    clients.write(file)?;
    Ok(())
}

/// Prints one line per client: id, scopes, key ids (or JWKS URL), Groups.
fn list(file: &std::path::Path) -> anyhow::Result<()> {
    let clients = ClientsFile::read(file, false)?;
    for client in &clients.clients {
        let keys = match (&client.jwks, &client.jwks_url) {
            (Some(jwks), _) => jwks
                .keys
                .iter()
                .filter_map(|k| k.common.key_id.clone())
                .collect::<Vec<_>>()
                .join(","),
            (None, Some(url)) => url.clone(),
            (None, None) => String::new(),
        };
        println!(
            "{}\t{}\t{}\t{}",
            client.client_id,
            client.scopes,
            keys,
            client.groups.join(",")
        );
    }
    Ok(())
}
