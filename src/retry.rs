//! The one reconnect policy: capped exponential backoff with equal jitter.
//!
//! Every loop that reconnects (the capture's replication connection, the
//! publisher's and the gateway's RabbitMQ connections, the gateway's
//! history-start query) asks a [`Backoff`] how long to wait before attempt
//! `n`. Callers keep their own base and cap, because a replication slot and
//! a broker connection heal at different speeds; the shape of the delay is
//! the same everywhere.
//!
//! It does not sleep, count attempts or decide what is worth retrying: the
//! caller owns its attempt counter and classifies its own errors.

use std::time::Duration;

use rand::Rng;

/// The exponent stops growing here: 2^20 times any sensible base is far
/// beyond any sensible cap, and the multiplication cannot overflow.
const MAX_EXPONENT: u32 = 20;

/// Exponential backoff from `base`, doubling per attempt, capped at `max`,
/// with **equal jitter**: the delay for attempt `n` is uniform in
/// `[c/2, c]` where `c = min(max, base · 2^n)`.
///
/// Equal jitter rather than full jitter (uniform in `[0, c]`): many
/// walcasts that lost the broker together still spread their reconnects
/// over half of the window, but none of them retries at once in a tight
/// loop against a server that is down, and the wait grows reliably.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    max: Duration,
}

impl Backoff {
    /// A policy starting at `base` and never waiting longer than `max`.
    pub const fn new(base: Duration, max: Duration) -> Backoff {
        Backoff { base, max }
    }

    /// The upper bound of the delay before attempt `attempt` (0-based):
    /// `min(max, base · 2^attempt)`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        self.base
            .saturating_mul(1u32 << attempt.min(MAX_EXPONENT))
            .min(self.max)
    }

    /// A random delay in `[ceiling/2, ceiling]` for attempt `attempt`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let half = self.ceiling(attempt) / 2;
        half + half.mul_f64(rand::rng().random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_ceiling_doubles_from_the_base_and_stops_at_the_cap() {
        let backoff = Backoff::new(100 * MS, 2_000 * MS);
        let ceilings: Vec<_> = (0..7).map(|n| backoff.ceiling(n)).collect();
        assert_eq!(
            ceilings,
            [100, 200, 400, 800, 1_600, 2_000, 2_000].map(|ms| ms * MS)
        );
    }

    #[test]
    fn every_delay_lies_in_the_upper_half_of_its_ceiling() {
        let backoff = Backoff::new(200 * MS, 5_000 * MS);
        for attempt in 0..64 {
            let ceiling = backoff.ceiling(attempt);
            for _ in 0..50 {
                let delay = backoff.delay(attempt);
                assert!(
                    delay >= ceiling / 2 && delay <= ceiling,
                    "attempt {attempt}: {delay:?} outside [{:?}, {ceiling:?}]",
                    ceiling / 2
                );
            }
        }
    }

    #[test]
    fn delays_are_jittered() {
        let backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let delays: std::collections::HashSet<_> = (0..20).map(|_| backoff.delay(5)).collect();
        assert!(delays.len() > 1, "20 identical delays: {delays:?}");
    }

    #[test]
    fn huge_attempt_counts_neither_overflow_nor_pass_the_cap() {
        let backoff = Backoff::new(Duration::from_secs(3_600), Duration::from_secs(30));
        assert_eq!(backoff.ceiling(u32::MAX), Duration::from_secs(30));
        assert!(backoff.delay(u32::MAX) >= Duration::from_secs(15));
    }
}
