//! Stored Groups: the Groups clients created through the server. The
//! record (`_server/groups/<id>.json`) holds the request, the resource
//! served and the list of membership segments; the membership rows live in
//! those segments ([`super::segments`]).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::GroupError;
use super::cohort::CohortRequest;
use super::history::VersionStamp;
use super::membership::Member;
use super::segments::{Segment, read_rows};
use crate::state::StateStore;

/// State kind of stored Groups (`_server/groups/<id>.json`).
pub const GROUPS: &str = "groups";

/// A Group as stored: the resource served, and where its membership is.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredGroup {
    /// Logical id.
    pub id: String,
    /// Version (`meta.versionId`).
    pub version: u64,
    /// The request it was computed from (a member-based Group's without
    /// its `member` entries: those are its membership rows).
    pub request: CohortRequest,
    /// The Group resource served by `GET /Group/{id}` (a member-based
    /// Group's without `member`: see [`crate::group::manage::Groups::served_resource`]).
    pub resource: Value,
    /// Member Patient ids, sorted: Groups written before membership
    /// segments (none since).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<String>,
    /// Membership rows kept inline: Groups written before membership
    /// segments (none since).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub membership: Vec<Member>,
    /// The membership segments, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub segments: Vec<Segment>,
    /// Segments the latest compaction replaced: kept until the next one,
    /// so a reader holding the previous record can still read them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired: Vec<Segment>,
    /// Warehouse version the membership was computed on.
    pub warehouse_version: u64,
    /// The client that created it (`None` without authorization).
    #[serde(default)]
    pub owner: Option<String>,
    /// When each version was written, oldest first (empty for Groups
    /// written before stamps).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stamps: Vec<VersionStamp>,
}

impl StoredGroup {
    /// Whether the membership is in segments (Groups written before them
    /// keep theirs inline).
    pub fn has_segments(&self) -> bool {
        !self.segments.is_empty()
    }

    /// Every membership row, with the Group versions that added and
    /// removed it. For a Group written before rows were kept, its members
    /// (or a member-based Group's request entries) as added by its current
    /// version (the earliest version known).
    pub async fn rows(&self, state: &StateStore) -> Result<Vec<Member>, GroupError> {
        if self.has_segments() {
            return read_rows(state, &self.id, &self.segments).await;
        }
        if self.membership.is_empty() && !self.members.is_empty() {
            return Ok(self.members.iter().map(|p| Member::added(p, self.version)).collect());
        }
        if self.membership.is_empty() && self.request.is_member_based() {
            // A member-based Group written before segments: its entries are
            // in its request.
            let entries = self.request.member_entries();
            return Ok(entries.into_iter().map(|e| Member::of(e, self.version)).collect());
        }
        Ok(self.membership.clone())
    }

    /// The rows of the current version.
    pub async fn current_rows(&self, state: &StateStore) -> Result<Vec<Member>, GroupError> {
        let mut rows = self.rows(state).await?;
        rows.retain(Member::is_current);
        Ok(rows)
    }
}
