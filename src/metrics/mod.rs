//! `GET /metrics`: every stage's counters in the Prometheus text format
//! (version 0.0.4).
//!
//! The stages keep their own numbers behind cheap, cloneable handles
//! ([`CaptureStats`], [`PublisherStats`], [`ConsumerStatus`],
//! [`FanoutStats`], [`RequestStats`], the [`Health`] registry) and never
//! import this module. A [`Metrics`] holds the handles of the roles this
//! process plays and, on each scrape, gathers a snapshot of them; families
//! of roles the process does not play are left out. Rendering only reads
//! atomics and takes short locks, so a scrape never waits on Postgres or
//! RabbitMQ.
//!
//! The one number that needs a query, the slot's position and retained WAL,
//! comes from [`poll_slot`]: a background task that asks the catalog
//! (`pg_replication_slots`) every few seconds, each round trip bounded by a
//! timeout, and leaves the latest answer in [`SlotStats`]. When the last
//! poll failed, the slot's values are left out rather than shown stale, and
//! `walcast_slot_poll_success` says so.
//!
//! Layout: this file gathers and serves; `render` writes the text format;
//! `capture`, `slot`, `gateway` and `http` render one stage's families
//! each.
//!
//! The exposition is hand-written on purpose, for now: issue 10 allows
//! keeping a small exposition module if a benchmark shows the
//! prometheus-client crate costs more than 2% of the drain rate. That
//! benchmark has not been run yet (it needs a quiet machine), so the switch
//! is pending it.
//!
//! Names, all prefixed `walcast_`: see [`Metrics::render`]. Labels are
//! bounded: tables and ops of the publication, matched route templates,
//! component names. This module does not count anything itself and does
//! not bind a listener: `app` mounts [`serve`] on the HTTP router.

mod capture;
mod gateway;
mod http;
mod render;
mod slot;

use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use crate::api::{Health, RequestStats};
use crate::capture::CaptureStats;
use crate::consumer::ConsumerStatus;
use crate::fanout::FanoutStats;
use crate::publisher::PublisherStats;

// The histogram moved to its own module; the old path keeps working.
pub use crate::histogram::{Histogram, HistogramSnapshot, DURATION_BUCKETS};
pub use slot::{poll_slot, SlotStats, SLOT_POLL_INTERVAL, SLOT_POLL_TIMEOUT};

use capture::{render_capture, render_publisher};
use gateway::{render_consumer, render_fanout};
use http::render_requests;
use render::{Exposition, Kind};
use slot::render_slot;

/// The content type of the Prometheus text exposition format 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

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
/// in `walcast_http_requests_total`) and never behind auth. Its OpenAPI
/// entry lives in `api::openapi` (`metrics_route`), so that `api` does not
/// import this module, which imports `api`.
pub async fn serve(State(metrics): State<Metrics>) -> Response {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], metrics.render()).into_response()
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use axum::http::{Method, StatusCode};

    use std::time::Duration;

    use super::render::SampleValue;
    use super::*;
    use crate::catalog::SlotInfo;
    use crate::event::Lsn;

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
