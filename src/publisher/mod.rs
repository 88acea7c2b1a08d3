//! The RabbitMQ publisher: change events in, publisher-confirmed messages
//! out, and the WAL position that is safe to report to Postgres.
//!
//! [`Publisher`] implements [`Sink`] for `walcast run`. Each event is
//! encoded once ([`encoder`]), numbered, and handed to a background task
//! (`engine`) that publishes it to the durable topic exchange on a channel in
//! confirm mode (its writes in flight are `writes`). Up to
//! `rabbitmq.publish_window` messages and
//! `rabbitmq.publish_window_bytes` bytes may be unconfirmed at once
//! (`window`); [`Sink::send`] waits only when the window is full, which is
//! walcast's backpressure (the capture loop stops reading WAL meanwhile).
//!
//! Size: an event whose encoding exceeds `rabbitmq.max_event_bytes` is
//! published as the contract's `oversize` stub (`new`/`old` null, same
//! `id`), counted and logged; so is one the broker refuses as larger than
//! its `max_message_size` (406), once, instead of republishing it forever.
//!
//! Durability: [`Sink::end_transaction`] records which message closed each
//! transaction; [`Sink::durable`] yields the end LSN of the last transaction
//! all of whose messages, and all earlier ones, RabbitMQ has acked
//! ([`tracker`]). Never a position inside a transaction, never one before
//! its confirm.
//!
//! Failures: a nack, a failed publish, a lost channel or connection, a
//! broker restart: the task reconnects (jittered exponential backoff capped
//! at `rabbitmq.max_backoff_ms`), redeclares the exchange and republishes
//! every unconfirmed message in order. Consumers may see duplicates (same
//! `message_id`), never gaps. While the broker is down or blocked (resource
//! alarm), `send` waits once the window is full; memory stays bounded by the
//! window whatever the outage or the size of a transaction. Bad credentials,
//! a missing vhost or a mismatched exchange stop it with a
//! [`PublishError`] that says what to fix.
//!
//! Shutdown: `send` gives up (with [`PublishError::Shutdown`]) if shutdown is
//! requested while it waits for the window. [`Sink::drain`] waits for every
//! sent message to be confirmed; once shutdown is requested it waits at most
//! [`Publisher::set_drain_timeout`] (30 s by default) and then returns what is
//! durable. Nothing is lost either way: Postgres resends everything after the
//! last position walcast reported.
//!
//! This module does not bind queues, consume, or talk to Postgres; and it
//! publishes without `mandatory`, so an event that no queue is bound to is
//! dropped by the broker, as for any topic exchange.

pub mod encoder;
mod engine;
mod error;
mod link;
mod stats;
mod tracker;
mod unconfirmed;
mod window;
mod writes;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument};

use crate::amqp::Endpoint;
use crate::capture::Sink;
use crate::config::RabbitConfig;
use crate::event::{ChangeEvent, Lsn};

pub use encoder::{encode, encode_within, Encoded, Prepared};
pub use error::PublishError;
pub use stats::{LinkState, PublisherStats, RoutingKeyCounts, StatsSnapshot};

use engine::{Engine, Outgoing, Progress, Settings};
use tracker::Tracker;
use window::Window;

/// How long [`Sink::drain`] keeps waiting for confirms once shutdown has
/// been requested, unless [`Publisher::set_drain_timeout`] says otherwise.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Publishes change events to RabbitMQ with publisher confirms. See the
/// module documentation.
pub struct Publisher {
    outgoing: mpsc::UnboundedSender<Outgoing>,
    /// What may still be unconfirmed, in messages and bytes.
    window: Arc<Window>,
    /// `rabbitmq.max_event_bytes`.
    max_event_bytes: usize,
    progress: watch::Receiver<Progress>,
    tracker: Tracker,
    /// Sequence number of the last message sent (0: none yet).
    last_seq: u64,
    shutdown: CancellationToken,
    drain_timeout: Duration,
    stats: PublisherStats,
    task: Option<JoinHandle<()>>,
    /// `x-walcast-source` of the events being sent (see [`Sink::set_source`]).
    source: Option<String>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("last_seq", &self.last_seq)
            .field("confirmed", &self.progress.borrow().confirmed)
            .field("durable", &self.tracker.durable())
            .field("waiting_transactions", &self.tracker.waiting())
            .finish_non_exhaustive()
    }
}

impl Publisher {
    /// Connects to RabbitMQ, opens a channel in confirm mode and declares
    /// the exchange (durable, topic).
    ///
    /// While the broker is unreachable it retries with jittered exponential
    /// backoff up to `max_backoff_ms`, until `shutdown` fires (then
    /// [`PublishError::Shutdown`]). It fails at once on errors a retry won't
    /// heal: an invalid URL, refused credentials, a missing vhost, an
    /// exchange declared with other settings.
    pub async fn connect(
        config: &RabbitConfig,
        shutdown: CancellationToken,
    ) -> Result<Publisher, PublishError> {
        let tasks = TaskTracker::new();
        Self::connect_with_stats(config, shutdown, PublisherStats::default(), &tasks).await
    }

    /// [`Publisher::connect`], counting into `stats`, with its background
    /// tasks on `tasks`: a process that makes a new publisher per capture
    /// session keeps one set of counters, and waits for the tasks at
    /// shutdown. ([`Publisher::connect`] puts them on a tracker of their
    /// own; [`Publisher::close`] still waits for the engine.)
    pub async fn connect_with_stats(
        config: &RabbitConfig,
        shutdown: CancellationToken,
        stats: PublisherStats,
        tasks: &TaskTracker,
    ) -> Result<Publisher, PublishError> {
        let endpoint = Endpoint::new(config).map_err(|e| PublishError::Amqp(Box::new(e)))?;
        let url = endpoint.url();
        let settings = Arc::new(Settings {
            endpoint,
            exchange: config.exchange.clone(),
            max_backoff: Duration::from_millis(config.max_backoff_ms.max(1)),
            tasks: tasks.clone(),
        });
        let span =
            tracing::info_span!("rabbitmq_publisher", url = %url, exchange = %config.exchange);

        let mut attempt: u32 = 0;
        let link = async {
            loop {
                let result = tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return Err(PublishError::Shutdown),
                    result = link::open_link(&settings) => result,
                };
                match result {
                    Ok(link) => return Ok(link),
                    Err(e) if e.is_retryable() => {
                        attempt = attempt.saturating_add(1);
                        let delay = link::reconnect_delay(attempt, settings.max_backoff);
                        warn!(error = %e, attempt, retry_in_ms = delay.as_millis() as u64, "cannot reach rabbitmq; retrying");
                        tokio::select! {
                            biased;
                            _ = shutdown.cancelled() => return Err(PublishError::Shutdown),
                            _ = tokio::time::sleep(delay) => {}
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        .instrument(span.clone())
        .await?;
        info!(parent: &span, publish_window = config.publish_window, publish_window_bytes = config.publish_window_bytes, max_event_bytes = config.max_event_bytes, "connected to rabbitmq");

        let window = Arc::new(Window::new(
            config.publish_window,
            config.publish_window_bytes,
        ));
        let (outgoing, incoming) = mpsc::unbounded_channel();
        let (progress_tx, progress) = watch::channel(Progress::default());
        let engine = Engine::new(
            settings,
            link,
            incoming,
            Arc::clone(&window),
            progress_tx,
            stats.clone(),
        );
        let task = tasks.spawn(engine.run().instrument(span));
        Ok(Publisher {
            outgoing,
            window,
            max_event_bytes: config.max_event_bytes,
            progress,
            tracker: Tracker::default(),
            last_seq: 0,
            shutdown,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            stats,
            task: Some(task),
            source: None,
        })
    }

    /// How long [`Sink::drain`] waits for outstanding confirms once shutdown
    /// has been requested.
    pub fn set_drain_timeout(&mut self, timeout: Duration) {
        self.drain_timeout = timeout;
    }

    /// A handle on the publisher's counters.
    pub fn stats(&self) -> PublisherStats {
        self.stats.clone()
    }

    /// Messages sent and not yet confirmed.
    pub fn unconfirmed(&self) -> u64 {
        self.last_seq - self.progress.borrow().confirmed
    }

    /// Closes the connection gracefully and waits for the background task.
    /// Unconfirmed messages are abandoned (Postgres resends them); call
    /// [`Sink::drain`] first to avoid that.
    pub async fn close(mut self) {
        let task = self.task.take();
        drop(self);
        if let Some(task) = task {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }

    /// The error that stopped the background task.
    fn failure(&self) -> PublishError {
        self.progress
            .borrow()
            .failed
            .clone()
            .unwrap_or(PublishError::Stopped)
    }

    /// Takes a message's share of the window (one message, `charge`
    /// bytes), waiting for confirms if it is full.
    async fn reserve(&self, charge: u32) -> Result<(), PublishError> {
        if self.window.try_acquire(charge) {
            return Ok(());
        }
        debug!(
            unconfirmed = self.unconfirmed(),
            bytes = charge,
            "publish window full; waiting for confirms"
        );
        let reserved = tokio::select! {
            biased;
            reserved = self.window.acquire(charge) => reserved,
            _ = self.shutdown.cancelled() => return Err(PublishError::Shutdown),
            _ = self.outgoing.closed() => return Err(self.failure()),
        };
        // Closed by the task when it stops for good.
        reserved.map_err(|_| self.failure())
    }
}

impl Sink for Publisher {
    type Error = PublishError;

    async fn send(&mut self, event: ChangeEvent) -> Result<(), PublishError> {
        let Prepared {
            mut message,
            mut stub,
            oversize,
        } = encode_within(&event, self.max_event_bytes);
        if let Some(size) = oversize {
            warn!(
                id = %event.id,
                size,
                max_event_bytes = self.max_event_bytes,
                routing_key = %message.routing_key,
                "event exceeds rabbitmq.max_event_bytes; publishing its oversize stub"
            );
            self.stats.oversize(message.routing_key.as_str());
        }
        drop(event);
        if let Some(source) = &self.source {
            message.properties = encoder::with_source(message.properties, source);
            if let Some(stub) = &mut stub {
                stub.properties = encoder::with_source(stub.properties.clone(), source);
            }
        }
        let charge = self.window.charge(message.body.len());
        self.reserve(charge).await?;
        self.last_seq += 1;
        self.outgoing
            .send(Outgoing {
                seq: self.last_seq,
                message: Arc::new(message),
                stub,
                charge,
            })
            .map_err(|_| self.failure())
    }

    async fn end_transaction(&mut self, end_lsn: Lsn) -> Result<(), PublishError> {
        let progress = self.progress.borrow();
        if let Some(e) = &progress.failed {
            return Err(e.clone());
        }
        let confirmed = progress.confirmed;
        drop(progress);
        self.tracker
            .end_transaction(self.last_seq, end_lsn, confirmed);
        Ok(())
    }

    /// Cancel-safe: all state lives in `self` between awaits, and the only
    /// await is on the confirm watch, which wakes when a confirm arrives.
    async fn durable(&mut self) -> Result<Lsn, PublishError> {
        loop {
            let failed = {
                let progress = self.progress.borrow_and_update();
                self.tracker.advance(progress.confirmed);
                progress.failed.clone()
            };
            if let Some(position) = self.tracker.take_moved() {
                return Ok(position);
            }
            if let Some(e) = failed {
                return Err(e);
            }
            if self.progress.changed().await.is_err() {
                return Err(self.failure());
            }
        }
    }

    fn set_source(&mut self, source: &str) {
        self.source = Some(source.to_owned());
    }

    async fn drain(&mut self) -> Result<Option<Lsn>, PublishError> {
        let target = self.last_seq;
        let shutdown = self.shutdown.clone();
        let drain_timeout = self.drain_timeout;
        let give_up = async move {
            shutdown.cancelled().await;
            tokio::time::sleep(drain_timeout).await;
        };
        let progress = &mut self.progress;
        let all_confirmed = async {
            loop {
                {
                    let progress = progress.borrow_and_update();
                    if progress.confirmed >= target {
                        return Ok(());
                    }
                    if let Some(e) = &progress.failed {
                        return Err(e.clone());
                    }
                }
                if progress.changed().await.is_err() {
                    return Err(PublishError::Stopped);
                }
            }
        };
        let outcome = tokio::select! {
            outcome = all_confirmed => Some(outcome),
            _ = give_up => None,
        };
        let confirmed = self.progress.borrow().confirmed;
        self.tracker.advance(confirmed);
        let _ = self.tracker.take_moved();
        match outcome {
            Some(Ok(())) => {
                debug!(durable = ?self.tracker.durable().map(|l| l.to_string()), "publisher drained");
                Ok(self.tracker.durable())
            }
            Some(Err(PublishError::Stopped)) => Err(self.failure()),
            Some(Err(e)) => Err(e),
            None => {
                warn!(
                    unconfirmed = target - confirmed,
                    timeout_s = drain_timeout.as_secs_f64(),
                    "rabbitmq did not confirm everything before the drain timeout; postgres will resend the rest"
                );
                Ok(self.tracker.durable())
            }
        }
    }
}
