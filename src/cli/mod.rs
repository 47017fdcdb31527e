//! The `fhirlake` command line: one file per command, each an `Args`
//! struct and a `run`. Commands call the engine (and `serve` the HTTP
//! front); they hold no logic of their own beyond arguments and printing.

mod clients;
mod cohort;
mod export;
mod generate;
mod groups;
mod load;
mod output;
mod serve;
mod sql;
mod vacuum;
mod view;

use clap::{Parser, Subcommand};
use fhirlake::warehouse::{DEFAULT_WAREHOUSE, WAREHOUSE_ENV};

/// FHIR R4 bulk data → columnar warehouse, SQL, Bulk Cohort API and $export.
#[derive(Parser)]
#[command(name = "fhirlake", version, about)]
pub struct Cli {
    /// Warehouse location: a folder, file:// URL or s3://bucket/prefix.
    #[arg(long, global = true, env = WAREHOUSE_ENV, default_value = DEFAULT_WAREHOUSE)]
    warehouse: String,
    /// Endpoint of an S3-compatible server for s3:// locations (default:
    /// AWS_ENDPOINT_URL or AWS_ENDPOINT, else AWS); an http:// endpoint
    /// allows plain HTTP.
    #[arg(long, global = true)]
    s3_endpoint: Option<String>,
    /// S3 addressing style: `path` (ENDPOINT/BUCKET/KEY, the default) or
    /// `virtual` (BUCKET.ENDPOINT/KEY).
    #[arg(long, global = true, value_enum)]
    s3_addressing: Option<S3Addressing>,
    /// Seconds a failing S3 request is retried before the error is reported.
    #[arg(long, global = true, env = "FHIRLAKE_S3_RETRY_SECONDS", default_value_t = 30)]
    s3_retry_seconds: u64,
    #[command(subcommand)]
    command: Command,
}

/// How S3 object URLs are formed.
#[derive(Clone, Copy, clap::ValueEnum)]
enum S3Addressing {
    /// `ENDPOINT/BUCKET/KEY`
    Path,
    /// `BUCKET.ENDPOINT/KEY`
    Virtual,
}

#[derive(Subcommand)]
enum Command {
    /// Load FHIR R4 NDJSON (files or folders; *.ndjson, *.ndjson.gz) into the warehouse.
    Load(load::Args),
    /// SQL-on-FHIR ViewDefinitions.
    View {
        #[command(subcommand)]
        command: view::Command,
    },
    /// Run SQL over the warehouse (statements from stdin when QUERY is omitted).
    Sql(sql::Args),
    /// Serve the FHIR REST API (Bulk Cohort API: async Group creation) over the
    /// warehouse; with an empty warehouse, the bundled sample is loaded first.
    Serve(serve::Args),
    /// Manage the clients file of `serve --clients`.
    Clients {
        #[command(subcommand)]
        command: clients::Command,
    },
    /// Bulk export without the server: the same pipeline as `$export`,
    /// writing files and a manifest.json into a folder.
    Export(export::Args),
    /// Count the patients meeting every FHIR search expression (member-filter
    /// style: `Condition?code=http://snomed.info/sct|44054006`; several are ANDed).
    Cohort(cohort::Args),
    /// Delete data files that no recent snapshot refers to (replaced by merges,
    /// or left by failed or killed loads).
    Vacuum(vacuum::Args),
    /// Generate scaled-up data: COPIES copies of a dataset with fresh, consistent ids.
    Gen(generate::Args),
    /// Approve or reject Group changes waiting for an operator (serve --group-approval manual).
    Groups {
        #[command(subcommand)]
        command: groups::Command,
    },
}

impl Cli {
    /// Applies the global S3 settings (before any store is opened).
    pub fn configure_s3(&self) {
        fhirlake::store::configure_s3(fhirlake::store::S3Options {
            endpoint: self.s3_endpoint.clone(),
            path_style: self.s3_addressing.map(|a| matches!(a, S3Addressing::Path)),
            retry_timeout: Some(std::time::Duration::from_secs(self.s3_retry_seconds)),
            credentials: None,
        });
    }

    /// Runs the command.
    pub async fn run(self) -> anyhow::Result<()> {
        let warehouse = self.warehouse;
        match self.command {
            Command::Load(args) => args.run(&warehouse).await,
            Command::View { command } => command.run(&warehouse).await,
            Command::Sql(args) => args.run(&warehouse).await,
            Command::Serve(args) => args.run(&warehouse).await,
            Command::Clients { command } => command.run(),
            Command::Export(args) => args.run(&warehouse).await,
            Command::Cohort(args) => args.run(&warehouse).await,
            Command::Vacuum(args) => args.run(&warehouse).await,
            Command::Gen(args) => args.run(),
            Command::Groups { command } => command.run(&warehouse).await,
        }
    }
}

/// The sample dataset shipped in the repository (synthea-10).
fn sample_data() -> String {
    let bundled = concat!(env!("CARGO_MANIFEST_DIR"), "/data/synthea-10");
    if std::path::Path::new(bundled).exists() {
        bundled.to_string()
    } else {
        "data/synthea-10".to_string()
    }
}
