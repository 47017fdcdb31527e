//! The patients a load touched: the compartment patients of every resource
//! it added, changed or deleted, including the patients a changed or
//! deleted resource belonged to before. Each load records them as the
//! `_touched` table of its snapshot (one `patient_id` column), so a Group
//! refresh can recompute only those patients (issue 29).

use std::collections::BTreeSet;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, AsArray, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::prelude::SessionContext;
use tokio::runtime::Handle;

use super::catalog::{new_session, table_provider};
use super::manifest::Snapshot;
use super::{DataFile, TableEntry, TableKind, Warehouse, WarehouseError};

/// The snapshot table of the patients its load touched.
pub const TOUCHED_TABLE: &str = "_touched";

/// The key of a load's `operation_details` giving how many patients it
/// touched; present only when its `_touched` table is that load's own.
pub const TOUCHED_DETAIL: &str = "touched_patients";

/// The schema of the `_touched` table.
pub fn touched_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("patient_id", DataType::Utf8, false)]))
}

/// The distinct values of the one-column query `sql` (any string type: a
/// column of another type is an error, never an empty answer that would
/// make a refresh skip patients).
async fn distinct_strings(ctx: &SessionContext, sql: &str, out: &mut BTreeSet<String>) -> Result<(), WarehouseError> {
    for batch in ctx.sql(sql).await?.collect().await? {
        let column = datafusion::arrow::compute::cast(batch.column(0), &DataType::Utf8)
            .map_err(datafusion::error::DataFusionError::from)?;
        out.extend(column.as_string::<i32>().iter().flatten().map(str::to_string));
    }
    Ok(())
}

/// The compartment patients of the rows in `new`, and of the rows in `old`
/// whose ids are in `new` (versions replaced) or in `deleted`.
pub async fn touched_patients(
    warehouse: &Warehouse,
    old: &[DataFile],
    new: &[DataFile],
    deleted: &[&str],
) -> Result<BTreeSet<String>, WarehouseError> {
    let ctx = new_session()?;
    let mut out = BTreeSet::new();
    let register = |name: &'static str, files: &[DataFile]| {
        let entry = TableEntry::new(TableKind::Resource, files.to_vec());
        let ctx = &ctx;
        async move {
            ctx.register_table(name, table_provider(warehouse, ctx, "", &entry).await?)?;
            Ok::<(), WarehouseError>(())
        }
    };
    if !new.is_empty() {
        register("touched_new", new).await?;
        distinct_strings(&ctx, "SELECT DISTINCT unnest(patients) FROM touched_new", &mut out).await?;
    }
    if old.is_empty() || (new.is_empty() && deleted.is_empty()) {
        return Ok(out);
    }
    register("touched_old", old).await?;
    let mut changed = Vec::new();
    if !new.is_empty() {
        changed.push("SELECT id FROM touched_new".to_string());
    }
    if !deleted.is_empty() {
        let ids: ArrayRef = Arc::new(StringArray::from(deleted.to_vec()));
        let batch = RecordBatch::try_from_iter(vec![("id", ids)]).map_err(datafusion::error::DataFusionError::from)?;
        ctx.register_batch("touched_deleted", batch)?;
        changed.push("SELECT id FROM touched_deleted".to_string());
    }
    let sql = format!(
        "SELECT DISTINCT unnest(patients) FROM touched_old WHERE id IN ({})",
        changed.join(" UNION ALL ")
    );
    distinct_strings(&ctx, &sql, &mut out).await?;
    Ok(out)
}

/// Writes `patients` as the `_touched` table file of the load `token`.
pub async fn write_touched(
    warehouse: &Warehouse,
    token: &str,
    patients: &BTreeSet<String>,
) -> Result<DataFile, WarehouseError> {
    let schema = touched_schema();
    let ids: ArrayRef = Arc::new(patients.iter().map(|p| Some(p.as_str())).collect::<StringArray>());
    let batch = RecordBatch::try_new(schema.clone(), vec![ids]).map_err(datafusion::error::DataFusionError::from)?;
    let root = warehouse.root().clone();
    let path = format!("tables/{TOUCHED_TABLE}/{token}-0.parquet");
    let handle = Handle::current();
    tokio::task::spawn_blocking(move || -> Result<DataFile, WarehouseError> {
        let mut writer = super::parquet_file::ParquetFileWriter::create(&root, path, schema, handle)?;
        writer.write(&batch)?;
        Ok(writer.finish()?)
    })
    .await
    .map_err(|e| WarehouseError::DataFusion(datafusion::error::DataFusionError::External(Box::new(e))))?
}

/// What version `snapshot` changed of the patients' data: `Some(patients)`
/// when it recorded them (a load), `Some(empty)` when it changed no
/// resource (a view refresh), `None` when it cannot say (a load by a
/// version of fhirlake that did not record them; its files vacuumed).
pub async fn touched_by(warehouse: &Warehouse, snapshot: &Snapshot) -> Option<BTreeSet<String>> {
    match snapshot.operation.as_str() {
        "view refresh" => return Some(BTreeSet::new()),
        "load" if snapshot.operation_details.get(TOUCHED_DETAIL).is_some() => {}
        _ => return None,
    }
    let Some(entry) = snapshot.tables.get(TOUCHED_TABLE) else {
        return Some(BTreeSet::new());
    };
    let ctx = new_session().ok()?;
    let provider = super::catalog::files_provider(warehouse, &ctx, Some(touched_schema()), &entry.files)
        .await
        .ok()?;
    ctx.register_table("touched", provider).ok()?;
    let mut out = BTreeSet::new();
    distinct_strings(&ctx, "SELECT patient_id FROM touched", &mut out)
        .await
        .ok()?;
    Some(out)
}
