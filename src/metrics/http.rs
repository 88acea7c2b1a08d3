//! The API role's families: HTTP requests by method, matched route and
//! status. Reads [`RequestStats`]; counts nothing.

use super::render::{Exposition, Kind};
use crate::api::RequestStats;

pub(super) fn render_requests(out: &mut Exposition, requests: &RequestStats) {
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
