//! Arrow builders for the rows ingest writes.

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, Int64Builder, ListBuilder, RecordBatch, StringBuilder, TimestampMicrosecondArray,
    TimestampMicrosecondBuilder,
};
use datafusion::arrow::error::ArrowError;

use super::record::ResourceHeader;
use crate::warehouse::schema::{rejects_schema, resource_schema, timestamp_type};

/// A batch of at least this much raw JSON sizes the next batch's buffer…
const PRESIZE_FROM_BYTES: usize = 256 * 1024;
/// …to at most this (the workers flush a batch at 4 MiB of JSON).
const PRESIZE_MAX_BYTES: usize = 4 * 1024 * 1024;

/// Accumulates rows of one resource table.
pub struct ResourceBatchBuilder {
    id: StringBuilder,
    version_id: StringBuilder,
    last_updated: TimestampMicrosecondBuilder,
    load_seq: Int64Builder,
    patients: ListBuilder<StringBuilder>,
    resource: StringBuilder,
    rows: usize,
    bytes: usize,
}

impl Default for ResourceBatchBuilder {
    fn default() -> Self {
        Self {
            id: StringBuilder::new(),
            version_id: StringBuilder::new(),
            last_updated: TimestampMicrosecondBuilder::new().with_data_type(timestamp_type()),
            load_seq: Int64Builder::new(),
            patients: ListBuilder::new(StringBuilder::new()),
            resource: StringBuilder::new(),
            rows: 0,
            bytes: 0,
        }
    }
}

impl ResourceBatchBuilder {
    /// Adds one resource: its header, load position, compartment patients and raw JSON.
    pub fn append(&mut self, header: &ResourceHeader<'_>, load_seq: i64, patients: &[String], raw: &str) {
        self.id.append_value(header.id);
        self.version_id.append_option(header.version_id);
        self.last_updated.append_option(header.last_updated);
        self.load_seq.append_value(load_seq);
        for p in patients {
            self.patients.values().append_value(p);
        }
        self.patients.append(true);
        self.resource.append_value(raw);
        self.rows += 1;
        self.bytes += raw.len();
    }

    /// Rows buffered.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Raw JSON bytes buffered (the dominant part of the memory used).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Takes the buffered rows as a batch, stamping `loaded_at` (µs, UTC).
    pub fn finish(&mut self, loaded_at: i64) -> Result<RecordBatch, ArrowError> {
        let (rows, bytes) = (self.rows, self.bytes);
        self.rows = 0;
        self.bytes = 0;
        let loaded: TimestampMicrosecondArray =
            TimestampMicrosecondArray::from(vec![loaded_at; rows]).with_timezone("UTC");
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.id.finish()),
            Arc::new(self.version_id.finish()),
            Arc::new(self.last_updated.finish()),
            Arc::new(loaded),
            Arc::new(self.load_seq.finish()),
            Arc::new(self.patients.finish()),
            Arc::new(self.resource.finish()),
        ];
        // A table that filled a large batch will likely fill the next one:
        // size its JSON buffer once instead of doubling it a dozen times
        // (each doubling copied the whole buffer; ~1 % of a load). The
        // memory is what the batch reached anyway (see `BATCH_BYTES`).
        if bytes >= PRESIZE_FROM_BYTES {
            // Capped: one huge line must not size every later batch.
            let expected = bytes.min(PRESIZE_MAX_BYTES);
            self.resource = StringBuilder::with_capacity(rows, expected + expected / 8);
        }
        RecordBatch::try_new(resource_schema(), columns)
    }
}

/// Accumulates rows of `_rejects`.
#[derive(Default)]
pub struct RejectBatchBuilder {
    file: StringBuilder,
    line: Int64Builder,
    reason: StringBuilder,
    content: StringBuilder,
    rows: usize,
}

impl RejectBatchBuilder {
    /// Adds one rejected line.
    pub fn append(&mut self, file: &str, line: u64, reason: &str, content: Option<&str>) {
        self.file.append_value(file);
        self.line.append_value(i64::try_from(line).unwrap_or(i64::MAX));
        self.reason.append_value(reason);
        self.content.append_option(content);
        self.rows += 1;
    }

    /// Rows buffered.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Takes the buffered rows as a batch.
    pub fn finish(&mut self, loaded_at: i64) -> Result<RecordBatch, ArrowError> {
        let rows = self.rows;
        self.rows = 0;
        let loaded = TimestampMicrosecondArray::from(vec![loaded_at; rows]).with_timezone("UTC");
        let columns: Vec<ArrayRef> = vec![
            Arc::new(loaded),
            Arc::new(self.file.finish()),
            Arc::new(self.line.finish()),
            Arc::new(self.reason.finish()),
            Arc::new(self.content.finish()),
        ];
        RecordBatch::try_new(rejects_schema(), columns)
    }
}
