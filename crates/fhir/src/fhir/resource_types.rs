//! The set of FHIR R4 resource types, derived from the type model (which
//! parses `elements-r4.json` once for the whole process).

use std::sync::OnceLock;

use super::DefinitionError;
use super::model::{FastMap, FhirModel, TypeKind};

/// The concrete (non-abstract) R4 resource types.
#[derive(Debug)]
pub struct ResourceTypes {
    names: Vec<&'static str>,
    /// The same names, for look-ups by hash: every line and every reference
    /// of a load asks, and a binary search costs ~8 string comparisons.
    by_name: FastMap<&'static str, ()>,
    model: &'static FhirModel,
}

impl ResourceTypes {
    /// The process-wide instance.
    pub fn r4() -> Result<&'static ResourceTypes, &'static DefinitionError> {
        static TYPES: OnceLock<Result<ResourceTypes, &'static DefinitionError>> = OnceLock::new();
        TYPES.get_or_init(Self::load).as_ref().map_err(|e| *e)
    }

    fn load() -> Result<Self, &'static DefinitionError> {
        let model = FhirModel::r4()?;
        let mut names: Vec<&'static str> = model
            .types()
            .filter(|(_, t)| t.kind == TypeKind::Resource && !t.is_abstract)
            .map(|(name, _)| name)
            .collect();
        names.sort_unstable();
        let by_name = names.iter().map(|&n| (n, ())).collect();
        Ok(Self { names, by_name, model })
    }

    /// The canonical `'static` name of `name` if it is an R4 resource type.
    pub fn get(&self, name: &str) -> Option<&'static str> {
        self.by_name.get_key_value(name).map(|(k, _)| *k)
    }

    /// The resource types a `Reference` element (`Immunization.patient`) may
    /// point to; empty for unknown paths and non-reference elements.
    pub fn reference_targets(&self, element_path: &str) -> &[&'static str] {
        element_path
            .rsplit_once('.')
            .and_then(|(owner, name)| self.model.element(owner, name))
            .map(|e| e.targets.as_slice())
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
