//! The API role's families: HTTP requests by method, matched route and
//! status. Reads [`RequestStats`]; counts nothing.
//!
//! `walcast_http_requests_total` goes through the registry like every other
//! family. `walcast_http_request_duration_seconds` is a summary (`_sum` and
//! `_count`), a type `prometheus_client` cannot describe, so
//! [`write_duration_summary`] appends it to the encoded registry by hand,
//! escaping as the crate does.

use std::fmt::Write as _;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::api::{RequestKey, RequestStats};

const DURATION: &str = "walcast_http_request_duration_seconds";

/// Adds `walcast_http_requests_total` to `registry`.
pub(super) fn register(registry: &mut Registry, requests: RequestStats) {
    registry.register_collector(Box::new(Requests(requests)));
}

#[derive(Debug)]
struct Requests(RequestStats);

impl Collector for Requests {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "walcast_http_requests",
            "HTTP API requests by method, matched route and status.",
            None,
            MetricType::Counter,
        )?;
        for (key, stats) in self.0.snapshot() {
            let status = key.status.to_string();
            let labels = [
                ("method", key.method),
                ("route", key.route.as_str()),
                ("status", status.as_str()),
            ];
            ConstCounter::new(stats.count).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// Appends the summary `walcast_http_request_duration_seconds` to `out`.
pub(super) fn write_duration_summary(
    out: &mut String,
    requests: &RequestStats,
) -> std::fmt::Result {
    writeln!(
        out,
        "# HELP {DURATION} Time to answer HTTP API requests, by method, matched route and status."
    )?;
    writeln!(out, "# TYPE {DURATION} summary")?;
    for (key, stats) in requests.snapshot() {
        let labels = labels(&key);
        let seconds = stats.total_latency.as_secs_f64();
        writeln!(out, "{DURATION}_sum{labels} {seconds:?}")?;
        writeln!(out, "{DURATION}_count{labels} {}", stats.count)?;
    }
    Ok(())
}

/// `{method="…",route="…",status="…"}`, values escaped.
fn labels(key: &RequestKey) -> String {
    let mut out = format!("{{method=\"{}\",route=\"", key.method);
    for c in key.route.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    let _ = write!(out, "\",status=\"{}\"}}", key.status);
    out
}
