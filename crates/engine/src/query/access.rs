//! What a login may read through SQL: the resource types its scopes allow.
//! The tables of a warehouse each hold data of some resource types (see
//! [`TableReads`]); a statement runs only if the login may read every type
//! of every table it reads. The fronts turn their credentials (SMART scopes)
//! into a [`ReadAccess`]; the engine knows nothing of scopes.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::error::{ErrorKind, HasKind};

/// The resource types a login may read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadAccess {
    /// Every type (`system/*.read`, or no authentication on loopback).
    Everything,
    /// Only these types.
    Types(BTreeSet<String>),
}

impl ReadAccess {
    /// Whether resources of `resource_type` may be read.
    pub fn allows(&self, resource_type: &str) -> bool {
        match self {
            Self::Everything => true,
            Self::Types(types) => types.contains(resource_type),
        }
    }

    /// Whether every type may be read.
    pub fn allows_all(&self) -> bool {
        matches!(self, Self::Everything)
    }

    /// Whether a table holding `reads` may be read.
    pub fn allows_table(&self, reads: &TableReads) -> bool {
        match reads {
            TableReads::Nothing => true,
            TableReads::Types(types) => types.iter().all(|t| self.allows(t)),
            TableReads::AllTypes => self.allows_all(),
        }
    }

    /// The check as a function (for the `cohort()` table function).
    pub fn as_check(&self) -> Arc<dyn Fn(&str) -> bool + Send + Sync> {
        let access = self.clone();
        Arc::new(move |resource_type| access.allows(resource_type))
    }
}

/// Which Groups a login sees in the Group tables (`group_members`,
/// `group_membership`): the FHIR front's rule — its own Groups and the
/// rosters granted to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupVisibility {
    /// Every Group (no authentication).
    All,
    /// The Groups `owner` created and the `granted` ones.
    Only {
        /// The login's client id.
        owner: String,
        /// Group ids granted to it (the clients file's `groups`).
        granted: Vec<String>,
    },
}

impl GroupVisibility {
    /// Whether Group `id`, created by `owner` (`None`: loaded with the
    /// data), is seen.
    pub fn sees(&self, id: &str, owner: Option<&str>) -> bool {
        match self {
            Self::All => true,
            Self::Only { owner: me, granted } => owner == Some(me.as_str()) || granted.iter().any(|g| g == id),
        }
    }
}

/// What resource data a table holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableReads {
    /// None: catalog tables (`information_schema`, `pg_catalog`).
    Nothing,
    /// Resources of these types (a resource table, a view).
    Types(Vec<String>),
    /// Data of every type (index tables, `_rejects`, `compartment`, the
    /// Group tables), or a table whose types are not recorded.
    AllTypes,
}

impl TableReads {
    /// What a login needs, in words ("Observation", "every resource type").
    pub fn describe(&self) -> String {
        match self {
            Self::Nothing => "nothing".into(),
            Self::Types(types) => types.join(", "),
            Self::AllTypes => "every resource type".into(),
        }
    }
}

/// A statement read data the login may not read.
#[derive(Debug, Clone, thiserror::Error)]
#[error("permission denied for {what}: it holds {needs} data, and this login may not read it")]
pub struct AccessDenied {
    /// The table (or function) refused.
    pub what: String,
    /// The types it needs.
    pub needs: String,
}

impl AccessDenied {
    /// Table `table`, which holds `reads`.
    pub fn table(table: &str, reads: &TableReads) -> Self {
        Self {
            what: format!("table {table}"),
            needs: reads.describe(),
        }
    }

    /// `cohort()` reading resources of `resource_type`.
    pub fn cohort_type(resource_type: &str) -> Self {
        Self {
            what: "cohort()".into(),
            needs: resource_type.to_string(),
        }
    }
}

impl HasKind for AccessDenied {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Forbidden
    }
}
