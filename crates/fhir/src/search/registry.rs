//! The R4 search parameters, from the official `search-parameters.json`
//! bundle: per resource type, each parameter's type, FHIRPath expression
//! (the branches of a multi-type expression that apply to that type) and
//! reference targets. Nothing is hand-written.

use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;

pub use crate::fhir::search_parameters::{ParamType, split_union};
use crate::fhir::search_parameters::{SearchParameterDefinition, definitions};
use crate::fhir::{DefinitionError, ResourceTypes};
use crate::fhirpath::FhirPath;

/// One component of a composite parameter.
#[derive(Debug, Clone)]
pub struct Component {
    /// Canonical URL of the component's own SearchParameter.
    pub definition: String,
    /// FHIRPath relative to the composite's value.
    pub expression: String,
}

/// A search parameter as it applies to one resource type.
#[derive(Debug, Clone)]
pub struct SearchParam {
    /// The name used in queries (`code`, `onset-date`, `_id`).
    pub code: String,
    /// Its type.
    pub param_type: ParamType,
    /// The FHIRPath branches for this resource type, as text.
    pub expression: String,
    /// The parsed expression; `None` when the engine cannot evaluate it
    /// (the parameter is then not searchable).
    pub path: Option<FhirPath>,
    /// Reference targets (for reference parameters).
    pub targets: Vec<String>,
    /// Composite components.
    pub components: Vec<Component>,
    /// Canonical URL.
    pub url: String,
    /// How its values follow from other parameters of the same type, when
    /// they do: the index then holds no rows of its own for it (see
    /// [`Derivation`]).
    pub derived: Option<Derivation>,
}

/// How a parameter's values are other parameters' values of the same
/// resource type, read off the definitions' expressions (never a hand-kept
/// list): the search index keeps one copy, and queries of the derived
/// parameter read the rows it derives from.
#[derive(Debug, Clone, PartialEq)]
pub enum Derivation {
    /// `X.where(resolve() is T)` beside a reference parameter `base` whose
    /// expression is `X` (`Observation.patient` of `Observation.subject`):
    /// the rows of `base` whose target type is `target` (both read the type
    /// from the reference the same way).
    TargetsOf {
        /// The parameter with expression `X`.
        base: String,
        /// `T`.
        target: String,
    },
    /// `A | B | …` where each branch is the whole expression of another
    /// parameter of the same type (`Observation.combo-code` of `code` and
    /// `component-code`): the rows of all of `parts`.
    UnionOf(Vec<String>),
}

/// The derivations among `params` (one resource type's): see [`Derivation`].
/// Only parameters that are themselves underived serve as parts, so the
/// rows a derived parameter reads are always written.
fn derive(params: &BTreeMap<String, SearchParam>) -> Vec<(String, Derivation)> {
    let underived = |code: &String| params.get(code).is_some_and(|p| derivation_of(p, params).is_none());
    params
        .values()
        .filter(|p| p.is_supported())
        .filter_map(|param| {
            let derivation = derivation_of(param, params)?;
            let parts_underived = match &derivation {
                Derivation::TargetsOf { base, .. } => underived(base),
                Derivation::UnionOf(parts) => parts.iter().all(underived),
            };
            parts_underived.then(|| (param.code.clone(), derivation))
        })
        .collect()
}

/// The derivation `param`'s expression has the shape of, if any (its
/// parts not yet checked for being underived).
fn derivation_of(param: &SearchParam, params: &BTreeMap<String, SearchParam>) -> Option<Derivation> {
    // A composite's expression is where its components are evaluated, not
    // its values: composites with one expression differ by components.
    // Parameters of all resources (`_id`, `_lastUpdated`, …) are answered
    // partly or wholly from the resource tables, so they are neither
    // derived nor bases.
    if matches!(param.param_type, ParamType::Composite | ParamType::Special) || param.code.starts_with('_') {
        return None;
    }
    let other = |expression: &str, param_type: ParamType| {
        params
            .values()
            .find(|p| {
                p.code != param.code
                    && !p.code.starts_with('_')
                    && p.is_supported()
                    && p.param_type == param_type
                    && p.expression == expression
            })
            .map(|p| p.code.clone())
    };
    let expression = param.expression.trim();
    if param.param_type == ParamType::Reference
        && let Some(rest) = expression.strip_suffix(')')
        && let Some((base, target)) = rest.rsplit_once(".where(resolve() is ")
        && !target.is_empty()
        && target.chars().all(|c| c.is_ascii_alphanumeric())
        && crate::fhir::ResourceTypes::r4().is_ok_and(|types| types.get(target).is_some())
    {
        return other(base, ParamType::Reference).map(|base| Derivation::TargetsOf {
            base,
            target: target.to_string(),
        });
    }
    let branches = split_union(expression);
    if branches.len() < 2 {
        return None;
    }
    let parts: Option<Vec<String>> = branches.iter().map(|b| other(b, param.param_type)).collect();
    parts.map(Derivation::UnionOf)
}

impl SearchParam {
    /// True if queries may use it.
    pub fn is_supported(&self) -> bool {
        self.path.is_some() && self.param_type != ParamType::Special
    }
}

/// All search parameters of all resource types. A type's parameters (and
/// their FHIRPath expressions) are built the first time the type is asked
/// for: a CLI cohort touches a few of the 146 types, and building them all
/// was most of its start-up.
#[derive(Debug)]
pub struct SearchRegistry {
    by_type: HashMap<&'static str, TypeParams>,
    by_url: HashMap<String, (String, ParamType)>,
}

/// The parameters of one resource type.
#[derive(Debug)]
struct TypeParams {
    /// The definitions that apply to the type.
    definitions: Vec<&'static SearchParameterDefinition>,
    /// Built on first use.
    params: OnceLock<BTreeMap<String, SearchParam>>,
}

/// True if branch `branch` of a shared expression applies to `resource_type`.
fn branch_applies(branch: &str, resource_type: &str) -> bool {
    let b = branch.trim_start_matches('(').trim_start();
    [resource_type, "Resource", "DomainResource"].iter().any(|t| {
        b.strip_prefix(t)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('.') || rest.starts_with(' '))
    })
}

/// `def` as it applies to `resource_type`: the branches of its expression
/// for that type, parsed.
fn param_for(def: &SearchParameterDefinition, resource_type: &str) -> SearchParam {
    let expression = def.expression.as_deref().unwrap_or_default();
    let branches: Vec<&str> = split_union(expression)
        .into_iter()
        .filter(|b| branch_applies(b, resource_type))
        .collect();
    let text = branches.join(" | ");
    let path = if text.is_empty() {
        None
    } else {
        FhirPath::parse(&text).ok()
    };
    let components = def
        .component
        .iter()
        .map(|c| Component {
            definition: c.definition.clone(),
            expression: c.expression.clone(),
        })
        .collect();
    SearchParam {
        code: def.code.clone(),
        param_type: def.param_type,
        expression: text,
        path,
        targets: def.target.clone(),
        components,
        url: def.url.clone(),
        derived: None,
    }
}

impl SearchRegistry {
    /// The process-wide instance.
    pub fn r4() -> Result<&'static SearchRegistry, &'static DefinitionError> {
        static REGISTRY: OnceLock<Result<SearchRegistry, DefinitionError>> = OnceLock::new();
        REGISTRY.get_or_init(Self::load).as_ref()
    }

    fn load() -> Result<Self, DefinitionError> {
        let definitions = definitions().map_err(|e| DefinitionError::Unsupported {
            file: "data/fhir-r4/search-parameters.json",
            message: e.to_string(),
        })?;
        let types = ResourceTypes::r4().map_err(|e| DefinitionError::Unsupported {
            file: "data/fhir-r4/elements-r4.json",
            message: e.to_string(),
        })?;
        let mut by_type: HashMap<&'static str, TypeParams> = HashMap::new();
        let mut by_url = HashMap::new();
        for def in definitions {
            by_url.insert(def.url.clone(), (def.code.clone(), def.param_type));
            let bases: Vec<&'static str> = if def.base.iter().any(|b| b == "Resource" || b == "DomainResource") {
                types.names().to_vec()
            } else {
                def.base.iter().filter_map(|b| types.get(b)).collect()
            };
            for resource_type in bases {
                by_type
                    .entry(resource_type)
                    .or_insert_with(|| TypeParams {
                        definitions: Vec::new(),
                        params: OnceLock::new(),
                    })
                    .definitions
                    .push(def);
            }
        }
        Ok(Self { by_type, by_url })
    }

    /// Every parameter of `resource_type` by code (built on first use).
    fn params(&self, resource_type: &str) -> Option<&BTreeMap<String, SearchParam>> {
        let (name, entry) = self.by_type.get_key_value(resource_type)?;
        Some(entry.params.get_or_init(|| {
            let mut params = BTreeMap::new();
            for def in &entry.definitions {
                // A later definition of the same code replaces an earlier one.
                params.insert(def.code.clone(), param_for(def, name));
            }
            for (code, derivation) in derive(&params) {
                if let Some(param) = params.get_mut(&code) {
                    param.derived = Some(derivation);
                }
            }
            params
        }))
    }

    /// The parameter `code` of `resource_type`.
    pub fn get(&self, resource_type: &str, code: &str) -> Option<&SearchParam> {
        self.params(resource_type)?.get(code)
    }

    /// The searchable parameters of `resource_type`, sorted by name.
    pub fn supported(&self, resource_type: &str) -> Vec<&SearchParam> {
        self.params(resource_type)
            .map(|m| m.values().filter(|p| p.is_supported()).collect())
            .unwrap_or_default()
    }

    /// The code and type of the parameter with canonical `url`.
    pub fn by_url(&self, url: &str) -> Option<(&str, ParamType)> {
        self.by_url.get(url).map(|(c, t)| (c.as_str(), *t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_parameters_per_type() {
        let r = SearchRegistry::r4().unwrap();
        let code = r.get("Condition", "code").unwrap();
        assert_eq!(code.param_type, ParamType::Token);
        assert_eq!(code.expression, "Condition.code");
        let onset = r.get("Condition", "onset-date").unwrap();
        assert_eq!(
            onset.expression,
            "Condition.onset.as(dateTime) | Condition.onset.as(Period)"
        );
        assert!(onset.is_supported());
        let patient = r.get("Observation", "patient").unwrap();
        assert_eq!(patient.expression, "Observation.subject.where(resolve() is Patient)");
        assert_eq!(patient.param_type, ParamType::Reference);
        assert_eq!(r.get("Patient", "gender").unwrap().expression, "Patient.gender");
        assert_eq!(r.get("Patient", "_id").unwrap().param_type, ParamType::Token);
        assert_eq!(r.get("Encounter", "_lastUpdated").unwrap().param_type, ParamType::Date);
        let vq = r.get("Observation", "value-quantity").unwrap();
        assert_eq!(
            vq.expression,
            "(Observation.value as Quantity) | (Observation.value as SampledData)"
        );
        let cvq = r.get("Observation", "code-value-quantity").unwrap();
        assert_eq!(cvq.param_type, ParamType::Composite);
        assert_eq!(cvq.components.len(), 2);
        assert!(r.supported("Patient").iter().any(|p| p.code == "birthdate"));
        // Every non-special parameter of the common types parses with our FHIRPath engine.
        for t in [
            "Patient",
            "Condition",
            "Observation",
            "Encounter",
            "MedicationRequest",
            "Procedure",
            "Immunization",
        ] {
            for p in r
                .params(t)
                .unwrap()
                .values()
                .filter(|p| p.param_type != ParamType::Special && !p.expression.is_empty())
            {
                assert!(p.path.is_some(), "{t}.{} '{}' does not parse", p.code, p.expression);
            }
        }
    }
}

#[cfg(test)]
mod derivation_tests {
    use super::*;

    /// Derived parameters are read off the expressions: `X.where(resolve()
    /// is T)` beside a parameter `X`, and unions of other parameters.
    #[test]
    fn derives_parameters_from_their_expressions() {
        let r = SearchRegistry::r4().unwrap();
        let targets = |t: &str, code: &str| r.get(t, code).unwrap().derived.clone();
        assert_eq!(
            targets("Observation", "patient"),
            Some(Derivation::TargetsOf {
                base: "subject".into(),
                target: "Patient".into()
            })
        );
        assert_eq!(
            targets("Encounter", "practitioner"),
            Some(Derivation::TargetsOf {
                base: "participant".into(),
                target: "Practitioner".into()
            })
        );
        assert_eq!(
            targets("Observation", "combo-code"),
            Some(Derivation::UnionOf(vec!["code".into(), "component-code".into()]))
        );
        // Composites sharing an expression (`Observation | Observation.component`)
        // differ by their components.
        assert_eq!(targets("Observation", "combo-code-value-quantity"), None);
        // Parameters with expressions of their own, and bases, are not derived.
        for (t, code) in [
            ("Observation", "subject"),
            ("Observation", "code"),
            ("Claim", "patient"),
            ("Condition", "code"),
            ("Patient", "gender"),
        ] {
            assert_eq!(targets(t, code), None, "{t}.{code}");
        }
    }
}
