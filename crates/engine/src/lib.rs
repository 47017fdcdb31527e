//! fhirlake's engine: everything fhirlake does, without a front. The HTTP
//! server, the CLI and later fronts call it; it never calls them (Cargo
//! keeps it so: this crate does not depend on them).
//!
//! Stages of the data flow, one module each:
//! - [`store`]: resolving locations to object stores (local, S3)
//! - [`warehouse`]: Parquet tables with atomic snapshot commits, the
//!   DataFusion catalog of a snapshot
//! - [`ingest`]: NDJSON(.gz) from local folders or object stores → tables
//! - [`index`]: the search index tables
//! - [`view`]: SQL-on-FHIR view tables (materialization; the semantics are
//!   in `fhirlake_fhir::view`)
//! - [`cohort`]: `member-filter` searches compiled to DataFusion plans
//! - [`group`]: Group validation, storage and the one membership resolver
//! - [`jobs`]: the async job model
//! - [`export`]: Bulk Data `$export`
//! - [`query`]: SQL over the warehouse and writing results
//! - [`analyst`]: the SQL session analysts get (the catalog, Group tables,
//!   `cohort()`)
//! - [`state`]: durable server state beside the warehouse
//! - [`service`]: the engine as one long-lived value behind a front
//! - [`generate`]: scaled-up benchmark data from a real dataset
//! - [`allocator`]: the binary's global allocator (mimalloc)
//!
//! The FHIR knowledge below it is re-exported under the same names
//! ([`json`], [`fhir`], [`fhirpath`], [`search`], [`error`]).

pub mod allocator;
pub mod analyst;
pub mod cohort;
pub mod export;
pub mod generate;
pub mod group;
pub mod index;
pub mod ingest;
pub mod jobs;
pub mod query;
pub mod service;
pub mod sql;
pub mod state;
pub mod store;
pub mod view;
pub mod warehouse;

pub use fhirlake_fhir::{error, fhir, fhirpath, json, patch, search};
