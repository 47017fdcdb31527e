//! Export output files: one sink per (resource type, partition) writes files
//! of one format, starting a new file when the current one reaches the size
//! limit. Files are written with multipart uploads, so an object appears
//! under its name only once complete: a manifest never lists a half file.

pub mod ndjson;
pub mod parquet;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use object_store::buffered::BufWriter;
use object_store::path::Path;
use serde::{Deserialize, Serialize};

use crate::store::StoreLocation;

/// Size of the upload buffer of one open file (and of its multipart parts;
/// S3 needs at least 5 MiB).
pub(crate) const PART_SIZE: usize = 8 * 1024 * 1024;

/// One finished output file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportedFile {
    /// Resource type of its contents (`None` for Patient-organized files).
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub resource_type: Option<String>,
    /// Name relative to the export's folder.
    pub name: String,
    /// Resources (lines or rows) in it.
    pub count: u64,
    /// Size in bytes.
    pub bytes: u64,
}

/// Hands out file names `<stem>.<n>.<ext>` with `n` unique per stem across
/// the partitions writing the same type.
#[derive(Debug, Clone)]
pub struct FileNamer {
    location: StoreLocation,
    dir: String,
    stem: String,
    extension: &'static str,
    next: Arc<AtomicU32>,
}

impl FileNamer {
    /// Names in folder `dir` (a key prefix under `location`).
    pub fn new(location: StoreLocation, dir: &str, stem: &str, extension: &'static str) -> Self {
        Self {
            location,
            dir: dir.trim_end_matches('/').to_string(),
            stem: stem.to_string(),
            extension,
            next: Arc::new(AtomicU32::new(0)),
        }
    }

    /// The next file's name (relative to the folder) and key.
    fn next_name(&self) -> (String, Path) {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let name = format!("{}.{n:03}.{}", self.stem, self.extension);
        let key = if self.dir.is_empty() {
            name.clone()
        } else {
            format!("{}/{name}", self.dir)
        };
        (name, self.location.child(&key))
    }

    /// The next file: its name relative to the folder and a buffered
    /// writer for it.
    fn open(&self) -> (String, Path, BufWriter) {
        let (name, path) = self.next_name();
        let writer =
            BufWriter::with_capacity(self.location.store.clone(), path.clone(), PART_SIZE).with_max_concurrency(2);
        (name, path, writer)
    }

    /// The store the files go to.
    pub fn location(&self) -> &StoreLocation {
        &self.location
    }
}
