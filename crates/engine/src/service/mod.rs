//! The engine as one long-lived value for fronts that serve many requests:
//! the warehouse, the cohort engine of its current version, the state
//! store of Groups and jobs, the Groups ([`Groups`]) and the jobs running
//! in this process. Job lifecycles are methods of the service defined in
//! `jobs::group` and `jobs::export`; a front holds one `Arc<Service>`.

use std::sync::Arc;
use std::time::Duration;

pub mod matching;
mod runtime;
pub mod search;

pub use runtime::Runtimes;

use crate::cohort::CurrentEngine;
use crate::group::manage::Groups;
use crate::group::segments::MembershipOptions;
use crate::state::StateStore;
use crate::store::{StoreError, StoreLocation};
use crate::warehouse::Warehouse;

/// Folder (under the warehouse root) of export files, one sub-folder per
/// job, unless the service is given an export store.
pub const EXPORT_FILES: &str = "_server/export-files";

/// How often the version watch also looks for Groups left on an older
/// warehouse version than the one it last refreshed for.
const STALE_SWEEP: Duration = Duration::from_secs(30);

/// How the service runs jobs.
#[derive(Debug, Clone)]
pub struct ServiceOptions {
    /// The membership mode of criteria Groups that name none.
    pub default_membership: crate::group::MembershipMode,
    /// The least time between two refreshes of the *refreshed* Groups (a
    /// burst of loads is refreshed once); zero: after every load.
    pub refresh_spacing: Duration,
    /// How often the service looks for a newly committed warehouse
    /// version (a load by any process).
    pub version_poll: Duration,
    /// Touched patients beyond which a refresh recomputes every patient
    /// (0: always; benchmarks compare the two).
    pub incremental_limit: usize,
    /// Seconds a client is asked to wait between polls of a job; polling
    /// faster than half of it is refused.
    pub retry_after: u64,
    /// Wait this long before computing each async job (to observe progress,
    /// cancellation and crash recovery in tests).
    pub job_delay: Duration,
    /// Exports allowed to run at once.
    pub max_exports: usize,
    /// An export file is closed and a new one started at this size.
    pub export_file_bytes: u64,
    /// Finished exports (and their files) are deleted this long after completion.
    pub export_retention: Duration,
    /// Pause after each exported type (tests).
    pub export_type_delay: Duration,
    /// Where export files go (`s3://bucket/prefix`, a folder); default the
    /// warehouse's `_server/export-files`.
    pub export_store: Option<String>,
    /// Membership rows per segment file (tests use few to see parts).
    pub membership_part_rows: usize,
    /// Pause after each membership part written (tests).
    pub membership_part_delay: Duration,
    /// A superseded Group version stays readable this long (and while an
    /// unexpired export names it).
    pub group_history_retention: Duration,
    /// Whether Group changes wait for an operator's approval.
    pub group_approval: crate::jobs::approval::ApprovalMode,
}

impl Default for ServiceOptions {
    fn default() -> Self {
        Self {
            default_membership: crate::group::MembershipMode::Snapshot,
            refresh_spacing: Duration::ZERO,
            version_poll: Duration::from_secs(1),
            incremental_limit: crate::group::refresh::INCREMENTAL_LIMIT,
            retry_after: 1,
            job_delay: Duration::ZERO,
            max_exports: 2,
            export_file_bytes: 256 * 1024 * 1024,
            export_retention: Duration::from_secs(3600),
            export_type_delay: Duration::ZERO,
            export_store: None,
            membership_part_rows: crate::group::segments::SEGMENT_ROWS,
            membership_part_delay: Duration::ZERO,
            group_history_retention: Duration::from_secs(30 * 24 * 3600),
            group_approval: crate::jobs::approval::ApprovalMode::Auto,
        }
    }
}

/// The engine behind a front.
pub struct Service {
    /// The warehouse served.
    pub warehouse: Warehouse,
    /// The cohort engine of its current version, shared by requests.
    pub cohorts: Arc<CurrentEngine>,
    /// Durable Groups and job records.
    pub state: StateStore,
    /// Where export files are written.
    pub export_files: StoreLocation,
    /// See [`ServiceOptions`].
    pub options: ServiceOptions,
    /// The Groups (stored and loaded); their write lock serialises job
    /// records too.
    pub groups: Groups,
    /// Group create/update jobs of this process.
    pub(crate) group_jobs: Runtimes,
    /// Export jobs of this process.
    pub(crate) export_jobs: Runtimes,
}

impl Service {
    /// A service over `warehouse`. Nothing runs until [`Service::start`].
    pub fn new(warehouse: Warehouse, mut options: ServiceOptions) -> Result<Arc<Self>, StoreError> {
        let export_files = match &options.export_store {
            Some(url) => StoreLocation::parse(url, true)?,
            None => {
                let mut location = warehouse.root().clone();
                location.prefix = location.child(EXPORT_FILES);
                location
            }
        };
        options.max_exports = options.max_exports.max(1);
        options.retry_after = options.retry_after.max(1);
        let cohorts = Arc::new(CurrentEngine::new(warehouse.clone()));
        let state = StateStore::new(warehouse.root().clone());
        let groups = Groups {
            warehouse: warehouse.clone(),
            cohorts: cohorts.clone(),
            state: state.clone(),
            writes: Arc::default(),
            membership: MembershipOptions {
                part_rows: options.membership_part_rows,
                part_delay: options.membership_part_delay,
            },
            default_mode: options.default_membership,
            incremental_limit: options.incremental_limit,
            // Long enough for any export still running on an old version.
            history_retention: options.group_history_retention.max(options.export_retention),
        };
        Ok(Arc::new(Self {
            cohorts,
            state,
            warehouse,
            export_files,
            options,
            groups,
            group_jobs: Runtimes::default(),
            export_jobs: Runtimes::default(),
        }))
    }

    /// Resumes the jobs an earlier process left running, and starts the
    /// background loops: export expiry, the watch for new warehouse
    /// versions (refreshing *refreshed* Groups), approvals when manual.
    pub async fn start(self: &Arc<Self>) -> Result<(), StoreError> {
        self.resume_group_jobs().await?;
        self.resume_exports().await?;
        let service = self.clone();
        let interval = self.options.export_retention.min(Duration::from_secs(60));
        tokio::spawn(async move { service.expiry_loop(interval).await });
        if self.options.group_approval == crate::jobs::approval::ApprovalMode::Manual {
            tokio::spawn(self.clone().approval_loop());
        }
        tokio::spawn(self.clone().version_watch());
        Ok(())
    }

    /// Watches for newly committed warehouse versions (this process's
    /// loads or another's: the manifests are listed every
    /// `version_poll`) and refreshes the *refreshed* Groups after each,
    /// no sooner than `refresh_spacing` after the previous refresh. The
    /// first look refreshes the Groups a load while no server ran left
    /// stale; a sweep every [`STALE_SWEEP`] catches a Group a write
    /// computed on a version older than one already seen.
    async fn version_watch(self: Arc<Self>) {
        let mut seen = 0;
        let mut last_refresh: Option<tokio::time::Instant> = None;
        let mut last_sweep = tokio::time::Instant::now();
        loop {
            match self.warehouse.latest_version().await {
                Ok(Some(latest)) => {
                    let spaced = last_refresh.is_none_or(|t| t.elapsed() >= self.options.refresh_spacing);
                    if latest > seen && spaced {
                        self.groups.refresh_stale_groups(latest, true).await;
                        seen = latest;
                        last_refresh = Some(tokio::time::Instant::now());
                    } else if last_sweep.elapsed() >= STALE_SWEEP && latest <= seen {
                        self.groups.refresh_stale_groups(latest, false).await;
                        last_sweep = tokio::time::Instant::now();
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "cannot list the warehouse versions"),
            }
            tokio::time::sleep(self.options.version_poll).await;
        }
    }
}
