//! The FHIR R4 type model FHIRPath navigates with: for each type (or backbone
//! element path) its child elements, their types, choice elements and
//! reference targets, from `elements-r4.json`.

use std::collections::HashMap;

/// A hash map with rustc's FxHash: model lookups hash short element names
/// on every FHIRPath navigation step (and the index writer its type names),
/// where SipHash's DoS resistance buys nothing (the keys come from the
/// bundled definitions, not from input).
pub type FastMap<K, V> = HashMap<K, V, rustc_hash::FxBuildHasher>;
use std::sync::OnceLock;

use serde::Deserialize;

use super::DefinitionError;

const ELEMENTS_FILE: &str = "data/fhir-r4/elements-r4.json";
/// `ELEMENTS_FILE` trimmed by `build.rs` to the fields read here.
const ELEMENTS_JSON: &str = include_str!(concat!(env!("OUT_DIR"), "/elements-r4.json"));

/// What kind of type a definition is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypeKind {
    /// `boolean`, `string`, `date`, …
    Primitive,
    /// `HumanName`, `Quantity`, …
    Complex,
    /// `Patient`, `Resource`, …
    Resource,
}

/// One type of the model.
#[derive(Debug, Clone)]
pub struct TypeDef {
    /// Its kind.
    pub kind: TypeKind,
    /// The type it specialises (`code` → `string`, `Patient` → `DomainResource`).
    pub base: Option<&'static str>,
    /// Abstract types (`Resource`, `DomainResource`) have no instances.
    pub is_abstract: bool,
}

/// One child element.
#[derive(Debug, Clone)]
pub struct ElementDef {
    /// Allowed type codes (several for a choice element).
    pub types: Vec<&'static str>,
    /// A `[x]` choice element (JSON name = name + capitalised type).
    pub choice: bool,
    /// `max` is `*` (or > 1).
    pub repeating: bool,
    /// `min` ≥ 1: an instance must have it (kept by `_elements` subsetting).
    pub required: bool,
    /// Where the element's own children are defined: a type name, or the
    /// element's path for backbone elements (`Observation.component`).
    pub children_owner: Option<&'static str>,
    /// Allowed targets of a `Reference` element (`Observation.subject` →
    /// Patient, Group, Device, Location).
    pub targets: Vec<&'static str>,
}

/// The R4 model.
#[derive(Debug)]
pub struct FhirModel {
    types: FastMap<&'static str, TypeDef>,
    /// owner (type or backbone path) → element name → definition.
    elements: FastMap<&'static str, FastMap<&'static str, ElementDef>>,
}

#[derive(Deserialize)]
struct ElementsFile {
    types: HashMap<String, TypeEntry>,
}

#[derive(Deserialize)]
struct TypeEntry {
    kind: String,
    #[serde(rename = "baseDefinition")]
    base_definition: Option<String>,
    #[serde(rename = "abstract", default)]
    is_abstract: bool,
    #[serde(default)]
    elements: Vec<ElementEntry>,
}

#[derive(Deserialize)]
struct ElementEntry {
    path: String,
    #[serde(default)]
    min: u32,
    max: Option<String>,
    #[serde(default)]
    types: Vec<ElementType>,
    #[serde(default)]
    choice: bool,
    #[serde(rename = "contentReference")]
    content_reference: Option<String>,
}

#[derive(Deserialize)]
struct ElementType {
    code: String,
    #[serde(default)]
    targets: Vec<String>,
}

fn leak(s: &str) -> &'static str {
    Box::leak(s.to_string().into_boxed_str())
}

impl FhirModel {
    /// The process-wide instance.
    pub fn r4() -> Result<&'static FhirModel, &'static DefinitionError> {
        static MODEL: OnceLock<Result<FhirModel, DefinitionError>> = OnceLock::new();
        MODEL.get_or_init(Self::load).as_ref()
    }

    fn load() -> Result<Self, DefinitionError> {
        let file: ElementsFile = serde_json::from_str(ELEMENTS_JSON).map_err(|source| DefinitionError::Json {
            file: ELEMENTS_FILE,
            source,
        })?;
        let mut interned: HashMap<String, &'static str> = HashMap::new();
        let mut intern = |s: &str| -> &'static str { interned.entry(s.to_string()).or_insert_with(|| leak(s)) };
        let mut types = FastMap::default();
        let mut elements: FastMap<&'static str, FastMap<&'static str, ElementDef>> = FastMap::default();
        for (name, entry) in &file.types {
            let kind = match entry.kind.as_str() {
                "primitive-type" => TypeKind::Primitive,
                "resource" => TypeKind::Resource,
                _ => TypeKind::Complex,
            };
            let base = entry.base_definition.as_deref().map(&mut intern);
            types.insert(
                intern(name),
                TypeDef {
                    kind,
                    base,
                    is_abstract: entry.is_abstract,
                },
            );
            for element in &entry.elements {
                let Some((owner, child)) = element.path.rsplit_once('.') else {
                    continue;
                };
                let child = child.trim_end_matches("[x]");
                let codes: Vec<&'static str> = element.types.iter().map(|t| intern(&t.code)).collect();
                let targets: Vec<&'static str> = element
                    .types
                    .iter()
                    .filter(|t| t.code == "Reference")
                    .flat_map(|t| t.targets.iter())
                    .map(|t| intern(t))
                    .collect();
                // Primitive types define a `value` child of a System type: not navigable in JSON.
                if kind == TypeKind::Primitive {
                    continue;
                }
                let children_owner = match (&element.content_reference, codes.as_slice()) {
                    (Some(reference), _) => Some(intern(reference.trim_start_matches('#'))),
                    (None, ["BackboneElement"] | ["Element"]) => Some(intern(&element.path)),
                    (None, [single]) => Some(*single),
                    _ => None,
                };
                let repeating = element
                    .max
                    .as_deref()
                    .is_some_and(|m| m == "*" || m.parse::<u32>().is_ok_and(|n| n > 1));
                elements.entry(intern(owner)).or_default().insert(
                    intern(child),
                    ElementDef {
                        targets,
                        types: codes,
                        choice: element.choice,
                        repeating,
                        required: element.min > 0,
                        children_owner,
                    },
                );
            }
        }
        Ok(Self { types, elements })
    }

    /// All types of the model with their definitions.
    pub fn types(&self) -> impl Iterator<Item = (&'static str, &TypeDef)> {
        self.types.iter().map(|(k, v)| (*k, v))
    }

    /// The definition of a type.
    pub fn type_def(&self, name: &str) -> Option<&TypeDef> {
        self.types.get(name)
    }

    /// The interned name of a type.
    pub fn type_name(&self, name: &str) -> Option<&'static str> {
        self.types.get_key_value(name).map(|(k, _)| *k)
    }

    /// True for primitive types (`string`, `date`, …).
    pub fn is_primitive(&self, name: &str) -> bool {
        self.types.get(name).is_some_and(|t| t.kind == TypeKind::Primitive)
    }

    /// True for resource types (abstract ones included).
    pub fn is_resource(&self, name: &str) -> bool {
        self.types.get(name).is_some_and(|t| t.kind == TypeKind::Resource)
    }

    /// The element `name` of `owner` (a type name or backbone path).
    pub fn element(&self, owner: &str, name: &str) -> Option<&ElementDef> {
        self.elements.get(owner)?.get(name)
    }

    /// All elements of `owner`.
    pub fn elements_of(&self, owner: &str) -> impl Iterator<Item = (&'static str, &ElementDef)> {
        self.elements
            .get(owner)
            .into_iter()
            .flat_map(|m| m.iter().map(|(k, v)| (*k, v)))
    }

    /// True if `derived` is `ancestor` or specialises it (`Patient` of
    /// `Resource`, `code` of `string`).
    pub fn derives_from(&self, derived: &str, ancestor: &str) -> bool {
        let mut current = Some(derived);
        let mut guard = 0;
        while let Some(name) = current {
            if name == ancestor {
                return true;
            }
            current = self.types.get(name).and_then(|t| t.base);
            guard += 1;
            if guard > 16 {
                break;
            }
        }
        false
    }
}

/// The JSON property name of choice element `name` with type `code`
/// (`value` + `Quantity` → `valueQuantity`, `value` + `dateTime` → `valueDateTime`).
pub fn choice_json_name(name: &str, code: &str) -> String {
    let mut out = String::with_capacity(name.len() + code.len());
    out.push_str(name);
    let mut chars = code.chars();
    if let Some(first) = chars.next() {
        out.extend(first.to_uppercase());
        out.push_str(chars.as_str());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn navigates_the_model() {
        let m = FhirModel::r4().unwrap();
        let value = m.element("Observation", "value").unwrap();
        assert!(value.choice && value.types.contains(&"Quantity"));
        let component = m.element("Observation", "component").unwrap();
        assert_eq!(component.children_owner, Some("Observation.component"));
        assert!(component.repeating);
        assert_eq!(
            m.element("Observation.component", "code").unwrap().types,
            ["CodeableConcept"]
        );
        assert_eq!(m.element("HumanName", "given").unwrap().types, ["string"]);
        assert_eq!(
            m.element("Questionnaire.item", "item").unwrap().children_owner,
            Some("Questionnaire.item")
        );
        assert!(m.derives_from("Patient", "Resource"));
        assert!(m.derives_from("code", "string"));
        assert!(!m.derives_from("string", "code"));
        assert_eq!(choice_json_name("value", "dateTime"), "valueDateTime");
    }
}
