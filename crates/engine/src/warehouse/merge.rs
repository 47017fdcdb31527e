//! Keeping one row per resource: when a load adds versions of resources a table
//! already holds (or holds the same id twice), the table is rewritten with the
//! latest version of each id. DataFusion does the work, so it spills to disk
//! instead of growing memory with the table.
//!
//! "Latest" orders by `coalesce(last_updated, loaded_at)`, then `loaded_at`,
//! then `load_seq`: `meta.lastUpdated` decides when present, and a resource
//! without it counts as updated when it was loaded, so a later load (or a later
//! line of the same load) wins.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Int64Array, RecordBatch, StringArray};
use datafusion::prelude::SessionContext;
use futures::StreamExt;
use tokio::runtime::Handle;

use super::catalog::{files_provider, new_session, table_provider};
use super::parquet_file::ParquetFileWriter;
use super::schema::resource_schema;
use super::{DataFile, TableEntry, TableKind, Warehouse, WarehouseError};

/// Files written by a merge are rolled at this size.
const MERGED_FILE_BYTES: u64 = 256 * 1024 * 1024;

const SOURCE: &str = "merge_source";

async fn source_session(warehouse: &Warehouse, files: &[DataFile]) -> Result<SessionContext, WarehouseError> {
    let ctx = new_session()?;
    let entry = TableEntry::new(TableKind::Resource, files.to_vec());
    ctx.register_table(SOURCE, table_provider(warehouse, &ctx, "", &entry).await?)?;
    Ok(ctx)
}

/// Memory the duplicate-id check of a load may use before its aggregate
/// spills to disk. The check groups every id of a new table (tens of
/// millions for Observation in a large load); under the general 1 GiB
/// query budget it alone would have set the load's peak, while 256 MiB
/// stays below the read phase's footprint.
const DUPLICATE_CHECK_MEMORY: usize = 256 * 1024 * 1024;

/// Partitions of the duplicate-id check (see `has_duplicate_ids_within`):
/// one. With two, the spilling aggregate behind a hash repartition hung
/// about once in twenty runs of `duplicate_check_spills_instead_of_growing`
/// (every thread parked, a future never woken; DataFusion 55). With one,
/// 0 hangs in 200 runs. The check runs on one core.
const DUPLICATE_CHECK_PARTITIONS: usize = 1;

/// True if some id occurs more than once in `files`.
pub async fn has_duplicate_ids(warehouse: &Warehouse, files: &[DataFile]) -> Result<bool, WarehouseError> {
    has_duplicate_ids_within(warehouse, files, DUPLICATE_CHECK_MEMORY).await
}

/// [`has_duplicate_ids`] within `memory` bytes (beyond them it spills).
async fn has_duplicate_ids_within(
    warehouse: &Warehouse,
    files: &[DataFile],
    memory: usize,
) -> Result<bool, WarehouseError> {
    if files.is_empty() {
        return Ok(false);
    }
    // A fair pool: should the check run in several partitions, each
    // partition's aggregate gets its share and spills beyond it (under a
    // greedy pool one could take everything and leave the other unable to
    // make progress even after spilling). The files' own schema is enough
    // (only `id` is read).
    let runtime = datafusion::execution::runtime_env::RuntimeEnvBuilder::new()
        .with_memory_pool(Arc::new(datafusion::execution::memory_pool::FairSpillPool::new(memory)))
        .build_arc()?;
    let config = datafusion::prelude::SessionConfig::new().with_target_partitions(DUPLICATE_CHECK_PARTITIONS);
    let ctx = SessionContext::new_with_config_rt(config, runtime);
    ctx.register_table(SOURCE, files_provider(warehouse, &ctx, None, files).await?)?;
    let sql = format!("SELECT id FROM {SOURCE} GROUP BY id HAVING count(*) > 1 LIMIT 1");
    let batches = ctx.sql(&sql).await?.collect().await?;
    Ok(batches.iter().any(|b| b.num_rows() > 0))
}

/// Resources a load deletes from one table: (id, `load_seq` of the deleting
/// line), all at the load's `loaded_at`.
#[derive(Debug, Clone, Copy)]
pub struct Deletions<'a> {
    /// Deleted ids with the position of their deletion.
    pub ids: &'a [(String, i64)],
    /// The deleting load's time (µs since the epoch).
    pub deleted_at: i64,
}

const DELETED: &str = "merge_deleted";

/// Registers `deletions` as table `merge_deleted(d_id, d_seq)`, one row per
/// id with its last deletion.
fn register_deletions(ctx: &SessionContext, deletions: &Deletions<'_>) -> Result<(), WarehouseError> {
    let mut last: std::collections::BTreeMap<&str, i64> = std::collections::BTreeMap::new();
    for (id, seq) in deletions.ids {
        let entry = last.entry(id.as_str()).or_insert(*seq);
        *entry = (*entry).max(*seq);
    }
    let ids: Vec<&str> = last.keys().copied().collect();
    let seqs: Vec<i64> = last.values().copied().collect();
    let batch = RecordBatch::try_from_iter(vec![
        ("d_id", Arc::new(StringArray::from(ids)) as ArrayRef),
        ("d_seq", Arc::new(Int64Array::from(seqs)) as ArrayRef),
    ])
    .map_err(datafusion::error::DataFusionError::from)?;
    ctx.register_batch(DELETED, batch)?;
    Ok(())
}

/// The compartment patients of the `deletions` ids found in `files` (what
/// a tombstone keeps so Patient and Group exports can report it).
pub async fn patients_of_deleted(
    warehouse: &Warehouse,
    files: &[DataFile],
    deletions: &Deletions<'_>,
) -> Result<HashMap<String, Vec<String>>, WarehouseError> {
    let mut out = HashMap::new();
    if files.is_empty() || deletions.ids.is_empty() {
        return Ok(out);
    }
    let ctx = source_session(warehouse, files).await?;
    register_deletions(&ctx, deletions)?;
    let sql = format!("SELECT s.id, s.patients FROM {SOURCE} s JOIN {DELETED} d ON s.id = d.d_id");
    for batch in ctx.sql(&sql).await?.collect().await? {
        let ids = batch.column(0).as_string::<i32>();
        let lists = batch.column(1).as_list::<i32>();
        for i in 0..batch.num_rows() {
            let patients = lists.value(i);
            let patients = patients.as_string::<i32>();
            let entry: &mut Vec<String> = out.entry(ids.value(i).to_string()).or_default();
            for j in 0..patients.len() {
                if patients.is_valid(j) && !entry.iter().any(|p| p == patients.value(j)) {
                    entry.push(patients.value(j).to_string());
                }
            }
        }
    }
    Ok(out)
}

/// Rewrites `files` of resource table `table` keeping the latest version of each
/// id, minus the ids `deletions` removes (unless a version was loaded after
/// the deletion: a later line of the same load); returns the new files,
/// named `tables/<table>/<token>-m-<n>.parquet`.
pub async fn merge_latest(
    warehouse: &Warehouse,
    table: &str,
    files: &[DataFile],
    token: &str,
    deletions: Option<&Deletions<'_>>,
) -> Result<Vec<DataFile>, WarehouseError> {
    let ctx = source_session(warehouse, files).await?;
    // Versions a deletion removes (those loaded before it) are dropped
    // before the latest version is chosen, so a version loaded after the
    // deletion wins even when its lastUpdated is older.
    let rows = match deletions {
        Some(deletions) if !deletions.ids.is_empty() => {
            register_deletions(&ctx, deletions)?;
            format!(
                "(SELECT x.* FROM {SOURCE} x LEFT JOIN {DELETED} d ON x.id = d.d_id \
                 WHERE d.d_id IS NULL OR (CAST(x.loaded_at AS BIGINT) = {} AND x.load_seq > d.d_seq))",
                deletions.deleted_at
            )
        }
        _ => SOURCE.to_string(),
    };
    // The winners are ranked on the narrow key columns only, then the full
    // rows are joined to them: sorting whole rows (with the raw JSON) made
    // large merges spill gigabytes.
    let sql = format!(
        "WITH winners AS (SELECT w_id, w_loaded_at, w_load_seq FROM (\
           SELECT id AS w_id, loaded_at AS w_loaded_at, load_seq AS w_load_seq, row_number() OVER (\
             PARTITION BY id ORDER BY coalesce(last_updated, loaded_at) DESC, loaded_at DESC, load_seq DESC) \
             AS version_rank FROM {rows}) WHERE version_rank = 1) \
         SELECT s.id, s.version_id, s.last_updated, s.loaded_at, s.load_seq, s.patients, s.resource \
         FROM {rows} s JOIN winners ON s.id = w_id AND s.loaded_at = w_loaded_at AND s.load_seq = w_load_seq"
    );
    let mut stream = ctx.sql(&sql).await?.execute_stream().await?;
    let handle = Handle::current();
    let root = warehouse.root().clone();
    let table = table.to_string();
    let token = token.to_string();
    let written = tokio::task::spawn_blocking(move || -> Result<Vec<DataFile>, WarehouseError> {
        let mut done = Vec::new();
        let mut current: Option<ParquetFileWriter> = None;
        let result = (|| -> Result<(), WarehouseError> {
            while let Some(batch) = handle.block_on(stream.next()) {
                let batch = batch?;
                let batch = batch
                    .with_schema(resource_schema())
                    .map_err(datafusion::error::DataFusionError::from)?;
                let writer = match current.as_mut() {
                    Some(w) => w,
                    None => {
                        let path = format!("tables/{table}/{token}-m-{:05}.parquet", done.len());
                        current.insert(ParquetFileWriter::create(
                            &root,
                            path,
                            resource_schema(),
                            handle.clone(),
                        )?)
                    }
                };
                writer.write(&batch)?;
                if writer.approximate_size() >= MERGED_FILE_BYTES
                    && let Some(w) = current.take()
                {
                    done.push(w.finish()?);
                }
            }
            if let Some(w) = current.take() {
                done.push(w.finish()?);
            }
            Ok(())
        })();
        match result {
            Ok(()) => Ok(done),
            Err(e) => {
                if let Some(w) = current.take() {
                    w.abort();
                }
                handle.block_on(Warehouse { root }.delete_files(&done));
                Err(e)
            }
        }
    })
    .await
    .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))??;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::has_duplicate_ids_within;
    use crate::warehouse::parquet_file::write_test_file;
    use crate::warehouse::{DataFile, Warehouse};
    use datafusion::arrow::array::{RecordBatch, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    /// A Parquet file of `ids` (one `id` column) at `relative` under `dir`.
    fn write_ids(dir: &std::path::Path, relative: &str, ids: impl Iterator<Item = String>) -> DataFile {
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Utf8, false)]));
        let ids: Vec<String> = ids.collect();
        let batch = RecordBatch::try_new(schema, vec![Arc::new(StringArray::from_iter_values(&ids))]).expect("batch");
        write_test_file(dir, relative, &batch)
    }

    /// With far less memory than the ids take, the check spills and still
    /// finds a duplicate split across files, and finds none where there is none.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn duplicate_check_spills_instead_of_growing() {
        let temp = tempfile::tempdir().expect("tempdir");
        let warehouse = Warehouse::open(temp.path().to_str().expect("utf-8")).expect("warehouse");
        let id = |i: u32| format!("{i:08x}-0000-4000-8000-{i:012x}");
        let a = write_ids(temp.path(), "tables/t/a.parquet", (0..150_000).map(id));
        let b = write_ids(temp.path(), "tables/t/b.parquet", (150_000..300_000).map(id));
        let dup = write_ids(temp.path(), "tables/t/dup.parquet", [id(77_777)].into_iter());
        let memory = 8 * 1024 * 1024;
        let unique = [a.clone(), b.clone()];
        assert!(
            !has_duplicate_ids_within(&warehouse, &unique, memory)
                .await
                .expect("check")
        );
        assert!(
            has_duplicate_ids_within(&warehouse, &[a, b, dup], memory)
                .await
                .expect("check")
        );
    }
}
