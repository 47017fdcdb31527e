//! The set of FHIR R4 resource types, from `elements-r4.json`.

use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;

use serde::Deserialize;

use super::DefinitionError;

const ELEMENTS_FILE: &str = "data/fhir-r4/elements-r4.json";
const ELEMENTS_JSON: &str = include_str!("../../data/fhir-r4/elements-r4.json");

/// The concrete (non-abstract) R4 resource types, and the allowed targets of
/// their `Reference` elements.
#[derive(Debug)]
pub struct ResourceTypes {
    names: Vec<&'static str>,
    reference_targets: HashMap<String, Vec<String>>,
}

#[derive(Deserialize)]
struct ElementsFile {
    types: BTreeMap<String, TypeEntry>,
}

#[derive(Deserialize)]
struct TypeEntry {
    kind: String,
    #[serde(rename = "abstract")]
    is_abstract: bool,
    #[serde(default)]
    elements: Vec<ElementEntry>,
}

#[derive(Deserialize)]
struct ElementEntry {
    path: String,
    #[serde(default)]
    types: Vec<ElementType>,
}

#[derive(Deserialize)]
struct ElementType {
    code: String,
    #[serde(default)]
    targets: Vec<String>,
}

impl ResourceTypes {
    /// The process-wide instance (parsed once from the bundled definitions).
    pub fn r4() -> Result<&'static ResourceTypes, &'static DefinitionError> {
        static TYPES: OnceLock<Result<ResourceTypes, DefinitionError>> = OnceLock::new();
        TYPES.get_or_init(Self::load).as_ref()
    }

    fn load() -> Result<Self, DefinitionError> {
        let file: ElementsFile = serde_json::from_str(ELEMENTS_JSON).map_err(|source| DefinitionError::Json {
            file: ELEMENTS_FILE,
            source,
        })?;
        let mut reference_targets = HashMap::new();
        for entry in file.types.values().filter(|t| t.kind == "resource") {
            for element in &entry.elements {
                let targets: Vec<String> = element
                    .types
                    .iter()
                    .filter(|t| t.code == "Reference")
                    .flat_map(|t| t.targets.iter().cloned())
                    .collect();
                if !targets.is_empty() {
                    reference_targets.insert(element.path.clone(), targets);
                }
            }
        }
        let mut names: Vec<&'static str> = file
            .types
            .into_iter()
            .filter(|(_, t)| t.kind == "resource" && !t.is_abstract)
            .map(|(name, _)| &*Box::leak(name.into_boxed_str()))
            .collect();
        names.sort_unstable();
        Ok(Self {
            names,
            reference_targets,
        })
    }

    /// The canonical `'static` name of `name` if it is an R4 resource type.
    pub fn get(&self, name: &str) -> Option<&'static str> {
        self.names.binary_search(&name).ok().map(|i| self.names[i])
    }

    /// The resource types a `Reference` element (`Immunization.patient`) may
    /// point to; empty for unknown paths and non-reference elements.
    pub fn reference_targets(&self, element_path: &str) -> &[String] {
        self.reference_targets
            .get(element_path)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// All resource type names, sorted.
    pub fn names(&self) -> &[&'static str] {
        &self.names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knows_r4_types() {
        let types = ResourceTypes::r4().unwrap();
        assert_eq!(types.names().len(), 146);
        assert_eq!(types.get("Patient"), Some("Patient"));
        assert_eq!(
            types.get("MedicinalProductIngredient"),
            Some("MedicinalProductIngredient")
        );
        assert_eq!(types.get("Resource"), None);
        assert_eq!(types.get("patient"), None);
        assert_eq!(types.reference_targets("Immunization.patient"), ["Patient"]);
        assert_eq!(
            types.reference_targets("Observation.subject"),
            ["Patient", "Group", "Device", "Location"]
        );
    }
}
