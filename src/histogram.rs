//! The bucket bounds of every duration histogram (capture's
//! commit-to-publish lag, the publisher's confirm latency), so that all of
//! them can be compared and aggregated bucket by bucket.
//!
//! The histograms themselves are `prometheus_client`'s; the stages own and
//! register them. This module neither counts nor formats.

use std::time::Duration;

use prometheus_client::metrics::histogram::Histogram;

/// Upper bounds, in seconds, of the buckets of every duration histogram:
/// from a fast local publisher confirm (1 ms) to a capture that is minutes
/// behind.
pub const DURATION_BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// A histogram of durations in seconds, over [`DURATION_BUCKETS`].
pub fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// Observes `value` in seconds, the unit of every duration histogram.
pub fn observe(histogram: &Histogram, value: Duration) {
    histogram.observe(value.as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observes_seconds() {
        let histogram = duration_histogram();
        observe(&histogram, Duration::from_micros(500));
        observe(&histogram, Duration::from_millis(3));
        observe(&histogram, Duration::from_secs(1000));
        assert_eq!(histogram.count(), 3);
        assert!((histogram.sum() - 1000.0035).abs() < 1e-9);
    }
}
