//! Keeping one row per resource: when a load adds versions of resources a table
//! already holds (or holds the same id twice), the table is rewritten with the
//! latest version of each id. DataFusion does the work, so it spills to disk
//! instead of growing memory with the table.
//!
//! "Latest" orders by `coalesce(last_updated, loaded_at)`, then `loaded_at`,
//! then `load_seq`: `meta.lastUpdated` decides when present, and a resource
//! without it counts as updated when it was loaded, so a later load (or a later
//! line of the same load) wins.

use datafusion::prelude::SessionContext;
use futures::StreamExt;
use tokio::runtime::Handle;

use super::catalog::{new_session, table_provider};
use super::parquet_file::ParquetFileWriter;
use super::schema::resource_schema;
use super::{DataFile, TableEntry, TableKind, Warehouse, WarehouseError};

/// Files written by a merge are rolled at this size.
const MERGED_FILE_BYTES: u64 = 256 * 1024 * 1024;

const SOURCE: &str = "merge_source";

async fn source_session(warehouse: &Warehouse, files: &[DataFile]) -> Result<SessionContext, WarehouseError> {
    let ctx = new_session()?;
    let entry = TableEntry {
        kind: TableKind::Resource,
        files: files.to_vec(),
    };
    ctx.register_table(SOURCE, table_provider(warehouse, &ctx, "", &entry).await?)?;
    Ok(ctx)
}

/// True if some id occurs more than once in `files`.
pub async fn has_duplicate_ids(warehouse: &Warehouse, files: &[DataFile]) -> Result<bool, WarehouseError> {
    if files.is_empty() {
        return Ok(false);
    }
    let ctx = source_session(warehouse, files).await?;
    let sql = format!("SELECT id FROM {SOURCE} GROUP BY id HAVING count(*) > 1 LIMIT 1");
    let batches = ctx.sql(&sql).await?.collect().await?;
    Ok(batches.iter().any(|b| b.num_rows() > 0))
}

/// Rewrites `files` of resource table `table` keeping the latest version of each
/// id; returns the new files, named `tables/<table>/<token>-m-<n>.parquet`.
pub async fn merge_latest(
    warehouse: &Warehouse,
    table: &str,
    files: &[DataFile],
    token: &str,
) -> Result<Vec<DataFile>, WarehouseError> {
    let ctx = source_session(warehouse, files).await?;
    // The winners are ranked on the narrow key columns only, then the full
    // rows are joined to them: sorting whole rows (with the raw JSON) made
    // large merges spill gigabytes.
    let sql = format!(
        "WITH winners AS (SELECT w_id, w_loaded_at, w_load_seq FROM (\
           SELECT id AS w_id, loaded_at AS w_loaded_at, load_seq AS w_load_seq, row_number() OVER (\
             PARTITION BY id ORDER BY coalesce(last_updated, loaded_at) DESC, loaded_at DESC, load_seq DESC) \
             AS version_rank FROM {SOURCE}) WHERE version_rank = 1) \
         SELECT s.id, s.version_id, s.last_updated, s.loaded_at, s.load_seq, s.patients, s.resource \
         FROM {SOURCE} s JOIN winners ON s.id = w_id AND s.loaded_at = w_loaded_at AND s.load_seq = w_load_seq"
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
