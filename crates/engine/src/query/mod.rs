//! Running SQL over the warehouse and writing the results.

mod access;
mod output;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::error::DataFusionError;
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::DFParser;

pub use access::{AccessDenied, GroupVisibility, ReadAccess, TableReads};
pub use output::{OutputFormat, StreamingWriter, decimals_as_numbers, write_batches};

use crate::warehouse::catalog::session_for;
use crate::warehouse::{Warehouse, WarehouseError};

/// Errors of SQL execution or result output.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// Opening the warehouse failed.
    #[error(transparent)]
    Warehouse(#[from] WarehouseError),
    /// Parsing, planning or running the SQL failed.
    #[error(transparent)]
    DataFusion(#[from] DataFusionError),
    /// Formatting or writing the result failed.
    #[error("writing results: {0}")]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
    /// Writing a Parquet result failed.
    #[error("writing Parquet results: {0}")]
    Parquet(#[from] datafusion::parquet::errors::ParquetError),
    /// Writing to the output failed.
    #[error("writing results to {target}: {source}")]
    Io {
        /// Where the output went.
        target: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The text holds no statement.
    #[error("no SQL statement given")]
    Empty,
}

impl crate::error::HasKind for QueryError {
    fn kind(&self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind;
        use datafusion::error::DataFusionError;
        match self {
            Self::Warehouse(e) => e.kind(),
            // The statement's own fault: syntax, unknown names, types.
            Self::DataFusion(e)
                if matches!(
                    e.find_root(),
                    DataFusionError::SQL(..) | DataFusionError::Plan(_) | DataFusionError::SchemaError(..)
                ) =>
            {
                ErrorKind::Invalid
            }
            Self::DataFusion(e) => crate::warehouse::datafusion_kind(e),
            Self::Empty => ErrorKind::Invalid,
            Self::Arrow(_) | Self::Parquet(_) | Self::Io { .. } => ErrorKind::Internal,
        }
    }

    fn is_private(&self) -> bool {
        matches!(self, Self::Warehouse(e) if e.is_private()) || matches!(self, Self::Io { .. })
    }
}

/// A session over the warehouse's current snapshot.
pub async fn open_session(warehouse: &Warehouse) -> Result<SessionContext, QueryError> {
    let (ctx, snapshot) = session_for(warehouse).await?;
    if snapshot.is_none() {
        // Queries will fail with "table not found"; say why and what to do.
        tracing::warn!(
            "warehouse {} holds no data yet: run `fhirlake load` first",
            warehouse.root().url()
        );
    }
    Ok(ctx)
}

/// The result of one statement.
#[derive(Debug, Clone)]
pub struct StatementResult {
    /// The result's schema (known even when there are no rows).
    pub schema: SchemaRef,
    /// The rows.
    pub batches: Vec<RecordBatch>,
}

/// Runs every `;`-separated statement of `sql`, returning each one's result.
pub async fn run_statements(ctx: &SessionContext, sql: &str) -> Result<Vec<StatementResult>, QueryError> {
    let statements = DFParser::parse_sql(sql)?;
    if statements.is_empty() {
        return Err(QueryError::Empty);
    }
    let mut results = Vec::with_capacity(statements.len());
    for statement in statements {
        let plan = ctx.state().statement_to_plan(statement).await?;
        let frame = ctx.execute_logical_plan(plan).await?;
        let schema = SchemaRef::new(frame.schema().as_arrow().clone());
        results.push(StatementResult {
            schema,
            batches: frame.collect().await?,
        });
    }
    Ok(results)
}
