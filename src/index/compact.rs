//! Merging the sorted runs of an index table into one sorted sequence of
//! files, so a selective filter touches one narrow range of row groups
//! instead of one per run.
//!
//! Each run file declares its sort order; with one run per partition
//! DataFusion merges them in a streaming `SortPreservingMergeExec`. Beyond
//! [`MAX_FAN_IN`] runs, partitions hold several runs and DataFusion sorts
//! each partition first (within the query memory pool, spilling to disk).

use futures::StreamExt;
use tokio::runtime::Handle;

use super::IndexKind;
use super::columns::{PARAM, RESOURCE_ID};
use crate::warehouse::catalog::{QUERY_MEMORY_LIMIT, files_provider_sorted};
use crate::warehouse::parquet_file::{ParquetFileWriter, index_writer_properties};
use crate::warehouse::{DataFile, Warehouse, WarehouseError};

/// Runs merged at once (each holds a batch in memory while merging).
pub const MAX_FAN_IN: usize = 64;
/// Output files are rolled at this size.
const FILE_BYTES: u64 = 256 * 1024 * 1024;

/// The sort key of a `kind` index table: param, the first value column, resource id.
pub fn sort_columns(kind: IndexKind) -> [String; 3] {
    let value = kind.value_fields()[0].name().clone();
    [PARAM.to_string(), value, RESOURCE_ID.to_string()]
}

/// Merges the sorted `runs` of one index table (key `table_key`) into new
/// files under `tables/<table_key>/`; returns them. A single run is returned
/// as it is.
pub async fn compact(
    warehouse: &Warehouse,
    kind: IndexKind,
    table_key: &str,
    runs: &[DataFile],
    token: &str,
) -> Result<Vec<DataFile>, WarehouseError> {
    if runs.len() <= 1 {
        return Ok(runs.to_vec());
    }
    let partitions = runs.len().min(MAX_FAN_IN);
    let config = datafusion::prelude::SessionConfig::new()
        .with_target_partitions(partitions)
        .with_repartition_file_scans(false);
    let runtime = datafusion::execution::runtime_env::RuntimeEnvBuilder::new()
        .with_memory_limit(QUERY_MEMORY_LIMIT, 1.0)
        .build_arc()?;
    let ctx = datafusion::prelude::SessionContext::new_with_config_rt(config, runtime);
    let sort = sort_columns(kind);
    let provider = files_provider_sorted(warehouse, &ctx, kind.schema(), runs, &sort).await?;
    let order: Vec<_> = sort
        .iter()
        .map(|c| datafusion::prelude::col(c.as_str()).sort(true, true))
        .collect();
    let frame = ctx.read_table(provider)?.sort(order)?;
    let mut stream = frame.execute_stream().await?;
    let root = warehouse.root().clone();
    let handle = Handle::current();
    let table_key = table_key.to_string();
    let token = token.to_string();
    // The Parquet writer blocks on uploads: run the loop on a blocking thread.
    let (done, result) = tokio::task::spawn_blocking(move || {
        let mut done: Vec<DataFile> = Vec::new();
        let mut writer: Option<ParquetFileWriter> = None;
        let result = (|| {
            while let Some(batch) = handle.block_on(stream.next()) {
                let batch = batch?;
                let w = match writer.as_mut() {
                    Some(w) => w,
                    None => writer.insert(ParquetFileWriter::create_with(
                        &root,
                        format!("tables/{table_key}/{token}-c-{:05}.parquet", done.len()),
                        kind.schema(),
                        handle.clone(),
                        index_writer_properties(),
                    )?),
                };
                w.write(&batch)?;
                if w.approximate_size() >= FILE_BYTES
                    && let Some(w) = writer.take()
                {
                    done.push(w.finish()?);
                }
            }
            if let Some(w) = writer.take() {
                done.push(w.finish()?);
            }
            Ok::<(), WarehouseError>(())
        })();
        if let Some(w) = writer.take() {
            w.abort();
        }
        (done, result)
    })
    .await
    .map_err(|e| WarehouseError::from(datafusion::error::DataFusionError::External(Box::new(e))))?;
    if let Err(e) = result {
        warehouse.delete_files(&done).await;
        return Err(e);
    }
    Ok(done)
}
