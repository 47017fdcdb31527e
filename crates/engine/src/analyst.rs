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
use crate::group::history::{HISTORY_TABLE, HistoryTable};
use crate::group::members_table::{MEMBERS_TABLE, MembersTable};
use crate::query::{QueryError, open_session};
use crate::state::StateStore;
use crate::warehouse::Warehouse;

/// A session over `warehouse`'s current snapshot with the Group tables and
/// `cohort()` (which needs a loaded warehouse: on an empty one it is
/// absent and says so by not resolving).
pub async fn open_analyst_session(warehouse: &Warehouse) -> Result<SessionContext, QueryError> {
    let ctx = open_session(warehouse).await?;
    let state = StateStore::new(warehouse.root().clone());
    ctx.register_table(HISTORY_TABLE, Arc::new(HistoryTable::new(state)))?;
    ctx.register_table(MEMBERS_TABLE, Arc::new(MembersTable::new(warehouse.clone())))?;
    if let Ok(engine) = CohortEngine::open(warehouse).await {
        ctx.register_udtf(COHORT_FUNCTION, Arc::new(CohortFunction::new(Arc::new(engine))));
    }
    Ok(ctx)
}
