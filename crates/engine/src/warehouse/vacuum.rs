//! Deleting data files no snapshot worth keeping refers to: files replaced by
//! merges and files of failed or killed loads.

use std::collections::HashSet;
use std::time::Duration;

use futures::TryStreamExt;
use object_store::ObjectStoreExt;

use super::{Warehouse, WarehouseError};

/// What a vacuum removed.
#[derive(Debug, Clone, Default, serde::Serialize, PartialEq, Eq)]
pub struct VacuumReport {
    /// Files deleted.
    pub files: u64,
    /// Bytes freed.
    pub bytes: u64,
    /// Files kept because a kept snapshot refers to them.
    pub kept: u64,
}

/// Deletes the files under `tables/` that none of the latest `keep_versions`
/// snapshots refers to and that are older than `min_age` (a load in progress
/// writes files before it commits: the age guard keeps them). Older snapshots
/// may no longer be readable afterwards; the latest always is.
pub async fn vacuum(
    warehouse: &Warehouse,
    keep_versions: u64,
    min_age: Duration,
) -> Result<VacuumReport, WarehouseError> {
    let Some(latest) = warehouse.current().await? else {
        return Ok(VacuumReport::default());
    };
    let oldest_kept = latest.version.saturating_sub(keep_versions.max(1) - 1).max(1);
    let mut referenced: HashSet<String> = HashSet::new();
    for version in oldest_kept..=latest.version {
        // A missing manifest in the range is fine (never committed).
        if let Ok(snapshot) = warehouse.snapshot(version).await {
            for table in snapshot.tables.values() {
                referenced.extend(table.files.iter().map(|f| f.path.clone()));
            }
        }
    }
    let root = warehouse.root();
    let tables = root.child("tables");
    let objects: Vec<_> = root
        .store
        .list(Some(&tables))
        .try_collect()
        .await
        .map_err(|e| root.error("listing", &tables, e))?;
    let cutoff = chrono::Utc::now() - chrono::Duration::from_std(min_age).unwrap_or(chrono::Duration::zero());
    let prefix = format!("{}/", root.prefix);
    let mut report = VacuumReport::default();
    for object in objects {
        let key = object.location.as_ref();
        let relative = key.strip_prefix(&prefix).unwrap_or(key);
        if referenced.contains(relative) {
            report.kept += 1;
            continue;
        }
        if object.last_modified > cutoff {
            continue;
        }
        root.store
            .delete(&object.location)
            .await
            .map_err(|e| root.error("deleting", &object.location, e))?;
        report.files += 1;
        report.bytes += object.size;
    }
    tracing::info!(
        files = report.files,
        bytes = report.bytes,
        kept = report.kept,
        "vacuum done"
    );
    Ok(report)
}
