//! Fan-out: change events from the consumer to browsers over Socket.IO.
//!
//! The [`Hub`] holds a bounded replay buffer of recent changes (logged to
//! `fanout.replay_dir` when set, so it survives a crash: see [`ReplayLog`]),
//! the attached sockets and their subscriptions; [`layer`] builds the
//! socketioxide layer (namespace `/`, path `/socket.io/`) that feeds it.
//! The consumer parses each RabbitMQ body into a [`Change`] and calls
//! [`Hub::deliver`]; the `change` payload a browser receives is that body
//! byte for byte.
//!
//! # Wiring
//!
//! ```no_run
//! # async fn wire(config: walcast::config::Config) -> anyhow::Result<()> {
//! use tokio_util::sync::CancellationToken;
//! use walcast::consumer::Consumer;
//! use walcast::fanout::{self, Hub, HubOptions};
//!
//! let shutdown = CancellationToken::new();
//! // Loads and locks fanout.replay_dir when set: fails if another process
//! // holds it.
//! let hub = Hub::open(HubOptions::from_config(&config.fanout), shutdown.clone())?;
//! let (sio_layer, _io) = fanout::layer(&hub); // inside the runtime
//! let app: axum::Router = axum::Router::new()
//!     // .route(...) the HTTP API
//!     .layer(sio_layer); // last, so it sees /socket.io/ before routing
//! let consumer = Consumer::new(config.rabbitmq.clone(), hub.clone())
//!     // The history start for snapshot hand-offs, from the captured database.
//!     .with_history_start(config.pg_config());
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
//!     .await?;
//! # Ok(())
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
//!   then live ones, with nothing missing or repeated where they meet. Live
//!   changes come in id order too, except a late one (see **Dedupe**).
//! - **Durability.** With `replay_dir`, every change is written to the
//!   replay log by a writer thread of its own (never under the hub's lock)
//!   and its delivery is acked only once the writer reports it written; a
//!   change the log cannot take is not acked (the broker redelivers it).
//!   After a crash the history is loaded back, and redeliveries of what was
//!   logged but not acked are dropped as duplicates. See [`ReplayLog`] for
//!   torn writes, oversize changes, compaction and machine crashes.
//! - **Source.** Every change carries its stream's `x-walcast-source`; the
//!   history follows one source, and another one restarts it (`resync`
//!   `source_changed`; see `hub` for the rule and `rabbitmq.source`).
//!   Messages without `app_id=walcast` or a source never get here: the
//!   consumer dead-letters them.
//! - **Dedupe.** A change whose id is held, or at or below the eviction
//!   horizon (the largest evicted id), is a duplicate and goes nowhere. A
//!   new id older than the newest (a publisher republish after a nack: the
//!   changes after the nacked one may reach the queue before it) is late:
//!   it is held in id order and delivered to every live socket it is for,
//!   out of id order, even one whose `since` is above it (this gateway
//!   never delivered it, so no cursor covers it). Losing it would be worse
//!   than the disorder. Keep `fanout.replay_buffer` at or above the
//!   capture's `rabbitmq.publish_window` so that what overtook it is still
//!   held when it comes.
//! - **`since`.** Replays every held change with a larger id, then live. A
//!   `since` below the horizon (or any `since` before this history's first
//!   change) gets `resync {reason: "since_too_old" | "no_history",
//!   latest_id}` and then live changes. A `since` newer than everything held
//!   is just live. A malformed `since` refuses the connection
//!   (`connect_error` "auth.since: invalid event id ...").
//! - **`snapshot`.** Sends, in order, every held or later change whose xid
//!   the snapshot does not see (xid ≥ xmax, or in xip; xids compared modulo
//!   2^32 using the low 32 bits of the snapshot's values), none that it sees.
//!   It needs the history start S0 (a snapshot the consumer took after
//!   binding its queue; persisted with the log): without one, `resync
//!   {reason: "no_history"}`; with `xmin` before S0's `xmax`, or at or
//!   before the latest evicted xid, a change the snapshot does not see may
//!   never have reached this gateway or may be gone: `resync {reason:
//!   "snapshot_too_old"}`. Otherwise every change not held is seen by the
//!   snapshot and the replay covers the rest. The filter stays on for live
//!   changes until one with xid ≥ xmax goes by (after that, in commit order,
//!   none is visible to the snapshot).
//! - **Slow sockets.** Each socket has a queue of `socket_buffer` packets
//!   and a budget of `socket_buffer_bytes` queued bytes (an upper bound
//!   kept at emit time; see `budget` for why and what it costs). When a
//!   change does not fit either, the socket is detached at once (it gets
//!   nothing more, so what it got is a gap-free prefix), counted by reason
//!   (`queue_full`, `queue_bytes`, `replay_stall`), logged at warn, and
//!   disconnected; it reconnects with `since` and loses nothing. A replay
//!   waits for packet room for at most `replay_stall_timeout`, and is cut
//!   at the byte budget (the client resumes from what it got). A replay
//!   that falls behind eviction ends in `resync {reason: "replay_overrun"}`.
//! - **Limits.** Subscriptions per socket, a key's size and all of a
//!   socket's subscription bytes are capped (`{ok: false, error}` past a
//!   cap, nothing changes); a client packet over `max_packet_bytes` closes
//!   that client's connection. A socket admitted with a JWT is
//!   disconnected when the token expires (`token_expired`).
//!
//! This module does not talk to RabbitMQ (`consumer`) and does not bind a
//! listener or build the HTTP API.

mod adapter;
mod budget;
mod change;
mod emit;
mod handshake;
mod hub;
mod layer;
mod log_writer;
mod projection;
mod replay;
mod replay_log;
mod replay_record;
mod snapshot;
mod stats;
mod subscription;

pub use adapter::FanoutAdapter;
pub use change::{Change, EventHeader, MalformedChange};
pub use hub::{AuthRequest, Authorizer, DeliverError, Delivered, Hub, HubOptions};
pub use layer::{layer, router};
pub use projection::{Projection, MAX_FIELDS, MAX_FIELD_BYTES};
pub use replay::{Horizons, ReplayBuffer, ResyncReason};
pub use replay_log::{LoadReport, ReplayLog, ReplayLogError, LOCK_FILE, LOG_FILE};
pub use snapshot::{xid_precedes, ParseSnapshotError, Snapshot};
pub use stats::{DeliveredCount, DisconnectReason, FanoutStats, StatsSnapshot};
