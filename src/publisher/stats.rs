//! Counters for the publisher, cheap enough to update on every message.
//!
//! [`PublisherStats`] is a cloneable handle over atomics: the publisher
//! writes, anyone (a metrics endpoint, a test) reads a [`StatsSnapshot`],
//! the per-routing-key counts ([`PublisherStats::by_routing_key`]) and the
//! confirm-latency histogram. Whether the publisher can publish is also
//! published on a watch ([`PublisherStats::link`]), which readiness
//! mirrors. It does not export anything; `/metrics` formats it.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::health::{ComponentState, StageState};
use crate::histogram::{Histogram, HistogramSnapshot};

#[derive(Debug, Default)]
struct Counters {
    published: AtomicU64,
    confirmed: AtomicU64,
    nacked: AtomicU64,
    republished: AtomicU64,
    reconnects: AtomicU64,
    returned: AtomicU64,
    refused: AtomicU64,
    confirm_latency_micros_total: AtomicU64,
    confirm_latency: Histogram,
    /// Published and confirmed counts by routing key. Bounded by the
    /// captured tables × 4 ops; one uncontended lock per message.
    by_routing_key: Mutex<HashMap<Box<str>, RoutingKeyCounts>>,
    link: watch::Sender<LinkState>,
}

/// Whether the publisher can publish, as readiness sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkState {
    /// A connection with a confirming channel is up.
    pub connected: bool,
    /// The broker has blocked publishing (resource alarm).
    pub blocked: bool,
}

impl StageState for LinkState {
    fn health(&self) -> (ComponentState, String) {
        let (state, reason) = match (self.connected, self.blocked) {
            (true, false) => (ComponentState::Ready, "publishing"),
            (true, true) => (
                ComponentState::Blocked,
                "blocked by a broker resource alarm",
            ),
            (false, _) => (ComponentState::Reconnecting, "reconnecting to rabbitmq"),
        };
        (state, reason.to_owned())
    }
}

/// Messages published and confirmed under one routing key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoutingKeyCounts {
    /// `basic.publish` calls, republishes included.
    pub published: u64,
    pub confirmed: u64,
    /// Events published as their `oversize` stub: over
    /// `rabbitmq.max_event_bytes`, or refused by the broker as too large.
    pub oversize: u64,
}

/// Shared counters of one publisher.
#[derive(Debug, Clone, Default)]
pub struct PublisherStats(Arc<Counters>);

/// The counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// `basic.publish` calls, republishes included.
    pub published: u64,
    /// Messages RabbitMQ confirmed (ack).
    pub confirmed: u64,
    /// Messages RabbitMQ refused (nack); each is republished.
    pub nacked: u64,
    /// Publishes of a message that had been published before (after a
    /// nack or a lost channel or connection).
    pub republished: u64,
    /// Connections established after the first one.
    pub reconnects: u64,
    /// Confirmed messages the broker also returned as unroutable.
    pub returned: u64,
    /// Times the broker refused a published message (406), closing the
    /// channel; the too large ones went out again as `oversize` stubs.
    pub refused: u64,
    /// Sum of publish-to-confirm latencies of the confirmed messages.
    pub confirm_latency_total: Duration,
    /// Whether a connection with a confirming channel is up.
    pub connected: bool,
    /// Whether the broker has blocked publishing (resource alarm).
    pub blocked: bool,
}

impl StatsSnapshot {
    /// Mean publish-to-confirm latency, if anything was confirmed.
    pub fn mean_confirm_latency(&self) -> Option<Duration> {
        (self.confirmed > 0).then(|| self.confirm_latency_total / self.confirmed as u32)
    }
}

impl PublisherStats {
    pub fn snapshot(&self) -> StatsSnapshot {
        let c = &self.0;
        let link = *c.link.borrow();
        StatsSnapshot {
            published: c.published.load(Ordering::Relaxed),
            confirmed: c.confirmed.load(Ordering::Relaxed),
            nacked: c.nacked.load(Ordering::Relaxed),
            republished: c.republished.load(Ordering::Relaxed),
            reconnects: c.reconnects.load(Ordering::Relaxed),
            returned: c.returned.load(Ordering::Relaxed),
            refused: c.refused.load(Ordering::Relaxed),
            confirm_latency_total: Duration::from_micros(
                c.confirm_latency_micros_total.load(Ordering::Relaxed),
            ),
            connected: link.connected,
            blocked: link.blocked,
        }
    }

    /// Whether the publisher can publish, now and on every change.
    pub fn link(&self) -> watch::Receiver<LinkState> {
        self.0.link.subscribe()
    }

    /// Published and confirmed counts by routing key, ordered by key.
    pub fn by_routing_key(&self) -> BTreeMap<String, RoutingKeyCounts> {
        let counts = self
            .0
            .by_routing_key
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        counts.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    /// Publish-to-confirm latencies of the confirmed messages.
    pub fn confirm_latency(&self) -> HistogramSnapshot {
        self.0.confirm_latency.snapshot()
    }

    pub(crate) fn published(&self, routing_key: &str, republish: bool) {
        self.0.published.fetch_add(1, Ordering::Relaxed);
        if republish {
            self.0.republished.fetch_add(1, Ordering::Relaxed);
        }
        self.count(routing_key, |c| c.published += 1);
    }

    pub(crate) fn confirmed(&self, routing_key: &str, latency: Duration) {
        self.0.confirmed.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.0
            .confirm_latency_micros_total
            .fetch_add(micros, Ordering::Relaxed);
        self.0.confirm_latency.observe(latency);
        self.count(routing_key, |c| c.confirmed += 1);
    }

    fn count(&self, routing_key: &str, update: impl FnOnce(&mut RoutingKeyCounts)) {
        let mut counts = self
            .0
            .by_routing_key
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match counts.get_mut(routing_key) {
            Some(entry) => update(entry),
            None => update(counts.entry(routing_key.into()).or_default()),
        }
    }

    pub(crate) fn nacked(&self) {
        self.0.nacked.fetch_add(1, Ordering::Relaxed);
    }

    /// An event goes out as its `oversize` stub.
    pub(crate) fn oversize(&self, routing_key: &str) {
        self.count(routing_key, |c| c.oversize += 1);
    }

    pub(crate) fn refused(&self) {
        self.0.refused.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn returned(&self) {
        self.0.returned.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn reconnected(&self) {
        self.0.reconnects.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn set_connected(&self, connected: bool) {
        self.0.link.send_if_modified(|link| {
            let changed = link.connected != connected;
            link.connected = connected;
            changed
        });
    }

    pub(crate) fn set_blocked(&self, blocked: bool) {
        self.0.link.send_if_modified(|link| {
            let changed = link.blocked != blocked;
            link.blocked = blocked;
            changed
        });
    }
}
