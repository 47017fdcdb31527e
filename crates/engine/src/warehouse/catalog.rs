//! Registering a warehouse snapshot as DataFusion tables.

use std::sync::{Arc, OnceLock};

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::TableProvider;
use datafusion::datasource::empty::EmptyTable;
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::object_store::ObjectStoreUrl;
use datafusion::execution::cache::cache_manager::{CacheManagerConfig, FileMetadataCache};
use datafusion::execution::cache::default_cache::DefaultCache;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use object_store::ObjectMeta;

use super::index_tables::parse_index_table_key;
use super::schema::{rejects_schema, resource_schema, tombstones_schema};
use super::snapshot_catalog::SnapshotCatalog;
use super::table::ManifestTable;
use super::{Snapshot, TableEntry, TableKind, Warehouse, WarehouseError};
use crate::store::{CachedStore, ReadCache};

/// Memory DataFusion may use for sorts, joins and aggregates before it spills
/// to disk; keeps queries over large warehouses within a fixed budget.
pub const QUERY_MEMORY_LIMIT: usize = 1024 * 1024 * 1024;

/// Parquet footers and page indexes, shared by every session of the process
/// (each session keeps its own memory pool). Warehouse files are never
/// changed once written (names carry a unique load token; entries are
/// checked against the size the manifest records), so a server's later cohorts
/// and exports skip re-reading the metadata of files an earlier query read.
fn shared_metadata_cache() -> Arc<FileMetadataCache> {
    static CACHE: OnceLock<Arc<FileMetadataCache>> = OnceLock::new();
    CACHE
        .get_or_init(|| Arc::new(DefaultCache::new(METADATA_CACHE_BYTES).with_name("fhirlake file metadata")))
        .clone()
}

/// Memory the shared metadata cache may hold (least recently used entries go first).
const METADATA_CACHE_BYTES: usize = 64 * 1024 * 1024;

/// A DataFusion session with fhirlake's settings and SQL functions (the JSON
/// functions `json_get_str`, `->>`, … over the `resource` column).
pub fn new_session() -> Result<SessionContext, WarehouseError> {
    new_session_with_memory(QUERY_MEMORY_LIMIT)
}

/// Like [`new_session`], whose queries may hold `memory_limit` bytes in
/// sorts, joins and aggregates before they spill (or fail where an
/// operator cannot spill).
pub fn new_session_with_memory(memory_limit: usize) -> Result<SessionContext, WarehouseError> {
    let caches = CacheManagerConfig::default()
        .with_file_metadata_cache(Some(shared_metadata_cache()))
        .with_metadata_cache_limit(METADATA_CACHE_BYTES);
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_limit(memory_limit, 1.0)
        .with_cache_manager(caches)
        .build_arc()?;
    // DataFusion's own settings from `DATAFUSION_*` variables, as
    // datafusion-cli reads them (`DATAFUSION_EXECUTION_TARGET_PARTITIONS=8`):
    // operators tune a query front without a rebuild, and the SQL logic
    // tests fix the partition count their pinned plans show.
    let config = SessionConfig::from_env()?.with_information_schema(true);
    let mut ctx = SessionContext::new_with_config_rt(config, runtime);
    datafusion_functions_json::register_all(&mut ctx)?;
    Ok(ctx)
}

/// A session for queries over `warehouse` (cohorts, SQL, exports): like
/// [`new_session`], with the warehouse's files read through the process-wide
/// [`ReadCache`], so repeated requests find the pages they read in memory.
/// Loads and merges use plain sessions: what they read is read once.
pub fn new_query_session(warehouse: &Warehouse) -> Result<SessionContext, WarehouseError> {
    new_query_session_with_memory(warehouse, QUERY_MEMORY_LIMIT)
}

/// [`new_query_session`] with its own memory limit (see [`new_session_with_memory`]).
pub fn new_query_session_with_memory(
    warehouse: &Warehouse,
    memory_limit: usize,
) -> Result<SessionContext, WarehouseError> {
    let ctx = new_session_with_memory(memory_limit)?;
    let root = warehouse.root();
    let store_url = root.store_url.as_str();
    // Data files live under `tables/` and are never rewritten; manifests,
    // server state and anything a SQL statement writes are not cached.
    let cached = CachedStore::new(root.store.clone(), store_url, root.child("tables"), ReadCache::shared());
    ctx.register_object_store(&root.store_url, Arc::new(cached));
    Ok(ctx)
}

/// The schema of table `name` of `kind` (`None` for views: their files carry it).
pub fn schema_of(name: &str, kind: TableKind) -> Option<SchemaRef> {
    match kind {
        TableKind::Resource => Some(resource_schema()),
        TableKind::Rejects => Some(rejects_schema()),
        TableKind::Tombstones => Some(tombstones_schema()),
        TableKind::Touched => Some(super::touched::touched_schema()),
        TableKind::View => None,
        TableKind::Index => parse_index_table_key(name).map(|(kind, _)| kind.schema()),
    }
}

/// A table provider reading exactly the files of `entry` (named `name` in
/// the snapshot). `ctx` reads a view table's schema from its files.
pub async fn table_provider(
    warehouse: &Warehouse,
    ctx: &SessionContext,
    name: &str,
    entry: &TableEntry,
) -> Result<Arc<dyn TableProvider>, WarehouseError> {
    files_provider(warehouse, ctx, schema_of(name, entry.kind), &entry.files).await
}

/// A table provider reading exactly `files`, with `schema` (`None`: read
/// from the files).
pub async fn files_provider(
    warehouse: &Warehouse,
    ctx: &SessionContext,
    schema: Option<SchemaRef>,
    files: &[super::DataFile],
) -> Result<Arc<dyn TableProvider>, WarehouseError> {
    manifest_provider(warehouse, ctx, schema, files, &[]).await
}

/// Like [`files_provider`] for files that are each sorted by `sort_columns`
/// (ascending), which DataFusion may then merge instead of sorting.
pub async fn files_provider_sorted(
    warehouse: &Warehouse,
    ctx: &SessionContext,
    schema: SchemaRef,
    files: &[super::DataFile],
    sort_columns: &[String],
) -> Result<Arc<dyn TableProvider>, WarehouseError> {
    manifest_provider(warehouse, ctx, Some(schema), files, sort_columns).await
}

async fn manifest_provider(
    warehouse: &Warehouse,
    ctx: &SessionContext,
    schema: Option<SchemaRef>,
    files: &[super::DataFile],
    sort_columns: &[String],
) -> Result<Arc<dyn TableProvider>, WarehouseError> {
    if files.is_empty() {
        let schema = schema.unwrap_or_else(|| Arc::new(datafusion::arrow::datatypes::Schema::empty()));
        return Ok(Arc::new(EmptyTable::new(schema)));
    }
    let root = warehouse.root();
    // `scheme://authority` without the path: DataFusion's key for the store.
    let store_url = ObjectStoreUrl::parse(&root.store_url[..url::Position::BeforePath])?;
    if !root.is_local() && ctx.runtime_env().object_store(&store_url).is_err() {
        // DataFusion finds stores by URL; the local filesystem is built in,
        // and a query session registered its cached store already.
        ctx.register_object_store(&root.store_url, root.store.clone());
    }
    let keys: Vec<_> = files.iter().map(|f| root.child(&f.path)).collect();
    // The read cache needs each object's size to bound its last block; the
    // manifest knows it, which saves a HEAD request per file.
    let cache = ReadCache::shared();
    for (key, file) in keys.iter().zip(files) {
        cache.note_size(root.store_url.as_str(), key, file.bytes);
    }
    let schema = match schema {
        Some(schema) => schema,
        // View tables: their first file's footer carries the schema.
        None => {
            let first = ObjectMeta {
                location: keys[0].clone(),
                last_modified: chrono::DateTime::<chrono::Utc>::UNIX_EPOCH,
                size: files[0].bytes,
                e_tag: None,
                version: None,
            };
            ParquetFormat::default()
                .infer_schema(&ctx.state(), &root.store, &[first])
                .await?
        }
    };
    let sort_order = sort_columns
        .iter()
        .map(|c| datafusion::prelude::col(c.as_str()).sort(true, true))
        .collect();
    let files = keys
        .into_iter()
        .zip(files)
        .map(|(key, file)| (key, file.bytes, file.rows));
    Ok(Arc::new(ManifestTable::new(schema, store_url, files, sort_order)))
}

/// Schema holding the raw resource tables (`fhir.patient`, `fhir."Observation"`)
/// and the `fhir.compartment` view; the default schema is left to the
/// analyst views (`patient`, `condition`, …).
pub const RESOURCE_SCHEMA: &str = "fhir";

/// A session over the current state of `warehouse` (empty if nothing is
/// committed), its tables resolved by a [`SnapshotCatalog`] as queries name
/// them.
pub async fn session_for(warehouse: &Warehouse) -> Result<(SessionContext, Option<Snapshot>), WarehouseError> {
    session_with_memory(warehouse, QUERY_MEMORY_LIMIT).await
}

/// [`session_for`] with its own memory limit.
pub async fn session_with_memory(
    warehouse: &Warehouse,
    memory_limit: usize,
) -> Result<(SessionContext, Option<Snapshot>), WarehouseError> {
    let ctx = new_query_session_with_memory(warehouse, memory_limit)?;
    let snapshot = warehouse.current().await?;
    let catalog = SnapshotCatalog::new(warehouse, snapshot.clone().map(Arc::new))?;
    let default_catalog = ctx.state().config().options().catalog.default_catalog.clone();
    ctx.register_catalog(default_catalog, Arc::new(catalog));
    Ok((ctx, snapshot))
}
