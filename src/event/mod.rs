//! The change event: the one type every stage after the decoder speaks.
//!
//! A [`ChangeEvent`] is one committed row change (or one truncated table).
//! It has exactly one JSON encoding, the one in `docs/protocol.md`
//! section 1, produced by [`ChangeEvent::to_json`]; every hop (stdout of
//! `walcast tail`, the RabbitMQ body, the Socket.IO payload) carries those same
//! bytes. An event too large to publish goes out as its `oversize` stub
//! ([`ChangeEvent::write_oversize_json`], the same writer without the rows).
//! The small value types the event is made of live in submodules and are
//! re-exported here: [`Lsn`] and [`EventId`] (`id`), [`PgTimestamp`]
//! (`time`), [`Row`] and [`Datum`] (`row`); the writer is `json`.
//!
//! The encoding is written by hand rather than derived, because it is the
//! hot path of the whole pipeline: a [`Row`] holds its columns already
//! encoded as a JSON object (the decoder writes it straight from the
//! pgoutput tuple, with each column's `"name":` escaped once per relation),
//! and ids, LSNs and timestamps are formatted into fixed-size buffers.
//! Strings are escaped and numbers formatted exactly as `serde_json` does
//! (the `json` helpers), and the [`Serialize`] impls embed these same
//! bytes, so an event serialized through serde is byte for byte `to_json`.
//!
//! It does not decode anything (that is `decoder`) and does not know about
//! RabbitMQ or Socket.IO.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

mod ascii;
mod id;
pub(crate) mod json;
mod row;
mod time;

pub use id::{EventId, Lsn, ParseEventIdError, ParseLsnError};
pub(crate) use row::RowWriter;
pub use row::{ColumnName, Datum, Row};
pub use time::PgTimestamp;

/// What happened to the row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Insert,
    Update,
    Delete,
    Truncate,
    /// A row published by a backfill (contract section 1, "Backfill").
    Read,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Insert => "insert",
            Op::Update => "update",
            Op::Delete => "delete",
            Op::Truncate => "truncate",
            Op::Read => "read",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One committed row change, field for field the contract's event.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeEvent {
    pub id: EventId,
    pub op: Op,
    pub schema: Arc<str>,
    pub table: Arc<str>,
    pub key: Option<Row>,
    pub new: Option<Row>,
    pub old: Option<Row>,
    /// Omitted from the JSON when `None`.
    pub changed: Option<Vec<ColumnName>>,
    pub unchanged_toast: Vec<ColumnName>,
    pub lsn: Lsn,
    pub commit_lsn: Lsn,
    pub xid: u32,
    pub commit_time: PgTimestamp,
}

impl ChangeEvent {
    /// `<schema>.<table>`, the name clients subscribe by.
    pub fn qualified_table(&self) -> String {
        dotted(&[&self.schema, &self.table])
    }

    /// The RabbitMQ routing key: `<schema>.<table>.<op>`.
    pub fn routing_key(&self) -> String {
        dotted(&[&self.schema, &self.table, self.op.as_str()])
    }
}

/// `parts` joined by dots, in one allocation of the exact size (`format!`
/// grows its buffer as it writes; this is once per change).
pub fn dotted(parts: &[&str]) -> String {
    let len = parts.iter().map(|part| part.len() + 1).sum::<usize>();
    let mut out = String::with_capacity(len.saturating_sub(1));
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        out.push_str(part);
    }
    out
}

#[cfg(test)]
impl ChangeEvent {
    /// A change of `public.<table>` without key or rows, for the tests of
    /// what counts changes (the capture's sink, the metrics).
    pub(crate) fn bare(table: &str, op: Op, commit_time: PgTimestamp) -> ChangeEvent {
        ChangeEvent {
            id: EventId {
                commit_lsn: Lsn(0x100),
                ordinal: 0,
            },
            op,
            schema: Arc::from("public"),
            table: Arc::from(table),
            key: None,
            new: None,
            old: None,
            changed: None,
            unchanged_toast: vec![],
            lsn: Lsn(0xF0),
            commit_lsn: Lsn(0x100),
            xid: 7,
            commit_time,
        }
    }
}

#[cfg(test)]
mod tests {
    /// xorshift64*, for the comparisons with `core::fmt`, chrono and
    /// serde_json in the submodules' tests.
    pub(super) fn random_u64s(count: usize) -> impl Iterator<Item = u64> {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        (0..count).map(move |_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_F491_4F6C_DD1D)
        })
    }
}
