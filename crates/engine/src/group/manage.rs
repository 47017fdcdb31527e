//! Managing Groups: creating and updating cohort Groups (computing their
//! members), reading, listing and deleting them, the Groups of the loaded
//! data, members with their Patient resources, and refreshing cohorts after
//! loads.

use std::collections::HashSet;
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray};
use datafusion::common::TableReference;
use datafusion::prelude::{col, lit};
use serde_json::{Value, json};

use super::history::{VersionStamp, prune_history};
use super::identify::resolve_members;
use super::membership::changed_by;
use super::mode::MembershipMode;
use super::segments::{MAX_SEGMENTS, MembershipOptions, Segment, delete_segments, write_segments};
use super::{
    ChangedMember, CohortRequest, GROUPS, GroupError, GroupResolver, Member, MemberAction, MemberChange, MemberEntry,
    MemberRef, StoredGroup, compute, group_resource, next_membership,
};
use crate::cohort::CurrentEngine;
use crate::export::Progress;
use crate::state::StateStore;
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
    /// How membership segments are written.
    pub membership: MembershipOptions,
    /// The membership mode of criteria Groups that name none.
    pub default_mode: MembershipMode,
    /// Touched patients beyond which a refresh recomputes every patient.
    pub incremental_limit: usize,
    /// Membership history (rows that left, version stamps, refresh log)
    /// is kept this long.
    pub history_retention: std::time::Duration,
}

/// What a new Group version is made of.
pub(crate) struct GroupWrite<'a> {
    /// The Group.
    pub id: &'a str,
    /// Its request (`If-Match` in `expected_version`).
    pub request: &'a CohortRequest,
    /// Its member entries.
    pub entries: Vec<MemberEntry>,
    /// The warehouse version they were computed on.
    pub warehouse_version: u64,
    /// The client writing it (a new Group's owner).
    pub owner: Option<String>,
}

/// `member` entries a member-based Group's resource lists when read; the
/// rest are paged by `$members` (`quantity` counts all that count now).
pub const MEMBER_ENTRY_LIMIT: usize = 1000;

impl Groups {
    /// Computes `request`'s members and stores them as Group `id` (a new
    /// version when it exists; an update keeps the creator as owner).
    /// Returns it with the member entries skipped as unknown.
    pub async fn compute_group(
        &self,
        id: &str,
        request: &CohortRequest,
        owner: Option<String>,
        progress: &Progress,
    ) -> Result<(StoredGroup, Vec<String>), GroupError> {
        self.refresh_on_demand_bases(request).await?;
        let computed = compute(&self.cohorts, request).await?;
        let _writes = self.writes.lock().await;
        let stored = self
            .write_group(
                id,
                request,
                computed.entries,
                computed.warehouse_version,
                owner,
                progress,
            )
            .await?;
        Ok((stored, computed.skipped))
    }

    /// What can be checked before a Group job is accepted (an async create
    /// or update is refused before its 202, not failed after it): a
    /// member-based Group's members must be Patients of the warehouse; a
    /// criteria Group's filters must compile and its base Groups exist.
    pub async fn precheck(&self, request: &CohortRequest) -> Result<(), GroupError> {
        let engine = self.cohorts.get().await?;
        if request.is_member_based() {
            super::roster_entries(&engine, request).await?;
            return Ok(());
        }
        // Every filter compiled, so a modifier or parameter the compiler
        // refuses is a 400 now, not a failed job.
        if !engine.has_index() {
            return Err(GroupError::NoIndex);
        }
        let queries = crate::cohort::CohortEngine::parse(&request.filters)?;
        engine.plan(&queries, None)?;
        for base in &request.base_groups {
            if self.stored_group(base).await?.is_none() && self.loaded_group(base).await?.is_none() {
                return Err(GroupError::UnknownBase(base.clone()));
            }
        }
        Ok(())
    }

    /// Writes Group `id` with member `entries` (a new version when it
    /// exists): the membership rows it changes as a new segment (or all
    /// rows, compacted), then the record, in one put. The caller holds
    /// [`Groups::writes`].
    pub async fn write_group(
        &self,
        id: &str,
        request: &CohortRequest,
        entries: Vec<MemberEntry>,
        warehouse_version: u64,
        owner: Option<String>,
        progress: &Progress,
    ) -> Result<StoredGroup, GroupError> {
        let previous: Option<StoredGroup> = self.state.get(GROUPS, id).await?;
        let history = match &previous {
            Some(previous) => previous.rows(&self.state).await?,
            None => Vec::new(),
        };
        let write = GroupWrite {
            id,
            request,
            entries,
            warehouse_version,
            owner,
        };
        self.write_over(previous, &history, write, progress).await
    }

    /// [`Groups::write_group`] over the record read (`previous`) and its
    /// membership rows (`history`).
    pub(crate) async fn write_over(
        &self,
        previous: Option<StoredGroup>,
        history: &[Member],
        write: GroupWrite<'_>,
        progress: &Progress,
    ) -> Result<StoredGroup, GroupError> {
        let GroupWrite {
            id,
            request,
            entries,
            warehouse_version,
            owner,
        } = write;
        check_version(id, previous.as_ref(), request.expected_version)?;
        if previous.is_none() {
            tracing::info!(target: "fhirlake::audit", event = "cohort_created", client_id = owner.as_deref().unwrap_or("-"), group = %id, members = entries.len());
        }
        let owner = previous.as_ref().map_or(owner, |p| p.owner.clone());
        let version = previous.as_ref().map_or(1, |p| p.version + 1);
        let next = next_membership(history, &entries, version);
        // Millisecond precision: the stamp and `meta.lastUpdated` agree, so
        // a client may ask for the changes since a lastUpdated it read.
        let written = chrono::Utc::now();
        let at = written.timestamp_millis() * 1000;
        let stamp = VersionStamp {
            version,
            at,
            warehouse_version,
        };
        let (next, stamps) = self.next_history(previous.as_ref(), next, stamp).await;
        let (segments, compacted_away) = self.write_rows(id, previous.as_ref(), &next, version, progress).await?;
        let previously_retired = previous.as_ref().map(|p| p.retired.clone()).unwrap_or_default();
        // A compaction retires the segments it replaced and deletes those
        // the previous one retired (no reader can hold a record naming them).
        let (retired, superseded) = match compacted_away {
            Some(replaced) => (replaced, previously_retired),
            None => (previously_retired, Vec::new()),
        };
        let quantity = next.iter().filter(|m| m.is_current() && m.entry.counts_at(at)).count();
        let mut request = request.stored_form();
        if !request.is_member_based() && matches!(MembershipMode::of_group(&request.group), Ok(None)) {
            self.default_mode.set_on(&mut request.group);
        }
        let written_text = written.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let resource = group_resource(id, version, &request, quantity, &written_text);
        let stored = StoredGroup {
            id: id.to_string(),
            version,
            request,
            resource,
            members: Vec::new(),
            membership: Vec::new(),
            segments,
            retired,
            warehouse_version,
            owner,
            stamps,
        };
        self.keep_version(&stored).await?;
        self.state.put(GROUPS, id, &stored).await?;
        delete_segments(&self.state, id, &superseded).await;
        Ok(stored)
    }

    /// The rows and version stamps a new version keeps: `next`, and the
    /// previous stamps with `stamp`. When the new version compacts its
    /// segments (rewrites every row), history older than the retention is
    /// dropped ([`prune_history`]), except what a kept version needs.
    async fn next_history(
        &self,
        previous: Option<&StoredGroup>,
        next: Vec<Member>,
        stamp: VersionStamp,
    ) -> (Vec<Member>, Vec<VersionStamp>) {
        let mut stamps = previous.map(|p| p.stamps.clone()).unwrap_or_default();
        let cutoff = stamp.at - i64::try_from(self.history_retention.as_micros()).unwrap_or(i64::MAX);
        stamps.push(stamp);
        let Some(previous) = previous.filter(|p| compacts(Some(p))) else {
            return (next, stamps);
        };
        // Unknown which versions are kept: keep every row.
        let Ok(kept) = self.state.list(&super::versions::versions_kind(&previous.id)).await else {
            return (next, stamps);
        };
        let oldest_kept = kept.iter().filter_map(|v| v.parse::<u64>().ok()).min();
        let next = prune_history(next, &mut stamps, cutoff, oldest_kept);
        (next, stamps)
    }

    /// Writes the segments of Group version `version` whose rows are
    /// `next`: a delta of the rows it changed after the previous segments,
    /// or every row in new segments (a new Group, one written before
    /// segments, or one with [`MAX_SEGMENTS`] already). Returns the
    /// segments of the new version and, after a compaction, those it
    /// replaced.
    async fn write_rows(
        &self,
        id: &str,
        previous: Option<&StoredGroup>,
        next: &[Member],
        version: u64,
        progress: &Progress,
    ) -> Result<(Vec<Segment>, Option<Vec<Segment>>), GroupError> {
        let kept = previous.map(|p| p.segments.clone()).unwrap_or_default();
        if compacts(previous) {
            let written = write_segments(&self.state, id, version, next, &self.membership, progress).await?;
            return Ok((written, Some(kept)));
        }
        let delta = changed_by(next, version);
        let mut segments = kept;
        segments.extend(write_segments(&self.state, id, version, &delta, &self.membership, progress).await?);
        Ok((segments, None))
    }

    /// The resource `GET /Group/{id}` serves for `stored`: a member-based
    /// Group's with its current `member` entries, the first
    /// [`MEMBER_ENTRY_LIMIT`] of them (`meta.tag` SUBSETTED when cut;
    /// `quantity` and `$members` give all).
    pub async fn served_resource(&self, stored: &StoredGroup) -> Result<Value, GroupError> {
        self.resource_with_entries(stored, MEMBER_ENTRY_LIMIT).await
    }

    /// The Group resource with every current `member` entry: what a PATCH
    /// applies to.
    pub async fn full_resource(&self, stored: &StoredGroup) -> Result<Value, GroupError> {
        self.resource_with_entries(stored, usize::MAX).await
    }

    async fn resource_with_entries(&self, stored: &StoredGroup, limit: usize) -> Result<Value, GroupError> {
        let mut resource = stored.resource.clone();
        if !stored.request.is_member_based() || !stored.has_segments() {
            return Ok(resource);
        }
        let rows = stored.current_rows(&self.state).await?;
        let shown: Vec<Value> = rows.iter().take(limit).map(|m| m.entry.to_fhir()).collect();
        if let Some(object) = resource.as_object_mut() {
            if !shown.is_empty() {
                object.insert("member".into(), Value::Array(shown));
            }
            if rows.len() > limit {
                let meta = object.entry("meta").or_insert_with(|| json!({}));
                meta["tag"] = json!([{
                    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
                    "code": "SUBSETTED",
                    "display": format!("member lists the first {limit} of {} entries; page them with $members", rows.len()),
                }]);
            }
        }
        Ok(resource)
    }

    /// The current `member` entries of a member-based Group.
    async fn current_entries(&self, stored: &StoredGroup) -> Result<Vec<MemberEntry>, GroupError> {
        Ok(stored
            .current_rows(&self.state)
            .await?
            .into_iter()
            .map(|m| m.entry)
            .collect())
    }

    /// Resolves a member operation on member-based Group `id`: the Patients
    /// `members` name (ids to add must exist; identifiers must name exactly
    /// one Patient), checked against the current entries, so that what
    /// will fail is refused before an async operation's 202.
    pub async fn prepare_change(
        &self,
        id: &str,
        action: MemberAction,
        members: &[(MemberRef, Option<String>, Option<String>)],
    ) -> Result<(MemberChange, StoredGroup), GroupError> {
        let stored = self
            .stored_group(id)
            .await?
            .ok_or_else(|| GroupError::NotFound(id.to_string()))?;
        if !stored.request.is_member_based() {
            return Err(GroupError::NotMemberBased(id.to_string()));
        }
        let engine = self.cohorts.get().await?;
        // A member is removed by id even when its Patient has left the warehouse.
        let lookups: Vec<MemberRef> = members
            .iter()
            .map(|(reference, _, _)| reference.clone())
            .filter(|r| action == MemberAction::Add || !matches!(r, MemberRef::Patient(_)))
            .collect();
        let mut found = resolve_members(&engine, &lookups).await?.into_iter();
        let mut changed = Vec::with_capacity(members.len());
        for (reference, period_start, period_end) in members {
            let patient = match reference {
                MemberRef::Patient(id) if action == MemberAction::Remove => id.clone(),
                _ => found.next().unwrap_or_default(),
            };
            changed.push(ChangedMember {
                patient,
                period_start: period_start.clone(),
                period_end: period_end.clone(),
            });
        }
        let change = MemberChange {
            action,
            members: changed,
        };
        change.apply(&self.current_entries(&stored).await?)?;
        Ok((change, stored))
    }

    /// [`Groups::commit_change`] under [`Groups::writes`] (a synchronous
    /// member operation).
    pub async fn change_members(
        &self,
        id: &str,
        change: &MemberChange,
        expected_version: Option<u64>,
    ) -> Result<StoredGroup, GroupError> {
        let _writes = self.writes.lock().await;
        self.commit_change(id, change, expected_version, &Progress::default())
            .await
    }

    /// Applies a prepared member operation to Group `id` as a new version
    /// (refused when `expected_version` is given and stale, or when it no
    /// longer applies). The caller holds [`Groups::writes`].
    pub async fn commit_change(
        &self,
        id: &str,
        change: &MemberChange,
        expected_version: Option<u64>,
        progress: &Progress,
    ) -> Result<StoredGroup, GroupError> {
        let stored = self
            .stored_group(id)
            .await?
            .ok_or_else(|| GroupError::NotFound(id.to_string()))?;
        check_version(id, Some(&stored), expected_version)?;
        let current = self.current_entries(&stored).await?;
        let entries = change.apply(&current)?;
        if entries == current {
            // Adding members who are in already: no new version.
            return Ok(stored);
        }
        let warehouse_version = self.cohorts.get().await?.version();
        let request = stored.request.clone();
        self.write_group(id, &request, entries, warehouse_version, stored.owner.clone(), progress)
            .await
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
        delete_segments(&self.state, id, &stored.segments).await;
        delete_segments(&self.state, id, &stored.retired).await;
        self.forget_versions(id).await;
        self.forget_refresh_log(id).await;
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
}

/// Whether the version after `previous` rewrites every membership row
/// (a new Group, one written before segments, or one with
/// [`MAX_SEGMENTS`] already) rather than adding a delta segment.
fn compacts(previous: Option<&StoredGroup>) -> bool {
    previous.is_none_or(|p| p.segments.is_empty() || p.segments.len() >= MAX_SEGMENTS)
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
