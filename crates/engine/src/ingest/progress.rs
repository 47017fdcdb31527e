//! Load progress: shared counters, shown as a bar on a terminal and as
//! periodic log lines otherwise.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// Counters the reader and worker threads update.
#[derive(Debug, Default)]
pub struct Progress {
    /// Bytes read from the sources as stored (compressed for `.gz`).
    pub stored_bytes: AtomicU64,
    /// Bytes of NDJSON after decompression.
    pub ndjson_bytes: AtomicU64,
    /// Resources accepted.
    pub resources: AtomicU64,
    /// Lines rejected.
    pub rejected: AtomicU64,
}

impl Progress {
    fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Shows `progress` until the returned guard is finished or dropped.
pub struct ProgressDisplay {
    bar: Option<ProgressBar>,
    task: tokio::task::JoinHandle<()>,
}

impl ProgressDisplay {
    /// Starts showing progress of a load of `total_bytes` stored bytes.
    pub fn start(progress: std::sync::Arc<Progress>, total_bytes: u64, quiet: bool) -> Self {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new(total_bytes);
            let style = ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ({bytes_per_sec}, {msg})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar
        });
        let bar_for_task = bar.clone();
        let task = tokio::spawn(async move {
            let period = if bar_for_task.is_some() {
                Duration::from_millis(200)
            } else {
                Duration::from_secs(10)
            };
            let mut ticker = tokio::time::interval(period);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                let stored = Progress::get(&progress.stored_bytes);
                let resources = Progress::get(&progress.resources);
                let rejected = Progress::get(&progress.rejected);
                match &bar_for_task {
                    Some(bar) => {
                        bar.set_position(stored);
                        bar.set_message(format!("{resources} resources, {rejected} rejected"));
                    }
                    None if !quiet => tracing::info!(
                        read_bytes = stored,
                        total_bytes,
                        resources,
                        rejected,
                        "loading: {:.0}%",
                        100.0 * stored as f64 / total_bytes.max(1) as f64
                    ),
                    None => {}
                }
            }
        });
        Self { bar, task }
    }

    /// Stops the display.
    pub fn finish(self) {
        self.task.abort();
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
