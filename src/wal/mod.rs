//! The logical-replication connection to PostgreSQL.
//!
//! crates.io's tokio-postgres has no replication mode, so this module speaks
//! the protocol itself on tokio and postgres-protocol:
//!
//! - `connection`: connect, startup with `replication=database` and fixed
//!   session settings, and replication commands over the simple query
//!   protocol ([`ReplicationClient`]).
//! - `transport`: where to connect, and the byte stream underneath (TCP,
//!   TLS after SSLRequest, or Unix socket).
//! - `auth`: trust, password, md5, SCRAM-SHA-256.
//! - `stream`: the CopyBoth phase after START_REPLICATION
//!   ([`ReplicationStream`]): XLogData and keepalives in, standby status
//!   updates out, reporting only what the caller declared durable.
//! - `codec`: framing and message encoding, without I/O.
//! - `error`: [`WalError`] and which errors a reconnect may heal (by the
//!   SQLSTATE classification in `crate::pg`).
//!
//! It hands pgoutput payloads on as bytes; decoding them is `decoder`'s job.
//! TLS follows libpq's sslmode (`transport`, with the rustls configuration
//! of `crate::pg`).

mod auth;
mod codec;
mod connection;
mod error;
mod stream;
mod transport;

use bytes::Bytes;

use crate::event::{Lsn, PgTimestamp};

pub use connection::ReplicationClient;
pub use error::WalError;
pub use stream::ReplicationStream;

/// Reply to IDENTIFY_SYSTEM.
#[derive(Debug, Clone)]
pub struct SystemInfo {
    pub system_id: String,
    pub timeline: u32,
    pub xlog_pos: Lsn,
    pub dbname: Option<String>,
}

/// Reply to CREATE_REPLICATION_SLOT.
#[derive(Debug, Clone)]
pub struct SlotCreated {
    pub slot_name: String,
    pub consistent_point: Lsn,
    pub snapshot_name: Option<String>,
    pub output_plugin: Option<String>,
}

/// Options of START_REPLICATION.
#[derive(Debug, Clone)]
pub struct StartOptions {
    pub slot: String,
    pub start: Lsn,
    pub publications: Vec<String>,
    /// How often a standby status update is sent whatever moved (and how
    /// long the server may stay silent, times four, before the stream is
    /// declared dead).
    pub status_interval: std::time::Duration,
    /// A durable position that moved is reported within this long of the
    /// previous status update (at once after a quieter spell). Bounds what
    /// Postgres resends after a crash.
    pub feedback_interval: std::time::Duration,
}

/// One message of the replication stream.
#[derive(Debug, Clone)]
pub enum ReplicationMessage {
    XLogData {
        wal_start: Lsn,
        wal_end: Lsn,
        server_time: PgTimestamp,
        data: Bytes,
    },
    Keepalive {
        wal_end: Lsn,
        server_time: PgTimestamp,
        reply_requested: bool,
    },
}
