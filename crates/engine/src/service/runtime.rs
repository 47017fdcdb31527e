//! The jobs of this process: their tasks, live progress and when each was
//! last polled. Records in the state store say what a job is; this says
//! what this process is doing about it.

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use crate::export::{ExportedFile, Progress};

/// One job's task in this process.
struct Runtime {
    abort: Option<tokio::task::AbortHandle>,
    progress: Progress,
    last_poll: Option<Instant>,
    running: bool,
}

impl Runtime {
    fn idle() -> Self {
        Self {
            abort: None,
            progress: Progress::default(),
            last_poll: None,
            running: false,
        }
    }
}

/// The tasks of one kind of job, by job id.
#[derive(Default)]
pub struct Runtimes {
    tasks: Mutex<HashMap<String, Runtime>>,
}

impl Runtimes {
    /// Runs `task` for job `id` in the background; `progress` is what its
    /// pollers see.
    pub async fn spawn<F>(&self, id: &str, progress: Progress, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        // Held across the spawn: a task that ends at once must find its
        // entry when it marks itself finished, or it would count as
        // running forever (and hold an export slot).
        let mut tasks = self.tasks.lock().await;
        let handle = tokio::spawn(task);
        tasks.insert(
            id.to_string(),
            Runtime {
                abort: Some(handle.abort_handle()),
                progress,
                last_poll: None,
                running: true,
            },
        );
    }

    /// How many jobs are running in this process.
    pub async fn running(&self) -> usize {
        self.tasks.lock().await.values().filter(|r| r.running).count()
    }

    /// Records that job `id`'s task ended.
    pub async fn finished(&self, id: &str) {
        if let Some(runtime) = self.tasks.lock().await.get_mut(id) {
            runtime.running = false;
        }
    }

    /// Stops job `id`'s task, if it runs here.
    pub async fn abort(&self, id: &str) {
        if let Some(runtime) = self.tasks.lock().await.get_mut(id) {
            if let Some(abort) = runtime.abort.take() {
                abort.abort();
            }
            runtime.running = false;
        }
    }

    /// Forgets job `id`.
    pub async fn remove(&self, id: &str) {
        self.tasks.lock().await.remove(id);
    }

    /// Records a poll of job `id` and returns its progress text and the
    /// output files finished so far. A poll sooner than half of
    /// `retry_after` seconds after the previous one is refused with `None`
    /// (with `count` false, it is neither refused nor recorded: following
    /// a manifest's `next` link is not over-polling).
    pub async fn poll(&self, id: &str, retry_after: u64, count: bool) -> Option<(String, Vec<ExportedFile>)> {
        let mut tasks = self.tasks.lock().await;
        let runtime = tasks.entry(id.to_string()).or_insert_with(Runtime::idle);
        if count {
            if let Some(last) = runtime.last_poll
                && last.elapsed() < Duration::from_secs(retry_after) / 2
            {
                return None;
            }
            runtime.last_poll = Some(Instant::now());
        }
        Some((runtime.progress.get(), runtime.progress.finished()))
    }
}
