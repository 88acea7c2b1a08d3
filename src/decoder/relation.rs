//! The decoder's caches of what the stream and the catalog said about
//! tables and types: relations (columns, their value kinds, the key),
//! custom type names, domain aliases, and which tables to capture.
//!
//! Sans-io like the rest of the decoder: the caller reads the catalog and
//! hands the answers in ([`Decoder::set_tables`],
//! [`Decoder::set_key_columns`], [`Decoder::set_type_aliases`]); the
//! Relation and Type messages arrive through [`Decoder::decode`]. It does
//! not decode changes.

use std::sync::Arc;

use super::message::{RelationMessage, TypeMessage};
use super::value::{Scalar, ValueKind};
use super::{Column, Decoder, Relation, RelationInfo};
use crate::event::json;

impl Decoder {
    /// Captures only these `(schema, table)` pairs: the changes of every
    /// other relation come back as [`Decoded::Filtered`] (or in a
    /// truncate's `filtered` list) without being decoded. Applies to
    /// Relation messages from now on; set it before streaming.
    pub fn set_tables<S: Into<String>>(&mut self, tables: impl IntoIterator<Item = (S, S)>) {
        self.tables = Some(
            tables
                .into_iter()
                .map(|(schema, table)| (schema.into(), table.into()))
                .collect(),
        );
    }

    /// Tells the decoder that type `oid` takes the JSON of type `base`: a
    /// domain decodes as its base type (a domain over int4 is a number),
    /// an array of domains as an array of the base type. pgoutput names
    /// only the domain, so the caller resolves it from the catalog
    /// (`pg_type.typbasetype`, through domains over domains). Applies to
    /// relations already cached too. Later calls add to earlier ones.
    pub fn set_type_aliases(&mut self, aliases: impl IntoIterator<Item = (u32, u32)>) {
        for (oid, base) in aliases {
            // An alias to itself would mean nothing; built-in oids keep
            // their own kind.
            if oid == base || ValueKind::builtin(oid).is_some() {
                continue;
            }
            if self.type_aliases.insert(oid, base) != Some(base) {
                self.refresh_column_kinds(oid);
            }
        }
    }

    /// Sets the columns that form `key` for relation `oid` (its primary key).
    ///
    /// They are the key only while the replica identity Postgres flags in
    /// the Relation message contains them all (REPLICA IDENTITY DEFAULT or
    /// FULL, or an index that includes them), or flags no column at all
    /// (NOTHING: then only inserts are sent, and the new row holds them);
    /// otherwise the flagged columns are the key, because a delete's old
    /// tuple carries only those. So `key` follows what Postgres sends when
    /// the primary key is dropped or the replica identity moves to another
    /// index.
    ///
    /// The setting outlives later Relation messages for the same oid: call
    /// again on every Relation message (an empty list removes it, after a
    /// primary key was dropped). Names the relation does not have are
    /// ignored.
    pub fn set_key_columns(&mut self, oid: u32, columns: Vec<String>) {
        if columns.is_empty() {
            self.key_columns.remove(&oid);
        } else {
            self.key_columns.insert(oid, columns);
        }
        if let Some(relation) = self.relations.get_mut(&oid) {
            mark_key_columns(&mut relation.columns, self.key_columns.get(&oid));
        }
    }

    /// The cached description of relation `oid`, if a Relation message for
    /// it has arrived.
    pub fn relation(&self, oid: u32) -> Option<&RelationInfo> {
        self.relations.get(&oid).map(|relation| &relation.info)
    }

    pub(super) fn cache_relation(&mut self, message: RelationMessage<'_>) -> RelationInfo {
        let schema = if message.namespace.is_empty() {
            "pg_catalog"
        } else {
            message.namespace
        };
        let mut columns: Vec<Column> = message
            .columns
            .iter()
            .map(|column| Column {
                name: Arc::from(column.name),
                json_key: json::object_key(column.name),
                type_oid: column.type_oid,
                kind: self.value_kind(column.type_oid),
                is_identity: column.is_identity,
                is_key: false,
            })
            .collect();
        mark_key_columns(&mut columns, self.key_columns.get(&message.oid));
        let captured = self.tables.as_ref().is_none_or(|tables| {
            // Borrowed lookup without building two Strings per message.
            tables
                .iter()
                .any(|(s, t)| s.as_str() == schema && t.as_str() == message.name)
        });
        let info = RelationInfo {
            oid: message.oid,
            schema: Arc::from(schema),
            table: Arc::from(message.name),
            replica_identity: char::from(message.replica_identity),
            captured,
        };
        let json_keys_len = columns.iter().map(|column| column.json_key.len()).sum();
        self.relations.insert(
            message.oid,
            Relation {
                info: info.clone(),
                columns,
                json_keys_len,
            },
        );
        info
    }

    pub(super) fn cache_type(&mut self, message: TypeMessage<'_>) {
        self.type_names.insert(message.oid, Arc::from(message.name));
        // Postgres sends Type before the Relation that uses it, but a type
        // redefined later must still reach relations cached earlier.
        self.refresh_column_kinds(message.oid);
    }

    /// Recomputes the kind of every cached column of type `type_oid`.
    pub(super) fn refresh_column_kinds(&mut self, type_oid: u32) {
        let kind = self.value_kind(type_oid);
        for relation in self.relations.values_mut() {
            for column in &mut relation.columns {
                if column.type_oid == type_oid {
                    column.kind = kind;
                }
            }
        }
    }

    /// Built-in kinds win; a domain takes its base type's kind; other
    /// custom types go by their name (`_name` is an array), else text.
    pub(super) fn value_kind(&self, type_oid: u32) -> ValueKind {
        let resolved = self.type_aliases.get(&type_oid).copied();
        let builtin =
            ValueKind::builtin(type_oid).or_else(|| resolved.and_then(ValueKind::builtin));
        builtin.unwrap_or_else(|| {
            let name = resolved
                .and_then(|base| self.type_names.get(&base))
                .or_else(|| self.type_names.get(&type_oid));
            match name {
                Some(name) => ValueKind::custom(name),
                None => ValueKind::Scalar(Scalar::Text),
            }
        })
    }
}

/// `key` is the primary key set with `set_key_columns` while the replica
/// identity covers it (or flags nothing), else the replica identity as
/// flagged; kept in table order either way.
fn mark_key_columns(columns: &mut [Column], key_columns: Option<&Vec<String>>) {
    let in_key =
        |names: &Vec<String>, column: &Column| names.iter().any(|name| **name == *column.name);
    let primary_key = key_columns.filter(|names| {
        let no_identity = columns.iter().all(|column| !column.is_identity);
        no_identity
            || columns
                .iter()
                .filter(|column| in_key(names, column))
                .all(|column| column.is_identity)
    });
    for column in columns.iter_mut() {
        column.is_key = match primary_key {
            Some(names) => in_key(names, column),
            None => column.is_identity,
        };
    }
}
