//! Counters for the publisher, cheap enough to update on every message.
//!
//! [`PublisherStats`] is a cloneable handle over atomics: the publisher
//! writes, anyone (a metrics endpoint, a test) reads a [`StatsSnapshot`].
//! It does not export anything; `/metrics` formats it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Default)]
struct Counters {
    published: AtomicU64,
    confirmed: AtomicU64,
    nacked: AtomicU64,
    republished: AtomicU64,
    reconnects: AtomicU64,
    returned: AtomicU64,
    confirm_latency_micros_total: AtomicU64,
    connected: AtomicBool,
    blocked: AtomicBool,
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
        StatsSnapshot {
            published: c.published.load(Ordering::Relaxed),
            confirmed: c.confirmed.load(Ordering::Relaxed),
            nacked: c.nacked.load(Ordering::Relaxed),
            republished: c.republished.load(Ordering::Relaxed),
            reconnects: c.reconnects.load(Ordering::Relaxed),
            returned: c.returned.load(Ordering::Relaxed),
            confirm_latency_total: Duration::from_micros(
                c.confirm_latency_micros_total.load(Ordering::Relaxed),
            ),
            connected: c.connected.load(Ordering::Relaxed),
            blocked: c.blocked.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn published(&self, republish: bool) {
        self.0.published.fetch_add(1, Ordering::Relaxed);
        if republish {
            self.0.republished.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn confirmed(&self, latency: Duration) {
        self.0.confirmed.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.0
            .confirm_latency_micros_total
            .fetch_add(micros, Ordering::Relaxed);
    }

    pub(crate) fn nacked(&self) {
        self.0.nacked.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn returned(&self) {
        self.0.returned.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn reconnected(&self) {
        self.0.reconnects.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn set_connected(&self, connected: bool) {
        self.0.connected.store(connected, Ordering::Relaxed);
    }

    pub(crate) fn set_blocked(&self, blocked: bool) {
        self.0.blocked.store(blocked, Ordering::Relaxed);
    }
}
