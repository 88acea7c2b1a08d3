//! A TCP proxy for tests that need a network outage between walcast and a
//! server, without touching the server.
//!
//! [`TcpProxy::start`] listens on `127.0.0.1:0` and forwards every
//! connection to `upstream`. [`TcpProxy::cut`] closes every open connection
//! (both sides) and refuses new ones (accepted, then closed at once) until
//! [`TcpProxy::resume`]; [`TcpProxy::cut_for`] resumes by itself after a
//! while. Dropping the proxy stops it and closes everything.
//!
//! It does not delay, reorder or corrupt bytes: an outage is all it models.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

struct State {
    refusing: AtomicBool,
    /// Cancelled to cut every current connection; replaced after each cut.
    connections: Mutex<CancellationToken>,
    refused: AtomicU64,
}

/// A proxy in front of one upstream address.
pub struct TcpProxy {
    addr: SocketAddr,
    state: Arc<State>,
    stop: CancellationToken,
}

impl TcpProxy {
    /// Starts forwarding `127.0.0.1:<some port>` to `upstream`.
    pub async fn start(upstream: SocketAddr) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            refusing: AtomicBool::new(false),
            connections: Mutex::new(CancellationToken::new()),
            refused: AtomicU64::new(0),
        });
        let stop = CancellationToken::new();
        tokio::spawn(accept_loop(listener, upstream, state.clone(), stop.clone()));
        TcpProxy { addr, state, stop }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Closes every open connection and refuses new ones until `resume`.
    pub fn cut(&self) {
        let mut connections = self.state.connections.lock().unwrap();
        self.state.refusing.store(true, Ordering::SeqCst);
        connections.cancel();
        *connections = CancellationToken::new();
    }

    /// Lets new connections through again.
    pub fn resume(&self) {
        self.state.refusing.store(false, Ordering::SeqCst);
    }

    /// `cut`, then `resume` after `outage` (in the background).
    pub fn cut_for(&self, outage: Duration) {
        self.cut();
        let state = self.state.clone();
        let stop = self.stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::time::sleep(outage) => state.refusing.store(false, Ordering::SeqCst),
            }
        });
    }

    /// Whether new connections are refused (between `cut` and `resume`).
    pub fn is_cut(&self) -> bool {
        self.state.refusing.load(Ordering::SeqCst)
    }

    /// Connections refused while cut.
    pub fn refused(&self) -> u64 {
        self.state.refused.load(Ordering::SeqCst)
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.state.connections.lock().unwrap().cancel();
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    state: Arc<State>,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((mut client, _)) = accepted else {
            continue;
        };
        // Under the lock, so that a cut cannot slip between the check and
        // the registration of this connection.
        let cut = {
            let connections = state.connections.lock().unwrap();
            if state.refusing.load(Ordering::SeqCst) {
                None
            } else {
                Some(connections.clone())
            }
        };
        let Some(cut) = cut else {
            state.refused.fetch_add(1, Ordering::SeqCst);
            drop(client);
            continue;
        };
        tokio::spawn(async move {
            let Ok(mut server) = TcpStream::connect(upstream).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            tokio::select! {
                _ = cut.cancelled() => {}
                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
            }
            // Dropping both streams closes both sides.
        });
    }
}
