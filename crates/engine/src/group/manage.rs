//! Managing Groups: creating and updating cohort Groups (computing their
//! members), reading, listing and deleting them, the Groups of the loaded
//! data, members with their Patient resources, and refreshing cohorts after
//! loads.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{Array, AsArray};
use datafusion::common::TableReference;
use datafusion::prelude::{col, lit};
use serde_json::Value;

use super::{CohortRequest, GROUPS, GroupError, GroupResolver, StoredGroup, compute, group_resource, next_membership};
use crate::cohort::CurrentEngine;
use crate::state::{StateStore, now};
use crate::warehouse::Warehouse;
use crate::warehouse::catalog::RESOURCE_SCHEMA;

/// The Groups of a warehouse: those stored beside it and those loaded with
/// its data.
pub struct Groups {
    /// The warehouse.
    pub warehouse: Warehouse,
    /// The cohort engine of its current version.
    pub cohorts: Arc<CurrentEngine>,
    /// Where Groups are stored.
    pub state: StateStore,
    /// Serialises writes of Groups and job records (version numbers, a
    /// cancel racing a job's end); shared with the jobs.
    pub writes: Arc<tokio::sync::Mutex<()>>,
}

impl Groups {
    /// Computes `request`'s members and stores them as Group `id` (a new
    /// version when it exists; an update keeps the creator as owner).
    pub async fn compute_group(
        &self,
        id: &str,
        request: &CohortRequest,
        owner: Option<String>,
    ) -> Result<StoredGroup, GroupError> {
        let (members, version) = compute(&self.cohorts, request).await?;
        let _writes = self.writes.lock().await;
        self.write_group(id, request, members, version, owner).await
    }

    /// What can be checked before a Group job is accepted: a member-based
    /// Group's members must be Patients of the warehouse (an async create
    /// or update is refused before its 202, not failed after it).
    pub async fn precheck(&self, request: &CohortRequest) -> Result<(), GroupError> {
        if request.is_member_based() {
            let engine = self.cohorts.get().await?;
            super::roster_members(&engine, request).await?;
        }
        Ok(())
    }

    /// Writes Group `id` with `members` (a new version when it exists).
    /// The caller holds [`Groups::writes`].
    pub async fn write_group(
        &self,
        id: &str,
        request: &CohortRequest,
        members: Vec<String>,
        warehouse_version: u64,
        owner: Option<String>,
    ) -> Result<StoredGroup, GroupError> {
        let previous: Option<StoredGroup> = self.state.get(GROUPS, id).await?;
        check_version(id, previous.as_ref(), request.expected_version)?;
        if previous.is_none() {
            tracing::info!(target: "fhirlake::audit", event = "cohort_created", client_id = owner.as_deref().unwrap_or("-"), group = %id, members = members.len());
        }
        let owner = previous.as_ref().map_or(owner, |p| p.owner.clone());
        let version = previous.as_ref().map_or(1, |p| p.version + 1);
        let history = previous.map(|p| p.membership_rows()).unwrap_or_default();
        let membership = next_membership(&history, &members, version);
        let computed_at = now();
        let resource = group_resource(id, version, request, members.len(), &computed_at);
        let stored = StoredGroup {
            id: id.to_string(),
            version,
            request: CohortRequest {
                expected_version: None,
                ..request.clone()
            },
            resource,
            members,
            membership,
            warehouse_version,
            owner,
        };
        self.state.put(GROUPS, id, &stored).await?;
        Ok(stored)
    }

    /// Stored Group `id`, if any.
    pub async fn stored_group(&self, id: &str) -> Result<Option<StoredGroup>, GroupError> {
        Ok(self.state.get(GROUPS, id).await?)
    }

    /// Every stored Group.
    pub async fn stored_groups(&self) -> Result<Vec<StoredGroup>, GroupError> {
        let mut groups = Vec::new();
        for id in self.state.list(GROUPS).await? {
            if let Some(stored) = self.state.get(GROUPS, &id).await? {
                groups.push(stored);
            }
        }
        Ok(groups)
    }

    /// Deletes stored Group `id`; whether it existed.
    pub async fn delete_group(&self, id: &str, expected_version: Option<u64>) -> Result<bool, GroupError> {
        let _writes = self.writes.lock().await;
        let Some(stored) = self.state.get::<StoredGroup>(GROUPS, id).await? else {
            return Ok(false);
        };
        check_version(id, Some(&stored), expected_version)?;
        // A criteria Group computed within this one would lose its base.
        let mut dependants = Vec::new();
        for other in self.state.list(GROUPS).await? {
            if let Some(group) = self.state.get::<StoredGroup>(GROUPS, &other).await?
                && group.request.base_groups.iter().any(|base| base == id)
            {
                dependants.push(other);
            }
        }
        if !dependants.is_empty() {
            dependants.sort_unstable();
            return Err(GroupError::InUse {
                id: id.to_string(),
                dependants,
            });
        }
        self.state.delete(GROUPS, id).await?;
        Ok(true)
    }

    /// Groups of the loaded data, as JSON resources (only `id` when given).
    /// An empty warehouse has none.
    pub async fn loaded_groups(&self, id: Option<&str>) -> Result<Vec<Value>, GroupError> {
        let Ok(ctx) = crate::query::open_session(&self.warehouse).await else {
            return Ok(Vec::new());
        };
        let Ok(mut frame) = ctx.table(TableReference::partial(RESOURCE_SCHEMA, "Group")).await else {
            return Ok(Vec::new());
        };
        if let Some(id) = id {
            frame = frame.filter(col("id").eq(lit(id)))?;
        }
        let mut out = Vec::new();
        for batch in frame.select(vec![col("resource")])?.collect().await? {
            let column = batch.column(0).as_string::<i32>();
            for i in 0..column.len() {
                if let Ok(value) = serde_json::from_str(column.value(i)) {
                    out.push(value);
                }
            }
        }
        Ok(out)
    }

    /// Group `id` of the loaded data, if any.
    pub async fn loaded_group(&self, id: &str) -> Result<Option<Value>, GroupError> {
        Ok(self.loaded_groups(Some(id)).await?.into_iter().next())
    }

    /// The member Patient ids of Group `id` (stored or loaded), sorted.
    pub async fn group_members(&self, id: &str) -> Result<Vec<String>, GroupError> {
        let engine = self.cohorts.get().await?;
        GroupResolver::new(&engine).members(id).await
    }

    /// The loaded Patient resources among `ids` (members referenced but
    /// not loaded are absent).
    pub async fn patients_by_id(&self, ids: &[String]) -> Result<Vec<Value>, GroupError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ctx = crate::query::open_session(&self.warehouse).await?;
        let Ok(table) = ctx.table(TableReference::partial(RESOURCE_SCHEMA, "Patient")).await else {
            return Ok(Vec::new());
        };
        let wanted: HashSet<&str> = ids.iter().map(String::as_str).collect();
        let batches = table
            .filter(col("id").in_list(ids.iter().map(|i| lit(i.as_str())).collect(), false))?
            .select(vec![col("id"), col("resource")])?
            .collect()
            .await?;
        let mut out = Vec::new();
        for batch in batches {
            let (id_col, resource_col) = (batch.column(0).as_string::<i32>(), batch.column(1).as_string::<i32>());
            for i in 0..batch.num_rows() {
                if wanted.contains(id_col.value(i))
                    && let Ok(value) = serde_json::from_str(resource_col.value(i))
                {
                    out.push(value);
                }
            }
        }
        Ok(out)
    }

    /// Recomputes every stored cohort Group whose membership predates the
    /// current warehouse version.
    pub async fn refresh_stale_groups(&self) {
        let current = match self.warehouse.current().await {
            Ok(Some(snapshot)) => snapshot.version,
            _ => return,
        };
        let ids = self.state.list(GROUPS).await.unwrap_or_default();
        for id in ids {
            let Ok(Some(stored)) = self.state.get::<StoredGroup>(GROUPS, &id).await else {
                continue;
            };
            // A member-based Group's members are the client's, not a query's.
            if stored.warehouse_version >= current || stored.request.is_member_based() {
                continue;
            }
            match self.compute_group(&id, &stored.request, stored.owner.clone()).await {
                Ok(g) => {
                    tracing::info!(group = %id, version = g.version, members = g.members.len(), "cohort refreshed")
                }
                Err(e) => tracing::error!(group = %id, error = %e, "cohort refresh failed"),
            }
        }
    }

    /// [`Groups::refresh_stale_groups`] every `interval`, forever.
    pub async fn refresh_loop(&self, interval: Duration) {
        loop {
            tokio::time::sleep(interval).await;
            self.refresh_stale_groups().await;
        }
    }
}

/// `If-Match`: refused unless `expected` (when given) is `current`'s
/// version (a Group that does not exist is at no version).
pub fn check_version(id: &str, current: Option<&StoredGroup>, expected: Option<u64>) -> Result<(), GroupError> {
    match (expected, current) {
        (Some(expected), Some(current)) if current.version != expected => Err(GroupError::VersionMismatch {
            id: id.to_string(),
            expected,
            current: current.version,
        }),
        (Some(expected), None) => Err(GroupError::VersionMismatch {
            id: id.to_string(),
            expected,
            current: 0,
        }),
        _ => Ok(()),
    }
}
