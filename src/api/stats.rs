//! One tracing span per request, and request counts by method, route and
//! status for a `/metrics` endpoint.
//!
//! The route is axum's matched route template (`/orders/{id}`), never the
//! raw path, and unknown methods count as `OTHER`, so the number of counters
//! stays bounded whatever clients send. A panicking handler is answered
//! with a 500 in the API's error shape instead of a dropped connection.
//! This module does not render Prometheus text; it only keeps the numbers.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt;
use tracing::Instrument;

use super::ApiError;

/// The route recorded for requests that matched no route.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// What a counter counts: one method on one route with one status.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestKey {
    pub method: &'static str,
    pub route: String,
    pub status: u16,
}

/// The numbers kept for one [`RequestKey`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouteStats {
    pub count: u64,
    /// Sum of the latencies, for an average or a Prometheus summary's `_sum`.
    pub total_latency: Duration,
}

/// Request counters; cheap to clone, every clone shares the counters.
#[derive(Debug, Clone, Default)]
pub struct RequestStats {
    counters: Arc<Mutex<BTreeMap<RequestKey, RouteStats>>>,
}

impl RequestStats {
    pub fn record(&self, method: &Method, route: &str, status: StatusCode, latency: Duration) {
        let key = RequestKey {
            method: method_label(method),
            route: route.to_owned(),
            status: status.as_u16(),
        };
        let mut counters = self.lock();
        let entry = counters.entry(key).or_default();
        entry.count += 1;
        entry.total_latency += latency;
    }

    /// Every counter, ordered by method, route and status.
    pub fn snapshot(&self) -> Vec<(RequestKey, RouteStats)> {
        self.lock().iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    /// Requests counted for one method, route and status.
    pub fn count(&self, method: &Method, route: &str, status: u16) -> u64 {
        let key = RequestKey {
            method: method_label(method),
            route: route.to_owned(),
            status,
        };
        self.lock().get(&key).map_or(0, |s| s.count)
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<RequestKey, RouteStats>> {
        // Counters stay consistent under a panic elsewhere; keep counting.
        self.counters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

/// Middleware: the request's span, its outcome in the log, its counter.
pub async fn track_request(
    State(stats): State<RequestStats>,
    request: Request,
    next: Next,
) -> Response {
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or(UNMATCHED_ROUTE, MatchedPath::as_str)
        .to_owned();
    let span = tracing::info_span!(
        "http_request",
        method = %method,
        route = %route,
        status = tracing::field::Empty,
        latency_ms = tracing::field::Empty,
    );
    let started = Instant::now();
    let outcome = AssertUnwindSafe(next.run(request))
        .catch_unwind()
        .instrument(span.clone())
        .await;
    let response = outcome.unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        span.in_scope(|| ApiError::internal(format!("handler panicked: {message}")).into_response())
    });
    let latency = started.elapsed();
    let status = response.status();
    span.record("status", status.as_u16());
    span.record("latency_ms", latency.as_secs_f64() * 1000.0);
    span.in_scope(|| {
        if status.is_server_error() {
            tracing::warn!("request failed");
        } else {
            tracing::debug!("request finished");
        }
    });
    stats.record(&method, &route, status, latency);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_method_route_and_status() {
        let stats = RequestStats::default();
        let shared = stats.clone();
        let ms = Duration::from_millis(1);
        shared.record(&Method::GET, "/orders", StatusCode::OK, ms);
        shared.record(&Method::GET, "/orders", StatusCode::OK, ms);
        shared.record(&Method::POST, "/orders", StatusCode::CREATED, ms);
        shared.record(
            &Method::from_bytes(b"BREW").unwrap(),
            UNMATCHED_ROUTE,
            StatusCode::NOT_FOUND,
            ms,
        );
        assert_eq!(stats.count(&Method::GET, "/orders", 200), 2);
        assert_eq!(stats.count(&Method::POST, "/orders", 201), 1);
        assert_eq!(stats.count(&Method::DELETE, "/orders", 204), 0);
        let snapshot = stats.snapshot();
        assert_eq!(snapshot.len(), 3);
        assert_eq!(snapshot[0].0.method, "GET");
        assert_eq!(snapshot[0].1.total_latency, 2 * ms);
        assert_eq!(snapshot[1].0.method, "OTHER");
    }
}
