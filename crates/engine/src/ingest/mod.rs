//! Loading FHIR R4 bulk NDJSON into the warehouse.
//!
//! Data flow: reader threads stream files (object store → gunzip) into chunks
//! of whole lines → a bounded channel → worker threads parse each line once,
//! validate it, compute its Patient compartment and append it to per-type Arrow
//! builders that stream into Parquet files → after all input is read, tables
//! that gained duplicate ids are merged to the latest version → one manifest
//! commit makes the whole load visible at once.

pub mod batch;
pub mod progress;
pub mod reader;
pub mod record;
pub mod source;
pub mod worker;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::StreamExt;
use serde::Serialize;
use tokio::runtime::Handle;

pub use record::RejectReason;
pub use source::{SourceFile, discover};

use self::progress::{Progress, ProgressDisplay};
use self::worker::{StageTimes, WorkerContext, WorkerOutput, run_worker};
use crate::fhir::{DefinitionError, PatientCompartment, ResourceTypes};
use crate::index::compact::compact;
use crate::index::rebuild::rebuild_index;
use crate::index::writer::{CompartmentReferences, IndexWriteError, combine_compartment_references};
use crate::index::{INDEX_TABLE_PREFIX, IndexKind, parse_index_table_key};
use crate::search::SearchRegistry;
use crate::store::StoreError;
use crate::view::catalog::view_table_key;
use crate::view::materialize::{MaterializeError, rebuild_views};
use crate::view::{ViewCatalog, ViewRunner};
use crate::warehouse::merge::{Deletions, has_duplicate_ids, merge_latest, patients_of_deleted};
use crate::warehouse::{
    DataFile, REJECTS_TABLE, Snapshot, TOMBSTONES_TABLE, TableEntry, TableKind, Warehouse, WarehouseError, manifest,
    now_rfc3339,
};

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

/// Loads `sources` into `warehouse` and commits one new version. Runs on a
/// multi-threaded tokio runtime (view rebuilds block in place).
pub async fn load(warehouse: &Warehouse, sources: &[String], options: &LoadOptions) -> Result<LoadReport, IngestError> {
    let started = Instant::now();
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
    let total_bytes: u64 = files.iter().map(|f| f.size).sum();
    let base = warehouse.current().await?;
    let version = base.as_ref().map_or(1, |s| s.version + 1);
    let token = crate::warehouse::unique_token(version);
    let loaded_at = chrono::Utc::now().timestamp_micros();
    tracing::info!(files = files.len(), bytes = total_bytes, version, "loading");

    let progress = Arc::new(Progress::default());
    let display = ProgressDisplay::start(progress.clone(), total_bytes, options.quiet);
    let outputs = {
        let (root, files, progress, token, options) = (
            warehouse.root().clone(),
            files.clone(),
            progress.clone(),
            token.clone(),
            options.clone(),
        );
        let views = views.clone();
        let handle = Handle::current();
        tokio::task::spawn_blocking(move || {
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
        .await?
    };
    display.finish();
    let (outputs, error) = outputs;
    if let Some(error) = error {
        let written: Vec<DataFile> = outputs
            .into_iter()
            .flat_map(|o| o.tables.into_values())
            .flat_map(|t| t.files)
            .collect();
        warehouse.delete_files(&written).await;
        return Err(error);
    }

    // Gather each table's new files over all workers.
    let mut new_files: BTreeMap<String, (Vec<DataFile>, u64)> = BTreeMap::new();
    // Deleted ids per type: (id, load_seq of the deleting line).
    let mut deletions: BTreeMap<String, Vec<(String, i64)>> = BTreeMap::new();
    let mut compartment_references = CompartmentReferences::new();
    let mut stages = StageTimes::default();
    for output in outputs {
        combine_compartment_references(&mut compartment_references, output.compartment_references);
        stages.add(&output.stages);
        for deletion in output.deletions {
            deletions
                .entry(deletion.resource_type.to_string())
                .or_default()
                .push((deletion.id, deletion.load_seq));
        }
        for (name, table) in output.tables {
            let entry = new_files.entry(name).or_default();
            entry.0.extend(table.files);
            entry.1 += table.resources;
        }
    }
    tracing::info!(
        resources = progress.resources.load(Ordering::Relaxed),
        seconds = started.elapsed().as_secs_f64(),
        "input read; merging and committing"
    );
    let mut snapshot = base.clone().unwrap_or_else(|| Snapshot {
        format: manifest::FORMAT.into(),
        ..Default::default()
    });
    let mut report = LoadReport {
        files: files.len(),
        stored_bytes: progress.stored_bytes.load(Ordering::Relaxed),
        ndjson_bytes: progress.ndjson_bytes.load(Ordering::Relaxed),
        resources: progress.resources.load(Ordering::Relaxed),
        rejected: progress.rejected.load(Ordering::Relaxed),
        stages: LoadStages {
            read_seconds: started.elapsed().as_secs_f64(),
            parse_seconds: stages.parse.as_secs_f64(),
            views_seconds: stages.views.as_secs_f64(),
            index_seconds: stages.index.as_secs_f64(),
            tables_seconds: stages.tables.as_secs_f64(),
            ..Default::default()
        },
        ..Default::default()
    };
    let all_new: Vec<DataFile> = new_files.values().flat_map(|(f, _)| f.clone()).collect();
    let mut merged_files: Vec<DataFile> = Vec::new();
    // Index runs replaced by their compacted form: deleted once committed.
    let mut superseded_runs: Vec<DataFile> = Vec::new();
    let result = async {
        let mut merged_types: Vec<String> = Vec::new();
        // Types that only lose resources are rewritten too.
        let no_files = (Vec::new(), 0);
        let mut tables: Vec<(&String, &(Vec<DataFile>, u64))> = new_files.iter().collect();
        for resource_type in deletions.keys() {
            if !new_files.contains_key(resource_type) && snapshot.tables.contains_key(resource_type) {
                tables.push((resource_type, &no_files));
            }
        }
        let mut tombstones = TombstoneRows::default();
        for (name, (files, loaded)) in tables {
            if name.starts_with("views/") || name.starts_with(INDEX_TABLE_PREFIX) {
                continue;
            }
            let deleted = deletions.get(name.as_str()).map(|ids| Deletions {
                ids,
                deleted_at: loaded_at,
            });
            let kind = if name == REJECTS_TABLE {
                TableKind::Rejects
            } else {
                TableKind::Resource
            };
            let old = snapshot.tables.get(name).map(|t| t.files.clone()).unwrap_or_default();
            tracing::debug!(table = name.as_str(), files = files.len(), "checking for duplicate ids");
            let mut merged = false;
            let table_files = if kind == TableKind::Rejects {
                old.into_iter().chain(files.iter().cloned()).collect()
            } else if deleted.is_none() && old.is_empty() && !has_duplicate_ids(warehouse, files).await? {
                files.clone()
            } else {
                merged = true;
                merged_types.push(name.clone());
                let inputs: Vec<DataFile> = old.into_iter().chain(files.iter().cloned()).collect();
                if let Some(deleted) = &deleted {
                    let patients = patients_of_deleted(warehouse, &inputs, deleted).await?;
                    tombstones.add(name, deleted, &patients);
                }
                let out = merge_latest(warehouse, name, &inputs, &token, deleted.as_ref()).await?;
                merged_files.extend(out.iter().cloned());
                out
            };
            let entry = TableEntry::new(kind, table_files);
            report.tables.insert(
                name.clone(),
                TableReport {
                    loaded: *loaded,
                    rows: entry.rows(),
                    merged,
                },
            );
            snapshot.tables.insert(name.clone(), entry);
        }
        // Deletions of resources this warehouse never held are kept too: a
        // downstream copy may hold them.
        for (resource_type, ids) in &deletions {
            if !tombstones.has_type(resource_type) {
                let deleted = Deletions {
                    ids,
                    deleted_at: loaded_at,
                };
                tombstones.add(resource_type, &deleted, &Default::default());
            }
        }
        if !tombstones.is_empty() {
            let count = tombstones.len() as u64;
            let file = tombstones.write(warehouse, &token, loaded_at).await?;
            merged_files.push(file.clone());
            let entry = snapshot
                .tables
                .entry(TOMBSTONES_TABLE.to_string())
                .or_insert_with(|| TableEntry::new(TableKind::Tombstones, Vec::new()));
            entry.files.push(file);
            report.tables.insert(
                TOMBSTONES_TABLE.to_string(),
                TableReport {
                    loaded: count,
                    rows: entry.rows(),
                    merged: false,
                },
            );
        }
        // Views: from the workers' single parse, unless their resource table was
        // merged, in which case they are recomputed from the merged table.
        let runners = views
            .views()
            .iter()
            .map(ViewRunner::new)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| IngestError::View(e.into()))?;
        for resource_type in &merged_types {
            let indexes = views.for_type(resource_type);
            if indexes.is_empty() {
                continue;
            }
            let type_runners: Vec<&ViewRunner<'_>> = indexes.iter().map(|&i| &runners[i]).collect();
            let names: Vec<&str> = indexes.iter().map(|&i| views.name(i)).collect();
            let resource_files = snapshot
                .tables
                .get(resource_type)
                .map(|t| t.files.clone())
                .unwrap_or_default();
            let rebuilt = rebuild_views(warehouse, &resource_files, &type_runners, &names, &token).await?;
            for (&i, files) in indexes.iter().zip(rebuilt) {
                merged_files.extend(files.iter().cloned());
                let key = view_table_key(views.name(i));
                let entry = TableEntry::new(TableKind::View, files);
                let loaded = new_files.get(&key).map_or(0, |(_, n)| *n);
                report.tables.insert(
                    key.clone(),
                    TableReport {
                        loaded,
                        rows: entry.rows(),
                        merged: true,
                    },
                );
                snapshot.tables.insert(key, entry);
            }
        }
        for (name, (files, loaded)) in new_files.iter().filter(|(n, _)| n.starts_with("views/")) {
            if report.tables.contains_key(name) {
                continue;
            }
            let entry = TableEntry::new(TableKind::View, files.clone());
            report.tables.insert(
                name.clone(),
                TableReport {
                    loaded: *loaded,
                    rows: entry.rows(),
                    merged: false,
                },
            );
            snapshot.tables.insert(name.clone(), entry);
        }
        // Index: from the workers' single parse, unless the resource table was
        // merged, in which case all its index tables are rebuilt. Either way
        // the sorted runs are merged into one sorted sequence per table.
        if let Some(registry) = search {
            let mut index_runs: BTreeMap<String, (Vec<DataFile>, bool)> = BTreeMap::new();
            for resource_type in &merged_types {
                let Some(resource_type) = types.get(resource_type) else {
                    continue;
                };
                let resource_files = snapshot
                    .tables
                    .get(resource_type)
                    .map(|t| t.files.clone())
                    .unwrap_or_default();
                let rebuilt =
                    rebuild_index(warehouse, resource_type, &resource_files, &token, registry, compartment).await?;
                snapshot
                    .tables
                    .retain(|key, _| parse_index_table_key(key).is_none_or(|(_, t)| t != resource_type));
                // The rebuild saw every resource of the type, old and new.
                let found = rebuilt.compartment_references.get(resource_type).cloned();
                compartment_references.insert(resource_type.to_string(), found.unwrap_or_default());
                for (key, output) in rebuilt.tables {
                    index_runs.insert(key, (output.files, true));
                }
            }
            for (name, (files, _)) in &new_files {
                let Some((_, resource_type)) = parse_index_table_key(name) else {
                    continue;
                };
                if merged_types.iter().any(|t| t == resource_type) {
                    continue;
                }
                index_runs.insert(name.clone(), (files.clone(), false));
            }
            // Tables are merged two at a time: one merge is a single
            // streaming sort-preserving merge plus a Parquet encoder, about
            // one core's work, and there are dozens of tables.
            let work: Vec<_> = index_runs
                .into_iter()
                .filter_map(|(key, (runs, merged))| {
                    let kind = parse_index_table_key(&key)?.0;
                    Some((key, kind, runs, merged))
                })
                .collect();
            let token = &token;
            let mut compacted: Vec<_> = futures::stream::iter(work)
                .map(|(key, kind, runs, merged)| async move {
                    let files = compact(warehouse, kind, &key, &runs, token).await;
                    (key, runs, merged, files)
                })
                .buffer_unordered(compact_parallelism())
                .collect()
                .await;
            compacted.sort_by(|a, b| a.0.cmp(&b.0));
            let mut first_error = None;
            for (key, runs, merged, files) in compacted {
                if merged {
                    // Rebuilt runs are this load's output too: removed if it fails.
                    merged_files.extend(runs.iter().cloned());
                }
                let files = match files {
                    Ok(files) => files,
                    Err(e) => {
                        first_error.get_or_insert(e);
                        continue;
                    }
                };
                // Runs are scratch files: the compacted files replace them
                // (runs kept as the table's files are not superseded).
                superseded_runs.extend(runs.iter().filter(|r| !files.contains(r)).cloned());
                merged_files.extend(files.iter().cloned());
                let loaded = new_files.get(&key).map_or(0, |(_, n)| *n);
                let entry = snapshot
                    .tables
                    .entry(key.clone())
                    .or_insert_with(|| TableEntry::new(TableKind::Index, Vec::new()));
                // Index tables in this loop are new or rebuilt whole, so
                // what the writers found holds for the whole table. An entry
                // that already has files (index rows left by a `--no-index`
                // load that emptied the type) gets no list: the check never
                // saw those rows.
                let had_files = !entry.files.is_empty();
                entry.files.extend(files);
                if let Some((IndexKind::Reference, resource_type)) = parse_index_table_key(&key) {
                    entry.compartment_references = match compartment_references.get(resource_type) {
                        Some(params) if !had_files => params.iter().cloned().collect(),
                        _ => Vec::new(),
                    };
                }
                report.tables.insert(
                    key,
                    TableReport {
                        loaded,
                        rows: entry.rows(),
                        merged,
                    },
                );
            }
            if let Some(e) = first_error {
                return Err(e.into());
            }
        }
        snapshot.version = version;
        snapshot.committed_at = now_rfc3339();
        snapshot.operation = "load".into();
        snapshot.operation_details = serde_json::json!({
            "sources": sources,
            "files": files.len(),
            "resources": report.resources,
            "rejected": report.rejected,
            "loaded_at": loaded_at,
        });
        warehouse.commit(&snapshot).await?;
        Ok::<(), IngestError>(())
    }
    .await;
    if let Err(e) = result {
        warehouse.delete_files(&all_new).await;
        warehouse.delete_files(&merged_files).await;
        warehouse.delete_files(&superseded_runs).await;
        return Err(e);
    }
    warehouse.delete_files(&superseded_runs).await;
    // New files that a merge superseded were never visible: remove them.
    let superseded: Vec<DataFile> = new_files
        .iter()
        .filter(|(name, _)| !name.starts_with(INDEX_TABLE_PREFIX))
        .filter(|(name, _)| report.tables.get(name.as_str()).is_none_or(|t| t.merged))
        .flat_map(|(_, (files, _))| files.clone())
        .collect();
    warehouse.delete_files(&superseded).await;
    report.version = version;
    report.seconds = started.elapsed().as_secs_f64();
    report.stages.finish_seconds = report.seconds - report.stages.read_seconds;
    Ok(report)
}

/// Tombstone rows gathered by a load, written as one file of `_tombstones`.
#[derive(Default)]
struct TombstoneRows {
    types: Vec<String>,
    ids: Vec<String>,
    seqs: Vec<i64>,
    patients: Vec<Vec<String>>,
}

impl TombstoneRows {
    fn add(
        &mut self,
        resource_type: &str,
        deleted: &Deletions<'_>,
        patients: &std::collections::HashMap<String, Vec<String>>,
    ) {
        for (id, seq) in deleted.ids {
            self.types.push(resource_type.to_string());
            self.ids.push(id.clone());
            self.seqs.push(*seq);
            self.patients.push(patients.get(id).cloned().unwrap_or_default());
        }
    }

    fn has_type(&self, resource_type: &str) -> bool {
        self.types.iter().any(|t| t == resource_type)
    }

    fn len(&self) -> usize {
        self.ids.len()
    }

    fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    async fn write(self, warehouse: &Warehouse, token: &str, loaded_at: i64) -> Result<DataFile, IngestError> {
        use datafusion::arrow::array::{
            ArrayRef, Int64Array, ListBuilder, StringArray, StringBuilder, TimestampMicrosecondArray,
        };
        let rows = self.ids.len();
        let mut patients = ListBuilder::new(StringBuilder::new());
        for list in &self.patients {
            for p in list {
                patients.values().append_value(p);
            }
            patients.append(true);
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(self.types)),
            Arc::new(StringArray::from(self.ids)),
            Arc::new(TimestampMicrosecondArray::from(vec![loaded_at; rows]).with_timezone("UTC")),
            Arc::new(Int64Array::from(self.seqs)),
            Arc::new(patients.finish()),
        ];
        let schema = crate::warehouse::schema::tombstones_schema();
        let batch = datafusion::arrow::record_batch::RecordBatch::try_new(schema.clone(), columns)
            .map_err(|e| IngestError::Warehouse(WarehouseError::DataFusion(e.into())))?;
        let root = warehouse.root().clone();
        let path = format!("tables/{TOMBSTONES_TABLE}/{token}-0.parquet");
        let handle = Handle::current();
        let file = tokio::task::spawn_blocking(move || -> Result<DataFile, WarehouseError> {
            let mut writer = crate::warehouse::parquet_file::ParquetFileWriter::create(&root, path, schema, handle)?;
            writer.write(&batch)?;
            Ok(writer.finish()?)
        })
        .await??;
        Ok(file)
    }
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
