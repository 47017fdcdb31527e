//! The `group_members` SQL table: every Group's members now. Groups
//! created through the server give their current membership rows (with
//! their version); Groups loaded with the data give their `member` entries
//! that name Patients (a nested Group entry is not expanded here). Read
//! when a query scans it.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, AsArray, BooleanArray, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{MemTable, Session, TableProvider};
use datafusion::datasource::TableType;
use datafusion::error::DataFusionError;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{Expr, col};
use serde_json::Value;

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
async fn members_rows(state: &StateStore, warehouse: &Warehouse) -> Result<Vec<Row>, GroupError> {
    let mut rows = Vec::new();
    for id in state.list(GROUPS).await? {
        let Some(stored) = state.get::<StoredGroup>(GROUPS, &id).await? else {
            continue;
        };
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
            if let Ok(group) = serde_json::from_str::<Value>(text) {
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

/// The `group_members` table over the Groups of `warehouse` and its
/// state store.
pub struct MembersTable {
    state: StateStore,
    warehouse: Warehouse,
}

impl MembersTable {
    /// The table over `warehouse` (its Groups stored under `_server/`).
    pub fn new(warehouse: Warehouse) -> Self {
        Self {
            state: StateStore::new(warehouse.root().clone()),
            warehouse,
        }
    }
}

impl std::fmt::Debug for MembersTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MembersTable")
    }
}

#[async_trait::async_trait]
impl TableProvider for MembersTable {
    fn schema(&self) -> SchemaRef {
        members_schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        session: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let external = |e: GroupError| DataFusionError::External(Box::new(e));
        let rows = members_rows(&self.state, &self.warehouse).await.map_err(external)?;
        let batch = members_batch(&rows).map_err(|e| external(e.into()))?;
        MemTable::try_new(members_schema(), vec![vec![batch]])?
            .scan(session, projection, filters, limit)
            .await
    }
}
