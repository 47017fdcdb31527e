//! FHIR R4 knowledge, read from the official definition files shipped in
//! `data/fhir-r4/` (compiled into the binary): resource types, the Patient
//! compartment, and reference parsing.

pub mod compartment;
mod instant;
pub mod model;
pub mod reference;
pub mod resource_types;
pub mod search_parameters;

pub use compartment::PatientCompartment;
pub use instant::parse_instant;
pub use reference::{ReferenceTarget, parse_reference, split_reference};
pub use resource_types::ResourceTypes;

/// Errors in the bundled FHIR definitions (a broken build, not user input).
#[derive(Debug, thiserror::Error)]
pub enum DefinitionError {
    /// A definition file does not parse.
    #[error("bundled definition file {file} is invalid: {source}")]
    Json {
        /// Which file.
        file: &'static str,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// A definition uses something this build cannot interpret.
    #[error("bundled definition {file}: {message}")]
    Unsupported {
        /// Which file.
        file: &'static str,
        /// What is unsupported.
        message: String,
    },
}
