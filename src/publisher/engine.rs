//! The publisher's background task: one RabbitMQ link, the window of
//! unconfirmed messages, confirms, reconnects and republishing.
//!
//! The task owns everything that talks to the broker. [`Publisher`] hands it
//! each encoded message with its sequence number over an unbounded channel
//! whose length the window semaphore bounds, and reads back, through a
//! `watch`, the highest sequence number up to which every message is
//! confirmed.
//!
//! Messages stay in `unconfirmed` (in sequence order) until RabbitMQ acks
//! them. They are written to the channel one after the other, without
//! waiting for confirms in between (pipelining); confirms are awaited in the
//! same order, which yields exactly the confirmed prefix. A nack, a failed
//! write or confirm, or a lost channel or connection tears the link down; the
//! task reconnects with jittered exponential backoff, redeclares the
//! exchange, and republishes every unconfirmed message, oldest first, before
//! anything newer. Memory is the window, whatever the outage.
//!
//! A message the broker refuses as too large (406 PRECONDITION_FAILED,
//! which closes the channel) is not republished as it is, which would be
//! refused forever while the slot stands still: every unconfirmed message
//! over the broker's `max_message_size` is replaced by its `oversize` stub
//! (counted, logged), and later ones are stubbed before they are written.
//! A stub that is still too large, or a 406 that names no size, stops the
//! publisher with an error that says what to set. Never a loop.
//!
//! It does not know about transactions or LSNs (that is [`super::tracker`])
//! and never decides what is durable beyond "confirmed up to sequence N".
//!
//! [`Publisher`]: super::Publisher

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{FutureExt, StreamExt};
use lapin::{Confirmation, Event, PublisherConfirm};
use tokio::sync::{mpsc, watch};
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use super::encoder::Encoded;
use super::error::{publish_refusal, PublishError, Refusal};
use super::link::{close_in_background, open_link, reconnect_delay, Link, CLOSE_TIMEOUT};
use super::stats::PublisherStats;
use super::unconfirmed::{fit, Unconfirmed};
use super::window::Window;
use super::writes::Writes;
use crate::amqp::Endpoint;

/// Writes handed to lapin but not yet flushed to the socket, at most.
const MAX_WRITES_IN_FLIGHT: usize = 64;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Where and how to connect; shared by every connection attempt.
#[derive(Debug)]
pub(crate) struct Settings {
    pub endpoint: Endpoint,
    pub exchange: String,
    pub max_backoff: Duration,
    /// Where the publisher's tasks run (the engine, closing a dead link).
    pub tasks: TaskTracker,
}

/// A message handed to the task: its sequence number and its encoding.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub seq: u64,
    pub message: Arc<Encoded>,
    /// Its `oversize` stub, for a large message the broker may refuse.
    pub stub: Option<Encoded>,
    /// What it took from the byte window ([`Window::charge`]).
    pub charge: u32,
}

/// What the task tells the [`super::Publisher`].
#[derive(Debug, Clone, Default)]
pub(crate) struct Progress {
    /// Every message with a sequence number up to this one is confirmed.
    pub confirmed: u64,
    /// Set when the task stopped on an error a reconnect cannot heal.
    pub failed: Option<PublishError>,
}

/// The background task's state.
pub(crate) struct Engine {
    settings: Arc<Settings>,
    incoming: mpsc::UnboundedReceiver<Outgoing>,
    window: Arc<Window>,
    progress: watch::Sender<Progress>,
    stats: PublisherStats,
    /// Accepted and not confirmed, in sequence order; never more than the
    /// window, because each holds its share until it is confirmed.
    unconfirmed: VecDeque<Unconfirmed>,
    /// `unconfirmed[..written]` have been written on the current channel.
    written: usize,
    /// Highest sequence number ever written, on any channel.
    highest_written: u64,
    /// Confirms of the written messages, in the order they were written
    /// (which is `unconfirmed`'s order), with the time of the write.
    confirms: VecDeque<(u64, Instant, PublisherConfirm)>,
    /// Writes handed to lapin and not yet on the socket, in order.
    writes: Writes,
    link: Option<Link>,
    connecting: Option<BoxFuture<Result<Link, PublishError>>>,
    /// Failed connection attempts since the last confirm.
    attempt: u32,
    /// The broker's `max_message_size`, once a 406 has told it.
    broker_max: Option<usize>,
    /// Stopped for good; the error is in `progress`.
    failed: bool,
    /// Every message up to this sequence number is confirmed.
    confirmed: u64,
    /// Bytes and messages confirmed since the last [`Engine::report_confirmed`].
    releasing: (usize, usize),
}

/// Why a link is torn down.
enum Fault {
    Lost(lapin::Error),
    Nacked(u64),
    /// Messages refused as too large were replaced by their stubs.
    Shrunk(usize),
    Unexpected(&'static str),
}

impl Engine {
    pub(crate) fn new(
        settings: Arc<Settings>,
        link: Link,
        incoming: mpsc::UnboundedReceiver<Outgoing>,
        window: Arc<Window>,
        progress: watch::Sender<Progress>,
        stats: PublisherStats,
    ) -> Engine {
        stats.set_connected(true);
        Engine {
            settings,
            incoming,
            window,
            progress,
            stats,
            unconfirmed: VecDeque::new(),
            written: 0,
            highest_written: 0,
            confirms: VecDeque::new(),
            writes: Writes::default(),
            link: Some(link),
            connecting: None,
            attempt: 0,
            broker_max: None,
            failed: false,
            confirmed: 0,
            releasing: (0, 0),
        }
    }

    /// Runs until the [`super::Publisher`] is dropped or an error that a
    /// reconnect cannot heal.
    pub(crate) async fn run(mut self) {
        while !self.failed {
            self.schedule();
            tokio::select! {
                biased;
                // A lost link first: no point in writing to a dead socket.
                event = next_event(&mut self.link) => self.on_event(event),
                (seq, written_at, confirmation) = next_confirm(&mut self.confirms) => {
                    self.on_confirm(seq, written_at, confirmation);
                    // Confirms come in bursts (the broker acks with
                    // `multiple`): every one already resolved is taken
                    // before the Publisher hears of them, so the capture
                    // wakes once per burst rather than once per message.
                    while self.link.is_some() && !self.failed {
                        let Some((seq, written_at, confirmation)) =
                            next_confirm(&mut self.confirms).now_or_never()
                        else {
                            break;
                        };
                        self.on_confirm(seq, written_at, confirmation);
                    }
                    self.report_confirmed();
                }
                (seq, result) = self.writes.next() => match result {
                    Ok(confirm) => self.confirms.push_back((seq, Instant::now(), confirm)),
                    Err(e) => self.on_error(e),
                },
                linked = poll_slot(&mut self.connecting) => match linked {
                    Ok(link) => self.on_linked(link),
                    Err(e) if e.is_retryable() => {
                        warn!(error = %e, attempt = self.attempt, unconfirmed = self.unconfirmed.len(), "cannot reach rabbitmq; retrying");
                    }
                    Err(e) => {
                        error!(error = %e, unconfirmed = self.unconfirmed.len(), "rabbitmq refused walcast; publisher stopped");
                        self.fail(e);
                    }
                },
                outgoing = self.incoming.recv() => match outgoing {
                    Some(outgoing) => {
                        self.on_outgoing(outgoing);
                        // Whatever else is waiting goes out in the same
                        // burst of writes: lapin wakes its I/O thread per
                        // write, and a burst finds it awake.
                        while !self.failed && self.unwritten() < MAX_WRITES_IN_FLIGHT {
                            let Ok(outgoing) = self.incoming.try_recv() else {
                                break;
                            };
                            self.on_outgoing(outgoing);
                        }
                    }
                    None => break,
                },
            }
        }
        // The Publisher is gone; whatever is unconfirmed was never reported
        // durable, so Postgres sends it again after a restart.
        if !self.unconfirmed.is_empty() {
            info!(
                unconfirmed = self.unconfirmed.len(),
                "publisher closed with unconfirmed messages; postgres will resend them"
            );
        }
        if let Some(link) = self.link.take() {
            let _ = tokio::time::timeout(
                CLOSE_TIMEOUT,
                link.connection
                    .close(200, "walcast publisher closing".into()),
            )
            .await;
        }
        self.stats.set_connected(false);
        debug!("publisher task ended");
    }

    /// Messages accepted and not yet written on the current channel.
    fn unwritten(&self) -> usize {
        self.unconfirmed.len() - self.written
    }

    /// Takes a message from the [`super::Publisher`] into `unconfirmed`.
    fn on_outgoing(&mut self, outgoing: Outgoing) {
        let Outgoing {
            seq,
            message,
            stub,
            charge,
        } = outgoing;
        let mut pending = Unconfirmed {
            seq,
            message,
            stub,
            charge,
        };
        // Once the broker has told its limit, a message over it is stubbed
        // before it is ever written.
        let fitted = match self.broker_max {
            Some(max) => fit(
                &mut pending,
                max,
                &self.stats,
                &self.settings.endpoint.url(),
            ),
            None => Ok(false),
        };
        self.unconfirmed.push_back(pending);
        if let Err(e) = fitted {
            error!(error = %e, "publisher stopped");
            self.fail(*e);
        }
    }

    /// Starts the next write, or the next connection attempt.
    fn schedule(&mut self) {
        match &self.link {
            Some(link) => {
                while self.writes.len() < MAX_WRITES_IN_FLIGHT
                    && self.written < self.unconfirmed.len()
                {
                    let Unconfirmed { seq, message, .. } = &self.unconfirmed[self.written];
                    let (seq, message) = (*seq, Arc::clone(message));
                    self.written += 1;
                    let republish = seq <= self.highest_written;
                    self.highest_written = self.highest_written.max(seq);
                    self.stats
                        .published(message.routing_key.as_str(), republish);
                    let channel = Arc::clone(&link.channel);
                    let exchange = link.exchange.clone();
                    self.writes.start(seq, channel, exchange, message);
                }
            }
            None => {
                if self.connecting.is_some() {
                    return;
                }
                let delay = reconnect_delay(self.attempt, self.settings.max_backoff);
                self.attempt = self.attempt.saturating_add(1);
                let settings = Arc::clone(&self.settings);
                if !delay.is_zero() {
                    debug!(
                        delay_ms = delay.as_millis() as u64,
                        "reconnecting to rabbitmq after backoff"
                    );
                }
                self.connecting = Some(Box::pin(async move {
                    tokio::time::sleep(delay).await;
                    open_link(&settings).await
                }));
            }
        }
    }

    fn on_event(&mut self, event: Option<Event>) {
        match event {
            None => self.tear_down(Fault::Unexpected("connection event stream ended")),
            Some(Event::Error(e)) => self.on_error(e),
            Some(Event::ConnectionBlocked(reason)) => {
                warn!(%reason, unconfirmed = self.unconfirmed.len(), "rabbitmq blocked publishing (resource alarm); holding events until it unblocks");
                self.stats.set_blocked(true);
            }
            Some(Event::ConnectionUnblocked) => {
                info!("rabbitmq unblocked publishing");
                self.stats.set_blocked(false);
            }
            Some(other) => debug!(event = ?other, "rabbitmq connection event"),
        }
    }

    fn on_confirm(
        &mut self,
        seq: u64,
        written_at: Instant,
        confirmation: lapin::Result<Confirmation>,
    ) {
        match confirmation {
            Ok(Confirmation::Ack(returned)) => {
                if let Some(returned) = returned {
                    // Only mandatory publishes are returned, and walcast's
                    // are not; count it rather than loop on republishing.
                    self.stats.returned();
                    warn!(seq, reply = %returned.reply_text, "rabbitmq returned a message as unroutable");
                }
                let Some(front) = self.unconfirmed.front() else {
                    return self.tear_down(Fault::Unexpected("confirm without a message"));
                };
                if front.seq != seq {
                    return self.tear_down(Fault::Unexpected("confirm out of sequence"));
                }
                let confirmed = self.unconfirmed.pop_front();
                self.written -= 1;
                let (routing_key, charge) = confirmed
                    .as_ref()
                    .map_or(("", 0), |c| (c.message.routing_key.as_str(), c.charge));
                self.stats.confirmed(routing_key, written_at.elapsed());
                self.attempt = 0;
                // Reported (and its share of the window given back) by
                // `report_confirmed`, once per burst of confirms.
                self.confirmed = self.confirmed.max(seq);
                self.releasing.0 += charge as usize;
                self.releasing.1 += 1;
            }
            Ok(Confirmation::Nack(_)) => {
                self.stats.nacked();
                self.tear_down(Fault::Nacked(seq));
            }
            Ok(Confirmation::NotRequested) => {
                self.tear_down(Fault::Unexpected("channel is not in confirm mode"))
            }
            Err(e) => self.on_error(e),
        }
    }

    /// Tells the Publisher how far everything is confirmed, then gives the
    /// confirmed messages' share of the window back (in that order, so that
    /// sent - confirmed, as the Publisher sees it, never exceeds the window).
    fn report_confirmed(&mut self) {
        let (bytes, messages) = std::mem::take(&mut self.releasing);
        if messages == 0 {
            return;
        }
        let confirmed = self.confirmed;
        self.progress.send_if_modified(|p| {
            let moved = confirmed > p.confirmed;
            p.confirmed = p.confirmed.max(confirmed);
            moved
        });
        self.window.release_many(bytes, messages);
    }

    /// A failed write or confirm, or a connection error: the broker
    /// refusing a message, or a lost link.
    fn on_error(&mut self, error: lapin::Error) {
        match publish_refusal(&error) {
            Some(refusal) => self.on_refused(refusal),
            None => self.tear_down(Fault::Lost(error)),
        }
    }

    /// The broker refused a message (406) and closed the channel. The
    /// refusal does not say which message; when it says the broker's size
    /// limit, every unconfirmed message over it is one it will refuse.
    fn on_refused(&mut self, refusal: Refusal) {
        self.stats.refused();
        let url = &self.settings.endpoint.url();
        let Some(max) = refusal.max_message_size else {
            let e = PublishError::Refused {
                url: url.clone(),
                reason: refusal.reason,
            };
            error!(error = %e, unconfirmed = self.unconfirmed.len(), "publisher stopped");
            return self.fail(e);
        };
        warn!(reason = %refusal.reason, broker_max = max, unconfirmed = self.unconfirmed.len(), "rabbitmq refused a message as too large (406); publishing oversize stubs instead");
        self.broker_max = Some(max);
        let mut fitted = Ok(0);
        for pending in &mut self.unconfirmed {
            match fit(pending, max, &self.stats, url) {
                Ok(true) => fitted = fitted.map(|shrunk| shrunk + 1),
                Ok(false) => {}
                Err(e) => {
                    fitted = Err(e);
                    break;
                }
            }
        }
        let shrunk = match fitted {
            Ok(shrunk) => shrunk,
            Err(e) => {
                error!(error = %e, "publisher stopped");
                return self.fail(*e);
            }
        };
        if shrunk == 0 {
            // Nothing unconfirmed is over the limit: the same messages
            // would be refused again.
            let e = PublishError::Refused {
                url: url.clone(),
                reason: refusal.reason,
            };
            error!(error = %e, "publisher stopped");
            return self.fail(e);
        }
        self.tear_down(Fault::Shrunk(shrunk));
    }

    /// Stops for good: the [`super::Publisher`] gets `error`.
    fn fail(&mut self, error: PublishError) {
        self.progress.send_modify(|p| p.failed = Some(error));
        self.window.close();
        self.failed = true;
    }

    fn on_linked(&mut self, link: Link) {
        let url = link.url.clone();
        self.link = Some(link);
        self.written = 0;
        self.stats.set_connected(true);
        self.stats.reconnected();
        if self.unconfirmed.is_empty() {
            self.attempt = 0;
        }
        info!(
            %url,
            republishing = self.unconfirmed.len(),
            "reconnected to rabbitmq"
        );
    }

    /// Drops the link and everything in flight on it; the next
    /// [`Engine::schedule`] reconnects, and then every unconfirmed message
    /// is written again from the oldest.
    fn tear_down(&mut self, fault: Fault) {
        let unconfirmed = self.unconfirmed.len();
        match &fault {
            Fault::Lost(e) => {
                warn!(error = %e, unconfirmed, "rabbitmq link lost; reconnecting and republishing unconfirmed messages")
            }
            Fault::Nacked(seq) => {
                warn!(seq, unconfirmed, "rabbitmq refused a message (nack); reconnecting and republishing unconfirmed messages")
            }
            Fault::Shrunk(stubs) => {
                info!(stubs, unconfirmed, "reconnecting and republishing unconfirmed messages, too large ones as oversize stubs")
            }
            Fault::Unexpected(what) => {
                warn!(what, unconfirmed, "unexpected publisher state; reconnecting and republishing unconfirmed messages")
            }
        }
        self.writes.clear();
        self.confirms.clear();
        self.written = 0;
        self.stats.set_connected(false);
        self.stats.set_blocked(false);
        if let Some(link) = self.link.take() {
            close_in_background(&self.settings.tasks, link.connection);
        }
    }
}

/// The next event of the link's connection; pending without a link.
async fn next_event(link: &mut Option<Link>) -> Option<Event> {
    match link {
        Some(link) => link.events.next().await,
        None => std::future::pending().await,
    }
}

/// The confirm of the oldest written message; pending when none is
/// outstanding. Cancel-safe: the confirm stays queued until it resolves.
async fn next_confirm(
    confirms: &mut VecDeque<(u64, Instant, PublisherConfirm)>,
) -> (u64, Instant, lapin::Result<Confirmation>) {
    let Some((seq, written_at, confirm)) = confirms.front_mut() else {
        return std::future::pending().await;
    };
    let (seq, written_at) = (*seq, *written_at);
    let confirmation = confirm.await;
    confirms.pop_front();
    (seq, written_at, confirmation)
}

/// Awaits the future in `slot` and empties the slot; pending when empty.
/// Cancel-safe: an unfinished future stays in the slot.
async fn poll_slot<T>(slot: &mut Option<BoxFuture<T>>) -> T {
    let Some(future) = slot else {
        return std::future::pending().await;
    };
    let output = future.as_mut().await;
    *slot = None;
    output
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_delay_starts_at_once_grows_and_is_capped() {
        let max = Duration::from_secs(2);
        assert_eq!(reconnect_delay(0, max), Duration::ZERO);
        let first = reconnect_delay(1, max);
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
        for attempt in 1..50 {
            assert!(reconnect_delay(attempt, max) <= max);
        }
        assert!(reconnect_delay(20, max) >= Duration::from_secs(1));
    }
}
