//! A SQL table computed when a query scans it: the Group tables
//! (`group_members`, `group_membership`) read the state store then, so a
//! long-lived session sees the Groups as they are at each query.

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{MemTable, Session, TableProvider};
use datafusion::datasource::TableType;
use datafusion::error::DataFusionError;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::Expr;
use futures::future::BoxFuture;

use super::GroupError;

/// What computes a live table's rows.
pub type RowSource = Arc<dyn Fn() -> BoxFuture<'static, Result<Vec<RecordBatch>, GroupError>> + Send + Sync>;

/// A table of `schema` whose batches `rows` computes at each scan.
pub struct LiveTable {
    name: &'static str,
    schema: SchemaRef,
    rows: RowSource,
}

impl LiveTable {
    /// The table `name` of `schema` over `rows`.
    pub fn new(name: &'static str, schema: SchemaRef, rows: RowSource) -> Self {
        Self { name, schema, rows }
    }
}

impl std::fmt::Debug for LiveTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LiveTable({})", self.name)
    }
}

#[async_trait::async_trait]
impl TableProvider for LiveTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
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
        let batches = (self.rows)()
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        MemTable::try_new(self.schema.clone(), vec![batches])?
            .scan(session, projection, filters, limit)
            .await
    }
}
