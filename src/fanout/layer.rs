//! The Socket.IO side: the socketioxide layer and its handlers.
//!
//! The root namespace `/` admits a socket in three steps:
//!
//! 1. a connect middleware validates the handshake `auth` (see
//!    `handshake`), calls the [`super::Authorizer`] if there is one, and
//!    installs the message and disconnect handlers; a refusal becomes the
//!    client's `connect_error`. Handlers go in here, before the CONNECT
//!    packet, so a `subscribe` sent right after `connect` always finds them.
//! 2. the connect handler's extractor ([`Attached`]) attaches the socket to
//!    the hub. It runs synchronously right after the CONNECT packet is
//!    queued (socketioxide runs extractors before it spawns the handler),
//!    so the replay and the live stream follow the CONNECT packet.
//! 3. `subscribe` / `unsubscribe` are also applied inside an extractor
//!    ([`SubscriptionCommand`]), in the order the client sent them:
//!    socketioxide spawns one task per message, and tasks can run out of
//!    order, but extractors run on the socket's receive path. A command
//!    can arrive before step 2 has run (the client saw CONNECT and the
//!    connect task has not reached the extractor yet): the hub holds it
//!    and applies it, and sends its ack, when the socket attaches.
//!
//! Events the server does not know are ignored, or answered
//! `{ok: false, error}` when the client asked for an ack.
//!
//! Nothing here binds a listener: the caller mounts [`layer`] on its axum
//! app (see the `fanout` module doc).
//!
//! # Memory per socket
//!
//! An idle socket costs walcast about 25 KiB of RSS (10,000 sockets,
//! `scripts/bench/fanout.sh`), almost all of it in socketioxide and
//! engineioxide (heaptrack): three tasks per socket (reader, writer,
//! heartbeat; about 6 KiB), the socket's packet channel (tokio allocates
//! its first block of 32 slots up front; about 5 KiB), the WebSocket read
//! buffer ([`WS_READ_BUFFER`]), the request head, and heap fragmentation
//! left by hyper's 8-16 KiB per-connection read buffers, freed once the
//! WebSocket takes over (`runtime.mmap_threshold_bytes = 8192` returns
//! those to the OS: about 4.6 KiB less per socket).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use socketioxide::extract::{AckSender, Event, SocketRef, State, TryData};
use socketioxide::handler::{
    ConnectHandler, FromConnectParts, FromMessageParts, Value as SioValue,
};
use socketioxide::layer::SocketIoLayer;
use socketioxide::socket::Socket;
use socketioxide::SocketIo;
use tracing::{debug, info};

use super::adapter::{AdapterSlot, FanoutAdapter};
use super::emit::SioSocket;
use super::handshake::{Handshake, HandshakeError};
use super::hub::{AuthRequest, Hub};

/// How long shutdown waits for sockets to close before giving up on the
/// ones whose client stopped reading.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// The WebSocket read buffer per socket (engineioxide's default is 4 KiB,
/// all of it resident: tungstenite zero-fills it before reading). Clients
/// only send pongs and `subscribe` commands, far smaller; a larger frame
/// still arrives whole, the buffer grows to hold it.
pub const WS_READ_BUFFER: usize = 512;

/// Builds the Socket.IO layer for `hub` (path `/socket.io/`, namespace `/`).
///
/// Must be called inside a Tokio runtime: it spawns the task that closes
/// every socket when the hub's shutdown token is cancelled.
pub fn layer(hub: &Hub) -> (SocketIoLayer<FanoutAdapter>, SocketIo<FanoutAdapter>) {
    let options = hub.options();
    // Clients only send the handshake, pongs and subscribe commands: the
    // packet limits replace engineioxide's 64 MiB message / 16 MiB frame
    // defaults, so no client can make the server buffer more. A larger
    // packet closes that client's connection (a WebSocket protocol error;
    // a polling request is refused).
    let max_packet = options.max_packet_bytes.max(1);
    let adapter = AdapterSlot::default();
    let (layer, io) = SocketIo::builder()
        .max_buffer_size(options.socket_buffer.max(1))
        .max_payload(max_packet as u64)
        .ws_max_message_size(max_packet)
        .ws_max_frame_size(max_packet)
        .ws_read_buffer_size(WS_READ_BUFFER)
        .ping_interval(options.ping_interval)
        .ping_timeout(options.ping_timeout)
        .with_state(hub.clone())
        .with_state(adapter.clone())
        .with_adapter::<FanoutAdapter>(adapter)
        .build_layer();
    io.ns("/", on_connect.with(admit));

    let closing = io.clone();
    let shutdown = hub.shutdown_token().clone();
    let hub = hub.clone();
    hub.tasks().clone().spawn(async move {
        shutdown.cancelled().await;
        info!("closing socket.io connections");
        hub.disconnect_all();
        if tokio::time::timeout(CLOSE_TIMEOUT, closing.close())
            .await
            .is_err()
        {
            info!("some socket.io connections did not close in time");
        }
    });
    (layer, io)
}

/// An axum router that serves only Socket.IO, to merge into an app or serve
/// on its own.
pub fn router(hub: &Hub) -> axum::Router {
    let (layer, _io) = layer(hub);
    axum::Router::new().layer(layer)
}

/// The `connect_error` message of a refused handshake.
#[derive(Debug)]
struct Refused(HandshakeError);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

/// Connect middleware: validate, authorize, install handlers.
async fn admit(
    socket: SocketRef<FanoutAdapter>,
    State(hub): State<Hub>,
    TryData(auth): TryData<Value>,
) -> Result<(), Refused> {
    let handshake = auth
        .map_err(|_| HandshakeError::NotAnObject)
        .and_then(|auth| Handshake::parse(Some(&auth)));
    let handshake = match handshake {
        Ok(handshake) => handshake,
        Err(e) => {
            hub.stats().record_connect_refused();
            debug!(sid = %socket.id, error = %e, "refusing handshake");
            return Err(Refused(e));
        }
    };
    if let Some(authorizer) = &hub.options().authorizer {
        let request = AuthRequest {
            token: handshake.token.clone(),
            headers: socket.req_parts().headers.clone(),
        };
        match authorizer(request).await {
            Ok(None) => {}
            Ok(Some(until)) => hub.admitted_until(socket.id, until),
            Err(message) => {
                hub.stats().record_connect_refused();
                debug!(sid = %socket.id, "authorizer refused handshake");
                return Err(Refused(HandshakeError::Unauthorized(message)));
            }
        }
    }
    socket.on("subscribe", async |_: SubscriptionCommand<true>| {});
    socket.on("unsubscribe", async |_: SubscriptionCommand<false>| {});
    socket.on_fallback(async |Event(event): Event, ack: AckSender<FanoutAdapter>| {
        debug!(event, "ignoring unknown event");
        ack.send(&json!({"ok": false, "error": format!("unknown event {event:?}")}))
            .ok();
    });
    socket.on_disconnect(
        async |socket: SocketRef<FanoutAdapter>, State(hub): State<Hub>| {
            hub.detach(socket.id);
        },
    );
    Ok(())
}

/// The connect handler has nothing left to do: [`Attached`] did it.
async fn on_connect(_: Attached) {}

/// Attaches the socket to the hub while socketioxide extracts the connect
/// handler's arguments (see the module doc for why not in the handler).
struct Attached;

impl FromConnectParts<FanoutAdapter> for Attached {
    type Error = Infallible;

    fn from_connect_parts(
        socket: &Arc<Socket<FanoutAdapter>>,
        auth: &Option<SioValue>,
    ) -> Result<Self, Infallible> {
        let Ok(State(hub)) = State::<Hub>::from_connect_parts(socket, auth) else {
            unreachable!("the layer always installs the hub as state");
        };
        let Ok(TryData(parsed)) = TryData::<Value>::from_connect_parts(socket, auth);
        // The middleware validated this handshake already.
        let start = parsed
            .ok()
            .and_then(|auth| Handshake::parse(Some(&auth)).ok())
            .map(|h| h.start)
            .unwrap_or(super::handshake::StartAt::Live);
        let Ok(State(slot)) = State::<AdapterSlot>::from_connect_parts(socket, auth) else {
            unreachable!("the layer always installs the adapter slot as state");
        };
        let adapter = slot
            .get()
            .and_then(std::sync::Weak::upgrade)
            .expect("socketioxide initialized the adapter of namespace / when it was added");
        let socket = SocketRef::from(socket.clone());
        hub.attach(Arc::new(SioSocket { socket, adapter }), start);
        Ok(Attached)
    }
}

/// Applies a `subscribe` (`SUBSCRIBE = true`) or `unsubscribe` and acks it,
/// during extraction so commands apply in the order they were sent.
struct SubscriptionCommand<const SUBSCRIBE: bool>;

impl<const SUBSCRIBE: bool> FromMessageParts<FanoutAdapter> for SubscriptionCommand<SUBSCRIBE> {
    type Error = Infallible;

    fn from_message_parts(
        socket: &Arc<Socket<FanoutAdapter>>,
        value: &mut SioValue,
        ack_id: &Option<i64>,
    ) -> Result<Self, Infallible> {
        let Ok(State(hub)) = State::<Hub>::from_message_parts(socket, value, ack_id) else {
            unreachable!("the layer always installs the hub as state");
        };
        let Ok(TryData(payload)) = TryData::<Value>::from_message_parts(socket, value, ack_id);
        let Ok(ack) = AckSender::from_message_parts(socket, value, ack_id);
        let sid = socket.id;
        let reply = Box::new(move |result: Result<(), String>| {
            let reply = match result {
                Ok(()) => json!({"ok": true}),
                Err(error) => {
                    debug!(%sid, error, subscribe = SUBSCRIBE, "refusing subscription command");
                    json!({"ok": false, "error": error})
                }
            };
            ack.send(&reply).ok();
        });
        hub.update_subscription(sid, payload.ok().as_ref(), SUBSCRIBE, reply);
        Ok(SubscriptionCommand)
    }
}
