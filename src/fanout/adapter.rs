//! walcast's socketioxide adapter: how a `change` packet encoded once
//! reaches each socket, with that socket's own answer.
//!
//! socketioxide offers two ways to send an event. `SocketRef::emit`
//! serializes the payload again for every socket (`["change",…]`, then the
//! `42…` packet), and its broadcast (`io.to(…).emit`) encodes once but only
//! says how many sockets failed, not which: the hub must know which socket
//! is full, to disconnect and count it rather than leave a gap. An adapter
//! is socketioxide's own extension point for this: [`FanoutAdapter`] is
//! its in-memory adapter ([`CoreLocalAdapter`], which everything else
//! still goes through) plus [`FanoutAdapter::send`], which hands a
//! prebuilt [`Packet`] to one socket and returns that socket's result.
//! The packet's payload is shared (a reference-counted `Str`): per socket
//! socketioxide only prefixes the packet type (`2`, one allocation and copy
//! of the bytes) and queues it; engineioxide then prefixes the Engine.IO
//! type (`4`) and frames it for the WebSocket. Those two copies are inside
//! socketioxide and engineioxide (see `docs/fanout-upstream.md`).
//!
//! It holds no state of its own besides a handle the layer reads to reach
//! it ([`AdapterSlot`]); it does not decide who gets what (the hub does).

use std::convert::Infallible;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use socketioxide::adapter::Emitter;
use socketioxide::socket::Sid;
use socketioxide_core::adapter::errors::SocketError;
use socketioxide_core::adapter::{
    BroadcastOptions, CoreAdapter, CoreLocalAdapter, DefinedAdapter, SocketEmitter,
};
use socketioxide_core::packet::Packet;

/// Where the adapter of namespace `/` is found once socketioxide made it
/// (it creates adapters itself, from this state).
pub(crate) type AdapterSlot = Arc<OnceLock<Weak<FanoutAdapter>>>;

/// socketioxide's in-memory adapter plus a send to one socket.
pub struct FanoutAdapter {
    local: CoreLocalAdapter<Emitter>,
    slot: AdapterSlot,
}

impl FanoutAdapter {
    /// Queues `packet` for socket `sid`: `Err(InternalChannelFull)` when
    /// its queue has no room, `Err(Closed)` when it is closing. A socket
    /// that already left the namespace takes nothing and answers `Ok`; the
    /// caller checks `connected` first.
    pub(crate) fn send(&self, sid: Sid, packet: &Packet) -> Result<(), SocketError> {
        // With a socket id and neither rooms nor flags, the local adapter
        // targets exactly that socket. Cloning the packet clones two
        // reference-counted strings.
        self.local
            .broadcast(packet.clone(), BroadcastOptions::new(sid))
            .map_err(|errors| {
                errors
                    .into_iter()
                    .next()
                    .unwrap_or(SocketError::InternalChannelFull)
            })
    }
}

impl CoreAdapter<Emitter> for FanoutAdapter {
    type Error = Infallible;
    type State = AdapterSlot;
    type AckStream = <Emitter as SocketEmitter>::AckStream;
    type InitRes = ();

    fn new(slot: &AdapterSlot, local: CoreLocalAdapter<Emitter>) -> Self {
        FanoutAdapter {
            local,
            slot: slot.clone(),
        }
    }

    fn init(self: Arc<Self>, on_success: impl FnOnce() + Send + 'static) {
        // Only namespace `/` exists; a weak handle, so the slot (held by
        // the adapter itself) makes no cycle.
        self.slot.set(Arc::downgrade(&self)).ok();
        on_success();
    }

    async fn broadcast_with_ack(
        &self,
        packet: Packet,
        opts: BroadcastOptions,
        timeout: Option<Duration>,
    ) -> Result<Self::AckStream, Infallible> {
        Ok(self.local.broadcast_with_ack(packet, opts, timeout).0)
    }

    fn get_local(&self) -> &CoreLocalAdapter<Emitter> {
        &self.local
    }
}

impl DefinedAdapter for FanoutAdapter {}
