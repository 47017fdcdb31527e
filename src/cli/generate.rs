//! `fhirlake gen`: scaled-up benchmark data.

use std::path::PathBuf;

/// Arguments of `fhirlake gen`.
#[derive(clap::Args)]
pub struct Args {
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
}

impl Args {
    /// Writes the copies and prints what was written.
    pub fn run(self) -> anyhow::Result<()> {
        let started = std::time::Instant::now();
        let report = fhirlake::generate::generate(&self.from, self.copies, &self.out, self.gzip)?;
        println!(
            "wrote {} files, {} resources, {:.1} MiB NDJSON to {} in {:.1} s",
            report.files,
            report.lines,
            report.bytes as f64 / 1048576.0,
            self.out.display(),
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }
}
