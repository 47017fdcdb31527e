//! The one membership schema: who is in a Group, since which Group version,
//! until which. Every kind of Group records its members this way (cohort
//! Groups now; member-based Groups, membership history and cohorts in SQL
//! build on it), and [`membership_batch`] gives the rows as Arrow for SQL.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, BooleanArray, RecordBatch, StringArray, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::error::ArrowError;
use serde::{Deserialize, Serialize};

use crate::search::range::period_text_range;

/// One `member` entry of a Group: who, for which period, whether
/// inactive. A cohort Group's entries have neither period nor `inactive`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MemberEntry {
    /// The member Patient's id.
    pub patient: String,
    /// `member.period.start`, as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_start: Option<String>,
    /// `member.period.end`, as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_end: Option<String>,
    /// `member.inactive`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub inactive: bool,
}

impl MemberEntry {
    /// An entry with neither period nor `inactive`.
    pub fn patient(patient: &str) -> Self {
        Self {
            patient: patient.to_string(),
            period_start: None,
            period_end: None,
            inactive: false,
        }
    }

    /// Whether the entry counts at `at` (µs since the epoch): not
    /// `inactive`, and `at` within its period (either bound may be absent;
    /// a bound of day or month precision covers all of it). A period that
    /// cannot be read does not count (exporting someone who may have left
    /// is the worse mistake).
    pub fn counts_at(&self, at: i64) -> bool {
        !self.inactive && period_contains(self.period_start.as_deref(), self.period_end.as_deref(), at)
    }

    /// The entry as a Group `member` element.
    pub fn to_fhir(&self) -> serde_json::Value {
        let mut member = serde_json::json!({"entity": {"reference": format!("Patient/{}", self.patient)}});
        if self.period_start.is_some() || self.period_end.is_some() {
            let mut period = serde_json::Map::new();
            if let Some(start) = &self.period_start {
                period.insert("start".into(), start.clone().into());
            }
            if let Some(end) = &self.period_end {
                period.insert("end".into(), end.clone().into());
            }
            member["period"] = serde_json::Value::Object(period);
        }
        if self.inactive {
            member["inactive"] = true.into();
        }
        member
    }
}

/// Whether `at` (µs) lies within the period `start`..`end` (FHIR dateTime
/// texts, either absent). `false` for a period that cannot be read.
pub fn period_contains(start: Option<&str>, end: Option<&str>, at: i64) -> bool {
    if start.is_none() && end.is_none() {
        return true;
    }
    match period_text_range(start, end) {
        Some(range) => range.low <= at && at <= range.high,
        None => false,
    }
}

/// One membership of one patient in a Group: a row of the schema. A
/// patient who leaves and joins again has two rows; a member whose period
/// or `inactive` changes too (the old entry removed, the new one added).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The entry.
    #[serde(flatten)]
    pub entry: MemberEntry,
    /// The Group version that added the member.
    pub added_in: u64,
    /// The Group version that removed it (`None`: a member now).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed_in: Option<u64>,
}

impl Member {
    /// A member added by Group version `version`.
    pub fn added(patient: &str, version: u64) -> Self {
        Self::of(MemberEntry::patient(patient), version)
    }

    /// `entry`, added by Group version `version`.
    pub fn of(entry: MemberEntry, version: u64) -> Self {
        Self {
            entry,
            added_in: version,
            removed_in: None,
        }
    }

    /// Whether the member is in the Group now.
    pub fn is_current(&self) -> bool {
        self.removed_in.is_none()
    }

    /// Whether the member was in the Group at version `version`.
    pub fn is_in(&self, version: u64) -> bool {
        self.added_in <= version && self.removed_in.is_none_or(|removed| removed > version)
    }
}

/// The membership rows after Group version `version` has exactly the
/// entries `current`: rows of entries that stay are kept, entries that
/// left get `removed_in = version`, new entries (members who come back,
/// or whose period or `inactive` changed) get a row with `added_in =
/// version`. Earlier history is kept as it was.
pub fn next_membership(previous: &[Member], current: &[MemberEntry], version: u64) -> Vec<Member> {
    let mut wanted: HashMap<&MemberEntry, usize> = HashMap::new();
    for entry in current {
        *wanted.entry(entry).or_default() += 1;
    }
    let mut rows: Vec<Member> = previous.to_vec();
    for row in rows.iter_mut().filter(|r| r.is_current()) {
        match wanted.get_mut(&row.entry) {
            Some(left) if *left > 0 => *left -= 1,
            _ => row.removed_in = Some(version),
        }
    }
    for entry in current {
        if let Some(left) = wanted.get_mut(entry)
            && *left > 0
        {
            *left -= 1;
            rows.push(Member::of(entry.clone(), version));
        }
    }
    rows
}

/// The rows of `next` that Group version `version` wrote: added or
/// removed by it (what a delta segment holds).
pub fn changed_by(next: &[Member], version: u64) -> Vec<Member> {
    next.iter()
        .filter(|m| m.added_in == version || m.removed_in == Some(version))
        .cloned()
        .collect()
}

/// The Arrow schema of membership rows.
pub fn membership_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("group_id", DataType::Utf8, false),
        Field::new("patient_id", DataType::Utf8, false),
        Field::new("period_start", DataType::Utf8, true),
        Field::new("period_end", DataType::Utf8, true),
        Field::new("inactive", DataType::Boolean, false),
        Field::new("added_in_version", DataType::UInt64, false),
        Field::new("removed_in_version", DataType::UInt64, true),
    ]))
}

/// The membership rows of `groups` (Group id, its rows) as one batch of
/// [`membership_schema`].
pub fn membership_batch(groups: &[(&str, &[Member])]) -> Result<RecordBatch, ArrowError> {
    let rows = || {
        groups
            .iter()
            .flat_map(|(id, members)| members.iter().map(move |m| (*id, m)))
    };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(rows().map(|(id, _)| Some(id)).collect::<StringArray>()),
        Arc::new(
            rows()
                .map(|(_, m)| Some(m.entry.patient.as_str()))
                .collect::<StringArray>(),
        ),
        Arc::new(
            rows()
                .map(|(_, m)| m.entry.period_start.as_deref())
                .collect::<StringArray>(),
        ),
        Arc::new(
            rows()
                .map(|(_, m)| m.entry.period_end.as_deref())
                .collect::<StringArray>(),
        ),
        Arc::new(rows().map(|(_, m)| Some(m.entry.inactive)).collect::<BooleanArray>()),
        Arc::new(rows().map(|(_, m)| Some(m.added_in)).collect::<UInt64Array>()),
        Arc::new(rows().map(|(_, m)| m.removed_in).collect::<UInt64Array>()),
    ];
    RecordBatch::try_new(membership_schema(), columns)
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::Array;

    use super::*;

    fn ids(items: &[&str]) -> Vec<MemberEntry> {
        items.iter().map(|s| MemberEntry::patient(s)).collect()
    }

    #[test]
    fn membership_keeps_history_across_versions() {
        let v1 = next_membership(&[], &ids(&["a", "b"]), 1);
        assert_eq!(v1, vec![Member::added("a", 1), Member::added("b", 1)]);
        // b leaves, c joins.
        let v2 = next_membership(&v1, &ids(&["a", "c"]), 2);
        let b = v2.iter().find(|m| m.entry.patient == "b").expect("b kept as history");
        assert_eq!((b.added_in, b.removed_in), (1, Some(2)));
        let current: Vec<&str> = v2
            .iter()
            .filter(|m| m.is_current())
            .map(|m| m.entry.patient.as_str())
            .collect();
        assert_eq!(current, ["a", "c"]);
        // b comes back: a second row; a's row is untouched.
        let v3 = next_membership(&v2, &ids(&["a", "b", "c"]), 3);
        assert_eq!(v3.iter().filter(|m| m.entry.patient == "b").count(), 2);
        assert_eq!(v3.iter().find(|m| m.entry.patient == "a").map(|m| m.added_in), Some(1));
        // Nothing changes: the same rows.
        assert_eq!(next_membership(&v3, &ids(&["a", "b", "c"]), 4), v3);
    }

    #[test]
    fn a_changed_period_ends_the_old_row_and_adds_a_new_one() {
        let v1 = next_membership(&[], &ids(&["a", "b"]), 1);
        let mut a = MemberEntry::patient("a");
        a.period_end = Some("2020-12-31".into());
        let v2 = next_membership(&v1, &[a.clone(), MemberEntry::patient("b")], 2);
        assert_eq!(
            changed_by(&v2, 2).len(),
            2,
            "a's old row ended, its new row added; b untouched"
        );
        assert!(v2[0].is_in(1) && !v2[0].is_in(2));
        assert_eq!(v2.iter().filter(|m| m.is_current()).count(), 2);
        // The same patient twice (left and rejoined) keeps two entries.
        let mut again = MemberEntry::patient("a");
        again.period_start = Some("2022-01-01".into());
        let v3 = next_membership(&v2, &[a, again, MemberEntry::patient("b")], 3);
        assert_eq!(changed_by(&v3, 3).len(), 1);
    }

    #[test]
    fn entries_count_within_their_period_and_when_active() {
        let at = chrono::DateTime::parse_from_rfc3339("2021-06-01T00:00:00Z")
            .expect("time")
            .timestamp_micros();
        let mut entry = MemberEntry::patient("a");
        assert!(entry.counts_at(at));
        entry.period_end = Some("2021-05".into());
        assert!(!entry.counts_at(at));
        entry.period_end = Some("2021-06-01".into());
        assert!(entry.counts_at(at), "a day bound covers the whole day");
        entry.period_start = Some("not a date".into());
        assert!(!entry.counts_at(at));
        let mut inactive = MemberEntry::patient("b");
        inactive.inactive = true;
        assert!(!inactive.counts_at(at));
    }

    #[test]
    fn membership_rows_as_arrow() {
        let rows = next_membership(&next_membership(&[], &ids(&["a", "b"]), 1), &ids(&["a"]), 2);
        let batch = membership_batch(&[("g1", &rows), ("g2", &[])]).expect("batch");
        assert_eq!(batch.schema(), membership_schema());
        assert_eq!(batch.num_rows(), 2);
        let removed = batch.column(6).as_any().downcast_ref::<UInt64Array>().expect("u64");
        assert_eq!((removed.is_null(0), removed.value(1)), (true, 2));
    }
}
