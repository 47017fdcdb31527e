//! The warehouse: Parquet tables on an object store, committed as versioned
//! snapshots (see `docs/architecture.md`, "Warehouse layout and commits").
//!
//! ```text
//! <root>/_manifest/v00000000000000000003.json   one per committed version
//! <root>/tables/<Table>/<load token>-….parquet   immutable data files
//! ```

pub mod catalog;
pub mod index_tables;
pub mod manifest;
pub mod merge;
pub mod parquet_file;
pub mod scan;
pub mod schema;
pub mod snapshot_catalog;
pub mod table;
pub mod touched;
pub mod vacuum;

use futures::TryStreamExt;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};

pub use manifest::{DataFile, Snapshot, TableEntry, TableKind};

use crate::store::{StoreError, StoreLocation};

/// Environment variable naming the default warehouse.
pub const WAREHOUSE_ENV: &str = "FHIRLAKE_WAREHOUSE";
/// The warehouse used when none is given.
pub const DEFAULT_WAREHOUSE: &str = "./warehouse";
/// Name of the rejected-lines table.
pub const REJECTS_TABLE: &str = "_rejects";
/// Name of the table of deleted resources.
pub const TOMBSTONES_TABLE: &str = "_tombstones";

/// Errors reading or committing warehouse state.
#[derive(Debug, thiserror::Error)]
pub enum WarehouseError {
    /// Storage access failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A manifest is not valid JSON of the expected shape.
    #[error("corrupt warehouse manifest {url}: {source}")]
    CorruptManifest {
        /// The manifest's URL.
        url: String,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// The manifest was written by an incompatible version.
    #[error(
        "warehouse manifest {url} has format '{found}', this build reads '{}'",
        manifest::FORMAT
    )]
    UnknownFormat {
        /// The manifest's URL.
        url: String,
        /// The format it declares.
        found: String,
    },
    /// Another writer committed first.
    #[error(
        "another writer committed warehouse version {version} while this one was working; nothing was committed, run it again"
    )]
    ConcurrentCommit {
        /// The version both tried to create.
        version: u64,
    },
    /// A query over the warehouse failed.
    #[error(transparent)]
    DataFusion(#[from] datafusion::error::DataFusionError),
    /// Writing Parquet failed.
    #[error("writing Parquet: {0}")]
    Parquet(#[from] datafusion::parquet::errors::ParquetError),
    /// A stored resource is not JSON (a damaged warehouse).
    #[error("stored resource is not JSON: {0}")]
    CorruptResource(#[source] crate::json::JsonError),
    /// A thread scanning stored resources panicked.
    #[error("resource scan thread failed")]
    ScanThread,
}

impl crate::error::HasKind for WarehouseError {
    fn kind(&self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind;
        match self {
            Self::Store(e) => e.kind(),
            Self::ConcurrentCommit { .. } => ErrorKind::Conflict,
            Self::DataFusion(e) => datafusion_kind(e),
            Self::CorruptManifest { .. }
            | Self::UnknownFormat { .. }
            | Self::Parquet(_)
            | Self::CorruptResource(_)
            | Self::ScanThread => ErrorKind::Internal,
        }
    }

    fn is_private(&self) -> bool {
        matches!(
            self,
            Self::Store(_) | Self::CorruptManifest { .. } | Self::UnknownFormat { .. }
        )
    }
}

/// The kind of a query failure: running out of query memory is the load of
/// the moment (requests on one warehouse version share the memory pool),
/// not a fault of the request; anything else is internal.
pub fn datafusion_kind(error: &datafusion::error::DataFusionError) -> crate::error::ErrorKind {
    match error.find_root() {
        datafusion::error::DataFusionError::ResourcesExhausted(_) => crate::error::ErrorKind::Transient,
        _ => crate::error::ErrorKind::Internal,
    }
}

/// A warehouse at one location.
#[derive(Debug, Clone)]
pub struct Warehouse {
    root: StoreLocation,
}

impl Warehouse {
    /// Opens (for a local path: creates the folder of) the warehouse at `location`.
    pub fn open(location: &str) -> Result<Self, WarehouseError> {
        Ok(Self {
            root: StoreLocation::parse(location, true)?,
        })
    }

    /// The warehouse at an already resolved location.
    pub fn at(root: StoreLocation) -> Self {
        Self { root }
    }

    /// The warehouse's root location.
    pub fn root(&self) -> &StoreLocation {
        &self.root
    }

    /// The latest committed snapshot, or `None` for an empty warehouse.
    pub async fn current(&self) -> Result<Option<Snapshot>, WarehouseError> {
        match self.latest_version().await? {
            Some(version) => self.snapshot(version).await.map(Some),
            None => Ok(None),
        }
    }

    /// The newest committed version (a listing of the manifests; nothing
    /// is read), `None` for an empty warehouse.
    pub async fn latest_version(&self) -> Result<Option<u64>, WarehouseError> {
        let dir = self.root.child(manifest::MANIFEST_DIR);
        let metas: Vec<_> = self
            .root
            .store
            .list(Some(&dir))
            .try_collect()
            .await
            .map_err(|e| self.root.error("listing", &dir, e))?;
        Ok(metas
            .iter()
            .filter_map(|m| m.location.filename().and_then(manifest::parse_manifest_name))
            .max())
    }

    /// Reads the snapshot of `version`.
    pub async fn snapshot(&self, version: u64) -> Result<Snapshot, WarehouseError> {
        let path = self.root.child(&manifest::manifest_path(version));
        let bytes = async { self.root.store.get(&path).await?.bytes().await }
            .await
            .map_err(|e| self.root.error("reading", &path, e))?;
        let url = self.root.url_of(&path);
        let snapshot: Snapshot = serde_json::from_slice(&bytes).map_err(|source| WarehouseError::CorruptManifest {
            url: url.clone(),
            source,
        })?;
        if snapshot.format != manifest::FORMAT {
            return Err(WarehouseError::UnknownFormat {
                url,
                found: snapshot.format,
            });
        }
        Ok(snapshot)
    }

    /// Commits `snapshot` as version `snapshot.version`, which must not exist
    /// yet: the manifest is created with a conditional put, so of two racing
    /// writers exactly one wins and the other gets `ConcurrentCommit`.
    pub async fn commit(&self, snapshot: &Snapshot) -> Result<(), WarehouseError> {
        let path = self.root.child(&manifest::manifest_path(snapshot.version));
        let body = serde_json::to_vec_pretty(snapshot).map_err(|source| WarehouseError::CorruptManifest {
            url: self.root.url_of(&path),
            source,
        })?;
        let options = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self.root.store.put_opts(&path, PutPayload::from(body), options).await {
            Ok(_) => Ok(()),
            Err(object_store::Error::AlreadyExists { .. }) => Err(WarehouseError::ConcurrentCommit {
                version: snapshot.version,
            }),
            Err(e) => Err(self.root.error("committing", &path, e).into()),
        }
    }

    /// Deletes data files (best effort: used to clean up after a failed or
    /// superseded write; a file left behind is invisible, never harmful).
    pub async fn delete_files(&self, files: &[DataFile]) {
        for file in files {
            let path = self.root.child(&file.path);
            if let Err(e) = self.root.store.delete(&path).await {
                tracing::debug!(file = %file.path, error = %e, "could not delete unreferenced file");
            }
        }
    }
}

/// A file-name prefix for the files of version `version` that no other
/// writer (even a racing one) uses.
pub fn unique_token(version: u64) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("v{version:06}-{:x}{:x}", nanos as u64, std::process::id())
}

/// The current time as RFC 3339 (UTC).
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}
