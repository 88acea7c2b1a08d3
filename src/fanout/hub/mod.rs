//! The hub: the replay buffer, the attached sockets and their subscriptions,
//! behind one lock.
//!
//! Every change enters through [`Hub::deliver`], which under the lock drops
//! duplicates, emits to the live sockets the change is for, and holds it in
//! the replay buffer. A socket is attached ([`Hub::attach`]) under the same
//! lock, so where its replay ends and its live stream begins is one point in
//! the sequence of changes: nothing falls between, nothing is sent twice.
//! A replay longer than the socket's send buffer runs in a task that takes
//! the lock for a bounded batch at a time (see [`Hub::attach`]).
//!
//! Emits go through [`Emit`] and are non-blocking (`try_send` into the
//! socket's buffer), so holding a `std` mutex across them is cheap and no
//! socket can stall another; a socket whose buffer is full, or that would
//! pass its byte budget (`budget`), is detached at once and disconnected
//! outside the lock. A socket admitted with a JWT is detached and
//! disconnected when the token expires, by a timer that ends with the
//! socket.
//!
//! # Which source the history follows
//!
//! Every change comes with its stream's source (`x-walcast-source`,
//! `<system identifier>/<database>/<slot>`); ids are only comparable within
//! one. The hub follows one source at a time and keeps it with its history
//! (persisted in the replay log):
//!
//! - The first source a history sees (a fresh gateway, or a log from before
//!   sources) is adopted.
//! - A change from another source **restarts the history** for the new one
//!   (contract section 2: "when the source changes … it restarts its
//!   history"): nothing held, no horizon, so the new source's changes are
//!   delivered however low their ids; every attached socket gets `resync`
//!   (`source_changed`) and loses its cursor and snapshot filter; a `since`
//!   from before gets `resync` (`source_changed`) too. The newest source
//!   wins: a database restored onto a new cluster, or a capture moved to
//!   another slot, takes over without an operator.
//! - With `rabbitmq.source` set (a pin), the consumer dead-letters every
//!   other source before it reaches the hub (`foreign_source`), so only the
//!   pinned one can restart the history; pin it when several captures
//!   publish to one exchange, or when publishers other than walcast's
//!   capture may use `app_id=walcast`.
//!
//! Messages without `app_id=walcast` or without a source never reach the
//! hub (the consumer dead-letters them), so they cannot poison the dedupe
//! horizon (see `replay` for what a forged id of the followed source can
//! and cannot do).
//!
//! It does not speak AMQP (the consumer calls [`Hub::deliver`]) and does not
//! build the Socket.IO layer (see `layer`).
//!
//! Layout: this file holds the types, [`Hub::deliver`] and the helpers both
//! delivery and replay use; `attach` attaches sockets and runs their
//! catch-up; `history` follows the source and restarts the history;
//! `disconnect` detaches sockets (slow, expired, shutdown).

mod attach;
mod disconnect;
mod history;
mod offer;
mod packets;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use serde_json::json;
use socketioxide::socket::Sid;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::config::FanoutConfig;
use crate::event::{EventId, PgTimestamp};

use super::budget::{drain_horizon, BudgetLimits, SendBudget};
use super::change::Change;
use super::emit::Emit;
use super::log_writer::{LogWriter, Op};
use super::replay::{ReplayBuffer, ResyncReason};
use super::replay_log::{ReplayLog, ReplayLogError};
use super::snapshot::Snapshot;
use super::stats::{DisconnectReason, FanoutStats};
use super::subscription::{Index, Limits, Subscriptions};
use attach::EarlyCommand;
#[cfg(test)]
use attach::{EARLY_COMMANDS_KEPT, MAX_EARLY_COMMANDS};
use offer::Offer;
use packets::Packets;

/// What the authorizer is given about a handshake.
#[derive(Debug, Clone)]
pub struct AuthRequest {
    /// `auth.token`, if the client sent one.
    pub token: Option<String>,
    /// The HTTP headers of the Socket.IO handshake request.
    pub headers: axum::http::HeaderMap,
}

/// Decides whether a handshake may connect: `Ok(until)` admits it, to be
/// disconnected at `until` when that is set (a JWT's expiry);
/// `Err(message)` refuses it with `connect_error` "unauthorized: message".
pub type Authorizer = Arc<
    dyn Fn(AuthRequest) -> Pin<Box<dyn Future<Output = Result<Option<SystemTime>, String>> + Send>>
        + Send
        + Sync,
>;

/// Fan-out settings.
#[derive(Clone)]
pub struct HubOptions {
    /// Changes held for `since` replay and snapshot hand-off.
    pub replay_buffer: usize,
    /// Bytes the held changes may take (0: no cap).
    pub replay_max_bytes: usize,
    /// Packets queued per socket (socketioxide `max_buffer_size`); a socket
    /// whose queue is full when a change is due is disconnected.
    pub socket_buffer: usize,
    /// Engine.IO heartbeat. A client that stops reading entirely is also
    /// closed by the heartbeat once its queue is full.
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    /// A replay that cannot put anything into the socket's queue for this
    /// long treats the socket as too slow.
    pub replay_stall_timeout: Duration,
    /// Handshake authorization (issue 4); `None` admits everyone.
    pub authorizer: Option<Authorizer>,
    /// Where the replay history is logged so it survives a crash (see
    /// `replay_log`); `None` keeps it in memory only.
    pub replay_dir: Option<PathBuf>,
    /// `fdatasync` every record before the delivery is acked, so a machine
    /// crash loses nothing either (and the log is trusted after a reboot).
    pub replay_fsync: bool,
    /// Bytes queued per socket at most (see `budget`); past it the socket
    /// is disconnected.
    pub socket_buffer_bytes: usize,
    /// Caps on one socket's subscriptions.
    pub subscription_limits: Limits,
    /// Largest packet a client may send (engineioxide's `max_payload` and
    /// WebSocket message and frame limits).
    pub max_packet_bytes: usize,
    /// The tables the gateway follows (`postgres.tables`), for bounded
    /// metric labels; empty caps the labels instead.
    pub tables: Vec<String>,
    /// Where the gateway's tasks run (the consumer's, the catch-ups, the
    /// timers): the process's tracker, waited for at shutdown.
    pub tasks: TaskTracker,
}

impl HubOptions {
    pub fn from_config(config: &FanoutConfig) -> HubOptions {
        HubOptions {
            replay_buffer: config.replay_buffer,
            replay_max_bytes: config.replay_max_bytes,
            socket_buffer: config.socket_buffer,
            ping_interval: Duration::from_millis(config.ping_interval_ms),
            ping_timeout: Duration::from_millis(config.ping_timeout_ms),
            replay_stall_timeout: Duration::from_millis(config.replay_stall_timeout_ms),
            authorizer: None,
            replay_dir: (!config.replay_dir.is_empty()).then(|| PathBuf::from(&config.replay_dir)),
            replay_fsync: config.replay_fsync,
            socket_buffer_bytes: config.socket_buffer_bytes,
            subscription_limits: Limits {
                subscriptions: config.max_subscriptions,
                key_bytes: config.max_key_bytes,
                total_bytes: config.max_subscription_bytes,
            },
            max_packet_bytes: config.max_packet_bytes,
            tables: Vec::new(),
            tasks: TaskTracker::new(),
        }
    }
}

impl Default for HubOptions {
    fn default() -> Self {
        HubOptions::from_config(&FanoutConfig::default())
    }
}

impl fmt::Debug for HubOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubOptions")
            .field("replay_buffer", &self.replay_buffer)
            .field("replay_max_bytes", &self.replay_max_bytes)
            .field("socket_buffer", &self.socket_buffer)
            .field("ping_interval", &self.ping_interval)
            .field("ping_timeout", &self.ping_timeout)
            .field("replay_stall_timeout", &self.replay_stall_timeout)
            .field("authorizer", &self.authorizer.is_some())
            .field("replay_dir", &self.replay_dir)
            .field("replay_fsync", &self.replay_fsync)
            .field("socket_buffer_bytes", &self.socket_buffer_bytes)
            .field("subscription_limits", &self.subscription_limits)
            .field("max_packet_bytes", &self.max_packet_bytes)
            .field("tables", &self.tables)
            .field("tasks", &self.tasks)
            .finish()
    }
}

/// What [`Hub::deliver`] did with a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivered {
    /// New: handed to this many sockets and held for replay.
    Fanned { sockets: usize },
    /// Seen before (redelivery or republish): dropped.
    Duplicate,
}

/// Why changes handed to the hub cannot be acked ([`Hub::wait_logged`]):
/// the broker delivers them again.
#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    #[error("cannot write the replay log in {dir}: {source}; not acking the changes it lacks (they are redelivered once the disk is writable again)")]
    ReplayLog {
        dir: PathBuf,
        source: Arc<std::io::Error>,
    },
}

/// The fan-out's shared state; clone it freely.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    stats: FanoutStats,
    options: HubOptions,
    /// Every socket's byte budget limits and clock (from `options`).
    budget: BudgetLimits,
    shutdown: CancellationToken,
    /// Rate limit of the horizon-duplicate warning (ms since `started`).
    started: Instant,
    horizon_warned_at: AtomicU64,
    horizon_suppressed: AtomicU64,
}

/// At most one horizon-duplicate warning per interval.
const HORIZON_WARN_INTERVAL: Duration = Duration::from_secs(10);

struct State {
    buffer: ReplayBuffer,
    /// The buffer's history on disk, when `replay_dir` is set: written by
    /// a thread of its own, never under this lock.
    log: Option<LogWriter>,
    clients: HashMap<Sid, Client>,
    index: Index,
    /// Reused target list, so a delivery does not allocate.
    targets: Vec<Sid>,
    /// The current delivery's encoded packets (reused the same way).
    packets: Packets,
    /// Until when the token of a socket admitted but not yet attached is
    /// valid (see [`Hub::admitted_until`]).
    admitted_until: HashMap<Sid, SystemTime>,
    /// Commands of sockets admitted but not yet attached, in the order
    /// they came (see [`Hub::update_subscription`]).
    early: HashMap<Sid, Vec<EarlyCommand>>,
}

struct Client {
    socket: Arc<dyn Emit>,
    subs: Subscriptions,
    phase: Phase,
    /// The hand-off filter: changes this snapshot sees are not sent. See
    /// [`passes_snapshot`].
    snapshot: Option<Snapshot>,
    /// The first change from a transaction that began after the snapshot
    /// (`xid >= xmax`): in commit order every later change is invisible to
    /// the snapshot too, so only a late change from before it is checked
    /// against the snapshot (which also keeps a long-lived socket clear of
    /// xid wraparound).
    snapshot_passed_at: Option<EventId>,
    /// The `since` cursor: the client has every change up to it, so no
    /// change with an id at or below it is sent (a redelivery after a crash
    /// that lost the log's tail) unless it comes late (see
    /// [`blocked_by_floor`]).
    floor: Option<EventId>,
    /// What may still be queued for it, in bytes.
    budget: SendBudget,
    /// Ends its token-expiry timer when the client is dropped.
    _expiry: Option<DropGuard>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Live,
    /// Being replayed to by a catch-up task; `cursor` is the last held
    /// change considered. Live delivery skips it except for a change at or
    /// below the cursor (a late republish), which the replay would miss.
    CatchingUp {
        cursor: Option<EventId>,
    },
}

/// One batch of a replay.
enum Step {
    Done,
    Gone,
    Yield,
    /// The socket's queue has no room; wait for the client to read.
    Full {
        progressed: bool,
    },
    /// The socket was detached for this reason; disconnect it.
    Cut(Arc<dyn Emit>, DisconnectReason),
}

/// Changes a catch-up batch examines before it lets go of the lock.
const CATCH_UP_BATCH: usize = 256;

impl Hub {
    /// A hub; `shutdown` ends its background tasks and closes the sockets
    /// (through the layer built by [`super::layer`]).
    ///
    /// # Panics
    ///
    /// With `replay_dir` set, if the replay log cannot be opened (another
    /// process holds it, the directory is not writable). [`Hub::open`]
    /// returns that error instead.
    pub fn new(options: HubOptions, shutdown: CancellationToken) -> Hub {
        Hub::open(options, shutdown).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A hub whose replay history is loaded from and logged to
    /// `options.replay_dir` (in memory only when that is `None`).
    pub fn open(options: HubOptions, shutdown: CancellationToken) -> Result<Hub, ReplayLogError> {
        let stats = FanoutStats::for_tables(&options.tables);
        let (log, buffer) = match &options.replay_dir {
            None => {
                let mut buffer = ReplayBuffer::new(options.replay_buffer);
                buffer.set_max_bytes(options.replay_max_bytes);
                (None, buffer)
            }
            Some(dir) => {
                let (log, mut buffer, _report) =
                    ReplayLog::open(dir, options.replay_buffer, options.replay_fsync)?;
                buffer.set_max_bytes(options.replay_max_bytes);
                let writer =
                    LogWriter::spawn(log, buffer.clone(), stats.clone()).map_err(|source| {
                        ReplayLogError::Io {
                            action: "start the writer thread for",
                            path: dir.clone(),
                            source,
                        }
                    })?;
                (Some(writer), buffer)
            }
        };
        stats.set_buffer(buffer.len(), buffer.bytes());
        Ok(Hub {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    buffer,
                    log,
                    clients: HashMap::new(),
                    index: Index::default(),
                    targets: Vec::new(),
                    packets: Packets::default(),
                    admitted_until: HashMap::new(),
                    early: HashMap::new(),
                }),
                stats,
                budget: BudgetLimits::new(
                    options.socket_buffer_bytes,
                    options.socket_buffer,
                    drain_horizon(options.ping_interval, options.ping_timeout),
                ),
                options,
                shutdown,
                started: Instant::now(),
                horizon_warned_at: AtomicU64::new(0),
                horizon_suppressed: AtomicU64::new(0),
            }),
        })
    }

    pub fn stats(&self) -> FanoutStats {
        self.inner.stats.clone()
    }

    pub fn options(&self) -> &HubOptions {
        &self.inner.options
    }

    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.inner.shutdown
    }

    /// The tracker the gateway's tasks run on ([`HubOptions::tasks`]).
    pub fn tasks(&self) -> &TaskTracker {
        &self.inner.options.tasks
    }

    /// Stops the replay log's writer thread and waits for it (it closes
    /// the log and releases its lock); the history stays in memory. For
    /// shutdown, once the consumer has stopped: nothing written after this
    /// reaches the file.
    pub async fn close_replay_log(&self) {
        let writer = self.lock().log.take();
        if let Some(writer) = writer {
            // Dropping it joins the thread, which may still be syncing.
            let _ = tokio::task::spawn_blocking(move || drop(writer)).await;
        }
    }

    /// The newest change held, if any.
    pub fn latest_id(&self) -> Option<EventId> {
        self.lock().buffer.latest_id()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind (no
        // invariant spans an unwinding point), so keep serving.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Fans a change out and holds it for replay. When this returns `Ok`,
    /// the change is in the queue of every socket it is for (or that socket
    /// is being disconnected as too slow) and on its way to the replay log
    /// (if any): the consumer may ack it once [`Hub::wait_logged`] says it
    /// is written. (A client may see it before it is on disk; if the
    /// gateway dies in between, the unacked delivery comes again and goes
    /// into the history, and the client's `since` keeps it from seeing it
    /// twice.) On `Err` nothing was sent or held.
    ///
    /// `source` is the change's `x-walcast-source`; a source other than the
    /// followed one restarts the history first (module doc).
    pub fn deliver(&self, change: Change, source: &str) -> Result<Delivered, DeliverError> {
        let stats = &self.inner.stats;
        let sockets;
        {
            let mut guard = self.lock();
            let state = &mut *guard;
            if state.buffer.source() != Some(source) {
                state.follow_source(source, change.id, stats)?;
            }
            if state.buffer.is_duplicate(&change.id) {
                stats.record_duplicate();
                if !state.buffer.holds(&change.id) {
                    // At or below the horizon, not held: a redelivery of an
                    // evicted change (a capture restart resends a burst) or
                    // a change this history can no longer place. Worth
                    // seeing, unlike a redelivery of a held change.
                    self.warn_horizon_duplicate(&change.id, &state.buffer);
                } else {
                    debug!(id = %change.id, "dropping duplicate change");
                }
                // A redelivery after a failed write: its ack must wait for
                // the file to be repaired (see `log_writer`).
                if let Some(log) = state.log.as_mut().filter(|log| log.stale()) {
                    log.send(Op::Sync);
                }
                return Ok(Delivered::Duplicate);
            }
            let change = Arc::new(change);
            if let Some(log) = &mut state.log {
                log.send(Op::Append(Arc::clone(&change)));
            }
            let late = state.buffer.is_late(&change.id);
            if late {
                warn!(id = %change.id, latest = ?state.buffer.latest_id(), "change arrived after newer ones (a republish after a nack); delivering it out of id order");
            }
            // Most sockets usually take everything. Then the registry is
            // walked in its own memory order (each socket's entry is the
            // first thing a delivery touches; looked up in the index's
            // order, every one is a cache miss) and the index only adds the
            // sockets that subscribed to this table or row.
            let mut offer = Offer::new(&change, late, &self.inner.budget, &mut state.packets);
            if state.index.everything() * 2 >= state.clients.len() {
                for (sid, client) in state.clients.iter_mut() {
                    if client.subs.all {
                        offer.to(*sid, client);
                    }
                }
                state
                    .index
                    .subscribed(&change.table, change.row.as_ref(), &mut state.targets);
            } else {
                state
                    .index
                    .targets(&change.table, change.row.as_ref(), &mut state.targets);
            }
            for sid in &state.targets {
                if let Some(client) = state.clients.get_mut(sid) {
                    offer.to(*sid, client);
                }
            }
            let Offer {
                emitted,
                gone,
                slow,
                ..
            } = offer;
            state.packets.clear();
            for sid in gone {
                state.detach(sid, stats);
            }
            let slow_sockets: Vec<(Arc<dyn Emit>, DisconnectReason)> = slow
                .iter()
                .filter_map(|(sid, reason)| Some((state.detach(*sid, stats)?, *reason)))
                .collect();
            // Timed before it counts as delivered, so that a scrape never
            // sees a delivery whose lag is missing.
            if let Some(commit_time) = change.commit_time {
                stats.record_deliver_lag(commit_time, PgTimestamp::now());
            }
            stats.record_delivered(&change.table, change.op);
            state.buffer.push_shared(change);
            stats.set_buffer(state.buffer.len(), state.buffer.bytes());
            stats.record_emitted(emitted);
            sockets = emitted as usize;
            drop(guard);
            for (socket, reason) in slow_sockets {
                self.disconnect_slow(socket, reason, "live");
            }
        }
        Ok(Delivered::Fanned { sockets })
    }
}

impl State {
    /// Removes a socket from the registry and the index; returns it if it
    /// was attached.
    fn detach(&mut self, sid: Sid, stats: &FanoutStats) -> Option<Arc<dyn Emit>> {
        let client = self.clients.remove(&sid)?;
        self.index.remove_socket(sid, &client.subs);
        stats.set_connected_sockets(self.clients.len());
        Some(client.socket)
    }
}

/// Whether a socket's `since` cursor keeps a change from it. The cursor
/// stands for every change up to it, so an in-order change at or below it
/// (a redelivery of what a crash cut from the replay log's tail) is one
/// the client has. A *late* change (one that arrived after a newer one: a
/// republish after a nack, see `replay`) is one this gateway never
/// delivered before, so a cursor above it does not cover it: it is sent,
/// out of id order, rather than lost. (Only a client that got it through
/// another gateway or an earlier history may see it twice, which
/// at-least-once delivery allows.)
fn blocked_by_floor(floor: Option<EventId>, id: EventId, late: bool) -> bool {
    !late && floor.is_some_and(|floor| id <= floor)
}

/// Applies a client's snapshot filter to a change: false if the snapshot
/// sees it (the listing has it already).
///
/// In commit order, once a change from a transaction that began after the
/// snapshot has gone by, no later change is visible to it. A *late* change
/// (a republish after a nack, delivered after newer ones) breaks that
/// order: one from before that point may be in the listing, so it is still
/// checked, else the client would apply it twice.
fn passes_snapshot(client: &mut Client, id: EventId, xid: u32, late: bool) -> bool {
    let Some(snapshot) = &client.snapshot else {
        return true;
    };
    if let Some(passed_at) = client.snapshot_passed_at {
        if !late || id > passed_at {
            return true;
        }
    }
    if snapshot.sees(xid) {
        return false;
    }
    if snapshot.is_after(xid) && client.snapshot_passed_at.is_none_or(|p| id < p) {
        client.snapshot_passed_at = Some(id);
    }
    true
}

fn send_resync(
    socket: &dyn Emit,
    reason: ResyncReason,
    latest_id: Option<EventId>,
    stats: &FanoutStats,
) {
    stats.record_resync();
    info!(sid = %socket.sid(), reason = reason.as_str(), "sending resync");
    let payload = json!({
        "reason": reason.as_str(),
        "latest_id": latest_id.map(|id| id.to_string()),
    });
    if let Err(e) = socket.emit_resync(&payload) {
        warn!(sid = %socket.sid(), error = ?e, "cannot send resync");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Lsn;
    use crate::fanout::handshake::StartAt;
    use serde_json::{json, Value};

    fn id(n: u64) -> EventId {
        EventId {
            commit_lsn: Lsn(n),
            ordinal: 0,
        }
    }

    use crate::fanout::emit::test_socket::{Sent, TestSocket};

    /// A change event `n` (commit LSN `n`) on `public.<table>`, row `key`
    /// (`None`: a truncate), transaction `xid`.
    const SOURCE: &str = "7412/shop/walcast";

    pub(super) fn change(n: u64, table: &str, key: Option<i64>, xid: u32) -> Change {
        let body = serde_json::json!({
            "id": id(n).to_string(),
            "op": if key.is_some() { "insert" } else { "truncate" },
            "schema": "public",
            "table": table,
            "key": key.map(|k| serde_json::json!({"id": k})),
            "new": key.map(|k| serde_json::json!({"id": k, "note": "x".repeat(16)})),
            "old": null,
            "xid": xid,
        });
        Change::parse(body.to_string().into_bytes()).unwrap()
    }

    pub(super) fn hub_with(options: HubOptions) -> Hub {
        Hub::new(options, CancellationToken::new())
    }

    fn hub() -> Hub {
        hub_with(HubOptions {
            replay_buffer: 100,
            ..HubOptions::default()
        })
    }

    fn attach(hub: &Hub, room: usize, start: StartAt) -> TestSocket {
        let socket = TestSocket::new(room);
        hub.attach(Arc::new(socket.clone()), start);
        socket
    }

    #[test]
    fn deliver_reaches_every_attached_socket_in_order() {
        let hub = hub();
        let a = attach(&hub, 100, StartAt::Live);
        let b = attach(&hub, 100, StartAt::Live);
        for n in 1..=3 {
            assert_eq!(
                hub.deliver(change(n, "orders", Some(n as i64), 10), SOURCE)
                    .unwrap(),
                Delivered::Fanned { sockets: 2 }
            );
        }
        assert_eq!(
            hub.deliver(change(2, "orders", Some(2), 10), SOURCE)
                .unwrap(),
            Delivered::Duplicate
        );
        let ids: Vec<String> = (1..=3).map(|n| id(n).to_string()).collect();
        assert_eq!(a.change_ids(), ids);
        assert_eq!(b.change_ids(), ids);
    }

    #[test]
    fn each_change_delivered_live_is_timed_from_its_commit() {
        let hub = hub();
        let _socket = attach(&hub, 100, StartAt::Live);
        // Change `n`, committed `micros_ago` (negative: in the future).
        let committed = |n: u64, micros_ago: i64| {
            let at = PgTimestamp(PgTimestamp::now().0 - micros_ago);
            let body = change(n, "orders", Some(n as i64), 10)
                .raw()
                .replace(",\"xid\":", &format!(",\"commit_time\":\"{at}\",\"xid\":"));
            Change::parse(body.into_bytes()).unwrap()
        };
        let stats = hub.stats();
        let lag = stats.commit_to_deliver_lag();
        hub.deliver(committed(1, 2_000_000), SOURCE).unwrap();
        assert_eq!(lag.count(), 1);
        assert!((2.0..3.0).contains(&lag.sum()), "{}", lag.sum());
        // A duplicate was timed when it was delivered; a change without a
        // readable commit time cannot be timed.
        hub.deliver(committed(1, 60_000_000), SOURCE).unwrap();
        hub.deliver(change(2, "orders", Some(2), 10), SOURCE)
            .unwrap();
        assert_eq!(lag.count(), 1);
        // A commit "in the future" (another host's clock) counts as no lag.
        hub.deliver(committed(3, -5_000_000), SOURCE).unwrap();
        assert_eq!(lag.count(), 2);
        assert!((2.0..3.0).contains(&lag.sum()), "{}", lag.sum());
    }

    #[test]
    fn everyone_and_each_subscriber_get_a_change_once_however_they_are_found() {
        // With most sockets taking everything, `deliver` walks its registry
        // and asks the index only for the subscribers; with most sockets
        // subscribed it asks the index for all of them. Either way each
        // socket whose subscriptions match gets the change once.
        for everything in [6, 1] {
            let hub = hub();
            let all: Vec<TestSocket> = (0..everything)
                .map(|_| attach(&hub, 100, StartAt::Live))
                .collect();
            let orders = json!({"table": "public.orders"});
            let order7 = json!({"table": "public.orders", "key": {"id": 7}});
            let table = attach(&hub, 100, StartAt::Live);
            subscribe(&hub, &table, orders.clone()).unwrap();
            let row = attach(&hub, 100, StartAt::Live);
            subscribe(&hub, &row, order7.clone()).unwrap();
            let both = attach(&hub, 100, StartAt::Live);
            subscribe(&hub, &both, orders).unwrap();
            subscribe(&hub, &both, order7).unwrap();
            let other = attach(&hub, 100, StartAt::Live);
            subscribe(&hub, &other, json!({"table": "public.items"})).unwrap();

            let changes = [
                (change(1, "orders", Some(7), 10), 3),
                (change(2, "orders", Some(8), 10), 2),
                (change(3, "orders", None, 10), 3),
                (change(4, "items", Some(7), 10), 1),
            ];
            for (change, subscribers) in changes {
                assert_eq!(
                    hub.deliver(change, SOURCE).unwrap(),
                    Delivered::Fanned {
                        sockets: everything + subscribers
                    },
                    "{everything} sockets take everything"
                );
            }
            let ids = |ns: &[u64]| ns.iter().map(|&n| id(n).to_string()).collect::<Vec<_>>();
            for socket in &all {
                assert_eq!(socket.change_ids(), ids(&[1, 2, 3, 4]));
            }
            assert_eq!(table.change_ids(), ids(&[1, 2, 3]));
            assert_eq!(row.change_ids(), ids(&[1, 3]));
            assert_eq!(both.change_ids(), ids(&[1, 2, 3]));
            assert_eq!(other.change_ids(), ids(&[4]));
        }
    }

    #[test]
    fn since_replays_what_is_held_then_goes_live_without_a_seam() {
        let hub = hub();
        for n in 1..=5 {
            hub.deliver(change(n, "orders", Some(1), 10), SOURCE)
                .unwrap();
        }
        let socket = attach(&hub, 100, StartAt::Since(id(2)));
        hub.deliver(change(6, "orders", Some(1), 10), SOURCE)
            .unwrap();
        let ids: Vec<String> = (3..=6).map(|n| id(n).to_string()).collect();
        assert_eq!(socket.change_ids(), ids);
    }

    #[test]
    fn a_since_older_than_the_history_gets_resync() {
        let hub = hub_with(HubOptions {
            replay_buffer: 2,
            ..HubOptions::default()
        });
        for n in 1..=5 {
            hub.deliver(change(n, "orders", Some(1), 10), SOURCE)
                .unwrap();
        }
        let socket = attach(&hub, 100, StartAt::Since(id(1)));
        let sent = socket.sent();
        assert!(
            matches!(&sent[0], Sent::Resync(v) if v["reason"] == "since_too_old"),
            "{sent:?}"
        );
    }

    /// What a socket was sent, as `change:<n>` (commit LSN), `ready:<n>`
    /// (its `latest_id`, `-` for null) and `resync`.
    fn packets(socket: &TestSocket) -> Vec<String> {
        let lsn = |id: &str| u64::from_str_radix(id.split('-').next().unwrap(), 16).unwrap();
        socket
            .sent()
            .iter()
            .map(|sent| match sent {
                Sent::Change(raw) => {
                    let v: serde_json::Value = serde_json::from_str(raw).unwrap();
                    format!("change:{}", lsn(v["id"].as_str().unwrap()))
                }
                Sent::Ready(v) => match v["latest_id"].as_str() {
                    Some(id) => format!("ready:{}", lsn(id)),
                    None => "ready:-".into(),
                },
                Sent::Resync(_) => "resync".into(),
                Sent::Disconnect => "disconnect".into(),
            })
            .collect()
    }

    #[test]
    fn ready_comes_once_after_the_replay_and_before_live_changes() {
        let hub = hub();
        let generation = hub.history_start_needed().unwrap();
        assert!(hub.offer_history_start(&"10:10:".parse().unwrap(), generation));
        let empty = attach(&hub, 100, StartAt::Live);
        for n in 1..=3 {
            hub.deliver(change(n, "orders", Some(1), 10 + n as u32), SOURCE)
                .unwrap();
        }
        let live = attach(&hub, 100, StartAt::Live);
        let since = attach(&hub, 100, StartAt::Since(id(1)));
        let snapshot = attach(&hub, 100, StartAt::Snapshot("11:12:".parse().unwrap()));
        hub.deliver(change(4, "orders", Some(1), 14), SOURCE)
            .unwrap();
        assert_eq!(
            packets(&empty),
            ["ready:-", "change:1", "change:2", "change:3", "change:4"]
        );
        assert_eq!(packets(&live), ["ready:3", "change:4"]);
        assert_eq!(
            packets(&since),
            ["change:2", "change:3", "ready:3", "change:4"]
        );
        // The snapshot sees xid 11 (change 1), not 12 and 13.
        assert_eq!(
            packets(&snapshot),
            ["change:2", "change:3", "ready:3", "change:4"]
        );
    }

    #[test]
    fn ready_follows_a_resync() {
        let hub = hub_with(HubOptions {
            replay_buffer: 2,
            ..HubOptions::default()
        });
        for n in 1..=5 {
            hub.deliver(change(n, "orders", Some(1), 10), SOURCE)
                .unwrap();
        }
        let socket = attach(&hub, 100, StartAt::Since(id(1)));
        hub.deliver(change(6, "orders", Some(1), 10), SOURCE)
            .unwrap();
        assert_eq!(packets(&socket), ["resync", "ready:5", "change:6"]);
    }

    #[tokio::test]
    async fn a_ready_without_room_waits_like_a_change_and_live_changes_wait_for_it() {
        let hub = hub();
        for n in 1..=3 {
            hub.deliver(change(n, "orders", Some(1), 10), SOURCE)
                .unwrap();
        }
        // Room for the replay only.
        let socket = attach(&hub, 2, StartAt::Since(id(1)));
        hub.deliver(change(4, "orders", Some(1), 10), SOURCE)
            .unwrap();
        assert_eq!(packets(&socket), ["change:2", "change:3"]);
        socket.drain(10);
        tokio::time::timeout(Duration::from_secs(5), async {
            while socket.sent().is_empty() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("ready goes out once there is room");
        assert_eq!(packets(&socket), ["change:4", "ready:4"]);
    }

    #[tokio::test]
    async fn a_source_change_during_a_replay_sends_resync_then_ready() {
        let hub = hub_with(HubOptions {
            replay_buffer: 1000,
            ..HubOptions::default()
        });
        for n in 1..=300 {
            hub.deliver(change(n, "orders", Some(1), 10), SOURCE)
                .unwrap();
        }
        // The first batch (256) leaves the rest to a task, which this
        // single-threaded test runs only when it awaits: the source changes
        // in the middle of the replay.
        let socket = attach(&hub, 1000, StartAt::Since(id(1)));
        hub.deliver(change(1, "orders", Some(1), 10), "9999/other/walcast")
            .unwrap();
        let sent = packets(&socket);
        assert_eq!(sent.len(), CATCH_UP_BATCH + 1);
        assert_eq!(sent.last().unwrap(), "resync");
        socket.drain(1000);
        tokio::time::timeout(Duration::from_secs(5), async {
            while !socket
                .sent()
                .iter()
                .any(|sent| matches!(sent, Sent::Ready(_)))
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("ready comes once the replay of the new history is done");
        // The new source's change, from its own history, then ready.
        assert_eq!(packets(&socket), ["change:1", "ready:1"]);
    }

    #[tokio::test]
    async fn a_socket_whose_queue_is_full_is_detached_and_disconnected() {
        let hub = hub();
        // Room for its `ready` and one change.
        let slow = attach(&hub, 2, StartAt::Live);
        let fast = attach(&hub, 100, StartAt::Live);
        hub.deliver(change(1, "orders", Some(1), 10), SOURCE)
            .unwrap();
        // No room left in `slow`: detached, then its disconnect waits for
        // room, which the test gives it.
        hub.deliver(change(2, "orders", Some(1), 10), SOURCE)
            .unwrap();
        assert_eq!(hub.stats().snapshot().slow_disconnects, 1);
        assert_eq!(hub.stats().snapshot().connected_sockets, 1);
        assert_eq!(fast.change_ids().len(), 2);
        assert_eq!(slow.change_ids(), vec![id(1).to_string()]);
        assert_eq!(slow.drain(1).len(), 2);
        tokio::time::timeout(Duration::from_secs(5), async {
            while slow.sent() != vec![Sent::Disconnect] {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the disconnect goes out once there is room");
    }

    #[test]
    fn a_closed_socket_is_forgotten_on_the_next_change() {
        let hub = hub();
        let gone = attach(&hub, 100, StartAt::Live);
        gone.close();
        assert_eq!(
            hub.deliver(change(1, "orders", Some(1), 10), SOURCE)
                .unwrap(),
            Delivered::Fanned { sockets: 0 }
        );
        assert_eq!(hub.stats().snapshot().connected_sockets, 0);
    }

    #[tokio::test]
    async fn a_long_replay_waits_for_room_and_finishes() {
        let hub = hub();
        for n in 1..=50 {
            hub.deliver(change(n, "orders", Some(1), 10), SOURCE)
                .unwrap();
        }
        let socket = attach(&hub, 10, StartAt::Since(id(1)));
        let mut got = socket.change_ids();
        assert_eq!(got.len(), 10);
        while got.len() < 49 {
            socket.drain(10);
            tokio::time::timeout(Duration::from_secs(5), async {
                while socket.sent().is_empty() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
            .await
            .expect("the replay continues once there is room");
            got.extend(socket.change_ids());
        }
        let want: Vec<String> = (2..=50).map(|n| id(n).to_string()).collect();
        assert_eq!(got, want);
    }

    /// Sends a subscription command; the receiver gets its answer.
    fn command(
        hub: &Hub,
        socket: &TestSocket,
        payload: serde_json::Value,
        subscribe: bool,
    ) -> std::sync::mpsc::Receiver<Result<(), String>> {
        let (answer, answered) = std::sync::mpsc::channel();
        let reply = Box::new(move |result| {
            answer.send(result).ok();
        });
        hub.update_subscription(socket.sid(), Some(&payload), subscribe, reply);
        answered
    }

    fn subscribe(hub: &Hub, socket: &TestSocket, payload: serde_json::Value) -> Result<(), String> {
        command(hub, socket, payload, true)
            .try_recv()
            .expect("an attached socket's command is answered at once")
    }

    #[test]
    fn commands_sent_before_the_socket_is_attached_apply_when_it_attaches() {
        // socketioxide sends CONNECT before its connect handler attaches
        // the socket, so a client's first `subscribe` can come first.
        let hub = hub();
        for (n, table) in [(1, "items"), (2, "orders"), (3, "items")] {
            hub.deliver(change(n, table, Some(1), 10), SOURCE).unwrap();
        }
        let socket = TestSocket::new(100);
        let items = command(&hub, &socket, json!({"table": "public.items"}), true);
        let orders = command(&hub, &socket, json!({"table": "public.orders"}), true);
        let unsubscribed = command(&hub, &socket, json!({"table": "public.orders"}), false);
        let refused = command(&hub, &socket, json!({"table": "orders"}), true);
        assert!(
            items.try_recv().is_err() && orders.try_recv().is_err(),
            "the commands wait for the socket"
        );
        assert!(
            refused.try_recv().unwrap().is_err(),
            "an invalid command is refused at once"
        );

        hub.attach(Arc::new(socket.clone()), StartAt::Since(id(1)));
        assert_eq!(items.try_recv(), Ok(Ok(())));
        assert_eq!(orders.try_recv(), Ok(Ok(())));
        assert_eq!(unsubscribed.try_recv(), Ok(Ok(())));
        hub.deliver(change(4, "orders", Some(2), 10), SOURCE)
            .unwrap();
        hub.deliver(change(5, "items", Some(3), 10), SOURCE)
            .unwrap();
        assert_eq!(
            socket.change_ids(),
            vec![id(3).to_string(), id(5).to_string()],
            "the replay and the live stream saw the subscriptions, in order"
        );
    }

    #[test]
    fn early_commands_are_bounded_and_forgotten_with_their_socket() {
        let hub = hub();
        let socket = TestSocket::new(100);
        let waiting: Vec<_> = (0..MAX_EARLY_COMMANDS)
            .map(|n| {
                command(
                    &hub,
                    &socket,
                    json!({"table": format!("public.t{n}")}),
                    true,
                )
            })
            .collect();
        let over = command(&hub, &socket, json!({"table": "public.over"}), true);
        let error = over.try_recv().unwrap().unwrap_err();
        assert!(error.contains("retry"), "{error}");
        assert!(waiting.iter().all(|w| w.try_recv().is_err()));

        hub.detach(socket.sid());
        assert!(
            waiting
                .iter()
                .all(|w| w.try_recv() == Err(std::sync::mpsc::TryRecvError::Disconnected)),
            "a socket that goes away before it attaches leaves no command behind"
        );
        hub.attach(Arc::new(socket.clone()), StartAt::Live);
        hub.deliver(change(1, "orders", Some(1), 10), SOURCE)
            .unwrap();
        assert_eq!(socket.change_ids(), vec![id(1).to_string()]);

        // A socket that never attaches (socketioxide could not send its
        // CONNECT and dropped it without a disconnect) is forgotten once
        // another socket's early command finds it old.
        let never = TestSocket::new(100);
        let stale = command(&hub, &never, json!({"table": "public.orders"}), true);
        for commands in hub.lock().early.values_mut() {
            for c in commands {
                c.received -= EARLY_COMMANDS_KEPT;
            }
        }
        let fresh = TestSocket::new(100);
        let _waiting = command(&hub, &fresh, json!({"table": "public.orders"}), true);
        assert_eq!(
            stale.try_recv(),
            Err(std::sync::mpsc::TryRecvError::Disconnected)
        );
        assert!(!hub.lock().early.contains_key(&never.sid()));
        assert!(hub.lock().early.contains_key(&fresh.sid()));
    }

    #[test]
    fn a_truncate_reaches_sockets_subscribed_to_a_row_of_its_table() {
        let hub = hub();
        let row = attach(&hub, 100, StartAt::Live);
        let other_table = attach(&hub, 100, StartAt::Live);
        subscribe(
            &hub,
            &row,
            json!({"table": "public.orders", "key": {"id": 7}}),
        )
        .unwrap();
        subscribe(
            &hub,
            &other_table,
            json!({"table": "public.items", "key": {"id": 7}}),
        )
        .unwrap();
        hub.deliver(change(1, "orders", Some(8), 10), SOURCE)
            .unwrap();
        hub.deliver(change(2, "orders", None, 11), SOURCE).unwrap();
        assert_eq!(row.change_ids(), vec![id(2).to_string()]);
        assert!(other_table.change_ids().is_empty());

        // The replay to a row subscriber includes it too... once the socket
        // subscribes, which it can only do after attaching: a later socket
        // replays everything, then narrows; the truncate matched anyway.
        let late = attach(&hub, 100, StartAt::Since(id(1)));
        assert_eq!(late.change_ids(), vec![id(2).to_string()]);
    }

    #[test]
    fn a_projection_shapes_the_changes_of_its_table_only() {
        let hub = hub();
        hub.deliver(change(1, "orders", Some(1), 10), SOURCE)
            .unwrap();
        let slim = attach(&hub, 100, StartAt::Live);
        let whole = attach(&hub, 100, StartAt::Live);
        subscribe(
            &hub,
            &slim,
            json!({"table": "public.orders", "fields": [], "old": false}),
        )
        .unwrap();
        subscribe(&hub, &slim, json!({"table": "public.items"})).unwrap();
        hub.deliver(change(2, "orders", Some(2), 10), SOURCE)
            .unwrap();
        hub.deliver(change(3, "items", Some(3), 10), SOURCE)
            .unwrap();
        // Each socket went live with its `ready`.
        assert!(matches!(slim.sent()[0], Sent::Ready(_)));
        assert!(matches!(whole.sent()[0], Sent::Ready(_)));
        let got: Vec<Value> = slim.sent()[1..]
            .iter()
            .map(|s| match s {
                Sent::Change(raw) => serde_json::from_str(raw).unwrap(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(got[0]["new"], json!({"id": 2}), "key columns only");
        assert_eq!(got[0]["old"], Value::Null);
        assert_eq!(got[1]["new"]["note"], "x".repeat(16), "items: whole");
        let raw = |n: u64, table: &str| change(n, table, Some(n as i64), 10).raw().to_owned();
        assert_eq!(
            whole.sent()[1..],
            [
                Sent::Change(raw(2, "orders")),
                Sent::Change(raw(3, "items"))
            ]
        );

        // A refused subscribe changes no projection either.
        let err = subscribe(
            &hub,
            &slim,
            json!({"table": "public.orders", "fields": "note"}),
        )
        .unwrap_err();
        assert!(err.contains("fields must be an array"), "{err}");
        hub.deliver(change(4, "orders", Some(4), 10), SOURCE)
            .unwrap();
        assert!(
            matches!(slim.sent().last(), Some(Sent::Change(raw)) if raw.contains(r#""new":{"id":4}"#))
        );
    }

    #[tokio::test]
    async fn a_replay_under_way_takes_a_projection_set_meanwhile() {
        let hub = hub();
        for n in 1..=5 {
            hub.deliver(change(n, "orders", Some(n as i64), 10), SOURCE)
                .unwrap();
        }
        // Room for one packet: the replay goes on in a task.
        let socket = attach(&hub, 1, StartAt::Since(id(1)));
        subscribe(
            &hub,
            &socket,
            json!({"table": "public.orders", "fields": ["id"]}),
        )
        .unwrap();
        let mut got = Vec::new();
        while got.len() < 4 {
            got.extend(socket.drain(1));
            tokio::time::timeout(Duration::from_secs(5), async {
                while socket.sent().is_empty() && got.len() < 4 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
            .await
            .expect("the replay continues once there is room");
        }
        let news: Vec<Value> = got
            .iter()
            .map(|s| match s {
                Sent::Change(raw) => serde_json::from_str::<Value>(raw).unwrap()["new"].clone(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(news[0]["note"], "x".repeat(16), "sent before the subscribe");
        for (n, new) in news.iter().enumerate().skip(1) {
            assert_eq!(*new, json!({"id": n + 2}));
        }
    }

    #[test]
    fn a_late_change_the_snapshot_sees_is_not_sent_to_a_snapshot_client() {
        let hub = hub();
        // History start: the consumer's snapshot had xmax 100.
        let generation = hub.history_start_needed().unwrap();
        assert!(hub.offer_history_start(&"100:100:".parse().unwrap(), generation));
        // The client's listing saw every transaction below 105.
        let client = attach(&hub, 100, StartAt::Snapshot("105:105:".parse().unwrap()));
        // Invisible to the snapshot: sent.
        hub.deliver(change(10, "orders", Some(1), 106), SOURCE)
            .unwrap();
        // A republish after a nack, overtaken by change 10: its transaction
        // (xid 104) is in the listing already, so it must not be sent.
        hub.deliver(change(5, "orders", Some(2), 104), SOURCE)
            .unwrap();
        // A late one the snapshot does not see is sent.
        hub.deliver(change(6, "orders", Some(3), 107), SOURCE)
            .unwrap();
        assert_eq!(
            client.change_ids(),
            vec![id(10).to_string(), id(6).to_string()]
        );
    }

    fn budget_hub(socket_buffer_bytes: usize) -> Hub {
        hub_with(HubOptions {
            replay_buffer: 1000,
            socket_buffer_bytes,
            ..HubOptions::default()
        })
    }

    #[tokio::test]
    async fn a_live_socket_past_its_byte_budget_is_disconnected() {
        let size = change(1, "orders", Some(1), 10).raw().len();
        let hub = budget_hub(size * 10);
        // Room for 1000 packets: only the bytes tell that it does not read.
        let stuck = attach(&hub, 1000, StartAt::Live);
        for n in 1..=11 {
            hub.deliver(change(n, "orders", Some(1), 10), SOURCE)
                .unwrap();
        }
        assert_eq!(stuck.change_ids().len(), 10);
        let (reason, count) = hub.stats().disconnects()[1];
        assert_eq!((reason, count), (DisconnectReason::QueueBytes, 1));
        assert_eq!(hub.stats().snapshot().slow_disconnects, 1);
        assert_eq!(hub.stats().snapshot().connected_sockets, 0);
        assert_eq!(stuck.sent().last(), Some(&Sent::Disconnect));
    }

    #[tokio::test]
    async fn a_reader_within_its_window_is_not_cut() {
        let size = change(1, "orders", Some(1), 10).raw().len();
        let hub = hub_with(HubOptions {
            replay_buffer: 1000,
            socket_buffer: 16,
            socket_buffer_bytes: size * 32,
            ..HubOptions::default()
        });
        let reader = attach(&hub, 16, StartAt::Live);
        for n in 1..=200 {
            hub.deliver(change(n, "orders", Some(1), 10), SOURCE)
                .unwrap();
            reader.drain(16);
        }
        assert_eq!(hub.stats().snapshot().connected_sockets, 1);
    }

    #[tokio::test]
    async fn a_replay_past_the_byte_budget_is_cut_at_the_budget() {
        let size = change(1, "orders", Some(1), 10).raw().len();
        let hub = budget_hub(size * 10);
        for n in 1..=100 {
            hub.deliver(change(n, "orders", Some(1), 10), SOURCE)
                .unwrap();
        }
        let socket = attach(&hub, 1000, StartAt::Since(id(1)));
        let got = socket.change_ids();
        assert_eq!(got.len(), 10);
        assert_eq!(got[0], id(2).to_string());
        assert_eq!(socket.sent().last(), Some(&Sent::Disconnect));
        assert_eq!(hub.stats().disconnects()[1].1, 1);
        // Reconnecting with the last id it got, it continues.
        let again = attach(&hub, 1000, StartAt::Since(id(11)));
        assert_eq!(again.change_ids()[0], id(12).to_string());
    }

    #[test]
    fn subscription_caps_answer_an_error_and_change_nothing() {
        let hub = hub_with(HubOptions {
            subscription_limits: Limits {
                subscriptions: 2,
                key_bytes: 32,
                total_bytes: 1024,
            },
            ..HubOptions::default()
        });
        let socket = attach(&hub, 100, StartAt::Live);
        let err = subscribe(
            &hub,
            &socket,
            json!({"table": "public.orders", "key": {"id": "x".repeat(64)}}),
        )
        .unwrap_err();
        assert!(err.contains("max_key_bytes"), "{err}");
        // Still in "everything" mode: the refused subscribe changed nothing.
        hub.deliver(change(1, "items", Some(1), 10), SOURCE)
            .unwrap();
        assert_eq!(socket.change_ids().len(), 1);
        subscribe(&hub, &socket, json!({"table": "public.a"})).unwrap();
        subscribe(&hub, &socket, json!({"table": "public.b"})).unwrap();
        let err = subscribe(&hub, &socket, json!({"table": "public.c"})).unwrap_err();
        assert!(err.contains("max_subscriptions"), "{err}");
    }

    #[tokio::test]
    async fn a_socket_is_disconnected_when_its_token_expires_and_no_timer_outlives_it() {
        let metrics = tokio::runtime::Handle::current().metrics();
        let hub = hub();
        let tasks_before = metrics.num_alive_tasks();

        // Expires in 50 ms: disconnected, counted.
        let socket = TestSocket::new(100);
        hub.admitted_until(socket.sid(), SystemTime::now() + Duration::from_millis(50));
        hub.attach(Arc::new(socket.clone()), StartAt::Live);
        assert_eq!(metrics.num_alive_tasks(), tasks_before + 1);
        tokio::time::timeout(Duration::from_secs(5), async {
            while socket.sent().last() != Some(&Sent::Disconnect) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the socket is disconnected when its token expires");
        assert_eq!(
            hub.stats().disconnects()[3],
            (DisconnectReason::TokenExpired, 1)
        );
        assert_eq!(hub.stats().snapshot().connected_sockets, 0);

        // Valid for an hour but gone at once: its timer ends with it.
        let mut sockets = Vec::new();
        for _ in 0..100 {
            let socket = TestSocket::new(100);
            hub.admitted_until(socket.sid(), SystemTime::now() + Duration::from_secs(3600));
            hub.attach(Arc::new(socket.clone()), StartAt::Live);
            sockets.push(socket);
        }
        assert!(metrics.num_alive_tasks() >= tasks_before + 100);
        for socket in &sockets {
            hub.detach(socket.sid());
        }
        tokio::time::timeout(Duration::from_secs(5), async {
            while metrics.num_alive_tasks() > tasks_before {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("every expiry timer ends when its socket is detached");
    }

    fn plain_change(n: u64) -> Change {
        let body = format!(
            r#"{{"id":"{}","op":"insert","schema":"public","table":"t","key":{{"id":{n}}},"xid":{n}}}"#,
            id(n)
        );
        Change::parse(body.into_bytes()).unwrap()
    }

    /// The writer is stuck (a slow disk, a long fsync): deliveries and
    /// everything else that takes the hub's lock go on; only the ack waits.
    #[tokio::test]
    async fn the_hub_lock_is_not_held_while_the_replay_log_writes() {
        let dir = tempfile::tempdir().unwrap();
        let hub = Hub::open(
            HubOptions {
                replay_dir: Some(dir.path().to_path_buf()),
                replay_buffer: 4,
                ..HubOptions::default()
            },
            CancellationToken::new(),
        )
        .unwrap();
        hub.deliver(plain_change(1), "1/db/slot").unwrap();
        hub.wait_logged().await.unwrap();

        let (resume, paused) = std::sync::mpsc::channel::<()>();
        hub.lock().log.as_mut().unwrap().send(Op::Pause(paused));
        // 20 changes: several compactions' worth for a buffer of 4.
        for n in 2..=21 {
            assert_eq!(
                hub.deliver(plain_change(n), "1/db/slot").unwrap(),
                Delivered::Fanned { sockets: 0 }
            );
        }
        assert_eq!(hub.latest_id(), Some(id(21)));
        assert!(hub.history_start_needed().is_some());
        {
            let logged = hub.wait_logged();
            tokio::pin!(logged);
            assert!(
                tokio::time::timeout(Duration::from_millis(50), &mut logged)
                    .await
                    .is_err(),
                "the ack must wait for the writer"
            );
            drop(resume);
            logged.await.unwrap();
        }
        let len = hub.replay_log_len().unwrap();
        drop(hub); // joins the writer, which closes the log

        // Everything reached the file, compacted.
        let bytes = std::fs::read(dir.path().join(super::super::LOG_FILE)).unwrap();
        assert!(
            len > 0 && len < bytes.len() as u64,
            "plus the closed record"
        );
        let (loaded, report) = super::super::replay_log::load(&bytes, 4, None);
        assert_eq!(report.dropped_bytes, 0);
        assert_eq!(loaded.latest_id(), Some(id(21)));
        assert_eq!(loaded.len(), 4);
        assert_eq!(loaded.source(), Some("1/db/slot"));
    }

    #[test]
    fn a_since_cursor_blocks_in_order_redeliveries_but_not_late_changes() {
        // No cursor: nothing is blocked.
        assert!(!blocked_by_floor(None, id(5), false));
        // In order at or below the cursor: the client has it.
        assert!(blocked_by_floor(Some(id(10)), id(10), false));
        assert!(blocked_by_floor(Some(id(10)), id(5), false));
        assert!(!blocked_by_floor(Some(id(10)), id(11), false));
        // Late (overtaken by a newer change): never delivered here, so sent.
        assert!(!blocked_by_floor(Some(id(10)), id(5), true));
    }
}
