//! A socket's byte budget: an upper bound on the bytes waiting in its send
//! queue, kept at emit time.
//!
//! socketioxide/engineioxide (0.18/0.17) bound a socket's queue in packets
//! only (`max_buffer_size`, a tokio mpsc) and say nothing when a packet
//! leaves it: there is no hook for "written to the wire" and the channel's
//! length is private. So walcast bounds the bytes from what it knows:
//!
//! - the queue holds at most `window` packets (`fanout.socket_buffer`) and
//!   hands them out in order, so only the newest `window` packets emitted
//!   can still be in it;
//! - Engine.IO's heartbeat puts a ping into the same queue at least every
//!   `max(ping_interval, ping_timeout)` and closes the socket when its pong
//!   is not back within `ping_timeout` (pauses of up to the 10 s upgrade
//!   timeout aside). A packet emitted longer ago than [`drain_horizon`] to
//!   a socket that is still connected has therefore been read.
//!
//! [`SendBudget`] keeps the bytes emitted in short buckets (at most 250 ms
//! and an eighth of the window each) and counts a bucket until either rule
//! proves it gone. The sum is an upper bound of what is queued: never less
//! than the truth, so a client that stops reading is stopped at the budget.
//! The price of having no drain signal: a client that reads looks as full
//! as one that does not until the window or the horizon clears its
//! packets, so the budget also caps what any socket may receive within its
//! last `socket_buffer` packets (and the horizon). That is why the default
//! budget (8 MiB) is `socket_buffer` (4,096) times 2 KiB, several times a
//! typical event.
//!
//! It does no I/O and holds no sockets; the hub asks it before each emit.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Width of one time bucket; the horizon is rounded up to it.
const BUCKET: Duration = Duration::from_millis(250);

/// engineioxide's transport upgrade timeout, during which the heartbeat
/// pauses (walcast keeps its default).
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long after it was emitted a packet to a still connected socket is
/// surely out of its queue (see the module doc).
pub(crate) fn drain_horizon(ping_interval: Duration, ping_timeout: Duration) -> Duration {
    ping_interval.max(ping_timeout) + ping_timeout + UPGRADE_TIMEOUT + BUCKET
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    started: Instant,
    packets: usize,
    bytes: usize,
}

/// What may be queued for one socket, in bytes; see the module doc.
///
/// The hub asks it once per socket per event, so the common case reads
/// and writes only the struct itself (inline in the hub's client entry):
/// the newest bucket is kept here while it takes packets, and the oldest
/// closed one is copied here. The queue of closed buckets is touched when
/// a bucket closes or is forgotten, at most every [`BUCKET`] or an eighth
/// of the window.
#[derive(Debug)]
pub(crate) struct SendBudget {
    max_bytes: usize,
    window: usize,
    horizon: Duration,
    /// Buckets that take no more packets, oldest first.
    closed: VecDeque<Bucket>,
    /// A copy of `closed`'s front (`None` when `closed` is empty).
    oldest_closed: Option<Bucket>,
    /// The newest bucket, newer than every closed one.
    open: Option<Bucket>,
    packets: usize,
    bytes: usize,
}

impl SendBudget {
    /// `max_bytes` queued at most, for a queue of `window` packets drained
    /// within `horizon`.
    pub(crate) fn new(max_bytes: usize, window: usize, horizon: Duration) -> SendBudget {
        SendBudget {
            max_bytes,
            window: window.max(1),
            horizon,
            closed: VecDeque::new(),
            oldest_closed: None,
            open: None,
            packets: 0,
            bytes: 0,
        }
    }

    /// Bytes that may still be queued at `now`.
    pub(crate) fn queued(&mut self, now: Instant) -> usize {
        self.forget(now);
        self.bytes
    }

    /// Whether a packet of `size` bytes fits at `now`. A packet larger than
    /// the whole budget fits into a queue known to be empty, so an event
    /// bigger than the budget still reaches a client that reads.
    pub(crate) fn fits(&mut self, size: usize, now: Instant) -> bool {
        let queued = self.queued(now);
        queued == 0 || queued.saturating_add(size) <= self.max_bytes
    }

    /// Records a packet of `size` bytes emitted at `now`.
    pub(crate) fn record(&mut self, size: usize, now: Instant) {
        // Small buckets let the window rule forget packets in good time.
        let bucket_packets = (self.window / 8).max(1);
        match &mut self.open {
            Some(bucket)
                if now.saturating_duration_since(bucket.started) < BUCKET
                    && bucket.packets < bucket_packets =>
            {
                bucket.packets += 1;
                bucket.bytes += size;
            }
            open => {
                let fresh = Bucket {
                    started: now,
                    packets: 1,
                    bytes: size,
                };
                if let Some(full) = open.replace(fresh) {
                    self.oldest_closed.get_or_insert(full);
                    self.closed.push_back(full);
                }
            }
        }
        self.packets += 1;
        self.bytes += size;
    }

    /// Drops the buckets that are surely out of the queue: older than the
    /// horizon, or with at least `window` newer packets after them.
    fn forget(&mut self, now: Instant) {
        while let Some(oldest) = self.oldest_closed.or(self.open) {
            let aged = now.saturating_duration_since(oldest.started) >= self.horizon;
            let overtaken = self.packets - oldest.packets >= self.window;
            if !aged && !overtaken {
                break;
            }
            if self.oldest_closed.is_some() {
                self.closed.pop_front();
                self.oldest_closed = self.closed.front().copied();
            } else {
                self.open = None;
            }
            self.packets -= oldest.packets;
            self.bytes -= oldest.bytes;
        }
        if self.closed.is_empty() && self.closed.capacity() > 16 {
            // An idle socket gives back what a burst made it hold.
            self.closed.shrink_to(16);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_what_is_emitted_until_the_budget() {
        let now = Instant::now();
        let mut budget = SendBudget::new(1000, 100, Duration::from_secs(60));
        assert!(budget.fits(400, now));
        budget.record(400, now);
        budget.record(400, now);
        assert!(budget.fits(200, now));
        assert!(!budget.fits(201, now));
        assert_eq!(budget.queued(now), 800);
    }

    #[test]
    fn a_packet_larger_than_the_budget_fits_an_empty_queue_only() {
        let now = Instant::now();
        let mut budget = SendBudget::new(1000, 100, Duration::from_secs(60));
        assert!(budget.fits(5000, now));
        budget.record(5000, now);
        assert!(!budget.fits(1, now));
    }

    #[test]
    fn forgets_packets_past_the_drain_horizon() {
        let start = Instant::now();
        let horizon = Duration::from_secs(60);
        let mut budget = SendBudget::new(1000, 100, horizon);
        budget.record(900, start);
        assert!(!budget.fits(200, start + horizon - Duration::from_secs(1)));
        assert!(budget.fits(200, start + horizon));
        assert_eq!(budget.queued(start + horizon), 0);
    }

    #[test]
    fn forgets_packets_overtaken_by_a_full_window() {
        let start = Instant::now();
        let mut budget = SendBudget::new(10_000, 4, Duration::from_secs(60));
        budget.record(5000, start);
        for n in 1..=3 {
            budget.record(10, start + BUCKET * n);
        }
        // Four packets fit the queue: the big one may still be in it.
        assert_eq!(budget.queued(start + BUCKET * 4), 5030);
        budget.record(10, start + BUCKET * 4);
        // Four newer ones: the big one has left.
        assert_eq!(budget.queued(start + BUCKET * 4), 40);
    }

    #[test]
    fn a_burst_within_one_instant_is_forgotten_window_by_window() {
        let now = Instant::now();
        let mut budget = SendBudget::new(1 << 30, 16, Duration::from_secs(60));
        for _ in 0..1000 {
            budget.record(100, now);
        }
        // At most the window plus one bucket (an eighth of it) counted.
        assert!(
            budget.queued(now) <= (16 + 2) * 100,
            "{}",
            budget.queued(now)
        );
        assert!(budget.queued(now) >= 16 * 100);
    }

    /// The budget as one queue of buckets, the newest taking packets:
    /// what [`SendBudget`] keeps, without its inline copies.
    struct Reference {
        window: usize,
        horizon: Duration,
        buckets: VecDeque<Bucket>,
        packets: usize,
        bytes: usize,
    }

    impl Reference {
        fn record(&mut self, size: usize, now: Instant) {
            match self.buckets.back_mut() {
                Some(b)
                    if now.saturating_duration_since(b.started) < BUCKET
                        && b.packets < (self.window / 8).max(1) =>
                {
                    b.packets += 1;
                    b.bytes += size;
                }
                _ => self.buckets.push_back(Bucket {
                    started: now,
                    packets: 1,
                    bytes: size,
                }),
            }
            self.packets += 1;
            self.bytes += size;
        }

        fn queued(&mut self, now: Instant) -> usize {
            while let Some(oldest) = self.buckets.front().copied() {
                let aged = now.saturating_duration_since(oldest.started) >= self.horizon;
                if !aged && self.packets - oldest.packets < self.window {
                    break;
                }
                self.buckets.pop_front();
                self.packets -= oldest.packets;
                self.bytes -= oldest.bytes;
            }
            self.bytes
        }
    }

    #[test]
    fn the_inline_buckets_count_exactly_what_one_queue_of_buckets_counts() {
        // A fixed pseudo-random walk: bursts, pauses past the horizon,
        // windows overtaken, sizes from 1 byte to 2 KiB.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |bound: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % bound
        };
        for window in [1, 8, 64] {
            let horizon = Duration::from_secs(2);
            let mut budget = SendBudget::new(usize::MAX, window, horizon);
            let mut reference = Reference {
                window,
                horizon,
                buckets: VecDeque::new(),
                packets: 0,
                bytes: 0,
            };
            let mut now = Instant::now();
            for step in 0..20_000 {
                now += match next(100) {
                    0 => Duration::from_millis(2_500),
                    1..=20 => Duration::from_millis(next(300)),
                    _ => Duration::ZERO,
                };
                let size = 1 + next(2048) as usize;
                if next(2) == 0 {
                    // As the hub does: ask first, then record.
                    assert_eq!(budget.queued(now), reference.queued(now));
                }
                budget.record(size, now);
                reference.record(size, now);
                assert_eq!(
                    budget.queued(now),
                    reference.queued(now),
                    "window {window}, step {step}"
                );
            }
        }
    }

    #[test]
    fn the_horizon_covers_a_full_heartbeat_round() {
        let horizon = drain_horizon(Duration::from_secs(25), Duration::from_secs(20));
        assert_eq!(
            horizon,
            Duration::from_millis(25_000 + 20_000 + 10_000 + 250)
        );
    }
}
