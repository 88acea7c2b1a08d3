//! The pgoutput wire messages (protocol version 1), parsed without copying.
//!
//! [`Message::parse`] turns the payload of one XLogData into a [`Message`]
//! that borrows from the input: names are `&str` slices and tuples stay raw
//! byte ranges ([`TupleData`]) whose columns are read on demand, so parsing
//! allocates nothing except the column list of a (rare) Relation message.
//! Every read is bounds-checked; a short, long or inconsistent message is a
//! [`DecodeError`] naming the message, the field and the byte offset.
//!
//! This module knows the byte layout only. It does not know what a relation's
//! columns mean, does not convert values and keeps no state: that is the
//! decoder's job (`super`). Streaming (protocol v2) and two-phase (v3)
//! messages are rejected as unsupported, because walcast never asks for them.

use crate::event::{Lsn, PgTimestamp};

use super::{Begin, Commit, DecodeError};

/// One pgoutput message, borrowing from the bytes it was parsed from.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Message<'a> {
    Begin(Begin),
    Commit(Commit),
    Origin,
    Relation(RelationMessage<'a>),
    Type(TypeMessage<'a>),
    Insert {
        relation_oid: u32,
        new: TupleData<'a>,
    },
    Update {
        relation_oid: u32,
        old: Option<OldTuple<'a>>,
        new: TupleData<'a>,
    },
    Delete {
        relation_oid: u32,
        old: OldTuple<'a>,
    },
    Truncate {
        relation_oids: OidList<'a>,
    },
    /// A logical decoding message (`pg_logical_emit_message`), sent
    /// because walcast asks for `messages 'true'`.
    Logical(LogicalMessage<'a>),
}

/// The content of a logical decoding message ('M').
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LogicalMessage<'a> {
    /// Flag 1: written inside a transaction (between its Begin and
    /// Commit), not on its own.
    pub transactional: bool,
    /// Where the message is in the WAL.
    pub lsn: Lsn,
    pub prefix: &'a str,
    pub content: &'a [u8],
}

/// A table description: sent before the first change of a table in a
/// session and again whenever its definition changed.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RelationMessage<'a> {
    pub oid: u32,
    /// Empty for `pg_catalog`, as the protocol sends it.
    pub namespace: &'a str,
    pub name: &'a str,
    /// `relreplident`: `d` default (primary key), `n` nothing, `f` full,
    /// `i` index.
    pub replica_identity: u8,
    pub columns: Vec<RelationColumn<'a>>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RelationColumn<'a> {
    /// Flag 1: the column is part of the replica identity.
    pub is_identity: bool,
    pub name: &'a str,
    pub type_oid: u32,
}

/// A custom type description, sent before a Relation message that uses it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TypeMessage<'a> {
    pub oid: u32,
    /// Empty for `pg_catalog`, as the protocol sends it.
    pub namespace: &'a str,
    pub name: &'a str,
}

/// The old row of an Update or Delete.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum OldTuple<'a> {
    /// 'K': the replica-identity columns; every other column is sent as null.
    Key(TupleData<'a>),
    /// 'O': the whole old row (REPLICA IDENTITY FULL).
    Full(TupleData<'a>),
}

impl<'a> OldTuple<'a> {
    pub fn tuple(&self) -> &TupleData<'a> {
        match self {
            OldTuple::Key(tuple) | OldTuple::Full(tuple) => tuple,
        }
    }

    pub fn is_full(&self) -> bool {
        matches!(self, OldTuple::Full(_))
    }

    /// How errors name it.
    pub fn label(&self) -> &'static str {
        match self {
            OldTuple::Key(_) => "key tuple",
            OldTuple::Full(_) => "old tuple",
        }
    }
}

/// One column of a tuple, as sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TupleValue<'a> {
    Null,
    /// A TOASTed value that did not change and was not resent.
    UnchangedToast,
    /// The value's text form (not yet checked to be UTF-8).
    Text(&'a [u8]),
}

/// A validated TupleData: `column_count` values laid out in `bytes`.
///
/// Parsing checks the whole layout once, so [`TupleData::values`] can walk it
/// again without error paths; keeping the raw range instead of a `Vec` of
/// values is what keeps message parsing allocation-free.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TupleData<'a> {
    column_count: usize,
    bytes: &'a [u8],
}

impl<'a> TupleData<'a> {
    pub fn column_count(&self) -> usize {
        self.column_count
    }

    /// The size of the tuple's values on the wire.
    pub fn byte_len(&self) -> usize {
        self.bytes.len()
    }

    pub fn values(&self) -> TupleValues<'a> {
        TupleValues {
            remaining: self.column_count,
            bytes: self.bytes,
        }
    }
}

/// Iterator over the values of a validated [`TupleData`].
#[derive(Debug, Clone)]
pub(crate) struct TupleValues<'a> {
    remaining: usize,
    bytes: &'a [u8],
}

impl<'a> Iterator for TupleValues<'a> {
    type Item = TupleValue<'a>;

    fn next(&mut self) -> Option<TupleValue<'a>> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        // The layout was validated by `parse_tuple`; the `?`s below only
        // stop the walk early instead of panicking should that ever change.
        let (&kind, rest) = self.bytes.split_first()?;
        match kind {
            b'n' => {
                self.bytes = rest;
                Some(TupleValue::Null)
            }
            b'u' => {
                self.bytes = rest;
                Some(TupleValue::UnchangedToast)
            }
            _ => {
                let len_bytes = rest.get(..4)?;
                let len = i32::from_be_bytes(len_bytes.try_into().ok()?);
                let len = usize::try_from(len).ok()?;
                let value = rest.get(4..4 + len)?;
                self.bytes = rest.get(4 + len..)?;
                Some(TupleValue::Text(value))
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

/// The relation OIDs of a Truncate message, 4 bytes each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OidList<'a> {
    bytes: &'a [u8],
}

impl OidList<'_> {
    pub fn len(&self) -> usize {
        self.bytes.len() / 4
    }

    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.bytes
            .chunks_exact(4)
            .map(|chunk| u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]))
    }
}

impl<'a> Message<'a> {
    /// Parses one complete pgoutput message. Trailing bytes are an error:
    /// they would mean we misread the layout, and guessing is worse than
    /// stopping.
    pub fn parse(data: &'a [u8]) -> Result<Message<'a>, DecodeError> {
        let Some(&tag) = data.first() else {
            return Err(DecodeError::Malformed("empty pgoutput message".into()));
        };
        let mut cursor = Cursor::new(data, message_name(tag));
        cursor.pos = 1;
        let message = match tag {
            b'B' => Message::Begin(Begin {
                final_lsn: Lsn(cursor.u64("final LSN")?),
                commit_time: cursor.timestamp("commit timestamp")?,
                xid: cursor.u32("xid")?,
            }),
            b'C' => {
                cursor.u8("flags")?;
                Message::Commit(Commit {
                    commit_lsn: Lsn(cursor.u64("commit LSN")?),
                    end_lsn: Lsn(cursor.u64("end LSN")?),
                    commit_time: cursor.timestamp("commit timestamp")?,
                })
            }
            b'O' => {
                cursor.u64("origin commit LSN")?;
                cursor.cstr("origin name")?;
                Message::Origin
            }
            b'R' => Message::Relation(parse_relation(&mut cursor)?),
            b'Y' => Message::Type(TypeMessage {
                oid: cursor.u32("type oid")?,
                namespace: cursor.cstr("type namespace")?,
                name: cursor.cstr("type name")?,
            }),
            b'I' => {
                let relation_oid = cursor.u32("relation oid")?;
                cursor.expect_tag("new tuple marker", b"N")?;
                Message::Insert {
                    relation_oid,
                    new: parse_tuple(&mut cursor, "new tuple")?,
                }
            }
            b'U' => {
                let relation_oid = cursor.u32("relation oid")?;
                let old = match cursor.expect_tag("tuple marker", b"KON")? {
                    b'K' => Some(OldTuple::Key(parse_tuple(&mut cursor, "key tuple")?)),
                    b'O' => Some(OldTuple::Full(parse_tuple(&mut cursor, "old tuple")?)),
                    _ => None,
                };
                if old.is_some() {
                    cursor.expect_tag("new tuple marker", b"N")?;
                }
                Message::Update {
                    relation_oid,
                    old,
                    new: parse_tuple(&mut cursor, "new tuple")?,
                }
            }
            b'D' => {
                let relation_oid = cursor.u32("relation oid")?;
                let old = match cursor.expect_tag("old tuple marker", b"KO")? {
                    b'K' => OldTuple::Key(parse_tuple(&mut cursor, "key tuple")?),
                    _ => OldTuple::Full(parse_tuple(&mut cursor, "old tuple")?),
                };
                Message::Delete { relation_oid, old }
            }
            b'T' => {
                let count = cursor.u32("relation count")?;
                cursor.u8("options")?;
                let len = usize::try_from(count)
                    .ok()
                    .and_then(|count| count.checked_mul(4))
                    .ok_or_else(|| cursor.error("relation oids", "relation count overflows"))?;
                Message::Truncate {
                    relation_oids: OidList {
                        bytes: cursor.bytes(len, "relation oids")?,
                    },
                }
            }
            b'M' => {
                let flags = cursor.u8("flags")?;
                let lsn = Lsn(cursor.u64("message LSN")?);
                let prefix = cursor.cstr("prefix")?;
                let len = cursor.i32("content length")?;
                let len = usize::try_from(len)
                    .map_err(|_| cursor.error("content length", format!("negative ({len})")))?;
                Message::Logical(LogicalMessage {
                    transactional: flags & 1 != 0,
                    lsn,
                    prefix,
                    content: cursor.bytes(len, "content")?,
                })
            }
            b'S' | b'E' | b'c' | b'A' | b'b' | b'P' | b'K' | b'r' | b'p' => {
                return Err(DecodeError::Unsupported(format!(
                    "{} message ('{}'): walcast uses pgoutput protocol version 1 \
                     without streaming or two-phase commit",
                    message_name(tag),
                    char::from(tag)
                )));
            }
            _ => {
                return Err(DecodeError::Malformed(format!(
                    "unknown pgoutput message type 0x{tag:02X} ({:?}), {} bytes",
                    char::from(tag),
                    data.len()
                )));
            }
        };
        cursor.finish()?;
        Ok(message)
    }
}

fn parse_relation<'a>(cursor: &mut Cursor<'a>) -> Result<RelationMessage<'a>, DecodeError> {
    let oid = cursor.u32("relation oid")?;
    let namespace = cursor.cstr("namespace")?;
    let name = cursor.cstr("relation name")?;
    let replica_identity = cursor.u8("replica identity")?;
    let count = cursor.i16("column count")?;
    let count = usize::try_from(count)
        .map_err(|_| cursor.error("column count", format!("negative ({count})")))?;
    // Each column takes at least 10 bytes; bounding the allocation by what
    // the message can hold keeps a lying count from reserving memory.
    let mut columns = Vec::with_capacity(count.min(cursor.remaining() / 10));
    for _ in 0..count {
        let flags = cursor.u8("column flags")?;
        let name = cursor.cstr("column name")?;
        let type_oid = cursor.u32("column type oid")?;
        cursor.i32("column type modifier")?;
        columns.push(RelationColumn {
            is_identity: flags & 1 != 0,
            name,
            type_oid,
        });
    }
    Ok(RelationMessage {
        oid,
        namespace,
        name,
        replica_identity,
        columns,
    })
}

fn parse_tuple<'a>(
    cursor: &mut Cursor<'a>,
    field: &'static str,
) -> Result<TupleData<'a>, DecodeError> {
    let count = cursor.i16(field)?;
    let column_count = usize::try_from(count)
        .map_err(|_| cursor.error(field, format!("negative column count ({count})")))?;
    let start = cursor.pos;
    for column in 0..column_count {
        match cursor.u8(field)? {
            b'n' | b'u' => {}
            b't' => {
                let len = cursor.i32(field)?;
                let len = usize::try_from(len).map_err(|_| {
                    cursor.error(field, format!("column {column}: negative length ({len})"))
                })?;
                cursor.bytes(len, field)?;
            }
            b'b' => {
                return Err(DecodeError::Unsupported(format!(
                    "{} message: {field} column {column} is in binary format; \
                     walcast requests text format only",
                    cursor.message
                )));
            }
            other => {
                return Err(cursor.error(
                    field,
                    format!(
                        "column {column}: unknown value kind 0x{other:02X} \
                         (expected 'n', 'u' or 't')"
                    ),
                ));
            }
        }
    }
    Ok(TupleData {
        column_count,
        bytes: cursor.buf.get(start..cursor.pos).unwrap_or_default(),
    })
}

fn message_name(tag: u8) -> &'static str {
    match tag {
        b'B' => "Begin",
        b'C' => "Commit",
        b'O' => "Origin",
        b'R' => "Relation",
        b'Y' => "Type",
        b'I' => "Insert",
        b'U' => "Update",
        b'D' => "Delete",
        b'T' => "Truncate",
        b'M' => "Message",
        b'S' => "Stream Start",
        b'E' => "Stream Stop",
        b'c' => "Stream Commit",
        b'A' => "Stream Abort",
        b'b' => "Begin Prepare",
        b'P' => "Prepare",
        b'K' => "Commit Prepared",
        b'r' => "Rollback Prepared",
        b'p' => "Stream Prepare",
        _ => "unknown",
    }
}

/// A bounds-checked reader over one message; errors name the message, the
/// field being read and the byte offset.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    message: &'static str,
}

impl<'a> Cursor<'a> {
    fn new(buf: &'a [u8], message: &'static str) -> Self {
        Cursor {
            buf,
            pos: 0,
            message,
        }
    }

    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn error(&self, field: &str, problem: impl std::fmt::Display) -> DecodeError {
        DecodeError::Malformed(format!(
            "{} message, {field} at byte {}: {problem}",
            self.message, self.pos
        ))
    }

    // The readers below run for every field of every tuple: they are
    // inlined, and building an error is kept out of line (`truncated`).

    #[inline]
    fn bytes(&mut self, len: usize, field: &str) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(len)
            .filter(|&end| end <= self.buf.len());
        match end.and_then(|end| self.buf.get(self.pos..end)) {
            Some(bytes) => {
                self.pos += len;
                Ok(bytes)
            }
            None => Err(self.truncated(len, field)),
        }
    }

    #[cold]
    #[inline(never)]
    fn truncated(&self, len: usize, field: &str) -> DecodeError {
        self.error(
            field,
            format!(
                "message truncated: needed {len} bytes, {} left",
                self.remaining()
            ),
        )
    }

    #[inline]
    fn array<const N: usize>(&mut self, field: &str) -> Result<[u8; N], DecodeError> {
        let pos = self.pos;
        match self.buf.get(pos..).and_then(<[u8]>::first_chunk::<N>) {
            Some(bytes) => {
                self.pos = pos + N;
                Ok(*bytes)
            }
            None => Err(self.truncated(N, field)),
        }
    }

    #[inline]
    fn u8(&mut self, field: &str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }

    #[inline]
    fn i16(&mut self, field: &str) -> Result<i16, DecodeError> {
        Ok(i16::from_be_bytes(self.array(field)?))
    }

    #[inline]
    fn i32(&mut self, field: &str) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array(field)?))
    }

    #[inline]
    fn u32(&mut self, field: &str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    #[inline]
    fn i64(&mut self, field: &str) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array(field)?))
    }

    #[inline]
    fn u64(&mut self, field: &str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    /// A Postgres-epoch timestamp that can also be expressed in Unix
    /// microseconds, which `PgTimestamp`'s conversions rely on; anything
    /// beyond (about 292,000 years out) is garbage, not a commit time.
    fn timestamp(&mut self, field: &str) -> Result<PgTimestamp, DecodeError> {
        let micros = self.i64(field)?;
        let timestamp = PgTimestamp(micros);
        match micros.checked_add(PgTimestamp(0).unix_micros()) {
            Some(_) => Ok(timestamp),
            None => {
                self.pos -= 8;
                Err(self.error(field, format!("out of range ({micros} µs)")))
            }
        }
    }

    /// Reads one byte that must be one of `allowed`.
    fn expect_tag(&mut self, field: &str, allowed: &[u8]) -> Result<u8, DecodeError> {
        let tag = self.u8(field)?;
        if allowed.contains(&tag) {
            Ok(tag)
        } else {
            self.pos -= 1;
            let expected: Vec<String> = allowed
                .iter()
                .map(|&b| format!("'{}'", char::from(b)))
                .collect();
            Err(self.error(
                field,
                format!("got 0x{tag:02X}, expected {}", expected.join(" or ")),
            ))
        }
    }

    /// A NUL-terminated UTF-8 string.
    fn cstr(&mut self, field: &str) -> Result<&'a str, DecodeError> {
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        let Some(len) = rest.iter().position(|&b| b == 0) else {
            return Err(self.error(field, "string not NUL-terminated"));
        };
        let text = std::str::from_utf8(&rest[..len])
            .map_err(|e| self.error(field, format!("invalid UTF-8: {e}")))?;
        self.pos += len + 1;
        Ok(text)
    }

    fn finish(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            extra => Err(self.error("end", format!("{extra} unexpected trailing bytes"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tuple_values_walk_what_parse_validated() {
        let bytes = [
            0, 3, b'n', b'u', b't', 0, 0, 0, 2, b'h', b'i', //
        ];
        let mut cursor = Cursor::new(&bytes, "Insert");
        let tuple = parse_tuple(&mut cursor, "new tuple").unwrap();
        assert_eq!(tuple.column_count(), 3);
        let values: Vec<_> = tuple.values().collect();
        assert_eq!(
            values,
            [
                TupleValue::Null,
                TupleValue::UnchangedToast,
                TupleValue::Text(b"hi")
            ]
        );
        assert_eq!(cursor.remaining(), 0);
    }

    #[test]
    fn errors_name_message_field_and_offset() {
        let err = Message::parse(&[b'B', 0, 0, 0]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "malformed pgoutput message: Begin message, final LSN at byte 1: \
             message truncated: needed 8 bytes, 3 left"
        );
    }

    #[test]
    fn negative_lengths_are_rejected() {
        let mut insert = vec![b'I', 0, 0, 0, 1, b'N', 0, 1, b't'];
        insert.extend_from_slice(&(-1i32).to_be_bytes());
        let err = Message::parse(&insert).unwrap_err().to_string();
        assert!(err.contains("negative length (-1)"), "{err}");

        let err = Message::parse(&[b'I', 0, 0, 0, 1, b'N', 0xFF, 0xFF])
            .unwrap_err()
            .to_string();
        assert!(err.contains("negative column count (-1)"), "{err}");
    }

    #[test]
    fn huge_counts_do_not_allocate_or_panic() {
        let mut truncate = vec![b'T'];
        truncate.extend_from_slice(&u32::MAX.to_be_bytes());
        truncate.push(0);
        assert!(Message::parse(&truncate).is_err());

        let mut relation = vec![b'R', 0, 0, 0, 1, 0, b't', 0, b'd'];
        relation.extend_from_slice(&i16::MAX.to_be_bytes());
        assert!(Message::parse(&relation).is_err());
    }

    #[test]
    fn commit_times_beyond_unix_microseconds_are_rejected() {
        let mut begin = vec![b'B'];
        begin.extend_from_slice(&1u64.to_be_bytes());
        begin.extend_from_slice(&i64::MAX.to_be_bytes());
        begin.extend_from_slice(&1u32.to_be_bytes());
        let err = Message::parse(&begin).unwrap_err().to_string();
        assert!(
            err.contains("commit timestamp at byte 9: out of range"),
            "{err}"
        );
    }

    #[test]
    fn binary_values_are_unsupported() {
        let bytes = [b'I', 0, 0, 0, 1, b'N', 0, 1, b'b', 0, 0, 0, 0];
        let err = Message::parse(&bytes).unwrap_err();
        assert!(matches!(err, DecodeError::Unsupported(_)), "{err}");
    }

    #[test]
    fn streaming_messages_are_unsupported() {
        let err = Message::parse(&[b'S', 0, 0, 0, 1, 1]).unwrap_err();
        assert!(err.to_string().contains("Stream Start"), "{err}");
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut begin = vec![b'B'];
        begin.extend_from_slice(&[0; 20]);
        assert!(Message::parse(&begin).is_ok());
        begin.push(0);
        let err = Message::parse(&begin).unwrap_err().to_string();
        assert!(err.contains("1 unexpected trailing bytes"), "{err}");
    }
}
