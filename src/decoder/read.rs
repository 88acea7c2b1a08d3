//! Rows a backfill read with SQL → `read` events (contract section 1,
//! "Backfill").
//!
//! A backfill chunk arrives inside a watermark message as text values (the
//! types' output functions, exactly what pgoutput sends in a tuple) with
//! each column's type. This module types them with the same value
//! conversion as a change's rows, so a row reads the same in a `read` event
//! as in an `insert`, and numbers the events inside the transaction that
//! carried the watermark. It does not parse the watermark or decide which
//! rows are emitted (that is `capture::backfill`).

use std::sync::Arc;

use super::value::ValueKind;
use super::{
    copy_value, Change, Column, DecodeError, Decoder, Relation, RelationInfo, RowParts, TupleValue,
};
use crate::event::{json, ChangeEvent, Lsn, Op, RowWriter};

/// A column of a table a backfill reads, as the catalog describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadColumn<'a> {
    pub name: &'a str,
    pub type_oid: u32,
    /// `pg_type.typname`: types the stream never described (an enum, an
    /// array of one) go by their name, as they would after a Type message.
    pub type_name: &'a str,
    /// Part of the primary key (the event's `key`).
    pub is_key: bool,
}

/// A table's columns prepared for [`Decoder::read_event`]: kinds resolved
/// and JSON keys escaped once per chunk, not once per row.
#[derive(Debug)]
pub struct ReadTable(Relation);

impl Decoder {
    /// Prepares `schema.table` with `columns` (in table order) for
    /// [`Decoder::read_event`].
    pub fn read_table(&self, schema: &str, table: &str, columns: &[ReadColumn<'_>]) -> ReadTable {
        let columns: Vec<Column> = columns
            .iter()
            .map(|column| {
                let oid = column.type_oid;
                let known = ValueKind::builtin(oid).is_some()
                    || self.type_aliases.contains_key(&oid)
                    || self.type_names.contains_key(&oid);
                Column {
                    name: Arc::from(column.name),
                    json_key: json::object_key(column.name),
                    type_oid: oid,
                    kind: if known {
                        self.value_kind(oid)
                    } else {
                        ValueKind::custom(column.type_name)
                    },
                    is_identity: column.is_key,
                    is_key: column.is_key,
                }
            })
            .collect();
        let json_keys_len = columns.iter().map(|column| column.json_key.len()).sum();
        ReadTable(Relation {
            info: RelationInfo {
                oid: 0,
                schema: Arc::from(schema),
                table: Arc::from(table),
                replica_identity: 'd',
                captured: true,
            },
            columns,
            json_keys_len,
        })
    }

    /// The `read` event of one row of `table` (`values` in column order,
    /// `None` for NULL), at `lsn`, the watermark message's position. It takes
    /// the next ordinal of the open transaction, the one that carried the
    /// watermark, so its id never collides with a change of that
    /// transaction.
    pub fn read_event(
        &mut self,
        table: &ReadTable,
        lsn: Lsn,
        values: &[Option<&str>],
    ) -> Result<ChangeEvent, DecodeError> {
        let message = "backfill watermark";
        let transaction = self
            .transaction
            .as_mut()
            .ok_or(DecodeError::OutsideTransaction { message })?;
        let relation = &table.0;
        let change = Change {
            message,
            transaction,
            relation,
        };
        if values.len() != relation.columns.len() {
            return Err(DecodeError::ColumnCountMismatch {
                message,
                oid: 0,
                schema: relation.info.schema.clone(),
                table: relation.info.table.clone(),
                tuple: "backfill row",
                expected: relation.columns.len(),
                actual: values.len(),
            });
        }
        let text_len: usize = values.iter().flatten().map(|value| value.len() + 4).sum();
        let mut new_row = RowWriter::with_capacity(text_len + relation.json_keys_len + 2);
        let mut key = change.key_writer();
        for (column, value) in relation.columns.iter().zip(values) {
            let value = match value {
                None => TupleValue::Null,
                Some(text) => TupleValue::Text(text.as_bytes()),
            };
            let span = change.write_value(&mut new_row, column, value)?;
            if let (true, Some(span)) = (column.is_key, span) {
                copy_value(&mut key, column, &new_row, span);
            }
        }
        change.event(
            Op::Read,
            lsn,
            RowParts {
                key: Some(key.finish()),
                new: Some(new_row.finish()),
                ..RowParts::default()
            },
        )
    }
}
