//! Capture statistics: [`Metered`] wraps a [`Sink`] to count what passes
//! through it into [`CaptureStats`] (changes by table and op,
//! commit-to-publish lag, the durable position) for `/metrics`.
//!
//! It changes nothing about what is sent or when, and formats nothing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::Sink;
use crate::event::{ChangeEvent, Lsn, Op, PgTimestamp};
use crate::histogram::{Histogram, HistogramSnapshot};

/// A [`Sink`] that counts into [`CaptureStats`] what it passes on to the
/// sink it wraps. It changes nothing about what is sent or when.
pub struct Metered<'a, S> {
    inner: &'a mut S,
    stats: CaptureStats,
}

impl<'a, S: Sink> Metered<'a, S> {
    pub fn new(inner: &'a mut S, stats: CaptureStats) -> Metered<'a, S> {
        Metered { inner, stats }
    }
}

impl<S: Sink> Sink for Metered<'_, S> {
    type Error = S::Error;

    async fn send(&mut self, event: ChangeEvent) -> Result<(), S::Error> {
        self.stats.record_decoded(&event);
        let commit_time = event.commit_time;
        self.inner.send(event).await?;
        // After the send: a wait for the publish window (backpressure) is
        // part of the lag a reader sees.
        self.stats
            .record_handed_over(commit_time, PgTimestamp::now());
        Ok(())
    }

    async fn end_transaction(&mut self, end_lsn: Lsn) -> Result<(), S::Error> {
        self.inner.end_transaction(end_lsn).await?;
        self.stats.0.transactions.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn durable(&mut self) -> Result<Lsn, S::Error> {
        let position = self.inner.durable().await?;
        self.stats.record_durable(position);
        Ok(position)
    }

    async fn drain(&mut self) -> Result<Option<Lsn>, S::Error> {
        let position = self.inner.drain().await?;
        if let Some(position) = position {
            self.stats.record_durable(position);
        }
        Ok(position)
    }

    fn set_source(&mut self, source: &str) {
        self.inner.set_source(source);
    }

    fn filtered(&mut self, op: Op) {
        self.inner.filtered(op);
        self.stats.record_filtered(op);
    }

    fn backfill_chunk(&mut self, emitted: usize, dropped: usize) {
        self.inner.backfill_chunk(emitted, dropped);
        let counters = &self.stats.0;
        counters.backfill_chunks.fetch_add(1, Ordering::Relaxed);
        counters
            .backfill_rows
            .fetch_add(emitted as u64, Ordering::Relaxed);
        counters
            .backfill_dropped
            .fetch_add(dropped as u64, Ordering::Relaxed);
    }
}

/// Capture counters for `/metrics`: a cloneable handle, cheap to update on
/// every change. It does not format anything.
#[derive(Debug, Clone, Default)]
pub struct CaptureStats(Arc<CaptureCounters>);

/// Sentinel for "no lag measured yet".
const NO_LAG: u64 = u64::MAX;

/// Schema, table and op of a change.
type ChangeKind = (Arc<str>, Arc<str>, Op);

#[derive(Debug)]
struct CaptureCounters {
    /// Changes by kind. Bounded by the configured tables × 4 ops.
    decoded: Mutex<HashMap<ChangeKind, u64>>,
    /// Changes of tables outside the configured ones, by op only: their
    /// table names would make the label set as large as the database.
    filtered: Mutex<HashMap<Op, u64>>,
    transactions: AtomicU64,
    /// Commit-to-publish lag of the last change, in microseconds.
    last_lag_micros: AtomicU64,
    lag: Histogram,
    durable_lsn: AtomicU64,
    /// Backfill chunks closed, rows sent as `read` events, rows left out.
    backfill_chunks: AtomicU64,
    backfill_rows: AtomicU64,
    backfill_dropped: AtomicU64,
}

impl Default for CaptureCounters {
    fn default() -> Self {
        CaptureCounters {
            decoded: Mutex::default(),
            filtered: Mutex::default(),
            transactions: AtomicU64::new(0),
            last_lag_micros: AtomicU64::new(NO_LAG),
            lag: Histogram::default(),
            durable_lsn: AtomicU64::new(0),
            backfill_chunks: AtomicU64::new(0),
            backfill_rows: AtomicU64::new(0),
            backfill_dropped: AtomicU64::new(0),
        }
    }
}

/// What the capture's backfill windows did ([`CaptureStats::backfill`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BackfillCounts {
    pub chunks: u64,
    pub rows: u64,
    pub dropped: u64,
}

/// Changes decoded from one table with one op.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedCount {
    pub schema: String,
    pub table: String,
    pub op: Op,
    pub count: u64,
}

impl CaptureStats {
    /// Changes decoded and handed to the sink, by table and op, ordered.
    pub fn decoded(&self) -> Vec<DecodedCount> {
        let decoded = self.0.decoded.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<DecodedCount> = decoded
            .iter()
            .map(|((schema, table, op), count)| DecodedCount {
                schema: schema.to_string(),
                table: table.to_string(),
                op: *op,
                count: *count,
            })
            .collect();
        out.sort_by(|a, b| {
            (&a.schema, &a.table, a.op.as_str()).cmp(&(&b.schema, &b.table, b.op.as_str()))
        });
        out
    }

    /// Changes of tables outside `postgres.tables` that were left out, by
    /// op, ordered by op.
    pub fn filtered(&self) -> Vec<(Op, u64)> {
        let filtered = self.0.filtered.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<(Op, u64)> = filtered.iter().map(|(op, n)| (*op, *n)).collect();
        out.sort_by_key(|(op, _)| op.as_str());
        out
    }

    /// Transactions whose every change was handed to the sink.
    pub fn transactions(&self) -> u64 {
        self.0.transactions.load(Ordering::Relaxed)
    }

    /// Commit time to hand-over to the sink, of the last change.
    pub fn last_commit_to_publish_lag(&self) -> Option<Duration> {
        match self.0.last_lag_micros.load(Ordering::Relaxed) {
            NO_LAG => None,
            micros => Some(Duration::from_micros(micros)),
        }
    }

    /// Commit time to hand-over to the sink, of every change.
    pub fn commit_to_publish_lag(&self) -> HistogramSnapshot {
        self.0.lag.snapshot()
    }

    /// The last position the sink reported durable (`None` before any).
    pub fn durable_lsn(&self) -> Option<Lsn> {
        match self.0.durable_lsn.load(Ordering::Relaxed) {
            0 => None,
            lsn => Some(Lsn(lsn)),
        }
    }

    /// Backfill progress: chunks closed, rows sent as `read` events, rows
    /// left out because they changed inside their window.
    pub fn backfill(&self) -> BackfillCounts {
        let counters = &self.0;
        BackfillCounts {
            chunks: counters.backfill_chunks.load(Ordering::Relaxed),
            rows: counters.backfill_rows.load(Ordering::Relaxed),
            dropped: counters.backfill_dropped.load(Ordering::Relaxed),
        }
    }

    fn record_decoded(&self, event: &ChangeEvent) {
        let mut decoded = self.0.decoded.lock().unwrap_or_else(|p| p.into_inner());
        // Cloning the Arcs is a reference count, not a copy of the names.
        let key = (event.schema.clone(), event.table.clone(), event.op);
        *decoded.entry(key).or_default() += 1;
    }

    fn record_filtered(&self, op: Op) {
        let mut filtered = self.0.filtered.lock().unwrap_or_else(|p| p.into_inner());
        *filtered.entry(op).or_default() += 1;
    }

    fn record_handed_over(&self, commit_time: PgTimestamp, now: PgTimestamp) {
        // Clocks of two hosts: a commit "in the future" counts as no lag.
        // (An i64 difference never reaches NO_LAG.)
        let micros = u64::try_from(now.0.saturating_sub(commit_time.0)).unwrap_or(0);
        self.0.last_lag_micros.store(micros, Ordering::Relaxed);
        self.0.lag.observe(Duration::from_micros(micros));
    }

    fn record_durable(&self, position: Lsn) {
        self.0.durable_lsn.fetch_max(position.0, Ordering::Relaxed);
    }
}
