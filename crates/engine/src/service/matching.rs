//! `Patient/$match` (R4): finding the Patients a set of demographics
//! names, to put in a Group. First an exact identifier match (the token
//! index); then candidates found through the search index by family name
//! or birth date (never a scan of the Patient JSON), scored on family and
//! given name, birth date, gender and postal code.
//!
//! Scores and grades: an identifier match is `certain` (1.0). Otherwise
//! family 0.3, given 0.2, birth date 0.3, gender 0.1, postal code 0.1;
//! ≥ 0.9 with family, given and birth date all agreeing is `certain`,
//! ≥ 0.7 `probable`, ≥ 0.5 `possible`; lower scores are not returned.

use std::collections::BTreeSet;

use serde_json::Value;

use super::Service;
use super::search::{plan_ids, resources_by_id};
use crate::cohort::{CohortEngine, CohortError};
use crate::search::extract::fold;

/// One match.
#[derive(Debug, Clone)]
pub struct PatientMatch {
    /// The Patient.
    pub patient: Value,
    /// 0..1.
    pub score: f64,
    /// `certain`, `probable` or `possible` (the match-grade code).
    pub grade: &'static str,
}

/// The demographics compared, read off a Patient resource.
struct Demographics {
    identifiers: Vec<(Option<String>, String)>,
    family: Option<String>,
    given: Vec<String>,
    birth_date: Option<String>,
    gender: Option<String>,
    postal_code: Option<String>,
}

impl Demographics {
    fn of(patient: &Value) -> Self {
        let first_name = &patient["name"][0];
        Self {
            identifiers: patient["identifier"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|i| {
                    Some((
                        i["system"].as_str().map(str::to_string),
                        i["value"].as_str()?.to_string(),
                    ))
                })
                .collect(),
            family: first_name["family"].as_str().map(fold),
            given: first_name["given"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|g| g.as_str().map(fold))
                .collect(),
            birth_date: patient["birthDate"].as_str().map(str::to_string),
            gender: patient["gender"].as_str().map(str::to_string),
            postal_code: patient["address"][0]["postalCode"].as_str().map(str::to_string),
        }
    }

    /// (score, whether family, given and birth date all agree) of `other`.
    fn compare(&self, other: &Demographics) -> (f64, bool) {
        let same = |a: &Option<String>, b: &Option<String>| a.is_some() && a == b;
        let family = same(&self.family, &other.family);
        let given = self.given.iter().any(|g| other.given.contains(g));
        let birth = same(&self.birth_date, &other.birth_date);
        let score = [
            (family, 0.3),
            (given, 0.2),
            (birth, 0.3),
            (same(&self.gender, &other.gender), 0.1),
            (same(&self.postal_code, &other.postal_code), 0.1),
        ]
        .iter()
        .filter(|(agrees, _)| *agrees)
        .map(|(_, weight)| weight)
        .sum();
        (score, family && given && birth)
    }
}

/// A value as a search parameter value (the search syntax's specials escaped).
fn escaped(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, '\\' | ',' | '$' | '|') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

impl Service {
    /// The Patients `input` (a Patient resource) matches, best first, at
    /// most `count`; with `only_certain`, only `certain` matches.
    pub async fn match_patients(
        &self,
        input: &Value,
        only_certain: bool,
        count: usize,
    ) -> Result<Vec<PatientMatch>, CohortError> {
        let engine = self.cohorts.get().await?;
        let wanted = Demographics::of(input);
        let mut expressions: Vec<String> = wanted
            .identifiers
            .iter()
            .map(|(system, value)| match system {
                Some(system) => format!("Patient?identifier={}|{}", escaped(system), escaped(value)),
                None => format!("Patient?identifier={}", escaped(value)),
            })
            .collect();
        let certain_ids = ids_matching(&engine, &expressions).await?;
        expressions.clear();
        if let Some(family) = &wanted.family {
            expressions.push(format!("Patient?family={}", escaped(family)));
        }
        if let Some(birth) = &wanted.birth_date {
            expressions.push(format!("Patient?birthdate={}", escaped(birth)));
        }
        let mut candidates = ids_matching(&engine, &expressions).await?;
        candidates.extend(certain_ids.iter().cloned());
        candidates.sort_unstable();
        candidates.dedup();
        let page = resources_by_id(&engine, "Patient", &candidates).await?;
        let mut matches: Vec<PatientMatch> = page
            .into_iter()
            .filter_map(|patient| {
                let id = patient["id"].as_str().unwrap_or_default().to_string();
                let (score, agree) = wanted.compare(&Demographics::of(&patient));
                let (score, grade) = if certain_ids.contains(&id) {
                    (1.0, "certain")
                } else if score >= 0.9 && agree {
                    (score, "certain")
                } else if score >= 0.7 {
                    (score, "probable")
                } else if score >= 0.5 {
                    (score, "possible")
                } else {
                    return None;
                };
                Some(PatientMatch { patient, score, grade })
            })
            .filter(|m| !only_certain || m.grade == "certain")
            .collect();
        matches.sort_by(|a, b| {
            b.score
                .total_cmp(&a.score)
                .then_with(|| a.patient["id"].as_str().cmp(&b.patient["id"].as_str()))
        });
        matches.truncate(count);
        Ok(matches)
    }
}

/// Ids of the Patients meeting any of `expressions` (none: no one).
async fn ids_matching(engine: &CohortEngine, expressions: &[String]) -> Result<Vec<String>, CohortError> {
    if expressions.is_empty() || !engine.has_index() {
        return Ok(Vec::new());
    }
    let queries = CohortEngine::parse(expressions)?;
    let ids: BTreeSet<String> = plan_ids(engine, engine.resource_ids_plan(&queries)?)
        .await?
        .into_iter()
        .collect();
    Ok(ids.into_iter().collect())
}
