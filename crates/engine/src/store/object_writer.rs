//! A blocking `std::io::Write` that streams into an object store.
//!
//! The Parquet writer is synchronous and runs on ingest worker threads; this
//! adapter lets it stream straight into the store with bounded memory: bytes are
//! buffered up to one part, small objects become a single atomic `put`, large
//! ones a multipart upload. Nothing is visible under the final key until
//! [`ObjectWriter::finish`] succeeds.

use std::io::Write;
use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path;
use object_store::{MultipartUpload, ObjectStore, ObjectStoreExt, PutPayload};
use tokio::runtime::Handle;

use super::StoreLocation;

/// Size of one multipart part on object stores (S3 requires ≥ 5 MiB for all
/// but the last part).
const REMOTE_PART_SIZE: usize = 8 * 1024 * 1024;
/// Size of one part on the local filesystem, which takes parts of any size:
/// small parts keep the memory of many open files low.
const LOCAL_PART_SIZE: usize = 512 * 1024;

/// Streams bytes to one object; see the module docs.
pub struct ObjectWriter {
    store: Arc<dyn ObjectStore>,
    location: StoreLocation,
    path: Path,
    handle: Handle,
    buffer: Vec<u8>,
    upload: Option<Box<dyn MultipartUpload>>,
    written: u64,
    part_size: usize,
}

impl ObjectWriter {
    /// A writer for `path` in `location`'s store; `handle` runs the store's
    /// async calls, so this must be used from a thread outside the tokio
    /// runtime. Local stores (the filesystem) take small parts.
    pub fn new(location: &StoreLocation, path: Path, handle: Handle) -> Self {
        let part_size = if location.is_local() {
            LOCAL_PART_SIZE
        } else {
            REMOTE_PART_SIZE
        };
        Self {
            store: location.store.clone(),
            location: location.clone(),
            path,
            handle,
            buffer: Vec::with_capacity(64 * 1024),
            upload: None,
            written: 0,
            part_size,
        }
    }

    /// The object's key.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes accepted so far.
    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    /// The store's error as an I/O error naming the object and the cause.
    fn error(&self, e: object_store::Error) -> std::io::Error {
        std::io::Error::other(self.location.error("writing", &self.path, e))
    }

    fn flush_part(&mut self) -> std::io::Result<()> {
        if self.upload.is_none() {
            let upload = self
                .handle
                .block_on(self.store.put_multipart(&self.path))
                .map_err(|e| self.error(e))?;
            self.upload = Some(upload);
        }
        let part = Bytes::from(std::mem::replace(&mut self.buffer, Vec::with_capacity(64 * 1024)));
        if let Some(upload) = self.upload.as_mut() {
            let fut = upload.put_part(PutPayload::from(part));
            if let Err(e) = self.handle.block_on(fut) {
                return Err(self.error(e));
            }
        }
        Ok(())
    }

    /// Completes the object; returns its size in bytes.
    pub fn finish(mut self) -> std::io::Result<u64> {
        match self.upload.take() {
            None => {
                let payload = PutPayload::from(Bytes::from(std::mem::take(&mut self.buffer)));
                self.handle
                    .block_on(self.store.put(&self.path, payload))
                    .map_err(|e| self.error(e))?;
            }
            Some(mut upload) => {
                if !self.buffer.is_empty() {
                    let part = Bytes::from(std::mem::take(&mut self.buffer));
                    if let Err(e) = self.handle.block_on(upload.put_part(PutPayload::from(part))) {
                        return Err(self.error(e));
                    }
                }
                if let Err(e) = self.handle.block_on(upload.complete()) {
                    return Err(self.error(e));
                }
            }
        }
        Ok(self.written)
    }

    /// Abandons the object; a started multipart upload is aborted.
    pub fn abort(mut self) {
        if let Some(mut upload) = self.upload.take() {
            // Best effort: an upload left behind is invisible; on S3 a bucket
            // lifecycle rule (AbortIncompleteMultipartUpload) removes it.
            let _ = self.handle.block_on(upload.abort());
        }
    }
}

impl Write for ObjectWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(data);
        self.written += data.len() as u64;
        if self.buffer.len() >= self.part_size {
            self.flush_part()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
