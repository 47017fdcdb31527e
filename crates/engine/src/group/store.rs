//! Stored Groups: the Groups clients created through the server, with their
//! computed membership, kept in the warehouse's state store.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::cohort::CohortRequest;
use super::membership::Member;

/// State kind of stored Groups (`_server/groups/<id>.json`).
pub const GROUPS: &str = "groups";

/// A cohort Group as stored: the resource served, and its membership.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredGroup {
    /// Logical id.
    pub id: String,
    /// Version (`meta.versionId`).
    pub version: u64,
    /// The request it was computed from.
    pub request: CohortRequest,
    /// The Group resource served by `GET /Group/{id}`.
    pub resource: Value,
    /// Member Patient ids, sorted.
    pub members: Vec<String>,
    /// Every membership row, with the Group versions that added and removed
    /// it (Groups written by fhirlake 0.1 have none: see
    /// [`StoredGroup::membership_rows`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub membership: Vec<Member>,
    /// Warehouse version the membership was computed on.
    pub warehouse_version: u64,
    /// The client that created it (`None` without authorization).
    #[serde(default)]
    pub owner: Option<String>,
}

impl StoredGroup {
    /// The membership rows; for a Group written before rows were kept, its
    /// members as added by its current version (the earliest version known).
    pub fn membership_rows(&self) -> Vec<Member> {
        if self.membership.is_empty() && !self.members.is_empty() {
            return self.members.iter().map(|p| Member::added(p, self.version)).collect();
        }
        self.membership.clone()
    }
}
