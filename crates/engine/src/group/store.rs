//! Stored Groups: the Groups clients created through the server, with their
//! computed membership, kept in the warehouse's state store.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::cohort::CohortRequest;

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
    /// Warehouse version the membership was computed on.
    pub warehouse_version: u64,
    /// The client that created it (`None` without authorization).
    #[serde(default)]
    pub owner: Option<String>,
}
