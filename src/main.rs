//! The `walcast` binary: parse the command line, load and validate the
//! configuration, set up logging, run the command. Everything else lives in
//! the library.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use walcast::cli::Cli;
use walcast::config::{Config, LogConfig};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => match walcast::cli::usage_error_line(&e) {
            Some(line) => {
                eprintln!("{line}");
                return ExitCode::from(2);
            }
            // Help and version (and the help a bare `walcast` answers
            // with) print as clap always prints them.
            None => e.exit(),
        },
    };
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let config = match Config::load(cli.global.config.as_deref(), &env, &cli.global.overrides()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    init_tracing(&config.log);
    set_mmap_threshold(config.runtime.mmap_threshold_bytes);
    let cpus = std::thread::available_parallelism().unwrap_or(std::num::NonZeroUsize::MIN);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.runtime.worker_threads(cpus))
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(walcast::cli::execute(cli.command, config)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `runtime.mmap_threshold_bytes`: before any thread starts, so that
/// every allocation sees the same threshold. glibc's own
/// `MALLOC_MMAP_THRESHOLD_`, when set, was applied at startup and wins.
fn set_mmap_threshold(bytes: usize) {
    if bytes == 0 {
        return;
    }
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_some() {
        tracing::info!(
            "MALLOC_MMAP_THRESHOLD_ is set: it is used instead of runtime.mmap_threshold_bytes"
        );
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // validate() keeps it within glibc's 32 MiB limit.
        let threshold = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt only changes a tunable of glibc's allocator, which
        // takes its own lock; no other thread exists yet.
        if unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, threshold) } != 1 {
            tracing::warn!(
                bytes,
                "glibc refused runtime.mmap_threshold_bytes; keeping its default"
            );
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    tracing::warn!(
        bytes,
        "runtime.mmap_threshold_bytes applies to glibc only; this build's C library ignores it"
    );
}

/// Logs go to stderr (stdout belongs to `tail`'s events). RUST_LOG wins over
/// the configured level.
fn init_tracing(log: &LogConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .with_writer(std::io::stderr);
    if log.format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}
