//! The `group_members` SQL table: every Group's members now. Groups
//! created through the server give their current membership rows (with
//! their version); Groups loaded with the data give their `member` entries
//! that name Patients (a nested Group entry is not expanded here). Read
//! when a query scans it.

use crate::query::GroupVisibility;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, AsArray, BooleanArray, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::prelude::col;
use serde_json::Value;

use super::live_table::{LiveTable, RowSource};
use super::store::{GROUPS, StoredGroup};
use super::{GroupError, MemberEntry};
use crate::fhir::parse_reference;
use crate::query::QueryError;
use crate::state::StateStore;
use crate::warehouse::Warehouse;
use crate::warehouse::catalog::{new_session, table_provider};

/// The name SQL gives the table.
pub const MEMBERS_TABLE: &str = "group_members";

/// The table's schema.
pub fn members_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("group_id", DataType::Utf8, false),
        Field::new("group_version", DataType::Utf8, true),
        Field::new("source", DataType::Utf8, false),
        Field::new("patient_id", DataType::Utf8, false),
        Field::new("period_start", DataType::Utf8, true),
        Field::new("period_end", DataType::Utf8, true),
        Field::new("inactive", DataType::Boolean, false),
    ]))
}

/// One row of the table.
struct Row {
    group: String,
    version: Option<String>,
    source: &'static str,
    entry: MemberEntry,
}

/// Every row: stored Groups' current membership, loaded Groups' Patient entries.
async fn members_rows(
    state: &StateStore,
    warehouse: &Warehouse,
    visibility: &GroupVisibility,
) -> Result<Vec<Row>, GroupError> {
    let mut rows = Vec::new();
    for id in state.list(GROUPS).await? {
        let Some(stored) = state.get::<StoredGroup>(GROUPS, &id).await? else {
            continue;
        };
        if !visibility.sees(&id, stored.owner.as_deref()) {
            continue;
        }
        for member in stored.current_rows(state).await? {
            rows.push(Row {
                group: id.clone(),
                version: Some(stored.version.to_string()),
                source: "server",
                entry: member.entry,
            });
        }
    }
    let Some(snapshot) = warehouse.current().await? else {
        return Ok(rows);
    };
    let Some(entry) = snapshot.tables.get("Group") else {
        return Ok(rows);
    };
    let ctx = new_session()?;
    let provider = table_provider(warehouse, &ctx, "Group", entry).await?;
    let frame = ctx.read_table(provider)?.select(vec![col("resource")])?;
    for batch in frame.collect().await? {
        let texts = batch.column(0).as_string::<i32>();
        for text in texts.iter().flatten() {
            if let Ok(group) = serde_json::from_str::<Value>(text)
                && visibility.sees(group["id"].as_str().unwrap_or_default(), None)
            {
                rows.extend(loaded_rows(&group));
            }
        }
    }
    Ok(rows)
}

/// The Patient entries of loaded Group resource `group`.
fn loaded_rows(group: &Value) -> Vec<Row> {
    let id = group["id"].as_str().unwrap_or_default().to_string();
    let version = group["meta"]["versionId"].as_str().map(str::to_string);
    let text = |v: &Value| v.as_str().map(str::to_string);
    group["member"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|member| {
            let reference = member["entity"]["reference"].as_str()?;
            let target = parse_reference(reference).filter(|t| t.resource_type == Some("Patient"))?;
            Some(Row {
                group: id.clone(),
                version: version.clone(),
                source: "data",
                entry: MemberEntry {
                    patient: target.id.to_string(),
                    period_start: text(&member["period"]["start"]),
                    period_end: text(&member["period"]["end"]),
                    inactive: member["inactive"].as_bool().unwrap_or(false),
                },
            })
        })
        .collect()
}

fn members_batch(rows: &[Row]) -> Result<RecordBatch, QueryError> {
    let columns: Vec<ArrayRef> = vec![
        Arc::new(rows.iter().map(|r| Some(r.group.as_str())).collect::<StringArray>()),
        Arc::new(rows.iter().map(|r| r.version.as_deref()).collect::<StringArray>()),
        Arc::new(rows.iter().map(|r| Some(r.source)).collect::<StringArray>()),
        Arc::new(
            rows.iter()
                .map(|r| Some(r.entry.patient.as_str()))
                .collect::<StringArray>(),
        ),
        Arc::new(
            rows.iter()
                .map(|r| r.entry.period_start.as_deref())
                .collect::<StringArray>(),
        ),
        Arc::new(
            rows.iter()
                .map(|r| r.entry.period_end.as_deref())
                .collect::<StringArray>(),
        ),
        Arc::new(rows.iter().map(|r| Some(r.entry.inactive)).collect::<BooleanArray>()),
    ];
    Ok(RecordBatch::try_new(members_schema(), columns)?)
}

/// The `group_members` table over the Groups of `warehouse` (those
/// stored under its `_server/` and those loaded with its data), read at
/// each scan.
pub fn members_table(warehouse: Warehouse, visibility: GroupVisibility) -> LiveTable {
    let rows: RowSource = Arc::new(move || {
        let warehouse = warehouse.clone();
        let visibility = visibility.clone();
        Box::pin(async move {
            let state = StateStore::new(warehouse.root().clone());
            let rows = members_rows(&state, &warehouse, &visibility).await?;
            Ok(vec![members_batch(&rows)?])
        })
    });
    LiveTable::new(MEMBERS_TABLE, members_schema(), rows)
}
