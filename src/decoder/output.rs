//! What the decoder hands back: the meaning of one pgoutput message
//! ([`Decoded`]) and why a message could not be decoded ([`DecodeError`]).

use std::sync::Arc;

use crate::event::{ChangeEvent, Lsn, Op, PgTimestamp};

/// Why a pgoutput message could not be decoded.
///
/// Every variant is definite: feeding the same bytes again fails the same
/// way, so the caller should stop rather than retry.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("malformed pgoutput message: {0}")]
    Malformed(String),
    /// Something walcast does not ask Postgres for (binary tuples,
    /// streaming or two-phase messages): check the replication options.
    #[error("unsupported pgoutput content: {0}")]
    Unsupported(String),
    /// A change arrived outside Begin/Commit.
    #[error("{message} message outside a transaction (no Begin before it)")]
    OutsideTransaction { message: &'static str },
    /// A change names a relation no Relation message described.
    #[error(
        "{message} message for relation oid {oid}, which no Relation message described; \
         the stream must be read from the start of the replication session"
    )]
    UnknownRelation { message: &'static str, oid: u32 },
    /// A tuple's column count differs from the cached relation's, e.g. a
    /// Relation message after ALTER TABLE was lost. Mapping the values by
    /// position anyway would put them under the wrong column names.
    #[error(
        "{message} message for {schema}.{table} (oid {oid}): {tuple} has {actual} columns, \
         the relation has {expected}"
    )]
    ColumnCountMismatch {
        message: &'static str,
        oid: u32,
        schema: Arc<str>,
        table: Arc<str>,
        tuple: &'static str,
        expected: usize,
        actual: usize,
    },
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
    /// `relreplident` as the Relation message sent it: `d` default, `n`
    /// nothing, `f` full, `i` index.
    pub replica_identity: char,
    /// Whether its changes are decoded (see
    /// [`Decoder::set_tables`](super::Decoder::set_tables)).
    pub captured: bool,
}

/// What one pgoutput message meant for the caller.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    Begin(Begin),
    Change(ChangeEvent),
    /// One event per truncated relation that is captured; the relations
    /// outside the captured set that the same statement truncated are
    /// listed in `filtered` (they took their ordinals all the same).
    Truncate {
        events: Vec<ChangeEvent>,
        filtered: Vec<RelationInfo>,
    },
    /// An insert, update or delete of a relation outside the captured set:
    /// not decoded, no event. It took an ordinal, so the ids of the other
    /// changes of its transaction do not depend on which tables are
    /// captured.
    Filtered {
        relation: RelationInfo,
        op: Op,
    },
    Commit(Commit),
    Relation(RelationInfo),
    /// A Type message described `oid`, which is neither built in nor a
    /// known domain: the caller may look up whether it is a domain
    /// ([`Decoder::set_type_aliases`](super::Decoder::set_type_aliases))
    /// before the Relation that uses it.
    Type {
        oid: u32,
    },
    /// A logical decoding message (`pg_logical_emit_message`), e.g. a
    /// backfill watermark. Inside a transaction when `transactional`.
    Message(WalMessage),
    /// Origin, or a Type message for a type already known: nothing for
    /// the caller.
    Other,
}

/// A logical decoding message as the stream carried it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalMessage {
    /// Written inside a transaction: it arrives between that
    /// transaction's Begin and Commit, in commit order.
    pub transactional: bool,
    /// Where the message is in the WAL.
    pub lsn: Lsn,
    pub prefix: String,
    pub content: Vec<u8>,
}
