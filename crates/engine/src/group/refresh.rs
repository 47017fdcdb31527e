//! Refreshing criteria Groups: recomputing a Group's membership and writing
//! a new version only when it changed. *Refreshed* Groups are refreshed
//! after each load (the service's watch of committed warehouse versions),
//! *on-demand* Groups at each use (an export's kick-off, `$members`, use
//! as a base population). Each refresh is recorded in the Group's refresh
//! log (`_server/refresh-log/<id>/<time>.json`); a failed one keeps the
//! last good membership.

use std::collections::{BTreeSet, HashSet};

use serde::{Deserialize, Serialize};

use super::manage::{GroupWrite, Groups};
use super::mode::MembershipMode;
use super::store::{GROUPS, StoredGroup};
use super::{CohortRequest, Computed, GroupError, MemberEntry, compute, member_queries};
use crate::cohort::CohortEngine;
use crate::export::Progress;
use crate::fhir::PatientCompartment;
use crate::search::{ClauseKind, SearchQuery};
use crate::state::{StateStore, now};
use crate::warehouse::touched::touched_by;

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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// Seconds the computation took (of the membership, or of the
    /// touched patients' part of it).
    #[serde(default)]
    pub compute_seconds: f64,
    /// Seconds from the start of the computation to the record (the
    /// membership written when it changed).
    #[serde(default)]
    pub seconds: f64,
}

/// A refresh under way: what set it off, how it computes, since when.
struct RefreshRun {
    trigger: RefreshTrigger,
    strategy: RefreshStrategy,
    started: std::time::Instant,
    compute_seconds: f64,
}

impl Groups {
    /// The membership mode of stored Group `stored` (`None`: member-based,
    /// never refreshed). A Group stored before modes existed follows the
    /// server default.
    pub fn mode_of(&self, stored: &StoredGroup) -> Option<MembershipMode> {
        mode_of_request(&stored.request, self.default_mode)
    }

    /// Refreshes every *refreshed* Group computed on a warehouse version
    /// older than `current`, and with `with_based` every one whose base
    /// population is a Group (its base may have changed), bases before
    /// the Groups using them.
    pub async fn refresh_stale_groups(&self, current: u64, with_based: bool) {
        let mut refreshed = Vec::new();
        for id in self.state.list(GROUPS).await.unwrap_or_default() {
            if let Ok(Some(stored)) = self.state.get::<StoredGroup>(GROUPS, &id).await
                && self.mode_of(&stored) == Some(MembershipMode::Refreshed)
            {
                refreshed.push(stored);
            }
        }
        for id in bases_first(&refreshed) {
            // Re-read: refreshing a base may not change this record, but a
            // client's write meanwhile may have.
            let Ok(Some(stored)) = self.state.get::<StoredGroup>(GROUPS, &id).await else {
                continue;
            };
            let based = with_based && !stored.request.base_groups.is_empty();
            if stored.warehouse_version >= current && !based {
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
    /// named by `trigger`) and something it depends on may have changed
    /// (a load since its computation, or a base Group); other Groups are
    /// left as they are. A failed computation is logged and returned.
    pub async fn refresh_if_on_demand(&self, id: &str, trigger: RefreshTrigger) -> Result<(), GroupError> {
        let Some(stored) = self.stored_group(id).await? else {
            return Ok(());
        };
        if self.mode_of(&stored) != Some(MembershipMode::OnDemand) {
            return Ok(());
        }
        let latest = self.warehouse.latest_version().await?.unwrap_or_default();
        if stored.warehouse_version >= latest && stored.request.base_groups.is_empty() {
            return Ok(());
        }
        let (_, error) = Box::pin(self.run_refresh(&stored, trigger, trigger != RefreshTrigger::Base)).await?;
        error.map_or(Ok(()), Err)
    }

    /// Refreshes the *on-demand* Groups `request` uses as its base
    /// population (one level: a base's own on-demand bases are used as
    /// stored, so a cycle of bases ends).
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
        Ok(self.run_refresh(stored, trigger, true).await?.0)
    }

    /// Computes, applies and logs a refresh of `stored`; returns the record
    /// (`None`: the Group changed or went away meanwhile) and the
    /// computation's error, if it failed.
    /// With `with_bases`, its on-demand base Groups are refreshed first.
    async fn run_refresh(
        &self,
        stored: &StoredGroup,
        trigger: RefreshTrigger,
        with_bases: bool,
    ) -> Result<(Option<RefreshRecord>, Option<GroupError>), GroupError> {
        let started = std::time::Instant::now();
        if with_bases && let Err(e) = self.refresh_on_demand_bases(&stored.request).await {
            let run = RefreshRun {
                trigger,
                strategy: full("its base population is a Group"),
                started,
                compute_seconds: 0.0,
            };
            return self.record_refresh(stored, run, Err(e)).await;
        }
        let (strategy, computed) = self.compute_refresh(stored).await;
        let run = RefreshRun {
            trigger,
            strategy,
            started,
            compute_seconds: started.elapsed().as_secs_f64(),
        };
        self.record_refresh(stored, run, computed).await
    }

    /// Computes `stored`'s membership on the current warehouse: over only
    /// the patients the loads since its computation touched when that
    /// gives what a full recompute would ([`Groups::incremental_scope`]),
    /// else over every patient.
    async fn compute_refresh(&self, stored: &StoredGroup) -> (RefreshStrategy, Result<Computed, GroupError>) {
        let engine = match self.cohorts.get().await {
            Ok(engine) => engine,
            Err(e) => return (full("the warehouse cannot be read"), Err(e.into())),
        };
        match self.incremental_scope(stored, &engine).await {
            Ok(touched) => {
                let strategy = RefreshStrategy::Incremental {
                    patients: touched.len(),
                };
                (strategy, self.compute_incremental(stored, &engine, touched).await)
            }
            Err(reason) => (
                RefreshStrategy::Full { reason },
                compute(&self.cohorts, &stored.request).await,
            ),
        }
    }

    /// The patients whose membership in `stored` may have changed since it
    /// was computed: those the loads since touched. `Err` with the reason
    /// when a full recompute is needed: the Group's base population is a
    /// Group, a member-filter reaches data outside a patient's own
    /// compartment, some version since recorded no touched patients, or
    /// so many were touched that recomputing all costs no more.
    async fn incremental_scope(&self, stored: &StoredGroup, engine: &CohortEngine) -> Result<BTreeSet<String>, String> {
        let request = &stored.request;
        if !request.base_groups.is_empty() {
            return Err("its base population is a Group, whose members may change".into());
        }
        let queries = CohortEngine::parse(&request.filters).map_err(|e| e.to_string())?;
        compartment_local(&queries)?;
        // Members must be loaded Patients once there is a Patient table
        // (`member_queries`): its arrival changes every patient's answer.
        let had_patients = engine
            .warehouse()
            .snapshot(stored.warehouse_version)
            .await
            .map_err(|_| format!("warehouse version {} can no longer be read", stored.warehouse_version))?
            .tables
            .contains_key("Patient");
        if had_patients != engine.snapshot().tables.contains_key("Patient") {
            return Err("the Patient table appeared or went since it was computed".into());
        }
        let mut touched = BTreeSet::new();
        for version in stored.warehouse_version + 1..=engine.version() {
            let snapshot = if version == engine.version() {
                engine.snapshot().clone()
            } else {
                engine
                    .warehouse()
                    .snapshot(version)
                    .await
                    .map_err(|_| format!("warehouse version {version} can no longer be read"))?
            };
            match touched_by(engine.warehouse(), &snapshot).await {
                Some(patients) => touched.extend(patients),
                None => {
                    return Err(format!(
                        "warehouse version {version} ({}) recorded no touched patients",
                        snapshot.operation
                    ));
                }
            }
            let limit = self.incremental_limit;
            if touched.len() > limit {
                return Err(format!(
                    "more than {limit} patients were touched: recomputing all costs no more"
                ));
            }
        }
        Ok(touched)
    }

    /// The members among `touched` on `engine` (those meeting the filters
    /// now): the rest of `stored`'s membership cannot have changed, and
    /// is kept when the result is applied.
    async fn compute_incremental(
        &self,
        stored: &StoredGroup,
        engine: &CohortEngine,
        touched: BTreeSet<String>,
    ) -> Result<Computed, GroupError> {
        let request = &stored.request;
        let scope: Vec<String> = match request.base_patients.as_slice() {
            [] => touched.iter().cloned().collect(),
            base => base.iter().filter(|p| touched.contains(*p)).cloned().collect(),
        };
        let mut entries = Vec::new();
        if !scope.is_empty() {
            let queries = member_queries(engine, &request.filters)?;
            let plan = engine.plan(&queries, Some(&scope))?;
            entries = engine
                .run(plan)
                .await?
                .patients
                .iter()
                .map(|p| MemberEntry::patient(p))
                .collect();
        }
        Ok(Computed {
            entries,
            warehouse_version: engine.version(),
            skipped: Vec::new(),
            scope: Some(touched),
        })
    }

    /// Applies and logs a refresh of `stored` that `computed` its
    /// membership (see [`Groups::run_refresh`]).
    async fn record_refresh(
        &self,
        stored: &StoredGroup,
        run: RefreshRun,
        computed: Result<Computed, GroupError>,
    ) -> Result<(Option<RefreshRecord>, Option<GroupError>), GroupError> {
        let _writes = self.writes.lock().await;
        let Some(current) = self.state.get::<StoredGroup>(GROUPS, &stored.id).await? else {
            return Ok((None, computed.err()));
        };
        // A write meanwhile computed afresh; a refresh that finished first
        // on a newer warehouse version is not undone by an older result.
        let older = computed
            .as_ref()
            .is_ok_and(|c| c.warehouse_version < current.warehouse_version);
        if current.version != stored.version || older {
            return Ok((None, computed.err()));
        }
        let (warehouse_version, outcome, error) = match computed {
            Err(e) => {
                tracing::warn!(group = %current.id, error = %e, "cohort refresh failed; the last membership stays");
                let version = self.warehouse.latest_version().await.ok().flatten().unwrap_or_default();
                (version, RefreshOutcome::Failed { error: e.to_string() }, Some(e))
            }
            Ok(computed) => {
                let version = computed.warehouse_version;
                (version, self.apply_refresh(&current, computed).await?, None)
            }
        };
        let record = RefreshRecord {
            at: now(),
            trigger: run.trigger,
            warehouse_version,
            group_version: current.version,
            strategy: run.strategy,
            outcome,
            compute_seconds: run.compute_seconds,
            seconds: run.started.elapsed().as_secs_f64(),
        };
        // A failure retried (the sweep) is logged once per warehouse version.
        let repeated = match &record.outcome {
            RefreshOutcome::Failed { .. } => read_refresh_log(&self.state, &current.id)
                .await?
                .last()
                .is_some_and(|last| last.outcome == record.outcome && last.warehouse_version == warehouse_version),
            _ => false,
        };
        if !repeated {
            let key = format!("{:020}", chrono::Utc::now().timestamp_micros());
            self.state.put(&refresh_log_kind(&current.id), &key, &record).await?;
        }
        Ok((Some(record), error))
    }

    /// Writes the `computed` membership as `current`'s next version when it
    /// differs from its members (an incremental result replaces only the
    /// members among its scope); otherwise only notes the warehouse version
    /// it was computed on. The caller holds the writes lock. The rows are
    /// read once, here.
    async fn apply_refresh(&self, current: &StoredGroup, computed: Computed) -> Result<RefreshOutcome, GroupError> {
        let rows = current.rows(&self.state).await?;
        let before: HashSet<&MemberEntry> = rows.iter().filter(|m| m.is_current()).map(|m| &m.entry).collect();
        let entries: Vec<MemberEntry> = match &computed.scope {
            None => computed.entries,
            Some(scope) => {
                let mut kept: Vec<MemberEntry> = before
                    .iter()
                    .filter(|e| !scope.contains(&e.patient))
                    .map(|e| (*e).clone())
                    .collect();
                kept.extend(computed.entries);
                kept.sort_unstable_by(|a, b| a.patient.cmp(&b.patient));
                kept
            }
        };
        let after: HashSet<&MemberEntry> = entries.iter().collect();
        let joined = after.iter().filter(|e| !before.contains(**e)).count();
        let left = before.iter().filter(|e| !after.contains(**e)).count();
        if joined == 0 && left == 0 {
            let mut noted = current.clone();
            noted.warehouse_version = computed.warehouse_version;
            self.state.put(GROUPS, &current.id, &noted).await?;
            return Ok(RefreshOutcome::Unchanged);
        }
        let write = GroupWrite {
            id: &current.id,
            request: &current.request,
            entries,
            warehouse_version: computed.warehouse_version,
            owner: current.owner.clone(),
        };
        let written = self
            .write_over(Some(current.clone()), &rows, write, &Progress::default())
            .await?;
        Ok(RefreshOutcome::Changed {
            version: written.version,
            joined,
            left,
        })
    }

    /// Deletes refresh records older than the history retention (each
    /// Group keeps at least its latest).
    pub async fn purge_refresh_logs(&self) {
        let cutoff = chrono::Utc::now().timestamp_micros()
            - i64::try_from(self.history_retention.as_micros()).unwrap_or(i64::MAX);
        for id in self.state.list(GROUPS).await.unwrap_or_default() {
            let kind = refresh_log_kind(&id);
            let mut keys = self.state.list(&kind).await.unwrap_or_default();
            keys.sort_unstable();
            keys.pop();
            for key in keys.iter().filter(|k| k.parse::<i64>().is_ok_and(|t| t < cutoff)) {
                if let Err(e) = self.state.delete(&kind, key).await {
                    tracing::warn!(group = %id, error = %e, "cannot delete an old refresh record");
                }
            }
        }
    }

    /// Deletes the refresh log of Group `id` (it was deleted).
    pub(crate) async fn forget_refresh_log(&self, id: &str) {
        let kind = refresh_log_kind(id);
        for key in self.state.list(&kind).await.unwrap_or_default() {
            if let Err(e) = self.state.delete(&kind, &key).await {
                tracing::warn!(group = id, error = %e, "cannot delete a refresh record");
            }
        }
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

/// The ids of `groups` ordered so that a Group comes after the Groups of
/// `groups` it uses as its base population (a cycle is broken where it is
/// met).
fn bases_first(groups: &[StoredGroup]) -> Vec<String> {
    let by_id: std::collections::HashMap<&str, &StoredGroup> = groups.iter().map(|g| (g.id.as_str(), g)).collect();
    let mut ordered = Vec::with_capacity(groups.len());
    let mut placed: HashSet<&str> = HashSet::new();
    fn visit<'a>(
        id: &'a str,
        by_id: &std::collections::HashMap<&'a str, &'a StoredGroup>,
        placed: &mut HashSet<&'a str>,
        ordered: &mut Vec<String>,
    ) {
        let Some(group) = by_id.get(id) else { return };
        if !placed.insert(id) {
            return;
        }
        for base in &group.request.base_groups {
            visit(base, by_id, placed, ordered);
        }
        ordered.push(id.to_string());
    }
    for group in groups {
        visit(&group.id, &by_id, &mut placed, &mut ordered);
    }
    ordered
}

/// Touched patients beyond which a refresh recomputes every patient (the
/// scope is a literal list in the plan).
pub const INCREMENTAL_LIMIT: usize = 20_000;

fn full(reason: &str) -> RefreshStrategy {
    RefreshStrategy::Full { reason: reason.into() }
}

/// `Ok` when every clause of `queries` depends only on data in the
/// compartment of the patient it selects (so a patient none of whose
/// compartment changed keeps their membership): parameters of the
/// searched resource, and `Patient?_has:T:ref:…` where `ref` is one of the
/// references that put `T` in the Patient compartment. A chain reads a
/// referenced resource that may belong to no one, or to someone else.
fn compartment_local(queries: &[SearchQuery]) -> Result<(), String> {
    let compartment = PatientCompartment::r4().map_err(|e| e.to_string())?;
    for query in queries {
        for clause in &query.clauses {
            match &clause.kind {
                ClauseKind::Param { .. } => {}
                ClauseKind::Chain { target_type, .. } => {
                    return Err(format!(
                        "{}?{} reads {target_type} resources through a chain: a change there can move patients whose own data did not change",
                        query.resource_type, clause.name
                    ));
                }
                ClauseKind::Has {
                    source_type,
                    reference,
                    inner,
                } => {
                    let links_patient = query.resource_type == "Patient"
                        && compartment.paths(source_type).iter().any(|p| p.param == reference.code)
                        && matches!(inner.kind, ClauseKind::Param { .. });
                    if !links_patient {
                        return Err(format!(
                            "{}?{} reads {source_type} resources that may be in another patient's compartment",
                            query.resource_type, clause.name
                        ));
                    }
                }
            }
        }
    }
    Ok(())
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
