//! Materializing views into warehouse tables, and running views over stored
//! resources: the `resource` column is scanned with DataFusion, partitions in
//! parallel, each resource parsed once for all views of its type.

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use tokio::runtime::Handle;

use super::{ColumnBuilder, Typed, append_rows, finish_batch};
use std::collections::BTreeMap;

use super::catalog::view_table_key;
use super::{ViewCatalog, ViewError, ViewRunner, ViewVariables};
use crate::json;
use crate::store::StoreLocation;
use crate::warehouse::parquet_file::{ParquetFileWriter, view_writer_properties};
use crate::warehouse::scan::scan_resources;
use crate::warehouse::{DataFile, TableEntry, TableKind, Warehouse, WarehouseError};

/// What a consumer of view rows fails with.
pub type SinkError = Box<dyn std::error::Error + Send + Sync>;

/// Rows buffered per view before they become a batch.
pub const VIEW_BATCH_ROWS: usize = 8192;

/// Errors of materializing or running views over the warehouse.
#[derive(Debug, thiserror::Error)]
pub enum MaterializeError {
    /// Reading the warehouse failed.
    #[error(transparent)]
    Warehouse(#[from] WarehouseError),
    /// A view failed on a stored resource.
    #[error("resource {resource}: {source}")]
    View {
        /// `Type/id` of the resource.
        resource: String,
        /// The view error.
        #[source]
        source: ViewError,
    },
    /// A view's own problem (schema, batch).
    #[error(transparent)]
    Invalid(#[from] ViewError),
    /// Writing Parquet failed.
    #[error("writing Parquet: {0}")]
    Parquet(#[from] datafusion::parquet::errors::ParquetError),
    /// A scan thread failed.
    #[error("view scan thread failed")]
    Thread,
    /// The consumer of the rows failed.
    #[error("{0}")]
    Sink(#[source] SinkError),
    /// There is nothing to compute views from.
    #[error("the warehouse is empty: load data first")]
    EmptyWarehouse,
}

/// Rows of several views, appended to Arrow builders, taken as batches
/// when full.
pub struct ViewBuffers {
    schemas: Vec<SchemaRef>,
    builders: Vec<Vec<ColumnBuilder>>,
    rows: Vec<usize>,
    /// For [`ViewBuffers::add`].
    scratch: ViewScratch,
}

impl ViewBuffers {
    /// Buffers for `runners`.
    pub fn new(runners: &[&ViewRunner<'_>]) -> Self {
        let schemas: Vec<SchemaRef> = runners.iter().map(|r| r.schema().clone()).collect();
        Self {
            builders: schemas.iter().map(new_builders).collect(),
            rows: vec![0; schemas.len()],
            scratch: ViewScratch::default(),
            schemas,
        }
    }

    /// Appends `rows` converted rows of view `i` (row-major values, see
    /// [`ViewRunner::typed_rows_into`]); returns a batch when the buffer is
    /// full.
    pub fn push(&mut self, i: usize, values: &[Typed<'_>], rows: usize) -> Result<Option<RecordBatch>, ViewError> {
        append_rows(&self.schemas[i], &mut self.builders[i], values)?;
        self.rows[i] += rows;
        if self.rows[i] >= VIEW_BATCH_ROWS {
            self.take(i).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Runs view `i` (`runner`, with its `vars`) on `resource` and appends
    /// its rows; returns a batch when the buffer is full.
    pub fn add(
        &mut self,
        i: usize,
        runner: &ViewRunner<'_>,
        resource: &json::JsonValue<'_>,
        vars: &mut ViewVariables,
    ) -> Result<Option<RecordBatch>, ViewError> {
        let mut typed = self.scratch.take_typed();
        let batch = runner
            .typed_rows_into(resource, vars, &mut typed)
            .and_then(|rows| self.push(i, &typed, rows));
        self.scratch.put_typed(typed);
        batch
    }

    /// Takes view `i`'s buffered rows as a batch (possibly empty).
    pub fn take(&mut self, i: usize) -> Result<RecordBatch, ViewError> {
        self.rows[i] = 0;
        let batch = finish_batch(&self.schemas[i], &mut self.builders[i]);
        // Finished builders keep no capacity: the next batch would grow
        // every buffer from nothing, copying as it doubles.
        self.builders[i] = new_builders(&self.schemas[i]);
        batch
    }

    /// The schema of view `i`.
    pub fn schema(&self, i: usize) -> SchemaRef {
        self.schemas[i].clone()
    }
}

/// The buffer for one resource's converted view rows, reused across
/// resources. While in use it borrows the resource; between resources it is
/// empty and only keeps its capacity, so building rows allocates nothing
/// per resource in the common case.
#[derive(Default)]
pub struct ViewScratch {
    typed: Vec<Typed<'static>>,
}

impl ViewScratch {
    /// The buffer, empty.
    pub fn take_typed<'b>(&mut self) -> Vec<Typed<'b>> {
        std::mem::take(&mut self.typed)
    }

    /// Gives the buffer back (emptied; its allocation is kept).
    pub fn put_typed(&mut self, mut typed: Vec<Typed<'_>>) {
        typed.clear();
        // An empty vector collected in place: same allocation, no borrow.
        self.typed = typed.into_iter().map(|_| Typed::Null).collect();
    }
}

fn new_builders(schema: &SchemaRef) -> Vec<ColumnBuilder> {
    schema
        .fields()
        .iter()
        .map(|f| ColumnBuilder::new(f.data_type(), VIEW_BATCH_ROWS))
        .collect()
}

/// One view table being written.
pub struct ViewTableWriter {
    root: StoreLocation,
    prefix: String,
    schema: SchemaRef,
    handle: Handle,
    writer: Option<ParquetFileWriter>,
    done: Vec<DataFile>,
}

impl ViewTableWriter {
    /// Files go to `tables/views/<name>/<token>-<part>-NNNNN.parquet`.
    pub fn new(root: &StoreLocation, name: &str, token: &str, part: &str, schema: SchemaRef, handle: Handle) -> Self {
        Self {
            root: root.clone(),
            prefix: format!("tables/views/{name}/{token}-{part}"),
            schema,
            handle,
            writer: None,
            done: Vec::new(),
        }
    }

    /// Appends a batch.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), datafusion::parquet::errors::ParquetError> {
        let writer = match self.writer.as_mut() {
            Some(w) => w,
            None => {
                let path = format!("{}-{:05}.parquet", self.prefix, self.done.len());
                self.writer.insert(ParquetFileWriter::create_with(
                    &self.root,
                    path,
                    self.schema.clone(),
                    self.handle.clone(),
                    view_writer_properties(),
                )?)
            }
        };
        writer.write(batch)?;
        if writer.approximate_size() >= 256 * 1024 * 1024
            && let Some(w) = self.writer.take()
        {
            self.done.push(w.finish()?);
        }
        Ok(())
    }

    /// The open file's writer, if any (for memory accounting).
    pub fn open_file(&mut self) -> Option<&mut ParquetFileWriter> {
        self.writer.as_mut()
    }

    /// Completes the table's files (an empty file when nothing was written, so
    /// the view's schema is always readable).
    pub fn finish(mut self) -> Result<Vec<DataFile>, datafusion::parquet::errors::ParquetError> {
        if self.writer.is_none() && self.done.is_empty() {
            self.write(&RecordBatch::new_empty(self.schema.clone()))?;
        }
        if let Some(w) = self.writer.take() {
            self.done.push(w.finish()?);
        }
        Ok(self.done)
    }

    /// Abandons the files written so far (returns them for deletion).
    pub fn abort(mut self) -> Vec<DataFile> {
        if let Some(w) = self.writer.take() {
            w.abort();
        }
        self.done
    }
}

/// Recomputes the tables of `runners` (views of one resource type) from the
/// resource table `files`; returns each view's new files.
pub async fn rebuild_views(
    warehouse: &Warehouse,
    files: &[DataFile],
    runners: &[&ViewRunner<'_>],
    names: &[&str],
    token: &str,
) -> Result<Vec<Vec<DataFile>>, MaterializeError> {
    let handle = Handle::current();
    let root = warehouse.root().clone();
    let make_state = |p: usize| {
        let buffers = ViewBuffers::new(runners);
        let writers: Vec<ViewTableWriter> = (0..runners.len())
            .map(|i| {
                ViewTableWriter::new(
                    &root,
                    names[i],
                    token,
                    &format!("r{p}"),
                    buffers.schema(i),
                    handle.clone(),
                )
            })
            .collect();
        let variables: Vec<ViewVariables> = runners.iter().map(|r| r.variables()).collect();
        (buffers, writers, variables)
    };
    let process = |state: &mut (ViewBuffers, Vec<ViewTableWriter>, Vec<ViewVariables>),
                   resource: &json::JsonValue<'_>| {
        for (i, runner) in runners.iter().enumerate() {
            let added = state.0.add(i, runner, resource, &mut state.2[i]);
            let added = added.map_err(|source| MaterializeError::View {
                resource: resource_label(resource),
                source,
            })?;
            if let Some(batch) = added {
                state.1[i].write(&batch)?;
            }
        }
        Ok::<(), MaterializeError>(())
    };
    let states = scan_resources(warehouse, files, make_state, process).await?;
    let mut out: Vec<Vec<DataFile>> = runners.iter().map(|_| Vec::new()).collect();
    tokio::task::block_in_place(|| -> Result<(), MaterializeError> {
        for (mut buffers, writers, _) in states {
            for (i, mut writer) in writers.into_iter().enumerate() {
                let batch = buffers.take(i)?;
                if batch.num_rows() > 0 {
                    writer.write(&batch)?;
                }
                out[i].extend(writer.finish()?);
            }
        }
        Ok(())
    })?;
    Ok(out)
}

/// What [`refresh_views`] committed.
#[derive(Debug)]
pub struct RefreshReport {
    /// The new warehouse version.
    pub version: u64,
    /// Rows of each view table recomputed, by table name (`views/<name>`).
    pub tables: BTreeMap<String, u64>,
}

/// Recomputes the table of every view of `catalog` from the stored
/// resources of its type and commits them as a new warehouse version. A
/// view added (or changed) after the data was loaded is otherwise only
/// materialized for the types a later load touches. Types without a
/// resource table are skipped; tables of views outside `catalog` are left
/// as they are. All in one commit: a failure commits nothing and removes
/// the files it wrote, and readers see either every table before or every
/// table after.
pub async fn refresh_views(warehouse: &Warehouse, catalog: &ViewCatalog) -> Result<RefreshReport, MaterializeError> {
    let mut snapshot = warehouse.current().await?.ok_or(MaterializeError::EmptyWarehouse)?;
    let version = snapshot.version + 1;
    let token = crate::warehouse::unique_token(version);
    let runners = catalog
        .views()
        .iter()
        .map(ViewRunner::new)
        .collect::<Result<Vec<_>, _>>()?;
    let mut types: Vec<&str> = catalog.views().iter().map(|v| v.resource.as_str()).collect();
    types.sort_unstable();
    types.dedup();
    let mut written = Vec::new();
    let mut tables = BTreeMap::new();
    let result = async {
        for resource_type in types {
            let Some(resource_table) = snapshot
                .tables
                .get(resource_type)
                .filter(|t| t.kind == TableKind::Resource)
            else {
                continue;
            };
            let files = resource_table.files.clone();
            let indexes = catalog.for_type(resource_type);
            let type_runners: Vec<&ViewRunner<'_>> = indexes.iter().map(|&i| &runners[i]).collect();
            let names: Vec<&str> = indexes.iter().map(|&i| catalog.name(i)).collect();
            let rebuilt = rebuild_views(warehouse, &files, &type_runners, &names, &token).await?;
            for (&i, files) in indexes.iter().zip(rebuilt) {
                written.extend(files.iter().cloned());
                let entry = TableEntry::view(files, resource_type);
                let key = view_table_key(catalog.name(i));
                tables.insert(key.clone(), entry.rows());
                snapshot.tables.insert(key, entry);
            }
        }
        snapshot.version = version;
        snapshot.committed_at = crate::warehouse::now_rfc3339();
        snapshot.operation = "view refresh".into();
        snapshot.operation_details = serde_json::json!({ "views": tables.keys().collect::<Vec<_>>() });
        warehouse.commit(&snapshot).await?;
        Ok::<(), MaterializeError>(())
    }
    .await;
    if let Err(e) = result {
        warehouse.delete_files(&written).await;
        return Err(e);
    }
    Ok(RefreshReport { version, tables })
}

/// `Type/id` of a resource, for messages.
pub fn resource_label(resource: &json::JsonValue<'_>) -> String {
    let t = resource
        .get("resourceType")
        .and_then(json::JsonValue::as_str)
        .unwrap_or("?");
    let id = resource.get("id").and_then(json::JsonValue::as_str).unwrap_or("?");
    format!("{t}/{id}")
}

/// Runs `runner` over the stored resources of its type, in parallel, handing
/// each batch of rows to `sink` (on a writer thread) as soon as it is full.
/// Memory stays bounded: a few batches per partition are in flight. Returns
/// the number of rows.
pub async fn run_view<F>(warehouse: &Warehouse, runner: &ViewRunner<'_>, mut sink: F) -> Result<u64, MaterializeError>
where
    F: FnMut(&RecordBatch) -> Result<(), SinkError> + Send + 'static,
{
    let snapshot = warehouse.current().await?;
    let files = snapshot
        .as_ref()
        .and_then(|s| s.tables.get(&runner.view().resource))
        .map(|t| t.files.clone())
        .unwrap_or_default();
    let (tx, rx) = std::sync::mpsc::sync_channel::<RecordBatch>(4);
    let writer = std::thread::spawn(move || -> Result<u64, MaterializeError> {
        let mut rows = 0u64;
        for batch in rx {
            rows += batch.num_rows() as u64;
            sink(&batch).map_err(MaterializeError::Sink)?;
        }
        Ok(rows)
    });
    type State = (ViewBuffers, std::sync::mpsc::SyncSender<RecordBatch>, ViewVariables);
    let closed = || MaterializeError::Sink("output closed".into());
    let make_state = |_| (ViewBuffers::new(&[runner]), tx.clone(), runner.variables());
    let process = |state: &mut State, resource: &json::JsonValue<'_>| {
        let added = state.0.add(0, runner, resource, &mut state.2);
        let added = added.map_err(|source| MaterializeError::View {
            resource: resource_label(resource),
            source,
        })?;
        if let Some(batch) = added {
            state.1.send(batch).map_err(|_| closed())?;
        }
        Ok(())
    };
    let scanned = scan_resources(warehouse, &files, make_state, process)
        .await
        .and_then(|states| {
            for (mut buffers, sender, _) in states {
                let batch = buffers.take(0)?;
                if batch.num_rows() > 0 {
                    sender.send(batch).map_err(|_| closed())?;
                }
            }
            Ok(())
        });
    drop(tx);
    let rows = tokio::task::block_in_place(|| writer.join()).map_err(|_| MaterializeError::Thread)?;
    // A sink failure explains a scan that stopped on a closed channel.
    let rows = rows?;
    scanned.map(|()| rows)
}
