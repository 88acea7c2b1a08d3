//! Consumer: this gateway's RabbitMQ queue → the fan-out hub.
//!
//! Each gateway declares the exchange (durable topic, as the publisher
//! does) and its **own** durable queue (`RabbitConfig::queue_name`), bound
//! with `#`, so every gateway sees every change. Deliveries are parsed into
//! a [`Change`] (only the routing header is read; the body's bytes are kept)
//! and handed to [`Hub::deliver`]; the delivery is acked only after that
//! returns, i.e. once the change is in the Socket.IO queues (deliveries that
//! are already waiting are handed over first and acked together, with one
//! `multiple` ack, instead of one awaited ack each).
//!
//! # Dead letters
//!
//! Only messages with `app_id=walcast`, an `x-walcast-source` header and a
//! change event for a body reach the hub (contract section 2). Anything
//! else is published, unchanged (body, routing key, properties), to the
//! dead-letter exchange `rabbitmq.dead_letter` (`walcast.dead`: fanout,
//! durable, with a durable queue of the same name bound to it) with header
//! `x-walcast-reason` = [`DeadReason`], and acked only once the broker has
//! confirmed the dead letter (a channel in confirm mode), so it is never
//! lost and never blocks the queue. With `rabbitmq.source` set, a message
//! from any other source is dead-lettered too (`foreign_source`); unpinned,
//! the hub follows the newest source (see `fanout::Hub`). Dead letters are
//! counted by reason and logged at warn (at most one line a second, with
//! how many were not logged). `walcast dlq list|purge` shows and clears the
//! queue.
//!
//! With a replay log, a batch is acked only once the hub's log writer has
//! written every change of it ([`Hub::wait_logged`]); a change the log
//! cannot take is not acked: the session ends and the broker delivers it
//! again after the reconnect (an unwritable disk becomes backpressure, never
//! a hole in the history).
//!
//! # History start
//!
//! With [`Consumer::with_history_start`], once the queue is declared and
//! bound (so every later commit is routed to it) the consumer takes
//! `pg_current_snapshot()` from Postgres and gives it to the hub as the
//! start of its history, which lets snapshot clients hand off before the
//! first change arrives (see `fanout::ReplayBuffer`). It does so in a task
//! beside consuming, retrying with backoff while Postgres is down; until it
//! succeeds snapshot clients get `resync`. A hub whose persisted history
//! already has a start keeps it. Before declaring, the consumer checks that
//! its queue exists; if it does not (first start, or someone deleted it),
//! changes may have been published that this gateway never gets, so it
//! restarts the hub's history first.
//!
//! # One consumer per queue
//!
//! On a classic queue the consumer is **exclusive** (`basic.consume` with
//! `exclusive`); a quorum queue, which ignores exclusivity, is declared with
//! `x-single-active-consumer` instead, and a second gateway on it waits as a
//! standby. Two gateways on one queue would otherwise each get half of the
//! changes and neither would notice (the default queue name is per hostname,
//! so two gateways on one host share it unless `rabbitmq.queue` is set). A
//! gateway whose classic queue is taken does not consume at all: the
//! broker's refusal becomes [`ConsumerError::QueueInUse`], which is logged
//! as an error naming the fix, shown on `/readyz` as the state
//! `queue_in_use` (the text, [`ConsumerStatus::refused`], goes to the log
//! only) and retried with
//! backoff, so a gateway started while its predecessor is still stopping
//! (a rolling restart) takes the queue over once the predecessor's
//! connection is gone. An exclusive consumer dies with its connection, so a
//! reconnect after a lost connection is refused by its own ghost only
//! until RabbitMQ notices that the old connection is dead: at once when
//! the TCP connection was closed, after the heartbeat timeout when the
//! network path silently died (set `?heartbeat=10` on `rabbitmq.url` to
//! shorten that). The ghost held this queue's unacked deliveries until
//! then anyway; they are redelivered when it goes.
//!
//! When the connection fails, or the consuming channel does (its delivery
//! stream ends or errs), the session ends and the consumer reconnects with
//! jittered exponential backoff (capped at `max_backoff_ms`). A channel
//! error that lapin reports on the connection's event stream while the
//! connection is still connected (such as the passive declare's 404 on a
//! gateway's first start, which closes only that channel) is logged at
//! debug and does not end the session. Deliveries that were not acked
//! before a failure cannot be acked on the new channel; the broker
//! redelivers them and the hub drops them as duplicates. On shutdown it
//! stops consuming and closes the connection; unacked deliveries go back to
//! the queue.
//!
//! It does not publish, and it knows nothing about sockets.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Acker, BasicProperties, Channel, Connection, Event, ExchangeKind};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn, Instrument};

use crate::amqp::{self, AmqpError, Connected, Endpoint};
use crate::config::{redact_url, QueueType, RabbitConfig};
use crate::fanout::{
    Change, DeliverError, Delivered, Hub, ParseSnapshotError, ReplayLogError, Snapshot,
};
use crate::retry::Backoff;

/// How long connecting to Postgres for the history start may take.
const PG_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a standby gateway (quorum queue, single active consumer)
/// checks whether it has become the active one.
const STANDBY_PROBE_INTERVAL: Duration = Duration::from_secs(2);
/// First reconnect delay; doubles per failed attempt up to `max_backoff_ms`.
const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait for an ack to be sent, or for a `connection.close`: on a
/// connection that died under them, lapin may never answer either, and a
/// consumer waiting for it would stall for good.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a consuming session ended. Every one of them is retried: a broker
/// restart, a network cut and a deleted queue all heal by reconnecting;
/// the ones an operator must fix say so in their message.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error(transparent)]
    Connect(#[from] AmqpError),
    #[error("cannot declare {what} {name:?}: {source} (if it exists with other settings, delete it or fix rabbitmq.exchange / rabbitmq.queue / rabbitmq.queue_expires_ms)")]
    Declare {
        what: &'static str,
        name: String,
        source: lapin::Error,
    },
    #[error("queue {queue:?} exists with other arguments than this gateway declares (x-queue-type = {queue_type:?}{expires}) (RabbitMQ: {source}); set rabbitmq.queue_type (and rabbitmq.queue_expires_ms) to what the queue has, or delete the queue (rabbitmqctl delete_queue {queue}; browsers then resync) so that it is declared again")]
    QueueMismatch {
        queue: String,
        queue_type: &'static str,
        expires: String,
        source: lapin::Error,
    },
    #[error("RabbitMQ channel failed: {0}")]
    Channel(#[source] lapin::Error),
    #[error("the RabbitMQ connection ended")]
    ConnectionLost,
    #[error("RabbitMQ did not take an ack or reject within {IO_TIMEOUT:?}; the connection is presumed dead")]
    AckTimeout,
    #[error("RabbitMQ ended the consumer (queue deleted or consumer cancelled)")]
    Cancelled,
    #[error("queue {queue:?} is already consumed by another gateway, or by this gateway's previous connection until RabbitMQ notices it is dead (heartbeat timeout) (RabbitMQ: {source}); each gateway needs a queue of its own: set rabbitmq.queue (WALCAST_RABBITMQ_QUEUE) to a distinct name per gateway")]
    QueueInUse { queue: String, source: lapin::Error },
    #[error(transparent)]
    Deliver(#[from] DeliverError),
    #[error(
        "the gateway queue was (re)created but the replay history cannot record a restart: {0}"
    )]
    HistoryRestart(#[source] ReplayLogError),
    #[error("cannot dead-letter a message to exchange {exchange:?}: {detail}; it is not acked (RabbitMQ delivers it again)")]
    DeadLetter { exchange: String, detail: String },
}

/// Why a message went to the dead letters (`x-walcast-reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadReason {
    /// `app_id` is not `walcast`: not from walcast's capture.
    ForeignAppId,
    /// No `x-walcast-source` header: the stream cannot be told.
    MissingSource,
    /// A source other than the pinned `rabbitmq.source`.
    ForeignSource,
    /// The body is not a change event.
    MalformedBody,
}

impl DeadReason {
    pub const ALL: [DeadReason; 4] = [
        DeadReason::ForeignAppId,
        DeadReason::MissingSource,
        DeadReason::ForeignSource,
        DeadReason::MalformedBody,
    ];

    /// The `x-walcast-reason` header and metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            DeadReason::ForeignAppId => "foreign_app_id",
            DeadReason::MissingSource => "missing_source",
            DeadReason::ForeignSource => "foreign_source",
            DeadReason::MalformedBody => "malformed_body",
        }
    }
}

/// Header carrying the stream's source (contract section 2).
pub const SOURCE_HEADER: &str = crate::publisher::encoder::SOURCE_HEADER;
/// Header carrying why a message was dead-lettered.
pub const REASON_HEADER: &str = "x-walcast-reason";

/// Why the history start snapshot could not be taken; always retried.
#[derive(Debug, thiserror::Error)]
pub enum HistoryStartError {
    #[error("cannot connect to Postgres: {0}")]
    Connect(#[source] tokio_postgres::Error),
    #[error("connecting to Postgres timed out after {PG_CONNECT_TIMEOUT:?}")]
    ConnectTimeout,
    #[error("SELECT pg_current_snapshot() failed: {0} (it needs PostgreSQL 13 or later)")]
    Query(#[source] tokio_postgres::Error),
    #[error(transparent)]
    Parse(#[from] ParseSnapshotError),
}

#[derive(Debug, Default)]
struct Counters {
    consuming: AtomicBool,
    sessions: AtomicU64,
    received: AtomicU64,
    acked: AtomicU64,
    rejected: AtomicU64,
    redelivered: AtomicU64,
    /// Consuming a quorum queue as a waiting single active consumer.
    standby: AtomicBool,
    /// Dead letters, by [`DeadReason::ALL`] index.
    dead_letters: [AtomicU64; 4],
    /// Why the broker refused the last attempt to consume, while it does.
    refused: std::sync::Mutex<Option<String>>,
}

/// A cloneable view of the consumer's state, for readiness and metrics.
#[derive(Debug, Clone, Default)]
pub struct ConsumerStatus(Arc<Counters>);

impl ConsumerStatus {
    /// Whether a consuming session is up.
    pub fn is_consuming(&self) -> bool {
        self.0.consuming.load(Ordering::Acquire)
    }
    /// Whether this gateway consumes a quorum queue but is not its single
    /// active consumer (another gateway is): it gets no deliveries and
    /// takes over when the active one goes.
    pub fn is_standby(&self) -> bool {
        self.0.standby.load(Ordering::Acquire)
    }
    /// Sessions started (1 + reconnects that got as far as consuming).
    pub fn sessions(&self) -> u64 {
        self.0.sessions.load(Ordering::Relaxed)
    }
    pub fn received(&self) -> u64 {
        self.0.received.load(Ordering::Relaxed)
    }
    pub fn acked(&self) -> u64 {
        self.0.acked.load(Ordering::Relaxed)
    }
    /// Messages dead-lettered for `reason`.
    pub fn dead_letters(&self, reason: DeadReason) -> u64 {
        let i = DeadReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        self.0.dead_letters[i].load(Ordering::Relaxed)
    }
    /// Deliveries not taken by the hub: dead-lettered (any reason).
    pub fn rejected(&self) -> u64 {
        self.0.rejected.load(Ordering::Relaxed)
    }
    /// Deliveries the broker flagged as redelivered.
    pub fn redelivered(&self) -> u64 {
        self.0.redelivered.load(Ordering::Relaxed)
    }
    /// Why the broker refuses to let this gateway consume (its queue is
    /// taken by another gateway, or exists with another type), while it
    /// does; `None` once consuming.
    pub fn refused(&self) -> Option<String> {
        self.lock_refused().clone()
    }

    fn set_refused(&self, reason: Option<String>) {
        *self.lock_refused() = reason;
    }

    fn lock_refused(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.0.refused.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Consumes this gateway's queue into a [`Hub`].
pub struct Consumer {
    config: RabbitConfig,
    queue: String,
    hub: Hub,
    status: ConsumerStatus,
    fault: Option<(u64, Fault)>,
    history_pg: Option<crate::pg::PgConfig>,
    /// Dead letters not logged since the last warning, and when that was.
    dead_log: (u64, Option<std::time::Instant>),
}

impl Consumer {
    pub fn new(config: RabbitConfig, hub: Hub) -> Consumer {
        let queue = config.queue_name();
        Consumer {
            config,
            queue,
            hub,
            status: ConsumerStatus::default(),
            fault: None,
            history_pg: None,
            dead_log: (0, None),
        }
    }

    /// Takes the hub's history start from this Postgres (the captured
    /// database, `Config::pg_config()`) once the queue is bound; see the
    /// module doc. Without it snapshot clients get `resync` until the hub
    /// has a persisted start.
    pub fn with_history_start(mut self, pg: impl Into<crate::pg::PgConfig>) -> Consumer {
        self.history_pg = Some(pg.into());
        self
    }

    pub fn status(&self) -> ConsumerStatus {
        self.status.clone()
    }

    /// The error for a queue that exists with other arguments (406).
    fn queue_mismatch(&self, source: lapin::Error) -> ConsumerError {
        ConsumerError::QueueMismatch {
            queue: self.queue.clone(),
            queue_type: self.config.queue_type.as_str(),
            expires: match self.config.queue_expires_ms {
                0 => String::new(),
                ms => format!(", x-expires = {ms}"),
            },
            source,
        }
    }

    /// The queue this gateway consumes.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// Fault injection for tests: after handing the `n`-th delivery (from
    /// start, 1-based) to the hub, drop the connection instead of acking it,
    /// as a network cut between the emit and the ack would. The broker then
    /// redelivers it and everything after it.
    #[doc(hidden)]
    pub fn drop_connection_before_ack(mut self, n: u64) -> Consumer {
        self.fault = Some((n, Fault::DropConnection));
        self
    }

    /// Fault injection for tests: after handing the `n`-th delivery to the
    /// hub, end the process at once (exit code 137, no destructors, no
    /// ack), as a crash between the emit and the ack would.
    #[doc(hidden)]
    pub fn exit_process_before_ack(mut self, n: u64) -> Consumer {
        self.fault = Some((n, Fault::ExitProcess));
        self
    }

    /// Consumes until `shutdown` is cancelled, reconnecting on failure.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let url = redact_url(&self.config.url);
        let backoff = reconnect_backoff(&self.config);
        let mut attempt: u32 = 0;
        info!(%url, queue = %self.queue, exchange = %self.config.exchange, "consumer starting");
        loop {
            let span = tracing::info_span!("consume", queue = %self.queue);
            let result = self.session(&shutdown).instrument(span).await;
            self.status.0.consuming.store(false, Ordering::Release);
            self.status.0.standby.store(false, Ordering::Release);
            let consumed = match result {
                Ok(SessionEnd::Shutdown) => break,
                Ok(SessionEnd::Fault) => true,
                Err((e, consumed)) => {
                    // Shown on /readyz while it lasts; any other failure
                    // means the queue is not known to be taken any more.
                    self.status.set_refused(
                        matches!(
                            e,
                            ConsumerError::QueueInUse { .. } | ConsumerError::QueueMismatch { .. }
                        )
                        .then(|| e.to_string()),
                    );
                    if matches!(e, ConsumerError::QueueInUse { .. }) {
                        error!(error = %e, "not consuming; retrying until the queue is free");
                    } else if matches!(
                        e,
                        ConsumerError::Deliver(_) | ConsumerError::HistoryRestart(_)
                    ) {
                        error!(error = %e, "replay log unwritable; not acking, retrying");
                    } else if consumed {
                        warn!(error = %e, "consumer lost its RabbitMQ session; reconnecting");
                    } else if matches!(e, ConsumerError::Declare { .. }) {
                        error!(error = %e, "cannot set up the gateway queue; retrying");
                    } else {
                        warn!(error = %e, "cannot start consuming; retrying");
                    }
                    consumed
                }
            };
            // A session that got to consuming resets the backoff.
            attempt = if consumed {
                0
            } else {
                attempt.saturating_add(1)
            };
            let delay = backoff.delay(attempt);
            debug!(?delay, attempt, "consumer reconnect delay");
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
            }
        }
        info!("consumer stopped");
    }

    /// One connection: set up, consume until failure or shutdown.
    /// The error carries whether consuming had started.
    async fn session(
        &mut self,
        shutdown: &CancellationToken,
    ) -> Result<SessionEnd, (ConsumerError, bool)> {
        let endpoint = Endpoint::new(&self.config).map_err(|e| (e.into(), false))?;
        let name = format!("walcast gateway {}", self.queue);
        let connection = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Ok(SessionEnd::Shutdown),
            result = amqp::connect(&endpoint, &name) => match result {
                Err(e) => return Err((e.into(), false)),
                Ok(Connected { connection, url }) => {
                    debug!(%url, "connected to rabbitmq");
                    connection
                }
            },
        };
        // Subscribed before anything can go wrong: lapin only queues
        // connection events while someone listens. A lost connection shows
        // here even when no delivery stream notices it.
        let mut events = Box::pin(connection.events_listener());
        let result = self.consume(&connection, &mut events, shutdown).await;
        // Closing returns unacked deliveries to the queue; on a dead
        // connection this fails or never answers, which is fine.
        let close = connection.close(200, ShortString::from("walcast gateway stopping"));
        if tokio::time::timeout(IO_TIMEOUT, close).await.is_err() {
            debug!("connection.close did not answer; dropping the connection");
        }
        result
    }

    async fn consume(
        &mut self,
        connection: &Connection,
        events: &mut (impl futures_util::Stream<Item = Event> + Unpin),
        shutdown: &CancellationToken,
    ) -> Result<SessionEnd, (ConsumerError, bool)> {
        let setup = |e| (ConsumerError::Channel(e), false);
        let mut channel = connection.create_channel().await.map_err(setup)?;
        let exchange = self.config.exchange.as_str();
        amqp::declare_exchange(&channel, exchange)
            .await
            .map_err(|source| declare("exchange", exchange, source))?;
        let queue = self.queue.as_str();
        let existed = amqp::queue_exists(&channel, queue)
            .await
            .map_err(|source| declare("queue", queue, source))?;
        if !existed {
            // What was published while the queue did not exist is lost to
            // this gateway: its history cannot reach across.
            self.hub
                .restart_history()
                .await
                .map_err(|e| (ConsumerError::HistoryRestart(e), false))?;
            // The broker closed the channel on the 404.
            channel = connection.create_channel().await.map_err(setup)?;
        }
        let others = amqp::declare_gateway_queue(&channel, queue, &self.config)
            .await
            .map_err(|source| {
                if amqp::is_reply(&source, 406) {
                    (self.queue_mismatch(source), false)
                } else {
                    declare("queue", queue, source)
                }
            })?;
        channel
            .queue_bind(
                ShortString::from(queue),
                ShortString::from(exchange),
                ShortString::from("#"),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|source| declare("binding of queue", queue, source))?;
        let dead_channel = self.declare_dead_letter(connection).await?;
        channel
            .basic_qos(self.config.prefetch.max(1), BasicQosOptions::default())
            .await
            .map_err(setup)?;
        let mut deliveries = channel
            .basic_consume(
                ShortString::from(queue),
                ShortString::from(""),
                // See the module doc: one gateway per queue. Quorum queues
                // refuse exclusive consumers; their single active consumer
                // argument does the same job.
                BasicConsumeOptions {
                    exclusive: self.config.queue_type == QueueType::Classic,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|source| {
                if amqp::is_reply(&source, 403) || amqp::is_reply(&source, 405) {
                    (
                        ConsumerError::QueueInUse {
                            queue: queue.to_owned(),
                            source,
                        },
                        false,
                    )
                } else {
                    setup(source)
                }
            })?;

        self.status.set_refused(None);
        self.status.0.sessions.fetch_add(1, Ordering::Relaxed);
        // Ends the history start and standby tasks with this session.
        let session = shutdown.child_token();
        let _session_guard = session.clone().drop_guard();
        if self.config.queue_type == QueueType::Quorum && others > 0 {
            // A single active consumer that is not alone may be waiting:
            // the broker does not say, so it is probed.
            self.status.0.standby.store(true, Ordering::Release);
            warn!(
                consumers = others + 1,
                "queue has another consumer: this gateway is a standby (single active consumer) until it goes"
            );
            let probe = connection.create_channel().await.map_err(setup)?;
            tokio::spawn(
                watch_standby(
                    probe,
                    self.queue.clone(),
                    self.status.clone(),
                    session.clone(),
                )
                .in_current_span(),
            );
        }
        self.status.0.consuming.store(true, Ordering::Release);
        info!(
            prefetch = self.config.prefetch,
            queue_type = self.config.queue_type.as_str(),
            "consuming"
        );
        if let (Some(pg), Some(generation)) = (&self.history_pg, self.hub.history_start_needed()) {
            tokio::spawn(
                take_history_start(
                    pg.clone(),
                    self.hub.clone(),
                    generation,
                    reconnect_backoff(&self.config),
                    session,
                )
                .in_current_span(),
            );
        }
        let failed = |e| (ConsumerError::Channel(e), true);
        // Acks are batched: while more deliveries are already waiting they
        // are handed to the hub first, then one `multiple` ack covers the
        // batch. A batch never waits for a delivery that has not arrived,
        // so the ack follows the last hand-over at once.
        let mut batch = AckBatch::default();
        loop {
            let ready = if batch.len < MAX_ACK_BATCH {
                deliveries.next().now_or_never()
            } else {
                None
            };
            let next = match ready {
                Some(next) => next,
                None => {
                    if batch.len > 0 {
                        // Acked only once the replay log holds them.
                        self.hub
                            .wait_logged()
                            .await
                            .map_err(|e| (e.into(), false))?;
                    }
                    let acked = batch.flush().await.map_err(|e| (e, true))?;
                    self.status.0.acked.fetch_add(acked, Ordering::Relaxed);
                    loop {
                        tokio::select! {
                            biased;
                            _ = shutdown.cancelled() => return Ok(SessionEnd::Shutdown),
                            event = events.next() => match event {
                                // lapin reports channel errors here too, e.g.
                                // the 404 of the passive declare above: only a
                                // connection in error ends the session (the
                                // delivery stream reports its own channel).
                                Some(Event::Error(e)) if connection.status().connected() => {
                                    debug!(error = %e, "rabbitmq channel error on a live connection")
                                }
                                Some(Event::Error(e)) => return Err(failed(e)),
                                None => return Err((ConsumerError::ConnectionLost, true)),
                                Some(other) => debug!(event = ?other, "rabbitmq connection event"),
                            },
                            next = deliveries.next() => break next,
                        }
                    }
                }
            };
            let mut delivery = match next {
                None => return Err((ConsumerError::Cancelled, true)),
                Some(Err(e)) => return Err(failed(e)),
                Some(Ok(delivery)) => delivery,
            };
            let received = self.status.0.received.fetch_add(1, Ordering::Relaxed) + 1;
            self.status.0.standby.store(false, Ordering::Release);
            if delivery.redelivered {
                self.status.0.redelivered.fetch_add(1, Ordering::Relaxed);
            }
            let source = match classify(&delivery, &self.config.source) {
                Ok(source) => source,
                Err(reason) => {
                    self.dead_letter(&dead_channel, delivery, reason, None, &mut batch)
                        .await
                        .map_err(|e| (e, true))?;
                    continue;
                }
            };
            let change = match Change::parse_or_return(std::mem::take(&mut delivery.data)) {
                Ok(change) => change,
                Err((e, body)) => {
                    self.hub.stats().record_malformed();
                    delivery.data = body;
                    let error = e.to_string();
                    self.dead_letter(
                        &dead_channel,
                        delivery,
                        DeadReason::MalformedBody,
                        Some(&error),
                        &mut batch,
                    )
                    .await
                    .map_err(|e| (e, true))?;
                    continue;
                }
            };
            let id = change.id;
            // On error the delivery is not acked: the broker gets
            // it back when this session closes.
            match self
                .hub
                .deliver(change, &source)
                .map_err(|e| (e.into(), false))?
            {
                Delivered::Fanned { sockets } => {
                    debug!(%id, sockets, "change fanned out");
                }
                Delivered::Duplicate => {
                    debug!(%id, redelivered = delivery.redelivered, "duplicate change acked");
                }
            }
            match self.fault {
                Some((n, Fault::DropConnection)) if n == received => {
                    self.fault = None;
                    warn!(%id, "fault injection: dropping the connection before the ack");
                    return Ok(SessionEnd::Fault);
                }
                Some((n, Fault::ExitProcess)) if n == received => {
                    // Between the log and the ack: the change is on disk
                    // (the writer thread said so), the broker still has it.
                    let _ = self.hub.wait_logged().await;
                    warn!(%id, "fault injection: ending the process after the log, before the ack");
                    std::process::exit(137);
                }
                _ => {}
            }
            batch.push(delivery.acker);
        }
    }

    /// Declares the dead-letter exchange and queue (see the module doc) and
    /// returns a channel in confirm mode to publish dead letters on.
    async fn declare_dead_letter(
        &self,
        connection: &Connection,
    ) -> Result<Channel, (ConsumerError, bool)> {
        let setup = |e| (ConsumerError::Channel(e), false);
        let name = self.config.dead_letter.as_str();
        let channel = connection.create_channel().await.map_err(setup)?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(setup)?;
        channel
            .exchange_declare(
                ShortString::from(name),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|source| declare("dead-letter exchange", name, source))?;
        // As replicated as the gateway's own queue: a classic dead-letter
        // queue lives on one node, and while that node is down it cannot
        // even be declared, which would stop every gateway of a cluster.
        let mut arguments = FieldTable::default();
        arguments.insert(
            ShortString::from("x-queue-type"),
            AMQPValue::LongString(LongString::from(self.config.queue_type.as_str())),
        );
        channel
            .queue_declare(
                ShortString::from(name),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                arguments,
            )
            .await
            .map_err(|source| declare("dead-letter queue", name, source))?;
        channel
            .queue_bind(
                ShortString::from(name),
                ShortString::from(name),
                ShortString::from(""),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|source| declare("binding of dead-letter queue", name, source))?;
        Ok(channel)
    }

    /// Publishes `delivery` to the dead letters with its reason, waits for
    /// the broker's confirm, then adds it to the ack batch. Any failure ends
    /// the session without acking it.
    async fn dead_letter(
        &mut self,
        channel: &Channel,
        delivery: Delivery,
        reason: DeadReason,
        error: Option<&str>,
        batch: &mut AckBatch,
    ) -> Result<(), ConsumerError> {
        let exchange = self.config.dead_letter.clone();
        let failed = |detail: String| ConsumerError::DeadLetter {
            exchange: exchange.clone(),
            detail,
        };
        let mut headers = delivery.properties.headers().clone().unwrap_or_default();
        headers.insert(
            ShortString::from(REASON_HEADER),
            AMQPValue::LongString(LongString::from(reason.as_str())),
        );
        let properties: BasicProperties = delivery.properties.clone().with_headers(headers);
        let publish = async {
            channel
                .basic_publish(
                    ShortString::from(exchange.as_str()),
                    delivery.routing_key.clone(),
                    // Returned if no queue is bound (someone deleted
                    // walcast.dead): then it is not acked either.
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &delivery.data,
                    properties,
                )
                .await?
                .await
        };
        let confirm = match tokio::time::timeout(IO_TIMEOUT, publish).await {
            Err(_) => return Err(failed(format!("no confirm within {IO_TIMEOUT:?}"))),
            Ok(Err(e)) => return Err(failed(e.to_string())),
            Ok(Ok(confirm)) => confirm,
        };
        if !confirm.is_ack() {
            return Err(failed("the broker nacked it".into()));
        }
        if confirm.take_message().is_some() {
            return Err(failed(
                "no queue is bound to it (the gateway declares the queue again when it reconnects)"
                    .into(),
            ));
        }
        let i = DeadReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        self.status.0.dead_letters[i].fetch_add(1, Ordering::Relaxed);
        self.status.0.rejected.fetch_add(1, Ordering::Relaxed);
        let now = std::time::Instant::now();
        let (suppressed, last) = &mut self.dead_log;
        if last.is_some_and(|at| now.duration_since(at) < Duration::from_secs(1)) {
            *suppressed += 1;
        } else {
            warn!(
                reason = reason.as_str(),
                message_id = ?delivery.properties.message_id().as_ref().map(|m| m.as_str()),
                routing_key = %delivery.routing_key,
                app_id = ?delivery.properties.app_id().as_ref().map(|a| a.as_str()),
                source = ?source_header(&delivery.properties),
                error,
                dead_letter = %exchange,
                not_logged_since_last = *suppressed,
                "message dead-lettered: the gateway does not take it (see walcast dlq list)"
            );
            *suppressed = 0;
            *last = Some(now);
        }
        batch.push(delivery.acker);
        Ok(())
    }
}

/// The source of a message the hub may take, or why it goes to the dead
/// letters (all but a malformed body, which needs parsing).
fn classify(delivery: &Delivery, pinned: &str) -> Result<String, DeadReason> {
    let p = &delivery.properties;
    if p.app_id().as_ref().map(|a| a.as_str()) != Some(crate::publisher::encoder::APP_ID) {
        return Err(DeadReason::ForeignAppId);
    }
    let Some(source) = source_header(p).filter(|s| !s.is_empty()) else {
        return Err(DeadReason::MissingSource);
    };
    if !pinned.is_empty() && source != pinned {
        return Err(DeadReason::ForeignSource);
    }
    Ok(source)
}

/// The `x-walcast-source` header, if it is a string.
pub fn source_header(properties: &BasicProperties) -> Option<String> {
    let headers = properties.headers().as_ref()?;
    match headers.inner().get(SOURCE_HEADER)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// Deliveries handed to the hub in one batch, at most; their ack waits
/// for the batch. Well under any sensible prefetch, so the broker keeps
/// sending while a batch is acked.
const MAX_ACK_BATCH: u64 = 256;

/// Deliveries handed to the hub and not yet acked, acked together with
/// one `basic.ack(multiple)` on the last one's tag.
#[derive(Default)]
struct AckBatch {
    last: Option<Acker>,
    len: u64,
}

impl AckBatch {
    fn push(&mut self, acker: Acker) {
        self.last = Some(acker);
        self.len += 1;
    }

    /// Acks the batch; returns how many deliveries that covered.
    async fn flush(&mut self) -> Result<u64, ConsumerError> {
        let Some(last) = self.last.take() else {
            return Ok(0);
        };
        match tokio::time::timeout(IO_TIMEOUT, last.ack(BasicAckOptions { multiple: true })).await {
            Err(_) => Err(ConsumerError::AckTimeout),
            Ok(Err(e)) => Err(ConsumerError::Channel(e)),
            Ok(Ok(_)) => Ok(std::mem::take(&mut self.len)),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    DropConnection,
    ExitProcess,
}

enum SessionEnd {
    Shutdown,
    Fault,
}

/// Takes `pg_current_snapshot()` and offers it to the hub as the start of
/// the history at `generation`, retrying with backoff until it succeeds or
/// `cancel` fires (the session ended).
async fn take_history_start(
    pg: crate::pg::PgConfig,
    hub: Hub,
    generation: u64,
    backoff: Backoff,
    cancel: CancellationToken,
) {
    let mut attempt: u32 = 0;
    loop {
        let result = tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            result = current_snapshot(&pg) => result,
        };
        match result {
            Ok(snapshot) => {
                if !hub.offer_history_start(&snapshot, generation) {
                    debug!(%snapshot, "history start not needed any more");
                }
                return;
            }
            Err(e) => warn!(
                error = %e,
                attempt,
                "cannot take the history start from Postgres; retrying (until then snapshot clients get resync)"
            ),
        }
        attempt = attempt.saturating_add(1);
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff.delay(attempt)) => {}
        }
    }
}

async fn current_snapshot(pg: &crate::pg::PgConfig) -> Result<Snapshot, HistoryStartError> {
    let (client, connection) = tokio::time::timeout(PG_CONNECT_TIMEOUT, pg.connect())
        .await
        .map_err(|_| HistoryStartError::ConnectTimeout)?
        .map_err(HistoryStartError::Connect)?;
    let driver = tokio::spawn(connection);
    let row = client
        .query_one("SELECT pg_current_snapshot()::text", &[])
        .await
        .map_err(HistoryStartError::Query);
    drop(client);
    driver.await.ok();
    let text: String = row?.get(0);
    Ok(text.parse()?)
}

/// Watches a standby gateway's queue until this gateway is its single
/// active consumer: it received a delivery, or it is the queue's only
/// consumer. AMQP 0-9-1 does not announce the switch, so it polls.
async fn watch_standby(
    probe: lapin::Channel,
    queue: String,
    status: ConsumerStatus,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(STANDBY_PROBE_INTERVAL) => {}
        }
        if !status.is_standby() {
            return;
        }
        match amqp::consumer_count(&probe, &queue).await {
            Ok(consumers) if consumers <= 1 => {
                status.0.standby.store(false, Ordering::Release);
                info!("the other consumer is gone: this gateway is the active consumer");
                return;
            }
            Ok(_) => {}
            Err(e) => {
                debug!(error = %e, "standby probe failed; the session will notice");
                return;
            }
        }
    }
}

fn declare(what: &'static str, name: &str, source: lapin::Error) -> (ConsumerError, bool) {
    (
        ConsumerError::Declare {
            what,
            name: name.to_owned(),
            source,
        },
        false,
    )
}

/// The gateway's reconnect delays: from [`INITIAL_BACKOFF`], doubling,
/// capped at `max_backoff_ms`, jittered so that gateways that lost the
/// broker together do not reconnect in lockstep.
fn reconnect_backoff(config: &RabbitConfig) -> Backoff {
    Backoff::new(
        INITIAL_BACKOFF,
        Duration::from_millis(config.max_backoff_ms.max(1)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_backoff_starts_at_100_ms_and_stops_at_max_backoff_ms() {
        let config = RabbitConfig {
            max_backoff_ms: 30_000,
            ..RabbitConfig::default()
        };
        let backoff = reconnect_backoff(&config);
        assert_eq!(backoff.ceiling(0), Duration::from_millis(100));
        assert_eq!(backoff.ceiling(30), Duration::from_secs(30));
    }
}
