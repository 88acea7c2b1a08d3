//! How the hub reaches a socket: the [`Emit`] trait, and the `change`
//! packet encoded once ([`ChangePacket`]).
//!
//! The hub never calls socketioxide directly. It emits `change`,
//! `resync` and `ready` packets and disconnects slow sockets through [`Emit`], which
//! [`SioSocket`] (a socketioxide socket and walcast's adapter) implements
//! for production and a recording double implements in tests, so
//! `deliver`, `attach` and catch-up are unit tested without sockets (as
//! `replay` is). Every method is non-blocking: a socket whose queue has no
//! room answers [`EmitError::Full`] and the hub decides what that means
//! (disconnect the socket, or wait during a replay).
//!
//! A [`ChangePacket`] is built once per event and projection and sent as
//! is to every socket it is for: the payload is serialized once, and each
//! socket gets a reference-counted copy of the same bytes (see `adapter`).
//!
//! It does not decide who receives what (the hub and `subscription` do) and
//! does not count bytes (`budget` does).

use std::sync::Arc;

use serde_json::Value;
use socketioxide::extract::SocketRef;
use socketioxide::socket::Sid;
use socketioxide::{SendError, SocketError};
use socketioxide_core::adapter::errors::SocketError as CoreSocketError;
use socketioxide_core::packet::Packet;
use socketioxide_core::{Str, Value as SioValue};
use tracing::error;

use super::adapter::FanoutAdapter;

/// Why a packet did not reach a socket's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EmitError {
    /// The socket's queue is full: the client is not reading fast enough.
    Full,
    /// The socket is gone.
    Closed,
}

/// The text before a `change` payload in its Socket.IO event array.
const CHANGE_PREFIX: &str = "[\"change\",";

/// One `change` event, encoded once as a Socket.IO packet of namespace `/`
/// (`["change",<payload>]`) for every socket that gets it.
#[derive(Debug, Clone)]
pub(crate) struct ChangePacket {
    packet: Packet,
    /// The event array's text, which the packet shares.
    data: Str,
}

impl ChangePacket {
    /// A packet whose payload is `payload` (a change event's JSON), byte
    /// for byte.
    pub(crate) fn new(payload: &str) -> ChangePacket {
        let mut data = String::with_capacity(CHANGE_PREFIX.len() + payload.len() + 1);
        data.push_str(CHANGE_PREFIX);
        data.push_str(payload);
        data.push(']');
        let data = Str::from(data);
        ChangePacket {
            packet: Packet::event(Str::from("/"), SioValue::Str(data.clone(), None)),
            data,
        }
    }

    /// The payload, as the client receives it.
    #[cfg(test)]
    pub(crate) fn payload(&self) -> &str {
        &self.data[CHANGE_PREFIX.len()..self.data.len() - 1]
    }

    /// Bytes of the payload, what a socket's byte budget counts.
    pub(crate) fn payload_len(&self) -> usize {
        self.data.len() - CHANGE_PREFIX.len() - 1
    }
}

/// A socket as the hub sees it.
pub(crate) trait Emit: Send + Sync + 'static {
    fn sid(&self) -> Sid;
    /// Queues a `change` packet.
    fn emit_change(&self, packet: &ChangePacket) -> Result<(), EmitError>;
    /// Queues a `resync` packet.
    fn emit_resync(&self, payload: &Value) -> Result<(), EmitError>;
    /// Queues the `ready` packet (the socket has caught up).
    fn emit_ready(&self, payload: &Value) -> Result<(), EmitError>;
    /// Queues a Socket.IO disconnect and closes the socket's namespace
    /// session; `Full` when the disconnect packet finds no room (retry).
    fn disconnect(&self) -> Result<(), EmitError>;
    fn connected(&self) -> bool;
}

/// A connected socket and the adapter that sends to it.
pub(crate) struct SioSocket {
    pub(crate) socket: SocketRef<FanoutAdapter>,
    pub(crate) adapter: Arc<FanoutAdapter>,
}

impl Emit for SioSocket {
    fn sid(&self) -> Sid {
        self.socket.id
    }

    fn emit_change(&self, packet: &ChangePacket) -> Result<(), EmitError> {
        if !self.connected() {
            return Err(EmitError::Closed);
        }
        match self.adapter.send(self.socket.id, &packet.packet) {
            Ok(()) => Ok(()),
            Err(CoreSocketError::InternalChannelFull) => Err(EmitError::Full),
            Err(CoreSocketError::Closed) => Err(EmitError::Closed),
        }
    }

    fn emit_resync(&self, payload: &Value) -> Result<(), EmitError> {
        self.socket.emit("resync", payload).map_err(send_error)
    }

    fn emit_ready(&self, payload: &Value) -> Result<(), EmitError> {
        self.socket.emit("ready", payload).map_err(send_error)
    }

    fn disconnect(&self) -> Result<(), EmitError> {
        match self.socket.clone().disconnect() {
            Ok(()) | Err(SocketError::Closed) => Ok(()),
            Err(SocketError::InternalChannelFull) => Err(EmitError::Full),
        }
    }

    fn connected(&self) -> bool {
        // The inherent method, on the socket behind the reference.
        socketioxide::socket::Socket::connected(&self.socket)
    }
}

fn send_error(e: SendError) -> EmitError {
    match e {
        SendError::Socket(SocketError::InternalChannelFull) => EmitError::Full,
        SendError::Socket(SocketError::Closed) => EmitError::Closed,
        SendError::Serialize(e) => {
            // Cannot happen for a JSON value; never let it pass silently.
            error!(error = %e, "cannot encode a packet for socket.io; closing the socket");
            EmitError::Closed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_packet_carries_the_payload_byte_for_byte() {
        let payload = r#"{"id":"x","new":{"a":"é\"}"}"#;
        let packet = ChangePacket::new(payload);
        assert_eq!(packet.payload(), payload);
        assert_eq!(packet.payload_len(), payload.len());
        assert!(matches!(
            &packet.packet.inner,
            socketioxide_core::packet::PacketData::Event(SioValue::Str(data, None), None)
                if data.as_str() == format!("[\"change\",{payload}]")
        ));
    }
}

/// A socket double that records what it is sent, for unit tests.
#[cfg(test)]
pub(crate) mod test_socket {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// One packet a [`TestSocket`] queued.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub(crate) enum Sent {
        Change(String),
        Resync(Value),
        Ready(Value),
        Disconnect,
    }

    #[derive(Debug)]
    struct State {
        sent: Vec<Sent>,
        /// Packets the queue takes before it answers `Full`.
        room: usize,
        connected: bool,
    }

    /// A socket whose queue holds `room` packets until the test drains it.
    #[derive(Debug, Clone)]
    pub(crate) struct TestSocket {
        sid: Sid,
        state: Arc<Mutex<State>>,
    }

    impl TestSocket {
        pub(crate) fn new(room: usize) -> TestSocket {
            TestSocket {
                sid: Sid::new(),
                state: Arc::new(Mutex::new(State {
                    sent: Vec::new(),
                    room,
                    connected: true,
                })),
            }
        }

        /// Takes what was sent so far, and makes room for `room` more.
        pub(crate) fn drain(&self, room: usize) -> Vec<Sent> {
            let mut state = self.state.lock().unwrap();
            state.room = room;
            std::mem::take(&mut state.sent)
        }

        /// The ids of the `change` packets sent so far (without taking them).
        pub(crate) fn change_ids(&self) -> Vec<String> {
            let state = self.state.lock().unwrap();
            state
                .sent
                .iter()
                .filter_map(|sent| match sent {
                    Sent::Change(raw) => {
                        let v: Value = serde_json::from_str(raw).unwrap();
                        Some(v["id"].as_str().unwrap().to_owned())
                    }
                    _ => None,
                })
                .collect()
        }

        pub(crate) fn sent(&self) -> Vec<Sent> {
            self.state.lock().unwrap().sent.clone()
        }

        pub(crate) fn close(&self) {
            self.state.lock().unwrap().connected = false;
        }

        fn queue(&self, packet: Sent) -> Result<(), EmitError> {
            let mut state = self.state.lock().unwrap();
            if !state.connected {
                return Err(EmitError::Closed);
            }
            if state.room == 0 {
                return Err(EmitError::Full);
            }
            state.room -= 1;
            if packet == Sent::Disconnect {
                state.connected = false;
            }
            state.sent.push(packet);
            Ok(())
        }
    }

    impl Emit for TestSocket {
        fn sid(&self) -> Sid {
            self.sid
        }

        fn emit_change(&self, packet: &ChangePacket) -> Result<(), EmitError> {
            self.queue(Sent::Change(packet.payload().to_owned()))
        }

        fn emit_resync(&self, payload: &Value) -> Result<(), EmitError> {
            self.queue(Sent::Resync(payload.clone()))
        }

        fn emit_ready(&self, payload: &Value) -> Result<(), EmitError> {
            self.queue(Sent::Ready(payload.clone()))
        }

        fn disconnect(&self) -> Result<(), EmitError> {
            self.queue(Sent::Disconnect)
        }

        fn connected(&self) -> bool {
            self.state.lock().unwrap().connected
        }
    }
}
