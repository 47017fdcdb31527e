//! The official R4 SearchParameter definitions (`search-parameters.json`),
//! deserialized once per process and shared by the Patient compartment and
//! the search registry.

use std::sync::OnceLock;

use serde::Deserialize;

use super::DefinitionError;

const FILE: &str = "data/fhir-r4/search-parameters.json";
/// `FILE` trimmed by `build.rs` to the fields read here.
const JSON: &str = include_str!(concat!(env!("OUT_DIR"), "/search-parameters.json"));

/// A search parameter's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
#[allow(missing_docs)]
pub enum ParamType {
    Number,
    Date,
    String,
    Token,
    Reference,
    Composite,
    Quantity,
    Uri,
    Special,
}

/// One SearchParameter resource, as much of it as fhirlake uses.
#[derive(Debug, Clone, Deserialize)]
pub struct SearchParameterDefinition {
    /// Canonical URL.
    pub url: String,
    /// Name used in queries.
    pub code: String,
    /// Resource types it applies to.
    pub base: Vec<String>,
    /// Its type.
    #[serde(rename = "type")]
    pub param_type: ParamType,
    /// FHIRPath over all base types (`A.x | B.y`).
    pub expression: Option<String>,
    /// Reference targets.
    #[serde(default)]
    pub target: Vec<String>,
    /// Composite components.
    #[serde(default)]
    pub component: Vec<ComponentDefinition>,
}

/// A component of a composite parameter.
#[derive(Debug, Clone, Deserialize)]
pub struct ComponentDefinition {
    /// Canonical URL of the component's SearchParameter.
    pub definition: String,
    /// FHIRPath relative to the composite's value.
    pub expression: String,
}

#[derive(Deserialize)]
struct Bundle {
    entry: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    resource: SearchParameterDefinition,
}

/// All 1,375 definitions, in bundle order.
pub fn definitions() -> Result<&'static [SearchParameterDefinition], &'static DefinitionError> {
    static DEFINITIONS: OnceLock<Result<Vec<SearchParameterDefinition>, DefinitionError>> = OnceLock::new();
    DEFINITIONS
        .get_or_init(|| {
            let bundle: Bundle =
                serde_json::from_str(JSON).map_err(|source| DefinitionError::Json { file: FILE, source })?;
            Ok(bundle.entry.into_iter().map(|e| e.resource).collect())
        })
        .as_ref()
        .map(Vec::as_slice)
}

/// Splits a FHIRPath `expression` at `|` outside parentheses and quotes.
pub fn split_union(expression: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut quoted, mut start) = (0i32, false, 0);
    for (i, c) in expression.char_indices() {
        match c {
            '\'' => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted => depth -= 1,
            '|' if !quoted && depth == 0 => {
                parts.push(expression[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(expression[start..].trim());
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_bundle_and_splits_unions() {
        assert_eq!(definitions().unwrap().len(), 1375);
        assert_eq!(split_union("a.where(x | y) | (b as C)"), ["a.where(x | y)", "(b as C)"]);
        assert_eq!(split_union("'a|b' | c"), ["'a|b'", "c"]);
    }
}
