//! `GET /metrics`: every stage's counters in the Prometheus text format
//! (version 0.0.4), plus the small [`Histogram`] the stages observe into.
//!
//! The stages keep their own numbers behind cheap, cloneable handles
//! ([`CaptureStats`], [`PublisherStats`], [`ConsumerStatus`],
//! [`FanoutStats`], [`RequestStats`], the [`Health`] registry). A
//! [`Metrics`] holds the handles of the roles this process plays and, on
//! each scrape, formats a snapshot of them; families of roles the process
//! does not play are left out. Rendering only reads atomics and takes short
//! locks, so a scrape never waits on Postgres or RabbitMQ.
//!
//! The one number that needs a query, the slot's position and retained WAL,
//! comes from [`poll_slot`]: a background task that reads
//! `pg_replication_slots` every few seconds, each round trip bounded by a
//! timeout, and leaves the latest answer in [`SlotStats`]. When the last
//! poll failed, the slot's values are left out rather than shown stale, and
//! `walcast_slot_poll_success` says so.
//!
//! Names, all prefixed `walcast_`: see [`Metrics::render`]. Labels are
//! bounded: tables and ops of the publication, matched route templates,
//! component names. This module does not count anything itself and does
//! not bind a listener: `app` mounts [`serve`] on the HTTP router.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::api::{Health, RequestStats};
use crate::capture::CaptureStats;
use crate::catalog::{Catalog, SlotInfo};
use crate::config::Config;
use crate::consumer::{ConsumerStatus, DeadReason};
use crate::event::Lsn;
use crate::fanout::FanoutStats;
use crate::publisher::PublisherStats;

/// The content type of the Prometheus text exposition format 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How often [`poll_slot`] reads `pg_replication_slots`.
pub const SLOT_POLL_INTERVAL: Duration = Duration::from_secs(5);

/// How long one slot poll (connecting included) may take. A Postgres that
/// answers slower than this is reported as a failed poll.
pub const SLOT_POLL_TIMEOUT: Duration = Duration::from_secs(2);

/// Upper bounds, in seconds, of the buckets of every duration histogram:
/// from a fast local publisher confirm (1 ms) to a capture that is minutes
/// behind.
pub const DURATION_BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// A fixed-bucket histogram of durations over atomics: cheap enough to
/// observe on every message, readable from any thread.
#[derive(Debug)]
pub struct Histogram {
    /// One count per bucket of [`DURATION_BUCKETS`], then the overflow.
    counts: [AtomicU64; DURATION_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_micros: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub fn observe(&self, value: Duration) {
        let seconds = value.as_secs_f64();
        let bucket = DURATION_BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(DURATION_BUCKETS.len());
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(value.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = Vec::with_capacity(DURATION_BUCKETS.len());
        let mut running = 0u64;
        for count in &self.counts[..DURATION_BUCKETS.len()] {
            running += count.load(Ordering::Relaxed);
            cumulative.push(running);
        }
        let count = running + self.counts[DURATION_BUCKETS.len()].load(Ordering::Relaxed);
        HistogramSnapshot {
            cumulative,
            count,
            sum_seconds: self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}

/// A histogram at one moment, in Prometheus's terms.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// Observations at or below each bound of [`DURATION_BUCKETS`].
    pub cumulative: Vec<u64>,
    /// All observations (the `+Inf` bucket).
    pub count: u64,
    pub sum_seconds: f64,
}

/// The capture role's handles: what the capture loop, the publisher and
/// the slot poller count into.
#[derive(Debug, Clone)]
pub struct CaptureHandles {
    pub capture: CaptureStats,
    pub publisher: PublisherStats,
    pub slot: SlotStats,
}

/// The numbers `/metrics` shows, by role. Cheap to clone; every clone is the
/// same set.
#[derive(Debug, Clone)]
pub struct Metrics(Arc<Sources>);

#[derive(Debug)]
struct Sources {
    started_unix: f64,
    health: Health,
    capture: OnceLock<CaptureHandles>,
    requests: OnceLock<RequestStats>,
    gateway: OnceLock<(FanoutStats, ConsumerStatus)>,
}

impl Metrics {
    pub fn new(health: Health) -> Metrics {
        Metrics(Arc::new(Sources {
            started_unix: unix_now(),
            health,
            capture: OnceLock::new(),
            requests: OnceLock::new(),
            gateway: OnceLock::new(),
        }))
    }

    /// The capture role's handles, created on first call (for `slot`).
    pub fn capture(&self, slot: &str) -> CaptureHandles {
        self.0
            .capture
            .get_or_init(|| CaptureHandles {
                capture: CaptureStats::default(),
                publisher: PublisherStats::default(),
                slot: SlotStats::new(slot),
            })
            .clone()
    }

    /// Shows the API's request counters. Only the first call counts.
    pub fn watch_requests(&self, requests: RequestStats) {
        let _ = self.0.requests.set(requests);
    }

    /// Shows the gateway's fan-out and consumer counters. Only the first
    /// call counts.
    pub fn watch_gateway(&self, fanout: FanoutStats, consumer: ConsumerStatus) {
        let _ = self.0.gateway.set((fanout, consumer));
    }

    /// The exposition: every family of the roles this process plays.
    ///
    /// - always: `walcast_build_info{version}`,
    ///   `walcast_process_start_time_seconds`,
    ///   `walcast_component_healthy{component}`;
    /// - capture: `walcast_capture_changes_decoded_total{table,op}`,
    ///   `walcast_capture_transactions_total`,
    ///   `walcast_capture_commit_to_publish_lag_seconds` (histogram),
    ///   `walcast_capture_last_commit_to_publish_lag_seconds`,
    ///   `walcast_capture_durable_lsn`,
    ///   `walcast_capture_changes_filtered_total{op}`,
    ///   `walcast_publisher_{published,confirmed}_total{table,op}`,
    ///   `walcast_publisher_oversize_total{table,op}`,
    ///   `walcast_publisher_{nacks,republished,returned,refused,reconnects}_total`,
    ///   `walcast_publisher_confirm_latency_seconds` (histogram),
    ///   `walcast_publisher_{connected,blocked}`,
    ///   `walcast_slot_{poll_success,exists,active}{slot}`,
    ///   `walcast_slot_poll_failures_total{slot}`,
    ///   `walcast_slot_{confirmed_flush_lsn,retained_wal_bytes,safe_wal_size_bytes}{slot}`;
    /// - gateway: `walcast_consumer_{received,acked,rejected,redelivered,sessions}_total`,
    ///   `walcast_consumer_dead_letters_total{reason}`, `walcast_consumer_consuming`,
    ///   `walcast_fanout_delivered_total{table,op}`,
    ///   `walcast_fanout_{duplicates,malformed,emitted,slow_disconnects,resyncs,connects_refused}_total`,
    ///   `walcast_fanout_disconnects_total{reason}`,
    ///   `walcast_fanout_connected_sockets`,
    ///   `walcast_fanout_replay_buffer_{events,bytes}`;
    /// - api: `walcast_http_requests_total{method,route,status}`,
    ///   `walcast_http_request_duration_seconds{method,route,status}`
    ///   (summary: `_sum` and `_count`).
    pub fn render(&self) -> String {
        let sources = &self.0;
        let mut out = Exposition::default();
        out.family(
            "walcast_build_info",
            Kind::Gauge,
            "walcast's version; always 1.",
        );
        out.sample(
            "walcast_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))],
            1u64,
        );
        out.family(
            "walcast_process_start_time_seconds",
            Kind::Gauge,
            "When this process started, in seconds since the Unix epoch.",
        );
        out.sample(
            "walcast_process_start_time_seconds",
            &[],
            sources.started_unix,
        );
        out.family(
            "walcast_component_healthy",
            Kind::Gauge,
            "Whether a component reported itself healthy (1) or not (0), as /readyz shows it.",
        );
        for component in sources.health.components() {
            out.sample(
                "walcast_component_healthy",
                &[("component", &component.name)],
                component.healthy,
            );
        }
        if let Some(capture) = sources.capture.get() {
            render_capture(&mut out, &capture.capture);
            render_publisher(&mut out, &capture.publisher);
            render_slot(&mut out, &capture.slot);
        }
        if let Some((fanout, consumer)) = sources.gateway.get() {
            render_consumer(&mut out, consumer);
            render_fanout(&mut out, fanout);
        }
        if let Some(requests) = sources.requests.get() {
            render_requests(&mut out, requests);
        }
        out.text
    }
}

/// Metrics of the stages this process runs, in the Prometheus text format.
///
/// Served by every role; not an API request itself (scrapes are not counted
/// in `walcast_http_requests_total`) and never behind auth.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((status = 200,
        description = "Prometheus text exposition format 0.0.4; every family carries its own # HELP and # TYPE lines",
        content_type = "text/plain; version=0.0.4; charset=utf-8",
        body = String))
)]
pub async fn serve(State(metrics): State<Metrics>) -> Response {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], metrics.render()).into_response()
}

fn render_capture(out: &mut Exposition, capture: &CaptureStats) {
    let name = "walcast_capture_changes_decoded_total";
    out.family(
        name,
        Kind::Counter,
        "Changes decoded from the slot and handed to the publisher, by table and op.",
    );
    for decoded in capture.decoded() {
        let table = format!("{}.{}", decoded.schema, decoded.table);
        out.sample(
            name,
            &[("table", &table), ("op", decoded.op.as_str())],
            decoded.count,
        );
    }
    out.counter(
        "walcast_capture_transactions_total",
        "Transactions whose every change was handed to the publisher.",
        capture.transactions(),
    );
    out.histogram(
        "walcast_capture_commit_to_publish_lag_seconds",
        "Time from a change's commit in Postgres to its hand-over to the publisher.",
        &capture.commit_to_publish_lag(),
    );
    if let Some(lag) = capture.last_commit_to_publish_lag() {
        out.gauge(
            "walcast_capture_last_commit_to_publish_lag_seconds",
            "Commit-to-publish lag of the last change handed to the publisher.",
            lag.as_secs_f64(),
        );
    }
    if let Some(lsn) = capture.durable_lsn() {
        out.gauge(
            "walcast_capture_durable_lsn",
            "WAL position (bytes) up to which RabbitMQ confirmed every change; reported to Postgres as flushed.",
            lsn.0,
        );
    }
    let name = "walcast_capture_changes_filtered_total";
    out.family(
        name,
        Kind::Counter,
        "Changes of tables outside postgres.tables that the publication sent and walcast left out, by op.",
    );
    for (op, count) in capture.filtered() {
        out.sample(name, &[("op", op.as_str())], count);
    }
}

fn render_publisher(out: &mut Exposition, publisher: &PublisherStats) {
    let by_key = publisher.by_routing_key();
    type Count = fn(&crate::publisher::RoutingKeyCounts) -> u64;
    let families: [(&str, &str, Count); 3] = [
        (
            "walcast_publisher_published_total",
            "Messages published to RabbitMQ (republishes included), by table and op.",
            |c| c.published,
        ),
        (
            "walcast_publisher_confirmed_total",
            "Messages RabbitMQ confirmed, by table and op.",
            |c| c.confirmed,
        ),
        (
            "walcast_publisher_oversize_total",
            "Events published as their oversize stub (new and old null), too large for rabbitmq.max_event_bytes or the broker, by table and op.",
            |c| c.oversize,
        ),
    ];
    for (name, help, count) in families {
        out.family(name, Kind::Counter, help);
        for (routing_key, counts) in &by_key {
            // `<schema>.<table>.<op>`: the op never has a dot in it.
            let (table, op) = routing_key.rsplit_once('.').unwrap_or((routing_key, ""));
            out.sample(name, &[("table", table), ("op", op)], count(counts));
        }
    }
    let stats = publisher.snapshot();
    out.counter(
        "walcast_publisher_nacks_total",
        "Messages RabbitMQ refused (nack); each is republished.",
        stats.nacked,
    );
    out.counter(
        "walcast_publisher_republished_total",
        "Publishes of a message published before (after a nack or a lost connection).",
        stats.republished,
    );
    out.counter(
        "walcast_publisher_returned_total",
        "Confirmed messages the broker also returned as unroutable.",
        stats.returned,
    );
    out.counter(
        "walcast_publisher_refused_total",
        "Times RabbitMQ refused a published message (406, e.g. larger than its max_message_size).",
        stats.refused,
    );
    out.counter(
        "walcast_publisher_reconnects_total",
        "Connections to RabbitMQ established again after one was lost.",
        stats.reconnects,
    );
    out.histogram(
        "walcast_publisher_confirm_latency_seconds",
        "Time from writing a message to RabbitMQ's confirm of it.",
        &publisher.confirm_latency(),
    );
    out.gauge(
        "walcast_publisher_connected",
        "Whether the publisher has a connection with a confirming channel.",
        stats.connected,
    );
    out.gauge(
        "walcast_publisher_blocked",
        "Whether RabbitMQ blocks publishing (resource alarm).",
        stats.blocked,
    );
}

fn render_slot(out: &mut Exposition, slot: &SlotStats) {
    let state = slot.lock();
    let labels = [("slot", state.slot.as_str())];
    out.family(
        "walcast_slot_poll_success",
        Kind::Gauge,
        "Whether the last read of pg_replication_slots succeeded within its timeout.",
    );
    out.sample("walcast_slot_poll_success", &labels, state.last_poll_ok);
    out.family(
        "walcast_slot_poll_failures_total",
        Kind::Counter,
        "Reads of pg_replication_slots that failed or timed out.",
    );
    out.sample("walcast_slot_poll_failures_total", &labels, state.failures);
    if !state.last_poll_ok {
        return;
    }
    out.family(
        "walcast_slot_exists",
        Kind::Gauge,
        "Whether the replication slot exists.",
    );
    out.sample("walcast_slot_exists", &labels, state.info.is_some());
    let Some(info) = &state.info else {
        return;
    };
    out.family(
        "walcast_slot_active",
        Kind::Gauge,
        "Whether a replication connection is streaming from the slot.",
    );
    out.sample("walcast_slot_active", &labels, info.active);
    let confirmed = info
        .confirmed_flush_lsn
        .as_deref()
        .and_then(|text| text.parse::<Lsn>().ok());
    let gauges = [
        (
            "walcast_slot_confirmed_flush_lsn",
            "The slot's confirmed_flush_lsn, as a WAL position in bytes.",
            confirmed.and_then(|lsn| i64::try_from(lsn.0).ok()),
        ),
        (
            "walcast_slot_retained_wal_bytes",
            "WAL the server keeps for the slot: current WAL position minus restart_lsn.",
            info.retained_wal_bytes,
        ),
        (
            "walcast_slot_safe_wal_size_bytes",
            "WAL that can still be written before the slot is invalidated (max_slot_wal_keep_size).",
            info.safe_wal_size,
        ),
    ];
    for (name, help, value) in gauges {
        if let Some(value) = value {
            out.family(name, Kind::Gauge, help);
            out.sample(name, &labels, value);
        }
    }
}

fn render_consumer(out: &mut Exposition, consumer: &ConsumerStatus) {
    out.counter(
        "walcast_consumer_received_total",
        "Deliveries received from this gateway's RabbitMQ queue.",
        consumer.received(),
    );
    out.counter(
        "walcast_consumer_acked_total",
        "Deliveries acknowledged after the fan-out took them.",
        consumer.acked(),
    );
    out.counter(
        "walcast_consumer_rejected_total",
        "Deliveries not taken by the fan-out (dead-lettered, any reason).",
        consumer.rejected(),
    );
    let dead = "walcast_consumer_dead_letters_total";
    out.family(
        dead,
        Kind::Counter,
        "Messages published to the dead-letter queue (rabbitmq.dead_letter), by x-walcast-reason.",
    );
    for reason in DeadReason::ALL {
        out.sample(
            dead,
            &[("reason", reason.as_str())],
            consumer.dead_letters(reason),
        );
    }
    out.counter(
        "walcast_consumer_redelivered_total",
        "Deliveries RabbitMQ flagged as redelivered.",
        consumer.redelivered(),
    );
    out.counter(
        "walcast_consumer_sessions_total",
        "Consuming sessions started (1 + reconnects).",
        consumer.sessions(),
    );
    out.gauge(
        "walcast_consumer_consuming",
        "Whether a consuming session is up.",
        consumer.is_consuming(),
    );
}

fn render_fanout(out: &mut Exposition, fanout: &FanoutStats) {
    let delivered = "walcast_fanout_delivered_total";
    out.family(
        delivered,
        Kind::Counter,
        "Changes accepted from RabbitMQ and fanned out (duplicates excluded), by table and op.",
    );
    for count in fanout.delivered_by_table() {
        out.sample(
            delivered,
            &[("table", &count.table), ("op", count.op.as_str())],
            count.count,
        );
    }
    let stats = fanout.snapshot();
    for (name, help, value) in [
        (
            "walcast_fanout_duplicates_total",
            "Changes dropped because their id was seen already.",
            stats.duplicates,
        ),
        (
            "walcast_fanout_malformed_total",
            "RabbitMQ bodies that were not change events.",
            stats.malformed,
        ),
        (
            "walcast_fanout_source_changes_total",
            "Times the stream's x-walcast-source changed and the replay history restarted.",
            stats.source_changes,
        ),
        (
            "walcast_fanout_emitted_total",
            "change packets handed to sockets, live and replayed.",
            stats.emitted,
        ),
        (
            "walcast_fanout_slow_disconnects_total",
            "Sockets disconnected as too slow: send queue full (packets or bytes) or replay stalled.",
            stats.slow_disconnects,
        ),
        (
            "walcast_fanout_resyncs_total",
            "resync events sent.",
            stats.resyncs,
        ),
        (
            "walcast_fanout_connects_refused_total",
            "Socket.IO handshakes refused.",
            stats.connects_refused,
        ),
    ] {
        out.counter(name, help, value);
    }
    let disconnects = "walcast_fanout_disconnects_total";
    out.family(
        disconnects,
        Kind::Counter,
        "Sockets the gateway disconnected, by reason (queue_full, queue_bytes, replay_stall, token_expired).",
    );
    for (reason, count) in fanout.disconnects() {
        out.sample(disconnects, &[("reason", reason.as_str())], count);
    }
    out.gauge(
        "walcast_fanout_connected_sockets",
        "Socket.IO sockets currently attached.",
        stats.connected_sockets,
    );
    out.gauge(
        "walcast_fanout_replay_buffer_events",
        "Changes held in the replay buffer.",
        stats.buffered_events,
    );
    out.gauge(
        "walcast_fanout_replay_buffer_bytes",
        "Approximate bytes held in the replay buffer.",
        stats.buffered_bytes,
    );
}

fn render_requests(out: &mut Exposition, requests: &RequestStats) {
    let snapshot = requests.snapshot();
    let counter = "walcast_http_requests_total";
    out.family(
        counter,
        Kind::Counter,
        "HTTP API requests by method, matched route and status.",
    );
    let labels = |key: &crate::api::RequestKey, status: &str| {
        [
            ("method", key.method.to_owned()),
            ("route", key.route.clone()),
            ("status", status.to_owned()),
        ]
    };
    for (key, stats) in &snapshot {
        let status = key.status.to_string();
        let labels = labels(key, &status);
        out.sample(counter, &as_refs(&labels), stats.count);
    }
    let summary = "walcast_http_request_duration_seconds";
    out.family(
        summary,
        Kind::Summary,
        "Time to answer HTTP API requests, by method, matched route and status.",
    );
    for (key, stats) in &snapshot {
        let status = key.status.to_string();
        let labels = labels(key, &status);
        out.sample(
            &format!("{summary}_sum"),
            &as_refs(&labels),
            stats.total_latency.as_secs_f64(),
        );
        out.sample(&format!("{summary}_count"), &as_refs(&labels), stats.count);
    }
}

fn as_refs<'a>(labels: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    labels.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// The latest answer of `pg_replication_slots` for one slot, kept by
/// [`poll_slot`]. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SlotStats(Arc<Mutex<SlotState>>);

#[derive(Debug)]
struct SlotState {
    slot: String,
    last_poll_ok: bool,
    failures: u64,
    /// From the last successful poll; `None` when the slot did not exist.
    info: Option<SlotInfo>,
}

impl SlotStats {
    pub fn new(slot: &str) -> SlotStats {
        SlotStats(Arc::new(Mutex::new(SlotState {
            slot: slot.to_owned(),
            last_poll_ok: false,
            failures: 0,
            info: None,
        })))
    }

    /// The slot's confirmed_flush_lsn from the last successful poll.
    pub fn confirmed_flush_lsn(&self) -> Option<Lsn> {
        let state = self.lock();
        state
            .info
            .as_ref()?
            .confirmed_flush_lsn
            .as_deref()?
            .parse()
            .ok()
    }

    fn record(&self, info: Option<SlotInfo>) {
        let mut state = self.lock();
        state.last_poll_ok = true;
        state.info = info;
    }

    fn record_failure(&self) {
        let mut state = self.lock();
        state.last_poll_ok = false;
        state.failures += 1;
    }

    fn lock(&self) -> MutexGuard<'_, SlotState> {
        // Single-field updates: a poisoned lock holds consistent data.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Reads the slot's row of `pg_replication_slots` into `stats` every
/// [`SLOT_POLL_INTERVAL`] until `stop`. Each poll, connecting included, is
/// bounded by [`SLOT_POLL_TIMEOUT`]; a failed or slow poll drops the
/// connection and is retried at the next interval.
pub async fn poll_slot(stats: SlotStats, config: &Config, stop: CancellationToken) {
    let mut pg = config.pg_config();
    pg.application_name(format!("{}-metrics", config.postgres.application_name));
    pg.connect_timeout(SLOT_POLL_TIMEOUT);
    let slot = config.postgres.slot.clone();
    let mut catalog: Option<Catalog> = None;
    let mut failing = false;
    loop {
        let poll = async {
            if catalog.is_none() {
                catalog = Some(Catalog::connect(&pg).await?);
            }
            match &catalog {
                Some(catalog) => catalog.slot(&slot).await,
                None => unreachable!("connected above"),
            }
        };
        let error = match tokio::time::timeout(SLOT_POLL_TIMEOUT, poll).await {
            Ok(Ok(info)) => {
                stats.record(info);
                if failing {
                    info!(slot, "reading the slot's metrics works again");
                    failing = false;
                }
                None
            }
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some(format!(
                "no answer within {} ms",
                SLOT_POLL_TIMEOUT.as_millis()
            )),
        };
        if let Some(error) = error {
            // A fresh connection next time: this one may be stuck.
            catalog = None;
            stats.record_failure();
            if !failing {
                warn!(slot, %error, "cannot read the slot's metrics from pg_replication_slots; retrying");
                failing = true;
            }
        }
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(SLOT_POLL_INTERVAL) => {}
        }
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
    Summary,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
            Kind::Summary => "summary",
        }
    }
}

/// A sample value, written the way the text format wants it.
trait SampleValue {
    fn write_to(&self, out: &mut String);
}

impl SampleValue for u64 {
    fn write_to(&self, out: &mut String) {
        let _ = write!(out, "{self}");
    }
}

impl SampleValue for i64 {
    fn write_to(&self, out: &mut String) {
        let _ = write!(out, "{self}");
    }
}

impl SampleValue for bool {
    fn write_to(&self, out: &mut String) {
        out.push(if *self { '1' } else { '0' });
    }
}

impl SampleValue for f64 {
    fn write_to(&self, out: &mut String) {
        if self.is_nan() {
            out.push_str("NaN");
        } else if self.is_infinite() {
            out.push_str(if *self > 0.0 { "+Inf" } else { "-Inf" });
        } else {
            // Rust's shortest round-trip form: "0.005", "12", "1e-7".
            let _ = write!(out, "{self}");
        }
    }
}

/// The text being built: `# HELP` and `# TYPE` once per family, then its
/// samples, one per line.
#[derive(Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: Kind, help: &str) {
        self.text.push_str("# HELP ");
        self.text.push_str(name);
        self.text.push(' ');
        for c in help.chars() {
            match c {
                '\\' => self.text.push_str("\\\\"),
                '\n' => self.text.push_str("\\n"),
                c => self.text.push(c),
            }
        }
        let _ = writeln!(self.text, "\n# TYPE {name} {}", kind.as_str());
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl SampleValue) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (label, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                self.text.push_str(label);
                self.text.push_str("=\"");
                for c in value.chars() {
                    match c {
                        '\\' => self.text.push_str("\\\\"),
                        '"' => self.text.push_str("\\\""),
                        '\n' => self.text.push_str("\\n"),
                        c => self.text.push(c),
                    }
                }
                self.text.push('"');
            }
            self.text.push('}');
        }
        self.text.push(' ');
        value.write_to(&mut self.text);
        self.text.push('\n');
    }

    fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, Kind::Counter, help);
        self.sample(name, &[], value);
    }

    fn gauge(&mut self, name: &str, help: &str, value: impl SampleValue) {
        self.family(name, Kind::Gauge, help);
        self.sample(name, &[], value);
    }

    fn histogram(&mut self, name: &str, help: &str, histogram: &HistogramSnapshot) {
        self.family(name, Kind::Histogram, help);
        let bucket = format!("{name}_bucket");
        let mut le = String::new();
        for (bound, count) in DURATION_BUCKETS.iter().zip(&histogram.cumulative) {
            le.clear();
            bound.write_to(&mut le);
            self.sample(&bucket, &[("le", &le)], *count);
        }
        self.sample(&bucket, &[("le", "+Inf")], histogram.count);
        self.sample(&format!("{name}_sum"), &[], histogram.sum_seconds);
        self.sample(&format!("{name}_count"), &[], histogram.count);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use axum::http::{Method, StatusCode};

    use super::*;

    /// Checks the text against the format's rules that a scraper enforces:
    /// every sample belongs to the family declared last, HELP precedes TYPE,
    /// no family twice, values parse. Returns sample → value.
    fn parse(text: &str) -> BTreeMap<String, f64> {
        let mut samples = BTreeMap::new();
        let mut families = BTreeSet::new();
        let mut current: Option<(String, String)> = None;
        let mut helped: Option<String> = None;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                helped = Some(rest.split(' ').next().unwrap().to_owned());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert_eq!(helped.as_deref(), Some(name), "HELP before TYPE: {line}");
                assert!(families.insert(name.to_owned()), "family twice: {name}");
                current = Some((name.to_owned(), kind.to_owned()));
            } else {
                let (series, value) = line.rsplit_once(' ').unwrap();
                let name = series.split('{').next().unwrap();
                let (family, kind) = current.as_ref().expect("a sample before any TYPE");
                let suffixes: &[&str] = match kind.as_str() {
                    "histogram" => &["_bucket", "_sum", "_count"],
                    "summary" => &["_sum", "_count", ""],
                    _ => &[""],
                };
                assert!(
                    suffixes.iter().any(|s| name == format!("{family}{s}")),
                    "{name} outside its family {family}"
                );
                let value = match value {
                    "+Inf" => f64::INFINITY,
                    "-Inf" => f64::NEG_INFINITY,
                    v => v
                        .parse()
                        .unwrap_or_else(|_| panic!("bad value in {line:?}")),
                };
                assert!(
                    samples.insert(series.to_owned(), value).is_none(),
                    "duplicate series {series}"
                );
            }
        }
        samples
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        let mut out = Exposition::default();
        out.family("x_total", Kind::Counter, "a \\ b\nc");
        out.sample("x_total", &[("route", "a\"b\\c\nd")], 3u64);
        assert_eq!(
            out.text,
            "# HELP x_total a \\\\ b\\nc\n# TYPE x_total counter\nx_total{route=\"a\\\"b\\\\c\\nd\"} 3\n"
        );
    }

    #[test]
    fn floats_use_the_format_spelling() {
        let mut text = String::new();
        for v in [0.005, 1.0, f64::INFINITY, f64::NEG_INFINITY, f64::NAN] {
            v.write_to(&mut text);
            text.push(' ');
        }
        assert_eq!(text, "0.005 1 +Inf -Inf NaN ");
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let histogram = Histogram::default();
        histogram.observe(Duration::from_micros(500));
        histogram.observe(Duration::from_millis(3));
        histogram.observe(Duration::from_secs(1000));
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.count, 3);
        assert_eq!(snapshot.cumulative[0], 1); // ≤ 1 ms
        assert_eq!(snapshot.cumulative[1], 1); // ≤ 2.5 ms
        assert_eq!(snapshot.cumulative[2], 2); // ≤ 5 ms
        assert_eq!(*snapshot.cumulative.last().unwrap(), 2); // ≤ 300 s
        assert!((snapshot.sum_seconds - 1000.0035).abs() < 1e-9);

        let mut out = Exposition::default();
        out.histogram("h_seconds", "help", &snapshot);
        let samples = parse(&out.text);
        assert_eq!(samples["h_seconds_bucket{le=\"0.001\"}"], 1.0);
        assert_eq!(samples["h_seconds_bucket{le=\"300\"}"], 2.0);
        assert_eq!(samples["h_seconds_bucket{le=\"+Inf\"}"], 3.0);
        assert_eq!(samples["h_seconds_count"], 3.0);
    }

    #[test]
    fn renders_only_the_roles_wired_and_stays_well_formed() {
        let health = Health::new();
        health.set(
            "rabbitmq",
            crate::api::ComponentState::Reconnecting,
            "reconnecting",
        );
        let metrics = Metrics::new(health);
        let samples = parse(&metrics.render());
        assert_eq!(
            samples[&format!(
                "walcast_build_info{{version=\"{}\"}}",
                env!("CARGO_PKG_VERSION")
            )],
            1.0
        );
        assert_eq!(
            samples["walcast_component_healthy{component=\"rabbitmq\"}"],
            0.0
        );
        assert!(!samples.keys().any(|k| k.starts_with("walcast_fanout")));
        assert!(!samples.keys().any(|k| k.starts_with("walcast_slot")));

        let requests = RequestStats::default();
        requests.record(
            &Method::GET,
            "/orders/{id}",
            StatusCode::NOT_FOUND,
            Duration::from_millis(250),
        );
        metrics.watch_requests(requests);
        metrics.watch_gateway(FanoutStats::default(), ConsumerStatus::default());
        let capture = metrics.capture("walcast");
        capture.slot.record(Some(SlotInfo {
            slot_name: "walcast".into(),
            plugin: Some("pgoutput".into()),
            slot_type: "logical".into(),
            database: Some("walcast".into()),
            temporary: false,
            active: true,
            active_pid: Some(42),
            restart_lsn: Some("0/16B3700".into()),
            confirmed_flush_lsn: Some("0/16B3800".into()),
            retained_wal_bytes: Some(4096),
            wal_status: Some("reserved".into()),
            safe_wal_size: None,
        }));
        let samples = parse(&metrics.render());
        let route = "method=\"GET\",route=\"/orders/{id}\",status=\"404\"";
        assert_eq!(
            samples[&format!("walcast_http_requests_total{{{route}}}")],
            1.0
        );
        assert_eq!(
            samples[&format!("walcast_http_request_duration_seconds_sum{{{route}}}")],
            0.25
        );
        assert_eq!(samples["walcast_fanout_connected_sockets"], 0.0);
        assert_eq!(samples["walcast_consumer_consuming"], 0.0);
        assert_eq!(samples["walcast_slot_poll_success{slot=\"walcast\"}"], 1.0);
        assert_eq!(
            samples["walcast_slot_confirmed_flush_lsn{slot=\"walcast\"}"],
            0x16B3800 as f64
        );
        assert_eq!(
            samples["walcast_slot_retained_wal_bytes{slot=\"walcast\"}"],
            4096.0
        );
        assert!(!samples.contains_key("walcast_slot_safe_wal_size_bytes{slot=\"walcast\"}"));
        assert_eq!(samples["walcast_publisher_connected"], 0.0);
        assert_eq!(
            samples["walcast_publisher_confirm_latency_seconds_bucket{le=\"+Inf\"}"],
            0.0
        );
        assert_eq!(capture.slot.confirmed_flush_lsn(), Some(Lsn(0x16B3800)));

        // A failed poll hides the values instead of showing stale ones.
        capture.slot.record_failure();
        let samples = parse(&metrics.render());
        assert_eq!(samples["walcast_slot_poll_success{slot=\"walcast\"}"], 0.0);
        assert_eq!(
            samples["walcast_slot_poll_failures_total{slot=\"walcast\"}"],
            1.0
        );
        assert!(!samples.contains_key("walcast_slot_confirmed_flush_lsn{slot=\"walcast\"}"));
    }
}
