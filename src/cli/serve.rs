//! `fhirlake serve`: the FHIR REST front over the warehouse.

use std::path::PathBuf;
use std::time::Duration;

use fhirlake::group::MembershipMode;
use fhirlake::ingest::{LoadOptions, load};
use fhirlake::server::{DownloadMode, ServeOptions, parse_interval};
use fhirlake::service::ServiceOptions;
use fhirlake::warehouse::Warehouse;

/// How clients download export files.
#[derive(Clone, Copy, clap::ValueEnum)]
enum ExportDownloads {
    /// Streamed by the server.
    Server,
    /// Presigned S3 URLs.
    Presigned,
}

/// A criteria Group's membership mode.
#[derive(Clone, Copy, clap::ValueEnum)]
enum MembershipModeArg {
    /// At creation and at each update.
    Snapshot,
    /// Also after every load.
    Refreshed,
    /// At each use.
    OnDemand,
}

/// Arguments of `fhirlake serve`.
#[derive(clap::Args)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: std::net::SocketAddr,
    /// Absolute base URL clients use (default: http://ADDR).
    #[arg(long)]
    base_url: Option<String>,
    /// When criteria Groups that name no membership mode get their
    /// members: `snapshot` (at creation and update), `refreshed` (also
    /// after every load), `on-demand` (at each export kick-off and
    /// $members). Default: snapshot, or refreshed when --refresh-interval
    /// is given.
    #[arg(long, value_enum)]
    membership_mode: Option<MembershipModeArg>,
    /// The least time between two refreshes of refreshed Groups (30s, 15m,
    /// 1h; default: after every load).
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
    /// `manual`: every Group change (create, update, PATCH, member
    /// operations) waits for an operator's `fhirlake groups approve`;
    /// clients must use Prefer: respond-async.
    #[arg(long, value_enum, default_value = "auto")]
    group_approval: GroupApproval,
    /// Superseded Group versions stay readable (`_history`) this long, and
    /// always while an unexpired export names them (30m, 1h, 30d).
    #[arg(long, default_value = "30d")]
    group_history_retention: String,
    /// Membership rows per segment file of a Group (tests use few, to
    /// watch a large member change written in parts).
    #[arg(long, default_value_t = fhirlake::group::segments::SEGMENT_ROWS, hide = true)]
    membership_part_rows: usize,
    /// Touched patients beyond which a refresh recomputes every patient
    /// (0: always recompute all; the refresh benchmark compares).
    #[arg(long, default_value_t = fhirlake::group::refresh::INCREMENTAL_LIMIT, hide = true)]
    refresh_incremental_limit: usize,
    /// Pause after each membership part written (tests).
    #[arg(long, default_value_t = 0, hide = true)]
    membership_part_delay_ms: u64,
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
    /// Publish Groups read-only: clients may not create, change or delete
    /// Groups (a server of rosters loaded with the data).
    #[arg(long)]
    read_only_groups: bool,
    /// Also serve SQL over the Postgres wire protocol on this address
    /// (psql, psycopg, JDBC, BI tools; read-only; with --clients the
    /// password is an access token from /auth/token).
    #[arg(long)]
    pg_addr: Option<std::net::SocketAddr>,
    /// Memory one SQL query of the network fronts may hold in sorts,
    /// joins and aggregates before it spills (MiB).
    #[arg(long, default_value_t = 1024, env = "FHIRLAKE_SQL_MEMORY_MIB")]
    sql_memory_mib: usize,
    /// Longest a SQL query of the network fronts may run (30s, 10m).
    #[arg(long, default_value = "10m")]
    sql_timeout: String,
    /// Lifetime of access tokens in seconds (1 to 300).
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=300))]
    access_token_seconds: u64,
}

/// A duration flag that cannot be `off`.
fn required_interval(flag: &str, text: &str) -> anyhow::Result<Duration> {
    parse_interval(text)
        .map_err(|e| anyhow::anyhow!("{flag}: {e}"))?
        .ok_or_else(|| anyhow::anyhow!("{flag} cannot be off"))
}

impl Args {
    /// The server's options (every flag checked before anything starts).
    fn options(self) -> anyhow::Result<ServeOptions> {
        let export_downloads = match self.export_downloads {
            ExportDownloads::Server => DownloadMode::Server,
            ExportDownloads::Presigned => {
                let expiry = required_interval("--download-url-expiry", &self.download_url_expiry)?;
                // S3 refuses presigned URLs valid for more than 7 days.
                anyhow::ensure!(
                    expiry <= Duration::from_secs(7 * 24 * 3600),
                    "--download-url-expiry must be at most 7 days"
                );
                DownloadMode::Presigned { expiry }
            }
        };
        let export_retention = required_interval("--export-retention", &self.export_retention)?;
        let group_history_retention = required_interval("--group-history-retention", &self.group_history_retention)?;
        let refresh_interval =
            parse_interval(&self.refresh_interval).map_err(|e| anyhow::anyhow!("--refresh-interval: {e}"))?;
        // Before membership modes, --refresh-interval alone turned the
        // refresh on: it still does.
        let default_membership = match (self.membership_mode, refresh_interval) {
            (Some(MembershipModeArg::Snapshot), _) | (None, None) => MembershipMode::Snapshot,
            (Some(MembershipModeArg::Refreshed), _) | (None, Some(_)) => MembershipMode::Refreshed,
            (Some(MembershipModeArg::OnDemand), _) => MembershipMode::OnDemand,
        };
        Ok(ServeOptions {
            addr: self.addr,
            base_url: self.base_url,
            service: ServiceOptions {
                default_membership,
                refresh_spacing: refresh_interval.unwrap_or_default(),
                version_poll: Duration::from_secs(1),
                incremental_limit: self.refresh_incremental_limit,
                retry_after: self.retry_after.max(1),
                job_delay: Duration::from_millis(self.job_delay_ms),
                max_exports: self.max_exports,
                export_file_bytes: self.export_file_mib.max(1) * 1024 * 1024,
                export_retention,
                export_type_delay: Duration::from_millis(self.export_type_delay_ms),
                export_store: self.export_store,
                membership_part_rows: self.membership_part_rows.max(1),
                membership_part_delay: Duration::from_millis(self.membership_part_delay_ms),
                group_history_retention,
                group_approval: match self.group_approval {
                    GroupApproval::Auto => fhirlake::jobs::approval::ApprovalMode::Auto,
                    GroupApproval::Manual => fhirlake::jobs::approval::ApprovalMode::Manual,
                },
            },
            export_downloads,
            clients: self.clients,
            no_auth: self.no_auth,
            access_token_lifetime: Duration::from_secs(self.access_token_seconds),
            read_only_groups: self.read_only_groups,
        })
    }

    /// Serves until SIGINT/SIGTERM; an empty warehouse gets the bundled
    /// sample first.
    pub async fn run(self, warehouse: &str) -> anyhow::Result<()> {
        let pg_addr = self.pg_addr;
        let sql_limits = fhirlake::sql::SqlLimits {
            memory_bytes: self.sql_memory_mib.max(1) * 1024 * 1024,
            timeout: required_interval("--sql-timeout", &self.sql_timeout)?,
        };
        let options = self.options()?;
        let warehouse = Warehouse::open(warehouse)?;
        if warehouse.current().await?.is_none() {
            let sample = super::sample_data();
            tracing::info!(sample = %sample, "the warehouse is empty: loading the bundled sample data");
            let options = LoadOptions {
                quiet: true,
                ..LoadOptions::default()
            };
            load(&warehouse, &[sample], &options).await?;
        }
        let front = fhirlake::server::HttpFront::bind(warehouse.clone(), options).await?;
        if let Some(addr) = pg_addr {
            let authentication = match front.token_issuer() {
                Some(issuer) => fhirlake::pg::Authentication::AccessToken(issuer),
                None => fhirlake::pg::Authentication::Off,
            };
            let pg = fhirlake::pg::PgFront::bind(addr, warehouse, sql_limits, authentication).await?;
            let local = pg.local_addr()?;
            tracing::info!(addr = %local, "serving SQL over the Postgres wire protocol");
            println!("fhirlake postgres listening on {local}");
            tokio::spawn(pg.run());
        }
        front.run().await?;
        Ok(())
    }
}

/// `--group-approval`.
#[derive(Clone, Copy, clap::ValueEnum)]
enum GroupApproval {
    /// Changes apply as soon as computed.
    Auto,
    /// Changes wait for `fhirlake groups approve`.
    Manual,
}
