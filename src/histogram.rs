//! A fixed-bucket histogram of durations over atomics, which the stages
//! observe into (capture's commit-to-publish lag, the publisher's confirm
//! latency).
//!
//! It only counts; it does not format anything. `/metrics` (the `metrics`
//! module) reads its [`HistogramSnapshot`] and writes the text format.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative() {
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
    }
}
