//! fhirlake: FHIR R4 bulk data in a columnar warehouse, queried with SQL and
//! (in later stages) served through the Bulk Data Access API.
//!
//! Stages of the data flow, one module each:
//! - [`ingest`]: NDJSON(.gz) from local folders or object stores → warehouse tables
//! - [`warehouse`]: Parquet tables with atomic snapshot commits, DataFusion catalog
//! - [`json`]: the borrowed JSON model every resource is parsed into once
//! - [`fhir`]: R4 definitions (resource types, Patient compartment, references)
//! - [`store`]: resolving locations to object stores
//! - [`query`]: running SQL over the warehouse and writing results
//! - [`generate`]: scaled-up benchmark data from a real dataset

pub mod allocator;
pub mod auth;
pub mod cohort;
pub mod export;
pub mod fhir;
pub mod fhirpath;
pub mod generate;
pub mod index;
pub mod ingest;
pub mod json;
pub mod query;
pub mod search;
pub mod server;
pub mod store;
pub mod view;
pub mod warehouse;
