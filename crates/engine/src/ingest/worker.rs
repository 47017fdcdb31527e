//! A parse worker: turns chunks of lines into rows of the per-type tables and
//! streams them into Parquet files. Each worker owns its writers, so parsing,
//! encoding and compression all run in parallel.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use tokio::runtime::Handle;

use super::IngestError;
use super::batch::{RejectBatchBuilder, ResourceBatchBuilder};
use super::progress::Progress;
use super::reader::{Chunk, Work};
use super::record::{RejectReason, deletions, validate};
use super::source::SourceFile;
use crate::fhir::{PatientCompartment, ResourceTypes};
use crate::index::writer::{CompartmentReferences, IndexTarget, IndexWriter};
use crate::json;
use crate::search::SearchRegistry;
use crate::store::StoreLocation;
use crate::view::catalog::view_table_key;
use crate::view::materialize::{ViewBuffers, ViewScratch, ViewTableWriter};
use crate::view::{ViewCatalog, ViewRunner, ViewVariables};
use crate::warehouse::parquet_file::ParquetFileWriter;
use crate::warehouse::schema::{rejects_schema, resource_schema};
use crate::warehouse::{DataFile, REJECTS_TABLE, TOMBSTONES_TABLE};
use datafusion::arrow::array::RecordBatch;

/// A batch is handed to the Parquet writer at this much raw JSON…
const BATCH_BYTES: usize = 4 * 1024 * 1024;
/// …or this many rows.
const BATCH_ROWS: usize = 8192;
/// Open row groups of one worker may hold this much encoded data in total;
/// beyond it the largest is closed early, so memory does not grow with the
/// number of tables a load touches.
const OPEN_ROW_GROUPS_BUDGET: usize = 64 * 1024 * 1024;
/// Files are rolled at this (approximate, compressed) size.
const FILE_BYTES: u64 = 256 * 1024 * 1024;

/// What every worker of one load shares.
pub struct WorkerContext<'a> {
    /// The files being loaded, in load order.
    pub files: &'a [SourceFile],
    /// Warehouse root the data files go to.
    pub root: &'a StoreLocation,
    /// Unique prefix of this load's file names.
    pub token: &'a str,
    /// The load's timestamp (µs since the epoch, UTC).
    pub loaded_at: i64,
    /// Runtime for object-store calls.
    pub handle: Handle,
    /// Record bad lines in `_rejects` instead of failing.
    pub skip_invalid: bool,
    /// R4 resource types.
    pub types: &'static ResourceTypes,
    /// The R4 Patient compartment.
    pub compartment: &'static PatientCompartment,
    /// Set when the load must stop (a failure elsewhere).
    pub cancel: &'a AtomicBool,
    /// Shared counters.
    pub progress: &'a Progress,
    /// Views materialized at load.
    pub views: &'a ViewCatalog,
    /// One runner per view of `views`.
    pub runners: &'a [ViewRunner<'a>],
    /// Search parameters to index (`None`: no search index).
    pub search: Option<&'static SearchRegistry>,
}

/// Files a worker wrote for one table.
#[derive(Debug, Default)]
pub struct TableOutput {
    /// Completed files.
    pub files: Vec<DataFile>,
    /// Resources written.
    pub resources: u64,
}

/// A resource a deletion Bundle line deletes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deletion {
    /// Its type.
    pub resource_type: &'static str,
    /// Its id.
    pub id: String,
    /// Position of the deleting line in the load (`load_seq`).
    pub load_seq: i64,
}

/// Time one worker spent in each stage of turning lines into tables: wall
/// time of its thread, which with one worker per core is about its CPU time.
/// Reading and gunzipping run on other threads and are not counted.
#[derive(Debug, Default, Clone, Copy)]
pub struct StageTimes {
    /// JSON parsing and validation.
    pub parse: Duration,
    /// View rows: FHIRPath evaluation, Arrow batches, Parquet encoding.
    pub views: Duration,
    /// Search index: extraction, sorting and writing runs.
    pub index: Duration,
    /// Resource tables: compartments, Arrow batches, Parquet encoding.
    pub tables: Duration,
}

impl StageTimes {
    /// Adds another worker's times.
    pub fn add(&mut self, other: &StageTimes) {
        self.parse += other.parse;
        self.views += other.views;
        self.index += other.index;
        self.tables += other.tables;
    }
}

/// Everything a worker wrote (also on failure, so the caller can delete it).
#[derive(Debug, Default)]
pub struct WorkerOutput {
    /// Per table name (resource types and `_rejects`).
    pub tables: BTreeMap<String, TableOutput>,
    /// Resources deleted by deletion Bundle lines.
    pub deletions: Vec<Deletion>,
    /// What the index writer found (see [`IndexWriter::compartment_references`]).
    pub compartment_references: CompartmentReferences,
    /// Where the worker's time went.
    pub stages: StageTimes,
}

/// Why a line produced no row.
enum RowError {
    /// The line's fault: reject it.
    Reject(RejectReason),
    /// Writing failed: the load fails.
    Fatal(IngestError),
}

struct OpenTable {
    builder: ResourceBatchBuilder,
    writer: Option<ParquetFileWriter>,
    output: TableOutput,
}

struct Worker<'a> {
    index: usize,
    ctx: &'a WorkerContext<'a>,
    tables: BTreeMap<&'static str, OpenTable>,
    rejects: RejectBatchBuilder,
    rejects_writer: Option<ParquetFileWriter>,
    rejects_output: TableOutput,
    patients: Vec<String>,
    view_buffers: ViewBuffers,
    /// One resource's view rows before they are buffered.
    view_scratch: ViewScratch,
    /// Per view of the current resource: (view, first cell, rows).
    view_spans: Vec<(usize, usize, usize)>,
    /// Per view: its constants and `%rowIndex`, reused across resources.
    view_variables: Vec<ViewVariables>,
    view_writers: Vec<Option<ViewTableWriter>>,
    view_outputs: Vec<TableOutput>,
    search_index: Option<IndexWriter<'a>>,
    deletions: Vec<Deletion>,
    stages: StageTimes,
}

/// Runs worker `index` until the channel closes. On error, the error is
/// returned beside the output written so far.
pub fn run_worker(
    index: usize,
    ctx: &WorkerContext<'_>,
    rx: &Mutex<Receiver<Work>>,
) -> (WorkerOutput, Option<IngestError>) {
    let mut worker = Worker {
        index,
        ctx,
        tables: BTreeMap::new(),
        rejects: RejectBatchBuilder::default(),
        rejects_writer: None,
        rejects_output: TableOutput::default(),
        patients: Vec::new(),
        view_buffers: ViewBuffers::new(&ctx.runners.iter().collect::<Vec<_>>()),
        view_scratch: ViewScratch::default(),
        view_spans: Vec::new(),
        view_variables: ctx.runners.iter().map(ViewRunner::variables).collect(),
        view_writers: ctx.runners.iter().map(|_| None).collect(),
        view_outputs: ctx.runners.iter().map(|_| TableOutput::default()).collect(),
        search_index: ctx.search.map(|registry| {
            let target = IndexTarget {
                root: ctx.root,
                token: ctx.token,
                part: format!("w{index}"),
                handle: ctx.handle.clone(),
            };
            IndexWriter::new(target, registry)
        }),
        deletions: Vec::new(),
        stages: StageTimes::default(),
    };
    let mut error = None;
    loop {
        let work = match rx.lock() {
            Ok(guard) => guard.recv(),
            Err(_) => break,
        };
        let Ok(work) = work else { break };
        // After a failure keep draining, so readers never block on a full channel.
        if error.is_some() || ctx.cancel.load(Ordering::Relaxed) {
            continue;
        }
        let result = match work {
            Work::Lines(chunk) => worker.process(&chunk),
            Work::Unreadable { file, line, reason } => {
                worker.reject(file, line, RejectReason::Unreadable(reason), None)
            }
        };
        if let Err(e) = result {
            ctx.cancel.store(true, Ordering::Relaxed);
            error = Some(e);
        }
    }
    if error.is_none() && !ctx.cancel.load(Ordering::Relaxed) {
        if let Err(e) = worker.close() {
            error = Some(e);
        }
    } else {
        worker.abort();
    }
    let output = worker.into_output();
    // The worker's buffers are freed now; hand their pages back before the
    // merge phase allocates on other threads (see `release_free_memory`).
    super::release_free_memory();
    (output, error)
}

impl<'a> Worker<'a> {
    fn process(&mut self, chunk: &Chunk) -> Result<(), IngestError> {
        let data = &chunk.data;
        let mut start = 0;
        for i in 0.. {
            if start > data.len() {
                break;
            }
            // memchr finds line ends far faster than a byte-wise split.
            let end = memchr::memchr(b'\n', &data[start..]).map_or(data.len(), |n| start + n);
            let line = &data[start..end];
            start = end + 1;
            let line_no = chunk.first_line + i as u64;
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let text = match std::str::from_utf8(line) {
                Ok(text) => text,
                Err(e) => {
                    let reason = RejectReason::InvalidUtf8 {
                        offset: e.valid_up_to(),
                    };
                    self.reject(chunk.file, line_no, reason, Some(&String::from_utf8_lossy(line)))?;
                    continue;
                }
            };
            if let Err(reason) = self.add_resource(chunk.file, line_no, text)? {
                self.reject(chunk.file, line_no, reason, Some(text))?;
            }
        }
        Ok(())
    }

    /// Parses and buffers one resource. The outer error is fatal (writing
    /// failed), the inner one is the line's fault.
    fn add_resource(&mut self, file: usize, line_no: u64, text: &str) -> Result<Result<(), RejectReason>, IngestError> {
        let name = match self.append_row(file, line_no, text) {
            Ok(name) => name,
            Err(RowError::Reject(reason)) => return Ok(Err(reason)),
            Err(RowError::Fatal(error)) => return Err(error),
        };
        let full = self
            .tables
            .get(name)
            .is_some_and(|t| t.builder.bytes() >= BATCH_BYTES || t.builder.rows() >= BATCH_ROWS);
        if full {
            let started = Instant::now();
            self.flush_table(name, false)?;
            self.enforce_memory_budget()?;
            self.stages.tables += started.elapsed();
        }
        Ok(Ok(()))
    }

    /// Closes the largest open row group while all of them together exceed
    /// [`OPEN_ROW_GROUPS_BUDGET`].
    fn enforce_memory_budget(&mut self) -> Result<(), IngestError> {
        loop {
            let mut writers: Vec<&mut ParquetFileWriter> = self
                .tables
                .values_mut()
                .filter_map(|t| t.writer.as_mut())
                .chain(
                    self.view_writers
                        .iter_mut()
                        .filter_map(|w| w.as_mut().and_then(ViewTableWriter::open_file)),
                )
                .collect();
            let total: usize = writers.iter().map(|w| w.in_progress_size()).sum();
            if total <= OPEN_ROW_GROUPS_BUDGET {
                return Ok(());
            }
            let Some(largest) = writers.iter_mut().max_by_key(|w| w.in_progress_size()) else {
                return Ok(());
            };
            largest.flush_row_group()?;
        }
    }

    fn view_writer(&mut self, i: usize) -> &mut ViewTableWriter {
        let (ctx, index, buffers) = (self.ctx, self.index, &self.view_buffers);
        self.view_writers[i].get_or_insert_with(|| {
            let (schema, part) = (buffers.schema(i), format!("w{index}"));
            ViewTableWriter::new(
                ctx.root,
                ctx.views.name(i),
                ctx.token,
                &part,
                schema,
                ctx.handle.clone(),
            )
        })
    }

    fn write_view(&mut self, i: usize, batch: &RecordBatch) -> Result<(), IngestError> {
        self.view_writer(i).write(batch)?;
        self.enforce_memory_budget()
    }

    /// Validates a line and buffers its row and its views' rows; returns its
    /// type. The views' rows are computed and converted to their column
    /// types before anything is buffered, so a view error leaves no partial
    /// output.
    fn append_row(&mut self, file: usize, line_no: u64, text: &str) -> Result<&'static str, RowError> {
        let started = Instant::now();
        let value = json::parse(text).map_err(|e| RowError::Reject(e.into()))?;
        let seq = ((file as i64) << 32) | (line_no as i64 & 0xFFFF_FFFF);
        if let Some(deleted) = deletions(&value, self.ctx.types).map_err(RowError::Reject)? {
            self.deletions
                .extend(deleted.into_iter().map(|(resource_type, id)| Deletion {
                    resource_type,
                    id: id.to_string(),
                    load_seq: seq,
                }));
            return Ok(TOMBSTONES_TABLE);
        }
        let header = validate(&value, self.ctx.types).map_err(RowError::Reject)?;
        let parsed = Instant::now();
        self.stages.parse += parsed - started;
        let views = self.ctx.views.for_type(header.resource_type);
        let rejected = |i: usize, e: crate::view::ViewError| {
            RowError::Reject(RejectReason::View {
                view: self.ctx.views.name(i).to_string(),
                message: e.to_string(),
            })
        };
        // Every view's rows, converted to their column types: one
        // row-major run of values per view.
        let mut typed = self.view_scratch.take_typed();
        self.view_spans.clear();
        for &i in views {
            let start = typed.len();
            let rows = self.ctx.runners[i].typed_rows_into(&value, &mut self.view_variables[i], &mut typed);
            self.view_spans.push((i, start, rows.map_err(|e| rejected(i, e))?));
        }
        let viewed = Instant::now();
        self.stages.views += viewed - parsed;
        self.patients.clear();
        self.ctx
            .compartment
            .patients_of(header.resource_type, &value, &mut self.patients);
        let table = self.tables.entry(header.resource_type).or_insert_with(|| OpenTable {
            builder: ResourceBatchBuilder::default(),
            writer: None,
            output: TableOutput::default(),
        });
        table.builder.append(&header, seq, &self.patients, text);
        let appended = Instant::now();
        self.stages.tables += appended - viewed;
        if let Some(index) = self.search_index.as_mut() {
            index
                .add(header.resource_type, &value, &self.patients)
                .map_err(|e| RowError::Fatal(e.into()))?;
            self.stages.index += appended.elapsed();
        }
        self.ctx.progress.resources.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        for k in 0..self.view_spans.len() {
            let (i, start, rows) = self.view_spans[k];
            let end = self.view_spans.get(k + 1).map_or(typed.len(), |next| next.1);
            self.view_outputs[i].resources += rows as u64;
            let batch = self.view_buffers.push(i, &typed[start..end], rows);
            let batch = batch.map_err(|e| RowError::Fatal(IngestError::View(e.into())))?;
            // A type seen by this worker gets a file for each of its views, even an empty one.
            self.view_writer(i);
            if let Some(batch) = batch {
                self.write_view(i, &batch).map_err(RowError::Fatal)?;
            }
        }
        self.view_scratch.put_typed(typed);
        self.stages.views += started.elapsed();
        Ok(header.resource_type)
    }

    fn reject(
        &mut self,
        file: usize,
        line: u64,
        reason: RejectReason,
        content: Option<&str>,
    ) -> Result<(), IngestError> {
        let file_name = &self.ctx.files[file].url;
        if !self.ctx.skip_invalid {
            return Err(IngestError::InvalidLine {
                file: file_name.clone(),
                line,
                reason,
            });
        }
        tracing::debug!(file = %file_name, line, %reason, "rejected line");
        self.rejects.append(file_name, line, &reason.to_string(), content);
        self.ctx.progress.rejected.fetch_add(1, Ordering::Relaxed);
        if self.rejects.rows() >= BATCH_ROWS {
            self.flush_rejects()?;
        }
        Ok(())
    }

    fn new_writer(
        &self,
        table: &str,
        n: usize,
        schema: datafusion::arrow::datatypes::SchemaRef,
    ) -> Result<ParquetFileWriter, IngestError> {
        let path = format!("tables/{table}/{}-w{}-{n:05}.parquet", self.ctx.token, self.index);
        Ok(ParquetFileWriter::create(
            self.ctx.root,
            path,
            schema,
            self.ctx.handle.clone(),
        )?)
    }

    fn flush_table(&mut self, name: &'static str, last: bool) -> Result<(), IngestError> {
        let Some(mut table) = self.tables.remove(name) else {
            return Ok(());
        };
        let result = (|| {
            if table.builder.rows() > 0 {
                let batch = table.builder.finish(self.ctx.loaded_at)?;
                let writer = match table.writer.as_mut() {
                    Some(w) => w,
                    None => table
                        .writer
                        .insert(self.new_writer(name, table.output.files.len(), resource_schema())?),
                };
                writer.write(&batch)?;
                table.output.resources += batch.num_rows() as u64;
            }
            let roll = table
                .writer
                .as_ref()
                .is_some_and(|w| last || w.approximate_size() >= FILE_BYTES);
            if roll && let Some(w) = table.writer.take() {
                table.output.files.push(w.finish()?);
            }
            Ok(())
        })();
        self.tables.insert(name, table);
        result
    }

    fn flush_rejects(&mut self) -> Result<(), IngestError> {
        if self.rejects.rows() > 0 {
            let batch = self.rejects.finish(self.ctx.loaded_at)?;
            if self.rejects_writer.is_none() {
                self.rejects_writer = Some(self.new_writer(REJECTS_TABLE, 0, rejects_schema())?);
            }
            if let Some(w) = self.rejects_writer.as_mut() {
                w.write(&batch)?;
            }
            self.rejects_output.resources += batch.num_rows() as u64;
        }
        Ok(())
    }

    fn close(&mut self) -> Result<(), IngestError> {
        let started = Instant::now();
        let names: Vec<&'static str> = self.tables.keys().copied().collect();
        for name in names {
            self.flush_table(name, true)?;
        }
        self.flush_rejects()?;
        if let Some(w) = self.rejects_writer.take() {
            self.rejects_output.files.push(w.finish()?);
        }
        let tables_closed = Instant::now();
        self.stages.tables += tables_closed - started;
        for i in 0..self.view_writers.len() {
            if self.view_writers[i].is_none() {
                continue;
            }
            let batch = self.view_buffers.take(i).map_err(|e| IngestError::View(e.into()))?;
            if batch.num_rows() > 0 {
                self.write_view(i, &batch)?;
            }
            if let Some(w) = self.view_writers[i].take() {
                self.view_outputs[i].files.extend(w.finish()?);
            }
        }
        let views_closed = Instant::now();
        self.stages.views += views_closed - tables_closed;
        if let Some(index) = self.search_index.as_mut() {
            index.finish()?;
            self.stages.index += views_closed.elapsed();
        }
        Ok(())
    }

    fn abort(&mut self) {
        for table in self.tables.values_mut() {
            if let Some(w) = table.writer.take() {
                w.abort();
            }
        }
        if let Some(w) = self.rejects_writer.take() {
            w.abort();
        }
        for i in 0..self.view_writers.len() {
            if let Some(w) = self.view_writers[i].take() {
                self.view_outputs[i].files.extend(w.abort());
            }
        }
    }

    fn into_output(self) -> WorkerOutput {
        let mut tables: BTreeMap<String, TableOutput> = self
            .tables
            .into_iter()
            .map(|(name, t)| (name.to_string(), t.output))
            .collect();
        if !self.rejects_output.files.is_empty() {
            tables.insert(REJECTS_TABLE.to_string(), self.rejects_output);
        }
        for (i, output) in self.view_outputs.into_iter().enumerate() {
            if !output.files.is_empty() {
                tables.insert(view_table_key(self.ctx.views.name(i)), output);
            }
        }
        let compartment_references = self
            .search_index
            .as_ref()
            .map(IndexWriter::compartment_references)
            .unwrap_or_default();
        // Index runs are reported also after a failure, so they get deleted.
        if let Some(index) = self.search_index {
            for (key, output) in index.into_outputs() {
                tables.insert(
                    key,
                    TableOutput {
                        files: output.files,
                        resources: output.rows,
                    },
                );
            }
        }
        WorkerOutput {
            tables,
            deletions: self.deletions,
            compartment_references,
            stages: self.stages,
        }
    }
}
