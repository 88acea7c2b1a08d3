//! A change as the fan-out holds it: the routing header plus the exact bytes.
//!
//! [`Change::parse`] reads only what routing, dedupe and the snapshot
//! hand-off need ([`EventHeader`]: id, op, schema, table, key, xid), plus
//! `commit_time` for the lag metric, in one pass that also checks the
//! whole body is JSON, and keeps the body's own
//! bytes, so the `change` payload a browser receives is the RabbitMQ body
//! byte for byte; nothing is ever re-serialized or copied.
//!
//! It does not validate the rest of the event against the contract: that is
//! the producer's job (`event::ChangeEvent::to_json`).

use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::error::Category;

use crate::event::{EventId, Op, PgTimestamp};

use super::subscription::{canonical_json, RowKey};

/// The fields of a change event the fan-out routes by. Unknown fields are
/// ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct EventHeader {
    pub id: EventId,
    pub op: Op,
    pub schema: String,
    pub table: String,
    #[serde(default)]
    pub key: Option<serde_json::Value>,
    pub xid: u32,
    /// Only measured, never required: a missing or unreadable
    /// `commit_time` leaves the change as it is, unmeasured.
    #[serde(default)]
    pub commit_time: CommitTime,
}

/// `commit_time` if it is an RFC 3339 timestamp, else `None`; any JSON
/// value is accepted (the fan-out routes by the other fields, and a body
/// it could route is not refused for a field it only measures).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitTime(pub Option<PgTimestamp>);

impl<'de> Deserialize<'de> for CommitTime {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct AnyValue;
        impl<'de> Visitor<'de> for AnyValue {
            type Value = CommitTime;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<CommitTime, E> {
                Ok(CommitTime(PgTimestamp::parse(text)))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<CommitTime, E> {
                Ok(CommitTime(None))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<CommitTime, E> {
                Ok(CommitTime(None))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<CommitTime, E> {
                Ok(CommitTime(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<CommitTime, E> {
                Ok(CommitTime(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<CommitTime, E> {
                Ok(CommitTime(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<CommitTime, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(CommitTime(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<CommitTime, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(CommitTime(None))
            }
        }
        deserializer.deserialize_any(AnyValue)
    }
}

/// Why a RabbitMQ body is not a change event.
#[derive(Debug, thiserror::Error)]
pub enum MalformedChange {
    #[error("body is not UTF-8: {0}")]
    Utf8(#[from] std::string::FromUtf8Error),
    #[error("body is not a JSON value: {0}")]
    Json(serde_json::Error),
    #[error("body lacks a field the fan-out needs (id, op, schema, table, xid) or has one of the wrong type: {0}")]
    Header(serde_json::Error),
    #[error("key must be a JSON object or null")]
    Key,
}

/// One change event ready to fan out.
#[derive(Debug)]
pub struct Change {
    pub id: EventId,
    pub op: Op,
    pub xid: u32,
    /// `schema.table`, the name clients subscribe by.
    pub table: String,
    /// Canonical form of `key` for row subscriptions; `None` when the event
    /// has no key (`truncate`).
    pub row: Option<RowKey>,
    /// When its transaction committed, if the body says so readably.
    pub commit_time: Option<PgTimestamp>,
    /// The event exactly as received, without surrounding whitespace
    /// (see [`Change::raw`]).
    raw: String,
}

impl Change {
    /// Parses a RabbitMQ body. The bytes are kept as they are.
    pub fn parse(body: Vec<u8>) -> Result<Change, MalformedChange> {
        Change::parse_or_return(body).map_err(|(e, _)| e)
    }

    /// [`Change::parse`], handing the body back when it is not a change
    /// event (the consumer dead-letters it unchanged).
    pub fn parse_or_return(body: Vec<u8>) -> Result<Change, (MalformedChange, Vec<u8>)> {
        let text = match String::from_utf8(body) {
            Ok(text) => text,
            Err(e) => {
                let bytes = e.as_bytes().to_vec();
                return Err((MalformedChange::Utf8(e), bytes));
            }
        };
        let header = match read_header(&text) {
            Ok(header) => header,
            Err(e) => return Err((e, text.into_bytes())),
        };
        let table = crate::event::dotted(&[&header.schema, &header.table]);
        let row = match &header.key {
            None | Some(serde_json::Value::Null) => None,
            Some(key @ serde_json::Value::Object(_)) => Some(RowKey {
                table: table.clone(),
                key: canonical_json(key),
            }),
            Some(_) => return Err((MalformedChange::Key, text.into_bytes())),
        };
        Ok(Change {
            id: header.id,
            op: header.op,
            xid: header.xid,
            table,
            row,
            commit_time: header.commit_time.0,
            raw: without_surrounding_whitespace(text),
        })
    }

    /// The event exactly as received: one JSON value, without the
    /// whitespace a body may have around it.
    pub fn raw(&self) -> &str {
        &self.raw
    }

    /// Approximate heap size, for the buffer's memory gauge.
    pub fn heap_size(&self) -> usize {
        self.raw.len()
            + self.table.len()
            + self.row.as_ref().map_or(0, |r| r.table.len() + r.key.len())
    }
}

/// The header of a body. Deserializing it reads the whole text (serde_json
/// checks the values it skips and that nothing follows), so a body that is
/// not JSON is told apart from one that lacks a field.
fn read_header(text: &str) -> Result<EventHeader, MalformedChange> {
    serde_json::from_str(text).map_err(|e| match e.classify() {
        Category::Data => MalformedChange::Header(e),
        Category::Syntax | Category::Eof | Category::Io => MalformedChange::Json(e),
    })
}

/// `text` without JSON whitespace at either end; the same allocation when
/// there is none (walcast's own bodies have none).
fn without_surrounding_whitespace(text: String) -> String {
    let is_space = |c: char| matches!(c, ' ' | '\t' | '\n' | '\r');
    let trimmed = text.trim_matches(is_space);
    if trimmed.len() == text.len() {
        text
    } else {
        trimmed.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &str = r#"{"id":"00000000016B3800-0000000003","op":"update","schema":"public","table":"orders","key":{"id":42},"new":{"id":42,"price":"12.50"},"old":null,"unchanged_toast":[],"lsn":"0/16B3748","commit_lsn":"0/16B3800","xid":1234,"commit_time":"2026-11-22T05:04:10.580065Z"}"#;

    #[test]
    fn keeps_the_body_byte_for_byte() {
        let change = Change::parse(BODY.as_bytes().to_vec()).unwrap();
        assert_eq!(change.raw(), BODY);
        assert_eq!(change.id.to_string(), "00000000016B3800-0000000003");
        assert_eq!(change.op, Op::Update);
        assert_eq!(change.xid, 1234);
        assert_eq!(change.table, "public.orders");
        assert_eq!(change.row.unwrap().key, r#"{"id":42}"#);
    }

    #[test]
    fn reads_commit_time_and_never_refuses_a_body_for_it() {
        let change = Change::parse(BODY.as_bytes().to_vec()).unwrap();
        assert_eq!(
            change.commit_time,
            PgTimestamp::parse("2026-11-22T05:04:10.580065Z")
        );
        assert!(change.commit_time.is_some());
        let commit_time = r#""commit_time":"2026-11-22T05:04:10.580065Z""#;
        for other in [
            "",
            r#","commit_time":null"#,
            r#","commit_time":12"#,
            r#","commit_time":"yesterday""#,
            r#","commit_time":["2026-11-22T05:04:10Z"]"#,
            r#","commit_time":{"at":"2026-11-22T05:04:10Z"}"#,
        ] {
            let body = BODY.replace(&format!(",{commit_time}"), other);
            let change =
                Change::parse(body.clone().into_bytes()).unwrap_or_else(|e| panic!("{body}: {e}"));
            assert_eq!(change.commit_time, None, "{body}");
            assert_eq!(change.raw(), body);
        }
    }

    #[test]
    fn whitespace_around_the_body_is_not_kept_and_trailing_text_is_refused() {
        let change = Change::parse(format!(" \n{BODY}\r\n\t").into_bytes()).unwrap();
        assert_eq!(change.raw(), BODY);
        let trailing = Change::parse(format!("{BODY} x").into_bytes()).unwrap_err();
        assert!(matches!(trailing, MalformedChange::Json(_)), "{trailing}");
        let broken = Change::parse(BODY.replace("\"new\":{", "\"new\":[").into_bytes());
        assert!(
            matches!(broken, Err(MalformedChange::Json(_))),
            "a syntax error after the header fields is still found"
        );
        let wrong_type = Change::parse(BODY.replace("1234", "\"1234\"").into_bytes());
        assert!(matches!(wrong_type, Err(MalformedChange::Header(_))));
    }

    #[test]
    fn truncate_has_no_row() {
        let body = BODY
            .replace(r#""key":{"id":42}"#, r#""key":null"#)
            .replace("update", "truncate");
        let change = Change::parse(body.into_bytes()).unwrap();
        assert!(change.row.is_none());
    }

    #[test]
    fn malformed_bodies_are_errors() {
        let cases: [&[u8]; 6] = [
            b"",
            b"\xff\xfe",
            b"not json",
            br#"{"id":"garbage","op":"insert","schema":"s","table":"t","xid":1}"#,
            br#"{"id":"00000000016B3800-0000000003","op":"insert","schema":"s","table":"t"}"#,
            br#"{"id":"00000000016B3800-0000000003","op":"insert","schema":"s","table":"t","xid":1,"key":[1]}"#,
        ];
        for body in cases {
            assert!(Change::parse(body.to_vec()).is_err(), "{body:?}");
            let (_, returned) = Change::parse_or_return(body.to_vec()).unwrap_err();
            assert_eq!(returned, body, "the body comes back unchanged");
        }
    }
}
