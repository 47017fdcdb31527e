//! A running query's result: the engine's batch stream, with the time
//! limit, the running-query count and the audit record attached, so that
//! every front gets them by reading the stream and loses none by dropping
//! it (a client that goes away drops the stream, which stops the plan).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use futures::Stream;

use super::SqlError;

/// How a query ended, for the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Running,
    Complete,
    Failed,
}

/// What the audit record of a query says besides its outcome.
#[derive(Debug, Clone)]
pub(super) struct QueryRecord {
    pub login: String,
    pub front: &'static str,
    pub tables: Vec<String>,
    pub sql: String,
}

/// One running query's batches (a `Stream` of `Result<RecordBatch, SqlError>`).
pub struct ResultStream {
    inner: SendableRecordBatchStream,
    schema: SchemaRef,
    deadline: Pin<Box<tokio::time::Sleep>>,
    limit: Duration,
    memory_limit: usize,
    rows: u64,
    started: Instant,
    outcome: Outcome,
    record: QueryRecord,
    running: Arc<AtomicUsize>,
}

impl ResultStream {
    /// `time`: (what is left of the limit, the limit as configured).
    pub(super) fn new(
        inner: SendableRecordBatchStream,
        time: (Duration, Duration),
        memory_limit: usize,
        record: QueryRecord,
        running: Arc<AtomicUsize>,
    ) -> Self {
        running.fetch_add(1, Ordering::SeqCst);
        Self {
            schema: inner.schema(),
            inner,
            deadline: Box::pin(tokio::time::sleep(time.0)),
            limit: time.1,
            memory_limit,
            rows: 0,
            started: Instant::now(),
            outcome: Outcome::Running,
            record,
            running,
        }
    }

    /// The result's schema.
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// Rows returned so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }
}

impl Stream for ResultStream {
    type Item = Result<RecordBatch, SqlError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.outcome != Outcome::Running {
            return Poll::Ready(None);
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            self.outcome = Outcome::Failed;
            return Poll::Ready(Some(Err(SqlError::Timeout(self.limit))));
        }
        match self.inner.as_mut().poll_next(cx) {
            Poll::Ready(Some(Ok(batch))) => {
                self.rows += batch.num_rows() as u64;
                Poll::Ready(Some(Ok(batch)))
            }
            Poll::Ready(Some(Err(e))) => {
                self.outcome = Outcome::Failed;
                let memory_limit = self.memory_limit;
                Poll::Ready(Some(Err(SqlError::from_execution(e, memory_limit))))
            }
            Poll::Ready(None) => {
                self.outcome = Outcome::Complete;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for ResultStream {
    fn drop(&mut self) {
        self.running.fetch_sub(1, Ordering::SeqCst);
        let outcome = match self.outcome {
            Outcome::Running => "cancelled",
            Outcome::Complete => "complete",
            Outcome::Failed => "failed",
        };
        let record = &self.record;
        tracing::info!(
            target: "fhirlake::audit",
            event = "sql_query",
            front = record.front,
            login = %record.login,
            tables = %record.tables.join(","),
            rows = self.rows,
            outcome,
            seconds = self.started.elapsed().as_secs_f64(),
            sql = %record.sql,
        );
    }
}

/// The error DataFusion gives when a query is over its memory pool.
pub(super) fn is_memory_exhausted(error: &DataFusionError) -> bool {
    matches!(error.find_root(), DataFusionError::ResourcesExhausted(_))
}
