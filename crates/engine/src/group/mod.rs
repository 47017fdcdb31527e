//! Groups: the Group domain every front shares. Validating submitted
//! cohort Groups ([`cohort`]), the stored form ([`store`]) with the one
//! membership schema ([`membership`]) kept in segments ([`segments`]),
//! member operations ([`change`]) and finding the Patients they name
//! ([`identify`]), kept versions ([`versions`]), the one
//! resolver from a Group id to its members ([`resolve`]), and computing a
//! cohort's membership ([`compute`]), and managing the stored and loaded
//! Groups of a warehouse ([`manage::Groups`]); when a criteria Group's
//! membership is computed ([`mode`]) and refreshing it ([`refresh`]).

pub mod change;
pub mod cohort;
pub mod history;
pub mod identify;
pub mod live_table;
pub mod manage;
pub mod members_table;
pub mod membership;
pub mod mode;
pub mod refresh;
pub mod resolve;
pub mod search;
pub mod segments;
pub mod store;
pub mod versions;

use std::collections::HashSet;

pub use change::{ChangedMember, MemberAction, MemberChange};
pub use cohort::{
    COHORT_PROFILE, CohortRequest, FHIR_QUERY, MEMBER_FILTER_URL, MEMBERS_REFRESHED_URL, group_resource, validate,
};
pub use identify::MemberRef;
pub use membership::{Member, MemberEntry, membership_batch, membership_schema, next_membership};
pub use mode::{MEMBERSHIP_MODE_URL, MembershipMode};
pub use refresh::{RefreshOutcome, RefreshRecord, RefreshStrategy, RefreshTrigger};
pub use resolve::GroupResolver;
pub use store::{GROUPS, StoredGroup};

use crate::cohort::{CohortEngine, CohortError, CurrentEngine};
use crate::error::{ErrorKind, HasKind};
use crate::store::StoreError;
use crate::warehouse::WarehouseError;

/// Errors of the Group domain.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    /// A submitted Group breaks the profile or what fhirlake supports;
    /// every problem found is listed.
    #[error("{}", problems.join("; "))]
    Invalid {
        /// What is wrong, one entry per problem.
        problems: Vec<String>,
        /// The one problem is something fhirlake does not support (rather
        /// than something invalid).
        not_supported: bool,
    },
    /// The Group a request addresses (in its path) exists nowhere.
    #[error("Group/{0} does not exist")]
    NotFound(String),
    /// A Group's `member` names a base Group that exists nowhere (the
    /// request body is wrong, not the path).
    #[error("member references Group/{0}, which does not exist")]
    UnknownBase(String),
    /// `If-Match` named a version of Group `id` that is not its current one.
    #[error("Group/{id} is at version {current}, not {expected} (If-Match): read it again and retry")]
    VersionMismatch {
        /// The Group.
        id: String,
        /// The version `If-Match` named.
        expected: u64,
        /// The current version.
        current: u64,
    },
    /// Other Groups use Group `id` as their base population.
    #[error("Group/{id} is the base population of {}: change or delete those first", dependants.iter().map(|d| format!("Group/{d}")).collect::<Vec<_>>().join(", "))]
    InUse {
        /// The Group asked to be deleted.
        id: String,
        /// The Groups whose `member` names it.
        dependants: Vec<String>,
    },
    /// A member-based Group lists Patients the warehouse does not have.
    #[error("member.entity references Patients that do not exist: {}", .0.iter().map(|p| format!("Patient/{p}")).collect::<Vec<_>>().join(", "))]
    UnknownMembers(Vec<String>),
    /// Member references that name no Patient, or several.
    #[error("{}", unresolved_text(unknown, ambiguous))]
    UnresolvedMembers {
        /// References naming no Patient.
        unknown: Vec<String>,
        /// References naming several, with the Patients they match.
        ambiguous: Vec<String>,
    },
    /// `$member-remove` named Patients that are not members.
    #[error("not members of the Group: {}", .0.iter().map(|p| format!("Patient/{p}")).collect::<Vec<_>>().join(", "))]
    NotMembers(Vec<String>),
    /// A history question about an instant before Group `id`'s history.
    #[error("Group/{id}'s membership history starts at {}: ask about a later instant", start.as_deref().unwrap_or("its next change"))]
    BeforeHistory {
        /// The Group.
        id: String,
        /// Where its history starts (`None`: it has none yet).
        start: Option<String>,
    },
    /// A member operation on a Group whose members follow its member-filters.
    #[error(
        "Group/{0} is criteria-based: its members are the patients meeting its member-filters; change them with PUT"
    )]
    NotMemberBased(String),
    /// Cohorts need the search index, and the warehouse has none.
    #[error("the warehouse has no search index (it was loaded with --no-index)")]
    NoIndex,
    /// A loaded Group resource is not valid JSON.
    #[error("stored Group/{id} is not valid JSON: {source}")]
    Corrupt {
        /// The Group's id.
        id: String,
        /// The parse error.
        #[source]
        source: crate::json::JsonError,
    },
    /// Computing a cohort failed.
    #[error(transparent)]
    Cohort(#[from] CohortError),
    /// Reading or writing stored Groups failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Reading the loaded Groups failed.
    #[error(transparent)]
    Warehouse(#[from] WarehouseError),
    /// Querying the loaded Groups or Patients failed.
    #[error(transparent)]
    Query(#[from] crate::query::QueryError),
}

impl From<datafusion::error::DataFusionError> for GroupError {
    fn from(error: datafusion::error::DataFusionError) -> Self {
        Self::Warehouse(error.into())
    }
}

fn unresolved_text(unknown: &[String], ambiguous: &[String]) -> String {
    let mut parts = Vec::new();
    if !unknown.is_empty() {
        parts.push(format!("no Patient found for: {}", unknown.join(", ")));
    }
    if !ambiguous.is_empty() {
        parts.push(format!("more than one Patient found for: {}", ambiguous.join("; ")));
    }
    parts.join("; ")
}

impl GroupError {
    /// An invalid submission with one problem.
    pub fn invalid(problem: impl Into<String>) -> Self {
        Self::Invalid {
            problems: vec![problem.into()],
            not_supported: false,
        }
    }
}

impl HasKind for GroupError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::Invalid {
                not_supported: true, ..
            } => ErrorKind::NotSupported,
            Self::Invalid { .. }
            | Self::UnknownBase(_)
            | Self::UnknownMembers(_)
            | Self::UnresolvedMembers { .. }
            | Self::NotMembers(_)
            | Self::BeforeHistory { .. }
            | Self::NotMemberBased(_) => ErrorKind::Invalid,
            Self::NotFound(_) => ErrorKind::NotFound,
            Self::VersionMismatch { .. } => ErrorKind::PreconditionFailed,
            Self::InUse { .. } => ErrorKind::Conflict,
            Self::NoIndex => ErrorKind::Transient,
            Self::Corrupt { .. } => ErrorKind::Internal,
            Self::Cohort(e) => e.kind(),
            Self::Store(e) => e.kind(),
            Self::Warehouse(e) => e.kind(),
            Self::Query(e) => e.kind(),
        }
    }

    fn is_private(&self) -> bool {
        match self {
            Self::Store(e) => e.is_private(),
            Self::Warehouse(e) => e.is_private(),
            Self::Query(e) => e.is_private(),
            _ => false,
        }
    }
}

/// The plan of a cohort: the patients meeting every query, within the
/// base population when one is given (`base_patients`, and the members of
/// `base_groups` through [`GroupResolver`]). The server's cohort Groups and
/// `fhirlake cohort` both plan through here.
pub async fn cohort_plan(
    engine: &CohortEngine,
    queries: &[crate::search::SearchQuery],
    base_patients: &[String],
    base_groups: &[String],
) -> Result<datafusion::logical_expr::LogicalPlan, GroupError> {
    let base = if base_patients.is_empty() && base_groups.is_empty() {
        None
    } else {
        let mut members: HashSet<String> = base_patients.iter().cloned().collect();
        let mut resolver = GroupResolver::new(engine);
        for group in base_groups {
            members.extend(resolver.members(group).await?);
        }
        let mut members: Vec<String> = members.into_iter().collect();
        members.sort_unstable();
        Some(members)
    };
    Ok(engine.plan(queries, base.as_deref())?)
}

/// The searches a criteria Group's members meet: its member-filters, and
/// (when the warehouse has Patients) being a loaded Patient, so a deleted
/// Patient leaves every Group even while resources of theirs remain.
pub fn member_queries(
    engine: &CohortEngine,
    filters: &[String],
) -> Result<Vec<crate::search::SearchQuery>, GroupError> {
    let mut queries = CohortEngine::parse(filters)?;
    let has_patients = engine.snapshot().tables.contains_key("Patient");
    if has_patients && !queries.iter().any(|q| q.resource_type == "Patient") {
        queries.push(crate::search::SearchQuery {
            resource_type: "Patient",
            clauses: Vec::new(),
        });
    }
    Ok(queries)
}

/// A Group's membership as computed for a write.
#[derive(Debug, Clone, PartialEq)]
pub struct Computed {
    /// The member entries (a criteria Group's sorted by patient).
    pub entries: Vec<MemberEntry>,
    /// The warehouse version they were computed on.
    pub warehouse_version: u64,
    /// Member entries left out because they name no Patient of the
    /// warehouse (only under [`CohortRequest::skip_unknown_members`]).
    pub skipped: Vec<String>,
    /// `Some`: an incremental refresh's result: `entries` are the members
    /// among these patients; every other member keeps their membership.
    pub scope: Option<std::collections::BTreeSet<String>>,
}

/// Computes the member entries of `request` on the current warehouse: the
/// patients meeting every filter, within the base population when `member`
/// gives one (sorted); or a member-based Group's own entries.
pub async fn compute(current: &CurrentEngine, request: &CohortRequest) -> Result<Computed, GroupError> {
    let engine = current.get().await?;
    if request.is_member_based() {
        let (entries, skipped) = roster_entries(&engine, request).await?;
        return Ok(Computed {
            entries,
            warehouse_version: engine.version(),
            skipped,
            scope: None,
        });
    }
    if !engine.has_index() {
        return Err(GroupError::NoIndex);
    }
    let queries = member_queries(&engine, &request.filters)?;
    let plan = match cohort_plan(&engine, &queries, &request.base_patients, &request.base_groups).await {
        // The submitted Group's `member` names it: the body is wrong.
        Err(GroupError::NotFound(id)) => return Err(GroupError::UnknownBase(id)),
        other => other?,
    };
    let result = engine.run(plan).await?;
    Ok(Computed {
        entries: result.patients.iter().map(|p| MemberEntry::patient(p)).collect(),
        warehouse_version: engine.version(),
        skipped: Vec::new(),
        scope: None,
    })
}

/// The `member` entries of a member-based Group, once every entry is known
/// to name a Patient of the warehouse: unknown ones are listed in
/// [`GroupError::UnknownMembers`], or, when the request says to skip them,
/// left out and returned (sorted) beside the entries kept.
pub(crate) async fn roster_entries(
    engine: &CohortEngine,
    request: &CohortRequest,
) -> Result<(Vec<MemberEntry>, Vec<String>), GroupError> {
    let found = identify::existing_patients(engine, &request.base_patients).await?;
    let mut unknown: Vec<String> = request
        .base_patients
        .iter()
        .filter(|p| !found.contains(*p))
        .cloned()
        .collect();
    unknown.sort_unstable();
    unknown.dedup();
    if unknown.is_empty() {
        return Ok((request.member_entries(), unknown));
    }
    if !request.skip_unknown_members {
        return Err(GroupError::UnknownMembers(unknown));
    }
    let mut entries = request.member_entries();
    entries.retain(|entry| found.contains(&entry.patient));
    Ok((entries, unknown))
}
