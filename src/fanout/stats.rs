//! Fan-out counters for metrics: cheap atomics behind a cloneable handle.
//!
//! Counters only go up; gauges (`connected_sockets`, `buffered_events`,
//! `buffered_bytes`) are set by the hub. [`FanoutStats::register`] adds the
//! `walcast_fanout_*` families to the process's registry, read from the
//! counters at each scrape; the text format is `prometheus_client`'s.
//!
//! Labels stay bounded whatever the gateway receives: deliveries are
//! counted by table only for the tables it follows (`postgres.tables`),
//! every other table as [`OTHER_TABLE`]; without a configured list, the
//! first [`MAX_TABLE_LABELS`] tables get their own label. Disconnects are
//! counted by a fixed set of reasons ([`DisconnectReason`]).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::config::TableName;
use crate::event::{Op, PgTimestamp};
use crate::histogram::{duration_histogram, observe};

/// The table label of deliveries from tables the gateway does not follow.
pub const OTHER_TABLE: &str = "other";

/// Distinct table labels when the followed tables are not known.
pub const MAX_TABLE_LABELS: usize = 64;

/// Why the hub disconnected a socket, a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectReason {
    /// Its queue had no room for a packet (`fanout.socket_buffer`).
    QueueFull,
    /// Its queue would pass `fanout.socket_buffer_bytes`.
    QueueBytes,
    /// Its replay could queue nothing for `fanout.replay_stall_timeout_ms`.
    ReplayStall,
    /// The JWT it was admitted with expired.
    TokenExpired,
}

impl DisconnectReason {
    pub const ALL: [DisconnectReason; 4] = [
        DisconnectReason::QueueFull,
        DisconnectReason::QueueBytes,
        DisconnectReason::ReplayStall,
        DisconnectReason::TokenExpired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DisconnectReason::QueueFull => "queue_full",
            DisconnectReason::QueueBytes => "queue_bytes",
            DisconnectReason::ReplayStall => "replay_stall",
            DisconnectReason::TokenExpired => "token_expired",
        }
    }

    /// Whether the socket was too slow (as opposed to no longer allowed).
    pub fn is_slow(self) -> bool {
        !matches!(self, DisconnectReason::TokenExpired)
    }
}

#[derive(Debug, Default)]
struct Counters {
    delivered: AtomicU64,
    /// Deliveries by `schema.table` label, one count per op (in [`OPS`]
    /// order). Bounded (see the module doc); keyed by `String` so the hot
    /// path looks up by `&str` without allocating.
    delivered_by_table: Mutex<HashMap<String, [u64; OPS.len()]>>,
    /// The `schema.table` names that get their own label; `None`: the
    /// first [`MAX_TABLE_LABELS`] seen.
    followed_tables: Option<HashSet<String>>,
    /// Disconnects by [`DisconnectReason::ALL`] index.
    disconnects: [AtomicU64; 4],
    duplicates: AtomicU64,
    malformed: AtomicU64,
    emitted: AtomicU64,
    slow_disconnects: AtomicU64,
    resyncs: AtomicU64,
    connects_refused: AtomicU64,
    replay_log_errors: AtomicU64,
    connected_sockets: AtomicU64,
    buffered_events: AtomicU64,
    buffered_bytes: AtomicU64,
    source_changes: AtomicU64,
    lag: DeliverLag,
}

/// `walcast_fanout_commit_to_deliver_lag_seconds`: from a change's commit
/// in Postgres to the hub queueing it for every live socket it is for.
#[derive(Debug)]
struct DeliverLag(Histogram);

impl Default for DeliverLag {
    fn default() -> Self {
        DeliverLag(duration_histogram())
    }
}

/// A cloneable handle on the fan-out's counters.
#[derive(Debug, Clone, Default)]
pub struct FanoutStats(Arc<Counters>);

/// A point-in-time copy of every counter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Changes accepted and fanned out (duplicates excluded).
    pub delivered: u64,
    /// Changes dropped because their id was seen already.
    pub duplicates: u64,
    /// RabbitMQ bodies that were not change events.
    pub malformed: u64,
    /// `change` packets handed to sockets (live and replayed).
    pub emitted: u64,
    /// Sockets disconnected because they were too slow (queue full, past
    /// the byte budget, replay stalled).
    pub slow_disconnects: u64,
    /// `resync` events sent.
    pub resyncs: u64,
    /// Handshakes refused (bad `since`/`snapshot`, authorizer said no).
    pub connects_refused: u64,
    /// Replay log writes that failed (deliveries not acked, compactions
    /// postponed).
    pub replay_log_errors: u64,
    /// Sockets currently attached.
    pub connected_sockets: u64,
    /// Changes held in the replay buffer.
    pub buffered_events: u64,
    /// Approximate bytes held in the replay buffer.
    pub buffered_bytes: u64,
    /// Times the stream's source changed and the history restarted.
    pub source_changes: u64,
}

/// The ops in the order [`Counters::delivered_by_table`] counts them.
const OPS: [Op; 5] = [Op::Insert, Op::Update, Op::Delete, Op::Truncate, Op::Read];

/// Deliveries of one table with one op.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveredCount {
    /// `schema.table`.
    pub table: String,
    pub op: Op,
    pub count: u64,
}

impl FanoutStats {
    /// Counters whose table labels are `tables` (`schema.table` or `table`
    /// for `public.table`, as `postgres.tables`), every other table as
    /// `OTHER_TABLE`; an empty list caps the labels at
    /// `MAX_TABLE_LABELS` instead.
    pub fn for_tables(tables: &[String]) -> FanoutStats {
        let followed = (!tables.is_empty()).then(|| {
            tables
                .iter()
                .map(|t| match TableName::parse(t) {
                    Ok(name) => format!("{}.{}", name.schema, name.table),
                    Err(_) => t.clone(),
                })
                .collect()
        });
        FanoutStats(Arc::new(Counters {
            followed_tables: followed,
            ..Counters::default()
        }))
    }

    /// Adds the `walcast_fanout_*` families to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register_collector(Box::new(Families(self.clone())));
        registry.register(
            "walcast_fanout_commit_to_deliver_lag_seconds",
            "Time from a change's commit in Postgres to the hub queueing it for every live socket it is for (replays not counted)",
            self.0.lag.0.clone(),
        );
    }

    /// Commit time to live delivery, of every change delivered live.
    pub fn commit_to_deliver_lag(&self) -> &Histogram {
        &self.0.lag.0
    }

    /// Sockets disconnected by the hub, by reason (every reason, zeros
    /// included).
    pub fn disconnects(&self) -> [(DisconnectReason, u64); 4] {
        DisconnectReason::ALL.map(|reason| {
            let n = self.0.disconnects[reason as usize].load(Ordering::Relaxed);
            (reason, n)
        })
    }

    /// Deliveries by table and op, ordered; only those that happened.
    pub fn delivered_by_table(&self) -> Vec<DeliveredCount> {
        let by_table = self
            .0
            .delivered_by_table
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<DeliveredCount> = by_table
            .iter()
            .flat_map(|(table, counts)| {
                OPS.iter()
                    .zip(counts)
                    .filter(|(_, count)| **count > 0)
                    .map(|(op, count)| DeliveredCount {
                        table: table.clone(),
                        op: *op,
                        count: *count,
                    })
            })
            .collect();
        out.sort_by(|a, b| (&a.table, a.op.as_str()).cmp(&(&b.table, b.op.as_str())));
        out
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let c = &self.0;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            delivered: get(&c.delivered),
            duplicates: get(&c.duplicates),
            malformed: get(&c.malformed),
            emitted: get(&c.emitted),
            slow_disconnects: get(&c.slow_disconnects),
            resyncs: get(&c.resyncs),
            connects_refused: get(&c.connects_refused),
            replay_log_errors: get(&c.replay_log_errors),
            connected_sockets: get(&c.connected_sockets),
            buffered_events: get(&c.buffered_events),
            buffered_bytes: get(&c.buffered_bytes),
            source_changes: get(&c.source_changes),
        }
    }

    /// Counts a body that was not a change event (called by the consumer).
    pub fn record_malformed(&self) {
        self.0.malformed.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_delivered(&self, table: &str, op: Op) {
        self.0.delivered.fetch_add(1, Ordering::Relaxed);
        let slot = OPS.iter().position(|o| *o == op).unwrap_or(0);
        let mut by_table = self
            .0
            .delivered_by_table
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(counts) = by_table.get_mut(table) {
            counts[slot] += 1;
            return;
        }
        let own_label = match &self.0.followed_tables {
            Some(followed) => followed.contains(table),
            // `other` takes a place too.
            None => by_table.len() + 1 < MAX_TABLE_LABELS,
        };
        let label = if own_label { table } else { OTHER_TABLE };
        by_table.entry(label.to_owned()).or_insert([0; OPS.len()])[slot] += 1;
    }

    /// A change committed at `commit_time` was queued for its live sockets
    /// at `now`.
    pub(crate) fn record_deliver_lag(&self, commit_time: PgTimestamp, now: PgTimestamp) {
        let micros = commit_time.micros_until(now);
        observe(&self.0.lag.0, std::time::Duration::from_micros(micros));
    }

    pub(crate) fn record_disconnect(&self, reason: DisconnectReason) {
        if reason.is_slow() {
            self.0.slow_disconnects.fetch_add(1, Ordering::Relaxed);
        }
        self.0.disconnects[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_duplicate(&self) {
        self.0.duplicates.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_emitted(&self, n: u64) {
        self.0.emitted.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn record_resync(&self) {
        self.0.resyncs.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_connect_refused(&self) {
        self.0.connects_refused.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_replay_log_error(&self) {
        self.0.replay_log_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_source_change(&self) {
        self.0.source_changes.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn set_connected_sockets(&self, n: usize) {
        self.0.connected_sockets.store(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn set_buffer(&self, events: usize, bytes: usize) {
        self.0
            .buffered_events
            .store(events as u64, Ordering::Relaxed);
        self.0.buffered_bytes.store(bytes as u64, Ordering::Relaxed);
    }
}

/// The fan-out's families, read from its counters at each scrape.
#[derive(Debug)]
struct Families(FanoutStats);

impl Collector for Families {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let fanout = &self.0;
        let mut delivered = encoder.encode_descriptor(
            "walcast_fanout_delivered",
            "Changes accepted from RabbitMQ and fanned out (duplicates excluded), by table and op.",
            None,
            MetricType::Counter,
        )?;
        for count in fanout.delivered_by_table() {
            let labels = [("table", count.table.as_str()), ("op", count.op.as_str())];
            ConstCounter::new(count.count).encode(delivered.encode_family(&labels)?)?;
        }
        let stats = fanout.snapshot();
        for (name, help, value) in [
            (
                "walcast_fanout_duplicates",
                "Changes dropped because their id was seen already.",
                stats.duplicates,
            ),
            (
                "walcast_fanout_malformed",
                "RabbitMQ bodies that were not change events.",
                stats.malformed,
            ),
            (
                "walcast_fanout_source_changes",
                "Times the stream's x-walcast-source changed and the replay history restarted.",
                stats.source_changes,
            ),
            (
                "walcast_fanout_emitted",
                "change packets handed to sockets, live and replayed.",
                stats.emitted,
            ),
            (
                "walcast_fanout_slow_disconnects",
                "Sockets disconnected as too slow: send queue full (packets or bytes) or replay stalled.",
                stats.slow_disconnects,
            ),
            (
                "walcast_fanout_resyncs",
                "resync events sent.",
                stats.resyncs,
            ),
            (
                "walcast_fanout_connects_refused",
                "Socket.IO handshakes refused.",
                stats.connects_refused,
            ),
        ] {
            ConstCounter::new(value).encode(encoder.encode_descriptor(
                name,
                help,
                None,
                MetricType::Counter,
            )?)?;
        }
        let mut disconnects = encoder.encode_descriptor(
            "walcast_fanout_disconnects",
            "Sockets the gateway disconnected, by reason (queue_full, queue_bytes, replay_stall, token_expired).",
            None,
            MetricType::Counter,
        )?;
        for (reason, count) in fanout.disconnects() {
            let labels = [("reason", reason.as_str())];
            ConstCounter::new(count).encode(disconnects.encode_family(&labels)?)?;
        }
        for (name, help, value) in [
            (
                "walcast_fanout_connected_sockets",
                "Socket.IO sockets currently attached.",
                stats.connected_sockets,
            ),
            (
                "walcast_fanout_replay_buffer_events",
                "Changes held in the replay buffer.",
                stats.buffered_events,
            ),
            (
                "walcast_fanout_replay_buffer_bytes",
                "Approximate bytes held in the replay buffer.",
                stats.buffered_bytes,
            ),
        ] {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(stats: &FanoutStats) -> Vec<String> {
        let mut labels: Vec<String> = stats
            .delivered_by_table()
            .into_iter()
            .map(|c| c.table)
            .collect();
        labels.dedup();
        labels
    }

    #[test]
    fn tables_not_followed_fold_into_other() {
        let stats = FanoutStats::for_tables(&["orders".into(), "shop.items".into()]);
        stats.record_delivered("public.orders", Op::Insert);
        stats.record_delivered("shop.items", Op::Update);
        for n in 0..1000 {
            stats.record_delivered(&format!("evil.t{n}"), Op::Insert);
        }
        assert_eq!(labels(&stats), ["other", "public.orders", "shop.items"]);
        let other = stats
            .delivered_by_table()
            .into_iter()
            .find(|c| c.table == OTHER_TABLE)
            .unwrap();
        assert_eq!(other.count, 1000);
    }

    #[test]
    fn without_a_table_list_labels_are_capped() {
        let stats = FanoutStats::default();
        for n in 0..1000 {
            stats.record_delivered(&format!("s.t{n}"), Op::Delete);
        }
        let labels = labels(&stats);
        assert_eq!(labels.len(), MAX_TABLE_LABELS);
        assert!(labels.contains(&OTHER_TABLE.to_owned()));
        let total: u64 = stats.delivered_by_table().iter().map(|c| c.count).sum();
        assert_eq!(total, 1000);
    }

    #[test]
    fn disconnects_count_by_reason() {
        let stats = FanoutStats::default();
        stats.record_disconnect(DisconnectReason::QueueBytes);
        stats.record_disconnect(DisconnectReason::TokenExpired);
        assert_eq!(stats.snapshot().slow_disconnects, 1);
        let by_reason = stats.disconnects();
        assert_eq!(by_reason[1], (DisconnectReason::QueueBytes, 1));
        assert_eq!(by_reason[3], (DisconnectReason::TokenExpired, 1));
    }
}
