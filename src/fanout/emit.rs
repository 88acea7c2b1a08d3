//! How the hub reaches a socket: the [`Emit`] trait.
//!
//! The hub never calls socketioxide directly. It emits `change`, `resync`
//! and `ready` packets and disconnects slow sockets through [`Emit`], which
//! socketioxide's [`SocketRef`] implements for production and a recording
//! double implements in tests, so `deliver`, `attach` and catch-up are unit
//! tested without sockets (as `replay` is). Every method is non-blocking:
//! a socket whose queue has no room answers [`EmitError::Full`] and the hub
//! decides what that means (disconnect the socket, or wait during a replay).
//!
//! It does not decide who receives what (the hub and `subscription` do) and
//! does not count bytes (`budget` does).

use serde_json::value::RawValue;
use serde_json::Value;
use socketioxide::extract::SocketRef;
use socketioxide::socket::Sid;
use socketioxide::{SendError, SocketError};
use tracing::error;

/// Why a packet did not reach a socket's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EmitError {
    /// The socket's queue is full: the client is not reading fast enough.
    Full,
    /// The socket is gone.
    Closed,
}

/// A socket as the hub sees it.
pub(crate) trait Emit: Send + Sync + 'static {
    fn sid(&self) -> Sid;
    /// Queues a `change` packet whose payload is `raw`, byte for byte.
    fn emit_change(&self, raw: &RawValue) -> Result<(), EmitError>;
    /// Queues a `resync` packet.
    fn emit_resync(&self, payload: &Value) -> Result<(), EmitError>;
    /// Queues the `ready` packet (the socket has caught up).
    fn emit_ready(&self, payload: &Value) -> Result<(), EmitError>;
    /// Queues a Socket.IO disconnect and closes the socket's namespace
    /// session; `Full` when the disconnect packet finds no room (retry).
    fn disconnect(&self) -> Result<(), EmitError>;
    fn connected(&self) -> bool;
}

impl Emit for SocketRef {
    fn sid(&self) -> Sid {
        self.id
    }

    fn emit_change(&self, raw: &RawValue) -> Result<(), EmitError> {
        // `&RawValue` serializes as its text: the payload is the body as
        // received.
        self.emit("change", raw).map_err(send_error)
    }

    fn emit_resync(&self, payload: &Value) -> Result<(), EmitError> {
        self.emit("resync", payload).map_err(send_error)
    }

    fn emit_ready(&self, payload: &Value) -> Result<(), EmitError> {
        self.emit("ready", payload).map_err(send_error)
    }

    fn disconnect(&self) -> Result<(), EmitError> {
        match self.clone().disconnect() {
            Ok(()) | Err(SocketError::Closed) => Ok(()),
            Err(SocketError::InternalChannelFull) => Err(EmitError::Full),
        }
    }

    fn connected(&self) -> bool {
        // The inherent method, on the socket behind the reference.
        socketioxide::socket::Socket::connected(self)
    }
}

fn send_error(e: SendError) -> EmitError {
    match e {
        SendError::Socket(SocketError::InternalChannelFull) => EmitError::Full,
        SendError::Socket(SocketError::Closed) => EmitError::Closed,
        SendError::Serialize(e) => {
            // Cannot happen for a RawValue or a JSON value; never let it
            // pass silently.
            error!(error = %e, "cannot encode a packet for socket.io; closing the socket");
            EmitError::Closed
        }
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

        fn emit_change(&self, raw: &RawValue) -> Result<(), EmitError> {
            self.queue(Sent::Change(raw.get().to_owned()))
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
