//! The `fhirlake` command line.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use fhirlake::cohort::CohortEngine;
use fhirlake::index::parse_index_table_key;
use fhirlake::ingest::{LoadOptions, LoadReport, load};
use fhirlake::query::{OutputFormat, StreamingWriter, open_session, run_statements, write_batches};
use fhirlake::view::materialize::run_view;
use fhirlake::view::{ViewCatalog, ViewDefinition, ViewRunner, view_schema};
use fhirlake::warehouse::{DEFAULT_WAREHOUSE, WAREHOUSE_ENV, Warehouse};
use futures::StreamExt;
use object_store::ObjectStoreExt;
use std::sync::{Arc, Mutex};

/// mimalloc (see `fhirlake::allocator`): the load allocates and frees a
/// JSON tree per resource on every core, where glibc's allocator cost ~14 %
/// of the CPU. The `system-allocator` feature leaves it out, for heap
/// profilers that hook malloc (heaptrack).
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static GLOBAL: fhirlake::allocator::MiMalloc = fhirlake::allocator::MiMalloc;

/// Threads of the async runtime's blocking pool (tokio's default is 512).
/// Local file reads run there, one task per read, and a merge issues dozens
/// at once; every thread that allocated a read buffer keeps its own
/// allocator heap, so with ~90 such threads a 16× load's merge phase held
/// 1.3–1.8 GB resident for ~0.2 GB of live data (16 threads: ~0.6 GB, same
/// speed). Long-running blocking tasks (a load's pipeline, at most four
/// index merges, a table merge, `block_in_place` of view and index
/// rebuilds) take at most a handful, so short reads always find one.
const BLOCKING_THREADS: usize = 16;

/// FHIR R4 bulk data → columnar warehouse, SQL, Bulk Cohort API and $export.
#[derive(Parser)]
#[command(name = "fhirlake", version, about)]
struct Cli {
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

/// `fhirlake clients …`.
#[derive(Subcommand)]
enum ClientsCommand {
    /// Register a client (or replace the one with the same id) from its
    /// public key: a PEM public key (RSA ≥ 2048 bits for RS384, EC P-384 for
    /// ES384) or a JWK file.
    Add {
        /// The clients file (created when missing).
        #[arg(long)]
        file: PathBuf,
        /// The client's id (its assertions' iss and sub).
        #[arg(long)]
        client_id: String,
        /// The public key file (PEM or JWK).
        #[arg(long, conflicts_with = "jwks_url")]
        public_key: Option<PathBuf>,
        /// Key id for the key (default: the key's own, else its RFC 7638 thumbprint).
        #[arg(long, requires = "public_key")]
        kid: Option<String>,
        /// URL where the client publishes its keys (instead of --public-key).
        #[arg(long)]
        jwks_url: Option<String>,
        /// Scopes the client may be granted.
        #[arg(long, default_value = "system/*.rs system/Group.cud")]
        scopes: String,
        /// Groups the client may see and export besides its own cohorts.
        #[arg(long = "group")]
        groups: Vec<String>,
    },
    /// List the registered clients.
    List {
        /// The clients file.
        #[arg(long)]
        file: PathBuf,
    },
}

/// How clients download export files.
#[derive(Clone, Copy, clap::ValueEnum)]
enum ExportDownloads {
    /// Streamed by the server.
    Server,
    /// Presigned S3 URLs.
    Presigned,
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
    Load {
        /// Files or folders to load; default: the bundled sample data.
        sources: Vec<String>,
        /// Record invalid lines in the `_rejects` table and load the rest.
        #[arg(long)]
        skip_invalid: bool,
        /// Parse threads (default: number of cores).
        #[arg(long)]
        workers: Option<usize>,
        /// No progress display.
        #[arg(long, short)]
        quiet: bool,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
        /// Folder of extra ViewDefinitions (*.json) to materialize besides the
        /// shipped ones (a view with a shipped view's name replaces it).
        #[arg(long)]
        views: Option<PathBuf>,
        /// Do not materialize the shipped views (only those of --views, if any).
        #[arg(long)]
        no_shipped_views: bool,
        /// Do not write the search index (cohorts and `_typeFilter` need it;
        /// useful only to measure or to load data never searched).
        #[arg(long)]
        no_index: bool,
    },
    /// SQL-on-FHIR ViewDefinitions.
    View {
        #[command(subcommand)]
        command: ViewCommand,
    },
    /// Run SQL over the warehouse (statements from stdin when QUERY is omitted).
    Sql {
        /// The SQL; several statements may be separated by `;`.
        query: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: OutputFormat,
        /// Write results to this file instead of stdout.
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Serve the FHIR REST API (Bulk Cohort API: async Group creation) over the
    /// warehouse; with an empty warehouse, the bundled sample is loaded first.
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: std::net::SocketAddr,
        /// Absolute base URL clients use (default: http://ADDR).
        #[arg(long)]
        base_url: Option<String>,
        /// Recompute cohort Groups this often after new loads (30s, 15m, 1h; default off).
        #[arg(long, default_value = "off")]
        refresh_interval: String,
        /// Seconds clients are asked to wait between polls (Retry-After).
        #[arg(long, default_value_t = 1)]
        retry_after: u64,
        /// Delay each async job by this many milliseconds before it runs (for
        /// testing progress, cancellation and crash recovery).
        #[arg(long, default_value_t = 0, hide = true)]
        job_delay_ms: u64,
        /// Exports that may run at once; further kick-offs get 429.
        #[arg(long, default_value_t = 2)]
        max_exports: usize,
        /// Export files are split at this size (MiB).
        #[arg(long, default_value_t = 256)]
        export_file_mib: u64,
        /// Finished exports and their files are deleted after this long (30m, 1h, 2d).
        #[arg(long, default_value = "1h")]
        export_retention: String,
        /// Pause after each exported resource type (to observe partial
        /// manifests in tests).
        #[arg(long, default_value_t = 0, hide = true)]
        export_type_delay_ms: u64,
        /// Where export files are written: a folder or s3://bucket/prefix
        /// (default: the warehouse's _server/export-files).
        #[arg(long)]
        export_store: Option<String>,
        /// How clients download export files: `server` (streamed by this
        /// server) or `presigned` (short-lived presigned S3 URLs in the
        /// manifest; needs an s3:// --export-store).
        #[arg(long, value_enum, default_value = "server")]
        export_downloads: ExportDownloads,
        /// How long a presigned download URL stays valid (30s, 10m, 1h).
        #[arg(long, default_value = "10m")]
        download_url_expiry: String,
        /// Turn on SMART Backend Services authorization with the clients in
        /// FILE ({"clients": [{"client_id", "jwks"|"jwks_url", "scopes",
        /// "groups"}]}; reloaded when it changes; see `fhirlake clients add`).
        #[arg(long)]
        clients: Option<PathBuf>,
        /// Serve a non-loopback address without authorization (anyone who
        /// reaches it reads all data).
        #[arg(long, conflicts_with = "clients")]
        no_auth: bool,
        /// Lifetime of access tokens in seconds (1 to 300).
        #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=300))]
        access_token_seconds: u64,
    },
    /// Manage the clients file of `serve --clients`.
    Clients {
        #[command(subcommand)]
        command: ClientsCommand,
    },
    /// Bulk export without the server: the same pipeline as `$export`,
    /// writing files and a manifest.json into a folder.
    Export(ExportArgs),
    /// Count the patients meeting every FHIR search expression (member-filter
    /// style: `Condition?code=http://snomed.info/sct|44054006`; several are ANDed).
    Cohort {
        /// FHIR search expressions (`Type?param=value&…`); none with
        /// `--base-group` counts the group's members.
        #[arg(required_unless_present = "base_group")]
        expressions: Vec<String>,
        /// Only patients who are members of this Group of the loaded data.
        #[arg(long)]
        base_group: Option<String>,
        /// Print the optimized logical plan and the physical plan with its
        /// metrics (rows, row groups pruned) and the time taken.
        #[arg(long)]
        explain: bool,
        /// Print the patient ids, one per line, after the count.
        #[arg(long)]
        ids: bool,
    },
    /// Delete data files that no recent snapshot refers to (replaced by merges,
    /// or left by failed or killed loads).
    Vacuum {
        /// Keep the files of this many latest versions.
        #[arg(long, default_value_t = 1)]
        keep_versions: u64,
        /// Only delete files older than this many seconds (protects loads in progress).
        #[arg(long, default_value_t = 3600)]
        min_age_seconds: u64,
    },
    /// Generate scaled-up data: COPIES copies of a dataset with fresh, consistent ids.
    Gen {
        /// Folder with the source NDJSON.
        #[arg(long)]
        from: PathBuf,
        /// Number of copies (copy 0 is the source itself).
        #[arg(long)]
        copies: usize,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        /// Write .ndjson.gz instead of .ndjson.
        #[arg(long)]
        gzip: bool,
    },
}

#[derive(Subcommand)]
enum ViewCommand {
    /// Run a ViewDefinition over the warehouse's stored resources (parallel, streaming).
    Run {
        /// The ViewDefinition (JSON file).
        view: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: OutputFormat,
        /// Write rows to this file instead of stdout.
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Recompute view tables from the stored resources, in one new warehouse
    /// version: for views added or changed after the data was loaded.
    Refresh {
        /// Folder of extra ViewDefinitions (*.json) besides the shipped ones
        /// (a view with a shipped view's name replaces it).
        #[arg(long)]
        views: Option<PathBuf>,
        /// Refresh only the views of --views, not the shipped ones.
        #[arg(long)]
        no_shipped_views: bool,
    },
}

/// The views `load` and `view refresh` materialize: the shipped ones unless
/// `no_shipped`, and those of `dir`.
fn view_catalog(dir: Option<&std::path::Path>, no_shipped: bool) -> anyhow::Result<ViewCatalog> {
    let mut catalog = if no_shipped {
        ViewCatalog::empty()
    } else {
        ViewCatalog::shipped()?
    };
    if let Some(dir) = dir {
        catalog.add_dir(dir)?;
    }
    Ok(catalog)
}

/// Arguments of `fhirlake export` (`_type`, `_since`, … as flags).
#[derive(clap::Args)]
struct ExportArgs {
    /// Export the compartments of this Group's members (a cohort Group
    /// created through the server, or a Group of the loaded data).
    #[arg(long, conflicts_with = "patients")]
    group: Option<String>,
    /// Export the compartments of all patients (Patient-level export).
    #[arg(long)]
    patients: bool,
    /// Only these resource types (comma-separated or repeated): `_type`.
    #[arg(long = "type")]
    types: Vec<String>,
    /// Only resources changed after this instant: `_since`.
    #[arg(long)]
    since: Option<String>,
    /// Only resources changed at or before this instant: `_until`.
    #[arg(long)]
    until: Option<String>,
    /// FHIR search filters (`Type?param=value`), repeatable: `_typeFilter`.
    #[arg(long = "type-filter")]
    type_filters: Vec<String>,
    /// Top-level elements to keep (`Type.element` or `element`): `_elements`.
    #[arg(long)]
    elements: Vec<String>,
    /// Only these patients (ids or Patient/<id>): `patient`.
    #[arg(long = "patient")]
    patient: Vec<String>,
    /// Output format.
    #[arg(long, default_value = "ndjson")]
    format: String,
    /// Output folder (created) or object-store prefix (`s3://bucket/prefix`);
    /// must be empty.
    #[arg(long)]
    out: String,
    /// Split files at this size (MiB).
    #[arg(long, default_value_t = 256)]
    max_file_mib: u64,
    /// Write blocks per patient (header, Patient, its resources) instead
    /// of one type per file: `organizeOutputBy=Patient`.
    #[arg(long)]
    organize_by_patient: bool,
    /// `includeAssociatedData` values (`LatestProvenanceResources`,
    /// `RelevantProvenanceResources`).
    #[arg(long)]
    include_associated_data: Vec<String>,
}

async fn export_command(warehouse: &str, args: ExportArgs) -> anyhow::Result<()> {
    use fhirlake::export::{ExportLevel, ExportSettings, ExportTarget, Progress, parse_export, run_export};
    let started = std::time::Instant::now();
    let level = match (&args.group, args.patients) {
        (Some(id), _) => ExportLevel::Group(id.clone()),
        (None, true) => ExportLevel::Patient,
        (None, false) => ExportLevel::System,
    };
    let mut pairs: Vec<(String, String)> = vec![("_outputFormat".into(), args.format.clone())];
    let mut push = |name: &str, values: &[String]| {
        pairs.extend(values.iter().map(|v| (name.to_string(), v.clone())));
    };
    push("_type", &args.types);
    push("_typeFilter", &args.type_filters);
    push("_elements", &args.elements);
    let patients: Vec<String> = args
        .patient
        .iter()
        .flat_map(|p| p.split(','))
        .map(|p| {
            if p.contains('/') {
                p.to_string()
            } else {
                format!("Patient/{p}")
            }
        })
        .collect();
    push("patient", &patients);
    push("_since", args.since.as_slice());
    push("_until", args.until.as_slice());
    push("includeAssociatedData", &args.include_associated_data);
    if args.organize_by_patient {
        pairs.push(("organizeOutputBy".into(), "Patient".into()));
    }
    let parsed = parse_export(level, &pairs, true, false)?;
    let transaction_time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let warehouse = Warehouse::open(warehouse)?;
    let snapshot = warehouse
        .current()
        .await?
        .ok_or_else(|| anyhow::anyhow!("the warehouse is empty: load data first (fhirlake load …)"))?;
    let location = fhirlake::store::StoreLocation::parse(&args.out, true)?;
    // Never overwrite an earlier export (its files would be silently mixed
    // with or replaced by this one's).
    let existing = location
        .store
        .list(Some(&location.prefix))
        .next()
        .await
        .transpose()
        .map_err(|e| location.error("listing", &location.prefix, e))?;
    if existing.is_some() {
        anyhow::bail!(
            "output location {} is not empty: export into a new or empty folder",
            args.out
        );
    }
    let out_url = location.display_of(&location.prefix);
    let target = ExportTarget {
        location,
        dir: String::new(),
    };
    let settings = ExportSettings {
        max_file_bytes: args.max_file_mib.max(1) * 1024 * 1024,
        ..ExportSettings::default()
    };
    let output = run_export(
        &warehouse,
        snapshot,
        &parsed.request,
        &target,
        &settings,
        &[],
        &Progress::default(),
    )
    .await?;
    let manifest = fhirlake::export::manifest::manifest(
        &transaction_time,
        &format!("fhirlake export --warehouse {}", warehouse.root().url()),
        false,
        &output,
        parsed.request.organize_by_patient.then_some("Patient"),
        |name| name.to_string(),
    );
    let manifest_path = target.location.child("manifest.json");
    target
        .location
        .store
        .put(&manifest_path, serde_json::to_vec_pretty(&manifest)?.into())
        .await
        .map_err(|e| target.location.error("writing", &manifest_path, e))?;
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "exported {} resources in {} files ({:.1} MiB) to {} in {:.2} s ({:.0} MiB/s)",
        output.resources,
        output.output.len(),
        output.bytes as f64 / 1048576.0,
        out_url,
        seconds,
        output.bytes as f64 / 1048576.0 / seconds.max(1e-9)
    );
    Ok(())
}

fn clients_command(command: ClientsCommand) -> anyhow::Result<()> {
    use fhirlake::auth::{ClientConfig, ClientsFile};
    match command {
        ClientsCommand::Add {
            file,
            client_id,
            public_key,
            kid,
            jwks_url,
            scopes,
            groups,
        } => {
            let jwks = match &public_key {
                Some(path) => {
                    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
                    let jwk = fhirlake::auth::keys::public_jwk(&text, kid.as_deref())
                        .with_context(|| format!("key file {}", path.display()))?;
                    Some(serde_json::from_value(serde_json::json!({"keys": [jwk]}))?)
                }
                None => None,
            };
            anyhow::ensure!(
                jwks.is_some() || jwks_url.is_some(),
                "give --public-key FILE or --jwks-url URL"
            );
            let mut clients = ClientsFile::read(&file, true)?;
            clients.clients.retain(|c| c.client_id != client_id);
            clients.clients.push(ClientConfig {
                client_id: client_id.clone(),
                jwks,
                jwks_url,
                scopes,
                groups,
            });
            // Validated before it is written: a bad entry never reaches the file.
            clients.validate(&file)?;
            clients.write(&file)?;
            println!("registered client '{client_id}' in {}", file.display());
        }
        ClientsCommand::List { file } => {
            let clients = ClientsFile::read(&file, false)?;
            for client in &clients.clients {
                let keys = match (&client.jwks, &client.jwks_url) {
                    (Some(jwks), _) => jwks
                        .keys
                        .iter()
                        .filter_map(|k| k.common.key_id.clone())
                        .collect::<Vec<_>>()
                        .join(","),
                    (None, Some(url)) => url.clone(),
                    (None, None) => String::new(),
                };
                println!(
                    "{}\t{}\t{}\t{}",
                    client.client_id,
                    client.scopes,
                    keys,
                    client.groups.join(",")
                );
            }
        }
    }
    Ok(())
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

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FHIRLAKE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,fhirlake=info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    fhirlake::store::configure_s3(fhirlake::store::S3Options {
        endpoint: cli.s3_endpoint.clone(),
        path_style: cli.s3_addressing.map(|a| matches!(a, S3Addressing::Path)),
        retry_timeout: Some(std::time::Duration::from_secs(cli.s3_retry_seconds)),
        credentials: None,
    });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .max_blocking_threads(BLOCKING_THREADS)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Load {
            sources,
            skip_invalid,
            workers,
            quiet,
            json,
            views,
            no_shipped_views,
            no_index,
        } => {
            let sources = if sources.is_empty() {
                vec![sample_data()]
            } else {
                sources
            };
            let warehouse = Warehouse::open(&cli.warehouse)?;
            let mut options = LoadOptions {
                skip_invalid,
                quiet,
                index: !no_index,
                ..LoadOptions::default()
            };
            if views.is_some() || no_shipped_views {
                options.views = Some(view_catalog(views.as_deref(), no_shipped_views)?);
            }
            if let Some(w) = workers {
                options.workers = w;
            }
            let report = load(&warehouse, &sources, &options).await?;
            let mut out = std::io::stdout().lock();
            if json {
                serde_json::to_writer_pretty(&mut out, &report)?;
                writeln!(out)?;
            } else {
                print_load_summary(&mut out, &cli.warehouse, &report)?;
            }
        }
        Command::Sql { query, format, output } => {
            let sql = match query {
                Some(q) => q,
                None => {
                    let mut text = String::new();
                    std::io::stdin()
                        .read_to_string(&mut text)
                        .context("reading SQL from stdin")?;
                    text
                }
            };
            let warehouse = Warehouse::open(&cli.warehouse)?;
            let ctx = open_session(&warehouse).await?;
            let results = run_statements(&ctx, &sql).await?;
            let (mut sink, target) = open_output(format, output.as_deref())?;
            for result in &results {
                write_batches(result.schema.clone(), &result.batches, format, &mut sink, &target)?;
            }
        }
        Command::Serve {
            addr,
            base_url,
            refresh_interval,
            retry_after,
            job_delay_ms,
            max_exports,
            export_file_mib,
            export_retention,
            export_type_delay_ms,
            export_store,
            export_downloads,
            download_url_expiry,
            clients,
            no_auth,
            access_token_seconds,
        } => {
            let export_downloads = match export_downloads {
                ExportDownloads::Server => fhirlake::server::DownloadMode::Server,
                ExportDownloads::Presigned => {
                    let expiry = fhirlake::server::parse_interval(&download_url_expiry)
                        .map_err(|e| anyhow::anyhow!("--download-url-expiry: {e}"))?
                        .ok_or_else(|| anyhow::anyhow!("--download-url-expiry cannot be off"))?;
                    // S3 refuses presigned URLs valid for more than 7 days.
                    anyhow::ensure!(
                        expiry <= std::time::Duration::from_secs(7 * 24 * 3600),
                        "--download-url-expiry must be at most 7 days"
                    );
                    fhirlake::server::DownloadMode::Presigned { expiry }
                }
            };
            let export_retention = fhirlake::server::parse_interval(&export_retention)
                .map_err(|e| anyhow::anyhow!("--export-retention: {e}"))?
                .ok_or_else(|| anyhow::anyhow!("--export-retention cannot be off"))?;
            let refresh_interval = fhirlake::server::parse_interval(&refresh_interval)
                .map_err(|e| anyhow::anyhow!("--refresh-interval: {e}"))?;
            let warehouse = Warehouse::open(&cli.warehouse)?;
            if warehouse.current().await?.is_none() {
                let sample = sample_data();
                tracing::info!(sample = %sample, "the warehouse is empty: loading the bundled sample data");
                let options = LoadOptions {
                    quiet: true,
                    ..LoadOptions::default()
                };
                load(&warehouse, &[sample], &options).await?;
            }
            let options = fhirlake::server::ServeOptions {
                addr,
                base_url,
                refresh_interval,
                retry_after: retry_after.max(1),
                job_delay: std::time::Duration::from_millis(job_delay_ms),
                max_exports,
                export_file_bytes: export_file_mib.max(1) * 1024 * 1024,
                export_retention,
                export_type_delay: std::time::Duration::from_millis(export_type_delay_ms),
                export_store,
                export_downloads,
                clients,
                no_auth,
                access_token_lifetime: std::time::Duration::from_secs(access_token_seconds),
            };
            fhirlake::server::serve(warehouse, options).await?;
        }
        Command::Export(args) => export_command(&cli.warehouse, args).await?,
        Command::Clients { command } => clients_command(command)?,
        Command::Cohort {
            expressions,
            base_group,
            explain,
            ids,
        } => {
            let started = std::time::Instant::now();
            let queries = CohortEngine::parse(&expressions)?;
            let warehouse = Warehouse::open(&cli.warehouse)?;
            let engine = CohortEngine::open(&warehouse).await?;
            if !engine.has_index() {
                anyhow::bail!("the warehouse has no search index: reload without --no-index");
            }
            let base = match &base_group {
                Some(id) => Some(engine.group_members(id).await?),
                None => None,
            };
            let plan = engine.plan(&queries, base.as_deref())?;
            let mut out = std::io::stdout().lock();
            if explain {
                writeln!(out, "{}", engine.explain(plan.clone()).await?)?;
            }
            let result = engine.run(plan).await?;
            writeln!(out, "{}", result.patients.len())?;
            if ids {
                for id in &result.patients {
                    writeln!(out, "{id}")?;
                }
            }
            tracing::debug!(
                patients = result.patients.len(),
                seconds = started.elapsed().as_secs_f64(),
                "cohort computed"
            );
        }
        Command::View {
            command: ViewCommand::Run { view, format, output },
        } => {
            let text = std::fs::read_to_string(&view).with_context(|| format!("reading {}", view.display()))?;
            let json: serde_json::Value =
                serde_json::from_str(&text).with_context(|| format!("{} is not JSON", view.display()))?;
            let definition = ViewDefinition::from_json(&json).with_context(|| format!("view {}", view.display()))?;
            let runner = ViewRunner::new(&definition)?;
            let warehouse = Warehouse::open(&cli.warehouse)?;
            let (sink, target) = open_output(format, output.as_deref())?;
            let writer = Arc::new(Mutex::new(Some(StreamingWriter::new(
                format,
                view_schema(&definition),
                sink,
            )?)));
            let for_sink = writer.clone();
            let rows = run_view(&warehouse, &runner, move |batch| {
                let mut guard = for_sink.lock().map_err(|_| "output writer poisoned".to_string())?;
                match guard.as_mut() {
                    Some(w) => w.write(batch).map_err(|e| e.to_string()),
                    None => Ok(()),
                }
            })
            .await
            .with_context(|| format!("view {}", view.display()))?;
            let finished = writer.lock().ok().and_then(|mut g| g.take());
            if let Some(w) = finished {
                w.finish(&target)?;
            }
            tracing::info!(rows, "view run finished");
        }
        Command::View {
            command: ViewCommand::Refresh {
                views,
                no_shipped_views,
            },
        } => {
            let catalog = view_catalog(views.as_deref(), no_shipped_views)?;
            let warehouse = Warehouse::open(&cli.warehouse)?;
            let report = fhirlake::view::materialize::refresh_views(&warehouse, &catalog).await?;
            let mut out = std::io::stdout().lock();
            writeln!(out, "warehouse {} is now at version {}", cli.warehouse, report.version)?;
            writeln!(out, "{:<34} {:>12}", "table", "rows")?;
            for (table, rows) in &report.tables {
                writeln!(out, "{table:<34} {rows:>12}")?;
            }
        }
        Command::Vacuum {
            keep_versions,
            min_age_seconds,
        } => {
            let warehouse = Warehouse::open(&cli.warehouse)?;
            let report = fhirlake::warehouse::vacuum::vacuum(
                &warehouse,
                keep_versions,
                std::time::Duration::from_secs(min_age_seconds),
            )
            .await?;
            println!(
                "deleted {} files ({:.1} MiB); {} files in use kept",
                report.files,
                report.bytes as f64 / 1048576.0,
                report.kept
            );
        }
        Command::Gen {
            from,
            copies,
            out,
            gzip,
        } => {
            let started = std::time::Instant::now();
            let report = fhirlake::generate::generate(&from, copies, &out, gzip)?;
            println!(
                "wrote {} files, {} resources, {:.1} MiB NDJSON to {} in {:.1} s",
                report.files,
                report.lines,
                report.bytes as f64 / 1048576.0,
                out.display(),
                started.elapsed().as_secs_f64()
            );
        }
    }
    Ok(())
}

/// Where results go: `path`, or stdout (which cannot take Parquet).
fn open_output(
    format: OutputFormat,
    path: Option<&std::path::Path>,
) -> anyhow::Result<(Box<dyn Write + Send>, String)> {
    match path {
        Some(path) => {
            let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
            Ok((Box::new(std::io::BufWriter::new(file)), path.display().to_string()))
        }
        None if format == OutputFormat::Parquet => anyhow::bail!("--format parquet needs --output FILE"),
        None => Ok((
            Box::new(std::io::BufWriter::new(std::io::stdout())),
            "stdout".to_string(),
        )),
    }
}

/// The error and its causes, skipping causes whose text the message already
/// contains (library errors print their source inline).
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}

fn print_load_summary(out: &mut impl Write, warehouse: &str, r: &LoadReport) -> std::io::Result<()> {
    writeln!(
        out,
        "loaded {} resources from {} files ({:.1} MiB NDJSON, {:.1} MiB stored) in {:.2} s: {:.1} MiB/s, {:.0} resources/s; {} rejected",
        r.resources,
        r.files,
        r.ndjson_bytes as f64 / 1048576.0,
        r.stored_bytes as f64 / 1048576.0,
        r.seconds,
        r.mib_per_second(),
        r.resources as f64 / r.seconds.max(1e-9),
        r.rejected
    )?;
    let st = &r.stages;
    writeln!(
        out,
        "read {:.2} s (worker time: parse {:.2} s, views {:.2} s, index {:.2} s, tables {:.2} s), then merge and commit {:.2} s",
        st.read_seconds, st.parse_seconds, st.views_seconds, st.index_seconds, st.tables_seconds, st.finish_seconds
    )?;
    writeln!(out, "warehouse {warehouse} is now at version {}", r.version)?;
    writeln!(out, "{:<28} {:>12} {:>12}", "table", "loaded", "rows")?;
    // Index tables are summed per kind (one line each instead of one per type).
    let mut index_rows: std::collections::BTreeMap<&str, (u64, u64, usize)> = Default::default();
    for (name, t) in &r.tables {
        if let Some((kind, _)) = parse_index_table_key(name) {
            let entry = index_rows.entry(kind.name()).or_default();
            entry.0 += t.loaded;
            entry.1 += t.rows;
            entry.2 += 1;
            continue;
        }
        let note = if t.merged {
            "  (merged with earlier versions)"
        } else {
            ""
        };
        writeln!(out, "{name:<28} {:>12} {:>12}{note}", t.loaded, t.rows)?;
    }
    for (kind, (loaded, rows, tables)) in index_rows {
        let name = format!("index_{kind} ({tables} types)");
        writeln!(out, "{name:<28} {loaded:>12} {rows:>12}")?;
    }
    if r.rejected > 0 {
        writeln!(
            out,
            "rejected lines are in the _rejects table: fhirlake sql \"SELECT * FROM _rejects\""
        )?;
    }
    Ok(())
}
