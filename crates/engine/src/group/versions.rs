//! Kept Group versions: every version a response named stays readable
//! (`_history/{v}`) and listed (`_history`) until it has been superseded
//! for longer than the retention, and always while an unexpired export
//! names it. A version's record is a copy of the Group's record as that
//! version wrote it (`_server/group-versions/<id>/<v>.json`); its
//! membership is read from the current rows (`Member::is_in`), so
//! compacting segments never loses an old version's members.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::Value;

use super::manage::Groups;
use super::store::{GROUPS, StoredGroup};
use super::{GroupError, Member};

/// State kind prefix of kept Group versions.
pub const GROUP_VERSIONS: &str = "group-versions";

/// The state kind of Group `id`'s kept versions.
pub fn versions_kind(id: &str) -> String {
    format!("{GROUP_VERSIONS}/{id}")
}

impl Groups {
    /// Keeps `stored` as a readable version (before its record is put, so
    /// every version a response names has its copy).
    pub(crate) async fn keep_version(&self, stored: &StoredGroup) -> Result<(), GroupError> {
        let kind = versions_kind(&stored.id);
        self.state.put(&kind, &stored.version.to_string(), stored).await?;
        Ok(())
    }

    /// Version `version` of stored Group `id` and the resource served for
    /// it (a member-based Group's with the entries of that version);
    /// `None` when the Group or the version is not kept.
    pub async fn group_version(&self, id: &str, version: u64) -> Result<Option<(StoredGroup, Value)>, GroupError> {
        let Some(current) = self.stored_group(id).await? else {
            return Ok(None);
        };
        if current.version == version {
            let resource = self.served_resource(&current).await?;
            return Ok(Some((current, resource)));
        }
        let Some(old) = self
            .state
            .get::<StoredGroup>(&versions_kind(id), &version.to_string())
            .await?
        else {
            return Ok(None);
        };
        let resource = self.served_version(&current, &old).await?;
        Ok(Some((old, resource)))
    }

    /// The resource of `old`, an earlier version of `current`.
    async fn served_version(&self, current: &StoredGroup, old: &StoredGroup) -> Result<Value, GroupError> {
        let mut resource = old.resource.clone();
        if !old.request.is_member_based() || !current.has_segments() {
            return Ok(resource);
        }
        let rows: Vec<Member> = current.rows(&self.state).await?;
        let entries: Vec<Value> = rows
            .iter()
            .filter(|m| m.is_in(old.version))
            .take(super::manage::MEMBER_ENTRY_LIMIT)
            .map(|m| m.entry.to_fhir())
            .collect();
        if let Some(object) = resource.as_object_mut()
            && !entries.is_empty()
        {
            object.insert("member".into(), Value::Array(entries));
        }
        Ok(resource)
    }

    /// Every kept version of stored Group `id`, newest first, with the
    /// resource served for each (empty when the Group does not exist).
    pub async fn history(&self, id: &str) -> Result<Vec<(StoredGroup, Value)>, GroupError> {
        let Some(current) = self.stored_group(id).await? else {
            return Ok(Vec::new());
        };
        let mut versions: Vec<u64> = self
            .state
            .list(&versions_kind(id))
            .await?
            .iter()
            .filter_map(|v| v.parse().ok())
            .filter(|v| *v < current.version)
            .collect();
        versions.sort_unstable_by(|a, b| b.cmp(a));
        let mut out = vec![(current.clone(), self.served_resource(&current).await?)];
        for version in versions {
            if let Some(old) = self
                .state
                .get::<StoredGroup>(&versions_kind(id), &version.to_string())
                .await?
            {
                let resource = self.served_version(&current, &old).await?;
                out.push((old, resource));
            }
        }
        Ok(out)
    }

    /// Deletes the kept versions of Group `id` (it was deleted).
    pub(crate) async fn forget_versions(&self, id: &str) {
        let kind = versions_kind(id);
        for version in self.state.list(&kind).await.unwrap_or_default() {
            if let Err(e) = self.state.delete(&kind, &version).await {
                tracing::warn!(group = id, version, error = %e, "cannot delete a kept Group version");
            }
        }
    }

    /// Deletes versions superseded longer than `retention` ago, except
    /// those in `pinned` (Group id, version: named by unexpired exports).
    pub async fn purge_versions(&self, retention: Duration, pinned: &HashSet<(String, u64)>) {
        let now = chrono::Utc::now();
        for id in self.state.list(GROUPS).await.unwrap_or_default() {
            let kind = versions_kind(&id);
            let Ok(listed) = self.state.list(&kind).await else {
                continue;
            };
            let mut versions: Vec<u64> = listed.iter().filter_map(|v| v.parse().ok()).collect();
            versions.sort_unstable();
            // A version is superseded when the next one was written.
            for pair in versions.windows(2) {
                let (version, next) = (pair[0], pair[1]);
                if pinned.contains(&(id.clone(), version)) {
                    continue;
                }
                let Ok(Some(successor)) = self.state.get::<StoredGroup>(&kind, &next.to_string()).await else {
                    continue;
                };
                let superseded = successor.resource["meta"]["lastUpdated"]
                    .as_str()
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
                let expired =
                    superseded.is_some_and(|t| now.signed_duration_since(t).to_std().is_ok_and(|age| age > retention));
                if expired && let Err(e) = self.state.delete(&kind, &version.to_string()).await {
                    tracing::warn!(group = %id, version, error = %e, "cannot delete an expired Group version");
                }
            }
        }
    }
}
