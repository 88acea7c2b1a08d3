//! Attaching a socket to the [`Hub`]: the resync-or-replay decision under
//! the delivery lock, the catch-up that replays held changes batch by
//! batch until the socket goes live (and says so with `ready`), and
//! `subscribe`/`unsubscribe`.
//!
//! It does not deliver live changes (`Hub::deliver`) and does not
//! disconnect sockets itself (`disconnect`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use socketioxide::socket::Sid;
use tracing::debug;

use super::packets::Packets;
use super::{passes_snapshot, send_resync, Client, Hub, Phase, State, Step, CATCH_UP_BATCH};
use crate::event::EventId;
use crate::fanout::budget::SendBudget;
use crate::fanout::emit::{Emit, EmitError};
use crate::fanout::handshake::StartAt;
use crate::fanout::replay::{ReplayBuffer, ResyncReason};
use crate::fanout::stats::DisconnectReason;
use crate::fanout::subscription::{parse_command, Command, Index, Limits, Subscriptions};

/// What a `subscribe`/`unsubscribe` answers: called once with its outcome.
pub type Reply = Box<dyn FnOnce(Result<(), String>) + Send>;

/// Commands a socket may send before it is attached (see
/// [`Hub::update_subscription`]).
pub const MAX_EARLY_COMMANDS: usize = 64;

/// How long commands wait for a socket that never attaches. socketioxide
/// removes a socket whose CONNECT could not be sent without calling its
/// disconnect handler, so nothing else would forget them; a socket that
/// is sent CONNECT attaches within moments.
pub(super) const EARLY_COMMANDS_KEPT: Duration = Duration::from_secs(60);

/// A command that came before its socket was attached.
pub(super) struct EarlyCommand {
    command: Command,
    subscribe: bool,
    reply: Reply,
    pub(super) received: Instant,
}

/// Applies one command to an attached socket.
fn apply(
    index: &mut Index,
    sid: Sid,
    client: &mut Client,
    command: Command,
    subscribe: bool,
    limits: &Limits,
) -> Result<(), String> {
    if subscribe {
        index.subscribe(sid, &mut client.subs, command, limits)
    } else {
        index.unsubscribe(sid, &mut client.subs, &command.target);
        Ok(())
    }
}

impl State {
    /// Holds a command of a socket that is not attached yet, forgetting
    /// those of sockets that never attached; hands the reply back when the
    /// socket already has [`MAX_EARLY_COMMANDS`] waiting.
    fn hold(&mut self, sid: Sid, early: EarlyCommand) -> Result<(), Reply> {
        if !self.early.contains_key(&sid) {
            // Rare and small: the map is empty but for sockets that are
            // being set up right now.
            self.early.retain(|sid, commands| {
                let kept = commands
                    .first()
                    .is_some_and(|c| c.received.elapsed() < EARLY_COMMANDS_KEPT);
                if !kept {
                    debug!(%sid, commands = commands.len(), "forgetting the commands of a socket that never attached");
                }
                kept
            });
        }
        let waiting = self.early.entry(sid).or_default();
        if waiting.len() >= MAX_EARLY_COMMANDS {
            return Err(early.reply);
        }
        waiting.push(early);
        Ok(())
    }
}

impl Hub {
    /// Attaches a socket that passed the handshake: sends a `resync` if its
    /// cursor or snapshot is older than what is held, starts its replay if
    /// there is one, and from then on it receives live changes.
    ///
    /// The decision (replay from where, or resync) and the registration
    /// happen under the delivery lock. A replay that fits is finished by the
    /// first catch-up batch; a longer one continues in a task, batch by
    /// batch, each under the lock; live delivery skips the socket until the
    /// batch that reaches the newest held change flips it to live, still
    /// under the lock. Changes evicted before the replay reached them turn
    /// into a `resync` ("replay_overrun").
    ///
    /// Every socket goes live through a catch-up step, also one with no
    /// replay (it starts at the newest held change): the step that finds
    /// nothing more to send queues `ready` and flips it to live under the
    /// lock, so `ready` follows every replayed change and precedes every
    /// live one (contract section 3), once per connection, after a
    /// `resync` if there was one.
    pub(crate) fn attach(&self, socket: Arc<dyn Emit>, start: StartAt) {
        let sid = socket.sid();
        let stats = &self.inner.stats;
        let options = &self.inner.options;
        let mut replies = Vec::new();
        {
            let mut guard = self.lock();
            let state = &mut *guard;
            let expiry = state
                .admitted_until
                .remove(&sid)
                .map(|until| self.expire_at(sid, until));
            let mut client = Client {
                socket: socket.clone(),
                subs: Subscriptions::default(),
                phase: Phase::CatchingUp {
                    cursor: live_from(&state.buffer),
                },
                snapshot: None,
                snapshot_passed_at: None,
                floor: None,
                budget: SendBudget::default(),
                _expiry: expiry,
            };
            match start {
                StartAt::Live => {}
                StartAt::Since(since) => match state.buffer.check_since(since) {
                    Ok(()) => {
                        client.phase = Phase::CatchingUp {
                            cursor: Some(since),
                        };
                        client.floor = Some(since);
                    }
                    Err(reason) => send_resync(&*socket, reason, state.buffer.latest_id(), stats),
                },
                StartAt::Snapshot(snapshot) => match state.buffer.check_snapshot(&snapshot) {
                    Ok(cursor) => {
                        client.phase = Phase::CatchingUp { cursor };
                        client.snapshot = Some(snapshot);
                    }
                    Err(reason) => send_resync(&*socket, reason, state.buffer.latest_id(), stats),
                },
            }
            state.index.add_socket(sid);
            let client = state.clients.entry(sid).insert_entry(client).into_mut();
            let limits = &options.subscription_limits;
            for early in state.early.remove(&sid).unwrap_or_default() {
                let result = apply(
                    &mut state.index,
                    sid,
                    client,
                    early.command,
                    early.subscribe,
                    limits,
                );
                replies.push((early.reply, result));
            }
            stats.set_connected_sockets(state.clients.len());
        }
        for (reply, result) in replies {
            reply(result);
        }
        debug!(%sid, "socket attached");
        match self.catch_up_step(sid) {
            Step::Done | Step::Gone => {}
            Step::Cut(socket, reason) => self.disconnect_slow(socket, reason, "replay"),
            Step::Yield | Step::Full { .. } => {
                let hub = self.clone();
                self.tasks().spawn(async move { hub.catch_up(sid).await });
            }
        }
        // The socket may have closed before it was registered, in which case
        // its disconnect handler found nothing to remove.
        if !socket.connected() {
            self.detach(sid);
        }
    }

    /// Applies a `subscribe` (`subscribe == true`) or `unsubscribe` payload
    /// and calls `reply` with the outcome, outside the lock.
    ///
    /// A command for a socket that is not attached yet waits for
    /// [`Hub::attach`], which applies it before the socket's first
    /// delivery. That happens: socketioxide queues the CONNECT packet in a
    /// task of its own and runs the connect handler (which attaches) right
    /// after, so a client that subscribes as soon as it sees `connect` can
    /// be read on another thread in between. At most
    /// [`MAX_EARLY_COMMANDS`] wait per socket; more are refused. Commands
    /// of a socket that has not attached after [`EARLY_COMMANDS_KEPT`] are
    /// forgotten.
    pub fn update_subscription(
        &self,
        sid: Sid,
        payload: Option<&serde_json::Value>,
        subscribe: bool,
        reply: Reply,
    ) {
        let limits = &self.inner.options.subscription_limits;
        let command = match parse_command(payload, limits.key_bytes) {
            Ok(command) => command,
            Err(error) => return reply(Err(error)),
        };
        let mut guard = self.lock();
        let state = &mut *guard;
        let Some(client) = state.clients.get_mut(&sid) else {
            let early = EarlyCommand {
                command,
                subscribe,
                reply,
                received: Instant::now(),
            };
            if let Err(reply) = state.hold(sid, early) {
                drop(guard);
                reply(Err(format!(
                    "more than {MAX_EARLY_COMMANDS} commands before the connection was set up; retry"
                )));
            }
            return;
        };
        let result = apply(&mut state.index, sid, client, command, subscribe, limits);
        drop(guard);
        reply(result)
    }

    pub(super) async fn catch_up(&self, sid: Sid) {
        let stall_timeout = self.inner.options.replay_stall_timeout;
        let mut last_progress = Instant::now();
        let mut delay = Duration::from_millis(1);
        loop {
            match self.catch_up_step(sid) {
                Step::Done | Step::Gone => return,
                Step::Cut(socket, reason) => {
                    self.disconnect_slow(socket, reason, "replay");
                    return;
                }
                Step::Yield => {
                    last_progress = Instant::now();
                    delay = Duration::from_millis(1);
                    tokio::task::yield_now().await;
                    continue;
                }
                Step::Full { progressed } => {
                    if progressed {
                        last_progress = Instant::now();
                        delay = Duration::from_millis(1);
                    } else if last_progress.elapsed() >= stall_timeout {
                        let socket = self.lock().detach(sid, &self.inner.stats);
                        if let Some(socket) = socket {
                            self.disconnect_slow(socket, DisconnectReason::ReplayStall, "replay");
                        }
                        return;
                    }
                }
            }
            // socketioxide has no way to wait for room in a socket's queue;
            // poll with a short backoff while the socket drains it.
            tokio::select! {
                biased;
                _ = self.inner.shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_millis(50));
        }
    }

    /// One batch of a replay, under the lock.
    pub(super) fn catch_up_step(&self, sid: Sid) -> Step {
        let stats = &self.inner.stats;
        let mut guard = self.lock();
        let state = &mut *guard;
        let Some(client) = state.clients.get_mut(&sid) else {
            return Step::Gone;
        };
        let Phase::CatchingUp { mut cursor } = client.phase else {
            return Step::Done;
        };
        if state.buffer.evicted_after(cursor) {
            client.snapshot = None;
            send_resync(
                &*client.socket,
                ResyncReason::ReplayOverrun,
                state.buffer.latest_id(),
                stats,
            );
            cursor = live_from(&state.buffer);
        }
        let start = cursor;
        let limits = &self.inner.budget;
        let now = limits.now();
        let mut emitted = 0u64;
        let mut outcome = Step::Done;
        let mut over_budget = false;
        let mut packets = Packets::default();
        for (examined, change) in state.buffer.after(cursor).enumerate() {
            if examined == CATCH_UP_BATCH {
                outcome = Step::Yield;
                break;
            }
            let wanted = Index::matches(&client.subs, &change.table, change.row.as_ref())
                && passes_snapshot(client, change.id, change.xid, false);
            if wanted {
                packets.clear();
                let packet = packets.get(change, client.subs.projection(&change.table));
                let size = packet.payload_len();
                // The estimate falls only with time (see `budget`): a
                // replay past the budget is not waited out but cut, and the
                // client resumes with `since` from what it got.
                if !client.budget.fits(limits, size, now) {
                    over_budget = true;
                    break;
                }
                match client.socket.emit_change(packet) {
                    Ok(()) => {
                        client.budget.record(limits, size, now);
                        emitted += 1;
                    }
                    Err(EmitError::Full) => {
                        outcome = Step::Full {
                            progressed: cursor != start,
                        };
                        break;
                    }
                    Err(EmitError::Closed) => {
                        outcome = Step::Gone;
                        break;
                    }
                }
            }
            cursor = Some(change.id);
        }
        stats.record_emitted(emitted);
        if over_budget {
            return match state.detach(sid, stats) {
                Some(socket) => Step::Cut(socket, DisconnectReason::QueueBytes),
                None => Step::Gone,
            };
        }
        if let Step::Done = outcome {
            // Caught up: `ready`, then live. No room for it yet: wait, as
            // for a change.
            let ready = json!({ "latest_id": state.buffer.latest_id().map(|id| id.to_string()) });
            outcome = match client.socket.emit_ready(&ready) {
                Ok(()) => Step::Done,
                Err(EmitError::Full) => Step::Full {
                    progressed: cursor != start,
                },
                Err(EmitError::Closed) => Step::Gone,
            };
        }
        match outcome {
            Step::Done => client.phase = Phase::Live,
            Step::Gone => {
                state.detach(sid, stats);
            }
            Step::Yield | Step::Full { .. } => client.phase = Phase::CatchingUp { cursor },
            Step::Cut(..) => unreachable!("set only above"),
        }
        outcome
    }
}

/// Where a socket that wants nothing held starts its catch-up: past every
/// change held or evicted, so its only step finds nothing to replay.
pub(super) fn live_from(buffer: &ReplayBuffer) -> Option<EventId> {
    buffer.latest_id().max(buffer.horizons().max_evicted)
}
