//! The cohort engine: `member-filter` searches compiled to DataFusion plans
//! over the search index, yielding patient ids.
//!
//! One expression's clauses must all hold for the same resource; the
//! resource's patients come from the `patient` column the index carries (the
//! Patient compartment computed at load). Several expressions are
//! intersected per patient (Bulk Cohort rule), and a base population, when
//! given, restricts the result.

pub mod compile;
pub mod predicate;
pub mod sql_function;

use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow::array::{Array, AsArray};
use datafusion::common::Column;
use datafusion::execution::{SessionState, SessionStateBuilder};
use datafusion::functions_aggregate::expr_fn::bit_or;
use datafusion::logical_expr::{JoinType, LogicalPlan, LogicalPlanBuilder, col, lit};
use datafusion::optimizer::OptimizerRule;
use datafusion::optimizer::eliminate_filter::EliminateFilter;
use datafusion::optimizer::eliminate_join::EliminateJoin;
use datafusion::optimizer::eliminate_limit::EliminateLimit;
use datafusion::optimizer::extract_equijoin_predicate::ExtractEquijoinPredicate;
use datafusion::optimizer::filter_null_join_keys::FilterNullJoinKeys;
use datafusion::optimizer::optimize_projections::OptimizeProjections;
use datafusion::optimizer::optimize_unions::OptimizeUnions;
use datafusion::optimizer::propagate_empty_relation::PropagateEmptyRelation;
use datafusion::optimizer::push_down_filter::PushDownFilter;
use datafusion::optimizer::replace_distinct_aggregate::ReplaceDistinctWithAggregate;
use datafusion::optimizer::simplify_expressions::SimplifyExpressions;
use datafusion::prelude::{DataFrame, SessionContext};

use self::compile::{Compiler, IndexProviders, ResourceProviders};
use crate::index::columns::{PATIENT, RESOURCE_ID};
use crate::index::parse_index_table_key;
use crate::index::writer::CompartmentReferences;
use crate::search::{SearchError, SearchQuery, SearchRegistry, parse_search};
use crate::warehouse::catalog::{files_provider, new_query_session};
use crate::warehouse::schema::resource_schema;
use crate::warehouse::{Snapshot, TableKind, Warehouse, WarehouseError};

/// Errors of building or running a cohort.
#[derive(Debug, thiserror::Error)]
pub enum CohortError {
    /// A filter expression is invalid.
    #[error(transparent)]
    Search(#[from] SearchError),
    /// A valid search fhirlake cannot run yet.
    #[error("search parameter '{param}' cannot be used in a cohort: {reason}")]
    Unsupported {
        /// The parameter.
        param: String,
        /// Why.
        reason: String,
    },
    /// Nothing has been loaded.
    #[error("the warehouse is empty: load data first (fhirlake load …)")]
    EmptyWarehouse,
    /// A stored resource is damaged.
    #[error("stored {resource} is not valid JSON")]
    Corrupt {
        /// `Type/id`.
        resource: String,
    },
    /// Reading the warehouse failed.
    #[error(transparent)]
    Warehouse(#[from] WarehouseError),
    /// Planning or executing failed.
    #[error("cohort query failed: {0}")]
    DataFusion(#[from] datafusion::error::DataFusionError),
    /// The bundled definitions are unusable.
    #[error("search definitions unavailable: {0}")]
    Definitions(#[source] &'static crate::fhir::DefinitionError),
}

impl crate::error::HasKind for CohortError {
    fn kind(&self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind;
        match self {
            Self::Search(e) => e.kind(),
            Self::Unsupported { .. } => ErrorKind::Invalid,
            Self::EmptyWarehouse => ErrorKind::Transient,
            Self::Warehouse(e) => e.kind(),
            Self::DataFusion(e) => crate::warehouse::datafusion_kind(e),
            Self::Corrupt { .. } | Self::Definitions(_) => ErrorKind::Internal,
        }
    }

    fn is_private(&self) -> bool {
        matches!(self, Self::Warehouse(e) if e.is_private())
    }
}

/// Patients of a cohort, sorted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CohortResult {
    /// Patient ids, sorted.
    pub patients: Vec<String>,
}

/// The engine of a warehouse's current version, kept while that version is
/// current. Requests reuse its session, table providers and settings
/// instead of reading the manifest and rebuilding them each time;
/// concurrent requests share its memory pool. A commit makes
/// the next request build a new engine, while requests holding the old one
/// finish on their snapshot (a vacuum keeps the files of the latest
/// versions).
pub struct CurrentEngine {
    warehouse: Warehouse,
    engine: tokio::sync::Mutex<Option<std::sync::Arc<CohortEngine>>>,
}

impl CurrentEngine {
    /// No engine yet; the first [`CurrentEngine::get`] builds one.
    pub fn new(warehouse: Warehouse) -> Self {
        Self {
            warehouse,
            engine: tokio::sync::Mutex::new(None),
        }
    }

    /// The engine of the newest committed version.
    pub async fn get(&self) -> Result<std::sync::Arc<CohortEngine>, CohortError> {
        let version = self
            .warehouse
            .latest_version()
            .await?
            .ok_or(CohortError::EmptyWarehouse)?;
        let mut slot = self.engine.lock().await;
        if let Some(engine) = slot.as_ref()
            && engine.version() == version
        {
            return Ok(engine.clone());
        }
        let snapshot = self.warehouse.snapshot(version).await?;
        let engine = std::sync::Arc::new(CohortEngine::for_snapshot(&self.warehouse, snapshot).await?);
        // A request that listed an older version before a newer engine was
        // kept gets its engine without replacing the newer one.
        if slot.as_ref().is_none_or(|kept| kept.version() < version) {
            *slot = Some(engine.clone());
        }
        Ok(engine)
    }
}

/// Compiles and runs cohorts over one warehouse snapshot.
pub struct CohortEngine {
    warehouse: Warehouse,
    snapshot: Snapshot,
    ctx: SessionContext,
    /// `ctx`'s state with [`cohort_optimizer_rules`]: what cohort plans run in.
    cohort_state: SessionState,
    providers: IndexProviders,
    /// The resource tables (`_id`, and `_lastUpdated` without `meta`).
    resources: ResourceProviders,
    /// From the reference index entries of the snapshot.
    compartment_references: CompartmentReferences,
    registry: &'static SearchRegistry,
}

impl CohortEngine {
    /// An engine over the current state of `warehouse`.
    pub async fn open(warehouse: &Warehouse) -> Result<Self, CohortError> {
        let snapshot = warehouse.current().await?.ok_or(CohortError::EmptyWarehouse)?;
        Self::for_snapshot(warehouse, snapshot).await
    }

    /// An engine over `snapshot` of `warehouse`.
    pub async fn for_snapshot(warehouse: &Warehouse, snapshot: Snapshot) -> Result<Self, CohortError> {
        let registry = SearchRegistry::r4().map_err(CohortError::Definitions)?;
        let ctx = new_query_session(warehouse)?;
        // The compiler puts the smaller input of each semi join on the build
        // side; statistics of filtered index scans are guesses, and a swap
        // can build a hash table of every reference of a type.
        ctx.sql("SET datafusion.optimizer.join_reordering = false").await?;
        // Joins collect their build side (the compiler's selective input)
        // whole instead of hash-repartitioning both inputs, and the build
        // side's keys reach the probe side's Parquet scan as a dynamic
        // filter evaluated while decoding: `value-quantity=gt6.5` next to a
        // selective code no longer moves millions of rows through the join
        // (2.5 s → 1.4 s at 100k patients, docs/benchmarks.md).
        ctx.sql("SET datafusion.optimizer.repartition_joins = false").await?;
        ctx.sql("SET datafusion.execution.parquet.pushdown_filters = true")
            .await?;
        let mut providers = IndexProviders::new();
        let mut resources = ResourceProviders::new();
        let mut compartment_references = CompartmentReferences::new();
        for (name, entry) in &snapshot.tables {
            if entry.kind == TableKind::Resource {
                let provider = files_provider(warehouse, &ctx, Some(resource_schema()), &entry.files).await?;
                resources.insert(name.clone(), provider);
                continue;
            }
            if entry.kind != TableKind::Index {
                continue;
            }
            if let Some((kind, resource_type)) = parse_index_table_key(name) {
                let provider = files_provider(warehouse, &ctx, Some(kind.schema()), &entry.files).await?;
                providers.insert((kind, resource_type.to_string()), provider);
                if !entry.compartment_references.is_empty() {
                    let params = entry.compartment_references.iter().cloned().collect();
                    compartment_references.insert(resource_type.to_string(), params);
                }
            }
        }
        let cohort_state = SessionStateBuilder::new_from_existing(ctx.state())
            .with_optimizer_rules(cohort_optimizer_rules())
            .build();
        Ok(Self {
            warehouse: warehouse.clone(),
            snapshot,
            ctx,
            cohort_state,
            providers,
            resources,
            compartment_references,
            registry,
        })
    }

    fn compiler(&self) -> Compiler<'_> {
        Compiler::new(
            &self.providers,
            &self.resources,
            &self.compartment_references,
            self.registry,
        )
    }

    /// The snapshot version the engine reads.
    pub fn version(&self) -> u64 {
        self.snapshot.version
    }

    /// Whether the snapshot has a search index (loads with `--no-index` do not).
    pub fn has_index(&self) -> bool {
        !self.providers.is_empty()
    }

    /// The session the engine plans in (index tables are reached through
    /// the plans it builds, not by name).
    pub fn session(&self) -> &SessionContext {
        &self.ctx
    }

    /// The warehouse the engine reads.
    pub fn warehouse(&self) -> &Warehouse {
        &self.warehouse
    }

    /// The snapshot the engine reads.
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// Every row of search parameter `param` of `resource_type` in the
    /// `kind` index (all its columns): what member lookups by identifier
    /// join with.
    pub fn index_rows(
        &self,
        kind: crate::index::IndexKind,
        resource_type: &str,
        param: &str,
    ) -> Result<LogicalPlan, CohortError> {
        let compiler = self.compiler();
        Ok(compiler
            .scan(kind, resource_type)?
            .filter(compiler.param_rows(resource_type, param))?
            .build()?)
    }

    /// The plan yielding the distinct ids (column `resource_id`) of the
    /// resources meeting any of `queries` (all of one type): `_typeFilter`
    /// semantics, where filters of one type are ORed.
    pub fn resource_ids_plan(&self, queries: &[SearchQuery]) -> Result<LogicalPlan, CohortError> {
        let compiler = self.compiler();
        let mut plan: Option<LogicalPlanBuilder> = None;
        for query in queries {
            let ids = LogicalPlanBuilder::from(compiler.query(query)?).project(vec![col(RESOURCE_ID)])?;
            plan = Some(match plan {
                None => ids,
                Some(previous) => previous.union(ids.build()?)?,
            });
        }
        let plan = plan.ok_or_else(|| {
            CohortError::DataFusion(datafusion::error::DataFusionError::Plan("no filter given".into()))
        })?;
        Ok(plan.distinct()?.build()?)
    }

    /// The plan yielding the distinct ids (column `resource_id`) of the
    /// `source_type` resources whose reference parameter `param` points to
    /// a resource of `target_types` in the compartment of a patient of
    /// `members` (a plan with a `member` column; `None`: any patient).
    /// Provenance of exported resources is found this way (`target`).
    /// `None` when `source_type` has no reference index.
    pub fn referencing_ids_plan(
        &self,
        source_type: &str,
        param: &str,
        target_types: &[String],
        members: Option<&LogicalPlan>,
    ) -> Result<Option<LogicalPlan>, CohortError> {
        use crate::index::IndexKind;
        use datafusion::datasource::provider_as_source;
        let Some(references) = self.providers.get(&(IndexKind::Reference, source_type.to_string())) else {
            return Ok(None);
        };
        let mut targets: Option<LogicalPlanBuilder> = None;
        let compiler = self.compiler();
        for (n, target_type) in target_types.iter().enumerate() {
            if !self.resources.contains_key(target_type) {
                continue;
            }
            let alias = format!("targets_{n}");
            let mut rows = compiler
                .resource_rows(target_type)?
                .filter(col(PATIENT).is_not_null())?
                .alias(alias.as_str())?;
            if let Some(members) = members {
                let members_alias = format!("target_members_{n}");
                rows = LogicalPlanBuilder::from(members.clone())
                    .alias(members_alias.as_str())?
                    .join(
                        rows.build()?,
                        JoinType::RightSemi,
                        (
                            vec![Column::new(Some(members_alias.as_str()), "member")],
                            vec![Column::new(Some(alias.as_str()), PATIENT)],
                        ),
                        None,
                    )?;
            }
            let rows = rows.project(vec![
                lit(target_type.as_str()).alias("t_type"),
                col(RESOURCE_ID).alias("t_id"),
            ])?;
            targets = Some(match targets {
                None => rows,
                Some(previous) => previous.union(rows.build()?)?,
            });
        }
        let Some(targets) = targets else {
            return Ok(None);
        };
        // The referencing rows (few) are the build side; the targets stream by.
        let plan = LogicalPlanBuilder::scan(
            compile::internal_table("referencing"),
            provider_as_source(references.clone()),
            None,
        )?
        .filter(compiler.param_rows(source_type, param))?
        .project(vec![col(RESOURCE_ID), col("target_type"), col("target_id")])?
        .join(
            targets.build()?,
            JoinType::LeftSemi,
            (
                vec![Column::from_name("target_type"), Column::from_name("target_id")],
                vec![Column::from_name("t_type"), Column::from_name("t_id")],
            ),
            None,
        )?
        .project(vec![col(RESOURCE_ID)])?
        .distinct()?
        .build()?;
        Ok(Some(plan))
    }

    /// Parses every expression (so all errors surface before anything runs).
    pub fn parse(expressions: &[impl AsRef<str>]) -> Result<Vec<SearchQuery>, CohortError> {
        expressions
            .iter()
            .map(|e| parse_search(e.as_ref()).map_err(CohortError::from))
            .collect()
    }

    /// The plan yielding the distinct ids (column `patient`) of the patients
    /// meeting every query, limited to `base` when given.
    pub fn plan(&self, queries: &[SearchQuery], base: Option<&[String]>) -> Result<LogicalPlan, CohortError> {
        let compiler = self.compiler();
        let mut branches = Vec::with_capacity(queries.len());
        for query in queries {
            let resources = LogicalPlanBuilder::from(compiler.query(query)?);
            // A Patient search selects the patients themselves.
            let patients = if query.resource_type == "Patient" {
                resources.project(vec![col(RESOURCE_ID).alias(PATIENT)])?
            } else {
                resources
                    .project(vec![col(PATIENT)])?
                    .filter(col(PATIENT).is_not_null())?
            };
            branches.push(patients.build()?);
        }
        let mut builder = match branches.len() {
            // No filter: every patient.
            0 => LogicalPlanBuilder::from(compiler.query(&SearchQuery {
                resource_type: "Patient",
                clauses: Vec::new(),
            })?)
            .project(vec![col(RESOURCE_ID).alias(PATIENT)])?
            .distinct()?,
            _ => LogicalPlanBuilder::from(intersect_patients(branches)?),
        };
        if let Some(base) = base {
            let values = if base.is_empty() {
                LogicalPlanBuilder::empty(false)
                    .project(vec![lit("").alias("member")])?
                    .filter(lit(false))?
            } else {
                LogicalPlanBuilder::values(base.iter().map(|id| vec![lit(id.as_str())]).collect())?
                    .project(vec![col("column1").alias("member")])?
            };
            builder = builder.alias("cohort")?.join(
                values.build()?,
                JoinType::LeftSemi,
                (
                    vec![Column::new(Some("cohort"), PATIENT)],
                    vec![Column::from_name("member")],
                ),
                None,
            )?;
        }
        Ok(builder.project(vec![col(PATIENT)])?.build()?)
    }

    /// Runs `plan` (from [`CohortEngine::plan`]); ids sorted.
    pub async fn run(&self, plan: LogicalPlan) -> Result<CohortResult, CohortError> {
        let frame = DataFrame::new(self.cohort_state.clone(), plan);
        let mut patients = Vec::new();
        for batch in frame.collect().await? {
            let column = batch.column(0);
            let Some(ids) = column.as_string_opt::<i32>() else {
                return Err(CohortError::DataFusion(datafusion::error::DataFusionError::Internal(
                    "cohort plan yields no string ids".into(),
                )));
            };
            patients.extend(
                (0..ids.len())
                    .filter(|&i| ids.is_valid(i))
                    .map(|i| ids.value(i).to_string()),
            );
        }
        patients.sort_unstable();
        patients.dedup();
        Ok(CohortResult { patients })
    }

    /// The patients meeting every expression (within `base` when given).
    pub async fn evaluate(
        &self,
        expressions: &[impl AsRef<str>],
        base: Option<&[String]>,
    ) -> Result<CohortResult, CohortError> {
        let queries = Self::parse(expressions)?;
        let plan = self.plan(&queries, base)?;
        self.run(plan).await
    }

    /// `EXPLAIN` of `plan` without running it: the rows DataFusion's
    /// `EXPLAIN` gives (`plan_type`, `plan`: the optimized logical plan and
    /// the physical plan), as the cohort session plans it. The SQL
    /// logic tests pin these, so an upgrade that changes pushdown or join
    /// order shows up as a diff.
    pub async fn explain_plans(&self, plan: LogicalPlan) -> Result<Vec<(String, String)>, CohortError> {
        let frame = DataFrame::new(self.cohort_state.clone(), plan).explain(false, false)?;
        let mut rows = Vec::new();
        for batch in frame.collect().await? {
            let (Some(kinds), Some(plans)) = (
                batch.column(0).as_string_opt::<i32>(),
                batch.column(1).as_string_opt::<i32>(),
            ) else {
                return Err(CohortError::DataFusion(datafusion::error::DataFusionError::Internal(
                    "EXPLAIN yields no text columns".into(),
                )));
            };
            rows.extend((0..batch.num_rows()).map(|i| (kinds.value(i).to_string(), plans.value(i).to_string())));
        }
        Ok(rows)
    }

    /// The optimized logical plan, and the physical plan with the metrics of
    /// running it (rows, row groups pruned by statistics), and the time taken.
    pub async fn explain(&self, plan: LogicalPlan) -> Result<String, CohortError> {
        let optimized = self.cohort_state.optimize(&plan)?;
        let started = Instant::now();
        let frame = DataFrame::new(self.cohort_state.clone(), plan).explain(false, true)?;
        let batches = frame.collect().await?;
        let elapsed = started.elapsed();
        let mut physical = String::new();
        for batch in &batches {
            // EXPLAIN ANALYZE: (plan_type, plan) rows.
            if let Some(plans) = batch.column(batch.num_columns() - 1).as_string_opt::<i32>() {
                for i in 0..plans.len() {
                    physical.push_str(plans.value(i));
                    physical.push('\n');
                }
            }
        }
        Ok(format!(
            "== Logical plan (optimized) ==\n{}\n\n== Physical plan with metrics ==\n{physical}\nexecuted in {:.3} s",
            optimized.display_indent(),
            elapsed.as_secs_f64()
        ))
    }
}

/// DataFusion's logical optimizer rules that act on the plans the cohort
/// compiler builds (scans, filters, projections, unnest, unions, aggregates,
/// semi and anti joins on keys, EXCEPT, VALUES). Left out of the default
/// list: the rules for subqueries (`RewriteSetComparison`,
/// `DecorrelatePredicateSubquery`, `ScalarSubqueryToJoin`,
/// `DecorrelateLateralJoin`), cross and outer joins, limits, distinct
/// aggregates (`SingleDistinctToGroupBy`), unions of filters
/// (`UnionsToFilter`), repeated or constant expressions
/// (`EliminateDuplicatedExpr`, `EliminateGroupByConstant`,
/// `CommonSubexprEliminate`) and struct field access
/// (`ExtractLeafExpressions`, `PushDownLeafProjections`), none of which
/// cohort plans contain; a plan that needed one would fail at physical
/// planning, which every cohort test goes through. Each request optimizes a fresh plan,
/// and the unused rules still walk it: 0.71–0.76 → 0.50–0.55 ms per
/// request at 615 patients (docs/benchmarks.md), with the same plans. Order
/// as in DataFusion's own list.
fn cohort_optimizer_rules() -> Vec<Arc<dyn OptimizerRule + Send + Sync>> {
    vec![
        Arc::new(OptimizeUnions::new()),
        Arc::new(SimplifyExpressions::new()),
        Arc::new(ReplaceDistinctWithAggregate::new()),
        Arc::new(EliminateJoin::new()),
        Arc::new(ExtractEquijoinPredicate::new()),
        Arc::new(EliminateFilter::new()),
        Arc::new(EliminateLimit::new()),
        Arc::new(PropagateEmptyRelation::new()),
        Arc::new(FilterNullJoinKeys::default()),
        Arc::new(PushDownFilter::new()),
        Arc::new(OptimizeProjections::new()),
    ]
}

/// Patients intersected through one bitmask: at most this many branches
/// (bits 0–61 of an `Int64` mask, so that all-bits-set stays positive).
const MASKED_BRANCHES: usize = 62;

/// The column holding a branch's bit in [`intersect_patients`].
const BRANCH_BIT: &str = "branch_bit";

/// The distinct patients (column `patient`) found in every one of `branches`
/// (each a plan with a `patient` column, duplicates allowed).
///
/// Branches are tagged with a bit each, unioned, and grouped by patient; a
/// patient is kept when the OR of its bits has every bit set. All branches'
/// scans then run side by side. A chain of semi joins (INTERSECT) runs them
/// one after the other instead, a join collecting its build side before its
/// probe side starts: at 615 patients the two-filter cohort took 4.2–4.8 ms
/// to execute that way against 2.5–2.6 ms this way, and at 100k patients
/// this way was as fast or faster (a selective and a broad filter, whose
/// probe the join's dynamic filter narrows: 1.40–1.49 s either way;
/// docs/benchmarks.md). More than [`MASKED_BRANCHES`] branches are
/// intersected in groups, then the groups' results likewise.
fn intersect_patients(mut branches: Vec<LogicalPlan>) -> Result<LogicalPlan, CohortError> {
    if branches.len() == 1 {
        return Ok(LogicalPlanBuilder::from(branches.remove(0)).distinct()?.build()?);
    }
    if branches.len() > MASKED_BRANCHES {
        let mut groups = Vec::new();
        while !branches.is_empty() {
            let rest = branches.split_off(branches.len().min(MASKED_BRANCHES));
            groups.push(intersect_patients(std::mem::replace(&mut branches, rest))?);
        }
        return intersect_patients(groups);
    }
    let every_bit = (1i64 << branches.len()) - 1;
    let mut tagged = Vec::with_capacity(branches.len());
    for (i, branch) in branches.into_iter().enumerate() {
        let bit = lit(1i64 << i).alias(BRANCH_BIT);
        tagged.push(
            LogicalPlanBuilder::from(branch)
                .project(vec![col(PATIENT), bit])?
                .build()?,
        );
    }
    // At least two branches here (one returned above).
    let mut union = LogicalPlanBuilder::from(tagged.remove(0));
    for branch in tagged {
        union = union.union(branch)?;
    }
    Ok(union
        .aggregate(vec![col(PATIENT)], vec![bit_or(col(BRANCH_BIT)).alias(BRANCH_BIT)])?
        .filter(col(BRANCH_BIT).eq(lit(every_bit)))?
        .project(vec![col(PATIENT)])?
        .build()?)
}
