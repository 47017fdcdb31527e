//! Parallel scans of stored resources: the `resource` column of a resource
//! table, partition by partition on scoped threads, each resource parsed
//! once and handed to the caller (view materialization, index rebuilds).

use datafusion::arrow::array::{Array, AsArray};
use futures::StreamExt;
use tokio::runtime::Handle;

use super::catalog::{new_session, table_provider};
use super::{DataFile, TableEntry, TableKind, Warehouse, WarehouseError};
use crate::json;

/// Scans the `resource` column of `files` (a resource table) in parallel and
/// calls `process(state, resource)` for each stored resource; `make_state(p)`
/// builds the state of partition `p`. Returns the states. Needs a
/// multi-threaded tokio runtime (the scan threads block in place).
pub async fn scan_resources<S, E, M, P>(
    warehouse: &Warehouse,
    files: &[DataFile],
    make_state: M,
    process: P,
) -> Result<Vec<S>, E>
where
    S: Send,
    E: From<WarehouseError> + Send,
    M: Fn(usize) -> S + Sync,
    P: Fn(&mut S, &json::JsonValue<'_>) -> Result<(), E> + Sync,
{
    if files.is_empty() {
        return Ok(Vec::new());
    }
    let ctx = new_session()?;
    let entry = TableEntry::new(TableKind::Resource, files.to_vec());
    ctx.register_table("scan_source", table_provider(warehouse, &ctx, "", &entry).await?)
        .map_err(WarehouseError::from)?;
    let frame = ctx
        .sql("SELECT resource FROM scan_source")
        .await
        .map_err(WarehouseError::from)?;
    let streams = frame.execute_stream_partitioned().await.map_err(WarehouseError::from)?;
    let handle = Handle::current();
    tokio::task::block_in_place(|| {
        std::thread::scope(|scope| {
            let handles: Vec<_> = streams
                .into_iter()
                .enumerate()
                .map(|(p, mut stream)| {
                    let (handle, make_state, process) = (&handle, &make_state, &process);
                    scope.spawn(move || -> Result<S, E> {
                        let mut state = make_state(p);
                        while let Some(batch) = handle.block_on(stream.next()) {
                            let batch = batch.map_err(WarehouseError::from)?;
                            let column = batch.column(0).as_string::<i32>();
                            for i in 0..column.len() {
                                let text = column.value(i);
                                let value = json::parse(text).map_err(WarehouseError::CorruptResource)?;
                                process(&mut state, &value)?;
                            }
                        }
                        Ok(state)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().map_err(|_| WarehouseError::ScanThread)?)
                .collect()
        })
    })
}
