//! fhirlake's Postgres wire-protocol front: `psql`, psycopg, JDBC and the
//! BI tools built on them connect to `serve --pg-addr` and read the
//! warehouse through the engine's read-only SQL sessions
//! ([`fhirlake_engine::sql`]). Each connection has its own session (its
//! settings, its memory pool); the wire protocol is pgwire's, the
//! Arrow-to-Postgres encoding arrow-pg's and the `pg_catalog` tables
//! datafusion-pg-catalog's (decision 0030).

mod catalog;
mod connection;
mod deferred;
mod errors;
mod login;
mod results;
mod rewrite;

use std::net::SocketAddr;
use std::sync::Arc;

use fhirlake_auth::TokenIssuer;
use fhirlake_engine::sql::{SqlLimits, SqlService};
use fhirlake_engine::warehouse::Warehouse;
use pgwire::api::ConnectionManager;
use tokio::net::TcpListener;

use connection::Connection;
pub use errors::sqlstate;

/// Errors starting the front.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The address could not be bound.
    #[error("cannot listen for Postgres clients on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Off loopback, every login must authenticate.
    #[error(
        "--pg-addr {addr} is not a loopback address and authorization is off: start the server with --clients FILE (logins use an access token as password), or listen on 127.0.0.1"
    )]
    OpenOffLoopback {
        /// The address.
        addr: SocketAddr,
    },
}

/// How logins authenticate.
#[derive(Clone)]
pub enum Authentication {
    /// Nobody does (loopback only): every login reads everything.
    Off,
    /// The password is an access token from the FHIR server's token
    /// endpoint (SMART Backend Services); the login reads what its scopes
    /// allow.
    AccessToken(Arc<TokenIssuer>),
}

/// The Postgres front, bound and ready to serve.
pub struct PgFront {
    listener: TcpListener,
    shared: Arc<Shared>,
}

/// What every connection of the front shares.
pub(crate) struct Shared {
    pub(crate) sql: SqlService,
    pub(crate) authentication: Authentication,
    pub(crate) connections: Arc<ConnectionManager>,
}

impl PgFront {
    /// Binds `addr` for SQL over `warehouse` under `limits`; refuses a
    /// non-loopback address without authentication.
    pub async fn bind(
        addr: SocketAddr,
        warehouse: Warehouse,
        limits: SqlLimits,
        authentication: Authentication,
    ) -> Result<Self, PgError> {
        if matches!(authentication, Authentication::Off) && !addr.ip().is_loopback() {
            return Err(PgError::OpenOffLoopback { addr });
        }
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| PgError::Bind { addr, source })?;
        let sql = SqlService::with_hook(warehouse, limits, "postgres", Some(catalog::pg_catalog_hook()));
        Ok(Self {
            listener,
            shared: Arc::new(Shared {
                sql,
                authentication,
                connections: Arc::new(ConnectionManager::new()),
            }),
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The SQL service the connections share (its running-query count).
    pub fn sql(&self) -> SqlService {
        self.shared.sql.clone()
    }

    /// Accepts connections until the task is dropped.
    pub async fn run(self) {
        loop {
            let (socket, peer) = match self.listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a Postgres connection failed");
                    continue;
                }
            };
            let handlers = connection::Handlers(Connection::new(self.shared.clone()));
            tokio::spawn(async move {
                if let Err(e) = pgwire::tokio::process_socket(socket, None, handlers).await {
                    tracing::debug!(%peer, error = %e, "Postgres connection ended with an error");
                }
            });
        }
    }
}
