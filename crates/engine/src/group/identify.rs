//! Finding the Patients a member operation names: by id (it must exist),
//! or by identifier — a `Patient.identifier` (through the search index),
//! or a payer's member id: `Coverage.subscriberId` or `Coverage.identifier`,
//! resolved to `Coverage.beneficiary`. Lookups are joins with the requested
//! values, so a request naming 100,000 members costs one scan, not 100,000.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::common::JoinType;
use datafusion::dataframe::DataFrame;
use datafusion::prelude::col;
use serde::{Deserialize, Serialize};

use super::GroupError;
use crate::cohort::CohortEngine;
use crate::fhir::parse_reference;
use crate::index::IndexKind;
use crate::warehouse::catalog::table_provider;

/// How a member operation names a member.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberRef {
    /// `patientReference`: a Patient id.
    Patient(String),
    /// `memberId`: an identifier (`system` optional).
    Identifier {
        /// `Identifier.system`.
        system: Option<String>,
        /// `Identifier.value`.
        value: String,
    },
}

impl std::fmt::Display for MemberRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Patient(id) => write!(f, "Patient/{id}"),
            Self::Identifier { system: Some(s), value } => write!(f, "identifier {s}|{value}"),
            Self::Identifier { system: None, value } => write!(f, "identifier {value}"),
        }
    }
}

/// The Patient id each of `refs` names, in order. Every reference must
/// name exactly one existing Patient: those naming none or several are
/// all reported in one [`GroupError::UnresolvedMembers`].
pub async fn resolve_members(engine: &CohortEngine, refs: &[MemberRef]) -> Result<Vec<String>, GroupError> {
    let ids: Vec<String> = refs
        .iter()
        .filter_map(|r| match r {
            MemberRef::Patient(id) => Some(id.clone()),
            MemberRef::Identifier { .. } => None,
        })
        .collect();
    let existing = existing_patients(engine, &ids).await?;
    let identifiers: Vec<(Option<&str>, &str)> = refs
        .iter()
        .filter_map(|r| match r {
            MemberRef::Identifier { system, value } => Some((system.as_deref(), value.as_str())),
            MemberRef::Patient(_) => None,
        })
        .collect();
    let mut candidates = patients_by_identifier(engine, &identifiers).await?;
    for (key, patients) in coverage_beneficiaries(engine, &identifiers).await? {
        candidates.entry(key).or_default().extend(patients);
    }
    let mut unknown = Vec::new();
    let mut ambiguous = Vec::new();
    let mut resolved = Vec::with_capacity(refs.len());
    for reference in refs {
        match reference {
            MemberRef::Patient(id) if existing.contains(id) => resolved.push(id.clone()),
            MemberRef::Patient(_) => unknown.push(reference.to_string()),
            MemberRef::Identifier { system, value } => {
                let found = candidates.get(&(system.clone(), value.clone()));
                match found.map(|set| set.iter().collect::<Vec<_>>()).as_deref() {
                    Some([one]) => resolved.push((*one).clone()),
                    Some(several) if several.len() > 1 => ambiguous.push(format!(
                        "{reference} (matches {})",
                        several
                            .iter()
                            .map(|p| format!("Patient/{p}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )),
                    _ => unknown.push(reference.to_string()),
                }
            }
        }
    }
    if unknown.is_empty() && ambiguous.is_empty() {
        Ok(resolved)
    } else {
        unknown.dedup();
        ambiguous.dedup();
        Err(GroupError::UnresolvedMembers { unknown, ambiguous })
    }
}

/// Requested identifier (system as asked, value) → Patients it names.
type Candidates = BTreeMap<(Option<String>, String), BTreeSet<String>>;

/// A one-column table of `values`, to join with.
pub(crate) fn values_frame(engine: &CohortEngine, name: &str, values: &[&str]) -> datafusion::error::Result<DataFrame> {
    let schema = Arc::new(Schema::new(vec![Field::new(name, DataType::Utf8, false)]));
    let unique: BTreeSet<&str> = values.iter().copied().collect();
    let column = StringArray::from_iter_values(unique);
    let batch = RecordBatch::try_new(schema, vec![Arc::new(column)])?;
    engine.session().read_batch(batch)
}

/// Patients whose `identifier` (the token index) matches a requested one:
/// the value always, the system when the request gives one.
async fn patients_by_identifier(
    engine: &CohortEngine,
    identifiers: &[(Option<&str>, &str)],
) -> Result<Candidates, GroupError> {
    let mut found = Candidates::new();
    if identifiers.is_empty() || !engine.has_index() {
        return Ok(found);
    }
    let values: Vec<&str> = identifiers.iter().map(|(_, v)| *v).collect();
    let rows = DataFrame::new(
        engine.session().state(),
        engine.index_rows(IndexKind::Token, "Patient", "identifier")?,
    );
    let batches = rows
        .join(
            values_frame(engine, "wanted", &values)?,
            JoinType::LeftSemi,
            &["code"],
            &["wanted"],
            None,
        )?
        .select(vec![col("system"), col("code"), col("resource_id")])?
        .collect()
        .await?;
    for batch in batches {
        let (systems, codes, ids) = (
            batch.column(0).as_string::<i32>(),
            batch.column(1).as_string::<i32>(),
            batch.column(2).as_string::<i32>(),
        );
        for i in 0..batch.num_rows() {
            let system = (!systems.is_null(i)).then(|| systems.value(i));
            add_matches(&mut found, identifiers, system, codes.value(i), ids.value(i));
        }
    }
    Ok(found)
}

/// Adds `patient` for every requested identifier that (`system`, `value`) matches.
fn add_matches(
    found: &mut Candidates,
    identifiers: &[(Option<&str>, &str)],
    system: Option<&str>,
    value: &str,
    patient: &str,
) {
    for (wanted_system, wanted_value) in identifiers {
        if *wanted_value == value && wanted_system.is_none_or(|s| Some(s) == system) {
            found
                .entry((wanted_system.map(str::to_string), value.to_string()))
                .or_default()
                .insert(patient.to_string());
        }
    }
}

/// Beneficiaries of the Coverages whose `subscriberId` or `identifier`
/// matches a requested identifier. Coverage is read from its resource
/// table: `subscriberId` is no R4 search parameter.
async fn coverage_beneficiaries(
    engine: &CohortEngine,
    identifiers: &[(Option<&str>, &str)],
) -> Result<Candidates, GroupError> {
    let mut found = Candidates::new();
    let Some(entry) = engine.snapshot().tables.get("Coverage") else {
        return Ok(found);
    };
    if identifiers.is_empty() {
        return Ok(found);
    }
    let values: HashSet<&str> = identifiers.iter().map(|(_, v)| *v).collect();
    let ctx = engine.session();
    let provider = table_provider(engine.warehouse(), ctx, "Coverage", entry).await?;
    let batches = ctx
        .read_table(provider)?
        .select(vec![col("resource")])?
        .collect()
        .await?;
    for batch in batches {
        let resources = batch.column(0).as_string::<i32>();
        for i in 0..batch.num_rows() {
            let Ok(coverage) = serde_json::from_str::<serde_json::Value>(resources.value(i)) else {
                continue;
            };
            let beneficiary = coverage["beneficiary"]["reference"]
                .as_str()
                .and_then(parse_reference)
                .filter(|t| t.resource_type == Some("Patient"))
                .map(|t| t.id.to_string());
            let Some(beneficiary) = beneficiary else { continue };
            if let Some(subscriber_id) = coverage["subscriberId"].as_str()
                && values.contains(subscriber_id)
            {
                // subscriberId has no system: it matches on its value.
                for (system, value) in identifiers.iter().filter(|(_, v)| *v == subscriber_id) {
                    found
                        .entry((system.map(str::to_string), value.to_string()))
                        .or_default()
                        .insert(beneficiary.clone());
                }
            }
            for identifier in coverage["identifier"].as_array().map(Vec::as_slice).unwrap_or_default() {
                if let Some(value) = identifier["value"].as_str()
                    && values.contains(value)
                {
                    add_matches(
                        &mut found,
                        identifiers,
                        identifier["system"].as_str(),
                        value,
                        &beneficiary,
                    );
                }
            }
        }
    }
    Ok(found)
}

/// Which of `ids` are Patients of `engine`'s warehouse version (a join
/// with the requested ids: fine for one id and for 100,000).
pub async fn existing_patients(engine: &CohortEngine, ids: &[String]) -> Result<HashSet<String>, GroupError> {
    let mut found = HashSet::new();
    let Some(entry) = engine.snapshot().tables.get("Patient") else {
        return Ok(found);
    };
    if ids.is_empty() {
        return Ok(found);
    }
    let ctx = engine.session();
    let provider = table_provider(engine.warehouse(), ctx, "Patient", entry).await?;
    let wanted: Vec<&str> = ids.iter().map(String::as_str).collect();
    let batches = ctx
        .read_table(provider)?
        .select(vec![col("id")])?
        .join(
            values_frame(engine, "wanted", &wanted)?,
            JoinType::LeftSemi,
            &["id"],
            &["wanted"],
            None,
        )?
        .collect()
        .await?;
    for batch in batches {
        let column = batch.column(0).as_string::<i32>();
        found.extend((0..batch.num_rows()).map(|i| column.value(i).to_string()));
    }
    Ok(found)
}
