//! Fan-out counters for metrics: cheap atomics behind a cloneable handle.
//!
//! Counters only go up; gauges (`connected_sockets`, `buffered_events`,
//! `buffered_bytes`) are set by the hub. Nothing here formats metrics; the
//! HTTP `/metrics` endpoint reads a [`StatsSnapshot`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::event::Op;

#[derive(Debug, Default)]
struct Counters {
    delivered: AtomicU64,
    /// Deliveries by `schema.table`, one count per op (in [`OPS`] order).
    /// Bounded by the published tables; keyed by `String` so the hot path
    /// looks up by `&str` without allocating.
    delivered_by_table: Mutex<HashMap<String, [u64; 4]>>,
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
    /// Sockets disconnected because their send buffer was full.
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
const OPS: [Op; 4] = [Op::Insert, Op::Update, Op::Delete, Op::Truncate];

/// Deliveries of one table with one op.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveredCount {
    /// `schema.table`.
    pub table: String,
    pub op: Op,
    pub count: u64,
}

impl FanoutStats {
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
        match by_table.get_mut(table) {
            Some(counts) => counts[slot] += 1,
            None => {
                let mut counts = [0; 4];
                counts[slot] = 1;
                by_table.insert(table.to_owned(), counts);
            }
        }
    }

    pub(crate) fn record_duplicate(&self) {
        self.0.duplicates.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_emitted(&self, n: u64) {
        self.0.emitted.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn record_slow_disconnect(&self) {
        self.0.slow_disconnects.fetch_add(1, Ordering::Relaxed);
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
