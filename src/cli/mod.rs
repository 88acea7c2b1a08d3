//! The command line: argument definitions and the commands that are not the
//! long-running daemon (slot management, preflight, setup, `tail`).
//!
//! Each command returns an `anyhow::Result` to `main`, which prints one
//! `error: …` line; commands never print backtraces or panic on bad input.

mod check;
mod dlq;
mod setup;
mod slot;
mod tail;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::app::{Role, Roles};
use crate::config::{Config, Overrides};
use crate::event::Lsn;

/// walcast: stream committed PostgreSQL row changes (logical replication,
/// pgoutput) to RabbitMQ and browsers.
#[derive(Debug, Parser)]
#[command(name = "walcast", version, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// The one `error: …` line for a command line clap refused, or `None` when
/// the "error" is a request for help or the version (or a bare command that
/// needs a subcommand, answered with its help), which clap prints itself.
///
/// Clap's own rendering spans several lines (a blank line, a usage line,
/// "For more information, try '--help'"); an operator's scripts and logs get
/// the first line, with clap's "did you mean" tip kept on it.
pub fn usage_error_line(error: &clap::Error) -> Option<String> {
    use clap::error::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        return None;
    }
    // `render()` is plain text through Display; styles apply only with
    // `.ansi()`.
    let rendered = error.render().to_string();
    let mut lines = rendered.lines().map(str::trim).filter(|l| !l.is_empty());
    let mut line = lines
        .next()
        .unwrap_or("error: invalid command line")
        .to_owned();
    if !line.starts_with("error: ") {
        line.insert_str(0, "error: ");
    }
    for tip in lines.filter_map(|l| l.strip_prefix("tip: ")) {
        line.push_str(" (");
        line.push_str(tip);
        line.push(')');
    }
    Some(line)
}

/// Settings that override config.toml and the environment.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Config file [default: ./config.toml if present; env WALCAST_CONFIG]
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Postgres URL (postgres.url; env WALCAST_POSTGRES_URL or DATABASE_URL)
    #[arg(long, global = true, value_name = "URL")]
    pub database_url: Option<String>,
    /// Replication slot name (postgres.slot)
    #[arg(long, global = true, value_name = "NAME")]
    pub slot: Option<String>,
    /// Publication name (postgres.publication)
    #[arg(long, global = true, value_name = "NAME")]
    pub publication: Option<String>,
    /// Captured tables, comma-separated schema.table (postgres.tables)
    #[arg(long, global = true, value_name = "TABLES", value_delimiter = ',')]
    pub tables: Option<Vec<String>>,
    /// RabbitMQ URL (rabbitmq.url; env WALCAST_RABBITMQ_URL or RABBITMQ_URL)
    #[arg(long, global = true, value_name = "URL")]
    pub rabbitmq_url: Option<String>,
    /// RabbitMQ exchange (rabbitmq.exchange)
    #[arg(long, global = true, value_name = "NAME")]
    pub exchange: Option<String>,
    /// HTTP listen address (http.listen)
    #[arg(long, global = true, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Log level or tracing filter (log.level)
    #[arg(long, global = true, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Log format: text or json (log.format)
    #[arg(long, global = true, value_name = "FORMAT")]
    pub log_format: Option<String>,
}

impl GlobalArgs {
    pub fn overrides(&self) -> Overrides {
        Overrides {
            database_url: self.database_url.clone(),
            slot: self.slot.clone(),
            publication: self.publication.clone(),
            tables: self.tables.clone(),
            rabbitmq_url: self.rabbitmq_url.clone(),
            exchange: self.exchange.clone(),
            listen: self.listen.clone(),
            log_level: self.log_level.clone(),
            log_format: self.log_format.clone(),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply the shipped schema (sql/), then create the publication and the
    /// slot if they are missing. Safe to run again.
    Setup(setup::SetupArgs),
    /// Preflight: check wal_level, privileges, publication, replica identity,
    /// the slot and WAL retention limits, and say how to fix what is wrong.
    Check,
    /// Create, drop, list and inspect replication slots.
    Slot {
        #[command(subcommand)]
        command: slot::SlotCommand,
    },
    /// Run walcast: capture (slot → RabbitMQ), gateway (RabbitMQ → Socket.IO)
    /// and the HTTP API with the dashboard, in one process or split by role.
    Run(RunArgs),
    /// Stream change events from the slot to stdout as JSON lines.
    ///
    /// The slot advances only past transactions written and flushed to
    /// stdout. Ctrl-C stops cleanly and reports the last flushed position.
    Tail(tail::TailArgs),
    /// Show (without removing) or purge the gateway's dead letters: messages
    /// it would not take, with the reason (rabbitmq.dead_letter).
    Dlq {
        #[command(subcommand)]
        command: dlq::DlqCommand,
    },
}

/// Runs one command to completion.
pub async fn execute(command: Command, config: Config) -> anyhow::Result<ExitCode> {
    match command {
        Command::Setup(args) => setup::run(&config, args).await,
        Command::Check => check::run(&config).await,
        Command::Slot { command } => slot::run(&config, command).await,
        Command::Run(args) => {
            let roles = if args.role.is_empty() {
                Roles::all()
            } else {
                Roles(args.role.into_iter().collect())
            };
            crate::app::run(config, roles, shutdown_on_signals()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Tail(args) => tail::run(&config, args, shutdown_on_signals()).await,
        Command::Dlq { command } => dlq::run(&config, command).await,
    }
}

/// Arguments of `walcast run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Roles of this process, comma-separated: capture (holds the slot,
    /// publishes to RabbitMQ; a second capture process on the same slot waits
    /// as hot standby), gateway (RabbitMQ → Socket.IO), api (HTTP API and
    /// dashboard) [default: all three]
    #[arg(long, value_delimiter = ',', value_name = "ROLES")]
    pub role: Vec<Role>,
}

/// A token cancelled by the first SIGINT or SIGTERM: the root of the
/// process's token tree. Its listener task is the one task on no tracker:
/// it exists before any stage and must not be waited for (a process that
/// stops on a fatal error exits while it still listens).
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            match signal(SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = ctrl_c => {}
                        _ = term.recv() => {}
                    }
                }
                Err(_) => {
                    let _ = ctrl_c.await;
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = ctrl_c.await;
        }
        tracing::info!("shutdown requested");
        cancel.cancel();
    });
    token
}

/// clap value parser for LSN arguments.
fn parse_lsn(text: &str) -> Result<Lsn, String> {
    text.parse::<Lsn>().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage_error(args: &[&str]) -> Option<String> {
        let error = Cli::try_parse_from(args).expect_err("clap refuses these arguments");
        usage_error_line(&error)
    }

    #[test]
    fn a_refused_command_line_is_one_error_line() {
        let line = usage_error(&["walcast", "tail", "--from", "nonsense"]).unwrap();
        assert!(
            line.starts_with("error: invalid value 'nonsense'"),
            "{line}"
        );
        assert!(line.contains("X/X"), "{line}");
        assert!(!line.contains('\n'), "{line:?}");

        let line = usage_error(&["walcast", "tial"]).unwrap();
        assert_eq!(
            line,
            "error: unrecognized subcommand 'tial' (a similar subcommand exists: 'tail')"
        );
        let line = usage_error(&["walcast", "tail", "--form", "0/0"]).unwrap();
        assert!(
            line.contains("'--form'") && line.contains("'--from'"),
            "{line}"
        );
        assert!(!line.contains("Usage"), "{line}");
    }

    #[test]
    fn help_and_version_are_not_errors() {
        assert_eq!(usage_error(&["walcast", "--help"]), None);
        assert_eq!(usage_error(&["walcast", "tail", "--help"]), None);
        assert_eq!(usage_error(&["walcast", "--version"]), None);
        assert_eq!(usage_error(&["walcast"]), None);
    }
}
