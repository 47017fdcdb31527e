//! `cohort('Condition?code=…', 'Patient?gender=female')` in SQL: a table
//! function whose table is the cohort compiler's own logical plan (a view,
//! inlined when the query is planned: no opaque operator), one column
//! `id` of patient ids. Its arguments are ANDed member-filters, as in
//! `fhirlake cohort`.

use std::sync::Arc;

use datafusion::catalog::view::ViewTable;
use datafusion::catalog::{TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::{ScalarValue, plan_err};
use datafusion::error::Result;
use datafusion::logical_expr::{Expr, LogicalPlanBuilder};
use datafusion::prelude::col;

use super::CohortEngine;
use crate::index::columns::PATIENT;

/// The name SQL calls the function by.
pub const COHORT_FUNCTION: &str = "cohort";

/// Whether a session may read resources of a type (a front's
/// authorization rule, [`crate::query::ReadAccess`]).
pub type TypeCheck = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// `cohort(…)` over one cohort engine (one warehouse snapshot).
#[derive(Clone)]
pub struct CohortFunction {
    engine: Arc<CohortEngine>,
    readable: Option<TypeCheck>,
}

impl std::fmt::Debug for CohortFunction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CohortFunction(v{})", self.engine.version())
    }
}

impl CohortFunction {
    /// The function over `engine`'s snapshot.
    pub fn new(engine: Arc<CohortEngine>) -> Self {
        Self { engine, readable: None }
    }

    /// The function refusing filters that read a type `readable` denies
    /// (every filter yields Patients, so `Patient` too).
    pub fn readable_by(self, readable: TypeCheck) -> Self {
        Self {
            readable: Some(readable),
            ..self
        }
    }

    /// Fails if a filter reads a type the session may not read.
    fn check_types(&self, queries: &[crate::search::SearchQuery]) -> Result<()> {
        let Some(readable) = &self.readable else {
            return Ok(());
        };
        let read = queries.iter().flat_map(|q| q.types_read()).chain(["Patient"]);
        for resource_type in read {
            if !readable(resource_type) {
                return Err(datafusion::error::DataFusionError::External(Box::new(
                    crate::query::AccessDenied::cohort_type(resource_type),
                )));
            }
        }
        Ok(())
    }
}

impl TableFunctionImpl for CohortFunction {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let mut filters = Vec::new();
        for arg in args.exprs() {
            match arg {
                Expr::Literal(ScalarValue::Utf8(Some(text)) | ScalarValue::LargeUtf8(Some(text)), _) => {
                    filters.push(text.clone());
                }
                other => {
                    return plan_err!(
                        "cohort() takes member-filter strings such as 'Condition?code=http://snomed.info/sct|44054006', got {other}"
                    );
                }
            }
        }
        if filters.is_empty() {
            return plan_err!("cohort() needs at least one member-filter, such as 'Patient?gender=female'");
        }
        if !self.engine.has_index() {
            return plan_err!("cohort() needs the search index, and this warehouse was loaded with --no-index");
        }
        let queries = match CohortEngine::parse(&filters) {
            Ok(queries) => queries,
            Err(e) => return plan_err!("cohort(): {e}"),
        };
        self.check_types(&queries)?;
        let plan = match self.engine.plan(&queries, None) {
            Ok(plan) => plan,
            Err(e) => return plan_err!("cohort(): {e}"),
        };
        let plan = LogicalPlanBuilder::from(plan)
            .project(vec![col(PATIENT).alias("id")])?
            .build()?;
        Ok(Arc::new(ViewTable::new(plan, None)))
    }
}
