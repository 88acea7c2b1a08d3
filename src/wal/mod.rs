//! The logical-replication connection to PostgreSQL.
//!
//! STUB: the interface the rest of walcast is written against. The real
//! implementation replaces this file.

use bytes::Bytes;

use crate::event::{Lsn, PgTimestamp};

/// Errors of the replication connection.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("{severity} {code}: {message}")]
    Server {
        severity: String,
        code: String,
        message: String,
        detail: Option<String>,
        hint: Option<String>,
    },
    #[error("connection to postgres lost: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("authentication failed: {0}")]
    Auth(String),
}

impl WalError {
    /// True for errors a reconnect may heal.
    pub fn is_retryable(&self) -> bool {
        matches!(self, WalError::Io(_))
    }
    /// The SQLSTATE of a server error.
    pub fn code(&self) -> Option<&str> {
        match self {
            WalError::Server { code, .. } => Some(code),
            _ => None,
        }
    }
}

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
    pub status_interval: std::time::Duration,
}

/// A replication-mode connection (`replication=database`) before streaming.
pub struct ReplicationClient {}

impl ReplicationClient {
    pub async fn connect(
        config: &tokio_postgres::Config,
        application_name: &str,
    ) -> Result<Self, WalError> {
        let _ = (config, application_name);
        Err(WalError::Protocol("not implemented".into()))
    }
    pub async fn identify_system(&mut self) -> Result<SystemInfo, WalError> {
        Err(WalError::Protocol("not implemented".into()))
    }
    pub async fn create_slot(
        &mut self,
        slot: &str,
        temporary: bool,
    ) -> Result<SlotCreated, WalError> {
        let _ = (slot, temporary);
        Err(WalError::Protocol("not implemented".into()))
    }
    pub async fn drop_slot(&mut self, slot: &str, wait: bool) -> Result<(), WalError> {
        let _ = (slot, wait);
        Err(WalError::Protocol("not implemented".into()))
    }
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, WalError> {
        let _ = sql;
        Err(WalError::Protocol("not implemented".into()))
    }
    pub async fn start_replication(
        self,
        options: StartOptions,
    ) -> Result<ReplicationStream, WalError> {
        let _ = options;
        Err(WalError::Protocol("not implemented".into()))
    }
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

/// The streaming (CopyBoth) phase.
pub struct ReplicationStream {}

impl ReplicationStream {
    /// Next message; `Ok(None)` when the server ended the stream. Cancel-safe.
    pub async fn next(&mut self) -> Result<Option<ReplicationMessage>, WalError> {
        Err(WalError::Protocol("not implemented".into()))
    }
    /// Declares everything up to `lsn` durable: later status updates report it flushed.
    pub fn set_durable(&self, lsn: Lsn) {
        let _ = lsn;
    }
    /// The position last declared durable.
    pub fn durable(&self) -> Lsn {
        Lsn::ZERO
    }
    /// Sends a final status update, ends the stream, closes the connection.
    pub async fn shutdown(self) -> Result<Lsn, WalError> {
        Err(WalError::Protocol("not implemented".into()))
    }
}
