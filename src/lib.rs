//! fhirlake: FHIR R4 bulk data in a columnar warehouse, queried with SQL and
//! served through the Bulk Data Access API.
//!
//! This package is the `fhirlake` binary; its library is the one name its
//! tests and benches import, over the workspace's layers (lowest first):
//! - `fhirlake-fhir`: FHIR knowledge with no query engine ([`json`],
//!   [`fhir`], [`fhirpath`], [`search`], the view semantics)
//! - `fhirlake-auth`: SMART Backend Services authorization ([`auth`])
//! - `fhirlake-engine`: the warehouse and everything run over it
//!   ([`store`], [`warehouse`], [`ingest`], [`index`], [`view`],
//!   [`cohort`], [`group`], [`jobs`], [`export`], [`query`], …)
//! - `fhirlake-http`: the FHIR REST front ([`server`])

pub use fhirlake_auth as auth;
pub use fhirlake_engine::*;
pub use fhirlake_http as server;
