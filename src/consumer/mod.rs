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
//! The session and its reconnects live here; `topology` declares, `delivery`
//! consumes and hands over, `ack` batches acks, `dead_letter` parks what the
//! hub may not take, `history` takes the history start, and `status` is
//! what readiness and metrics see.
//!
//! It does not publish, and it knows nothing about sockets.

mod ack;
mod dead_letter;
mod delivery;
#[cfg(feature = "fault-injection")]
mod fault;
mod history;
mod status;
mod topology;

use std::time::Duration;

use futures_util::Stream;
use lapin::types::ShortString;
use lapin::{Connection, Event};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn, Instrument};

pub use dead_letter::{source_header, DeadReason, REASON_HEADER, SOURCE_HEADER};
pub use history::HistoryStartError;
pub use status::{ConsumerState, ConsumerStatus};

use crate::amqp::{self, AmqpError, Connected, Endpoint};
use crate::config::{redact_url, RabbitConfig};
use crate::fanout::{DeliverError, Hub, ReplayLogError};
use crate::retry::Backoff;

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

/// How a session failed, and so whether the reconnect backoff starts
/// over: it does after a session that got as far as consuming.
#[derive(Debug)]
enum SessionError {
    /// Consuming did not start: connecting, declaring, or the broker
    /// refusing the queue failed. The backoff grows.
    Setup(ConsumerError),
    /// A consuming session was lost (connection, channel, an ack, a dead
    /// letter). The backoff starts over.
    Lost(ConsumerError),
    /// Consuming had started but the replay log does not take changes, so
    /// nothing can be acked: the backoff grows as while setting up.
    Stalled(ConsumerError),
}

impl SessionError {
    /// Whether the session consumed and was then lost.
    fn consumed(&self) -> bool {
        matches!(self, SessionError::Lost(_))
    }

    fn error(&self) -> &ConsumerError {
        match self {
            SessionError::Setup(e) | SessionError::Lost(e) | SessionError::Stalled(e) => e,
        }
    }
}

/// Consumes this gateway's queue into a [`Hub`].
pub struct Consumer {
    config: RabbitConfig,
    queue: String,
    hub: Hub,
    status: ConsumerStatus,
    #[cfg(feature = "fault-injection")]
    fault: Option<(u64, fault::Fault)>,
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
            #[cfg(feature = "fault-injection")]
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

    /// The queue this gateway consumes.
    pub fn queue(&self) -> &str {
        &self.queue
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
            self.status.stopped();
            let consumed = match result {
                Ok(SessionEnd::Shutdown) => break,
                #[cfg(feature = "fault-injection")]
                Ok(SessionEnd::Fault) => true,
                Err(failure) => {
                    let consumed = failure.consumed();
                    let e = failure.error();
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
    async fn session(&mut self, shutdown: &CancellationToken) -> Result<SessionEnd, SessionError> {
        let endpoint = Endpoint::new(&self.config).map_err(|e| SessionError::Setup(e.into()))?;
        let name = format!("walcast gateway {}", self.queue);
        let connection = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Ok(SessionEnd::Shutdown),
            result = amqp::connect(&endpoint, &name) => match result {
                Err(e) => return Err(SessionError::Setup(e.into())),
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

    /// Declares the topology, starts consuming, and hands deliveries to the
    /// hub until the session fails or `shutdown`.
    async fn consume(
        &mut self,
        connection: &Connection,
        events: &mut (impl Stream<Item = Event> + Unpin),
        shutdown: &CancellationToken,
    ) -> Result<SessionEnd, SessionError> {
        let topology = self
            .declare_topology(connection)
            .await
            .map_err(SessionError::Setup)?;
        // Ends the history start and standby tasks with this session.
        let session = shutdown.child_token();
        let _session_guard = session.clone().drop_guard();
        let mut deliveries = self
            .start_consuming(connection, &topology, &session)
            .await
            .map_err(SessionError::Setup)?;
        let dead_letters = &topology.dead_letters;
        let end = self
            .deliver_all(connection, &mut deliveries, dead_letters, events, shutdown)
            .await;
        if matches!(end, Ok(SessionEnd::Shutdown)) {
            // A stop closes the channels before the connection. lapin
            // closes a dropped channel on its own; when the connection is
            // closing by then, that close fails and lapin logs it as a
            // connection error, at ERROR, on every clean stop.
            drop(deliveries);
            topology.close().await;
        }
        end
    }
}

enum SessionEnd {
    Shutdown,
    /// Fault injection dropped the connection (`fault.rs`).
    #[cfg(feature = "fault-injection")]
    Fault,
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
