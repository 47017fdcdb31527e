//! FHIR read and search of the resources clients pick Group members from
//! (`GET /Patient/{id}`, `GET /Patient?…`, and the same for `Coverage`):
//! the search is compiled by the cohort compiler, exactly as a
//! `member-filter` of that type, and answers the matching resources in id
//! order, a page at a time.

use datafusion::arrow::array::AsArray;
use datafusion::common::JoinType;
use datafusion::prelude::col;
use serde_json::Value;

use super::Service;
use crate::cohort::{CohortEngine, CohortError};
use crate::group::identify::values_frame;
use crate::warehouse::catalog::table_provider;

/// One page of a search.
#[derive(Debug)]
pub struct SearchPage {
    /// Resources matching, on every page.
    pub total: usize,
    /// This page's resources, in id order.
    pub resources: Vec<Value>,
}

impl Service {
    /// The `resource_type` resources matching the search parameters
    /// `params` (decoded name–value pairs, ANDed; none: every resource),
    /// `count` from `offset`.
    pub async fn search_resources(
        &self,
        resource_type: &str,
        params: &[(String, String)],
        count: usize,
        offset: usize,
    ) -> Result<SearchPage, CohortError> {
        let engine = self.cohorts.get().await?;
        let mut ids = if params.is_empty() {
            all_ids(&engine, resource_type).await?
        } else {
            let expression = format!(
                "{resource_type}?{}",
                params
                    .iter()
                    .map(|(name, value)| format!("{name}={value}"))
                    .collect::<Vec<_>>()
                    .join("&")
            );
            let queries = CohortEngine::parse(&[expression])?;
            plan_ids(&engine, engine.resource_ids_plan(&queries)?).await?
        };
        ids.sort_unstable();
        ids.dedup();
        let total = ids.len();
        let page: Vec<String> = ids.into_iter().skip(offset).take(count).collect();
        let resources = resources_by_id(&engine, resource_type, &page).await?;
        Ok(SearchPage { total, resources })
    }

    /// Resource `resource_type`/`id`, if loaded.
    pub async fn read_resource(&self, resource_type: &str, id: &str) -> Result<Option<Value>, CohortError> {
        let engine = self.cohorts.get().await?;
        Ok(resources_by_id(&engine, resource_type, &[id.to_string()])
            .await?
            .into_iter()
            .next())
    }
}

/// The ids (first column) `plan` yields.
pub(crate) async fn plan_ids(
    engine: &CohortEngine,
    plan: datafusion::logical_expr::LogicalPlan,
) -> Result<Vec<String>, CohortError> {
    let batches = datafusion::dataframe::DataFrame::new(engine.session().state(), plan)
        .collect()
        .await?;
    let mut ids = Vec::new();
    for batch in batches {
        let column = batch.column(0).as_string::<i32>();
        ids.extend((0..batch.num_rows()).map(|i| column.value(i).to_string()));
    }
    Ok(ids)
}

/// Every id of the `resource_type` table.
async fn all_ids(engine: &CohortEngine, resource_type: &str) -> Result<Vec<String>, CohortError> {
    let Some(entry) = engine.snapshot().tables.get(resource_type) else {
        return Ok(Vec::new());
    };
    let ctx = engine.session();
    let provider = table_provider(engine.warehouse(), ctx, resource_type, entry).await?;
    let mut ids = Vec::new();
    for batch in ctx.read_table(provider)?.select(vec![col("id")])?.collect().await? {
        let column = batch.column(0).as_string::<i32>();
        ids.extend((0..batch.num_rows()).map(|i| column.value(i).to_string()));
    }
    Ok(ids)
}

/// The `resource_type` resources with the given ids, in the order of `ids`.
pub(crate) async fn resources_by_id(
    engine: &CohortEngine,
    resource_type: &str,
    ids: &[String],
) -> Result<Vec<Value>, CohortError> {
    let Some(entry) = engine.snapshot().tables.get(resource_type) else {
        return Ok(Vec::new());
    };
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let ctx = engine.session();
    let provider = table_provider(engine.warehouse(), ctx, resource_type, entry).await?;
    let wanted: Vec<&str> = ids.iter().map(String::as_str).collect();
    let batches = ctx
        .read_table(provider)?
        .select(vec![col("id"), col("resource")])?
        .join(
            values_frame(engine, "wanted", &wanted)?,
            JoinType::LeftSemi,
            &["id"],
            &["wanted"],
            None,
        )?
        .collect()
        .await?;
    let mut found = std::collections::HashMap::new();
    for batch in batches {
        let (id_column, resources) = (batch.column(0).as_string::<i32>(), batch.column(1).as_string::<i32>());
        for i in 0..batch.num_rows() {
            let value = serde_json::from_str(resources.value(i)).map_err(|_| CohortError::Corrupt {
                resource: format!("{resource_type}/{}", id_column.value(i)),
            })?;
            found.insert(id_column.value(i).to_string(), value);
        }
    }
    Ok(ids.iter().filter_map(|id| found.remove(id)).collect())
}
