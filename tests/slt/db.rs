//! The sqllogictest database: SQL through the session `fhirlake sql` uses,
//! and `EXPLAIN COHORT` through the cohort engine.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{Array, RecordBatch};
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::prelude::SessionContext;
use fhirlake::analyst::open_analyst_session;
use fhirlake::cohort::CohortEngine;
use fhirlake::group::cohort_plan;
use fhirlake::warehouse::Warehouse;
use regex::Regex;
use sqllogictest::{AsyncDB, DBOutput, DefaultColumnType};

/// A failed statement, as text (`statement error <regex>` matches it).
#[derive(Debug)]
pub struct SltError(String);

impl std::fmt::Display for SltError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SltError {}

fn error(e: impl std::fmt::Display) -> SltError {
    SltError(e.to_string())
}

/// Rewrites what differs between machines and runs: the warehouse's
/// temporary path, the repository's path, and the load token in data file
/// names.
#[derive(Clone)]
pub struct Normalize {
    warehouse: String,
    repo: String,
    load_token: Regex,
}

impl Normalize {
    /// For a warehouse at `warehouse` and the repository at `repo`.
    pub fn new(warehouse: &Path, repo: &Path) -> Self {
        // DataFusion prints local paths without their leading `/`.
        let strip = |p: &Path| p.display().to_string().trim_start_matches('/').to_string();
        Self {
            warehouse: strip(warehouse),
            repo: strip(repo),
            load_token: Regex::new(r"v(\d{6})-[0-9a-f]{12,}-").expect("pattern"),
        }
    }

    fn apply(&self, text: &str) -> String {
        let text = text.replace(&self.warehouse, "WAREHOUSE").replace(&self.repo, "REPO");
        self.load_token.replace_all(&text, "v$1-TOKEN-").into_owned()
    }
}

/// One connection: a SQL session over the warehouse's current snapshot.
pub struct FhirlakeDb {
    warehouse: Warehouse,
    ctx: SessionContext,
    cohorts: Option<Arc<CohortEngine>>,
    normalize: Normalize,
}

impl FhirlakeDb {
    /// A connection to `warehouse`.
    pub async fn open(warehouse: Warehouse, normalize: Normalize) -> Result<Self, SltError> {
        let ctx = open_analyst_session(&warehouse).await.map_err(error)?;
        Ok(Self {
            warehouse,
            ctx,
            cohorts: None,
            normalize,
        })
    }

    async fn sql(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, SltError> {
        let frame = self.ctx.sql(sql).await.map_err(error)?;
        let schema = frame.schema().as_arrow().clone();
        let batches = frame.collect().await.map_err(error)?;
        if schema.fields().is_empty() {
            return Ok(DBOutput::StatementComplete(0));
        }
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        if names == ["plan_type", "plan"] {
            return Ok(self.explain_output(&explain_rows(&batches)?));
        }
        let types = schema.fields().iter().map(|f| column_type(f.data_type())).collect();
        let mut rows = Vec::new();
        for batch in &batches {
            rows.extend(self.format_rows(batch)?);
        }
        Ok(DBOutput::Rows { types, rows })
    }

    fn format_rows(&self, batch: &RecordBatch) -> Result<Vec<Vec<String>>, SltError> {
        let options = FormatOptions::default().with_null("NULL");
        let formatters = batch
            .columns()
            .iter()
            .map(|column| ArrayFormatter::try_new(column.as_ref(), &options))
            .collect::<Result<Vec<_>, _>>()
            .map_err(error)?;
        Ok((0..batch.num_rows())
            .map(|row| {
                formatters
                    .iter()
                    .map(|formatter| match formatter.value(row).to_string() {
                        // An empty cell would vanish from the expected text.
                        text if text.is_empty() => "(empty)".to_string(),
                        text => self.normalize.apply(&text),
                    })
                    .collect()
            })
            .collect())
    }

    /// `EXPLAIN COHORT`: one search expression per line, or `BASE GROUP
    /// <id>` / `BASE PATIENT <id>`.
    async fn explain_cohort(&mut self, body: &str) -> Result<DBOutput<DefaultColumnType>, SltError> {
        let (mut filters, mut patients, mut groups) = (Vec::new(), Vec::new(), Vec::new());
        for line in body.lines().map(str::trim).filter(|line| !line.is_empty()) {
            if let Some(id) = line.strip_prefix("BASE GROUP ") {
                groups.push(id.trim().to_string());
            } else if let Some(id) = line.strip_prefix("BASE PATIENT ") {
                patients.push(id.trim().to_string());
            } else {
                filters.push(line.to_string());
            }
        }
        let engine = match &self.cohorts {
            Some(engine) => engine.clone(),
            None => {
                let engine = Arc::new(CohortEngine::open(&self.warehouse).await.map_err(error)?);
                self.cohorts = Some(engine.clone());
                engine
            }
        };
        let queries = CohortEngine::parse(&filters).map_err(error)?;
        let plan = cohort_plan(&engine, &queries, &patients, &groups)
            .await
            .map_err(error)?;
        let rows = engine.explain_plans(plan).await.map_err(error)?;
        Ok(self.explain_output(&rows))
    }

    /// Plans as rows: the plan type, then each line numbered, with its
    /// indentation as dashes (whitespace is not compared), as DataFusion's
    /// own `.slt` files show them.
    fn explain_output(&self, plans: &[(String, String)]) -> DBOutput<DefaultColumnType> {
        let mut rows = Vec::new();
        for (kind, plan) in plans {
            rows.push(vec![kind.clone()]);
            for (n, line) in plan.lines().filter(|line| !line.trim().is_empty()).enumerate() {
                let text = line.trim_start();
                let indent = line.len() - text.len();
                rows.push(vec![format!(
                    "{:02}){}{}",
                    n + 1,
                    "-".repeat(indent),
                    self.normalize.apply(text)
                )]);
            }
        }
        DBOutput::Rows {
            types: vec![DefaultColumnType::Text, DefaultColumnType::Text],
            rows,
        }
    }
}

/// `(plan_type, plan)` pairs of an `EXPLAIN` result.
fn explain_rows(batches: &[RecordBatch]) -> Result<Vec<(String, String)>, SltError> {
    let mut rows = Vec::new();
    for batch in batches {
        let text = |i: usize| datafusion::arrow::compute::cast(batch.column(i), &DataType::Utf8).map_err(error);
        let (kinds, plans) = (text(0)?, text(1)?);
        let (kinds, plans) = (
            kinds.as_any().downcast_ref::<datafusion::arrow::array::StringArray>(),
            plans.as_any().downcast_ref::<datafusion::arrow::array::StringArray>(),
        );
        let (Some(kinds), Some(plans)) = (kinds, plans) else {
            return Err(SltError("EXPLAIN without text columns".into()));
        };
        rows.extend((0..batch.num_rows()).map(|i| (kinds.value(i).to_string(), plans.value(i).to_string())));
    }
    Ok(rows)
}

/// The sqllogictest column type of an Arrow type: `I` integers, `R`
/// floating point and decimals, `T` text, `?` anything else.
fn column_type(data_type: &DataType) -> DefaultColumnType {
    match data_type {
        t if t.is_integer() => DefaultColumnType::Integer,
        t if t.is_floating() || matches!(t, DataType::Decimal128(..) | DataType::Decimal256(..)) => {
            DefaultColumnType::FloatingPoint
        }
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => DefaultColumnType::Text,
        _ => DefaultColumnType::Any,
    }
}

#[async_trait]
impl AsyncDB for FhirlakeDb {
    type Error = SltError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<Self::ColumnType>, Self::Error> {
        let trimmed = sql.trim_start();
        match trimmed.get(..14) {
            Some(head) if head.eq_ignore_ascii_case("EXPLAIN COHORT") => self.explain_cohort(&trimmed[14..]).await,
            _ => self.sql(sql).await,
        }
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "fhirlake"
    }

    async fn sleep(duration: std::time::Duration) {
        tokio::time::sleep(duration).await;
    }
}
