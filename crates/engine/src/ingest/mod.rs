//! Loading FHIR R4 bulk NDJSON into the warehouse.
//!
//! Data flow: reader threads stream files (object store → gunzip) into chunks
//! of whole lines → a bounded channel → worker threads parse each line once,
//! validate it, compute its Patient compartment and append it to per-type Arrow
//! builders that stream into Parquet files → after all input is read, tables
//! that gained duplicate ids are merged to the latest version → one manifest
//! commit makes the whole load visible at once.

pub mod batch;
mod commit;
pub mod progress;
pub mod reader;
pub mod record;
pub mod source;
mod tombstones;
pub mod worker;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;
use tokio::runtime::Handle;

pub use record::RejectReason;
pub use source::{SourceFile, discover};

use self::commit::LoadCommit;
use self::progress::{Progress, ProgressDisplay};
use self::worker::{WorkerContext, WorkerOutput, run_worker};
use crate::fhir::{DefinitionError, PatientCompartment, ResourceTypes};
use crate::index::writer::IndexWriteError;
use crate::search::SearchRegistry;
use crate::store::StoreError;
use crate::view::materialize::MaterializeError;
use crate::view::{ViewCatalog, ViewRunner};
use crate::warehouse::{DataFile, Snapshot, Warehouse, WarehouseError};

/// Index tables merged at once at the end of a load (default; the
/// environment variable `FHIRLAKE_COMPACT_PARALLELISM` overrides it, to
/// measure, up to [`MAX_COMPACT_PARALLELISM`]).
const COMPACT_PARALLELISM: usize = 2;
/// Each merge holds a blocking thread while its file reads need others
/// (local reads run on the same pool, which the binary caps at 16): more
/// merges at once than the pool can spare would wait on each other forever.
const MAX_COMPACT_PARALLELISM: usize = 4;

fn compact_parallelism() -> usize {
    std::env::var("FHIRLAKE_COMPACT_PARALLELISM")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n >= 1)
        .unwrap_or(COMPACT_PARALLELISM)
        .min(MAX_COMPACT_PARALLELISM)
}

/// Errors of a load. Nothing is committed when a load returns one.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// A line is not a valid FHIR R4 resource (and `--skip-invalid` is off).
    #[error("{file}:{line}: {reason}")]
    InvalidLine {
        /// The file's path or URL.
        file: String,
        /// 1-based line number.
        line: u64,
        /// What is wrong.
        reason: RejectReason,
    },
    /// A source names nothing.
    #[error("source not found: {source_location}")]
    SourceNotFound {
        /// The source as given.
        source_location: String,
    },
    /// A folder source holds no NDJSON.
    #[error("no NDJSON files (*.ndjson, *.ndjson.gz) in {source_location}")]
    NoNdjsonFiles {
        /// The source as given.
        source_location: String,
    },
    /// Reading a source failed (storage, not data).
    #[error("reading {file}: {source}")]
    Read {
        /// The file's path or URL.
        file: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Storage access failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Reading or committing the warehouse failed.
    #[error(transparent)]
    Warehouse(#[from] WarehouseError),
    /// Writing Parquet failed.
    #[error("writing Parquet: {0}")]
    Parquet(#[from] datafusion::parquet::errors::ParquetError),
    /// Building Arrow batches failed.
    #[error("building Arrow batches: {0}")]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
    /// The bundled FHIR definitions are unusable.
    #[error(transparent)]
    Definitions(&'static DefinitionError),
    /// A view could not be materialized.
    #[error(transparent)]
    View(#[from] MaterializeError),
    /// Writing the search index failed.
    #[error(transparent)]
    Index(#[from] IndexWriteError),
    /// A worker thread panicked: a bug in fhirlake, not in the data.
    #[error("a load worker crashed (a bug in fhirlake; please report it with the input); nothing was committed")]
    WorkerPanicked,
    /// A load thread panicked or was cancelled.
    #[error("load thread failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// How to load.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Record invalid lines in `_rejects` and load the rest, instead of failing.
    pub skip_invalid: bool,
    /// Parse threads (default: the machine's cores).
    pub workers: usize,
    /// No progress display.
    pub quiet: bool,
    /// Views to materialize; `None` means the shipped views (`sql/views`).
    pub views: Option<ViewCatalog>,
    /// Write the search index (needed by cohorts and `_typeFilter`).
    pub index: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map(usize::from).unwrap_or(2);
        Self {
            skip_invalid: false,
            workers: cores,
            quiet: false,
            views: None,
            index: true,
        }
    }
}

/// Per-table result of a load.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct TableReport {
    /// Resources (or rejected lines) this load read for the table.
    pub loaded: u64,
    /// Rows in the table after the commit.
    pub rows: u64,
    /// Whether older versions or duplicates were merged away.
    pub merged: bool,
}

/// What a load did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadReport {
    /// The committed warehouse version.
    pub version: u64,
    /// Files read.
    pub files: usize,
    /// Bytes read as stored (compressed for `.gz`).
    pub stored_bytes: u64,
    /// NDJSON bytes after decompression.
    pub ndjson_bytes: u64,
    /// Resources accepted.
    pub resources: u64,
    /// Lines rejected (only with `skip_invalid`).
    pub rejected: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Where the time went.
    pub stages: LoadStages,
    /// Per table.
    pub tables: BTreeMap<String, TableReport>,
}

/// Where a load's time went, in seconds. The per-stage figures are worker
/// time summed over the parse workers (about CPU time: one worker per core);
/// reading and gunzipping run on their own threads and are not in them.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadStages {
    /// Wall time until every line was read and turned into rows and runs.
    pub read_seconds: f64,
    /// Wall time after that: duplicate checks, merges, index compaction, commit.
    pub finish_seconds: f64,
    /// Worker time parsing and validating JSON.
    pub parse_seconds: f64,
    /// Worker time computing and writing view rows.
    pub views_seconds: f64,
    /// Worker time extracting index values and writing sorted runs.
    pub index_seconds: f64,
    /// Worker time building and writing the resource tables.
    pub tables_seconds: f64,
}

impl LoadReport {
    /// NDJSON throughput in MiB/s.
    pub fn mib_per_second(&self) -> f64 {
        self.ndjson_bytes as f64 / (1024.0 * 1024.0) / self.seconds.max(1e-9)
    }
}

/// What a load runs with, prepared before anything is read: the bundled
/// definitions, the views, the files, and the version it will commit.
pub(crate) struct Prepared {
    pub(crate) types: &'static ResourceTypes,
    pub(crate) compartment: &'static PatientCompartment,
    /// Search parameters to index (`None`: `--no-index`).
    pub(crate) search: Option<&'static SearchRegistry>,
    pub(crate) views: ViewCatalog,
    pub(crate) files: Vec<SourceFile>,
    /// The snapshot the load builds on.
    pub(crate) base: Option<Snapshot>,
    /// The version it commits.
    pub(crate) version: u64,
    /// Unique prefix of its file names.
    pub(crate) token: String,
    /// The load's timestamp (µs since the epoch, UTC).
    pub(crate) loaded_at: i64,
}

/// Loads `sources` into `warehouse` and commits one new version. Runs on a
/// multi-threaded tokio runtime (view rebuilds block in place).
///
/// Phases: [`prepare`] (definitions, files, version) → [`read`] (readers
/// and parse workers write every table's files from one parse) →
/// [`LoadCommit::gather`] (the workers' files per table) →
/// [`LoadCommit::run`] (deletions and merges, views, index, the commit) →
/// [`LoadCommit::finish`] (files nothing refers to are deleted).
pub async fn load(warehouse: &Warehouse, sources: &[String], options: &LoadOptions) -> Result<LoadReport, IngestError> {
    let started = Instant::now();
    let prepared = prepare(warehouse, sources, options).await?;
    let progress = Arc::new(Progress::default());
    let outputs = read(warehouse, &prepared, options, &progress).await?;
    let mut commit = LoadCommit::gather(warehouse, &prepared, outputs, &progress, started);
    let result = commit.run(sources).await;
    commit.finish(result, started).await
}

/// Reads the definitions, lists the sources and picks the version to commit.
async fn prepare(warehouse: &Warehouse, sources: &[String], options: &LoadOptions) -> Result<Prepared, IngestError> {
    let types = ResourceTypes::r4().map_err(IngestError::Definitions)?;
    let compartment = PatientCompartment::r4().map_err(IngestError::Definitions)?;
    let search = if options.index {
        Some(SearchRegistry::r4().map_err(IngestError::Definitions)?)
    } else {
        None
    };
    let views = match &options.views {
        Some(v) => v.clone(),
        None => ViewCatalog::shipped().map_err(|e| IngestError::View(e.into()))?,
    };
    let files = discover(sources).await?;
    let base = warehouse.current().await?;
    let version = base.as_ref().map_or(1, |s| s.version + 1);
    Ok(Prepared {
        types,
        compartment,
        search,
        views,
        files,
        base,
        version,
        token: crate::warehouse::unique_token(version),
        loaded_at: chrono::Utc::now().timestamp_micros(),
    })
}

/// Runs the readers and parse workers over every file (blocking threads).
/// On failure the files the workers wrote are deleted and nothing else
/// happens.
async fn read(
    warehouse: &Warehouse,
    prepared: &Prepared,
    options: &LoadOptions,
    progress: &Arc<Progress>,
) -> Result<Vec<WorkerOutput>, IngestError> {
    let total_bytes: u64 = prepared.files.iter().map(|f| f.size).sum();
    tracing::info!(
        files = prepared.files.len(),
        bytes = total_bytes,
        version = prepared.version,
        "loading"
    );
    let display = ProgressDisplay::start(progress.clone(), total_bytes, options.quiet);
    let (root, files, progress, token, options) = (
        warehouse.root().clone(),
        prepared.files.clone(),
        progress.clone(),
        prepared.token.clone(),
        options.clone(),
    );
    let (views, loaded_at, types, compartment, search) = (
        prepared.views.clone(),
        prepared.loaded_at,
        prepared.types,
        prepared.compartment,
        prepared.search,
    );
    let handle = Handle::current();
    let (outputs, error) = tokio::task::spawn_blocking(move || {
        let runners = match views.views().iter().map(ViewRunner::new).collect::<Result<Vec<_>, _>>() {
            Ok(r) => r,
            Err(e) => return (Vec::new(), Some(IngestError::View(e.into()))),
        };
        let cancel = AtomicBool::new(false);
        let ctx = WorkerContext {
            files: &files,
            root: &root,
            token: &token,
            loaded_at,
            handle,
            skip_invalid: options.skip_invalid,
            types,
            compartment,
            cancel: &cancel,
            progress: &progress,
            views: &views,
            runners: &runners,
            search,
        };
        run_pipeline(&ctx, options.workers.max(1))
    })
    .await?;
    display.finish();
    if let Some(error) = error {
        let written: Vec<DataFile> = outputs
            .into_iter()
            .flat_map(|o| o.tables.into_values())
            .flat_map(|t| t.files)
            .collect();
        warehouse.delete_files(&written).await;
        return Err(error);
    }
    Ok(outputs)
}

/// Returns the calling thread's free memory to the OS. mimalloc keeps freed
/// pages in per-thread heaps; without this a parse worker's buffers (several
/// hundred MiB in a large load) stay resident after the worker ends, while
/// the merge phase allocates afresh on other threads, and peak RSS is the
/// sum of both phases instead of the larger. Workers and readers call it
/// as they end. Harmless when mimalloc is not the global allocator (tests,
/// `system-allocator`): its heaps are empty.
fn release_free_memory() {
    // SAFETY: `mi_collect` takes no pointers and may be called from any
    // thread at any time.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

/// Runs readers and workers to completion. Returns every worker's output, and
/// the load's error if any (the failure at the earliest file and line when
/// several lines are bad).
fn run_pipeline(ctx: &WorkerContext<'_>, workers: usize) -> (Vec<WorkerOutput>, Option<IngestError>) {
    let readers = ctx.files.len().clamp(1, 2);
    let (tx, rx) = sync_channel(workers * 2);
    let rx = Mutex::new(rx);
    let next_file = AtomicUsize::new(0);
    let read_errors: Mutex<Vec<IngestError>> = Mutex::new(Vec::new());
    let results = std::thread::scope(|scope| {
        for _ in 0..readers {
            let tx = tx.clone();
            let (next_file, read_errors) = (&next_file, &read_errors);
            scope.spawn(move || {
                loop {
                    let index = next_file.fetch_add(1, Ordering::Relaxed);
                    if index >= ctx.files.len() || ctx.cancel.load(Ordering::Relaxed) {
                        break;
                    }
                    let file = &ctx.files[index];
                    if let Err(e) = reader::read_file(index, file, &ctx.handle, &tx, ctx.cancel, ctx.progress) {
                        ctx.cancel.store(true, Ordering::Relaxed);
                        if let Ok(mut errors) = read_errors.lock() {
                            errors.push(e);
                        }
                        break;
                    }
                }
                // Chunks this reader allocated are freed by the workers.
                release_free_memory();
            });
        }
        drop(tx);
        let handles: Vec<_> = (0..workers)
            .map(|i| {
                scope.spawn({
                    let rx = &rx;
                    move || run_worker(i, ctx, rx)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join()).collect::<Vec<_>>()
    });
    let mut outputs = Vec::new();
    let mut errors: Vec<IngestError> = read_errors.into_inner().unwrap_or_default();
    for result in results {
        match result {
            Ok((output, error)) => {
                outputs.push(output);
                errors.extend(error);
            }
            Err(_) => errors.push(IngestError::WorkerPanicked),
        }
    }
    // Report the earliest bad line, so the message does not depend on thread timing.
    errors.sort_by_key(|e| match e {
        IngestError::InvalidLine { file, line, .. } => (
            0,
            ctx.files.iter().position(|f| &f.url == file).unwrap_or(usize::MAX),
            *line,
        ),
        _ => (1, 0, 0),
    });
    (outputs, errors.into_iter().next())
}
