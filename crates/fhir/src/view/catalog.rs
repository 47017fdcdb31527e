//! The set of views materialized at load time: the ones shipped in
//! `sql/views/` (compiled into the binary) plus any in a `--views DIR`.

use std::collections::HashMap;
use std::path::Path;

use super::{ViewDefinition, ViewError};

/// The ViewDefinitions shipped with fhirlake.
const SHIPPED: [(&str, &str); 11] = [
    (
        "allergy_intolerance.json",
        include_str!("../../../../sql/views/allergy_intolerance.json"),
    ),
    ("claim.json", include_str!("../../../../sql/views/claim.json")),
    ("condition.json", include_str!("../../../../sql/views/condition.json")),
    (
        "diagnostic_report.json",
        include_str!("../../../../sql/views/diagnostic_report.json"),
    ),
    ("encounter.json", include_str!("../../../../sql/views/encounter.json")),
    (
        "explanation_of_benefit.json",
        include_str!("../../../../sql/views/explanation_of_benefit.json"),
    ),
    (
        "immunization.json",
        include_str!("../../../../sql/views/immunization.json"),
    ),
    (
        "medication_request.json",
        include_str!("../../../../sql/views/medication_request.json"),
    ),
    (
        "observation.json",
        include_str!("../../../../sql/views/observation.json"),
    ),
    ("patient.json", include_str!("../../../../sql/views/patient.json")),
    ("procedure.json", include_str!("../../../../sql/views/procedure.json")),
];

/// Named, validated views, indexed by the resource type they read.
#[derive(Debug, Clone, Default)]
pub struct ViewCatalog {
    views: Vec<ViewDefinition>,
    by_type: HashMap<String, Vec<usize>>,
}

fn parse_view(file: &str, text: &str) -> Result<ViewDefinition, ViewError> {
    let in_file = |source: ViewError| ViewError::InFile {
        file: file.to_string(),
        source: Box::new(source),
    };
    let json: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| in_file(ViewError::invalid("ViewDefinition", &format!("is not JSON: {e}"))))?;
    let mut view = ViewDefinition::from_json(&json).map_err(in_file)?;
    if view.name.is_none() {
        // A view needs a table name: default to the file's stem.
        let stem = Path::new(file).file_stem().and_then(|s| s.to_str()).unwrap_or_default();
        view.name = Some(stem.to_string());
    }
    Ok(view)
}

impl ViewCatalog {
    /// An empty catalog (no views materialized).
    pub fn empty() -> Self {
        Self::default()
    }

    /// The shipped views.
    pub fn shipped() -> Result<Self, ViewError> {
        let mut catalog = Self::default();
        for (file, text) in SHIPPED {
            catalog.add(parse_view(&format!("sql/views/{file}"), text)?);
        }
        Ok(catalog)
    }

    /// Adds every `*.json` ViewDefinition in `dir`; a view named like a
    /// shipped one replaces it.
    pub fn add_dir(&mut self, dir: &Path) -> Result<(), ViewError> {
        let io = |e: std::io::Error| ViewError::invalid(&dir.display().to_string(), &e.to_string());
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .map_err(io)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("json"))
            .collect();
        files.sort();
        for path in files {
            let text = std::fs::read_to_string(&path).map_err(io)?;
            self.add(parse_view(&path.display().to_string(), &text)?);
        }
        Ok(())
    }

    /// Adds (or replaces, by name) a view.
    pub fn add(&mut self, view: ViewDefinition) {
        if let Some(existing) = self.views.iter().position(|v| v.name == view.name) {
            self.views[existing] = view;
        } else {
            self.views.push(view);
        }
        self.by_type.clear();
        for (i, v) in self.views.iter().enumerate() {
            self.by_type.entry(v.resource.clone()).or_default().push(i);
        }
    }

    /// All views.
    pub fn views(&self) -> &[ViewDefinition] {
        &self.views
    }

    /// Indexes of the views reading `resource_type`.
    pub fn for_type(&self, resource_type: &str) -> &[usize] {
        self.by_type.get(resource_type).map(Vec::as_slice).unwrap_or_default()
    }

    /// The resource type the view named `name` reads.
    pub fn resource_of(&self, name: &str) -> Option<&str> {
        let view = self.views.iter().find(|v| v.name.as_deref() == Some(name))?;
        Some(view.resource.as_str())
    }

    /// The table name of view `index`.
    pub fn name(&self, index: usize) -> &str {
        self.views[index].name.as_deref().unwrap_or("view")
    }
}

/// Manifest key of a view's table (`views/patient`), kept apart from resource
/// table names.
pub fn view_table_key(name: &str) -> String {
    format!("views/{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_views_are_valid() {
        let catalog = ViewCatalog::shipped().unwrap();
        assert_eq!(catalog.views().len(), 11);
        assert_eq!(catalog.for_type("Patient").len(), 1);
        assert_eq!(catalog.name(catalog.for_type("Condition")[0]), "condition");
    }

    #[test]
    fn bad_views_name_file_column_and_problem() {
        let dir = tempfile::tempdir().unwrap();
        let bad = r#"{"name":"v","resource":"Patient","select":[{"column":[{"name":"a","path":"id"},{"name":"a","path":"gender"}]}]}"#;
        std::fs::write(dir.path().join("dup.json"), bad).unwrap();
        let err = ViewCatalog::empty().add_dir(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("dup.json") && err.contains("select[0].column[1]") && err.contains("'a' is already defined"),
            "{err}"
        );
        std::fs::write(
            dir.path().join("dup.json"),
            r#"{"resource":"Patient","select":[{"column":[{"name":"a","path":"name.where("}]}]}"#,
        )
        .unwrap();
        let err = ViewCatalog::empty().add_dir(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("dup.json") && err.contains("select[0].column[0].path") && err.contains("syntax error"),
            "{err}"
        );
    }
}
