//! `GET /metrics`: every stage's families in the Prometheus text format
//! (version 0.0.4), gathered from one `prometheus_client` [`Registry`].
//!
//! The stages own their families: each stats handle ([`CaptureStats`],
//! [`PublisherStats`], [`ConsumerStatus`], [`FanoutStats`], [`SlotStats`])
//! has a `register` that adds its families, names, help and type included,
//! to the registry, and never imports this module. A [`Metrics`] holds the
//! registry and registers the handles of the roles this process plays when
//! they are wired; families of roles the process does not play are left out.
//! A scrape only encodes the registry: it reads atomics and takes short
//! locks, and never waits on Postgres or RabbitMQ.
//!
//! The one number that needs a query, the slot's position and retained WAL,
//! comes from [`poll_slot`]: a background task that asks the catalog
//! (`pg_replication_slots`) every few seconds, each round trip bounded by a
//! timeout, and leaves the latest answer in [`SlotStats`]. When the last
//! poll failed, the slot's values are left out rather than shown stale, and
//! `walcast_slot_poll_success` says so.
//!
//! One family is written here by hand: `walcast_http_request_duration_seconds`
//! is a summary (`_sum` and `_count` only), a type `prometheus_client` does
//! not have; [`http`] appends it after the registry's families, with the
//! crate's escaping rules. Everything else is the crate's encoder.
//!
//! Why the crate and not a hand-written exposition (issue 10 allowed keeping
//! one if the crate cost more than 2% of the drain rate): per change, the
//! capture role's metric updates (decoded counter, lag histogram, publish
//! and confirm counters, confirm-latency histogram) take 1,924 instructions
//! with the crate against 1,787 with the hand-written atomics
//! (`scripts/metrics-instructions.sh`, callgrind), about 50 ns more; a
//! change takes 57 µs of the drain (17,448 changes/s in BENCHMARKS.md), so
//! the switch costs about 0.1% and all of the metrics under 1%.
//!
//! Names, all prefixed `walcast_`: see [`Metrics::render`]. Counters are
//! registered without `_total`, which the encoder appends, so the series
//! keep their names. Labels are bounded: tables and ops of the publication,
//! matched route templates, component names. This module does not count
//! anything itself and does not bind a listener: `app` mounts [`serve`] on
//! the HTTP router.

mod http;
#[cfg(test)]
mod sample;
mod slot;

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{prometheus_text, DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;
use tracing::error;

use crate::api::{Health, RequestStats};
use crate::capture::CaptureStats;
use crate::consumer::ConsumerStatus;
use crate::fanout::FanoutStats;
use crate::publisher::PublisherStats;

pub use slot::{poll_slot, SlotStats, SLOT_POLL_INTERVAL, SLOT_POLL_TIMEOUT};

/// The content type of the Prometheus text exposition format 0.0.4.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

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
    registry: Mutex<Registry>,
    capture: OnceLock<CaptureHandles>,
    requests: OnceLock<RequestStats>,
    gateway: OnceLock<(FanoutStats, ConsumerStatus)>,
}

impl Metrics {
    /// A registry with the families every role has: build, start time and
    /// the components' health.
    pub fn new(health: Health) -> Metrics {
        let mut registry = Registry::default();
        let build = Family::<[(&'static str, &'static str); 1], Gauge>::default();
        build
            .get_or_create(&[("version", env!("CARGO_PKG_VERSION"))])
            .set(1);
        registry.register("walcast_build_info", "walcast's version; always 1", build);
        let started = Gauge::<f64, AtomicU64>::default();
        started.set(unix_now());
        registry.register(
            "walcast_process_start_time_seconds",
            "When this process started, in seconds since the Unix epoch",
            started,
        );
        registry.register_collector(Box::new(ComponentHealth(health)));
        Metrics(Arc::new(Sources {
            registry: Mutex::new(registry),
            capture: OnceLock::new(),
            requests: OnceLock::new(),
            gateway: OnceLock::new(),
        }))
    }

    /// The capture role's handles, created and registered on first call
    /// (for `slot`).
    pub fn capture(&self, slot: &str) -> CaptureHandles {
        self.0
            .capture
            .get_or_init(|| {
                let handles = CaptureHandles {
                    capture: CaptureStats::default(),
                    publisher: PublisherStats::default(),
                    slot: SlotStats::new(slot),
                };
                let mut registry = self.registry();
                handles.capture.register(&mut registry);
                handles.publisher.register(&mut registry);
                handles.slot.register(&mut registry);
                handles
            })
            .clone()
    }

    /// Shows the API's request counters. Only the first call counts.
    pub fn watch_requests(&self, requests: RequestStats) {
        if self.0.requests.set(requests.clone()).is_ok() {
            http::register(&mut self.registry(), requests);
        }
    }

    /// Shows the gateway's fan-out and consumer counters. Only the first
    /// call counts.
    pub fn watch_gateway(&self, fanout: FanoutStats, consumer: ConsumerStatus) {
        if self
            .0
            .gateway
            .set((fanout.clone(), consumer.clone()))
            .is_ok()
        {
            let mut registry = self.registry();
            consumer.register(&mut registry);
            fanout.register(&mut registry);
        }
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
    ///   `walcast_fanout_{duplicates,malformed,source_changes,emitted,slow_disconnects,resyncs,connects_refused}_total`,
    ///   `walcast_fanout_disconnects_total{reason}`,
    ///   `walcast_fanout_commit_to_deliver_lag_seconds` (histogram),
    ///   `walcast_fanout_connected_sockets`,
    ///   `walcast_fanout_replay_buffer_{events,bytes}`;
    /// - api: `walcast_http_requests_total{method,route,status}`,
    ///   `walcast_http_request_duration_seconds{method,route,status}`
    ///   (summary: `_sum` and `_count`).
    ///
    /// A labelled family shows up with its first series: before the first
    /// change, `walcast_capture_changes_decoded_total` has no lines at all.
    pub fn render(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_text::encode(&mut text, &self.registry())?;
        if let Some(requests) = self.0.requests.get() {
            http::write_duration_summary(&mut text, requests)?;
        }
        Ok(text)
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        // Registering and encoding leave the registry whole when they panic.
        self.0.registry.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// `walcast_component_healthy{component}`, read from [`Health`] at each
/// scrape.
#[derive(Debug)]
struct ComponentHealth(Health);

impl Collector for ComponentHealth {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "walcast_component_healthy",
            "Whether a component reported itself healthy (1) or not (0), as /readyz shows it.",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for component in self.0.components() {
            let labels = [("component", component.name.as_str())];
            ConstGauge::new(i64::from(component.healthy)).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// Metrics of the stages this process runs, in the Prometheus text format.
///
/// Served by every role; not an API request itself (scrapes are not counted
/// in `walcast_http_requests_total`) and never behind auth. Its OpenAPI
/// entry lives in `api::openapi` (`metrics_route`), so that `api` does not
/// import this module, which imports `api`.
pub async fn serve(State(metrics): State<Metrics>) -> Response {
    match metrics.render() {
        Ok(text) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Err(_) => {
            // Only a collector can fail (a value out of the format's range).
            error!("cannot encode the metrics");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot encode the metrics\n",
            )
                .into_response()
        }
    }
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

    /// Every family the README and [`Metrics::render`] document, by the
    /// name in its `# TYPE` line.
    const DOCUMENTED: [(&str, &str); 52] = [
        ("walcast_build_info", "gauge"),
        ("walcast_process_start_time_seconds", "gauge"),
        ("walcast_component_healthy", "gauge"),
        ("walcast_capture_changes_decoded_total", "counter"),
        ("walcast_capture_transactions_total", "counter"),
        ("walcast_capture_commit_to_publish_lag_seconds", "histogram"),
        (
            "walcast_capture_last_commit_to_publish_lag_seconds",
            "gauge",
        ),
        ("walcast_capture_durable_lsn", "gauge"),
        ("walcast_capture_changes_filtered_total", "counter"),
        ("walcast_backfill_rows_total", "counter"),
        ("walcast_backfill_rows_dropped_total", "counter"),
        ("walcast_backfill_chunks_total", "counter"),
        ("walcast_publisher_published_total", "counter"),
        ("walcast_publisher_confirmed_total", "counter"),
        ("walcast_publisher_oversize_total", "counter"),
        ("walcast_publisher_nacks_total", "counter"),
        ("walcast_publisher_republished_total", "counter"),
        ("walcast_publisher_returned_total", "counter"),
        ("walcast_publisher_refused_total", "counter"),
        ("walcast_publisher_reconnects_total", "counter"),
        ("walcast_publisher_confirm_latency_seconds", "histogram"),
        ("walcast_publisher_connected", "gauge"),
        ("walcast_publisher_blocked", "gauge"),
        ("walcast_slot_poll_success", "gauge"),
        ("walcast_slot_poll_failures_total", "counter"),
        ("walcast_slot_exists", "gauge"),
        ("walcast_slot_active", "gauge"),
        ("walcast_slot_confirmed_flush_lsn", "gauge"),
        ("walcast_slot_retained_wal_bytes", "gauge"),
        ("walcast_slot_safe_wal_size_bytes", "gauge"),
        ("walcast_consumer_received_total", "counter"),
        ("walcast_consumer_acked_total", "counter"),
        ("walcast_consumer_rejected_total", "counter"),
        ("walcast_consumer_dead_letters_total", "counter"),
        ("walcast_consumer_redelivered_total", "counter"),
        ("walcast_consumer_sessions_total", "counter"),
        ("walcast_consumer_consuming", "gauge"),
        ("walcast_fanout_delivered_total", "counter"),
        ("walcast_fanout_duplicates_total", "counter"),
        ("walcast_fanout_malformed_total", "counter"),
        ("walcast_fanout_source_changes_total", "counter"),
        ("walcast_fanout_emitted_total", "counter"),
        ("walcast_fanout_slow_disconnects_total", "counter"),
        ("walcast_fanout_resyncs_total", "counter"),
        ("walcast_fanout_connects_refused_total", "counter"),
        ("walcast_fanout_disconnects_total", "counter"),
        ("walcast_fanout_commit_to_deliver_lag_seconds", "histogram"),
        ("walcast_fanout_connected_sockets", "gauge"),
        ("walcast_fanout_replay_buffer_events", "gauge"),
        ("walcast_fanout_replay_buffer_bytes", "gauge"),
        ("walcast_http_requests_total", "counter"),
        ("walcast_http_request_duration_seconds", "summary"),
    ];

    /// `# TYPE` lines: family → type.
    fn types(text: &str) -> BTreeMap<String, String> {
        text.lines()
            .filter_map(|line| line.strip_prefix("# TYPE "))
            .map(|rest| {
                let (name, kind) = rest.split_once(' ').unwrap();
                (name.to_owned(), kind.to_owned())
            })
            .collect()
    }

    #[test]
    fn every_documented_family_is_exposed_with_its_type() {
        let text = super::sample::populated().render().unwrap();
        let samples = parse(&text);
        let types = types(&text);
        for (family, kind) in DOCUMENTED {
            assert_eq!(
                types.get(family).map(String::as_str),
                Some(kind),
                "family {family} missing or of another type in:\n{text}"
            );
            assert!(
                samples.keys().any(|series| series.starts_with(family)),
                "family {family} has no series"
            );
        }
        assert_eq!(
            types.len(),
            DOCUMENTED.len(),
            "a family not in DOCUMENTED: {types:?}"
        );
        let labels = [
            "walcast_capture_changes_decoded_total{table=\"public.orders\",op=\"insert\"}",
            "walcast_publisher_published_total{table=\"public.orders\",op=\"insert\"}",
            "walcast_publisher_oversize_total{table=\"public.items\",op=\"delete\"}",
            "walcast_capture_changes_filtered_total{op=\"insert\"}",
            "walcast_fanout_delivered_total{table=\"other\",op=\"delete\"}",
            "walcast_fanout_disconnects_total{reason=\"token_expired\"}",
            "walcast_consumer_dead_letters_total{reason=\"malformed_body\"}",
            "walcast_capture_commit_to_publish_lag_seconds_bucket{le=\"300\"}",
            "walcast_publisher_confirm_latency_seconds_bucket{le=\"0.0025\"}",
        ];
        for series in labels {
            assert!(samples.contains_key(series), "{series} missing:\n{text}");
        }
        assert_eq!(
            samples["walcast_capture_changes_decoded_total{table=\"public.orders\",op=\"insert\"}"],
            2.0
        );
        assert_eq!(
            samples["walcast_publisher_confirm_latency_seconds_bucket{le=\"0.005\"}"],
            1.0
        );
        assert_eq!(
            samples["walcast_publisher_confirm_latency_seconds_count"],
            1.0
        );
    }

    #[test]
    fn summary_label_values_are_escaped() {
        let requests = RequestStats::default();
        requests.record(
            &Method::GET,
            "/a\"b\\c\nd",
            StatusCode::OK,
            Duration::from_millis(1500),
        );
        let mut text = String::new();
        super::http::write_duration_summary(&mut text, &requests).unwrap();
        let samples = parse(&text);
        let labels = "{method=\"GET\",route=\"/a\\\"b\\\\c\\nd\",status=\"200\"}";
        assert_eq!(
            samples[&format!("walcast_http_request_duration_seconds_sum{labels}")],
            1.5
        );
        assert_eq!(
            samples[&format!("walcast_http_request_duration_seconds_count{labels}")],
            1.0
        );
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
        let samples = parse(&metrics.render().unwrap());
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
            safe_wal_size: None,
            ..super::sample::slot_info()
        }));
        let samples = parse(&metrics.render().unwrap());
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
        let samples = parse(&metrics.render().unwrap());
        assert_eq!(samples["walcast_slot_poll_success{slot=\"walcast\"}"], 0.0);
        assert_eq!(
            samples["walcast_slot_poll_failures_total{slot=\"walcast\"}"],
            1.0
        );
        assert!(!samples.contains_key("walcast_slot_confirmed_flush_lsn{slot=\"walcast\"}"));
    }
}
