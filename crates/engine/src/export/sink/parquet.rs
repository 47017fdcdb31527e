//! Parquet output: one row per resource with `id`, `version_id`,
//! `last_updated` and the resource's JSON (`resource`), zstd-compressed
//! like the warehouse's own files, so any engine reads it and can unpack
//! the JSON it needs.

use std::sync::{Arc, OnceLock};

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::parquet::arrow::AsyncArrowWriter;
use object_store::ObjectStoreExt;
use object_store::buffered::BufWriter;

use super::{ExportedFile, FileNamer};
use crate::export::ExportError;
use crate::warehouse::parquet_file::writer_properties;
use crate::warehouse::schema::{resource_columns, timestamp_type};

/// Schema of an exported Parquet file.
pub fn export_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            Arc::new(Schema::new(vec![
                Field::new(resource_columns::ID, DataType::Utf8, false),
                Field::new(resource_columns::VERSION_ID, DataType::Utf8, true),
                Field::new(resource_columns::LAST_UPDATED, timestamp_type(), true),
                Field::new(resource_columns::RESOURCE, DataType::Utf8, false),
            ]))
        })
        .clone()
}

/// Encoded bytes of a row group in progress at which it is written out.
const ROW_GROUP_BUFFER: usize = 64 * 1024 * 1024;

struct OpenFile {
    name: String,
    path: object_store::path::Path,
    url: String,
    writer: AsyncArrowWriter<BufWriter>,
    count: u64,
}

/// Writes batches of [`export_schema`] into files of about `max_bytes`
/// (checked after each batch).
pub struct ParquetSink {
    namer: FileNamer,
    resource_type: String,
    max_bytes: u64,
    current: Option<OpenFile>,
    files: Vec<ExportedFile>,
}

impl ParquetSink {
    /// A sink naming its files with `namer`.
    pub fn new(namer: FileNamer, resource_type: String, max_bytes: u64) -> Self {
        Self {
            namer,
            resource_type,
            max_bytes: max_bytes.max(1),
            current: None,
            files: Vec::new(),
        }
    }

    /// Appends `batch` (of [`export_schema`]).
    pub async fn write(&mut self, batch: &RecordBatch) -> Result<(), ExportError> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if self.current.is_none() {
            let (name, path, upload) = self.namer.open();
            let url = self.namer.location().url_of(&path);
            let writer =
                AsyncArrowWriter::try_new(upload, export_schema(), Some(writer_properties())).map_err(|e| {
                    ExportError::Parquet {
                        path: url.clone(),
                        source: e,
                    }
                })?;
            self.current = Some(OpenFile {
                name,
                path,
                url,
                writer,
                count: 0,
            });
        }
        let Some(file) = self.current.as_mut() else {
            return Ok(());
        };
        file.writer.write(batch).await.map_err(|e| ExportError::Parquet {
            path: file.url.clone(),
            source: e,
        })?;
        file.count += batch.num_rows() as u64;
        // Large resources would otherwise buffer a whole row group.
        if file.writer.in_progress_size() >= ROW_GROUP_BUFFER {
            file.writer.flush().await.map_err(|e| ExportError::Parquet {
                path: file.url.clone(),
                source: e,
            })?;
        }
        let size = file.writer.bytes_written() + file.writer.in_progress_size();
        if size as u64 >= self.max_bytes {
            self.close_current().await?;
        }
        Ok(())
    }

    async fn close_current(&mut self) -> Result<(), ExportError> {
        if let Some(file) = self.current.take() {
            file.writer.close().await.map_err(|e| ExportError::Parquet {
                path: file.url.clone(),
                source: e,
            })?;
            // The writer's own count misses the footer; ask the store.
            let bytes = self
                .namer
                .location()
                .store
                .head(&file.path)
                .await
                .map_err(|e| ExportError::Write {
                    path: file.url.clone(),
                    source: std::io::Error::other(e),
                })?
                .size;
            self.files.push(ExportedFile {
                resource_type: Some(self.resource_type.clone()),
                name: file.name,
                count: file.count,
                bytes,
            });
        }
        Ok(())
    }

    /// Completes the open file; returns every file written.
    pub async fn finish(mut self) -> Result<Vec<ExportedFile>, ExportError> {
        self.close_current().await?;
        Ok(self.files)
    }

    /// Abandons the open file (its upload is aborted).
    pub async fn abort(mut self) -> Vec<ExportedFile> {
        if let Some(file) = self.current.take() {
            let mut upload = file.writer.into_inner();
            let _ = upload.abort().await;
        }
        self.files
    }
}
