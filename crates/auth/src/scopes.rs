//! SMART system scopes: `system/Patient.rs`, `system/*.cruds` (v2) and
//! `system/Observation.read`, `system/*.write`, `system/*.*` (v1), as
//! permission sets per resource type.

use std::collections::BTreeMap;
use std::fmt;

/// One permission of SMART v2 (`c r u d s`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Create.
    Create,
    /// Read (and export).
    Read,
    /// Update.
    Update,
    /// Delete.
    Delete,
    /// Search.
    Search,
}

impl Permission {
    fn bit(self) -> u8 {
        match self {
            Permission::Create => 1,
            Permission::Read => 2,
            Permission::Update => 4,
            Permission::Delete => 8,
            Permission::Search => 16,
        }
    }
}

/// Letters of the permissions in SMART's canonical order.
const LETTERS: [(char, Permission); 5] = [
    ('c', Permission::Create),
    ('r', Permission::Read),
    ('u', Permission::Update),
    ('d', Permission::Delete),
    ('s', Permission::Search),
];

/// A set of permissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Permissions(u8);

impl Permissions {
    /// Every permission.
    pub const ALL: Permissions = Permissions(31);

    /// Whether `permission` is in the set.
    pub fn allows(self, permission: Permission) -> bool {
        self.0 & permission.bit() != 0
    }

    fn is_empty(self) -> bool {
        self.0 == 0
    }

    fn intersect(self, other: Permissions) -> Permissions {
        Permissions(self.0 & other.0)
    }

    fn union(self, other: Permissions) -> Permissions {
        Permissions(self.0 | other.0)
    }

    /// Parses a v2 permission string (`rs`, `cruds`, letters in order) or a
    /// v1 one (`read`, `write`, `*`).
    fn parse(text: &str) -> Option<Permissions> {
        match text {
            "read" => return Some(Permissions(Permission::Read.bit() | Permission::Search.bit())),
            "write" => {
                return Some(Permissions(
                    Permission::Create.bit() | Permission::Update.bit() | Permission::Delete.bit(),
                ));
            }
            "*" => return Some(Permissions::ALL),
            _ => {}
        }
        // v2: a non-empty subsequence of "cruds", in that order.
        let mut bits = 0u8;
        let mut next = 0;
        for c in text.chars() {
            let position = LETTERS[next..].iter().position(|(l, _)| *l == c)? + next;
            bits |= LETTERS[position].1.bit();
            next = position + 1;
        }
        (bits != 0).then_some(Permissions(bits))
    }
}

impl fmt::Display for Permissions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (letter, permission) in LETTERS {
            if self.allows(permission) {
                write!(f, "{letter}")?;
            }
        }
        Ok(())
    }
}

/// Why a scope string was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("scope '{scope}': {reason}")]
pub struct ScopeError {
    /// The scope.
    pub scope: String,
    /// What is wrong.
    pub reason: &'static str,
}

/// Permissions per resource type (`*` for every type), from `system/` scopes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScopeSet {
    by_type: BTreeMap<String, Permissions>,
}

impl ScopeSet {
    /// Parses space-separated scopes. `system/` scopes are kept; other
    /// SMART scopes (`patient/`, `user/`, `launch`, `openid`, …) mean nothing
    /// to a backend service and are skipped; a malformed `system/` scope is
    /// an error.
    pub fn parse(text: &str) -> Result<ScopeSet, ScopeError> {
        let mut set = ScopeSet::default();
        for scope in text.split_ascii_whitespace() {
            let Some(rest) = scope.strip_prefix("system/") else {
                continue;
            };
            let error = |reason| ScopeError {
                scope: scope.to_string(),
                reason,
            };
            if rest.contains('?') {
                return Err(error("scopes with search parameters are not supported"));
            }
            let (resource_type, permissions) =
                rest.split_once('.').ok_or_else(|| error("expected TYPE.PERMISSIONS"))?;
            let valid_type = resource_type == "*"
                || (resource_type.chars().next().is_some_and(|c| c.is_ascii_uppercase())
                    && resource_type.chars().all(|c| c.is_ascii_alphanumeric()));
            if !valid_type {
                return Err(error("not a resource type or *"));
            }
            let permissions = Permissions::parse(permissions)
                .ok_or_else(|| error("permissions must be cruds letters in order, read, write or *"))?;
            set.add(resource_type, permissions);
        }
        Ok(set)
    }

    fn add(&mut self, resource_type: &str, permissions: Permissions) {
        let entry = self.by_type.entry(resource_type.to_string()).or_default();
        *entry = entry.union(permissions);
    }

    /// Whether no permission at all is granted.
    pub fn is_empty(&self) -> bool {
        self.by_type.values().all(|p| p.is_empty())
    }

    /// The permissions on `resource_type` (including those of `*`).
    pub fn permissions(&self, resource_type: &str) -> Permissions {
        let wildcard = self.by_type.get("*").copied().unwrap_or_default();
        let specific = self.by_type.get(resource_type).copied().unwrap_or_default();
        wildcard.union(specific)
    }

    /// Whether `permission` on `resource_type` is granted.
    pub fn allows(&self, resource_type: &str, permission: Permission) -> bool {
        self.permissions(resource_type).allows(permission)
    }

    /// Whether `permission` holds on every type (`system/*.…`).
    pub fn allows_all_types(&self, permission: Permission) -> bool {
        self.by_type.get("*").is_some_and(|p| p.allows(permission))
    }

    /// The types `permission` is granted on by name (not through `*`).
    pub fn named_types(&self, permission: Permission) -> Vec<String> {
        self.by_type
            .iter()
            .filter(|(t, p)| *t != "*" && p.allows(permission))
            .map(|(t, _)| t.clone())
            .collect()
    }

    /// What a client asking for `self` may have when it is allowed
    /// `allowed`: for each requested type, the permissions both grant.
    pub fn intersect(&self, allowed: &ScopeSet) -> ScopeSet {
        let mut out = ScopeSet::default();
        for (requested_type, requested) in &self.by_type {
            for (allowed_type, permitted) in &allowed.by_type {
                let resource_type = match (requested_type.as_str(), allowed_type.as_str()) {
                    ("*", t) | (t, "*") => t,
                    (a, b) if a == b => a,
                    _ => continue,
                };
                let both = requested.intersect(*permitted);
                if !both.is_empty() {
                    out.add(resource_type, both);
                }
            }
        }
        out
    }
}

impl fmt::Display for ScopeSet {
    /// Canonical SMART v2 form: `system/Group.cud system/Patient.rs`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (resource_type, permissions) in &self.by_type {
            if permissions.is_empty() {
                continue;
            }
            if !first {
                f.write_str(" ")?;
            }
            first = false;
            write!(f, "system/{resource_type}.{permissions}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_v1_and_v2_forms() {
        let set = ScopeSet::parse("system/*.rs system/Group.cud launch patient/Patient.read").unwrap();
        assert!(set.allows("Observation", Permission::Read));
        assert!(set.allows("Observation", Permission::Search));
        assert!(!set.allows("Observation", Permission::Create));
        assert!(set.allows("Group", Permission::Create));
        assert!(set.allows("Group", Permission::Delete));
        let v1 = ScopeSet::parse("system/Patient.read system/Group.write").unwrap();
        assert!(v1.allows("Patient", Permission::Read) && v1.allows("Patient", Permission::Search));
        assert!(!v1.allows("Patient", Permission::Update));
        assert!(v1.allows("Group", Permission::Update) && !v1.allows("Group", Permission::Read));
        assert_eq!(
            ScopeSet::parse("system/*.*").unwrap().permissions("X"),
            Permissions::ALL
        );
        assert_eq!(v1.to_string(), "system/Group.cud system/Patient.rs");
    }

    #[test]
    fn rejects_malformed_system_scopes() {
        for bad in [
            "system/Patient",
            "system/Patient.sr",
            "system/Patient.x",
            "system/patient.rs",
            "system/Patient.rs?category=x",
            "system/.rs",
        ] {
            assert!(ScopeSet::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn grants_the_intersection() {
        let allowed = ScopeSet::parse("system/Patient.rs system/Observation.rs system/Group.cud").unwrap();
        let requested = ScopeSet::parse("system/*.read system/Group.cruds").unwrap();
        let granted = requested.intersect(&allowed);
        assert_eq!(
            granted.to_string(),
            "system/Group.cud system/Observation.rs system/Patient.rs"
        );
        let escalation = ScopeSet::parse("system/Condition.rs").unwrap().intersect(&allowed);
        assert!(escalation.is_empty());
        let wildcard = ScopeSet::parse("system/*.rs").unwrap();
        assert_eq!(
            ScopeSet::parse("system/Patient.r")
                .unwrap()
                .intersect(&wildcard)
                .to_string(),
            "system/Patient.r"
        );
    }
}
