//! Refreshing criteria Groups: recomputing a Group's membership and writing
//! a new version only when it changed. *Refreshed* Groups are refreshed
//! after each load (the service's watch of committed warehouse versions),
//! *on-demand* Groups at each use (an export's kick-off, `$members`, use
//! as a base population). Each refresh is recorded in the Group's refresh
//! log (`_server/refresh-log/<id>/<time>.json`); a failed one keeps the
//! last good membership.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use super::manage::Groups;
use super::mode::MembershipMode;
use super::store::{GROUPS, StoredGroup};
use super::{CohortRequest, Computed, GroupError, MemberEntry, compute};
use crate::export::Progress;
use crate::state::{StateStore, now};

/// State kind prefix of refresh logs.
pub const REFRESH_LOG: &str = "refresh-log";

/// The state kind of Group `id`'s refresh log.
pub fn refresh_log_kind(id: &str) -> String {
    format!("{REFRESH_LOG}/{id}")
}

/// What set a refresh off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RefreshTrigger {
    /// A committed warehouse version (a *refreshed* Group).
    Load,
    /// An export's kick-off (an *on-demand* Group).
    Export,
    /// A `$members` call (an *on-demand* Group).
    Members,
    /// Use as another Group's base population (an *on-demand* Group).
    Base,
}

/// How a refresh computed the membership.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "strategy", rename_all = "kebab-case")]
pub enum RefreshStrategy {
    /// Every patient, and why.
    Full {
        /// Why not only the patients the loads touched.
        reason: String,
    },
    /// Only the patients the loads since the last refresh touched.
    Incremental {
        /// How many patients were recomputed.
        patients: usize,
    },
}

/// What a refresh did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum RefreshOutcome {
    /// The membership was the same: no new version.
    Unchanged,
    /// The membership changed: `version` was written.
    Changed {
        /// The new Group version.
        version: u64,
        /// Patients who joined.
        joined: usize,
        /// Patients who left.
        left: usize,
    },
    /// The computation failed; the last good membership stays.
    Failed {
        /// Why.
        error: String,
    },
}

/// One refresh of one Group, as its refresh log keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshRecord {
    /// When it finished (RFC 3339).
    pub at: String,
    /// What set it off.
    pub trigger: RefreshTrigger,
    /// The warehouse version computed on (the one current when it failed).
    pub warehouse_version: u64,
    /// The Group version it started from.
    pub group_version: u64,
    /// How it computed.
    #[serde(flatten)]
    pub strategy: RefreshStrategy,
    /// What it did.
    #[serde(flatten)]
    pub outcome: RefreshOutcome,
}

impl Groups {
    /// The membership mode of stored Group `stored` (`None`: member-based,
    /// never refreshed). A Group stored before modes existed follows the
    /// server default.
    pub fn mode_of(&self, stored: &StoredGroup) -> Option<MembershipMode> {
        mode_of_request(&stored.request, self.default_mode)
    }

    /// Refreshes every *refreshed* Group computed on a warehouse version
    /// older than `current`.
    pub async fn refresh_stale_groups(&self, current: u64) {
        for id in self.state.list(GROUPS).await.unwrap_or_default() {
            let Ok(Some(stored)) = self.state.get::<StoredGroup>(GROUPS, &id).await else {
                continue;
            };
            if self.mode_of(&stored) != Some(MembershipMode::Refreshed) || stored.warehouse_version >= current {
                continue;
            }
            match self.refresh_group(&stored, RefreshTrigger::Load).await {
                Ok(Some(record)) => tracing::info!(group = %id, ?record, "cohort refreshed"),
                Ok(None) => {}
                Err(e) => tracing::error!(group = %id, error = %e, "cannot record a cohort refresh"),
            }
        }
    }

    /// Refreshes stored Group `id` when it is *on-demand* (before a use
    /// named by `trigger`); other Groups are left as they are. A failed
    /// computation is logged and returned.
    pub async fn refresh_if_on_demand(&self, id: &str, trigger: RefreshTrigger) -> Result<(), GroupError> {
        let Some(stored) = self.stored_group(id).await? else {
            return Ok(());
        };
        if self.mode_of(&stored) != Some(MembershipMode::OnDemand) {
            return Ok(());
        }
        let computed = compute(&self.cohorts, &stored.request).await;
        let (_, error) = self.record_refresh(&stored, trigger, computed).await?;
        error.map_or(Ok(()), Err)
    }

    /// Refreshes the *on-demand* Groups `request` uses as its base
    /// population (one level: their own bases are used as stored).
    pub async fn refresh_on_demand_bases(&self, request: &CohortRequest) -> Result<(), GroupError> {
        for base in &request.base_groups {
            self.refresh_if_on_demand(base, RefreshTrigger::Base).await?;
        }
        Ok(())
    }

    /// Recomputes `stored`'s membership and writes a new version when it
    /// changed; records the refresh in the Group's log. `None` when the
    /// Group changed or went away meanwhile (that write computed afresh).
    pub async fn refresh_group(
        &self,
        stored: &StoredGroup,
        trigger: RefreshTrigger,
    ) -> Result<Option<RefreshRecord>, GroupError> {
        let computed = compute(&self.cohorts, &stored.request).await;
        Ok(self.record_refresh(stored, trigger, computed).await?.0)
    }

    /// Applies and logs a refresh of `stored` that `computed` its
    /// membership; returns the record (`None`: the Group changed or went
    /// away meanwhile) and the computation's error, if it failed.
    async fn record_refresh(
        &self,
        stored: &StoredGroup,
        trigger: RefreshTrigger,
        computed: Result<Computed, GroupError>,
    ) -> Result<(Option<RefreshRecord>, Option<GroupError>), GroupError> {
        let _writes = self.writes.lock().await;
        let Some(current) = self.state.get::<StoredGroup>(GROUPS, &stored.id).await? else {
            return Ok((None, computed.err()));
        };
        if current.version != stored.version {
            return Ok((None, computed.err()));
        }
        let strategy = RefreshStrategy::Full {
            reason: "every patient is recomputed".into(),
        };
        let (warehouse_version, outcome, error) = match computed {
            Err(e) => {
                tracing::warn!(group = %current.id, error = %e, "cohort refresh failed; the last membership stays");
                let version = self.warehouse.latest_version().await.ok().flatten().unwrap_or_default();
                (version, RefreshOutcome::Failed { error: e.to_string() }, Some(e))
            }
            Ok(computed) => {
                let outcome = self
                    .apply_refresh(&current, computed.entries, computed.warehouse_version)
                    .await?;
                (computed.warehouse_version, outcome, None)
            }
        };
        let record = RefreshRecord {
            at: now(),
            trigger,
            warehouse_version,
            group_version: current.version,
            strategy,
            outcome,
        };
        let key = format!("{:020}", chrono::Utc::now().timestamp_micros());
        self.state.put(&refresh_log_kind(&current.id), &key, &record).await?;
        Ok((Some(record), error))
    }

    /// Writes `entries` as `current`'s next version when they differ from
    /// its members; otherwise only notes the warehouse version they were
    /// computed on. The caller holds the writes lock.
    async fn apply_refresh(
        &self,
        current: &StoredGroup,
        entries: Vec<MemberEntry>,
        warehouse_version: u64,
    ) -> Result<RefreshOutcome, GroupError> {
        let before: HashSet<MemberEntry> = current
            .current_rows(&self.state)
            .await?
            .into_iter()
            .map(|m| m.entry)
            .collect();
        let after: HashSet<&MemberEntry> = entries.iter().collect();
        let joined = after.iter().filter(|e| !before.contains(**e)).count();
        let left = before.iter().filter(|e| !after.contains(e)).count();
        if joined == 0 && left == 0 {
            let mut noted = current.clone();
            noted.warehouse_version = warehouse_version;
            self.state.put(GROUPS, &current.id, &noted).await?;
            return Ok(RefreshOutcome::Unchanged);
        }
        let written = self
            .write_group(
                &current.id,
                &current.request,
                entries,
                warehouse_version,
                current.owner.clone(),
                &Progress::default(),
            )
            .await?;
        Ok(RefreshOutcome::Changed {
            version: written.version,
            joined,
            left,
        })
    }

    /// The refresh log of Group `id`, oldest first.
    pub async fn refresh_log(&self, id: &str) -> Result<Vec<RefreshRecord>, GroupError> {
        read_refresh_log(&self.state, id).await
    }
}

/// The refresh log of Group `id` in `state`, oldest first.
pub async fn read_refresh_log(state: &StateStore, id: &str) -> Result<Vec<RefreshRecord>, GroupError> {
    let kind = refresh_log_kind(id);
    let mut keys = state.list(&kind).await?;
    keys.sort_unstable();
    let mut records = Vec::with_capacity(keys.len());
    for key in keys {
        if let Some(record) = state.get::<RefreshRecord>(&kind, &key).await? {
            records.push(record);
        }
    }
    Ok(records)
}

/// The membership mode of `request` (`None`: member-based), `default` when
/// it names none.
pub fn mode_of_request(request: &CohortRequest, default: MembershipMode) -> Option<MembershipMode> {
    if request.is_member_based() {
        return None;
    }
    Some(
        MembershipMode::of_group(&request.group)
            .ok()
            .flatten()
            .unwrap_or(default),
    )
}
