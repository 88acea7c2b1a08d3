//! pgoutput decoding, sans-io: bytes in, change events out.
//!
//! [`Decoder::decode`] takes the payload of one XLogData message (a pgoutput
//! protocol version 1 message) and returns what it meant: a transaction
//! boundary, a relation description, or a typed [`ChangeEvent`] in the
//! contract's shape (`docs/protocol.md` section 1). The decoder keeps
//! the state the protocol relies on: the relation cache (Relation messages
//! are sent once per table per session and again after ALTER TABLE), the
//! custom type cache (Type messages) and the current transaction, which
//! gives every change its `xid`, commit LSN, commit time and ordinal.
//!
//! Three things the protocol does not say come from the caller, who reads
//! them from the catalog: which tables to capture ([`Decoder::set_tables`];
//! the changes of any other table come back as [`Decoded::Filtered`], never
//! decoded), the primary key ([`Decoder::set_key_columns`]), and the base
//! type of a domain ([`Decoder::set_type_aliases`]; pgoutput names only the
//! domain).
//!
//! It never does I/O and never panics on input: anything malformed, truncated
//! or inconsistent with the cached relation is a [`DecodeError`]. It does not
//! know about replication connections, slots or feedback (that is `wal`), nor
//! how events are delivered.
//!
//! Rows are written as JSON while the tuple is read: each value's text goes
//! through `value` straight into the row's JSON object ([`Row`]), behind the
//! column's `"name":` escaped once when the Relation message arrived, so a
//! change costs a few allocations (one per row) however many columns it has.
//!
//! - `message`: the wire layout, parsed without copying.
//! - `output`: what a message meant ([`Decoded`]) or why it could not be
//!   decoded ([`DecodeError`]).
//! - `relation`: the relation and type caches (Relation and Type messages,
//!   and what the caller adds from the catalog).
//! - `value`: a column's text form → its JSON by type.
//! - `array`: array literals.
//! - `read`: rows a backfill read with SQL (text values and type oids) →
//!   `read` events, typed exactly as a change's rows.

mod array;
mod message;
mod output;
mod read;
mod relation;
mod value;

#[cfg(test)]
mod tests;
/// Byte builders for the tests here and in `capture::backfill`.
#[cfg(test)]
pub(crate) mod wire_builders;

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::Arc;

use crate::event::{ChangeEvent, ColumnName, EventId, Lsn, Op, Row, RowWriter};

use message::{Message, OldTuple, TupleData, TupleValue};
pub use output::{Begin, Commit, DecodeError, Decoded, RelationInfo, WalMessage};
pub use read::{ReadColumn, ReadTable};
use value::ValueKind;

/// The pgoutput decoder with its relation and type caches.
#[derive(Debug, Default)]
pub struct Decoder {
    relations: HashMap<u32, Relation>,
    /// `set_key_columns` overrides, kept apart from `relations` so they
    /// survive a Relation message replacing the cached description.
    key_columns: HashMap<u32, Vec<String>>,
    /// Custom types from Type messages: oid → type name.
    type_names: HashMap<u32, Arc<str>>,
    /// Domains (and arrays of domains) → the type whose JSON they take.
    type_aliases: HashMap<u32, u32>,
    /// `(schema, table)` of the captured tables; `None` captures every one.
    tables: Option<HashSet<(String, String)>>,
    transaction: Option<Transaction>,
}

#[derive(Debug)]
struct Transaction {
    begin: Begin,
    next_ordinal: u32,
}

#[derive(Debug)]
struct Relation {
    info: RelationInfo,
    columns: Vec<Column>,
    /// The bytes of every column's `json_key`, to size row buffers.
    json_keys_len: usize,
}

#[derive(Debug)]
struct Column {
    name: ColumnName,
    /// `"name":`, escaped once here rather than in every row.
    json_key: Box<[u8]>,
    type_oid: u32,
    kind: ValueKind,
    /// Flagged as part of the replica identity in the Relation message.
    is_identity: bool,
    /// Part of the event's `key`.
    is_key: bool,
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Decodes one pgoutput message that arrived in an XLogData whose
    /// WAL start was `wal_start`.
    pub fn decode(&mut self, wal_start: Lsn, data: &[u8]) -> Result<Decoded, DecodeError> {
        match Message::parse(data)? {
            Message::Begin(begin) => {
                // A Begin inside an open transaction is accepted: after a
                // reconnect Postgres replays the interrupted transaction
                // from its Begin, and the half we saw is simply abandoned.
                self.transaction = Some(Transaction {
                    begin,
                    next_ordinal: 0,
                });
                Ok(Decoded::Begin(begin))
            }
            Message::Commit(commit) => {
                let transaction = self
                    .transaction
                    .take()
                    .ok_or(DecodeError::OutsideTransaction { message: "Commit" })?;
                if commit.commit_lsn != transaction.begin.final_lsn {
                    // Event ids were built from Begin's final LSN; a
                    // different commit LSN would make them wrong.
                    return Err(DecodeError::Malformed(format!(
                        "Commit message: commit LSN {} differs from the final LSN {} \
                         announced by Begin (xid {})",
                        commit.commit_lsn, transaction.begin.final_lsn, transaction.begin.xid
                    )));
                }
                Ok(Decoded::Commit(commit))
            }
            Message::Relation(relation) => Ok(Decoded::Relation(self.cache_relation(relation))),
            Message::Type(type_message) => {
                let oid = type_message.oid;
                self.cache_type(type_message);
                let known =
                    ValueKind::builtin(oid).is_some() || self.type_aliases.contains_key(&oid);
                Ok(if known {
                    Decoded::Other
                } else {
                    Decoded::Type { oid }
                })
            }
            Message::Insert { relation_oid, new } => {
                let change = self.begin_change("Insert", relation_oid)?;
                if !change.relation.info.captured {
                    return change.filtered(Op::Insert);
                }
                let event = change.upsert(Op::Insert, wal_start, None, new)?;
                Ok(Decoded::Change(event))
            }
            Message::Update {
                relation_oid,
                old,
                new,
            } => {
                let change = self.begin_change("Update", relation_oid)?;
                if !change.relation.info.captured {
                    return change.filtered(Op::Update);
                }
                let event = change.upsert(Op::Update, wal_start, old, new)?;
                Ok(Decoded::Change(event))
            }
            Message::Delete { relation_oid, old } => {
                let change = self.begin_change("Delete", relation_oid)?;
                if !change.relation.info.captured {
                    return change.filtered(Op::Delete);
                }
                Ok(Decoded::Change(change.delete(wal_start, old)?))
            }
            Message::Truncate { relation_oids } => {
                let transaction =
                    self.transaction
                        .as_mut()
                        .ok_or(DecodeError::OutsideTransaction {
                            message: "Truncate",
                        })?;
                // Look every relation up before numbering any event, so a
                // failure leaves the ordinal sequence untouched.
                let relations = relation_oids
                    .iter()
                    .map(|oid| {
                        self.relations
                            .get(&oid)
                            .ok_or(DecodeError::UnknownRelation {
                                message: "Truncate",
                                oid,
                            })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let mut events = Vec::with_capacity(relation_oids.len());
                let mut filtered = Vec::new();
                for relation in relations {
                    let mut change = Change {
                        message: "Truncate",
                        transaction: &mut *transaction,
                        relation,
                    };
                    if relation.info.captured {
                        events.push(change.event(Op::Truncate, wal_start, RowParts::default())?);
                    } else {
                        change.take_ordinal()?;
                        filtered.push(relation.info.clone());
                    }
                }
                Ok(Decoded::Truncate { events, filtered })
            }
            Message::Origin => Ok(Decoded::Other),
            Message::Logical(message) => Ok(Decoded::Message(WalMessage {
                transactional: message.transactional,
                lsn: message.lsn,
                prefix: message.prefix.to_owned(),
                content: message.content.to_vec(),
            })),
        }
    }

    /// Whether a Begin has been decoded without its Commit yet.
    pub fn in_transaction(&self) -> bool {
        self.transaction.is_some()
    }

    fn begin_change(
        &mut self,
        message: &'static str,
        relation_oid: u32,
    ) -> Result<Change<'_>, DecodeError> {
        let transaction = self
            .transaction
            .as_mut()
            .ok_or(DecodeError::OutsideTransaction { message })?;
        let relation = self
            .relations
            .get(&relation_oid)
            .ok_or(DecodeError::UnknownRelation {
                message,
                oid: relation_oid,
            })?;
        Ok(Change {
            message,
            transaction,
            relation,
        })
    }
}

/// Adds `column` to `to` with the value `from` holds at `span` (already
/// converted); returns where it is in `to`.
fn copy_value(
    to: &mut RowWriter,
    column: &Column,
    from: &RowWriter,
    span: Range<usize>,
) -> Range<usize> {
    let out = to.column(&column.json_key);
    let start = out.len();
    out.extend_from_slice(from.value(span));
    start..to.position()
}

/// The row-valued parts of an event.
#[derive(Default)]
struct RowParts {
    key: Option<Row>,
    new: Option<Row>,
    old: Option<Row>,
    changed: Option<Vec<ColumnName>>,
    unchanged_toast: Vec<ColumnName>,
}

/// One change being decoded: the open transaction and the cached relation.
struct Change<'d> {
    message: &'static str,
    transaction: &'d mut Transaction,
    relation: &'d Relation,
}

impl Change<'_> {
    /// Insert (no old tuple) and Update. The key comes from the new row.
    fn upsert(
        self,
        op: Op,
        lsn: Lsn,
        old: Option<OldTuple<'_>>,
        new: TupleData<'_>,
    ) -> Result<ChangeEvent, DecodeError> {
        self.check_arity(&new, "new tuple")?;
        if let Some(old) = &old {
            self.check_arity(old.tuple(), old.label())?;
        }
        let old_is_full = old.as_ref().is_some_and(OldTuple::is_full);
        let old_tuple = old.as_ref().map(OldTuple::tuple);

        let mut key = self.key_writer();
        let mut new_row = self.row_writer(&new);
        let mut old_row = old_tuple.map(|tuple| self.row_writer(tuple));
        let mut changed = old_is_full.then(Vec::new);
        let mut unchanged_toast = Vec::new();
        let mut old_values = old_tuple.map(|tuple| tuple.values());

        for (column, new_value) in self.relation.columns.iter().zip(new.values()) {
            let old_value = old_values.as_mut().and_then(Iterator::next);
            // In a key tuple the non-identity columns are placeholders.
            let old_json = match (old_row.as_mut(), old_value) {
                (Some(old_row), Some(value)) if old_is_full || column.is_identity => {
                    self.write_value(old_row, column, value)?
                }
                _ => None,
            };
            let new_json = match new_value {
                TupleValue::UnchangedToast => {
                    unchanged_toast.push(column.name.clone());
                    // Only a whole old row carries the real value.
                    match (old_row.as_ref(), old_json) {
                        (Some(old_row), Some(old_json)) if old_is_full => {
                            Some(copy_value(&mut new_row, column, old_row, old_json))
                        }
                        _ => None,
                    }
                }
                value => self.write_value(&mut new_row, column, value)?,
            };
            if let (Some(changed), Some(old_value)) = (changed.as_mut(), old_value) {
                let differs = match (old_value, new_value) {
                    (_, TupleValue::UnchangedToast) => false,
                    // Not resent in the old row but sent in the new one: we
                    // cannot compare, and reporting it beats hiding a change.
                    (TupleValue::UnchangedToast, _) => true,
                    (old_value, new_value) => old_value != new_value,
                };
                if differs {
                    changed.push(column.name.clone());
                }
            }
            if let (true, Some(new_json)) = (column.is_key, new_json) {
                copy_value(&mut key, column, &new_row, new_json);
            }
        }

        self.event(
            op,
            lsn,
            RowParts {
                key: Some(key.finish()),
                new: Some(new_row.finish()),
                old: old_row.map(RowWriter::finish),
                changed,
                unchanged_toast,
            },
        )
    }

    /// Delete: `old` and the key come from the key or old tuple.
    fn delete(self, lsn: Lsn, old: OldTuple<'_>) -> Result<ChangeEvent, DecodeError> {
        let (tuple, is_full) = (old.tuple(), old.is_full());
        self.check_arity(tuple, old.label())?;
        let mut key = self.key_writer();
        let mut old_row = self.row_writer(tuple);
        for (column, value) in self.relation.columns.iter().zip(tuple.values()) {
            // A key tuple holds real values for identity columns only; a key
            // column outside the replica identity cannot be known from it.
            if !is_full && !column.is_identity {
                continue;
            }
            let Some(old_json) = self.write_value(&mut old_row, column, value)? else {
                continue;
            };
            if column.is_key {
                copy_value(&mut key, column, &old_row, old_json);
            }
        }
        self.event(
            Op::Delete,
            lsn,
            RowParts {
                key: Some(key.finish()),
                old: Some(old_row.finish()),
                ..RowParts::default()
            },
        )
    }

    /// A writer for a row of `tuple`, sized so that it rarely grows: a
    /// value's JSON is about as long as its text plus the 5 bytes of kind
    /// and length that framed it on the wire.
    fn row_writer(&self, tuple: &TupleData<'_>) -> RowWriter {
        RowWriter::with_capacity(tuple.byte_len() + self.relation.json_keys_len + 2)
    }

    fn key_writer(&self) -> RowWriter {
        RowWriter::with_capacity(64)
    }

    /// A change of a relation outside the captured set: it takes its
    /// ordinal and nothing else is decoded.
    fn filtered(mut self, op: Op) -> Result<Decoded, DecodeError> {
        self.take_ordinal()?;
        Ok(Decoded::Filtered {
            relation: self.relation.info.clone(),
            op,
        })
    }

    /// The next ordinal of the transaction.
    fn take_ordinal(&mut self) -> Result<u32, DecodeError> {
        let ordinal = self.transaction.next_ordinal;
        self.transaction.next_ordinal = ordinal.checked_add(1).ok_or_else(|| {
            DecodeError::Unsupported(format!(
                "more than {} changes in transaction {}",
                u32::MAX,
                self.transaction.begin.xid
            ))
        })?;
        Ok(ordinal)
    }

    /// Numbers the change inside its transaction; only a change that decoded
    /// completely takes an ordinal.
    fn event(mut self, op: Op, lsn: Lsn, rows: RowParts) -> Result<ChangeEvent, DecodeError> {
        let begin = self.transaction.begin;
        let ordinal = self.take_ordinal()?;
        let info = &self.relation.info;
        Ok(ChangeEvent {
            id: EventId {
                commit_lsn: begin.final_lsn,
                ordinal,
            },
            op,
            schema: info.schema.clone(),
            table: info.table.clone(),
            key: rows.key,
            new: rows.new,
            old: rows.old,
            changed: rows.changed,
            unchanged_toast: rows.unchanged_toast,
            lsn,
            commit_lsn: begin.final_lsn,
            xid: begin.xid,
            commit_time: begin.commit_time,
        })
    }

    fn check_arity(&self, tuple: &TupleData<'_>, which: &'static str) -> Result<(), DecodeError> {
        let expected = self.relation.columns.len();
        let actual = tuple.column_count();
        if actual == expected {
            return Ok(());
        }
        let info = &self.relation.info;
        Err(DecodeError::ColumnCountMismatch {
            message: self.message,
            oid: info.oid,
            schema: info.schema.clone(),
            table: info.table.clone(),
            tuple: which,
            expected,
            actual,
        })
    }

    /// Writes the column and its value to `row`; returns where the value's
    /// JSON is in `row`, or `None` for an unchanged TOAST value (not sent,
    /// nothing written).
    fn write_value(
        &self,
        row: &mut RowWriter,
        column: &Column,
        value: TupleValue<'_>,
    ) -> Result<Option<Range<usize>>, DecodeError> {
        let text = match value {
            TupleValue::UnchangedToast => return Ok(None),
            TupleValue::Null => None,
            TupleValue::Text(text) => Some(text),
        };
        let out = row.column(&column.json_key);
        let start = out.len();
        match text {
            None => out.extend_from_slice(b"null"),
            Some(text) => value::write_json(column.kind, text, out).map_err(|error| {
                let info = &self.relation.info;
                DecodeError::Malformed(format!(
                    "{} message for {}.{}, column {}: value is not valid UTF-8 ({error})",
                    self.message, info.schema, info.table, column.name
                ))
            })?,
        }
        Ok(Some(start..row.position()))
    }
}
