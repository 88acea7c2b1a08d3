//! Fan-out: change events from the consumer to browsers over Socket.IO.
//!
//! The [`Hub`] holds a bounded replay buffer of recent changes, the attached
//! sockets and their subscriptions; [`layer`] builds the socketioxide layer
//! (namespace `/`, path `/socket.io/`) that feeds it. The consumer parses
//! each RabbitMQ body into a [`Change`] and calls [`Hub::deliver`]; the
//! `change` payload a browser receives is that body byte for byte.
//!
//! # Wiring
//!
//! ```no_run
//! # async fn wire(config: walcast::config::Config) {
//! use tokio_util::sync::CancellationToken;
//! use walcast::consumer::Consumer;
//! use walcast::fanout::{self, Hub, HubOptions};
//!
//! let shutdown = CancellationToken::new();
//! let hub = Hub::new(HubOptions::from_config(&config.fanout), shutdown.clone());
//! let (sio_layer, _io) = fanout::layer(&hub); // inside the runtime
//! let app: axum::Router = axum::Router::new()
//!     // .route(...) the HTTP API
//!     .layer(sio_layer); // last, so it sees /socket.io/ before routing
//! let consumer = Consumer::new(config.rabbitmq.clone(), hub.clone());
//! tokio::spawn(consumer.run(shutdown.clone()));
//!
//! use axum::serve::ListenerExt;
//! let listener = tokio::net::TcpListener::bind(&config.http.listen)
//!     .await
//!     .unwrap()
//!     // Changes are small writes that should leave at once.
//!     .tap_io(|tcp| {
//!         tcp.set_nodelay(true).ok();
//!     });
//! axum::serve(listener, app)
//!     .with_graceful_shutdown(shutdown.cancelled_owned())
//!     .await
//!     .unwrap();
//! # }
//! ```
//!
//! [`router`] gives a router that serves only Socket.IO.
//!
//! # Delivery guarantees
//!
//! - **Order and the seam.** One mutex covers the buffer and the socket
//!   registry. [`Hub::deliver`] takes it to drop duplicates, emit to live
//!   sockets and hold the change; attaching a socket (and each batch of its
//!   replay) takes it too. A socket therefore sees held changes in id order,
//!   then live ones, with nothing missing or repeated where they meet.
//! - **Dedupe.** A change whose id is held, or at or below the eviction
//!   horizon (the largest evicted id; after a fresh start, anything below
//!   the first change received), is a duplicate and goes nowhere. A new id
//!   older than the newest (a publisher republish after a nack) is still
//!   delivered.
//! - **`since`.** Replays every held change with a larger id, then live. A
//!   `since` below the horizon (or any `since` before this gateway received
//!   its first change) gets `resync {reason: "since_too_old" | "no_history",
//!   latest_id}` and then live changes. A `since` newer than everything held
//!   is just live. A malformed `since` refuses the connection
//!   (`connect_error` "auth.since: invalid event id ...").
//! - **`snapshot`.** Sends, in order, every held or later change whose xid
//!   the snapshot does not see (xid ≥ xmax, or in xip; xids compared modulo
//!   2^32 using the low 32 bits of the snapshot's values), none that it sees.
//!   The xid horizon is the latest xid among changes not held (after a fresh
//!   start, the first change's xid − 1). If it is at or after the snapshot's
//!   xmin, an unsent change the snapshot does not see may be gone: `resync
//!   {reason: "snapshot_too_old"}`. Otherwise every change not held is seen
//!   by the snapshot and the replay covers the rest. The filter stays on for
//!   live changes until one with xid ≥ xmax goes by (after that, in commit
//!   order, none is visible to the snapshot).
//! - **Slow sockets.** Each socket has a queue of `socket_buffer` packets.
//!   When a change does not fit, the socket is detached at once (it gets
//!   nothing more, so what it got is a gap-free prefix), counted, logged at
//!   warn, and disconnected; it reconnects with `since` and loses nothing.
//!   A replay waits for room for at most `replay_stall_timeout`. A replay
//!   that falls behind eviction ends in `resync {reason: "replay_overrun"}`.
//!
//! This module does not talk to RabbitMQ (`consumer`) and does not bind a
//! listener or build the HTTP API.

mod change;
mod handshake;
mod hub;
mod layer;
mod replay;
mod snapshot;
mod stats;
mod subscription;

pub use change::{Change, EventHeader, MalformedChange};
pub use handshake::{Handshake, HandshakeError, StartAt};
pub use hub::{AuthRequest, Authorizer, Delivered, Hub, HubOptions};
pub use layer::{layer, router};
pub use replay::{ReplayBuffer, ResyncReason};
pub use snapshot::{xid_precedes, ParseSnapshotError, Snapshot};
pub use stats::{FanoutStats, StatsSnapshot};
pub use subscription::{canonical_json, parse_target, RowKey, Target, MAX_SUBSCRIPTIONS};
