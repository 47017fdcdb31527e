//! The one Group resolver: a Group id to its member Patient ids, whether
//! the Group was created through the server (stored, with computed members)
//! or loaded with the data (its `member` references), with nested Groups
//! expanded through the same resolver and cycles ended.

use std::collections::{HashMap, HashSet};

use datafusion::arrow::array::AsArray;
use datafusion::prelude::col;

use super::GroupError;
use super::membership::period_contains;
use super::store::{GROUPS, StoredGroup};
use crate::cohort::CohortEngine;
use crate::fhir::parse_reference;
use crate::json::JsonValue;
use crate::search::range::period_text_range;
use crate::state::StateStore;
use crate::warehouse::catalog::table_provider;

/// Resolves Group ids to members on one warehouse version.
pub struct GroupResolver<'a> {
    engine: &'a CohortEngine,
    store: StateStore,
    /// The loaded Group resources by id, read on first need.
    loaded: Option<HashMap<String, String>>,
    /// The instant (µs) a roster's `member.period` and `member.inactive`
    /// are judged at.
    at: i64,
    /// A stored Group read at an earlier version (an export's).
    pinned: Option<(String, u64)>,
}

impl<'a> GroupResolver<'a> {
    /// A resolver over `engine`'s warehouse version and the Groups stored
    /// beside that warehouse, judging membership now.
    pub fn new(engine: &'a CohortEngine) -> Self {
        Self::at(engine, chrono::Utc::now().timestamp_micros())
    }

    /// A resolver judging membership at `at` (µs since the epoch; an
    /// export's transactionTime).
    pub fn at(engine: &'a CohortEngine, at: i64) -> Self {
        Self {
            engine,
            store: StateStore::new(engine.warehouse().root().clone()),
            loaded: None,
            at,
            pinned: None,
        }
    }

    /// Reads stored Group `id` as its version `version` (the one an export
    /// started with), not its current one.
    pub fn pinned(mut self, id: &str, version: u64) -> Self {
        self.pinned = Some((id.to_string(), version));
        self
    }

    /// The member Patient ids of Group `id`, sorted: a cohort Group's
    /// computed members; the `member` Patients of a member-based Group
    /// (stored) or a loaded roster that count at the resolver's instant
    /// ([`counts_at`]); and the members of the Groups a roster names (each
    /// Group once, so cycles end; a nested reference to a Group that exists
    /// nowhere adds no one). [`GroupError::NotFound`] when `id` itself
    /// exists nowhere.
    pub async fn members(&mut self, id: &str) -> Result<Vec<String>, GroupError> {
        let mut members = Roster::default();
        let mut seen = HashSet::new();
        let mut pending = vec![id.to_string()];
        while let Some(group) = pending.pop() {
            if !seen.insert(group.clone()) {
                continue;
            }
            let text = match self.store.get::<StoredGroup>(GROUPS, &group).await? {
                // Rows: a cohort's members, or a member-based Group's entries.
                Some(stored) if stored.has_segments() || !stored.request.is_member_based() => {
                    let version = match &self.pinned {
                        Some((pinned, version)) if *pinned == group => *version,
                        _ => stored.version,
                    };
                    let mut rows = stored.rows(&self.store).await?;
                    rows.retain(|row| row.is_in(version));
                    let counting = rows.into_iter().filter(|row| row.entry.counts_at(self.at));
                    members.patients.extend(counting.map(|row| row.entry.patient));
                    continue;
                }
                // A member-based Group written before membership segments.
                Some(stored) => stored.resource.to_string(),
                None => match self.loaded().await?.get(&group) {
                    Some(text) => text.clone(),
                    None if group == id => return Err(GroupError::NotFound(id.to_string())),
                    None => continue,
                },
            };
            let resource = crate::json::parse(&text).map_err(|source| GroupError::Corrupt {
                id: group.clone(),
                source,
            })?;
            members.read(&resource, self.at, &group);
            pending.append(&mut members.groups);
        }
        let mut members: Vec<String> = members.patients.into_iter().collect();
        members.sort_unstable();
        Ok(members)
    }

    /// The Group resources of the loaded data, by id.
    async fn loaded(&mut self) -> Result<&HashMap<String, String>, GroupError> {
        if self.loaded.is_none() {
            self.loaded = Some(read_loaded_groups(self.engine).await?);
        }
        Ok(self.loaded.get_or_insert_default())
    }
}

/// The entries of rosters read so far: member Patients, and the Groups
/// they name (to expand).
#[derive(Default)]
pub struct Roster {
    /// Patient ids.
    pub patients: HashSet<String>,
    /// Group ids not yet expanded.
    pub groups: Vec<String>,
}

impl Roster {
    /// Adds the `member` entries of Group resource `resource` (id `group`,
    /// for warnings) that count at `at` (µs).
    pub fn read(&mut self, resource: &JsonValue<'_>, at: i64, group: &str) {
        let Some(list) = resource.get("member") else {
            return;
        };
        list.for_each_item(|member| {
            if !counts_at(member, at, group) {
                return;
            }
            let reference = member
                .get("entity")
                .and_then(|e| e.get("reference"))
                .and_then(JsonValue::as_str);
            match reference.and_then(parse_reference) {
                Some(target) if target.resource_type == Some("Patient") => {
                    self.patients.insert(target.id.to_string());
                }
                Some(target) if target.resource_type == Some("Group") => self.groups.push(target.id.to_string()),
                _ => {}
            }
        });
    }
}

/// Whether a roster's `member` entry counts at `at` (µs): it is not
/// `inactive`, and `at` lies within its `period` (either bound may be
/// absent, and a bound of day or month precision covers all of it). A
/// period that cannot be read does not count the member (with a warning):
/// exporting someone who may have left is the worse mistake.
fn counts_at(member: &JsonValue<'_>, at: i64, group: &str) -> bool {
    if matches!(member.get("inactive"), Some(JsonValue::Bool(true))) {
        return false;
    }
    let Some(period) = member.get("period") else {
        return true;
    };
    let bound = |name: &str| period.get(name).and_then(JsonValue::as_str);
    let (start, end) = (bound("start"), bound("end"));
    if (start.is_some() || end.is_some()) && period_text_range(start, end).is_none() {
        tracing::warn!(
            group,
            "a member's period is not a valid FHIR Period; the member is not counted"
        );
        return false;
    }
    period_contains(start, end, at)
}

/// Every Group resource of the loaded data (`id` → JSON text).
async fn read_loaded_groups(engine: &CohortEngine) -> Result<HashMap<String, String>, GroupError> {
    let mut groups = HashMap::new();
    let Some(entry) = engine.snapshot().tables.get("Group") else {
        return Ok(groups);
    };
    let ctx = engine.session();
    let provider = table_provider(engine.warehouse(), ctx, "Group", entry).await?;
    let frame = ctx.read_table(provider)?.select(vec![col("id"), col("resource")])?;
    for batch in frame.collect().await? {
        let ids = batch.column(0).as_string::<i32>();
        let resources = batch.column(1).as_string::<i32>();
        for i in 0..batch.num_rows() {
            groups.insert(ids.value(i).to_string(), resources.value(i).to_string());
        }
    }
    Ok(groups)
}
