//! Membership history: who joined and who left a Group, when. The
//! membership rows say which Group version added and removed each member
//! ([`super::Member`]); each version's stamp ([`VersionStamp`], kept on
//! the stored Group) says when it was written and on which warehouse
//! version. Together they answer `$members?_since=T` (the changes since
//! T) and `$members?_at=T` (the membership as of T), and fill the
//! `group_membership` SQL table.

use crate::query::GroupVisibility;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use datafusion::arrow::array::{RecordBatch, TimestampMicrosecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

use serde::{Deserialize, Serialize};

use super::live_table::{LiveTable, RowSource};
use super::manage::Groups;
use super::membership::{membership_batch, membership_schema};
use super::store::{GROUPS, StoredGroup};
use super::{GroupError, Member};
use crate::query::QueryError;
use crate::state::StateStore;

/// When a Group version was written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionStamp {
    /// The Group version.
    pub version: u64,
    /// When it was written (µs since the epoch).
    pub at: i64,
    /// The warehouse version its membership was computed on.
    pub warehouse_version: u64,
}

/// What happened to a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChangeAction {
    /// The patient became a member.
    Joined,
    /// The member's entry changed (its period or `inactive`).
    Changed,
    /// The patient stopped being a member.
    Left,
}

impl ChangeAction {
    /// The action's code.
    pub fn code(self) -> &'static str {
        match self {
            Self::Joined => "joined",
            Self::Changed => "changed",
            Self::Left => "left",
        }
    }
}

/// One change of a Group's membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembershipChange {
    /// The patient.
    pub patient: String,
    /// What happened.
    pub action: ChangeAction,
    /// The Group version that made the change.
    pub version: u64,
    /// When (µs since the epoch).
    pub at: i64,
}

impl StoredGroup {
    /// When Group version `version` was written (µs), if known.
    pub fn version_time(&self, version: u64) -> Option<i64> {
        self.stamps.iter().find(|s| s.version == version).map(|s| s.at)
    }

    /// The earliest instant the history answers for: the first stamped
    /// version's time (Groups written before stamps know none).
    pub fn history_start(&self) -> Option<i64> {
        self.stamps.iter().map(|s| s.at).min()
    }

    /// The Group version current at `at` (µs): the latest written at or
    /// before it. `None` before the Group existed (or its history starts).
    pub fn version_at(&self, at: i64) -> Option<u64> {
        self.stamps.iter().filter(|s| s.at <= at).map(|s| s.version).max()
    }
}

/// The changes `rows` record after `since` (µs), oldest first (then by
/// patient): an added row is a join, a removed row a leave, and a patient
/// whose entry was replaced in one version (its period or `inactive`
/// edited) one change. `stamps` date the versions.
pub fn changes_since(rows: &[Member], stamps: &[VersionStamp], since: i64) -> Vec<MembershipChange> {
    let time: BTreeMap<u64, i64> = stamps.iter().map(|s| (s.version, s.at)).collect();
    let after = |version: u64| time.get(&version).copied().filter(|at| *at > since);
    // (version, patient) -> (added, removed)
    let mut events: BTreeMap<(u64, &str), (bool, bool)> = BTreeMap::new();
    for row in rows {
        if after(row.added_in).is_some() {
            events.entry((row.added_in, &row.entry.patient)).or_default().0 = true;
        }
        if let Some(removed) = row.removed_in
            && after(removed).is_some()
        {
            events.entry((removed, &row.entry.patient)).or_default().1 = true;
        }
    }
    let mut changes: Vec<MembershipChange> = events
        .into_iter()
        .map(|((version, patient), (added, removed))| MembershipChange {
            patient: patient.to_string(),
            action: match (added, removed) {
                (true, true) => ChangeAction::Changed,
                (true, false) => ChangeAction::Joined,
                _ => ChangeAction::Left,
            },
            version,
            at: time.get(&version).copied().unwrap_or_default(),
        })
        .collect();
    changes.sort_by(|a, b| (a.at, &a.patient).cmp(&(b.at, &b.patient)));
    changes
}

impl Groups {
    /// Stored Group `id` (a loaded Group has no history: its versions are
    /// the loads').
    async fn with_history(&self, id: &str) -> Result<StoredGroup, GroupError> {
        match self.stored_group(id).await? {
            Some(stored) => Ok(stored),
            None if self.loaded_group(id).await?.is_some() => Err(GroupError::invalid(format!(
                "Group/{id} was loaded with the data: membership history is kept for Groups created through this server"
            ))),
            None => Err(GroupError::NotFound(id.to_string())),
        }
    }

    /// The membership changes of stored Group `id` after `since` (µs).
    pub async fn membership_changes(&self, id: &str, since: i64) -> Result<Vec<MembershipChange>, GroupError> {
        let stored = self.with_history(id).await?;
        check_in_history(&stored, since)?;
        let rows = stored.rows(&self.state).await?;
        Ok(changes_since(&rows, &stored.stamps, since))
    }

    /// The member Patient ids of stored Group `id` as of `at` (µs): the
    /// version current then, its entries that counted then; sorted.
    pub async fn members_at(&self, id: &str, at: i64) -> Result<Vec<String>, GroupError> {
        let stored = self.with_history(id).await?;
        check_in_history(&stored, at)?;
        let Some(version) = stored.version_at(at) else {
            return Ok(Vec::new());
        };
        let rows = stored.rows(&self.state).await?;
        let mut members: Vec<String> = rows
            .into_iter()
            .filter(|row| row.is_in(version) && row.entry.counts_at(at))
            .map(|row| row.entry.patient)
            .collect();
        members.sort_unstable();
        members.dedup();
        Ok(members)
    }
}

/// The name `fhirlake sql` gives the membership history table.
pub const HISTORY_TABLE: &str = "group_membership";

/// The schema of the membership history table: the membership rows
/// ([`membership_schema`]) with the times their versions were written.
pub fn history_schema() -> SchemaRef {
    let time = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    let mut fields: Vec<Field> = membership_schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new("added_at", time.clone(), true));
    fields.push(Field::new("removed_at", time, true));
    Arc::new(Schema::new(fields))
}

/// Every membership row of every Group stored in `state` (one batch per
/// Group) as [`history_schema`]: who joined which Group in which version
/// and when, and left when.
pub async fn history_batches(state: &StateStore, visibility: &GroupVisibility) -> Result<Vec<RecordBatch>, GroupError> {
    let mut batches = Vec::new();
    for id in state.list(GROUPS).await? {
        let Some(stored) = state.get::<StoredGroup>(GROUPS, &id).await? else {
            continue;
        };
        if !visibility.sees(&id, stored.owner.as_deref()) {
            continue;
        }
        let rows = stored.rows(state).await?;
        let rows_batch = membership_batch(&[(id.as_str(), &rows)]).map_err(QueryError::from)?;
        let time = |version: Option<u64>| version.and_then(|v| stored.version_time(v));
        let added: TimestampMicrosecondArray = rows.iter().map(|r| time(Some(r.added_in))).collect();
        let removed: TimestampMicrosecondArray = rows.iter().map(|r| time(r.removed_in)).collect();
        let mut columns = rows_batch.columns().to_vec();
        columns.push(Arc::new(added.with_timezone("UTC")));
        columns.push(Arc::new(removed.with_timezone("UTC")));
        let batch = RecordBatch::try_new(history_schema(), columns).map_err(QueryError::from)?;
        batches.push(batch);
    }
    Ok(batches)
}

/// The membership history as a SQL table ([`HISTORY_TABLE`]), read from
/// `state` at each scan.
pub fn history_table(state: StateStore, visibility: GroupVisibility) -> LiveTable {
    let rows: RowSource = Arc::new(move || {
        let state = state.clone();
        let visibility = visibility.clone();
        Box::pin(async move { history_batches(&state, &visibility).await })
    });
    LiveTable::new(HISTORY_TABLE, history_schema(), rows)
}

/// The members of `stored` at its version `version` (entries counting at
/// `at`, µs) who were not members at `since` (µs): those who joined after
/// it. Every member when the Group was created after `since`; refused when
/// its history no longer reaches back to `since` (pruned, or written
/// before history was kept).
pub async fn joined_since(
    state: &StateStore,
    stored: &StoredGroup,
    version: u64,
    since: i64,
    at: i64,
) -> Result<HashSet<String>, GroupError> {
    let rows = stored.rows(state).await?;
    let members = |version: u64, at: i64| -> HashSet<&str> {
        rows.iter()
            .filter(|row| row.is_in(version) && row.entry.counts_at(at))
            .map(|row| row.entry.patient.as_str())
            .collect()
    };
    let before = match stored.version_at(since) {
        Some(then) => members(then, since),
        None if stored.stamps.first().is_some_and(|first| first.version == 1) => HashSet::new(),
        None => {
            check_in_history(stored, since)?;
            HashSet::new()
        }
    };
    Ok(members(version, at)
        .into_iter()
        .filter(|p| !before.contains(p))
        .map(str::to_string)
        .collect())
}

/// Drops the history before `cutoff` (µs): the stamps of versions
/// superseded by then (the one current at `cutoff` stays, so the history
/// still answers for it), and the rows that left in a version written by
/// then, unless a version still kept (`oldest_kept`: the oldest readable
/// version record, which an unexpired export may pin) had them. Rows of
/// versions without a stamp are kept.
pub fn prune_history(
    rows: Vec<Member>,
    stamps: &mut Vec<VersionStamp>,
    cutoff: i64,
    oldest_kept: Option<u64>,
) -> Vec<Member> {
    let written: BTreeMap<u64, i64> = stamps.iter().map(|s| (s.version, s.at)).collect();
    let current_at_cutoff = stamps.iter().filter(|s| s.at <= cutoff).map(|s| s.version).max();
    stamps.retain(|s| s.at > cutoff || Some(s.version) == current_at_cutoff);
    rows.into_iter()
        .filter(|row| {
            let left_by_then = row
                .removed_in
                .filter(|r| oldest_kept.is_none_or(|kept| *r <= kept))
                .and_then(|r| written.get(&r))
                .is_some_and(|at| *at <= cutoff);
            !left_by_then
        })
        .collect()
}

/// Refuses an instant before `stored`'s history starts (the answer would
/// be incomplete).
pub fn check_in_history(stored: &StoredGroup, at: i64) -> Result<(), GroupError> {
    match stored.history_start() {
        Some(start) if at >= start => Ok(()),
        start => Err(GroupError::BeforeHistory {
            id: stored.id.clone(),
            start: start
                .and_then(chrono::DateTime::from_timestamp_micros)
                .map(|t| t.to_rfc3339()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::group::{MemberEntry, next_membership};

    fn stamp(version: u64, at: i64) -> VersionStamp {
        VersionStamp {
            version,
            at,
            warehouse_version: 1,
        }
    }

    #[test]
    fn joins_leaves_and_changes_after_an_instant() {
        let entry = |p: &str| MemberEntry::patient(p);
        let v1 = next_membership(&[], &[entry("a"), entry("b")], 1);
        let v2 = next_membership(&v1, &[entry("b"), entry("c")], 2);
        let ended = MemberEntry {
            period_end: Some("2030".into()),
            ..entry("b")
        };
        let v3 = next_membership(&v2, &[ended, entry("c")], 3);
        let stamps = [stamp(1, 10), stamp(2, 20), stamp(3, 30)];
        let since = changes_since(&v3, &stamps, 15);
        let seen: Vec<(&str, ChangeAction, u64)> = since
            .iter()
            .map(|c| (c.patient.as_str(), c.action, c.version))
            .collect();
        assert_eq!(
            seen,
            [
                ("a", ChangeAction::Left, 2),
                ("c", ChangeAction::Joined, 2),
                ("b", ChangeAction::Changed, 3)
            ]
        );
        assert_eq!(changes_since(&v3, &stamps, 0).len(), 5);
        assert!(changes_since(&v3, &stamps, 30).is_empty());
    }

    #[test]
    fn pruning_keeps_what_answers_after_the_cutoff() {
        let entry = |p: &str| MemberEntry::patient(p);
        let v1 = next_membership(&[], &[entry("a"), entry("b")], 1);
        let v2 = next_membership(&v1, &[entry("b"), entry("c")], 2);
        let v3 = next_membership(&v2, &[entry("c")], 3);
        let mut stamps = vec![stamp(1, 10), stamp(2, 20), stamp(3, 30)];
        // Cutoff 25: version 2 is current then; a (left in 2) goes, b (left in 3) stays.
        let kept = prune_history(v3.clone(), &mut stamps, 25, None);
        assert_eq!(stamps.iter().map(|s| s.version).collect::<Vec<_>>(), [2, 3]);
        let patients: Vec<&str> = kept.iter().map(|m| m.entry.patient.as_str()).collect();
        assert_eq!(patients, ["b", "c"]);
        assert_eq!(
            changes_since(&kept, &stamps, 25),
            changes_since(&v3, &[stamp(1, 10), stamp(2, 20), stamp(3, 30)], 25)
        );
    }
}
