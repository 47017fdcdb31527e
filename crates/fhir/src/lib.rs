//! FHIR R4 knowledge with no query engine: what fhirlake knows about
//! resources, independent of where they are stored or how they are queried.
//! No DataFusion, tokio or object_store here (Cargo checks it: this crate
//! does not depend on them); Arrow only for the Arrow types of view columns.
//!
//! - [`json`]: the borrowed JSON model every resource is parsed into once
//! - [`fhir`]: R4 definitions (resource types, elements, Patient
//!   compartment, references, search parameters)
//! - [`fhirpath`]: the FHIRPath engine (parser, evaluator, compiled paths)
//! - [`search`]: FHIR search expressions and the extraction of indexed values
//! - [`view`]: SQL-on-FHIR v2 ViewDefinitions: model, runner, Arrow typing
//! - [`error`]: the kinds every library error of fhirlake is sorted into

pub mod error;
pub mod fhir;
pub mod fhirpath;
pub mod json;
pub mod patch;
pub mod search;
pub mod view;
