//! Finding the NDJSON files to load: files or folders (prefixes), local or in
//! an object store.

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStoreExt};

use super::IngestError;
use crate::store::StoreLocation;

/// How a source file is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Plain NDJSON.
    None,
    /// gzip (`.gz`), possibly several concatenated members.
    Gzip,
}

/// One input file.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// The store (and folder) it was found in.
    pub location: StoreLocation,
    /// Its key in the store.
    pub path: Path,
    /// Its name as shown in messages and kept in `_rejects.file` (a path for
    /// local files, a URL otherwise).
    pub url: String,
    /// Size in bytes as stored (compressed size for `.gz`).
    pub size: u64,
    /// Its compression.
    pub compression: Compression,
}

/// True for names a bulk export uses for NDJSON (`*.ndjson`, `*.ndjson.gz`).
pub fn is_ndjson_name(name: &str) -> bool {
    name.ends_with(".ndjson") || name.ends_with(".ndjson.gz")
}

fn compression_of(name: &str) -> Compression {
    if name.ends_with(".gz") {
        Compression::Gzip
    } else {
        Compression::None
    }
}

/// Resolves each source (a file, or a folder searched recursively for
/// `*.ndjson` / `*.ndjson.gz`) to files, in load order: sources in the order
/// given, files of a folder sorted by key.
pub async fn discover(sources: &[String]) -> Result<Vec<SourceFile>, IngestError> {
    let mut files = Vec::new();
    for source in sources {
        let location = StoreLocation::parse(source, false)?;
        let listed: Vec<ObjectMeta> = location
            .store
            .list(Some(&location.prefix))
            .try_collect()
            .await
            .map_err(|e| location.error("listing", &location.prefix, e))?;
        let mut found: Vec<ObjectMeta> = if listed.is_empty() {
            // Not a folder: a single file (any name; `.gz` means gzip).
            match location.store.head(&location.prefix).await {
                Ok(meta) => vec![meta],
                Err(object_store::Error::NotFound { .. }) => {
                    return Err(IngestError::SourceNotFound {
                        source_location: source.clone(),
                    });
                }
                Err(e) => return Err(location.error("reading", &location.prefix, e).into()),
            }
        } else {
            listed
                .into_iter()
                .filter(|m| m.location.filename().is_some_and(is_ndjson_name))
                .collect()
        };
        if found.is_empty() {
            return Err(IngestError::NoNdjsonFiles {
                source_location: source.clone(),
            });
        }
        found.sort_by(|a, b| a.location.cmp(&b.location));
        for meta in found {
            let name = meta.location.filename().unwrap_or_default().to_string();
            files.push(SourceFile {
                url: location.display_of(&meta.location),
                path: meta.location,
                size: meta.size,
                compression: compression_of(&name),
                location: location.clone(),
            });
        }
    }
    Ok(files)
}
