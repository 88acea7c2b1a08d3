//! Capture statistics: [`Metered`] wraps a [`Sink`] to count what passes
//! through it into [`CaptureStats`] (changes by table and op,
//! commit-to-publish lag, the durable position), and the `walcast_capture_*`
//! families that `/metrics` shows, which [`CaptureStats::register`] adds to
//! the process's registry.
//!
//! It changes nothing about what is sent or when. The text format is
//! `prometheus_client`'s.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::Sink;
use crate::event::{ChangeEvent, Lsn, Op, PgTimestamp};
use crate::histogram::{duration_histogram, observe};

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
        self.stats.0.transactions.inc();
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
        counters.backfill_chunks.inc();
        counters.backfill_rows.inc_by(emitted as u64);
        counters.backfill_dropped.inc_by(dropped as u64);
    }
}

/// Capture counters for `/metrics`: a cloneable handle, cheap to update on
/// every change.
#[derive(Debug, Clone, Default)]
pub struct CaptureStats(Arc<CaptureCounters>);

/// Sentinel for "no lag measured yet".
const NO_LAG: u64 = u64::MAX;

/// Schema, table and op of a change.
type ChangeKind = (Arc<str>, Arc<str>, Op);

/// The labels `table` (`schema.table`) and `op`.
type TableOp = [(&'static str, String); 2];

/// The label `op`.
type OpLabel = [(&'static str, &'static str); 1];

#[derive(Debug)]
struct CaptureCounters {
    /// `walcast_capture_changes_decoded_total`; bounded by the configured
    /// tables × 4 ops.
    decoded_family: Family<TableOp, Counter>,
    /// The counters of `decoded_family` by kind, so that the hot path finds
    /// its counter by the event's names (reference counts, no formatting).
    decoded: Mutex<HashMap<ChangeKind, Counter>>,
    /// Changes of tables outside the configured ones, by op only: their
    /// table names would make the label set as large as the database.
    filtered: Family<OpLabel, Counter>,
    transactions: Counter,
    /// Commit-to-publish lag of the last change, in microseconds.
    last_lag_micros: AtomicU64,
    lag: Histogram,
    durable_lsn: AtomicU64,
    /// Backfill chunks closed, rows sent as `read` events, rows left out.
    backfill_chunks: Counter,
    backfill_rows: Counter,
    backfill_dropped: Counter,
}

impl Default for CaptureCounters {
    fn default() -> Self {
        CaptureCounters {
            decoded_family: Family::default(),
            decoded: Mutex::default(),
            filtered: Family::default(),
            transactions: Counter::default(),
            last_lag_micros: AtomicU64::new(NO_LAG),
            lag: duration_histogram(),
            durable_lsn: AtomicU64::new(0),
            backfill_chunks: Counter::default(),
            backfill_rows: Counter::default(),
            backfill_dropped: Counter::default(),
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
    /// Adds the `walcast_capture_*` families to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        let c = &self.0;
        registry.register(
            "walcast_capture_changes_decoded",
            "Changes decoded from the slot and handed to the publisher, by table and op",
            c.decoded_family.clone(),
        );
        registry.register(
            "walcast_capture_transactions",
            "Transactions whose every change was handed to the publisher",
            c.transactions.clone(),
        );
        registry.register(
            "walcast_capture_commit_to_publish_lag_seconds",
            "Time from a change's commit in Postgres to its hand-over to the publisher",
            c.lag.clone(),
        );
        registry.register_collector(Box::new(LastValues(self.clone())));
        registry.register(
            "walcast_capture_changes_filtered",
            "Changes of tables outside postgres.tables that the publication sent and walcast left out, by op",
            c.filtered.clone(),
        );
        registry.register(
            "walcast_backfill_rows",
            "Rows a backfill published as read events (walcast backfill)",
            c.backfill_rows.clone(),
        );
        registry.register(
            "walcast_backfill_rows_dropped",
            "Rows a backfill read but left out because they changed inside their chunk's window",
            c.backfill_dropped.clone(),
        );
        registry.register(
            "walcast_backfill_chunks",
            "Backfill chunks whose high watermark the capture processed",
            c.backfill_chunks.clone(),
        );
    }

    /// Changes decoded and handed to the sink, by table and op, ordered.
    pub fn decoded(&self) -> Vec<DecodedCount> {
        let decoded = self.0.decoded.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<DecodedCount> = decoded
            .iter()
            .map(|((schema, table, op), count)| DecodedCount {
                schema: schema.to_string(),
                table: table.to_string(),
                op: *op,
                count: count.get(),
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
        let mut out: Vec<(Op, u64)> = [Op::Insert, Op::Update, Op::Delete, Op::Truncate]
            .into_iter()
            .filter_map(|op| {
                let counter = self.0.filtered.get(&[("op", op.as_str())])?;
                Some((op, counter.get()))
            })
            .collect();
        out.sort_by_key(|(op, _)| op.as_str());
        out
    }

    /// Transactions whose every change was handed to the sink.
    pub fn transactions(&self) -> u64 {
        self.0.transactions.get()
    }

    /// Commit time to hand-over to the sink, of the last change.
    pub fn last_commit_to_publish_lag(&self) -> Option<Duration> {
        match self.0.last_lag_micros.load(Ordering::Relaxed) {
            NO_LAG => None,
            micros => Some(Duration::from_micros(micros)),
        }
    }

    /// Commit time to hand-over to the sink, of every change.
    pub fn commit_to_publish_lag(&self) -> &Histogram {
        &self.0.lag
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
            chunks: counters.backfill_chunks.get(),
            rows: counters.backfill_rows.get(),
            dropped: counters.backfill_dropped.get(),
        }
    }

    fn record_decoded(&self, event: &ChangeEvent) {
        let mut decoded = self.0.decoded.lock().unwrap_or_else(|p| p.into_inner());
        // Cloning the Arcs is a reference count, not a copy of the names.
        let key = (event.schema.clone(), event.table.clone(), event.op);
        if let Some(counter) = decoded.get(&key) {
            counter.inc();
            return;
        }
        let labels = [
            ("table", format!("{}.{}", event.schema, event.table)),
            ("op", event.op.as_str().to_owned()),
        ];
        let counter = self.0.decoded_family.get_or_create_owned(&labels);
        counter.inc();
        decoded.insert(key, counter);
    }

    fn record_filtered(&self, op: Op) {
        self.0.filtered.get_or_create(&[("op", op.as_str())]).inc();
    }

    fn record_handed_over(&self, commit_time: PgTimestamp, now: PgTimestamp) {
        // (A saturated i64 difference never reaches NO_LAG.)
        let micros = commit_time.micros_until(now);
        self.0.last_lag_micros.store(micros, Ordering::Relaxed);
        observe(&self.0.lag, Duration::from_micros(micros));
    }

    fn record_durable(&self, position: Lsn) {
        self.0.durable_lsn.fetch_max(position.0, Ordering::Relaxed);
    }
}

/// The gauges that exist only once measured: the last change's lag and the
/// durable position. Left out before, rather than shown as a made-up zero.
#[derive(Debug)]
struct LastValues(CaptureStats);

impl Collector for LastValues {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some(lag) = self.0.last_commit_to_publish_lag() {
            let gauge = ConstGauge::new(lag.as_secs_f64());
            gauge.encode(encoder.encode_descriptor(
                "walcast_capture_last_commit_to_publish_lag_seconds",
                "Commit-to-publish lag of the last change handed to the publisher.",
                None,
                gauge.metric_type(),
            )?)?;
        }
        if let Some(lsn) = self.0.durable_lsn() {
            let gauge = ConstGauge::new(lsn.0);
            gauge.encode(encoder.encode_descriptor(
                "walcast_capture_durable_lsn",
                "WAL position (bytes) up to which RabbitMQ confirmed every change; reported to Postgres as flushed.",
                None,
                gauge.metric_type(),
            )?)?;
        }
        Ok(())
    }
}
