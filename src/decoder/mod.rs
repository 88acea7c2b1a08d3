//! pgoutput decoding, sans-io: bytes in, change events out.
//!
//! STUB: the interface the rest of walcast is written against. The real
//! implementation replaces this file.

use std::sync::Arc;

use crate::event::{ChangeEvent, Lsn, PgTimestamp};

/// Why a pgoutput message could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("malformed pgoutput message: {0}")]
    Malformed(String),
}

/// A transaction starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Begin {
    pub final_lsn: Lsn,
    pub commit_time: PgTimestamp,
    pub xid: u32,
}

/// A transaction ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Commit {
    pub commit_lsn: Lsn,
    pub end_lsn: Lsn,
    pub commit_time: PgTimestamp,
}

/// A relation (table) description arrived or changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationInfo {
    pub oid: u32,
    pub schema: Arc<str>,
    pub table: Arc<str>,
}

/// What one pgoutput message meant for the caller.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    Begin(Begin),
    Change(ChangeEvent),
    /// One event per truncated relation.
    Truncate(Vec<ChangeEvent>),
    Commit(Commit),
    Relation(RelationInfo),
    /// Origin, Type, logical Message: nothing for the caller.
    Other,
}

/// The pgoutput decoder with its relation and type caches.
#[derive(Debug, Default)]
pub struct Decoder {}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Decodes one pgoutput message that arrived in an XLogData whose
    /// WAL start was `wal_start`.
    pub fn decode(&mut self, wal_start: Lsn, data: &[u8]) -> Result<Decoded, DecodeError> {
        let _ = (wal_start, data);
        Err(DecodeError::Malformed("decoder not implemented".into()))
    }

    /// Sets the columns that form `key` for relation `oid` (its primary key),
    /// overriding the replica-identity flags (which cover every column under
    /// REPLICA IDENTITY FULL).
    pub fn set_key_columns(&mut self, oid: u32, columns: Vec<String>) {
        let _ = (oid, columns);
    }
}
