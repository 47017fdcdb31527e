//! fhirlake: FHIR R4 bulk data in a columnar warehouse, queried with SQL and
//! served through the Bulk Data Access API.
//!
//! This package is the `fhirlake` binary; its library is the one name its
//! tests and benches import, over the workspace's layers (lowest first):
//! - `fhirlake-fhir`: FHIR knowledge with no query engine ([`json`],
//!   [`fhir`], [`fhirpath`], [`search`], the view semantics)
//! - `fhirlake-auth`: SMART Backend Services authorization ([`auth`])
//! - `fhirlake-engine`: the warehouse and everything run over it:
//!   [`store`] (local and S3 locations, the read cache), [`warehouse`]
//!   (Parquet tables, snapshot commits, the SQL catalog), [`ingest`]
//!   (NDJSON → tables), [`index`] (search index tables), [`view`]
//!   (SQL-on-FHIR view tables), [`cohort`] (searches → DataFusion plans),
//!   [`group`] (Groups and their membership), [`jobs`] (the async job
//!   model), [`export`] (`$export`), [`query`] (SQL and result output),
//!   [`analyst`] (the SQL session: catalog, Group tables, `cohort()`),
//!   [`state`] (durable server state), [`service`] (the engine behind a
//!   front), [`generate`] (scaled-up test data), [`allocator`] (mimalloc
//!   for the binary), and [`error`] (error kinds every front maps once)
//! - `fhirlake-http`: the FHIR REST front ([`server`])
//!
//! `examples/` shows the library in use: `load_and_query`, `cohort`,
//! `view_one_resource`.

pub use fhirlake_auth as auth;
pub use fhirlake_engine::*;
pub use fhirlake_http as server;
pub use fhirlake_pg as pg;
