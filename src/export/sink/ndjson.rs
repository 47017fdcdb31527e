//! NDJSON output: one resource per line, the stored JSON as loaded.

use object_store::buffered::BufWriter;
use object_store::path::Path;
use tokio::io::AsyncWriteExt;

use super::{ExportedFile, FileNamer};
use crate::export::ExportError;

/// Bytes gathered before they are handed to the upload.
const CHUNK: usize = 1024 * 1024;

struct OpenFile {
    name: String,
    path: Path,
    writer: BufWriter,
    count: u64,
    bytes: u64,
}

/// Writes lines into files of at most `max_bytes` (a line is never split;
/// a file holds at least one line).
pub struct NdjsonSink {
    namer: FileNamer,
    resource_type: Option<String>,
    max_bytes: u64,
    current: Option<OpenFile>,
    chunk: Vec<u8>,
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
            chunk: Vec::with_capacity(CHUNK + 64 * 1024),
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

    fn io_error(&self, path: &Path, e: std::io::Error) -> ExportError {
        ExportError::Write {
            path: self.namer.location().url_of(path),
            source: e,
        }
    }

    async fn flush_chunk(&mut self) -> Result<(), ExportError> {
        if self.chunk.is_empty() {
            return Ok(());
        }
        let Some(file) = self.current.as_mut() else {
            return Ok(());
        };
        let result = file.writer.write_all(&self.chunk).await;
        self.chunk.clear();
        match result {
            Ok(()) => Ok(()),
            Err(e) => {
                let path = file.path.clone();
                Err(self.io_error(&path, e))
            }
        }
    }

    async fn close_current(&mut self) -> Result<(), ExportError> {
        self.flush_chunk().await?;
        if let Some(mut file) = self.current.take() {
            if let Err(e) = file.writer.shutdown().await {
                return Err(self.io_error(&file.path, e));
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
            let (name, path, writer) = self.namer.open();
            self.current = Some(OpenFile {
                name,
                path,
                writer,
                count: 0,
                bytes: 0,
            });
        }
        self.chunk.extend_from_slice(line.as_bytes());
        self.chunk.push(b'\n');
        if let Some(file) = self.current.as_mut() {
            file.count += counted;
            file.bytes += line.len() as u64 + 1;
        }
        if self.chunk.len() >= CHUNK {
            self.flush_chunk().await?;
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
        if let Some(mut file) = self.current.take() {
            let _ = file.writer.abort().await;
        }
        self.files
    }
}
