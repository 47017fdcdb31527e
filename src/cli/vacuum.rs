//! `fhirlake vacuum`: deleting data files no kept snapshot uses.

use fhirlake::warehouse::Warehouse;

/// Arguments of `fhirlake vacuum`.
#[derive(clap::Args)]
pub struct Args {
    /// Keep the files of this many latest versions.
    #[arg(long, default_value_t = 1)]
    keep_versions: u64,
    /// Only delete files older than this many seconds (protects loads in progress).
    #[arg(long, default_value_t = 3600)]
    min_age_seconds: u64,
}

impl Args {
    /// Vacuums and prints what was deleted.
    pub async fn run(self, warehouse: &str) -> anyhow::Result<()> {
        let warehouse = Warehouse::open(warehouse)?;
        let report = fhirlake::warehouse::vacuum::vacuum(
            &warehouse,
            self.keep_versions,
            std::time::Duration::from_secs(self.min_age_seconds),
        )
        .await?;
        println!(
            "deleted {} files ({:.1} MiB); {} files in use kept",
            report.files,
            report.bytes as f64 / 1048576.0,
            report.kept
        );
        Ok(())
    }
}
