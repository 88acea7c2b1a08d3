//! One live change offered to the sockets that may get it: the per-socket
//! step of [`Hub::deliver`](super::Hub::deliver).
//!
//! Which sockets are asked is the caller's choice (see `deliver`); each is
//! asked once. A socket takes the change unless it is still catching up to
//! it, its `since` cursor or snapshot already covers it, or its byte budget
//! or queue is full (then it is noted as slow, to be disconnected), or it
//! is closing (noted as gone). It decides nothing else and holds no lock.

use socketioxide::socket::Sid;

use super::packets::Packets;
use super::{blocked_by_floor, passes_snapshot, Client, Phase};
use crate::fanout::budget::{BudgetLimits, Tick};
use crate::fanout::change::Change;
use crate::fanout::emit::EmitError;
use crate::fanout::stats::DisconnectReason;

pub(super) struct Offer<'a> {
    change: &'a Change,
    /// The change came after newer ones (see `blocked_by_floor`).
    late: bool,
    limits: &'a BudgetLimits,
    now: Tick,
    packets: &'a mut Packets,
    /// Sockets the change was queued for.
    pub(super) emitted: u64,
    /// Sockets whose budget or queue had no room, and why.
    pub(super) slow: Vec<(Sid, DisconnectReason)>,
    /// Sockets that are closing.
    pub(super) gone: Vec<Sid>,
}

impl<'a> Offer<'a> {
    pub(super) fn new(
        change: &'a Change,
        late: bool,
        limits: &'a BudgetLimits,
        packets: &'a mut Packets,
    ) -> Offer<'a> {
        Offer {
            change,
            late,
            limits,
            now: limits.now(),
            packets,
            emitted: 0,
            slow: Vec::new(),
            gone: Vec::new(),
        }
    }

    /// Offers the change to one socket.
    pub(super) fn to(&mut self, sid: Sid, client: &mut Client) {
        let change = self.change;
        if let Phase::CatchingUp { cursor } = client.phase {
            if cursor.is_none_or(|c| change.id > c) {
                return; // the replay will reach it
            }
        }
        if blocked_by_floor(client.floor, change.id, self.late)
            || !passes_snapshot(client, change.id, change.xid, self.late)
        {
            return;
        }
        // Encoded once per projection, shared by every socket.
        let packet = self
            .packets
            .get(change, client.subs.projection(&change.table));
        let size = packet.payload_len();
        if !client.budget.fits(self.limits, size, self.now) {
            self.slow.push((sid, DisconnectReason::QueueBytes));
            return;
        }
        match client.socket.emit_change(packet) {
            Ok(()) => {
                client.budget.record(self.limits, size, self.now);
                self.emitted += 1;
            }
            Err(EmitError::Full) => self.slow.push((sid, DisconnectReason::QueueFull)),
            Err(EmitError::Closed) => self.gone.push(sid),
        }
    }
}
