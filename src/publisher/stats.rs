//! Counters for the publisher, cheap enough to update on every message,
//! and the `walcast_publisher_*` families that `/metrics` shows.
//!
//! [`PublisherStats`] is a cloneable handle: the publisher writes, anyone (a
//! test, a benchmark) reads a [`StatsSnapshot`] and the per-routing-key
//! counts ([`PublisherStats::by_routing_key`]), and
//! [`PublisherStats::register`] adds the families to the process's
//! registry. The text format is `prometheus_client`'s. Whether the
//! publisher can publish is also published on a watch
//! ([`PublisherStats::link`]), which readiness mirrors.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use crate::health::{ComponentState, StageState};
use crate::histogram::{duration_histogram, observe};

/// The labels `table` (`schema.table`) and `op`.
type TableOp = [(&'static str, String); 2];

#[derive(Debug, Default)]
struct ByKeyFamilies {
    published: Family<TableOp, Counter>,
    confirmed: Family<TableOp, Counter>,
    oversize: Family<TableOp, Counter>,
}

/// The counters of one routing key in [`ByKeyFamilies`].
#[derive(Debug)]
struct KeyCounters {
    published: Counter,
    confirmed: Counter,
    oversize: Counter,
}

#[derive(Debug)]
struct Counters {
    /// Totals over every routing key, for [`StatsSnapshot`]; not exported.
    published: Counter,
    confirmed: Counter,
    nacked: Counter,
    republished: Counter,
    reconnects: Counter,
    returned: Counter,
    refused: Counter,
    confirm_latency_micros_total: AtomicU64,
    confirm_latency: Histogram,
    by_key: ByKeyFamilies,
    /// The counters of `by_key` by routing key, so that the hot path finds
    /// them by `&str` without allocating. Bounded by the captured tables × 4
    /// ops; one uncontended lock per message.
    by_routing_key: Mutex<HashMap<Box<str>, KeyCounters>>,
    connected: Gauge,
    blocked: Gauge,
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
#[derive(Debug, Clone)]
pub struct PublisherStats(Arc<Counters>);

impl Default for PublisherStats {
    fn default() -> Self {
        PublisherStats(Arc::new(Counters {
            published: Counter::default(),
            confirmed: Counter::default(),
            nacked: Counter::default(),
            republished: Counter::default(),
            reconnects: Counter::default(),
            returned: Counter::default(),
            refused: Counter::default(),
            confirm_latency_micros_total: AtomicU64::new(0),
            confirm_latency: duration_histogram(),
            by_key: ByKeyFamilies::default(),
            by_routing_key: Mutex::default(),
            connected: Gauge::default(),
            blocked: Gauge::default(),
            link: watch::Sender::new(LinkState::default()),
        }))
    }
}

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
    /// Adds the `walcast_publisher_*` families to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        let c = &self.0;
        registry.register(
            "walcast_publisher_published",
            "Messages published to RabbitMQ (republishes included), by table and op",
            c.by_key.published.clone(),
        );
        registry.register(
            "walcast_publisher_confirmed",
            "Messages RabbitMQ confirmed, by table and op",
            c.by_key.confirmed.clone(),
        );
        registry.register(
            "walcast_publisher_oversize",
            "Events published as their oversize stub (new and old null), too large for rabbitmq.max_event_bytes or the broker, by table and op",
            c.by_key.oversize.clone(),
        );
        for (name, help, counter) in [
            (
                "walcast_publisher_nacks",
                "Messages RabbitMQ refused (nack); each is republished",
                &c.nacked,
            ),
            (
                "walcast_publisher_republished",
                "Publishes of a message published before (after a nack or a lost connection)",
                &c.republished,
            ),
            (
                "walcast_publisher_returned",
                "Confirmed messages the broker also returned as unroutable",
                &c.returned,
            ),
            (
                "walcast_publisher_refused",
                "Times RabbitMQ refused a published message (406, e.g. larger than its max_message_size)",
                &c.refused,
            ),
            (
                "walcast_publisher_reconnects",
                "Connections to RabbitMQ established again after one was lost",
                &c.reconnects,
            ),
        ] {
            registry.register(name, help, counter.clone());
        }
        registry.register(
            "walcast_publisher_confirm_latency_seconds",
            "Time from writing a message to RabbitMQ's confirm of it",
            c.confirm_latency.clone(),
        );
        registry.register(
            "walcast_publisher_connected",
            "Whether the publisher has a connection with a confirming channel",
            c.connected.clone(),
        );
        registry.register(
            "walcast_publisher_blocked",
            "Whether RabbitMQ blocks publishing (resource alarm)",
            c.blocked.clone(),
        );
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let c = &self.0;
        let link = *c.link.borrow();
        StatsSnapshot {
            published: c.published.get(),
            confirmed: c.confirmed.get(),
            nacked: c.nacked.get(),
            republished: c.republished.get(),
            reconnects: c.reconnects.get(),
            returned: c.returned.get(),
            refused: c.refused.get(),
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

    /// Published, confirmed and oversize counts by routing key, ordered by
    /// key.
    pub fn by_routing_key(&self) -> BTreeMap<String, RoutingKeyCounts> {
        let counts = self
            .0
            .by_routing_key
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        counts
            .iter()
            .map(|(key, c)| {
                let counts = RoutingKeyCounts {
                    published: c.published.get(),
                    confirmed: c.confirmed.get(),
                    oversize: c.oversize.get(),
                };
                (key.to_string(), counts)
            })
            .collect()
    }

    /// Publish-to-confirm latencies of the confirmed messages.
    pub fn confirm_latency(&self) -> &Histogram {
        &self.0.confirm_latency
    }

    pub(crate) fn published(&self, routing_key: &str, republish: bool) {
        self.0.published.inc();
        if republish {
            self.0.republished.inc();
        }
        self.count(routing_key, |c| c.published.inc());
    }

    pub(crate) fn confirmed(&self, routing_key: &str, latency: Duration) {
        self.0.confirmed.inc();
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.0
            .confirm_latency_micros_total
            .fetch_add(micros, Ordering::Relaxed);
        observe(&self.0.confirm_latency, latency);
        self.count(routing_key, |c| c.confirmed.inc());
    }

    fn count(&self, routing_key: &str, update: impl FnOnce(&KeyCounters) -> u64) {
        let mut counts = self
            .0
            .by_routing_key
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(counters) = counts.get(routing_key) {
            update(counters);
            return;
        }
        // `<schema>.<table>.<op>`: the op never has a dot in it. All three
        // series start at once, so each key shows its zeros too.
        let (table, op) = routing_key.rsplit_once('.').unwrap_or((routing_key, ""));
        let labels = [("table", table.to_owned()), ("op", op.to_owned())];
        let families = &self.0.by_key;
        let counters = KeyCounters {
            published: families.published.get_or_create_owned(&labels),
            confirmed: families.confirmed.get_or_create_owned(&labels),
            oversize: families.oversize.get_or_create_owned(&labels),
        };
        update(&counters);
        counts.insert(routing_key.into(), counters);
    }

    pub(crate) fn nacked(&self) {
        self.0.nacked.inc();
    }

    /// An event goes out as its `oversize` stub.
    pub(crate) fn oversize(&self, routing_key: &str) {
        self.count(routing_key, |c| c.oversize.inc());
    }

    pub(crate) fn refused(&self) {
        self.0.refused.inc();
    }

    pub(crate) fn returned(&self) {
        self.0.returned.inc();
    }

    pub(crate) fn reconnected(&self) {
        self.0.reconnects.inc();
    }

    pub(crate) fn set_connected(&self, connected: bool) {
        self.0.connected.set(i64::from(connected));
        self.0.link.send_if_modified(|link| {
            let changed = link.connected != connected;
            link.connected = connected;
            changed
        });
    }

    pub(crate) fn set_blocked(&self, blocked: bool) {
        self.0.blocked.set(i64::from(blocked));
        self.0.link.send_if_modified(|link| {
            let changed = link.blocked != blocked;
            link.blocked = blocked;
            changed
        });
    }
}
