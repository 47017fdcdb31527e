//! Member operations on a member-based Group (`$member-add`,
//! `$member-remove`, in the manner of the Da Vinci ATR operations): a
//! change to the current `member` entries, applied whole or not at all.
//!
//! - Adding is idempotent: a member already in the Group stays as it is,
//!   unless an `attributionPeriod` is given that differs from its entry;
//!   then its entries are replaced by one with that period.
//! - Removing without a period deletes the member's entries from the
//!   current version (the rows keep them as history); with an
//!   `attributionPeriod`, the member stays listed and its entries' period
//!   ends at the period's end (the member stops counting then). Removing
//!   a Patient who is not a member is an error naming it.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use super::GroupError;
use super::membership::MemberEntry;

/// Adding or removing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberAction {
    /// `$member-add`.
    Add,
    /// `$member-remove`.
    Remove,
}

impl MemberAction {
    /// The operation's name.
    pub fn operation(self) -> &'static str {
        match self {
            Self::Add => "$member-add",
            Self::Remove => "$member-remove",
        }
    }
}

/// One member named by a member operation, already resolved to a Patient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangedMember {
    /// The Patient id.
    pub patient: String,
    /// `attributionPeriod.start`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_start: Option<String>,
    /// `attributionPeriod.end`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_end: Option<String>,
}

impl ChangedMember {
    fn has_period(&self) -> bool {
        self.period_start.is_some() || self.period_end.is_some()
    }

    fn entry(&self) -> MemberEntry {
        MemberEntry {
            patient: self.patient.clone(),
            period_start: self.period_start.clone(),
            period_end: self.period_end.clone(),
            inactive: false,
        }
    }
}

/// A member operation, resolved: what a job record keeps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberChange {
    /// Adding or removing.
    pub action: MemberAction,
    /// The members, in request order.
    pub members: Vec<ChangedMember>,
}

impl MemberChange {
    /// The entries after the change, given the current ones; nothing is
    /// applied when any member cannot be changed.
    pub fn apply(&self, current: &[MemberEntry]) -> Result<Vec<MemberEntry>, GroupError> {
        match self.action {
            MemberAction::Add => Ok(self.add(current)),
            MemberAction::Remove => self.remove(current),
        }
    }

    fn add(&self, current: &[MemberEntry]) -> Vec<MemberEntry> {
        let mut entries = current.to_vec();
        let mut present: HashSet<String> = current.iter().map(|e| e.patient.clone()).collect();
        for member in &self.members {
            if !present.contains(&member.patient) {
                present.insert(member.patient.clone());
                entries.push(member.entry());
                continue;
            }
            let wanted = member.entry();
            if member.has_period() && !entries.contains(&wanted) {
                entries.retain(|e| e.patient != member.patient);
                entries.push(wanted);
            }
        }
        entries
    }

    fn remove(&self, current: &[MemberEntry]) -> Result<Vec<MemberEntry>, GroupError> {
        let present: HashSet<&str> = current.iter().map(|e| e.patient.as_str()).collect();
        let mut absent: Vec<String> = self
            .members
            .iter()
            .filter(|m| !present.contains(m.patient.as_str()))
            .map(|m| m.patient.clone())
            .collect();
        if !absent.is_empty() {
            absent.dedup();
            return Err(GroupError::NotMembers(absent));
        }
        let mut entries = current.to_vec();
        for member in &self.members {
            if member.has_period() {
                for entry in entries.iter_mut().filter(|e| e.patient == member.patient) {
                    if member.period_start.is_some() {
                        entry.period_start.clone_from(&member.period_start);
                    }
                    if member.period_end.is_some() {
                        entry.period_end.clone_from(&member.period_end);
                    }
                }
            } else {
                entries.retain(|e| e.patient != member.patient);
            }
        }
        Ok(entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(patient: &str, end: Option<&str>) -> ChangedMember {
        ChangedMember {
            patient: patient.into(),
            period_start: None,
            period_end: end.map(str::to_string),
        }
    }

    fn change(action: MemberAction, members: Vec<ChangedMember>) -> MemberChange {
        MemberChange { action, members }
    }

    #[test]
    fn adding_is_idempotent_and_a_new_period_replaces_the_entry() {
        let current = vec![MemberEntry::patient("a")];
        let add = change(
            MemberAction::Add,
            vec![member("a", None), member("b", None), member("b", None)],
        );
        let after = add.apply(&current).expect("add");
        assert_eq!(after, vec![MemberEntry::patient("a"), MemberEntry::patient("b")]);
        assert_eq!(add.apply(&after).expect("again"), after, "adding twice changes nothing");
        let dated = change(MemberAction::Add, vec![member("a", Some("2030-01-01"))]);
        let after = dated.apply(&after).expect("dated");
        assert_eq!(after.len(), 2);
        assert_eq!(after[1].period_end.as_deref(), Some("2030-01-01"));
    }

    #[test]
    fn removing_deletes_or_ends_and_refuses_non_members_whole() {
        let current = vec![MemberEntry::patient("a"), MemberEntry::patient("b")];
        let removed = change(MemberAction::Remove, vec![member("a", None)]).apply(&current);
        assert_eq!(removed.expect("remove"), vec![MemberEntry::patient("b")]);
        let ended = change(MemberAction::Remove, vec![member("b", Some("2020-01-01"))])
            .apply(&current)
            .expect("end");
        assert_eq!(ended[1].period_end.as_deref(), Some("2020-01-01"));
        let refused = change(MemberAction::Remove, vec![member("a", None), member("z", None)]).apply(&current);
        assert!(matches!(refused, Err(GroupError::NotMembers(ref p)) if p == &["z".to_string()]));
    }
}
