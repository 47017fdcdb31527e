//! Whose data an export contains: everything (system level), every patient
//! (Patient level), or a set of patients (a Group's members, narrowed by
//! `patient`).

use std::collections::HashSet;
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, BooleanArray, ListArray};

use super::ExportError;
use super::params::{ExportLevel, ExportRequest, NEW_MEMBER_DATA};
use crate::cohort::CohortEngine;
use crate::group::history::joined_since;
use crate::group::{GROUPS, GroupError, GroupResolver, StoredGroup};
use crate::state::StateStore;

/// The patients whose compartments an export contains.
#[derive(Debug, Clone)]
pub enum Population {
    /// System level: no restriction.
    All,
    /// Every resource that is in some Patient compartment.
    AnyPatient,
    /// Resources in the compartment of one of these patients.
    Members(Arc<HashSet<String>>),
}

impl Population {
    /// A predicate on the `patients` column for the table scan: with
    /// Parquet filter pushdown the scan decodes the (large) `resource`
    /// column only for the members' rows. `None` when every row may pass.
    pub fn scan_predicate(&self) -> Option<datafusion::prelude::Expr> {
        let Self::Members(members) = self else {
            return None;
        };
        Some(has_any_patient(members))
    }

    /// Which rows of a `patients` list column (a resource's compartment
    /// patients) belong to the population; `None` keeps every row.
    pub fn mask(&self, patients: &ListArray) -> Option<BooleanArray> {
        match self {
            Self::All => None,
            Self::AnyPatient => Some(
                (0..patients.len())
                    .map(|i| Some(patients.value_length(i) > 0))
                    .collect(),
            ),
            Self::Members(members) => {
                let values = patients.values().as_string::<i32>();
                let offsets = patients.value_offsets();
                Some(
                    (0..patients.len())
                        .map(|i| {
                            let (start, end) = (offsets[i] as usize, offsets[i + 1] as usize);
                            Some((start..end).any(|j| values.is_valid(j) && members.contains(values.value(j))))
                        })
                        .collect(),
                )
            }
        }
    }
}

/// Whether a row's `patients` (its compartment patients) include one of
/// `members`.
pub fn has_any_patient(members: &HashSet<String>) -> datafusion::prelude::Expr {
    use datafusion::arrow::array::{ArrayRef, StringArray};
    use datafusion::arrow::buffer::OffsetBuffer;
    use datafusion::arrow::datatypes::{DataType, Field};
    let mut ids: Vec<&str> = members.iter().map(String::as_str).collect();
    ids.sort_unstable();
    let values: ArrayRef = Arc::new(StringArray::from(ids));
    let list = ListArray::new(
        Arc::new(Field::new_list_field(DataType::Utf8, true)),
        OffsetBuffer::from_lengths([values.len()]),
        values,
        None,
    );
    let members = datafusion::prelude::lit(datafusion::common::ScalarValue::List(Arc::new(list)));
    datafusion::functions_nested::expr_fn::array_has_any(
        datafusion::prelude::col(crate::warehouse::schema::resource_columns::PATIENTS),
        members,
    )
}

/// `newMemberData=all`: the members of the exported Group who joined it
/// after `_since` (`None` when not asked for, or without `_since`). A
/// Group of the loaded data has no membership history: refused.
pub async fn joined_after_since(
    engine: &CohortEngine,
    request: &ExportRequest,
) -> Result<Option<HashSet<String>>, ExportError> {
    let (ExportLevel::Group(id), Some(since), true) = (&request.level, request.since, request.new_members_whole) else {
        return Ok(None);
    };
    let state = StateStore::new(engine.warehouse().root().clone());
    let Some(stored) = state.get::<StoredGroup>(GROUPS, id).await.map_err(GroupError::from)? else {
        return Err(ExportError::invalid(
            NEW_MEMBER_DATA,
            format!(
                "Group/{id} was loaded with the data: it has no membership history, so newMemberData=all cannot tell who joined after _since"
            ),
        ));
    };
    let version = request.group_version.unwrap_or(stored.version);
    let at = request
        .members_at
        .unwrap_or_else(|| chrono::Utc::now().timestamp_micros());
    Ok(Some(joined_since(&state, &stored, version, since, at).await?))
}

/// The population of `request`. `patient` narrows a Group to those members
/// (naming a non-member is an error: it would leak that patient's
/// existence and export nothing) or a Patient-level export to those
/// patients (which must exist).
pub async fn resolve(engine: &CohortEngine, request: &ExportRequest) -> Result<Population, ExportError> {
    let members: Option<HashSet<String>> = match &request.level {
        ExportLevel::System => return Ok(Population::All),
        ExportLevel::Patient => None,
        ExportLevel::Group(id) => {
            let at = request
                .members_at
                .unwrap_or_else(|| chrono::Utc::now().timestamp_micros());
            let mut resolver = GroupResolver::at(engine, at);
            if let Some(version) = request.group_version {
                resolver = resolver.pinned(id, version);
            }
            Some(resolver.members(id).await?.into_iter().collect())
        }
    };
    let Some(wanted) = &request.patients else {
        return Ok(match members {
            Some(members) => Population::Members(Arc::new(members)),
            None => Population::AnyPatient,
        });
    };
    let known: HashSet<String> = match members {
        Some(members) => members,
        None => {
            let ids: Vec<String> = wanted.iter().cloned().collect();
            crate::group::identify::existing_patients(engine, &ids).await?
        }
    };
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|p| !known.contains(p.as_str()))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        return Err(ExportError::NotMembers {
            patients: missing.iter().map(|p| p.to_string()).collect(),
        });
    }
    Ok(Population::Members(Arc::new(wanted.iter().cloned().collect())))
}
