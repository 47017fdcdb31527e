//! The one membership schema: who is in a Group, since which Group version,
//! until which. Every kind of Group records its members this way (cohort
//! Groups now; member-based Groups, membership history and cohorts in SQL
//! build on it), and [`membership_batch`] gives the rows as Arrow for SQL.

use std::collections::HashSet;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, BooleanArray, RecordBatch, StringArray, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::error::ArrowError;
use serde::{Deserialize, Serialize};

/// One membership of one patient in a Group: a row of the schema. A
/// patient who leaves and joins again has two rows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
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
    /// The Group version that added the member.
    pub added_in: u64,
    /// The Group version that removed it (`None`: a member now).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed_in: Option<u64>,
}

impl Member {
    /// A member added by Group version `version`.
    pub fn added(patient: &str, version: u64) -> Self {
        Self {
            patient: patient.to_string(),
            period_start: None,
            period_end: None,
            inactive: false,
            added_in: version,
            removed_in: None,
        }
    }

    /// Whether the member is in the Group now.
    pub fn is_current(&self) -> bool {
        self.removed_in.is_none()
    }
}

/// The membership rows after Group version `version` has exactly the
/// members `current`: rows of members who stay are kept, members who left
/// get `removed_in = version`, new members (and members who come back) get
/// a row with `added_in = version`. Earlier history is kept as it was.
pub fn next_membership(previous: &[Member], current: &[String], version: u64) -> Vec<Member> {
    let now: HashSet<&str> = current.iter().map(String::as_str).collect();
    let mut rows: Vec<Member> = previous.to_vec();
    let mut staying = HashSet::new();
    for row in rows.iter_mut().filter(|r| r.is_current()) {
        if now.contains(row.patient.as_str()) {
            staying.insert(row.patient.clone());
        } else {
            row.removed_in = Some(version);
        }
    }
    rows.extend(
        current
            .iter()
            .filter(|p| !staying.contains(p.as_str()))
            .map(|p| Member::added(p, version)),
    );
    rows
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
        Arc::new(rows().map(|(_, m)| Some(m.patient.as_str())).collect::<StringArray>()),
        Arc::new(rows().map(|(_, m)| m.period_start.as_deref()).collect::<StringArray>()),
        Arc::new(rows().map(|(_, m)| m.period_end.as_deref()).collect::<StringArray>()),
        Arc::new(rows().map(|(_, m)| Some(m.inactive)).collect::<BooleanArray>()),
        Arc::new(rows().map(|(_, m)| Some(m.added_in)).collect::<UInt64Array>()),
        Arc::new(rows().map(|(_, m)| m.removed_in).collect::<UInt64Array>()),
    ];
    RecordBatch::try_new(membership_schema(), columns)
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::Array;

    use super::*;

    fn ids(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn membership_keeps_history_across_versions() {
        let v1 = next_membership(&[], &ids(&["a", "b"]), 1);
        assert_eq!(v1, vec![Member::added("a", 1), Member::added("b", 1)]);
        // b leaves, c joins.
        let v2 = next_membership(&v1, &ids(&["a", "c"]), 2);
        let b = v2.iter().find(|m| m.patient == "b").expect("b kept as history");
        assert_eq!((b.added_in, b.removed_in), (1, Some(2)));
        let current: Vec<&str> = v2
            .iter()
            .filter(|m| m.is_current())
            .map(|m| m.patient.as_str())
            .collect();
        assert_eq!(current, ["a", "c"]);
        // b comes back: a second row; a's row is untouched.
        let v3 = next_membership(&v2, &ids(&["a", "b", "c"]), 3);
        assert_eq!(v3.iter().filter(|m| m.patient == "b").count(), 2);
        assert_eq!(v3.iter().find(|m| m.patient == "a").map(|m| m.added_in), Some(1));
        // Nothing changes: the same rows.
        assert_eq!(next_membership(&v3, &ids(&["a", "b", "c"]), 4), v3);
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
