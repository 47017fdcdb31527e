//! Durable server state in the warehouse's object store, under `_server/`:
//! cohort Groups (`groups/<id>.json`, with their membership snapshot) and
//! async jobs (`jobs/<id>.json`). Each object is replaced by one atomic put
//! (object stores never show a half-written object), so a restarted server
//! reads exactly what was last written.

use futures::TryStreamExt;
use object_store::{ObjectStoreExt, PutPayload};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::store::{StoreError, StoreLocation};

/// Folder of the server's state under the warehouse root.
pub const STATE_DIR: &str = "_server";

/// Reads and writes the server's JSON objects.
#[derive(Clone)]
pub struct StateStore {
    root: StoreLocation,
}

impl StateStore {
    /// State kept beside the warehouse at `root`.
    pub fn new(root: StoreLocation) -> Self {
        Self { root }
    }

    fn path(&self, kind: &str, id: &str) -> object_store::path::Path {
        self.root.child(&format!("{STATE_DIR}/{kind}/{id}.json"))
    }

    /// Writes object `id` of `kind` (replacing it).
    pub async fn put<T: Serialize>(&self, kind: &str, id: &str, value: &T) -> Result<(), StoreError> {
        let path = self.path(kind, id);
        let body = serde_json::to_vec(value).map_err(|e| StoreError::Io {
            path: self.root.url_of(&path),
            source: std::io::Error::other(e),
        })?;
        self.root
            .store
            .put(&path, PutPayload::from(body))
            .await
            .map_err(|e| self.root.error("writing", &path, e))?;
        Ok(())
    }

    /// Reads object `id` of `kind`, `None` when absent.
    pub async fn get<T: DeserializeOwned>(&self, kind: &str, id: &str) -> Result<Option<T>, StoreError> {
        let path = self.path(kind, id);
        let bytes = match self.root.store.get(&path).await {
            Ok(result) => result.bytes().await.map_err(|e| self.root.error("reading", &path, e))?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.root.error("reading", &path, e)),
        };
        serde_json::from_slice(&bytes).map(Some).map_err(|e| StoreError::Io {
            path: self.root.url_of(&path),
            source: std::io::Error::other(e),
        })
    }

    /// Ids of every object of `kind`.
    pub async fn list(&self, kind: &str) -> Result<Vec<String>, StoreError> {
        let prefix = self.root.child(&format!("{STATE_DIR}/{kind}"));
        let objects: Vec<_> = self
            .root
            .store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| self.root.error("listing", &prefix, e))?;
        let mut ids: Vec<String> = objects
            .iter()
            .filter_map(|o| o.location.filename()?.strip_suffix(".json").map(str::to_string))
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// Deletes object `id` of `kind` (absent is fine).
    pub async fn delete(&self, kind: &str, id: &str) -> Result<(), StoreError> {
        let path = self.path(kind, id);
        match self.root.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.root.error("deleting", &path, e)),
        }
    }
}

impl StateStore {
    fn file_path(&self, relative: &str) -> object_store::path::Path {
        self.root.child(&format!("{STATE_DIR}/{relative}"))
    }

    /// Writes the state file at `relative` (under `_server/`), replacing it.
    pub async fn put_file(&self, relative: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        let path = self.file_path(relative);
        self.root
            .store
            .put(&path, PutPayload::from(bytes))
            .await
            .map_err(|e| self.root.error("writing", &path, e))?;
        Ok(())
    }

    /// Reads the state file at `relative` (under `_server/`).
    pub async fn get_file(&self, relative: &str) -> Result<bytes::Bytes, StoreError> {
        let path = self.file_path(relative);
        let result = self
            .root
            .store
            .get(&path)
            .await
            .map_err(|e| self.root.error("reading", &path, e))?;
        result.bytes().await.map_err(|e| self.root.error("reading", &path, e))
    }

    /// Deletes the state file at `relative` (absent is fine).
    pub async fn delete_file(&self, relative: &str) -> Result<(), StoreError> {
        let path = self.file_path(relative);
        match self.root.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.root.error("deleting", &path, e)),
        }
    }
}

/// Now, as an RFC 3339 UTC time (seconds): job and Group timestamps.
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// A new job or Group id.
pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}
