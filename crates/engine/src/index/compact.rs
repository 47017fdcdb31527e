//! Merging the sorted runs of an index table into one sorted sequence of
//! files, so a selective filter touches one narrow range of row groups
//! instead of one per run.
//!
//! Each run file declares its sort order; with one run per partition
//! DataFusion merges them in a streaming `SortPreservingMergeExec` (memory:
//! one batch per input). Beyond [`MAX_FAN_IN`] runs the merge goes in levels.

use futures::StreamExt;
use tokio::runtime::Handle;

use super::IndexKind;
use super::columns::PARAM;
use super::writer::FINAL_RUN_SUFFIX;
use crate::warehouse::catalog::{QUERY_MEMORY_LIMIT, files_provider_sorted};
use datafusion::parquet::file::properties::WriterProperties;

use crate::warehouse::parquet_file::{ParquetFileWriter, index_writer_properties, scratch_writer_properties};
use crate::warehouse::{DataFile, Warehouse, WarehouseError};

/// Runs merged at once (each holds a batch in memory while merging).
pub const MAX_FAN_IN: usize = 64;
/// A table of at most this many runs, all written with the final settings,
/// keeps them as its files: a filter reads a few sorted files instead of
/// one, and the load skips decoding and re-encoding them.
const MAX_UNMERGED_RUNS: usize = 4;
/// Rows per batch read from each run: the merge holds a batch per run, so
/// with [`MAX_FAN_IN`] runs this sets most of its memory (DataFusion's
/// default of 8192 rows made two merges of wide token rows hold ~0.5 GB).
const MERGE_BATCH_ROWS: usize = 2048;
/// Output files are rolled at this size.
const FILE_BYTES: u64 = 256 * 1024 * 1024;

/// The sort key of a `kind` index table: param, then the first value column.
pub fn sort_columns(kind: IndexKind) -> [String; 2] {
    let value = kind.value_fields()[0].name().clone();
    [PARAM.to_string(), value]
}

/// Merges the sorted `runs` of one index table (key `table_key`) into new
/// files under `tables/<table_key>/`, sorted as a whole, compressed and with
/// statistics and page index; returns them. Runs are left to the caller
/// (a few runs already written with the final settings are returned as
/// they are). More than [`MAX_FAN_IN`] runs are merged in levels
/// (intermediate files are deleted).
pub async fn compact(
    warehouse: &Warehouse,
    kind: IndexKind,
    table_key: &str,
    runs: &[DataFile],
    token: &str,
) -> Result<Vec<DataFile>, WarehouseError> {
    if runs.len() <= MAX_UNMERGED_RUNS && runs.iter().all(|r| r.path.ends_with(FINAL_RUN_SUFFIX)) {
        return Ok(runs.to_vec());
    }
    tracing::debug!(table = table_key, runs = runs.len(), "merging index runs");
    let mut level = runs.to_vec();
    let mut intermediates: Vec<DataFile> = Vec::new();
    let mut counter = 0usize;
    let result = async {
        while level.len() > MAX_FAN_IN {
            let mut next = Vec::new();
            for chunk in level.chunks(MAX_FAN_IN) {
                let prefix = format!("tables/{table_key}/{token}-m{counter:04}");
                counter += 1;
                let merged = merge_once(warehouse, kind, chunk, &prefix, scratch_writer_properties()).await?;
                intermediates.extend(merged.iter().cloned());
                next.extend(merged);
            }
            level = next;
        }
        let prefix = format!("tables/{table_key}/{token}-c");
        merge_once(warehouse, kind, &level, &prefix, index_writer_properties()).await
    }
    .await;
    warehouse.delete_files(&intermediates).await;
    result
}

/// One streaming merge of at most [`MAX_FAN_IN`] sorted files (one
/// partition each, so DataFusion merges without sorting).
async fn merge_once(
    warehouse: &Warehouse,
    kind: IndexKind,
    inputs: &[DataFile],
    prefix: &str,
    properties: WriterProperties,
) -> Result<Vec<DataFile>, WarehouseError> {
    if inputs.is_empty() {
        return Ok(Vec::new());
    }
    let config = datafusion::prelude::SessionConfig::new()
        .with_batch_size(MERGE_BATCH_ROWS)
        .with_target_partitions(inputs.len())
        .with_repartition_file_scans(false);
    let runtime = datafusion::execution::runtime_env::RuntimeEnvBuilder::new()
        .with_memory_limit(QUERY_MEMORY_LIMIT, 1.0)
        .build_arc()?;
    let ctx = datafusion::prelude::SessionContext::new_with_config_rt(config, runtime);
    let sort = sort_columns(kind);
    let provider = files_provider_sorted(warehouse, &ctx, kind.schema(), inputs, &sort).await?;
    let order: Vec<_> = sort
        .iter()
        .map(|c| datafusion::prelude::col(c.as_str()).sort(true, true))
        .collect();
    let frame = ctx.read_table(provider)?.sort(order)?;
    let mut stream = frame.execute_stream().await?;
    let root = warehouse.root().clone();
    let handle = Handle::current();
    let prefix = prefix.to_string();
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
                        format!("{prefix}-{:05}.parquet", done.len()),
                        kind.schema(),
                        handle.clone(),
                        properties.clone(),
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
