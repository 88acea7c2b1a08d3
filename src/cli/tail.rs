//! `walcast tail`: change events from the slot to stdout, one JSON object a
//! line. A transaction's events are flushed to stdout before its end is
//! reported to Postgres, so a stopped or killed `tail` resumes without a
//! gap (repeats carry the same ids).

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use tokio::io::{AsyncWriteExt, BufWriter, Stdout};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::capture::{self, CaptureOptions, Sink};
use crate::catalog::Catalog;
use crate::config::Config;
use crate::event::{ChangeEvent, Lsn};

#[derive(Debug, Args)]
pub struct TailArgs {
    /// Start after this LSN (X/X) instead of the slot's confirmed position.
    /// Postgres never goes back before the confirmed position.
    #[arg(long, value_name = "LSN", value_parser = super::parse_lsn)]
    from: Option<Lsn>,
    /// Do not advance the slot: the same changes are seen again next time.
    #[arg(long)]
    peek: bool,
    /// Stream from a new temporary slot (dropped when tail exits) instead of
    /// the configured one: only changes committed from now on.
    #[arg(long)]
    temporary: bool,
}

pub async fn run(
    config: &Config,
    args: TailArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<ExitCode> {
    let pg = config.pg_config();
    {
        let catalog = Catalog::connect(&pg).await?;
        super::check::require_logical(&catalog).await?;
    }
    let slot = if args.temporary {
        format!("{}_tail_{}", config.postgres.slot, std::process::id())
    } else {
        config.postgres.slot.clone()
    };
    let options = CaptureOptions {
        pg,
        application_name: config.postgres.application_name.clone(),
        slot: slot.clone(),
        publications: vec![config.postgres.publication.clone()],
        tables: config.tables(),
        start: args.from.unwrap_or(Lsn::ZERO),
        advance_slot: !args.peek,
        create_temporary_slot: args.temporary,
        status_interval: Duration::from_millis(config.postgres.status_interval_ms),
        feedback_interval: Duration::from_millis(config.postgres.feedback_interval_ms),
        max_backoff: Duration::from_millis(config.postgres.max_backoff_ms),
        state: None,
        tasks: TaskTracker::new(),
    };
    let mut sink = StdoutSink::new(config.rabbitmq.max_event_bytes);
    let result = capture::run(&options, &mut sink, shutdown).await;
    // The connections' tasks end with the capture: wait for them to leave
    // cleanly before the process exits.
    options.tasks.close();
    options.tasks.wait().await;
    let summary = result?;
    match (summary.flushed, args.peek) {
        (_, true) => eprintln!("walcast tail: stopped (peek: slot not advanced)"),
        (Some(lsn), false) => eprintln!("walcast tail: stopped; last flushed position {lsn}"),
        (None, false) => eprintln!("walcast tail: stopped; nothing flushed"),
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes events as JSON lines; a transaction is durable once stdout is
/// flushed after its last event. An event over `rabbitmq.max_event_bytes`
/// is written as its `oversize` stub, the same bytes RabbitMQ carries
/// (an event is identical wherever it goes).
struct StdoutSink {
    out: BufWriter<Stdout>,
    line: Vec<u8>,
    max_event_bytes: usize,
    durable: Option<Lsn>,
    reported: Option<Lsn>,
}

impl StdoutSink {
    fn new(max_event_bytes: usize) -> Self {
        StdoutSink {
            out: BufWriter::with_capacity(64 * 1024, tokio::io::stdout()),
            line: Vec::with_capacity(1024),
            max_event_bytes,
            durable: None,
            reported: None,
        }
    }
}

impl Sink for StdoutSink {
    type Error = std::io::Error;

    async fn send(&mut self, event: ChangeEvent) -> Result<(), Self::Error> {
        self.line.clear();
        event.write_json(&mut self.line);
        if self.line.len() > self.max_event_bytes {
            tracing::warn!(
                id = %event.id,
                size = self.line.len(),
                max_event_bytes = self.max_event_bytes,
                "event exceeds rabbitmq.max_event_bytes; writing its oversize stub"
            );
            self.line.clear();
            event.write_oversize_json(&mut self.line);
        }
        self.line.push(b'\n');
        self.out.write_all(&self.line).await
    }

    async fn end_transaction(&mut self, end_lsn: Lsn) -> Result<(), Self::Error> {
        self.out.flush().await?;
        self.durable = Some(end_lsn);
        Ok(())
    }

    async fn durable(&mut self) -> Result<Lsn, Self::Error> {
        match self.durable {
            Some(lsn) if self.reported != Some(lsn) => {
                self.reported = Some(lsn);
                Ok(lsn)
            }
            _ => std::future::pending().await,
        }
    }

    async fn drain(&mut self) -> Result<Option<Lsn>, Self::Error> {
        self.out.flush().await?;
        Ok(self.durable)
    }
}
