//! What the benchmarks share: running a command and measuring it.
// Each bench uses the fields it reports.
#![allow(dead_code)]

use std::process::{Command, Stdio};
use std::time::Instant;

/// What one run of a command cost.
pub struct Measured {
    /// Its standard output.
    pub stdout: String,
    /// Wall-clock seconds.
    pub wall: f64,
    /// User + system CPU seconds.
    pub cpu: f64,
    /// Peak resident set, MiB.
    pub peak_rss_mib: f64,
}

/// Runs `cmd` to completion and measures it with `wait4`'s resource usage.
#[allow(clippy::zombie_processes)] // reaped by wait4, which also yields its usage
pub fn run_measured(cmd: &mut Command) -> Measured {
    let started = Instant::now();
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn");
    let pid = child.id() as libc::pid_t;
    let stdout = child.stdout.expect("stdout");
    let reader = std::thread::spawn(move || std::io::read_to_string(stdout).unwrap_or_default());
    let mut status = 0;
    // SAFETY: plain FFI call on our own child's pid with valid out-pointers.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let wall = started.elapsed().as_secs_f64();
    assert!(
        rc == pid && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{cmd:?} failed"
    );
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Measured {
        stdout: reader.join().unwrap_or_default(),
        wall,
        cpu: secs(usage.ru_utime) + secs(usage.ru_stime),
        peak_rss_mib: usage.ru_maxrss as f64 / 1024.0,
    }
}
