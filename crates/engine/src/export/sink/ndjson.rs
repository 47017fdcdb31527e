//! NDJSON output: one resource per line, the stored JSON as loaded.
//!
//! Lines are copied once, straight into the multipart upload's part buffer
//! (`WriteMultipart`), which uploads each full part in the background.

use object_store::path::Path;
use object_store::{ObjectStoreExt, WriteMultipart};

use super::{ExportedFile, FileNamer, PART_SIZE};
use crate::export::ExportError;

/// Part uploads of one file in flight at most (bounds memory to this many
/// parts plus the one being filled).
const PARTS_IN_FLIGHT: usize = 2;

struct OpenFile {
    name: String,
    path: Path,
    upload: WriteMultipart,
    count: u64,
    bytes: u64,
    /// Bytes written since the last wait for upload capacity.
    unflushed: usize,
}

/// Writes lines into files of at most `max_bytes` (a line is never split;
/// a file holds at least one line).
pub struct NdjsonSink {
    namer: FileNamer,
    resource_type: Option<String>,
    max_bytes: u64,
    current: Option<OpenFile>,
    files: Vec<ExportedFile>,
    split_anywhere: bool,
}

impl NdjsonSink {
    /// A sink naming its files with `namer`; `resource_type` is recorded
    /// for the manifest.
    pub fn new(namer: FileNamer, resource_type: Option<String>, max_bytes: u64) -> Self {
        Self {
            namer,
            resource_type,
            max_bytes: max_bytes.max(1),
            current: None,
            files: Vec::new(),
            split_anywhere: true,
        }
    }

    /// A sink that starts new files only when told to ([`NdjsonSink::roll`]):
    /// Patient-organized output never splits a block.
    pub fn split_only_on_roll(mut self) -> Self {
        self.split_anywhere = false;
        self
    }

    fn error(&self, path: &Path, e: object_store::Error) -> ExportError {
        ExportError::Write {
            path: self.namer.location().url_of(path),
            source: std::io::Error::other(e),
        }
    }

    async fn close_current(&mut self) -> Result<(), ExportError> {
        if let Some(file) = self.current.take() {
            if let Err(e) = file.upload.finish().await {
                return Err(self.error(&file.path, e));
            }
            self.files.push(ExportedFile {
                resource_type: self.resource_type.clone(),
                name: file.name,
                count: file.count,
                bytes: file.bytes,
            });
        }
        Ok(())
    }

    /// Whether the next line of `len` bytes starts a new file.
    fn full_for(&self, len: usize) -> bool {
        self.current
            .as_ref()
            .is_some_and(|f| f.bytes > 0 && f.bytes + len as u64 + 1 > self.max_bytes)
    }

    /// Starts a new file with the next line.
    pub async fn roll(&mut self) -> Result<(), ExportError> {
        self.close_current().await
    }

    /// Bytes in the current file so far (0 when none is open).
    ///
    /// Callers that roll by themselves compare it with [`NdjsonSink::max_bytes`].
    pub fn current_bytes(&self) -> u64 {
        self.current.as_ref().map_or(0, |f| f.bytes)
    }

    /// The size limit of one file.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Appends one line (`line` without its newline).
    pub async fn write_line(&mut self, line: &str) -> Result<(), ExportError> {
        self.append(line, 1).await
    }

    /// Appends a line that is not counted as an exported resource (the
    /// header line of a Patient block).
    pub async fn write_header(&mut self, line: &str) -> Result<(), ExportError> {
        self.append(line, 0).await
    }

    async fn append(&mut self, line: &str, counted: u64) -> Result<(), ExportError> {
        if self.split_anywhere && self.full_for(line.len()) {
            self.close_current().await?;
        }
        if self.current.is_none() {
            let (name, path) = self.namer.next_name();
            let upload = self
                .namer
                .location()
                .store
                .put_multipart(&path)
                .await
                .map_err(|e| self.error(&path, e))?;
            self.current = Some(OpenFile {
                name,
                path,
                upload: WriteMultipart::new_with_chunk_size(upload, PART_SIZE),
                count: 0,
                bytes: 0,
                unflushed: 0,
            });
        }
        let Some(file) = self.current.as_mut() else {
            return Ok(());
        };
        file.upload.write(line.as_bytes());
        file.upload.write(b"\n");
        file.count += counted;
        file.bytes += line.len() as u64 + 1;
        file.unflushed += line.len() + 1;
        if file.unflushed >= PART_SIZE {
            file.unflushed = 0;
            if let Err(e) = file.upload.wait_for_capacity(PARTS_IN_FLIGHT).await {
                let path = file.path.clone();
                return Err(self.error(&path, e));
            }
        }
        Ok(())
    }

    /// Completes the open file; returns every file written.
    pub async fn finish(mut self) -> Result<Vec<ExportedFile>, ExportError> {
        self.close_current().await?;
        Ok(self.files)
    }

    /// Abandons the open file (its upload is aborted; finished files stay
    /// for the caller to delete).
    pub async fn abort(mut self) -> Vec<ExportedFile> {
        if let Some(file) = self.current.take() {
            let _ = file.upload.abort().await;
        }
        self.files
    }
}
