//! The SQL session analysts get, the one every SQL front opens: the
//! warehouse catalog of [`crate::query::open_session`] (views, raw
//! resources, index tables) and what the Group and cohort modules add on
//! top: `group_members` (every Group's members now), `group_membership`
//! (membership history of the Groups created through the server) and the
//! `cohort('Type?…', …)` table function.

use std::sync::Arc;

use datafusion::prelude::SessionContext;

use crate::cohort::CohortEngine;
use crate::cohort::sql_function::{COHORT_FUNCTION, CohortFunction};
use crate::group::history::{HISTORY_TABLE, history_table};
use crate::group::members_table::{MEMBERS_TABLE, members_table};
use crate::query::{GroupVisibility, QueryError, ReadAccess};
use crate::state::StateStore;
use crate::warehouse::catalog::{QUERY_MEMORY_LIMIT, session_with_memory};
use crate::warehouse::{Snapshot, Warehouse};

/// How an analyst session is opened.
#[derive(Debug, Clone)]
pub struct AnalystOptions {
    /// Bytes a query may hold in sorts, joins and aggregates (it spills
    /// beyond them where it can).
    pub memory_limit: usize,
    /// What `cohort()` may read.
    pub access: ReadAccess,
    /// The Groups `group_members` and `group_membership` show.
    pub groups: GroupVisibility,
}

impl Default for AnalystOptions {
    fn default() -> Self {
        Self {
            memory_limit: QUERY_MEMORY_LIMIT,
            access: ReadAccess::Everything,
            groups: GroupVisibility::All,
        }
    }
}

/// A session over `warehouse`'s current snapshot with the Group tables and
/// `cohort()` (on an empty warehouse, which has nothing to plan over, the
/// function is absent).
pub async fn open_analyst_session(warehouse: &Warehouse) -> Result<SessionContext, QueryError> {
    Ok(open_analyst_session_with(warehouse, &AnalystOptions::default())
        .await?
        .0)
}

/// [`open_analyst_session`] with `options`; also returns the snapshot the
/// session reads (`None`: nothing loaded yet).
pub async fn open_analyst_session_with(
    warehouse: &Warehouse,
    options: &AnalystOptions,
) -> Result<(SessionContext, Option<Snapshot>), QueryError> {
    let (ctx, snapshot) = session_with_memory(warehouse, options.memory_limit).await?;
    let state = StateStore::new(warehouse.root().clone());
    let groups = options.groups.clone();
    ctx.register_table(HISTORY_TABLE, Arc::new(history_table(state, groups.clone())))?;
    ctx.register_table(MEMBERS_TABLE, Arc::new(members_table(warehouse.clone(), groups)))?;
    // `cohort()` plans over the snapshot the session's tables read.
    if snapshot.is_none() {
        tracing::warn!(
            "warehouse {} holds no data yet: run `fhirlake load` first",
            warehouse.root().url()
        );
    }
    if let Some(snapshot) = &snapshot {
        match CohortEngine::for_snapshot(warehouse, snapshot.clone()).await {
            Ok(engine) => {
                let mut function = CohortFunction::new(Arc::new(engine));
                if !options.access.allows_all() {
                    function = function.readable_by(options.access.as_check());
                }
                ctx.register_udtf(COHORT_FUNCTION, Arc::new(function));
            }
            Err(e) => tracing::warn!(error = %e, "cohort() is not available in this session"),
        }
    }
    Ok((ctx, snapshot))
}
