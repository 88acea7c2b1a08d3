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
//! Only the configured tables leave the database: a publication may cover
//! more (`FOR ALL TABLES`, or one shared with other tables), so the changes
//! of any other table are filtered out here, counted, and logged once per
//! table. At connect, and whenever the stream names a type it does not
//! know, it reads from the catalog what the decoder cannot learn from the
//! stream: primary keys, and the base types of domains. It keeps the status
//! interval below the server's `wal_sender_timeout`.
//!
//! [`Metered`] wraps a sink to count what passes through it into
//! [`CaptureStats`] (changes by table and op, commit-to-publish lag, the
//! durable position) for `/metrics`, without touching the loop (`stats.rs`).
//! [`SlotLease`] (`lease.rs`) makes one capture process the owner of a
//! slot; `walcast run` holds it around the loop. [`Backfill`]
//! (`backfill.rs`) turns the backfill watermarks in the stream into `read`
//! events; the loop only feeds it changes and messages.

pub mod backfill;
mod lease;
mod stats;

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::catalog::{Catalog, CatalogError};
use crate::config::TableName;
use crate::decoder::{DecodeError, Decoded, Decoder, RelationInfo};
use crate::event::{ChangeEvent, Lsn, Op};
use crate::health::{ComponentState, StageState};
use crate::retry::Backoff;

use crate::wal::{
    ReplicationClient, ReplicationMessage, ReplicationStream, StartOptions, WalError,
};
pub use backfill::Backfill;
pub use lease::SlotLease;
pub use stats::{BackfillCounts, CaptureStats, DecodedCount, Metered};

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

    /// A change of a table outside the configured tables was left out:
    /// nothing to deliver. Wrappers count it.
    fn filtered(&mut self, _op: Op) {}

    /// A backfill chunk was closed: `emitted` rows were sent as `read`
    /// events, `dropped` left out (changed inside the window). Wrappers
    /// count it.
    fn backfill_chunk(&mut self, _emitted: usize, _dropped: usize) {}
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
    /// The tables whose changes leave the database (`postgres.tables`);
    /// the publication's other tables are filtered out.
    pub tables: Vec<TableName>,
    /// Where to start; `Lsn::ZERO` means the slot's confirmed position.
    pub start: Lsn,
    /// False for `--peek`: never move the slot.
    pub advance_slot: bool,
    /// Create `slot` as a temporary slot on the streaming connection. It
    /// vanishes with the connection, so a lost connection ends the capture.
    pub create_temporary_slot: bool,
    /// Kept below the server's `wal_sender_timeout` (see
    /// [`bounded_status_interval`]).
    pub status_interval: Duration,
    /// A moved durable position is reported to Postgres within this long.
    pub feedback_interval: Duration,
    pub max_backoff: Duration,
    /// Where the loop reports whether it is streaming (for `/readyz`).
    pub state: Option<tokio::sync::watch::Sender<StreamState>>,
    /// Where its connections' tasks run (the catalog's, the replication
    /// stream's writer).
    pub tasks: TaskTracker,
}

/// Whether the replication stream is up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamState {
    Connecting,
    Streaming,
    /// Lost; reconnecting after the error shown.
    Reconnecting(String),
}

/// How `/readyz` shows the stream (component `slot_stream`).
impl StageState for StreamState {
    fn health(&self) -> (ComponentState, String) {
        match self {
            StreamState::Connecting => (ComponentState::Connecting, "connecting".to_owned()),
            StreamState::Streaming => (ComponentState::Ready, "streaming".to_owned()),
            StreamState::Reconnecting(error) => (
                ComponentState::Reconnecting,
                format!("reconnecting: {error}"),
            ),
        }
    }
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
    let mut memory = Memory::default();
    let mut attempt: u32 = 0;
    loop {
        let mut session = Session {
            options,
            memory: &mut memory,
            made_progress: false,
        };
        let result = session.stream(sink, &shutdown).await;
        let made_progress = session.made_progress;
        let flushed = memory.flushed;
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

/// Sends a closed backfill chunk's `read` events, inside the transaction
/// of its high watermark.
async fn send_chunk<S: Sink>(
    sink: &mut S,
    chunk: Option<backfill::Chunk>,
) -> Result<(), CaptureError> {
    let Some(chunk) = chunk else {
        return Ok(());
    };
    let emitted = chunk.events.len();
    for event in chunk.events {
        sink.send(event)
            .await
            .map_err(|e| CaptureError::Sink(Box::new(e)))?;
    }
    sink.backfill_chunk(emitted, chunk.dropped);
    Ok(())
}

/// The capture's reconnect delays: from 200 ms, doubling, capped at `max`.
pub fn reconnect_backoff(max: Duration) -> Backoff {
    Backoff::new(Duration::from_millis(200), max)
}

/// The status interval to use against a server whose `wal_sender_timeout`
/// is `wal_sender_timeout` (zero: disabled), or `None` when `configured`
/// is fine as it is.
///
/// At or above the timeout, the connection would live only on the
/// server's own keepalive requests (sent at half the timeout): one late
/// reply and the server drops it. So the interval is clamped to half the
/// timeout rather than refused: the operator gets a warning, not an
/// outage.
pub fn bounded_status_interval(
    configured: Duration,
    wal_sender_timeout: Duration,
) -> Option<Duration> {
    if wal_sender_timeout.is_zero() || configured < wal_sender_timeout {
        return None;
    }
    Some((wal_sender_timeout / 2).max(Duration::from_millis(1)))
}

/// Longest wait for a type named by the stream to become visible in the
/// catalog.
const TYPE_VISIBILITY_WAIT: Duration = Duration::from_secs(2);

/// Tells the decoder the base type of `oid` if it is a domain (or an array
/// of one). The stream can show a transaction's commit before that commit
/// is visible to other sessions, so a type created by the transaction being
/// decoded may not be in `pg_type` yet: wait briefly until it is.
async fn resolve_type(
    catalog: &Catalog,
    decoder: &mut Decoder,
    oid: u32,
) -> Result<(), CaptureError> {
    let deadline = tokio::time::Instant::now() + TYPE_VISIBILITY_WAIT;
    loop {
        let aliases = catalog.domain_base_types().await?;
        let found = aliases.iter().any(|(alias, _)| *alias == oid);
        decoder.set_type_aliases(aliases);
        if found || catalog.type_exists(oid).await? {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            // Dropped since (the stream is behind): its values stay text.
            warn!(
                oid,
                "a type the stream names is not in pg_type; its values are written as text"
            );
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What outlives one connection.
#[derive(Default)]
struct Memory {
    /// The last position reported to Postgres as flushed.
    flushed: Option<Lsn>,
    /// Tables whose changes were filtered out, already logged at info.
    filtered_tables: HashSet<(Arc<str>, Arc<str>)>,
    /// The status-interval clamp was already logged at warn.
    clamp_warned: bool,
}

/// One connection's worth of streaming.
struct Session<'a> {
    options: &'a CaptureOptions,
    memory: &'a mut Memory,
    made_progress: bool,
}

impl Session<'_> {
    async fn stream<S: Sink>(
        &mut self,
        sink: &mut S,
        shutdown: &CancellationToken,
    ) -> Result<(), CaptureError> {
        let (catalog, mut decoder, mut stream) = self.open(sink).await?;
        // Type oids already looked up in this session: a Type message is
        // sent again with every Relation message that uses the type.
        let mut types_looked_up: HashSet<u32> = HashSet::new();
        // Windows end with the connection (why that is safe: backfill.rs).
        let mut backfill = Backfill::new(&self.options.tables);

        let mut in_transaction = false;
        // End of the last transaction handed to the sink, and whether the
        // sink has made it durable: when both hold and no transaction is
        // open, a keepalive's position is safe to confirm too (all WAL before
        // it was either sent to us or touched none of our tables), which
        // keeps an idle slot from retaining WAL forever.
        let mut last_end: Option<Lsn> = None;
        let mut durable: Option<Lsn> = self.memory.flushed;

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
                                    backfill.observe(&event);
                                    sink.send(event).await.map_err(|e| CaptureError::Sink(Box::new(e)))?;
                                }
                                Decoded::Message(message) => {
                                    send_chunk(sink, backfill.on_message(&mut decoder, &message)).await?
                                }
                                Decoded::Truncate { events, filtered } => {
                                    for event in events {
                                        backfill.observe(&event);
                                        sink.send(event).await.map_err(|e| CaptureError::Sink(Box::new(e)))?;
                                    }
                                    for _ in filtered {
                                        sink.filtered(Op::Truncate);
                                    }
                                }
                                Decoded::Filtered { op, .. } => sink.filtered(op),
                                Decoded::Commit(commit) => {
                                    in_transaction = false;
                                    last_end = Some(commit.end_lsn);
                                    self.made_progress = true;
                                    sink.end_transaction(commit.end_lsn)
                                        .await
                                        .map_err(|e| CaptureError::Sink(Box::new(e)))?;
                                }
                                Decoded::Relation(relation) => {
                                    let table = format!("{}.{}", relation.schema, relation.table);
                                    if !relation.captured {
                                        self.note_filtered(&relation, &table);
                                        continue;
                                    }
                                    // Every time: the primary key may have been
                                    // dropped or changed since the last one.
                                    let key = catalog.primary_key(relation.oid).await?;
                                    debug!(table, replica_identity = %relation.replica_identity, primary_key = ?key, "relation");
                                    decoder.set_key_columns(relation.oid, key);
                                }
                                Decoded::Type { oid } => {
                                    // A domain created since we connected: Type
                                    // comes before the Relation that uses it.
                                    if types_looked_up.insert(oid) {
                                        resolve_type(&catalog, &mut decoder, oid).await?;
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

    /// Connects the catalog and the replication stream, tells the sink the
    /// stream's source, and starts replication where the sink's durable
    /// position (or the requested start) is.
    async fn open<S: Sink>(
        &mut self,
        sink: &mut S,
    ) -> Result<(Catalog, Decoder, ReplicationStream), CaptureError> {
        let options = self.options;
        let catalog = Catalog::connect_on(&options.pg, &options.tasks).await?;
        let mut decoder = Decoder::new();
        decoder.set_tables(
            options
                .tables
                .iter()
                .map(|t| (t.schema.clone(), t.table.clone())),
        );
        decoder.set_type_aliases(catalog.domain_base_types().await?);
        let mut client = ReplicationClient::connect(&options.pg, &options.application_name).await?;
        client.set_tasks(&options.tasks);
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
        let status_interval = self.status_interval(&mut client).await?;
        if options.create_temporary_slot {
            client.create_slot(&options.slot, true).await?;
        }
        let stream = client
            .start_replication(StartOptions {
                slot: options.slot.clone(),
                start: options.start.max(self.memory.flushed.unwrap_or(Lsn::ZERO)),
                publications: options.publications.clone(),
                status_interval,
                feedback_interval: options.feedback_interval.min(status_interval),
            })
            .await?;
        info!(slot = %options.slot, "streaming changes");
        options.report(StreamState::Streaming);
        if let Some(lsn) = self.memory.flushed {
            if options.advance_slot {
                stream.set_durable(lsn);
            }
        }
        Ok((catalog, decoder, stream))
    }

    fn confirm(&mut self, stream: &ReplicationStream, position: Lsn) {
        if !self.options.advance_slot {
            return;
        }
        if self.memory.flushed.is_none_or(|f| position > f) {
            stream.set_durable(position);
            self.memory.flushed = Some(position);
        }
    }

    /// The configured status interval, clamped below the
    /// `wal_sender_timeout` of this very walsender (warned about once).
    async fn status_interval(
        &mut self,
        client: &mut ReplicationClient,
    ) -> Result<Duration, CaptureError> {
        let configured = self.options.status_interval;
        // Asked on the replication connection itself: role, database and
        // URL `options` settings all apply to it. pg_settings gives
        // milliseconds whatever unit SHOW would print.
        let rows = client
            .simple_query("SELECT setting FROM pg_settings WHERE name = 'wal_sender_timeout'")
            .await?;
        let millis = rows
            .first()
            .and_then(|row| row.first())
            .and_then(|value| value.as_deref())
            .and_then(|text| text.parse::<u64>().ok());
        let Some(millis) = millis else {
            warn!(rows = ?rows, "cannot read wal_sender_timeout; keeping postgres.status_interval_ms as configured");
            return Ok(configured);
        };
        let timeout = Duration::from_millis(millis);
        let Some(clamped) = bounded_status_interval(configured, timeout) else {
            return Ok(configured);
        };
        if !std::mem::replace(&mut self.memory.clamp_warned, true) {
            warn!(
                status_interval_ms = configured.as_millis() as u64,
                wal_sender_timeout_ms = timeout.as_millis() as u64,
                using_ms = clamped.as_millis() as u64,
                "postgres.status_interval_ms is not below the server's wal_sender_timeout; \
                 using half the timeout instead (set postgres.status_interval_ms lower to silence this)"
            );
        }
        Ok(clamped)
    }

    /// Logs a table outside `postgres.tables` once per process at info
    /// (again at debug on later Relation messages).
    fn note_filtered(&mut self, relation: &RelationInfo, table: &str) {
        let name = (relation.schema.clone(), relation.table.clone());
        if self.memory.filtered_tables.insert(name) {
            info!(
                table,
                publications = ?self.options.publications,
                "the publication sends changes of a table outside postgres.tables; \
                 they are filtered out (narrow the publication to stop sending them: see `walcast check`)"
            );
        } else {
            debug!(
                table,
                "filtering changes of a table outside postgres.tables"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::PgTimestamp;

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

    #[tokio::test]
    async fn metered_sink_counts_what_it_passes_on() {
        let stats = CaptureStats::default();
        let mut inner = Immediate::default();
        let mut sink = Metered::new(&mut inner, stats.clone());
        let two_seconds_ago = PgTimestamp(PgTimestamp::now().0 - 2_000_000);
        sink.send(ChangeEvent::bare("orders", Op::Insert, two_seconds_ago))
            .await
            .unwrap();
        sink.send(ChangeEvent::bare("orders", Op::Insert, two_seconds_ago))
            .await
            .unwrap();
        sink.send(ChangeEvent::bare(
            "items",
            Op::Delete,
            PgTimestamp(i64::MAX),
        ))
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
        assert_eq!(lag.count(), 3);
        assert!(lag.sum() >= 4.0, "{lag:?}");
    }

    #[test]
    fn status_interval_stays_below_wal_sender_timeout() {
        let ten = Duration::from_secs(10);
        assert_eq!(bounded_status_interval(ten, Duration::from_secs(60)), None);
        assert_eq!(
            bounded_status_interval(ten, Duration::ZERO),
            None,
            "disabled"
        );
        assert_eq!(
            bounded_status_interval(ten, ten),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            bounded_status_interval(ten, Duration::from_secs(4)),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            bounded_status_interval(ten, Duration::from_millis(1)),
            Some(Duration::from_millis(1))
        );
    }

    #[tokio::test]
    async fn metered_sink_counts_filtered_changes_by_op() {
        let stats = CaptureStats::default();
        let mut inner = Immediate::default();
        let mut sink = Metered::new(&mut inner, stats.clone());
        sink.filtered(Op::Insert);
        sink.filtered(Op::Insert);
        sink.filtered(Op::Truncate);
        assert_eq!(stats.filtered(), [(Op::Insert, 2), (Op::Truncate, 1)]);
        assert!(inner.sent.is_empty());
        assert!(stats.decoded().is_empty());
    }

    #[test]
    fn reconnect_backoff_starts_at_200_ms() {
        let backoff = reconnect_backoff(Duration::from_secs(5));
        assert_eq!(backoff.ceiling(0), Duration::from_millis(200));
        assert_eq!(backoff.ceiling(10), Duration::from_secs(5));
    }
}
