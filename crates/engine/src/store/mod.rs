//! Where data lives: a URL (or local path) resolved to an object store plus a
//! key prefix. Every read and write of fhirlake goes through this, so a local
//! folder and an object-store bucket take the same code path.

mod object_writer;
mod read_cache;
mod s3;

use std::sync::Arc;

use object_store::ObjectStore;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::signer::Signer;
use url::Url;

pub use object_writer::ObjectWriter;
pub use read_cache::{CachedStore, ReadCache};
pub use s3::{S3Options, configure_s3};

/// Errors resolving or accessing a storage location.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The location string is neither a path nor a supported URL.
    #[error("invalid location '{location}': {reason}")]
    InvalidLocation {
        /// What the user gave.
        location: String,
        /// Why it is invalid.
        reason: String,
    },
    /// The URL scheme has no object store in this build.
    #[error("unsupported storage scheme '{scheme}' in '{location}' (supported: s3://, file://, local paths)")]
    UnsupportedScheme {
        /// The scheme found.
        scheme: String,
        /// What the user gave.
        location: String,
    },
    /// An object store operation failed.
    #[error("{operation} {url}: {}", describe_failure(*kind, source))]
    ObjectStore {
        /// What was being done (`reading`, `listing`, …).
        operation: &'static str,
        /// The object's URL.
        url: String,
        /// What kind of failure it was, in words (`bucket not found`,
        /// `forbidden…`, `unreachable…`), where known.
        kind: Option<&'static str>,
        /// The store's error (boxed: it is large, and errors travel far).
        #[source]
        source: Box<object_store::Error>,
    },
    /// The AWS profile in use gets its credentials in a way fhirlake does
    /// not implement (assume-role, SSO, `credential_process`, web identity
    /// from a file): refused when the store opens, instead of going on
    /// without credentials.
    #[error(
        "AWS profile '{profile}' uses {setting}, which fhirlake does not support (it reads static keys: \
         aws_access_key_id, aws_secret_access_key, aws_session_token); export the profile's keys first, e.g. \
         eval \"$(aws configure export-credentials --profile {profile} --format env)\""
    )]
    UnsupportedProfile {
        /// The profile (`AWS_PROFILE`, or `default`).
        profile: String,
        /// The setting that needs an unsupported provider (`role_arn`, …).
        setting: String,
    },
    /// `AWS_PROFILE` names a profile that neither profile file has.
    #[error("AWS profile '{profile}' (AWS_PROFILE) is in neither {credentials_file} nor {config_file}")]
    MissingProfile {
        /// The profile asked for.
        profile: String,
        /// The credentials file read.
        credentials_file: String,
        /// The config file read.
        config_file: String,
    },
    /// Local filesystem error (creating a warehouse folder).
    #[error("{path}: {source}")]
    Io {
        /// The local path.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl crate::error::HasKind for StoreError {
    fn kind(&self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind;
        match self {
            Self::InvalidLocation { .. } => ErrorKind::Invalid,
            Self::UnsupportedScheme { .. } | Self::UnsupportedProfile { .. } => ErrorKind::NotSupported,
            Self::MissingProfile { .. } => ErrorKind::Invalid,
            Self::ObjectStore { source, .. } => match **source {
                object_store::Error::NotFound { .. } => ErrorKind::NotFound,
                object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. } => {
                    ErrorKind::Forbidden
                }
                _ => ErrorKind::Internal,
            },
            Self::Io { .. } => ErrorKind::Internal,
        }
    }

    fn is_private(&self) -> bool {
        true
    }
}

/// `kind: details` when the kind of failure is known, else the details.
fn describe_failure(kind: Option<&str>, source: &object_store::Error) -> String {
    match kind {
        Some(kind) => format!("{kind} ({source})"),
        None => source.to_string(),
    }
}

/// A resolved storage location: an object store and the key prefix inside it.
#[derive(Debug, Clone)]
pub struct StoreLocation {
    /// The object store holding the data.
    pub store: Arc<dyn ObjectStore>,
    /// URL of the store's root (`file:///` or `s3://bucket/`), as DataFusion
    /// registers object stores by scheme and authority.
    pub store_url: Url,
    /// Key prefix of this location inside the store (no leading or trailing `/`).
    pub prefix: Path,
    /// Makes presigned URLs for objects of this store (S3 only).
    pub signer: Option<Arc<dyn Signer>>,
}

impl StoreLocation {
    /// Resolves a user-given location: a local path (relative or absolute), a
    /// `file://` URL or an `s3://bucket/prefix` URL (see [`configure_s3`]).
    /// With `create_local`, a missing local folder is created.
    pub fn parse(location: &str, create_local: bool) -> Result<Self, StoreError> {
        Self::parse_with(location, create_local, &s3::configured())
    }

    /// Like [`StoreLocation::parse`] with explicit S3 options instead of
    /// those set by [`configure_s3`].
    pub fn parse_with(location: &str, create_local: bool, s3_options: &S3Options) -> Result<Self, StoreError> {
        let invalid = |reason: String| StoreError::InvalidLocation {
            location: location.to_string(),
            reason,
        };
        if let Some((scheme, _)) = location.split_once("://") {
            let url = Url::parse(location).map_err(|e| invalid(e.to_string()))?;
            return match scheme {
                "file" => {
                    let path = url
                        .to_file_path()
                        .map_err(|()| invalid("not a local file URL".into()))?;
                    Self::local(&path, location, create_local)
                }
                "s3" | "s3a" => {
                    let store = s3::open(&url, location, s3_options)?;
                    let bucket = url.host_str().unwrap_or_default();
                    let store_url = Url::parse(&format!("s3://{bucket}/")).map_err(|e| invalid(e.to_string()))?;
                    let prefix = Path::from_url_path(url.path()).map_err(|e| invalid(e.to_string()))?;
                    Ok(Self {
                        signer: Some(store.clone()),
                        store,
                        store_url,
                        prefix,
                    })
                }
                other => Err(StoreError::UnsupportedScheme {
                    scheme: other.to_string(),
                    location: location.to_string(),
                }),
            };
        }
        Self::local(std::path::Path::new(location), location, create_local)
    }

    fn local(path: &std::path::Path, location: &str, create: bool) -> Result<Self, StoreError> {
        if create {
            std::fs::create_dir_all(path).map_err(|source| StoreError::Io {
                path: path.display().to_string(),
                source,
            })?;
        }
        let absolute = std::path::absolute(path).map_err(|source| StoreError::Io {
            path: path.display().to_string(),
            source,
        })?;
        // Canonicalize when it exists so symlinks and `..` do not produce two
        // names for one warehouse.
        let absolute = absolute.canonicalize().unwrap_or(absolute);
        let prefix = Path::from_absolute_path(&absolute).map_err(|e| StoreError::InvalidLocation {
            location: location.to_string(),
            reason: e.to_string(),
        })?;
        let store_url = Url::parse("file:///").map_err(|e| StoreError::InvalidLocation {
            location: location.to_string(),
            reason: e.to_string(),
        })?;
        Ok(Self {
            store: Arc::new(LocalFileSystem::new()),
            store_url,
            prefix,
            signer: None,
        })
    }

    /// The full key of `relative` under this location.
    pub fn child(&self, relative: &str) -> Path {
        let mut path = self.prefix.clone();
        for part in relative.split('/').filter(|p| !p.is_empty()) {
            path = path.clone().join(part);
        }
        path
    }

    /// A printable URL for the object at `path` (for messages and DataFusion).
    pub fn url_of(&self, path: &Path) -> String {
        format!("{}{}", self.store_url, path)
    }

    /// How to show the object at `path` to a user: a plain path for local
    /// files (so `path:line` works in editors), the URL otherwise.
    pub fn display_of(&self, path: &Path) -> String {
        if self.store_url.scheme() == "file" {
            format!("/{path}")
        } else {
            self.url_of(path)
        }
    }

    /// True for the local filesystem.
    pub fn is_local(&self) -> bool {
        self.store_url.scheme() == "file"
    }

    /// The URL of this location itself.
    pub fn url(&self) -> String {
        self.url_of(&self.prefix)
    }

    /// Wraps an object store error with the operation and the object's URL.
    pub fn error(&self, operation: &'static str, path: &Path, source: object_store::Error) -> StoreError {
        let kind = if self.is_local() { None } else { s3::classify(&source) };
        StoreError::ObjectStore {
            operation,
            url: self.url_of(path),
            kind,
            source: Box::new(source),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_local_paths_and_file_urls() {
        let dir = tempfile::tempdir().unwrap();
        let by_path = StoreLocation::parse(dir.path().to_str().unwrap(), false).unwrap();
        let url = Url::from_directory_path(dir.path()).unwrap();
        let by_url = StoreLocation::parse(url.as_str(), false).unwrap();
        assert_eq!(by_path.prefix, by_url.prefix);
        assert!(by_path.url().starts_with("file:///"));
        assert_eq!(
            by_path.child("a/b.json").as_ref(),
            format!("{}/a/b.json", by_path.prefix)
        );
    }

    #[test]
    fn rejects_unknown_scheme() {
        assert!(matches!(
            StoreLocation::parse("ftp://x/y", false),
            Err(StoreError::UnsupportedScheme { .. })
        ));
    }
}
