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
//!
//! [`Metered`] wraps a sink to count what passes through it into
//! [`CaptureStats`] (changes by table and op, commit-to-publish lag, the
//! durable position) for `/metrics`, without touching the loop.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::catalog::{Catalog, CatalogError};
use crate::decoder::{DecodeError, Decoded, Decoder};
use crate::event::{ChangeEvent, Lsn, Op, PgTimestamp};
use crate::metrics::{Histogram, HistogramSnapshot};
use crate::retry::Backoff;
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

    /// The stream the next events belong to, `<system identifier>/<database>/<slot>`
    /// (contract section 2, `x-walcast-source`): told once per replication
    /// session, before its first event. Ignored by default.
    fn set_source(&mut self, source: &str) {
        let _ = source;
    }
}

/// A [`Sink`] that counts into [`CaptureStats`] what it passes on to the
/// sink it wraps. It changes nothing about what is sent or when.
pub struct Metered<'a, S> {
    inner: &'a mut S,
    stats: CaptureStats,
}

impl<'a, S: Sink> Metered<'a, S> {
    pub fn new(inner: &'a mut S, stats: CaptureStats) -> Metered<'a, S> {
        Metered { inner, stats }
    }
}

impl<S: Sink> Sink for Metered<'_, S> {
    type Error = S::Error;

    async fn send(&mut self, event: ChangeEvent) -> Result<(), S::Error> {
        self.stats.record_decoded(&event);
        let commit_time = event.commit_time;
        self.inner.send(event).await?;
        // After the send: a wait for the publish window (backpressure) is
        // part of the lag a reader sees.
        self.stats
            .record_handed_over(commit_time, PgTimestamp::now());
        Ok(())
    }

    async fn end_transaction(&mut self, end_lsn: Lsn) -> Result<(), S::Error> {
        self.inner.end_transaction(end_lsn).await?;
        self.stats.0.transactions.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn durable(&mut self) -> Result<Lsn, S::Error> {
        let position = self.inner.durable().await?;
        self.stats.record_durable(position);
        Ok(position)
    }

    async fn drain(&mut self) -> Result<Option<Lsn>, S::Error> {
        let position = self.inner.drain().await?;
        if let Some(position) = position {
            self.stats.record_durable(position);
        }
        Ok(position)
    }

    fn set_source(&mut self, source: &str) {
        self.inner.set_source(source);
    }
}

/// Capture counters for `/metrics`: a cloneable handle, cheap to update on
/// every change. It does not format anything.
#[derive(Debug, Clone, Default)]
pub struct CaptureStats(Arc<CaptureCounters>);

/// Sentinel for "no lag measured yet".
const NO_LAG: u64 = u64::MAX;

/// Schema, table and op of a change.
type ChangeKind = (Arc<str>, Arc<str>, Op);

#[derive(Debug)]
struct CaptureCounters {
    /// Changes by kind. Bounded by the published tables × 4 ops.
    decoded: Mutex<HashMap<ChangeKind, u64>>,
    transactions: AtomicU64,
    /// Commit-to-publish lag of the last change, in microseconds.
    last_lag_micros: AtomicU64,
    lag: Histogram,
    durable_lsn: AtomicU64,
}

impl Default for CaptureCounters {
    fn default() -> Self {
        CaptureCounters {
            decoded: Mutex::default(),
            transactions: AtomicU64::new(0),
            last_lag_micros: AtomicU64::new(NO_LAG),
            lag: Histogram::default(),
            durable_lsn: AtomicU64::new(0),
        }
    }
}

/// Changes decoded from one table with one op.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedCount {
    pub schema: String,
    pub table: String,
    pub op: Op,
    pub count: u64,
}

impl CaptureStats {
    /// Changes decoded and handed to the sink, by table and op, ordered.
    pub fn decoded(&self) -> Vec<DecodedCount> {
        let decoded = self.0.decoded.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<DecodedCount> = decoded
            .iter()
            .map(|((schema, table, op), count)| DecodedCount {
                schema: schema.to_string(),
                table: table.to_string(),
                op: *op,
                count: *count,
            })
            .collect();
        out.sort_by(|a, b| {
            (&a.schema, &a.table, a.op.as_str()).cmp(&(&b.schema, &b.table, b.op.as_str()))
        });
        out
    }

    /// Transactions whose every change was handed to the sink.
    pub fn transactions(&self) -> u64 {
        self.0.transactions.load(Ordering::Relaxed)
    }

    /// Commit time to hand-over to the sink, of the last change.
    pub fn last_commit_to_publish_lag(&self) -> Option<Duration> {
        match self.0.last_lag_micros.load(Ordering::Relaxed) {
            NO_LAG => None,
            micros => Some(Duration::from_micros(micros)),
        }
    }

    /// Commit time to hand-over to the sink, of every change.
    pub fn commit_to_publish_lag(&self) -> HistogramSnapshot {
        self.0.lag.snapshot()
    }

    /// The last position the sink reported durable (`None` before any).
    pub fn durable_lsn(&self) -> Option<Lsn> {
        match self.0.durable_lsn.load(Ordering::Relaxed) {
            0 => None,
            lsn => Some(Lsn(lsn)),
        }
    }

    fn record_decoded(&self, event: &ChangeEvent) {
        let mut decoded = self.0.decoded.lock().unwrap_or_else(|p| p.into_inner());
        // Cloning the Arcs is a reference count, not a copy of the names.
        let key = (event.schema.clone(), event.table.clone(), event.op);
        *decoded.entry(key).or_default() += 1;
    }

    fn record_handed_over(&self, commit_time: PgTimestamp, now: PgTimestamp) {
        // Clocks of two hosts: a commit "in the future" counts as no lag.
        // (An i64 difference never reaches NO_LAG.)
        let micros = u64::try_from(now.0.saturating_sub(commit_time.0)).unwrap_or(0);
        self.0.last_lag_micros.store(micros, Ordering::Relaxed);
        self.0.lag.observe(Duration::from_micros(micros));
    }

    fn record_durable(&self, position: Lsn) {
        self.0.durable_lsn.fetch_max(position.0, Ordering::Relaxed);
    }
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
    pub pg: crate::pg::PgConfig,
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
    /// Where the loop reports whether it is streaming (for `/readyz`).
    pub state: Option<tokio::sync::watch::Sender<StreamState>>,
}

/// Whether the replication stream is up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamState {
    Connecting,
    Streaming,
    /// Lost; reconnecting after the error shown.
    Reconnecting(String),
}

impl CaptureOptions {
    fn report(&self, state: StreamState) {
        if let Some(sender) = &self.state {
            sender.send_replace(state);
        }
    }
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
                let delay = reconnect_backoff(options.max_backoff).delay(attempt);
                warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "replication interrupted; reconnecting");
                options.report(StreamState::Reconnecting(e.to_string()));
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

/// The capture's reconnect delays: from 200 ms, doubling, capped at `max`.
pub fn reconnect_backoff(max: Duration) -> Backoff {
    Backoff::new(Duration::from_millis(200), max)
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
        // Which stream the events belong to: a database restored onto a new
        // cluster has another system identifier, and its ids are not
        // comparable with the old ones (consumers restart their history).
        let system = client.identify_system().await?;
        let database = system
            .dbname
            .clone()
            .or_else(|| options.pg.get_dbname().map(str::to_owned))
            .unwrap_or_default();
        let source = format!("{}/{}/{}", system.system_id, database, options.slot);
        debug!(%source, "capture source");
        sink.set_source(&source);
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
        options.report(StreamState::Streaming);
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

    /// A sink that makes everything durable at once.
    #[derive(Default)]
    struct Immediate {
        sent: Vec<ChangeEvent>,
        last_end: Option<Lsn>,
    }

    impl Sink for Immediate {
        type Error = std::io::Error;
        async fn send(&mut self, event: ChangeEvent) -> Result<(), Self::Error> {
            self.sent.push(event);
            Ok(())
        }
        async fn end_transaction(&mut self, end_lsn: Lsn) -> Result<(), Self::Error> {
            self.last_end = Some(end_lsn);
            Ok(())
        }
        async fn durable(&mut self) -> Result<Lsn, Self::Error> {
            Ok(self.last_end.unwrap_or(Lsn::ZERO))
        }
        async fn drain(&mut self) -> Result<Option<Lsn>, Self::Error> {
            Ok(self.last_end)
        }
    }

    fn change(table: &str, op: Op, commit_time: PgTimestamp) -> ChangeEvent {
        ChangeEvent {
            id: crate::event::EventId {
                commit_lsn: Lsn(0x100),
                ordinal: 0,
            },
            op,
            schema: Arc::from("public"),
            table: Arc::from(table),
            key: None,
            new: None,
            old: None,
            changed: None,
            unchanged_toast: vec![],
            lsn: Lsn(0xF0),
            commit_lsn: Lsn(0x100),
            xid: 7,
            commit_time,
        }
    }

    #[tokio::test]
    async fn metered_sink_counts_what_it_passes_on() {
        let stats = CaptureStats::default();
        let mut inner = Immediate::default();
        let mut sink = Metered::new(&mut inner, stats.clone());
        let two_seconds_ago = PgTimestamp(PgTimestamp::now().0 - 2_000_000);
        sink.send(change("orders", Op::Insert, two_seconds_ago))
            .await
            .unwrap();
        sink.send(change("orders", Op::Insert, two_seconds_ago))
            .await
            .unwrap();
        sink.send(change("items", Op::Delete, PgTimestamp(i64::MAX)))
            .await
            .unwrap();
        sink.end_transaction(Lsn(0x200)).await.unwrap();
        assert_eq!(sink.durable().await.unwrap(), Lsn(0x200));
        assert_eq!(inner.sent.len(), 3);

        let decoded = stats.decoded();
        assert_eq!(decoded.len(), 2);
        assert_eq!((decoded[0].table.as_str(), decoded[0].count), ("items", 1));
        assert_eq!(
            (decoded[1].table.as_str(), decoded[1].op),
            ("orders", Op::Insert)
        );
        assert_eq!(decoded[1].count, 2);
        assert_eq!(stats.transactions(), 1);
        assert_eq!(stats.durable_lsn(), Some(Lsn(0x200)));
        // A commit time ahead of this clock counts as no lag.
        assert_eq!(stats.last_commit_to_publish_lag(), Some(Duration::ZERO));
        let lag = stats.commit_to_publish_lag();
        assert_eq!(lag.count, 3);
        assert!(lag.sum_seconds >= 4.0, "{lag:?}");
    }

    #[test]
    fn reconnect_backoff_starts_at_200_ms() {
        let backoff = reconnect_backoff(Duration::from_secs(5));
        assert_eq!(backoff.ceiling(0), Duration::from_millis(200));
        assert_eq!(backoff.ceiling(10), Duration::from_secs(5));
    }
}
