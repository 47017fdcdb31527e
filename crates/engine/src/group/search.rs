//! `GET /Group?…`: every R4 Group search parameter (`actual`,
//! `characteristic`, `characteristic-value`, `code`, `exclude`,
//! `identifier`, `managing-entity`, `member`, `type`, `value`), `name`
//! (prefix, `:exact`, `:contains`), `_id` and `_lastUpdated`, matched in
//! memory over the Group resources (a server holds few). Values are parsed
//! by the search parser, so syntax (prefixes, `system|code`, `$`
//! composites, `,` alternatives) is the member-filter's.

use std::collections::HashSet;

use serde_json::Value;

use crate::fhir::parse_reference;
use crate::fhirpath::temporal::DateTimeValue;
use crate::search::extract::fold;
use crate::search::query::{ClauseKind, Modifier, SearchQuery, SearchValue, parse_search};
use crate::search::range::{date_matches, value_range};

use super::GroupError;

/// The Group search parameters understood (besides paging).
pub const GROUP_SEARCH_PARAMETERS: [&str; 13] = [
    "actual",
    "characteristic",
    "characteristic-value",
    "code",
    "exclude",
    "identifier",
    "managing-entity",
    "member",
    "type",
    "value",
    "name",
    "_id",
    "_lastUpdated",
];

/// How a `name` value is matched (the IG's parameter, not an R4 one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NameMatch {
    Prefix,
    Exact,
    Contains,
}

/// A parsed Group search, and the parameters it does not understand.
pub struct GroupSearch {
    query: Option<SearchQuery>,
    /// `name` clauses: how, and their ORed values.
    names: Vec<(NameMatch, Vec<String>)>,
    /// Parameter names not understood (reported; refused when strict).
    pub unknown: Vec<String>,
}

impl GroupSearch {
    /// Parses the decoded query pairs (paging and `_format` already set
    /// aside). A value that does not parse is an error.
    pub fn parse(params: &[(String, String)]) -> Result<Self, GroupError> {
        let mut names = Vec::new();
        let mut rest = Vec::new();
        for (name, value) in params {
            let how = match name.as_str() {
                "name" => NameMatch::Prefix,
                "name:exact" => NameMatch::Exact,
                "name:contains" => NameMatch::Contains,
                _ => {
                    rest.push((name, value));
                    continue;
                }
            };
            names.push((how, value.split(',').map(str::to_string).collect()));
        }
        type Pairs<'a> = Vec<(&'a String, &'a String)>;
        let (known, unknown): (Pairs<'_>, Pairs<'_>) = rest
            .into_iter()
            .partition(|(name, _)| GROUP_SEARCH_PARAMETERS.contains(&name.split(':').next().unwrap_or_default()));
        let query = if known.is_empty() {
            None
        } else {
            let text: Vec<String> = known.iter().map(|(n, v)| format!("{n}={v}")).collect();
            let parsed = parse_search(&format!("Group?{}", text.join("&")))
                .map_err(|e| GroupError::invalid(format!("Group search: {e}")))?;
            Some(parsed)
        };
        Ok(Self {
            query,
            names,
            unknown: unknown.into_iter().map(|(n, _)| n.clone()).collect(),
        })
    }

    /// Whether `group` matches every understood parameter; `members` are
    /// its member Patient ids when known beyond its `member` entries (a
    /// stored Group's membership).
    pub fn matches(&self, group: &Value, members: Option<&HashSet<String>>) -> bool {
        let name = group["name"].as_str();
        let names_match = self.names.iter().all(|(how, values)| {
            name.is_some_and(|name| {
                values.iter().any(|value| match how {
                    NameMatch::Exact => name == value,
                    NameMatch::Contains => fold(name).contains(&fold(value)),
                    NameMatch::Prefix => fold(name).starts_with(&fold(value)),
                })
            })
        });
        let Some(query) = &self.query else {
            return names_match;
        };
        if !names_match {
            return false;
        }
        query.clauses.iter().all(|clause| match &clause.kind {
            ClauseKind::Param {
                param,
                modifier,
                values,
            } => {
                let found = values
                    .iter()
                    .any(|value| value_matches(&param.code, value, group, members));
                // `:not` matches resources with no value equal to any given one.
                if modifier == &Some(Modifier::Not) {
                    !found
                } else {
                    found
                }
            }
            // Chains and _has are not Group search parameters.
            _ => false,
        })
    }
}

fn value_matches(param: &str, value: &SearchValue, group: &Value, members: Option<&HashSet<String>>) -> bool {
    let characteristics = || group["characteristic"].as_array().cloned().unwrap_or_default();
    match (param, value) {
        ("_id", SearchValue::Token { code, .. }) => code.as_deref() == group["id"].as_str(),
        ("_lastUpdated", SearchValue::Date { prefix, value }) => {
            let updated = group["meta"]["lastUpdated"]
                .as_str()
                .and_then(DateTimeValue::parse)
                .and_then(|v| value_range(&v));
            match (updated, value_range(value)) {
                (Some(resource), Some(search)) => date_matches(*prefix, resource, search),
                _ => false,
            }
        }
        ("actual", SearchValue::Token { code, .. }) => bool_matches(&group["actual"], code.as_deref()),
        ("type", SearchValue::Token { code, .. }) => code.is_none() || code.as_deref() == group["type"].as_str(),
        ("code", token @ SearchValue::Token { .. }) => token_in(token, &codings(&group["code"])),
        ("identifier", token @ SearchValue::Token { .. }) => token_in(token, &identifiers(&group["identifier"])),
        ("managing-entity", SearchValue::Reference { resource_type, id }) => {
            reference_matches(&group["managingEntity"], resource_type.as_deref(), id)
        }
        ("member", SearchValue::Reference { resource_type, id }) => {
            let listed = group["member"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|m| reference_matches(&m["entity"], resource_type.as_deref(), id));
            let patient = resource_type.as_deref().is_none_or(|t| t == "Patient");
            listed || (patient && members.is_some_and(|m| m.contains(id)))
        }
        ("characteristic", token @ SearchValue::Token { .. }) => {
            characteristics().iter().any(|c| token_in(token, &codings(&c["code"])))
        }
        ("exclude", SearchValue::Token { code, .. }) => characteristics()
            .iter()
            .any(|c| bool_matches(&c["exclude"], code.as_deref())),
        ("value", token @ SearchValue::Token { .. }) => {
            characteristics().iter().any(|c| characteristic_value(c, token))
        }
        ("characteristic-value", SearchValue::Composite(parts)) => match parts.as_slice() {
            [code @ SearchValue::Token { .. }, value @ SearchValue::Token { .. }] => characteristics()
                .iter()
                .any(|c| token_in(code, &codings(&c["code"])) && characteristic_value(c, value)),
            _ => false,
        },
        _ => false,
    }
}

/// `characteristic.value[x]` as a token: a CodeableConcept's codings, a
/// boolean's `true`/`false`.
fn characteristic_value(characteristic: &Value, token: &SearchValue) -> bool {
    if let Some(concept) = characteristic.get("valueCodeableConcept") {
        return token_in(token, &codings(concept));
    }
    match (characteristic.get("valueBoolean"), token) {
        (Some(flag), SearchValue::Token { code, .. }) => bool_matches(flag, code.as_deref()),
        _ => false,
    }
}

fn bool_matches(value: &Value, code: Option<&str>) -> bool {
    match (value.as_bool(), code) {
        (Some(flag), Some(code)) => code == if flag { "true" } else { "false" },
        (Some(_), None) => true,
        _ => false,
    }
}

/// (system, code) of a CodeableConcept's codings.
fn codings(concept: &Value) -> Vec<(Option<String>, String)> {
    concept["coding"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| {
            Some((
                c["system"].as_str().map(str::to_string),
                c["code"].as_str()?.to_string(),
            ))
        })
        .collect()
}

/// (system, value) of Identifiers.
fn identifiers(list: &Value) -> Vec<(Option<String>, String)> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| {
            Some((
                i["system"].as_str().map(str::to_string),
                i["value"].as_str()?.to_string(),
            ))
        })
        .collect()
}

/// A token value against (system, code) pairs: `system` `None` is any,
/// `Some("")` none; `code` `None` is any.
fn token_in(token: &SearchValue, candidates: &[(Option<String>, String)]) -> bool {
    let SearchValue::Token { system, code } = token else {
        return false;
    };
    candidates.iter().any(|(s, c)| {
        let system_ok = match system.as_deref() {
            None => true,
            Some("") => s.is_none(),
            Some(wanted) => s.as_deref() == Some(wanted),
        };
        system_ok && code.as_deref().is_none_or(|wanted| wanted == c)
    })
}

fn reference_matches(reference: &Value, resource_type: Option<&str>, id: &str) -> bool {
    let Some(target) = reference["reference"].as_str().and_then(parse_reference) else {
        return false;
    };
    target.id == id && resource_type.is_none_or(|t| target.resource_type == Some(t))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn search(pairs: &[(&str, &str)]) -> GroupSearch {
        let params: Vec<(String, String)> = pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
        GroupSearch::parse(&params).expect("parses")
    }

    #[test]
    fn every_group_parameter_matches_its_element() {
        let group = json!({
            "resourceType": "Group", "id": "g1", "name": "Diabetes Registry", "type": "person", "actual": true,
            "meta": {"lastUpdated": "2026-03-04T05:06:07Z"},
            "code": {"coding": [{"system": "http://example.org/c", "code": "registry"}]},
            "identifier": [{"system": "http://example.org/id", "value": "R-1"}],
            "managingEntity": {"reference": "Organization/payer"},
            "characteristic": [{"code": {"coding": [{"system": "http://snomed.info/sct", "code": "44054006"}]},
                "valueBoolean": true, "exclude": false}],
            "member": [{"entity": {"reference": "Patient/p1"}}],
        });
        let cases: &[(&[(&str, &str)], bool)] = &[
            (&[("actual", "true")], true),
            (&[("actual", "false")], false),
            (&[("type", "person")], true),
            (&[("code", "http://example.org/c|registry")], true),
            (&[("code", "registry")], true),
            (&[("code", "other")], false),
            (&[("identifier", "http://example.org/id|R-1")], true),
            (&[("managing-entity", "Organization/payer")], true),
            (&[("member", "Patient/p1")], true),
            (&[("member", "Patient/p2")], false),
            (&[("characteristic", "http://snomed.info/sct|44054006")], true),
            (&[("exclude", "false")], true),
            (&[("value", "true")], true),
            (
                &[("characteristic-value", "http://snomed.info/sct|44054006$true")],
                true,
            ),
            (
                &[("characteristic-value", "http://snomed.info/sct|44054006$false")],
                false,
            ),
            (&[("name", "diab")], true),
            (&[("name:exact", "Diabetes")], false),
            (&[("name:contains", "regis")], true),
            (&[("_id", "g1,g2")], true),
            (&[("_lastUpdated", "ge2026-03")], true),
            (&[("_lastUpdated", "lt2026-01-01")], false),
            (&[("type", "person"), ("actual", "false")], false),
        ];
        for (pairs, expected) in cases {
            assert_eq!(search(pairs).matches(&group, None), *expected, "{pairs:?}");
        }
        let members: HashSet<String> = ["p2".to_string()].into();
        assert!(search(&[("member", "Patient/p2")]).matches(&group, Some(&members)));
        assert_eq!(search(&[("colour", "red")]).unknown, ["colour"]);
        assert!(GroupSearch::parse(&[("_lastUpdated".into(), "gexyz".into())]).is_err());
    }
}
