//! The `fhirlake` binary: the command line over the engine (`cli/`, one
//! file per command).

mod cli;

use std::process::ExitCode;

use clap::Parser;

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

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FHIRLAKE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,fhirlake=info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let cli = cli::Cli::parse();
    cli.configure_s3();
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
    match runtime.block_on(cli.run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            ExitCode::FAILURE
        }
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
