//! Detaching sockets from the [`Hub`] and disconnecting them: too slow
//! (queue full, byte budget, replay stall), token expired, or shutdown.
//!
//! It does not decide that a socket is slow; delivery and catch-up do, and
//! hand the detached socket here.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use socketioxide::socket::Sid;
use tokio_util::sync::DropGuard;
use tracing::{debug, info, warn};

use super::Hub;
use crate::fanout::emit::{Emit, EmitError};
use crate::fanout::stats::DisconnectReason;

impl Hub {
    /// Forgets a socket (disconnect handler); idempotent.
    pub fn detach(&self, sid: Sid) {
        let mut state = self.lock();
        state.admitted_until.remove(&sid);
        state.early.remove(&sid);
        if state.detach(sid, &self.inner.stats).is_some() {
            debug!(%sid, "socket detached");
        }
    }

    /// Records that the socket `sid`, about to be attached, was admitted
    /// with a token valid until `until`: [`Hub::attach`] then disconnects
    /// it at that time.
    pub(crate) fn admitted_until(&self, sid: Sid, until: SystemTime) {
        self.lock().admitted_until.insert(sid, until);
    }

    /// Starts the timer that disconnects `sid` at `until`; it ends early
    /// when the returned guard is dropped (the socket is detached) or at
    /// shutdown, so no timer outlives its socket.
    pub(super) fn expire_at(&self, sid: Sid, until: SystemTime) -> DropGuard {
        let cancel = self.inner.shutdown.child_token();
        let done = cancel.clone();
        let hub = self.clone();
        let wait = until
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        self.tasks().spawn(async move {
            tokio::select! {
                biased;
                _ = done.cancelled() => {}
                _ = tokio::time::sleep(wait) => hub.expire(sid),
            }
        });
        cancel.drop_guard()
    }

    /// Disconnects a socket whose token expired.
    pub(super) fn expire(&self, sid: Sid) {
        let socket = self.lock().detach(sid, &self.inner.stats);
        if let Some(socket) = socket {
            self.disconnect_slow(socket, DisconnectReason::TokenExpired, "live");
        }
    }

    /// Disconnects every attached socket (a clean Socket.IO disconnect).
    pub fn disconnect_all(&self) {
        let sockets: Vec<Arc<dyn Emit>> = {
            let state = self.lock();
            state.clients.values().map(|c| c.socket.clone()).collect()
        };
        for socket in sockets {
            socket.disconnect().ok();
        }
    }

    /// Disconnects a socket the hub detached, for `reason`.
    pub(super) fn disconnect_slow(
        &self,
        socket: Arc<dyn Emit>,
        reason: DisconnectReason,
        during: &'static str,
    ) {
        self.inner.stats.record_disconnect(reason);
        let options = &self.inner.options;
        match reason {
            DisconnectReason::TokenExpired => info!(
                sid = %socket.sid(),
                reason = reason.as_str(),
                "socket's token expired; disconnecting it (the client reconnects with a fresh token)"
            ),
            _ => warn!(
                sid = %socket.sid(),
                reason = reason.as_str(),
                during,
                socket_buffer = options.socket_buffer,
                socket_buffer_bytes = options.socket_buffer_bytes,
                "socket too slow: its send queue is full (packets or bytes); disconnecting it (it reconnects with since and loses nothing)"
            ),
        }
        // The disconnect packet needs a free slot too. Until the client
        // reads, keep trying; a client that never reads again is closed by
        // the heartbeat, whose ping finds the queue full.
        match socket.disconnect() {
            Ok(()) | Err(EmitError::Closed) => {}
            Err(EmitError::Full) => {
                let shutdown = self.inner.shutdown.clone();
                self.tasks().spawn(async move {
                    let mut delay = Duration::from_millis(10);
                    loop {
                        tokio::select! {
                            biased;
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(delay) => {}
                        }
                        if !socket.connected() {
                            return;
                        }
                        match socket.disconnect() {
                            Err(EmitError::Full) => {
                                delay = (delay * 2).min(Duration::from_secs(1));
                            }
                            Ok(()) | Err(EmitError::Closed) => return,
                        }
                    }
                });
            }
        }
    }
}
