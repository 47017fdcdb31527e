//! Running an export: one streaming pipeline per resource type, one task
//! per scan partition (both cores busy), each writing its own files.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringArray};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::common::{Column, ScalarValue};
use datafusion::logical_expr::{JoinType, LogicalPlan, LogicalPlanBuilder};
use datafusion::physical_plan::ExecutionPlanProperties;
use datafusion::prelude::{DataFrame, Expr, col, lit};
use futures::StreamExt;
use object_store::ObjectStoreExt;
use serde_json::json;

use super::elements::ElementFilter;
use super::organized;
use super::params::{ExportRequest, OutputFormat, in_scope};
use super::population::{self, Population};
use super::sink::ndjson::NdjsonSink;
use super::sink::parquet::{ParquetSink, export_schema};
use super::sink::{ExportedFile, FileNamer};
use super::{CONTEXT_TYPES, ExportError, Progress};
use crate::cohort::CohortEngine;
use crate::index::columns::RESOURCE_ID;
use crate::search::{SearchQuery, parse_search};
use crate::store::StoreLocation;
use crate::warehouse::catalog::table_provider;
use crate::warehouse::schema::resource_columns::{ID, LAST_UPDATED, LOADED_AT, PATIENTS, RESOURCE, VERSION_ID};
use crate::warehouse::{Snapshot, TOMBSTONES_TABLE, TableKind, Warehouse};

/// Where the files go: a folder (key prefix) in an object store.
#[derive(Debug, Clone)]
pub struct ExportTarget {
    /// The store.
    pub location: StoreLocation,
    /// Folder under the store's prefix (`""` for its root).
    pub dir: String,
}

/// Tunables.
#[derive(Debug, Clone)]
pub struct ExportSettings {
    /// A new file is started when one reaches this size.
    pub max_file_bytes: u64,
    /// A pause after each resource type (tests observe partial manifests
    /// with it; zero otherwise).
    pub type_delay: std::time::Duration,
}

impl Default for ExportSettings {
    fn default() -> Self {
        Self {
            max_file_bytes: 256 * 1024 * 1024,
            type_delay: std::time::Duration::ZERO,
        }
    }
}

/// What an export wrote.
#[derive(Debug, Clone, Default)]
pub struct ExportOutput {
    /// Resource files, by type then name.
    pub output: Vec<ExportedFile>,
    /// OperationOutcome files (warnings, ignored parameters).
    pub error: Vec<ExportedFile>,
    /// Deletion Bundles (`_since`): tombstones of loads that deleted
    /// resources.
    pub deleted: Vec<ExportedFile>,
    /// Resources written.
    pub resources: u64,
    /// Bytes of resource files written.
    pub bytes: u64,
}

impl ExportOutput {
    /// Takes the outcome of writing one type (or the Patient blocks): its
    /// files join `output` (and `written`, for clean-up on failure) and are
    /// announced to pollers; a failure's partial files go to `written`.
    fn add(&mut self, files: TypeResult, written: &mut Vec<String>, progress: &Progress) -> Result<(), ExportError> {
        let files = match files {
            Ok(files) => files,
            Err((e, partial)) => {
                written.extend(partial.into_iter().map(|f| f.name));
                return Err(e);
            }
        };
        written.extend(files.iter().map(|f| f.name.clone()));
        progress.add_finished(&files);
        self.resources += files.iter().map(|f| f.count).sum::<u64>();
        self.bytes += files.iter().map(|f| f.bytes).sum::<u64>();
        self.output.extend(files);
        Ok(())
    }
}

/// Runs `request` over `snapshot`, writing into `target`. `notes` are
/// messages for the error file (parameters ignored under lenient handling).
/// On failure the files written so far are deleted.
pub async fn run_export(
    warehouse: &Warehouse,
    snapshot: Snapshot,
    request: &ExportRequest,
    target: &ExportTarget,
    settings: &ExportSettings,
    notes: &[String],
    progress: &Progress,
) -> Result<ExportOutput, ExportError> {
    let engine = CohortEngine::for_snapshot(warehouse, snapshot).await?;
    // Filters (membership above all) are evaluated inside the Parquet scan,
    // so the `resource` column is decoded only for the rows exported.
    engine
        .session()
        .sql("SET datafusion.execution.parquet.pushdown_filters = true")
        .await?;
    // Resources are large: a default 8192-row batch of them is tens of MB,
    // which the allocator maps and unmaps for every batch (page faults were
    // a quarter of the scan's time). 1024-row batches reuse heap memory.
    engine
        .session()
        .sql("SET datafusion.execution.batch_size = 1024")
        .await?;
    let mut written = Vec::new();
    let result = export_all(&engine, request, target, settings, notes, progress, &mut written).await;
    if result.is_err() {
        for name in written {
            let path = target_path(target, &name);
            let _ = target.location.store.delete(&path).await;
        }
    }
    result
}

fn target_path(target: &ExportTarget, name: &str) -> object_store::path::Path {
    if target.dir.is_empty() {
        target.location.child(name)
    } else {
        target
            .location
            .child(&format!("{}/{name}", target.dir.trim_end_matches('/')))
    }
}

/// The resource types to export, in name order.
fn export_types(snapshot: &Snapshot, request: &ExportRequest) -> Vec<String> {
    snapshot
        .tables
        .iter()
        .filter(|(_, entry)| entry.kind == TableKind::Resource)
        .map(|(name, _)| name.clone())
        .filter(|t| in_scope(&request.level, t))
        .filter(|t| !request.excluded_types.contains(t))
        .filter(|t| match &request.types {
            None => true,
            // Associated Provenance is added even when `_type` omits it
            // (the least restrictive parameter wins).
            Some(types) => types.contains(t) || (request.include_provenance && t == "Provenance"),
        })
        .collect()
}

/// What every type of one export shares: whose data it is, the filters
/// and change window, the types in order, and the references to context
/// types collected on the way.
struct ExportPlan {
    population: Population,
    /// `_typeFilter` searches per type.
    filters: BTreeMap<&'static str, Vec<SearchQuery>>,
    window: ChangeWindow,
    /// The population as a predicate inside each scan (`None`: all rows).
    membership: Option<Expr>,
    /// Types to export; context types last.
    types: Vec<String>,
    /// Whether references to context types are collected (Patient and
    /// Group exports).
    collect_context: bool,
    referenced: SharedReferences,
    /// Members as a table (column `member`), for the Provenance and
    /// Patient-block joins.
    members_plan: Option<LogicalPlan>,
    /// Warnings for the error file.
    notes: Vec<String>,
}

impl ExportPlan {
    async fn new(engine: &CohortEngine, request: &ExportRequest, notes: &[String]) -> Result<Self, ExportError> {
        let population = population::resolve(engine, request).await?;
        let mut filters: BTreeMap<&'static str, Vec<SearchQuery>> = BTreeMap::new();
        for text in &request.type_filters {
            let query = parse_search(text)
                .map_err(|e| ExportError::invalid("_typeFilter", format!("_typeFilter '{text}': {e}")))?;
            filters.entry(query.resource_type).or_default().push(query);
        }
        if !filters.is_empty() && !engine.has_index() {
            return Err(ExportError::NoIndex("_typeFilter"));
        }
        let window = ChangeWindow::new(engine, request).await?;
        let membership = population.scan_predicate();
        let mut types = export_types(engine.snapshot(), request);
        let collect_context = !matches!(population, Population::All);
        // Context types go last: their ids are the references collected while
        // the compartment types are written.
        types.sort_by_key(|t| collect_context && CONTEXT_TYPES.contains(&t.as_str()));
        let members_plan = match &population {
            Population::Members(members) => Some(id_table(engine, "member", members.iter().map(String::as_str))?),
            _ => None,
        };
        Ok(Self {
            population,
            filters,
            window,
            membership,
            types,
            collect_context,
            referenced: Arc::default(),
            members_plan,
            notes: notes.to_vec(),
        })
    }

    /// The scan of `resource_type` with its filters, and what its rows
    /// need; `None` when there is nothing to export (a context type no
    /// exported resource references).
    async fn type_scan<'t>(
        &mut self,
        engine: &CohortEngine,
        resource_type: &'t str,
    ) -> Result<Option<(DataFrame, TypeJob<'t>)>, ExportError> {
        let mut frame = resource_frame(engine, resource_type, &self.window).await?;
        if let Some(queries) = self.filters.get(resource_type) {
            frame = semi_join(engine, engine.resource_ids_plan(queries)?, frame)?;
        }
        let is_context = self.collect_context && CONTEXT_TYPES.contains(&resource_type);
        let mut by_target = false;
        if self.collect_context && resource_type == "Provenance" {
            match self.provenance_ids(engine)? {
                Some(ids) => {
                    frame = semi_join(engine, ids, frame)?;
                    by_target = true;
                }
                None => self.notes.push(
                    "Provenance is exported only when its target is a member's Patient: the warehouse has no search index of Provenance targets".into(),
                ),
            }
        }
        if is_context {
            let ids = self.referenced_ids(resource_type);
            if ids.is_empty() {
                return Ok(None);
            }
            let wanted = id_table(engine, RESOURCE_ID, ids.iter().map(String::as_str))?;
            frame = semi_join(engine, wanted, frame)?;
        }
        // Types selected by id above need no membership test; the others get
        // the membership predicate inside their scan, and then no row test.
        let by_id = is_context || by_target;
        if !by_id && let Some(predicate) = &self.membership {
            frame = frame.filter(predicate.clone())?;
        }
        let job = TypeJob {
            resource_type,
            population: if by_id || self.membership.is_some() {
                Population::All
            } else {
                self.population.clone()
            },
            references: (self.collect_context && !is_context).then(|| self.referenced.clone()),
        };
        Ok(Some((frame, job)))
    }

    /// Provenance of Patient/Group exports: the ids of the Provenance whose
    /// target is an exported resource (not only one naming a Patient
    /// directly); `None` without an index of Provenance targets.
    fn provenance_ids(&self, engine: &CohortEngine) -> Result<Option<LogicalPlan>, ExportError> {
        let targets: Vec<String> = self
            .types
            .iter()
            .filter(|t| *t != "Provenance" && !CONTEXT_TYPES.contains(&t.as_str()))
            .cloned()
            .collect();
        Ok(engine.referencing_ids_plan("Provenance", "target", &targets, self.members_plan.as_ref())?)
    }

    /// The ids of `resource_type` the exported resources referenced.
    fn referenced_ids(&self, resource_type: &str) -> Vec<String> {
        self.referenced
            .lock()
            .map(|set| {
                set.iter()
                    .filter_map(|key| key.split_once('/'))
                    .filter(|(t, _)| *t == resource_type)
                    .map(|(_, id)| id.to_string())
                    .collect()
            })
            .unwrap_or_default()
    }
}

async fn export_all(
    engine: &CohortEngine,
    request: &ExportRequest,
    target: &ExportTarget,
    settings: &ExportSettings,
    notes: &[String],
    progress: &Progress,
    written: &mut Vec<String>,
) -> Result<ExportOutput, ExportError> {
    let mut plan = ExportPlan::new(engine, request, notes).await?;
    let mut output = ExportOutput::default();
    if request.organize_by_patient {
        // Blocks of one patient's resources; context types are not added
        // (the spec lets unreferencing resources be dropped).
        plan.types.retain(|t| !CONTEXT_TYPES.contains(&t.as_str()));
        let files = organized::export_by_patient(
            engine,
            request,
            &plan.window,
            plan.membership.as_ref(),
            plan.members_plan.as_ref(),
            &plan.filters,
            &plan.types,
            target,
            settings,
            progress,
        )
        .await;
        output.add(files, written, progress)?;
        plan.types.clear();
    }
    let types = plan.types.clone();
    for (n, resource_type) in types.iter().enumerate() {
        progress.set(format!(
            "exporting {resource_type} ({} of {} types); {} resources written",
            n + 1,
            types.len(),
            output.resources
        ));
        let Some((frame, job)) = plan.type_scan(engine, resource_type).await? else {
            continue;
        };
        let files = export_type(engine, frame, &job, request, target, settings).await;
        output.add(files, written, progress)?;
        if !settings.type_delay.is_zero() {
            tokio::time::sleep(settings.type_delay).await;
        }
    }
    if request.since.is_some() {
        let files = export_deleted(engine, request, &plan.window, &plan.population, target, settings).await?;
        written.extend(files.iter().map(|f| f.name.clone()));
        output.deleted = files;
    }
    if !plan.notes.is_empty() {
        let files = write_notes(&plan.notes, target, settings).await?;
        written.extend(files.iter().map(|f| f.name.clone()));
        output.error = files;
    }
    progress.set(format!("{} resources written", output.resources));
    Ok(output)
}

/// The export's warnings as an OperationOutcome NDJSON error file.
async fn write_notes(
    notes: &[String],
    target: &ExportTarget,
    settings: &ExportSettings,
) -> Result<Vec<ExportedFile>, ExportError> {
    // Not `OperationOutcome.*`: that name belongs to exported resources.
    let namer = FileNamer::new(
        target.location.clone(),
        &target.dir,
        "OperationOutcome.errors",
        "ndjson",
    );
    let mut sink = NdjsonSink::new(namer, Some("OperationOutcome".into()), settings.max_file_bytes);
    for note in notes {
        let outcome = json!({
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "warning", "code": "not-supported", "diagnostics": note}],
        });
        sink.write_line(&outcome.to_string()).await?;
    }
    sink.finish().await
}

/// DELETE entries per deletion Bundle line.
const DELETIONS_PER_BUNDLE: usize = 500;

/// `deleted[]`: the resources of the export's scope deleted within
/// `_since`/`_until` (tombstones of loads), as NDJSON `transaction` Bundles
/// of `DELETE` entries. A resource that exists again (loaded after its
/// deletion) is not listed, so `deleted` never overlaps `output`.
async fn export_deleted(
    engine: &CohortEngine,
    request: &ExportRequest,
    window: &ChangeWindow,
    population: &Population,
    target: &ExportTarget,
    settings: &ExportSettings,
) -> Result<Vec<ExportedFile>, ExportError> {
    let Some(entry) = engine.snapshot().tables.get(TOMBSTONES_TABLE) else {
        return Ok(Vec::new());
    };
    let ctx = engine.session();
    let provider = table_provider(engine.warehouse(), ctx, TOMBSTONES_TABLE, entry).await?;
    let mut frame = ctx.read_table(provider)?;
    // Deletions: a member who joined late never had what was deleted.
    if let Some(filter) = window.filter(col("deleted_at"), col("deleted_at"), false) {
        frame = frame.filter(filter)?;
    }
    let frame = frame.select(vec![col("resource_type"), col(ID), col(PATIENTS)])?;
    // (type → ids) in scope; tombstones are few, so they are gathered.
    let mut deleted: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
    for batch in frame.collect().await? {
        let keep = population.mask(batch.column(2).as_list::<i32>());
        let text = |i: usize| -> Result<ArrayRef, ExportError> {
            Ok(
                datafusion::arrow::compute::cast(batch.column(i), &datafusion::arrow::datatypes::DataType::Utf8)
                    .map_err(datafusion::error::DataFusionError::from)?,
            )
        };
        let (types, ids) = (text(0)?, text(1)?);
        let (types, ids) = (types.as_string::<i32>(), ids.as_string::<i32>());
        for i in 0..batch.num_rows() {
            let resource_type = types.value(i);
            let wanted = in_scope(&request.level, resource_type)
                && request.types.as_ref().is_none_or(|t| t.contains(resource_type))
                && keep.as_ref().is_none_or(|m| m.value(i));
            if wanted {
                deleted
                    .entry(resource_type.to_string())
                    .or_default()
                    .insert(ids.value(i).to_string());
            }
        }
    }
    // Resources loaded again after their deletion are not deleted.
    for (resource_type, ids) in deleted.iter_mut() {
        let Some(entry) = engine.snapshot().tables.get(resource_type.as_str()) else {
            continue;
        };
        let provider = table_provider(engine.warehouse(), ctx, resource_type, entry).await?;
        let list: Vec<_> = ids.iter().map(|id| lit(id.as_str())).collect();
        let present = ctx
            .read_table(provider)?
            .filter(col(ID).in_list(list, false))?
            .select(vec![col(ID)])?
            .collect()
            .await?;
        for batch in present {
            let column =
                datafusion::arrow::compute::cast(batch.column(0), &datafusion::arrow::datatypes::DataType::Utf8)
                    .map_err(datafusion::error::DataFusionError::from)?;
            let column = column.as_string::<i32>();
            for i in 0..column.len() {
                ids.remove(column.value(i));
            }
        }
    }
    let urls: Vec<String> = deleted
        .iter()
        .flat_map(|(t, ids)| ids.iter().map(move |id| format!("{t}/{id}")))
        .collect();
    if urls.is_empty() {
        return Ok(Vec::new());
    }
    let namer = FileNamer::new(target.location.clone(), &target.dir, "Bundle.deleted", "ndjson");
    let mut sink = NdjsonSink::new(namer, Some("Bundle".into()), settings.max_file_bytes);
    for chunk in urls.chunks(DELETIONS_PER_BUNDLE) {
        let bundle = json!({
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": chunk.iter().map(|url| json!({"request": {"method": "DELETE", "url": url}})).collect::<Vec<_>>(),
        });
        sink.write_line(&bundle.to_string()).await?;
    }
    sink.finish().await
}

/// Which changes `_since`/`_until` select.
///
/// A resource changed at `coalesce(meta.lastUpdated, loaded_at)`; but a
/// load stamps `loaded_at` when it starts and becomes visible when it
/// commits, and may bring resources whose `lastUpdated` is older than an
/// earlier export's `transactionTime`. So `_since=T` also takes every row
/// of the loads committed after T (`loaded_at` at or after the earliest
/// start of those loads): nothing committed after T is missed, at the
/// price of sometimes repeating a resource (which the spec allows).
pub(super) struct ChangeWindow {
    since: Option<i64>,
    until: Option<i64>,
    /// The earliest `loaded_at` of the loads committed after `since`.
    committed_since: Option<i64>,
    /// `newMemberData=all`: members who joined after `since`, whose rows
    /// pass `since` whatever their change time.
    joined: Option<HashSet<String>>,
}

impl ChangeWindow {
    async fn new(engine: &CohortEngine, request: &ExportRequest) -> Result<Self, ExportError> {
        let mut committed_since = None;
        if let Some(since) = request.since {
            let current = engine.snapshot().version;
            let mut version = current;
            while version > 0 {
                let snapshot = if version == current {
                    engine.snapshot().clone()
                } else {
                    engine.warehouse().snapshot(version).await?
                };
                let committed = chrono::DateTime::parse_from_rfc3339(&snapshot.committed_at)
                    .map(|t| t.timestamp_micros())
                    .unwrap_or(i64::MAX);
                if committed <= since {
                    break;
                }
                if let Some(loaded_at) = snapshot.operation_details.get("loaded_at").and_then(|v| v.as_i64()) {
                    committed_since = Some(committed_since.map_or(loaded_at, |c: i64| c.min(loaded_at)));
                }
                version -= 1;
            }
        }
        Ok(Self {
            since: request.since,
            until: request.until,
            committed_since,
            joined: population::joined_after_since(engine, request).await?,
        })
    }

    /// The filter over a row's change time (`changed`) and its load time
    /// (`loaded`); `None` when the window is unbounded.
    fn filter(
        &self,
        changed: datafusion::prelude::Expr,
        loaded: datafusion::prelude::Expr,
        of_patients: bool,
    ) -> Option<datafusion::prelude::Expr> {
        let instant = |micros: i64| lit(ScalarValue::TimestampMicrosecond(Some(micros), Some("UTC".into())));
        let mut filter = None;
        if let Some(since) = self.since {
            let mut after = changed.clone().gt(instant(since));
            if let Some(floor) = self.committed_since {
                after = after.or(loaded.gt_eq(instant(floor)));
            }
            if let (true, Some(joined)) = (of_patients, &self.joined)
                && !joined.is_empty()
            {
                after = after.or(population::has_any_patient(joined));
            }
            filter = Some(after);
        }
        if let Some(until) = self.until {
            let before = changed.lt_eq(instant(until));
            filter = Some(match filter {
                Some(f) => f.and(before),
                None => before,
            });
        }
        filter
    }
}

/// The rows of `resource_type` changed within `_since`/`_until`, with the
/// columns the sinks need.
pub(super) async fn resource_frame(
    engine: &CohortEngine,
    resource_type: &str,
    window: &ChangeWindow,
) -> Result<DataFrame, ExportError> {
    let entry = engine
        .snapshot()
        .tables
        .get(resource_type)
        .ok_or_else(|| ExportError::TableVanished {
            resource_type: resource_type.to_string(),
        })?;
    let provider = table_provider(engine.warehouse(), engine.session(), resource_type, entry).await?;
    let mut frame = engine.session().read_table(provider)?;
    // A resource without meta.lastUpdated changed when it was loaded.
    let changed = datafusion::functions::expr_fn::coalesce(vec![col(LAST_UPDATED), col(LOADED_AT)]);
    if let Some(filter) = window.filter(changed, col(LOADED_AT), true) {
        frame = frame.filter(filter)?;
    }
    Ok(frame.select(vec![
        col(ID),
        col(VERSION_ID),
        col(LAST_UPDATED),
        col(PATIENTS),
        col(RESOURCE),
    ])?)
}

/// Rows of `frame` whose `id` is among the `resource_id`s of `ids`. The ids
/// are the hash join's build side (left); the table is probed.
pub(super) fn semi_join(engine: &CohortEngine, ids: LogicalPlan, frame: DataFrame) -> Result<DataFrame, ExportError> {
    let plan = LogicalPlanBuilder::from(ids)
        .alias("wanted")?
        .join(
            frame.into_unoptimized_plan(),
            JoinType::RightSemi,
            (
                vec![Column::new(Some("wanted"), RESOURCE_ID)],
                vec![Column::from_name(ID)],
            ),
            None,
        )?
        .build()?;
    Ok(DataFrame::new(engine.session().state(), plan))
}

pub(super) type TypeResult = Result<Vec<ExportedFile>, (ExportError, Vec<ExportedFile>)>;

/// A one-column table (`column`, text) of `ids`, sorted, as a plan.
pub(super) fn id_table<'a>(
    engine: &CohortEngine,
    column: &str,
    ids: impl Iterator<Item = &'a str>,
) -> Result<LogicalPlan, ExportError> {
    let mut ids: Vec<&str> = ids.collect();
    ids.sort_unstable();
    let batch = RecordBatch::try_from_iter(vec![(column, Arc::new(StringArray::from(ids)) as ArrayRef)])
        .map_err(datafusion::error::DataFusionError::from)?;
    Ok(engine.session().read_batch(batch)?.into_unoptimized_plan())
}

/// `Type/id` of the context resources referenced so far, shared by the
/// partitions of an export.
type SharedReferences = Arc<Mutex<HashSet<String>>>;

/// What differs between the types of one export.
struct TypeJob<'a> {
    resource_type: &'a str,
    /// Rows outside it are dropped.
    population: Population,
    /// Where references to context types are collected, if they are.
    references: Option<SharedReferences>,
}

async fn export_type(
    engine: &CohortEngine,
    frame: DataFrame,
    job: &TypeJob<'_>,
    request: &ExportRequest,
    target: &ExportTarget,
    settings: &ExportSettings,
) -> TypeResult {
    let resource_type = job.resource_type;
    let plan = frame.create_physical_plan().await.map_err(|e| (e.into(), Vec::new()))?;
    let task_ctx = engine.session().task_ctx();
    let namer = FileNamer::new(
        target.location.clone(),
        &target.dir,
        resource_type,
        request.format.extension(),
    );
    let elements = ElementFilter::for_type(resource_type, &request.elements).map(Arc::new);
    let mut tasks = tokio::task::JoinSet::new();
    for partition in 0..plan.output_partitioning().partition_count() {
        let stream = match plan.execute(partition, task_ctx.clone()) {
            Ok(stream) => stream,
            Err(e) => return Err((e.into(), Vec::new())),
        };
        let partition_job = PartitionJob {
            resource_type: resource_type.to_string(),
            format: request.format,
            namer: namer.clone(),
            max_bytes: settings.max_file_bytes,
            population: job.population.clone(),
            elements: elements.clone(),
            references: job.references.clone(),
            found: HashSet::new(),
        };
        tasks.spawn(partition_job.run(stream));
    }
    let mut files = Vec::new();
    let mut failure = None;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((partition_files, None)) => files.extend(partition_files),
            Ok((partition_files, Some(e))) => {
                files.extend(partition_files);
                if failure.is_none() {
                    failure = Some(e);
                    tasks.abort_all();
                }
            }
            Err(e) => {
                if failure.is_none() {
                    failure = Some(ExportError::Task(e));
                    tasks.abort_all();
                }
            }
        }
    }
    if let Some(e) = failure {
        return Err((e, files));
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(files)
}

/// One partition's stream into one sink.
struct PartitionJob {
    resource_type: String,
    format: OutputFormat,
    namer: FileNamer,
    max_bytes: u64,
    population: Population,
    elements: Option<Arc<ElementFilter>>,
    /// Shared set that this partition's references are added to at its end.
    references: Option<SharedReferences>,
    /// References to context types seen by this partition.
    found: HashSet<String>,
}

enum AnySink {
    Ndjson(Box<NdjsonSink>),
    Parquet(Box<ParquetSink>),
}

impl PartitionJob {
    /// Returns the files it finished and the error that stopped it, if any.
    async fn run(
        mut self,
        mut stream: datafusion::physical_plan::SendableRecordBatchStream,
    ) -> (Vec<ExportedFile>, Option<ExportError>) {
        let mut sink = match self.format {
            OutputFormat::Ndjson => AnySink::Ndjson(Box::new(NdjsonSink::new(
                self.namer.clone(),
                Some(self.resource_type.clone()),
                self.max_bytes,
            ))),
            OutputFormat::Parquet => AnySink::Parquet(Box::new(ParquetSink::new(
                self.namer.clone(),
                self.resource_type.clone(),
                self.max_bytes,
            ))),
        };
        let mut failure = None;
        while let Some(next) = stream.next().await {
            let result = match next {
                Ok(batch) => self.write(&mut sink, batch).await,
                Err(e) => Err(e.into()),
            };
            if let Err(e) = result {
                failure = Some(e);
                break;
            }
        }
        if let Some(shared) = &self.references
            && let Ok(mut shared) = shared.lock()
        {
            shared.extend(std::mem::take(&mut self.found));
        }
        match (sink, failure) {
            (AnySink::Ndjson(s), None) => match s.finish().await {
                Ok(files) => (files, None),
                Err(e) => (Vec::new(), Some(e)),
            },
            (AnySink::Parquet(s), None) => match s.finish().await {
                Ok(files) => (files, None),
                Err(e) => (Vec::new(), Some(e)),
            },
            (AnySink::Ndjson(s), Some(e)) => (s.abort().await, Some(e)),
            (AnySink::Parquet(s), Some(e)) => (s.abort().await, Some(e)),
        }
    }

    async fn write(&mut self, sink: &mut AnySink, batch: RecordBatch) -> Result<(), ExportError> {
        // Columns: id, version_id, last_updated, patients, resource.
        let batch = match self.population.mask(batch.column(3).as_list::<i32>()) {
            Some(mask) => filter_record_batch(&batch, &mask).map_err(datafusion::error::DataFusionError::from)?,
            None => batch,
        };
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let resources = batch.column(4).as_string::<i32>();
        let collect = self.references.is_some();
        match sink {
            AnySink::Ndjson(sink) => {
                for i in 0..resources.len() {
                    let subset;
                    let line = match &self.elements {
                        Some(filter) => {
                            subset = filter.apply(resources.value(i));
                            subset.as_str()
                        }
                        None => resources.value(i),
                    };
                    if collect {
                        collect_references(line, &mut self.found);
                    }
                    sink.write_line(line).await?;
                }
            }
            AnySink::Parquet(sink) => {
                let resource: ArrayRef = match &self.elements {
                    Some(filter) => Arc::new(
                        (0..resources.len())
                            .map(|i| Some(filter.apply(resources.value(i))))
                            .collect::<StringArray>(),
                    ),
                    None => batch.column(4).clone(),
                };
                if collect {
                    let texts = resource.as_string::<i32>();
                    for i in 0..texts.len() {
                        collect_references(texts.value(i), &mut self.found);
                    }
                }
                let out = RecordBatch::try_new(
                    export_schema(),
                    vec![
                        batch.column(0).clone(),
                        batch.column(1).clone(),
                        batch.column(2).clone(),
                        resource,
                    ],
                )
                .map_err(datafusion::error::DataFusionError::from)?;
                sink.write(&out).await?;
            }
        }
        Ok(())
    }
}

/// Adds to `found` the `Type/id` of every `"reference": "Type/id"` in a
/// resource's JSON text whose type is a context type. Relative, absolute
/// and versioned references are understood; `urn:uuid:` ones carry no type
/// and are skipped. Runs over every exported byte, so the common case (a
/// relative reference to another type) is rejected without parsing or
/// allocating.
fn collect_references(json: &str, found: &mut HashSet<String>) {
    static KEY: std::sync::OnceLock<memchr::memmem::Finder<'static>> = std::sync::OnceLock::new();
    let finder = KEY.get_or_init(|| memchr::memmem::Finder::new(b"\"reference\""));
    let bytes = json.as_bytes();
    for start in finder.find_iter(bytes) {
        let mut i = start + finder.needle().len();
        while bytes.get(i).is_some_and(|b| b.is_ascii_whitespace() || *b == b':') {
            i += 1;
        }
        if bytes.get(i) != Some(&b'"') {
            continue;
        }
        let Some(len) = memchr::memchr(b'"', &bytes[i + 1..]) else {
            continue;
        };
        // Quotes are ASCII, so these offsets are char boundaries.
        let value = &json[i + 1..i + 1 + len];
        let relative_context = CONTEXT_TYPES
            .iter()
            .any(|t| value.len() > t.len() && value.starts_with(t) && value.as_bytes()[t.len()] == b'/');
        if !relative_context && !value.contains("://") {
            continue;
        }
        if let Some(target) = crate::fhir::parse_reference(value)
            && let Some(resource_type) = target.resource_type
            && CONTEXT_TYPES.contains(&resource_type)
        {
            let key_len = resource_type.len() + 1 + target.id.len();
            let relative = value.len() == key_len;
            if relative {
                if !found.contains(value) {
                    found.insert(value.to_string());
                }
            } else {
                found.insert(format!("{resource_type}/{}", target.id));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_to_context_types_are_collected() {
        let mut found = HashSet::new();
        collect_references(
            r#"{"subject":{"reference":"Patient/p"},"performer":[{"reference" : "Practitioner/d1"},{"reference":"http://x/fhir/Organization/o1/_history/2"}],"x":{"reference":"urn:uuid:123"},"y":{"reference":"PractitionerRole/r1/_history/3"}}"#,
            &mut found,
        );
        let mut found: Vec<_> = found.into_iter().collect();
        found.sort();
        assert_eq!(found, ["Organization/o1", "Practitioner/d1", "PractitionerRole/r1"]);
    }
}
