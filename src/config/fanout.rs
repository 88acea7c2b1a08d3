//! `[fanout]`: the gateway's replay history (memory and log), per-socket
//! buffers and limits, and the Engine.IO heartbeat.
//!
//! It checks ranges only; the replay directory is opened by the fan-out
//! itself, which reports what is wrong with it there.

use std::ops::RangeInclusive;

use serde::Deserialize;

use super::{check_ranges, Problem};

/// 256 MiB: 10,000 held events of up to ~26 KiB each before the cap bites.
pub const DEFAULT_REPLAY_MAX_BYTES: usize = 256 * 1024 * 1024;
/// The smallest byte cap: a few ordinary events.
pub const MIN_REPLAY_MAX_BYTES: usize = 64 * 1024;
/// 8 MiB queued per socket: 4,096 (`socket_buffer`) events of 2 KiB.
pub const DEFAULT_SOCKET_BUFFER_BYTES: usize = 8 * 1024 * 1024;

pub const DEFAULT_REPLAY_BUFFER: usize = 10_000;
pub const DEFAULT_SOCKET_BUFFER: usize = 4096;
pub const DEFAULT_PING_INTERVAL_MS: u64 = 25_000;
pub const DEFAULT_PING_TIMEOUT_MS: u64 = 20_000;
pub const DEFAULT_REPLAY_STALL_TIMEOUT_MS: u64 = 10_000;
pub const DEFAULT_MAX_SUBSCRIPTIONS: usize = 1024;
pub const DEFAULT_MAX_KEY_BYTES: usize = 1024;
pub const DEFAULT_MAX_SUBSCRIPTION_BYTES: usize = 256 * 1024;
pub const DEFAULT_MAX_PACKET_BYTES: usize = 64 * 1024;

const REPLAY_BUFFER: RangeInclusive<u64> = 1..=10_000_000;
const SOCKET_BUFFER: RangeInclusive<u64> = 16..=1_000_000;
/// Heartbeats: a second to an hour.
const PING_MS: RangeInclusive<u64> = 1_000..=3_600_000;
const REPLAY_STALL_TIMEOUT_MS: RangeInclusive<u64> = 100..=3_600_000;
const SOCKET_BUFFER_BYTES: RangeInclusive<u64> = 64 * 1024..=1 << 30;
const MAX_SUBSCRIPTIONS: RangeInclusive<u64> = 1..=100_000;
const MAX_KEY_BYTES: RangeInclusive<u64> = 16..=65_536;
const MAX_SUBSCRIPTION_BYTES: RangeInclusive<u64> = 1024..=64 << 20;
const MAX_PACKET_BYTES: RangeInclusive<u64> = 1024..=16 << 20;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FanoutConfig {
    /// Recent events held for `since` replay and snapshot hand-off.
    pub replay_buffer: usize,
    /// Bytes the held events may take at most (0: no cap); the oldest go
    /// first, as when `replay_buffer` is reached.
    pub replay_max_bytes: usize,
    /// Events queued per socket before it counts as too slow and is
    /// disconnected (it reconnects with `since` and loses nothing).
    pub socket_buffer: usize,
    /// Directory of the replay log, so the history survives a crash; empty
    /// keeps it in memory only.
    pub replay_dir: String,
    /// fdatasync every replay log record before the delivery is acked.
    pub replay_fsync: bool,
    /// Engine.IO heartbeat interval, in milliseconds.
    pub ping_interval_ms: u64,
    /// How long a client may leave a ping unanswered, in milliseconds.
    pub ping_timeout_ms: u64,
    /// A replay that cannot queue anything for a socket this long (in
    /// milliseconds) disconnects it as too slow.
    pub replay_stall_timeout_ms: u64,
    /// Bytes that may be queued for one socket; past it the socket is
    /// disconnected as too slow (it reconnects with `since`).
    pub socket_buffer_bytes: usize,
    /// Subscriptions one socket may hold.
    pub max_subscriptions: usize,
    /// Largest `key` of a subscription, in bytes of its canonical JSON.
    pub max_key_bytes: usize,
    /// Bytes all of one socket's subscriptions may take together.
    pub max_subscription_bytes: usize,
    /// Largest packet (WebSocket message, polling request body) a client
    /// may send; a larger one closes that client's connection.
    pub max_packet_bytes: usize,
}

impl Default for FanoutConfig {
    fn default() -> Self {
        FanoutConfig {
            replay_buffer: DEFAULT_REPLAY_BUFFER,
            replay_max_bytes: DEFAULT_REPLAY_MAX_BYTES,
            socket_buffer: DEFAULT_SOCKET_BUFFER,
            replay_dir: String::new(),
            replay_fsync: false,
            ping_interval_ms: DEFAULT_PING_INTERVAL_MS,
            ping_timeout_ms: DEFAULT_PING_TIMEOUT_MS,
            replay_stall_timeout_ms: DEFAULT_REPLAY_STALL_TIMEOUT_MS,
            socket_buffer_bytes: DEFAULT_SOCKET_BUFFER_BYTES,
            max_subscriptions: DEFAULT_MAX_SUBSCRIPTIONS,
            max_key_bytes: DEFAULT_MAX_KEY_BYTES,
            max_subscription_bytes: DEFAULT_MAX_SUBSCRIPTION_BYTES,
            max_packet_bytes: DEFAULT_MAX_PACKET_BYTES,
        }
    }
}

impl FanoutConfig {
    /// Adds every problem of `[fanout]` to `problems`.
    pub(super) fn validate(&self, problems: &mut Vec<Problem>) {
        check_ranges(
            problems,
            &[(
                "fanout.replay_buffer",
                self.replay_buffer as u64,
                REPLAY_BUFFER,
            )],
        );
        let max_bytes = self.replay_max_bytes;
        if max_bytes != 0 && max_bytes < MIN_REPLAY_MAX_BYTES {
            problems.push(Problem::new(
                "fanout.replay_max_bytes",
                format!("{max_bytes} must be 0 (no cap) or at least {MIN_REPLAY_MAX_BYTES}"),
            ));
        }
        check_ranges(
            problems,
            &[(
                "fanout.socket_buffer",
                self.socket_buffer as u64,
                SOCKET_BUFFER,
            )],
        );
        if self.replay_dir.trim() != self.replay_dir || self.replay_dir.contains('\0') {
            problems.push(Problem::new(
                "fanout.replay_dir",
                format!(
                    "{:?} has surrounding whitespace or a NUL byte; give a directory path, e.g. \".walcast/replay\"",
                    self.replay_dir
                ),
            ));
        }
        if self.replay_fsync && self.replay_dir.is_empty() {
            problems.push(Problem::new(
                "fanout.replay_fsync",
                "is true but fanout.replay_dir is empty; there is no log to fsync",
            ));
        }
        check_ranges(
            problems,
            &[
                ("fanout.ping_interval_ms", self.ping_interval_ms, PING_MS),
                ("fanout.ping_timeout_ms", self.ping_timeout_ms, PING_MS),
                (
                    "fanout.replay_stall_timeout_ms",
                    self.replay_stall_timeout_ms,
                    REPLAY_STALL_TIMEOUT_MS,
                ),
                (
                    "fanout.socket_buffer_bytes",
                    self.socket_buffer_bytes as u64,
                    SOCKET_BUFFER_BYTES,
                ),
                (
                    "fanout.max_subscriptions",
                    self.max_subscriptions as u64,
                    MAX_SUBSCRIPTIONS,
                ),
                (
                    "fanout.max_key_bytes",
                    self.max_key_bytes as u64,
                    MAX_KEY_BYTES,
                ),
                (
                    "fanout.max_subscription_bytes",
                    self.max_subscription_bytes as u64,
                    MAX_SUBSCRIPTION_BYTES,
                ),
                (
                    "fanout.max_packet_bytes",
                    self.max_packet_bytes as u64,
                    MAX_PACKET_BYTES,
                ),
            ],
        );
    }
}
