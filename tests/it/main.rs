//! Integration tests (one binary: each test file would otherwise be its own
//! large link).

mod auth;
mod cohort;
mod cohorts_over_time;
mod common;
mod compat;
mod crash;
mod export;
mod fhirpath_suite;
mod generate;
mod http_client;
mod json_differential;
mod load;
mod members;
mod postgres;
mod readme;
mod s3;
mod server;
mod sql_cli;
mod sql_on_fhir;
mod views;
