//! The capture loop: replication stream → decoder → a [`Sink`], and the
//! slot moves only past what the sink made durable.
//!
//! The loop owns the at-least-once guarantee on the Postgres side. It tells
//! the sink where each transaction ends; the sink says when everything up to
//! such an end is durable (written to stdout for `tail`, confirmed by
//! RabbitMQ for `run`); only then does the position go to Postgres as
//! flushed. A crash anywhere therefore replays from the last durable
//! transaction end, and the replayed events carry the same ids.
//!
//! It reconnects with jittered exponential backoff when the connection is
//! lost or the slot is busy, and stops on errors a reconnect cannot heal
//! (missing slot, bad credentials, wal_level). It does not publish, print or
//! decode anything itself.

use std::future::Future;
use std::time::Duration;

use rand::Rng;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::catalog::{Catalog, CatalogError};
use crate::decoder::{DecodeError, Decoded, Decoder};
use crate::event::{ChangeEvent, Lsn};
use crate::wal::{
    ReplicationClient, ReplicationMessage, ReplicationStream, StartOptions, WalError,
};

/// Where decoded events go. Implementations: stdout for `walcast tail`,
/// RabbitMQ for `walcast run`.
pub trait Sink: Send {
    type Error: std::error::Error + Send + Sync + 'static;

    /// Takes the next event in commit order. May wait (backpressure): while
    /// it waits, no more WAL is read.
    fn send(&mut self, event: ChangeEvent) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Every event of the transaction ending at `end_lsn` has been sent.
    fn end_transaction(
        &mut self,
        end_lsn: Lsn,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Waits until the durable position moves and returns it: the end of the
    /// last transaction all of whose events (and all before) are durable.
    /// Cancel-safe.
    fn durable(&mut self) -> impl Future<Output = Result<Lsn, Self::Error>> + Send;

    /// Waits until everything sent is durable and returns that position
    /// (`None` if nothing ever became durable).
    fn drain(&mut self) -> impl Future<Output = Result<Option<Lsn>, Self::Error>> + Send;
}

/// Errors that end the capture loop.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error("cannot decode the replication stream at {lsn}: {source}")]
    Decode { lsn: Lsn, source: DecodeError },
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("sink failed: {0}")]
    Sink(Box<dyn std::error::Error + Send + Sync>),
}

impl CaptureError {
    /// Errors a reconnect can heal.
    pub fn is_retryable(&self) -> bool {
        match self {
            CaptureError::Wal(e) => e.is_retryable(),
            CaptureError::Catalog(e) => e.is_retryable(),
            CaptureError::Decode { .. } | CaptureError::Sink(_) => false,
        }
    }
}

/// What to stream and how.
#[derive(Debug, Clone)]
pub struct CaptureOptions {
    pub pg: tokio_postgres::Config,
    pub application_name: String,
    pub slot: String,
    pub publications: Vec<String>,
    /// Where to start; `Lsn::ZERO` means the slot's confirmed position.
    pub start: Lsn,
    /// False for `--peek`: never move the slot.
    pub advance_slot: bool,
    /// Create `slot` as a temporary slot on the streaming connection. It
    /// vanishes with the connection, so a lost connection ends the capture.
    pub create_temporary_slot: bool,
    pub status_interval: Duration,
    pub max_backoff: Duration,
}

/// How the loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaptureSummary {
    /// The last position reported to Postgres as flushed, if any.
    pub flushed: Option<Lsn>,
}

/// Streams until `shutdown` fires or an error a reconnect cannot heal.
pub async fn run<S: Sink>(
    options: &CaptureOptions,
    sink: &mut S,
    shutdown: CancellationToken,
) -> Result<CaptureSummary, CaptureError> {
    let mut flushed = None;
    let mut attempt: u32 = 0;
    loop {
        let mut session = Session {
            options,
            flushed: &mut flushed,
            made_progress: false,
        };
        let result = session.stream(sink, &shutdown).await;
        let made_progress = session.made_progress;
        match result {
            Ok(()) => return Ok(CaptureSummary { flushed }),
            // A temporary slot died with its connection: resuming from a
            // new one would silently skip changes, so stop instead.
            Err(e)
                if e.is_retryable()
                    && !shutdown.is_cancelled()
                    && !options.create_temporary_slot =>
            {
                attempt = if made_progress { 1 } else { attempt + 1 };
                let delay = backoff(attempt, options.max_backoff);
                warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "replication interrupted; reconnecting");
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return Ok(CaptureSummary { flushed }),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// Exponential backoff from 200 ms with full jitter, capped.
pub fn backoff(attempt: u32, max: Duration) -> Duration {
    let base = Duration::from_millis(200).saturating_mul(1u32 << attempt.min(16));
    let cap = base.min(max);
    let jitter = rand::rng().random_range(0.5..=1.0);
    cap.mul_f64(jitter)
}

/// One connection's worth of streaming.
struct Session<'a> {
    options: &'a CaptureOptions,
    flushed: &'a mut Option<Lsn>,
    made_progress: bool,
}

impl Session<'_> {
    async fn stream<S: Sink>(
        &mut self,
        sink: &mut S,
        shutdown: &CancellationToken,
    ) -> Result<(), CaptureError> {
        let options = self.options;
        let catalog = Catalog::connect(&options.pg).await?;
        let mut client = ReplicationClient::connect(&options.pg, &options.application_name).await?;
        if options.create_temporary_slot {
            client.create_slot(&options.slot, true).await?;
        }
        let mut stream = client
            .start_replication(StartOptions {
                slot: options.slot.clone(),
                start: options.start.max(self.flushed.unwrap_or(Lsn::ZERO)),
                publications: options.publications.clone(),
                status_interval: options.status_interval,
            })
            .await?;
        info!(slot = %options.slot, "streaming changes");
        if let Some(lsn) = *self.flushed {
            if options.advance_slot {
                stream.set_durable(lsn);
            }
        }

        let mut decoder = Decoder::new();
        let mut in_transaction = false;
        // End of the last transaction handed to the sink, and whether the
        // sink has made it durable: when both hold and no transaction is
        // open, a keepalive's position is safe to confirm too (all WAL before
        // it was either sent to us or touched none of our tables), which
        // keeps an idle slot from retaining WAL forever.
        let mut last_end: Option<Lsn> = None;
        let mut durable: Option<Lsn> = *self.flushed;

        let result: Result<(), CaptureError> = loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break Ok(()),
                position = sink.durable() => {
                    let position = position.map_err(|e| CaptureError::Sink(Box::new(e)))?;
                    durable = Some(position);
                    self.confirm(&stream, position);
                }
                message = stream.next() => {
                    let Some(message) = message? else {
                        break Err(WalError::Io(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "server ended the replication stream",
                        )).into());
                    };
                    match message {
                        ReplicationMessage::XLogData { wal_start, data, .. } => {
                            let decoded = decoder
                                .decode(wal_start, &data)
                                .map_err(|source| CaptureError::Decode { lsn: wal_start, source })?;
                            match decoded {
                                Decoded::Begin(_) => in_transaction = true,
                                Decoded::Change(event) => {
                                    sink.send(event).await.map_err(|e| CaptureError::Sink(Box::new(e)))?;
                                }
                                Decoded::Truncate(events) => {
                                    for event in events {
                                        sink.send(event).await.map_err(|e| CaptureError::Sink(Box::new(e)))?;
                                    }
                                }
                                Decoded::Commit(commit) => {
                                    in_transaction = false;
                                    last_end = Some(commit.end_lsn);
                                    self.made_progress = true;
                                    sink.end_transaction(commit.end_lsn)
                                        .await
                                        .map_err(|e| CaptureError::Sink(Box::new(e)))?;
                                }
                                Decoded::Relation(relation) => {
                                    let key = catalog.primary_key(relation.oid).await?;
                                    debug!(table = %format!("{}.{}", relation.schema, relation.table), key = ?key, "relation");
                                    if !key.is_empty() {
                                        decoder.set_key_columns(relation.oid, key);
                                    }
                                }
                                Decoded::Other => {}
                            }
                        }
                        ReplicationMessage::Keepalive { wal_end, .. } => {
                            let caught_up = last_end.is_none_or(|end| durable.is_some_and(|d| d >= end));
                            if !in_transaction && caught_up && durable.is_none_or(|d| wal_end > d) {
                                durable = Some(wal_end);
                                self.confirm(&stream, wal_end);
                            }
                        }
                    }
                }
            }
        };

        if shutdown.is_cancelled() || result.is_ok() {
            // Drain, don't drop: whatever the sink still holds becomes
            // durable (or fails) before the final status update.
            match sink.drain().await {
                Ok(Some(position)) => self.confirm(&stream, position),
                Ok(None) => {}
                Err(e) => warn!(error = %e, "sink failed while draining"),
            }
            match stream.shutdown().await {
                Ok(_) => {}
                Err(e) => warn!(error = %e, "replication stream did not close cleanly"),
            }
        }
        result
    }

    fn confirm(&mut self, stream: &ReplicationStream, position: Lsn) {
        if !self.options.advance_slot {
            return;
        }
        if self.flushed.is_none_or(|f| position > f) {
            stream.set_durable(position);
            *self.flushed = Some(position);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let max = Duration::from_secs(5);
        for attempt in 0..40 {
            let d = backoff(attempt, max);
            assert!(d <= max, "attempt {attempt}: {d:?}");
            assert!(d >= Duration::from_millis(100), "attempt {attempt}: {d:?}");
        }
        assert!(backoff(10, max) >= Duration::from_millis(2500));
    }
}
