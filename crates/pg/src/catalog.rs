//! What Postgres clients expect beyond the warehouse's tables: the
//! `pg_catalog` schema and functions (`\dt`, `\d`, SQLAlchemy's
//! `inspect()`, DBeaver's and Metabase's browsers read them), from
//! datafusion-pg-catalog, added to every session context.

use std::sync::Arc;

use datafusion::error::DataFusionError;
use datafusion::prelude::SessionContext;
use datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_pg_catalog::pg_catalog::setup_pg_catalog;
use fhirlake_engine::sql::SessionHook;

/// The hook adding `pg_catalog` to a session.
pub fn pg_catalog_hook() -> SessionHook {
    Arc::new(|ctx: &SessionContext| {
        let catalog = ctx.state().config().options().catalog.default_catalog.clone();
        setup_pg_catalog(ctx, &catalog, EmptyContextProvider).map_err(|e| DataFusionError::External(e))
    })
}
