//! SQL-on-FHIR views as warehouse tables. The ViewDefinition semantics
//! (model, runner, Arrow typing, the shipped catalog) are
//! `fhirlake_fhir::view`, re-exported here; this module adds what needs
//! the warehouse: materializing, refreshing and running views over stored
//! resources ([`materialize`]).

pub use fhirlake_fhir::view::*;

pub mod materialize;
