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
//! [`SendBudget`] keeps the bytes emitted in buckets (one [`BUCKET`] of
//! time and at most an eighth of the window each) and counts a bucket
//! until either rule proves it gone. The sum is an upper bound of what is
//! queued: never less than the truth, so a client that stops reading is
//! stopped at the budget. The price of having no drain signal: a client
//! that reads looks as full as one that does not until the window or the
//! horizon clears its packets, so the budget also caps what any socket may
//! receive within its last `socket_buffer` packets (and the horizon). That
//! is why the default budget (8 MiB) is `socket_buffer` (4,096) times 2
//! KiB, several times a typical event.
//!
//! What is the same for every socket (the limits and the clock) is kept
//! once, in [`BudgetLimits`]; a socket's [`SendBudget`] holds only its
//! buckets, each 12 bytes. A socket that receives all the time holds one
//! bucket per [`BUCKET`] of the horizon.
//!
//! It does no I/O and holds no sockets; the hub asks it before each emit.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Width of one time bucket, the budget clock's unit. The horizon rule
/// forgets a packet at most one bucket later than its exact time, about 2 %
/// of the default horizon; the window rule is not affected (a bucket also
/// closes at an eighth of the window).
const BUCKET: Duration = Duration::from_secs(1);

/// engineioxide's transport upgrade timeout, during which the heartbeat
/// pauses (walcast keeps its default).
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long after it was emitted a packet to a still connected socket is
/// surely out of its queue (see the module doc).
pub(crate) fn drain_horizon(ping_interval: Duration, ping_timeout: Duration) -> Duration {
    ping_interval.max(ping_timeout) + ping_timeout + UPGRADE_TIMEOUT
}

/// A time on the budget clock: whole [`BUCKET`]s since its epoch (u32:
/// 136 years at one second).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Tick(u32);

/// What every socket's budget shares: its limits and its clock.
#[derive(Debug)]
pub(crate) struct BudgetLimits {
    epoch: Instant,
    max_bytes: usize,
    window: u64,
    /// Packets one bucket takes at most.
    bucket_packets: u32,
    /// Ticks after which a bucket is surely out of the queue: a packet
    /// emitted during tick `k` was emitted before tick `k + 1` began, so it
    /// is gone once `horizon` (the drain horizon rounded up to ticks, plus
    /// one) ticks have passed since `k`.
    horizon: u32,
}

impl BudgetLimits {
    /// `max_bytes` queued at most, for a queue of `window` packets drained
    /// within `horizon`.
    pub(crate) fn new(max_bytes: usize, window: usize, horizon: Duration) -> BudgetLimits {
        let window = window.max(1);
        let ticks = horizon.as_nanos().div_ceil(BUCKET.as_nanos()) + 1;
        BudgetLimits {
            epoch: Instant::now(),
            max_bytes,
            window: window as u64,
            bucket_packets: u32::try_from(window / 8).unwrap_or(u32::MAX).max(1),
            horizon: u32::try_from(ticks).unwrap_or(u32::MAX),
        }
    }

    /// The budget clock's time now.
    pub(crate) fn now(&self) -> Tick {
        self.tick(Instant::now())
    }

    fn tick(&self, at: Instant) -> Tick {
        let since = at.saturating_duration_since(self.epoch);
        Tick(u32::try_from(since.as_nanos() / BUCKET.as_nanos()).unwrap_or(u32::MAX))
    }
}

/// Packets emitted within one tick, up to the limits' `bucket_packets`.
/// Sizes are clamped to `u32::MAX`: no packet is that large
/// (`rabbitmq.max_event_bytes` stays below RabbitMQ's 512 MiB), and a
/// clamped size still exceeds any budget a `u32` can count.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tick: Tick,
    packets: u32,
    bytes: u32,
}

/// What may be queued for one socket, in bytes; see the module doc.
///
/// The hub asks it once per socket per event, so the common case reads
/// and writes only the struct itself (inline in the hub's client entry):
/// the newest bucket is kept here while it takes packets, and the oldest
/// closed one is copied here. The queue of closed buckets is touched when
/// a bucket closes or is forgotten, at most once a [`BUCKET`] or an eighth
/// of the window.
#[derive(Debug, Default)]
pub(crate) struct SendBudget {
    /// Buckets that take no more packets, oldest first.
    closed: VecDeque<Bucket>,
    /// A copy of `closed`'s front (`None` when `closed` is empty).
    oldest_closed: Option<Bucket>,
    /// The newest bucket, newer than every closed one.
    open: Option<Bucket>,
    packets: u64,
    bytes: u64,
}

impl SendBudget {
    /// Bytes that may still be queued at `now`.
    pub(crate) fn queued(&mut self, limits: &BudgetLimits, now: Tick) -> u64 {
        self.forget(limits, now);
        self.bytes
    }

    /// Whether a packet of `size` bytes fits at `now`. A packet larger than
    /// the whole budget fits into a queue known to be empty, so an event
    /// bigger than the budget still reaches a client that reads.
    pub(crate) fn fits(&mut self, limits: &BudgetLimits, size: usize, now: Tick) -> bool {
        let queued = self.queued(limits, now);
        queued == 0 || queued.saturating_add(size as u64) <= limits.max_bytes as u64
    }

    /// Records a packet of `size` bytes emitted at `now`.
    pub(crate) fn record(&mut self, limits: &BudgetLimits, size: usize, now: Tick) {
        let size = u32::try_from(size).unwrap_or(u32::MAX);
        match &mut self.open {
            Some(bucket)
                // Not earlier: a step that read the clock before a
                // delivery did may record after it (counted later, never
                // forgotten early).
                if now <= bucket.tick
                    && bucket.packets < limits.bucket_packets
                    && bucket.bytes.checked_add(size).is_some() =>
            {
                bucket.packets += 1;
                bucket.bytes += size;
            }
            open => {
                let fresh = Bucket {
                    tick: now,
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
        self.bytes += u64::from(size);
    }

    /// Drops the buckets that are surely out of the queue: older than the
    /// horizon, or with at least `window` newer packets after them.
    fn forget(&mut self, limits: &BudgetLimits, now: Tick) {
        while let Some(oldest) = self.oldest_closed.or(self.open) {
            let aged = now.0.saturating_sub(oldest.tick.0) >= limits.horizon;
            let overtaken = self.packets - u64::from(oldest.packets) >= limits.window;
            if !aged && !overtaken {
                break;
            }
            if self.oldest_closed.is_some() {
                self.closed.pop_front();
                self.oldest_closed = self.closed.front().copied();
            } else {
                self.open = None;
            }
            self.packets -= u64::from(oldest.packets);
            self.bytes -= u64::from(oldest.bytes);
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

    const MINUTE: Duration = Duration::from_secs(60);

    fn at(tick: u32) -> Tick {
        Tick(tick)
    }

    #[test]
    fn counts_what_is_emitted_until_the_budget() {
        let limits = BudgetLimits::new(1000, 100, MINUTE);
        let mut budget = SendBudget::default();
        assert!(budget.fits(&limits, 400, at(0)));
        budget.record(&limits, 400, at(0));
        budget.record(&limits, 400, at(0));
        assert!(budget.fits(&limits, 200, at(0)));
        assert!(!budget.fits(&limits, 201, at(0)));
        assert_eq!(budget.queued(&limits, at(0)), 800);
    }

    #[test]
    fn a_packet_larger_than_the_budget_fits_an_empty_queue_only() {
        let limits = BudgetLimits::new(1000, 100, MINUTE);
        let mut budget = SendBudget::default();
        assert!(budget.fits(&limits, 5000, at(0)));
        budget.record(&limits, 5000, at(0));
        assert!(!budget.fits(&limits, 1, at(0)));
    }

    #[test]
    fn forgets_packets_past_the_drain_horizon() {
        // 60 s is 60 ticks; a packet of tick 3 may have been emitted just
        // before tick 4 began, so it is surely read at tick 3 + 61.
        let limits = BudgetLimits::new(1000, 100, MINUTE);
        let mut budget = SendBudget::default();
        budget.record(&limits, 900, at(3));
        assert!(!budget.fits(&limits, 200, at(3 + 60)));
        assert!(budget.fits(&limits, 200, at(3 + 61)));
        assert_eq!(budget.queued(&limits, at(3 + 61)), 0);
    }

    #[test]
    fn the_clock_counts_whole_buckets_since_its_epoch() {
        let limits = BudgetLimits::new(1000, 100, MINUTE);
        let epoch = limits.epoch;
        assert_eq!(limits.tick(epoch), at(0));
        assert_eq!(limits.tick(epoch + BUCKET - Duration::from_nanos(1)), at(0));
        assert_eq!(limits.tick(epoch + BUCKET * 7), at(7));
        if let Some(before) = epoch.checked_sub(BUCKET) {
            assert_eq!(limits.tick(before), at(0));
        }
        assert_eq!(limits.horizon, 61);
    }

    #[test]
    fn forgets_packets_overtaken_by_a_full_window() {
        let limits = BudgetLimits::new(10_000, 4, MINUTE);
        let mut budget = SendBudget::default();
        budget.record(&limits, 5000, at(0));
        for n in 1..=3 {
            budget.record(&limits, 10, at(n));
        }
        // Four packets fit the queue: the big one may still be in it.
        assert_eq!(budget.queued(&limits, at(4)), 5030);
        budget.record(&limits, 10, at(4));
        // Four newer ones: the big one has left.
        assert_eq!(budget.queued(&limits, at(4)), 40);
    }

    #[test]
    fn a_burst_within_one_tick_is_forgotten_window_by_window() {
        let limits = BudgetLimits::new(1 << 30, 16, MINUTE);
        let mut budget = SendBudget::default();
        for _ in 0..1000 {
            budget.record(&limits, 100, at(0));
        }
        // At most the window plus one bucket (an eighth of it) counted.
        let queued = budget.queued(&limits, at(0));
        assert!(queued <= (16 + 2) * 100, "{queued}");
        assert!(queued >= 16 * 100);
    }

    #[test]
    fn a_packet_recorded_with_an_earlier_tick_is_counted_with_the_newest() {
        let limits = BudgetLimits::new(1 << 20, 100, MINUTE);
        let mut budget = SendBudget::default();
        budget.record(&limits, 100, at(5));
        budget.record(&limits, 100, at(4));
        // Both leave with the tick-5 bucket, not a tick earlier.
        assert_eq!(budget.queued(&limits, at(4 + 61)), 200);
        assert_eq!(budget.queued(&limits, at(5 + 61)), 0);
    }

    #[test]
    fn a_bucket_is_12_bytes_and_a_budget_80() {
        // Per socket, and per second of the horizon of a busy one: the
        // limits live once in the hub.
        assert_eq!(std::mem::size_of::<Bucket>(), 12);
        assert!(std::mem::size_of::<SendBudget>() <= 80);
    }

    /// The budget as one queue of buckets, the newest taking packets:
    /// what [`SendBudget`] keeps, without its inline copies.
    struct Reference {
        buckets: VecDeque<(u32, u64, u64)>,
        packets: u64,
        bytes: u64,
    }

    impl Reference {
        fn record(&mut self, limits: &BudgetLimits, size: u64, now: u32) {
            match self.buckets.back_mut() {
                Some((tick, packets, bytes))
                    if now <= *tick && *packets < u64::from(limits.bucket_packets) =>
                {
                    *packets += 1;
                    *bytes += size;
                }
                _ => self.buckets.push_back((now, 1, size)),
            }
            self.packets += 1;
            self.bytes += size;
        }

        fn queued(&mut self, limits: &BudgetLimits, now: u32) -> u64 {
            while let Some((tick, packets, bytes)) = self.buckets.front().copied() {
                let aged = now.saturating_sub(tick) >= limits.horizon;
                if !aged && self.packets - packets < limits.window {
                    break;
                }
                self.buckets.pop_front();
                self.packets -= packets;
                self.bytes -= bytes;
            }
            self.bytes
        }
    }

    #[test]
    fn the_inline_buckets_count_exactly_what_one_queue_of_buckets_counts() {
        // A fixed pseudo-random walk: bursts, pauses past the horizon,
        // windows overtaken, sizes from 1 byte to 2 KiB, and now and then
        // a tick read before the last one recorded.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |bound: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % bound
        };
        for window in [1, 8, 64] {
            let limits = BudgetLimits::new(usize::MAX, window, Duration::from_secs(8));
            let mut budget = SendBudget::default();
            let mut reference = Reference {
                buckets: VecDeque::new(),
                packets: 0,
                bytes: 0,
            };
            let mut now = 100u32;
            for step in 0..20_000 {
                now += match next(100) {
                    0 => 10,
                    1..=20 => next(3) as u32,
                    _ => 0,
                };
                let tick = if next(50) == 0 { now - 1 } else { now };
                let size = 1 + next(2048);
                if next(2) == 0 {
                    // As the hub does: ask first, then record.
                    assert_eq!(
                        budget.queued(&limits, at(tick)),
                        reference.queued(&limits, tick)
                    );
                }
                budget.record(&limits, size as usize, at(tick));
                reference.record(&limits, size, tick);
                assert_eq!(
                    budget.queued(&limits, at(now)),
                    reference.queued(&limits, now),
                    "window {window}, step {step}"
                );
            }
        }
    }

    #[test]
    fn the_horizon_covers_a_full_heartbeat_round() {
        let horizon = drain_horizon(Duration::from_secs(25), Duration::from_secs(20));
        assert_eq!(horizon, Duration::from_secs(25 + 20 + 10));
        // 55 s, plus the tick a packet was emitted in.
        assert_eq!(BudgetLimits::new(1, 1, horizon).horizon, 56);
    }
}
