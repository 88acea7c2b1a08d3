//! The JSON writer: the contract's encoding of a [`ChangeEvent`]
//! ([`ChangeEvent::to_json`], and [`ChangeEvent::write_oversize_json`] for
//! the `oversize` stub, the same writer without the rows), the serde impl
//! that embeds those bytes, and the value helpers the decoder and [`Row`]
//! write with.
//!
//! Values are written exactly as `serde_json` writes them, so the
//! hand-written encoding stays byte for byte what `serde_json` produced for
//! the same event: numbers through serde_json's own formatter, strings with
//! its escape table.
//!
//! It does not parse JSON, and it does not decide what an event contains
//! (that is the decoder) or when a stub replaces it (that is `publisher`).
//!
//! [`Row`]: super::Row

use serde::{Serialize, Serializer};
use serde_json::ser::{CompactFormatter, Formatter as _};
use serde_json::value::RawValue;

use super::{ChangeEvent, ColumnName};

impl ChangeEvent {
    /// The contract's JSON encoding, the only one walcast produces.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_json(&mut out);
        out
    }

    /// Appends the JSON encoding to `out` (reuses the caller's buffer).
    /// Field order and formatting are the contract's, section 1.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        self.write_json_as(out, false);
    }

    /// The contract's `oversize` stub of this event: what is published
    /// instead of an event too large to publish. `new` and `old` are `null`
    /// and `"oversize": true` is added; every other field (`id`, `key`,
    /// `changed`, `unchanged_toast`, positions, …) is the event's own, so a
    /// client knows which row to re-read over HTTP.
    pub fn write_oversize_json(&self, out: &mut Vec<u8>) {
        self.write_json_as(out, true);
    }

    /// About the size of [`ChangeEvent::write_json`]'s output (escaping
    /// aside), for allocating a body once: the fixed fields (ids,
    /// positions, time and keys) take under 256 bytes.
    pub fn json_size_hint(&self) -> usize {
        let mut size = 256 + self.schema.len() + self.table.len();
        for row in [&self.key, &self.new, &self.old].into_iter().flatten() {
            size += row.as_bytes().len();
        }
        for name in self.changed.iter().flatten().chain(&self.unchanged_toast) {
            size += name.len() + 3;
        }
        size
    }

    /// The one writer of both encodings; `oversize` leaves out the rows.
    fn write_json_as(&self, out: &mut Vec<u8>, oversize: bool) {
        let (new, old) = if oversize {
            (&None, &None)
        } else {
            (&self.new, &self.old)
        };
        let rows = [&self.key, new, old];
        let row_bytes: usize = rows
            .iter()
            .flat_map(|row| row.as_ref())
            .map(|row| row.as_bytes().len())
            .sum();
        out.reserve(256 + row_bytes);

        out.extend_from_slice(b"{\"id\":\"");
        out.extend_from_slice(self.id.text().as_bytes());
        out.extend_from_slice(b"\",\"op\":\"");
        out.extend_from_slice(self.op.as_str().as_bytes());
        out.extend_from_slice(b"\",\"schema\":");
        write_str(out, &self.schema);
        out.extend_from_slice(b",\"table\":");
        write_str(out, &self.table);
        for (field, row) in [b",\"key\":" as &[u8], b",\"new\":", b",\"old\":"]
            .into_iter()
            .zip(rows)
        {
            out.extend_from_slice(field);
            match row {
                Some(row) => out.extend_from_slice(row.as_bytes()),
                None => out.extend_from_slice(b"null"),
            }
        }
        if let Some(changed) = &self.changed {
            out.extend_from_slice(b",\"changed\":");
            write_names(out, changed);
        }
        out.extend_from_slice(b",\"unchanged_toast\":");
        write_names(out, &self.unchanged_toast);
        out.extend_from_slice(b",\"lsn\":\"");
        out.extend_from_slice(self.lsn.text().as_bytes());
        out.extend_from_slice(b"\",\"commit_lsn\":\"");
        out.extend_from_slice(self.commit_lsn.text().as_bytes());
        out.extend_from_slice(b"\",\"xid\":");
        write_u64(out, u64::from(self.xid));
        out.extend_from_slice(b",\"commit_time\":");
        match self.commit_time.rfc3339() {
            Some(text) => {
                out.push(b'"');
                out.extend_from_slice(text.as_bytes());
                out.push(b'"');
            }
            None => write_str(out, &self.commit_time.to_string()),
        }
        if oversize {
            out.extend_from_slice(b",\"oversize\":true");
        }
        out.push(b'}');
    }
}

impl Serialize for ChangeEvent {
    /// The same bytes as [`ChangeEvent::to_json`], for an event embedded in
    /// another serde value.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let json = String::from_utf8(self.to_json()).map_err(serde::ser::Error::custom)?;
        embed_json(&json, serializer)
    }
}

/// Serializes already encoded JSON as it is (through serde_json's raw value).
pub(super) fn embed_json<S: Serializer>(json: &str, serializer: S) -> Result<S::Ok, S::Error> {
    let raw: &RawValue = serde_json::from_str(json).map_err(serde::ser::Error::custom)?;
    raw.serialize(serializer)
}

/// serde_json's escape table: `\"`, `\\`, the short escapes of
/// backspace, tab, newline, form feed and carriage return, `\u00XX`
/// (lower-case hex) for the other control characters, nothing else.
const ESCAPE: [u8; 256] = {
    let mut table = [0; 256];
    let mut byte = 0;
    while byte < 0x20 {
        table[byte] = b'u';
        byte += 1;
    }
    table[0x08] = b'b';
    table[0x09] = b't';
    table[0x0A] = b'n';
    table[0x0C] = b'f';
    table[0x0D] = b'r';
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table
};

/// A JSON string.
pub(crate) fn write_str(out: &mut Vec<u8>, text: &str) {
    write_escaped(out, text.as_bytes());
}

/// A JSON string of ASCII text given as bytes (a row must stay UTF-8).
pub(crate) fn write_ascii_str(out: &mut Vec<u8>, text: &[u8]) {
    debug_assert!(text.is_ascii());
    write_escaped(out, text);
}

/// Escaping only ever splits the text at ASCII bytes, so UTF-8 in is
/// UTF-8 out.
fn write_escaped(out: &mut Vec<u8>, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut run_start = 0;
    for (i, &byte) in bytes.iter().enumerate() {
        let escape = ESCAPE[usize::from(byte)];
        if escape == 0 {
            continue;
        }
        out.extend_from_slice(&bytes[run_start..i]);
        if escape == b'u' {
            let hex = [HEX[usize::from(byte >> 4)], HEX[usize::from(byte & 0xF)]];
            out.extend_from_slice(&[b'\\', b'u', b'0', b'0', hex[0], hex[1]]);
        } else {
            out.extend_from_slice(&[b'\\', escape]);
        }
        run_start = i + 1;
    }
    out.extend_from_slice(&bytes[run_start..]);
    out.push(b'"');
}

/// `"name":`, the key of a column in a row object; the decoder escapes
/// it once per relation instead of once per row.
pub(crate) fn object_key(name: &str) -> Box<[u8]> {
    let mut key = Vec::with_capacity(name.len() + 3);
    write_str(&mut key, name);
    key.push(b':');
    key.into_boxed_slice()
}

/// A JSON array of strings.
pub(crate) fn write_names(out: &mut Vec<u8>, names: &[ColumnName]) {
    out.push(b'[');
    for (i, name) in names.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(out, name);
    }
    out.push(b']');
}

pub(crate) fn write_bool(out: &mut Vec<u8>, value: bool) {
    out.extend_from_slice(if value { b"true" } else { b"false" });
}

pub(crate) fn write_i64(out: &mut Vec<u8>, value: i64) {
    written(CompactFormatter.write_i64(out, value));
}

pub(crate) fn write_u64(out: &mut Vec<u8>, value: u64) {
    written(CompactFormatter.write_u64(out, value));
}

/// NaN and the infinities as `null`, as serde_json writes them (the
/// decoder never produces them: it keeps those as strings).
pub(crate) fn write_f64(out: &mut Vec<u8>, value: f64) {
    if value.is_finite() {
        written(CompactFormatter.write_f64(out, value));
    } else {
        out.extend_from_slice(b"null");
    }
}

fn written(result: std::io::Result<()>) {
    result.expect("writing to a Vec cannot fail");
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::event::tests::random_u64s;
    use crate::event::{Datum, EventId, Lsn, Op, PgTimestamp, Row};

    #[test]
    fn event_serializes_in_contract_field_order() {
        let name: ColumnName = Arc::from("id");
        let event = ChangeEvent {
            id: EventId {
                commit_lsn: Lsn(0x16B3800),
                ordinal: 0,
            },
            op: Op::Delete,
            schema: Arc::from("public"),
            table: Arc::from("orders"),
            key: Some(Row::new([(name.clone(), Datum::Int(42))])),
            new: None,
            old: Some(Row::new([(name, Datum::Int(42))])),
            changed: None,
            unchanged_toast: vec![],
            lsn: Lsn(0x16B3748),
            commit_lsn: Lsn(0x16B3800),
            xid: 1234,
            commit_time: PgTimestamp(0),
        };
        let json = String::from_utf8(event.to_json()).unwrap();
        assert_eq!(
            json,
            r#"{"id":"00000000016B3800-0000000000","op":"delete","schema":"public","table":"orders","key":{"id":42},"new":null,"old":{"id":42},"unchanged_toast":[],"lsn":"0/16B3748","commit_lsn":"0/16B3800","xid":1234,"commit_time":"2000-01-01T00:00:00.000000Z"}"#
        );
        assert_eq!(event.routing_key(), "public.orders.delete");
    }

    #[test]
    fn the_size_hint_covers_an_event_with_long_names_and_positions() {
        let names: Vec<ColumnName> = (0..40)
            .map(|i| Arc::from(format!("a_rather_long_column_name_{i}")))
            .collect();
        let row = |value: i64| Row::new(names.iter().map(|n| (n.clone(), Datum::Int(value))));
        let event = ChangeEvent {
            id: EventId {
                commit_lsn: Lsn(u64::MAX),
                ordinal: u32::MAX,
            },
            op: Op::Update,
            schema: Arc::from("a_schema_with_a_long_name"),
            table: Arc::from("and_a_table_with_a_longer_one"),
            key: Some(row(1)),
            new: Some(row(-1234567890)),
            old: Some(row(1234567890)),
            changed: Some(names[..20].to_vec()),
            unchanged_toast: names[20..].to_vec(),
            lsn: Lsn(u64::MAX),
            commit_lsn: Lsn(u64::MAX),
            xid: u32::MAX,
            commit_time: PgTimestamp(i64::MAX / 2),
        };
        let json = event.to_json();
        assert!(
            event.json_size_hint() >= json.len(),
            "hint {} for {} bytes",
            event.json_size_hint(),
            json.len()
        );
    }

    #[test]
    fn oversize_stub_keeps_everything_but_the_rows() {
        let name: ColumnName = Arc::from("id");
        let note: ColumnName = Arc::from("note");
        let big = "x".repeat(100);
        let event = ChangeEvent {
            id: EventId {
                commit_lsn: Lsn(0x16B3800),
                ordinal: 7,
            },
            op: Op::Update,
            schema: Arc::from("public"),
            table: Arc::from("orders"),
            key: Some(Row::new([(name.clone(), Datum::Int(42))])),
            new: Some(Row::new([
                (name.clone(), Datum::Int(42)),
                (note.clone(), Datum::Text(big.clone())),
            ])),
            old: Some(Row::new([
                (name, Datum::Int(42)),
                (note.clone(), Datum::Text(String::new())),
            ])),
            changed: Some(vec![note.clone()]),
            unchanged_toast: vec![Arc::from("blob")],
            lsn: Lsn(0x16B3748),
            commit_lsn: Lsn(0x16B3800),
            xid: 1234,
            commit_time: PgTimestamp(0),
        };
        let mut stub = Vec::new();
        event.write_oversize_json(&mut stub);
        assert_eq!(
            String::from_utf8(stub.clone()).unwrap(),
            r#"{"id":"00000000016B3800-0000000007","op":"update","schema":"public","table":"orders","key":{"id":42},"new":null,"old":null,"changed":["note"],"unchanged_toast":["blob"],"lsn":"0/16B3748","commit_lsn":"0/16B3800","xid":1234,"commit_time":"2000-01-01T00:00:00.000000Z","oversize":true}"#
        );
        // The full encoding is untouched and never carries the flag.
        let full = String::from_utf8(event.to_json()).unwrap();
        assert!(full.contains(&big) && !full.contains("oversize"), "{full}");
        // A stub parses as JSON with the flag and null rows.
        let value: serde_json::Value = serde_json::from_slice(&stub).unwrap();
        assert_eq!(value["oversize"], true);
        assert!(value["new"].is_null() && value["old"].is_null());

        // A truncate's key is null in the stub as in the event.
        let truncate = ChangeEvent {
            op: Op::Truncate,
            key: None,
            new: None,
            old: None,
            changed: None,
            unchanged_toast: vec![],
            ..event
        };
        let mut stub = Vec::new();
        truncate.write_oversize_json(&mut stub);
        assert_eq!(
            String::from_utf8(stub).unwrap(),
            r#"{"id":"00000000016B3800-0000000007","op":"truncate","schema":"public","table":"orders","key":null,"new":null,"old":null,"unchanged_toast":[],"lsn":"0/16B3748","commit_lsn":"0/16B3800","xid":1234,"commit_time":"2000-01-01T00:00:00.000000Z","oversize":true}"#
        );
    }

    #[test]
    fn strings_and_numbers_are_written_as_serde_json_writes_them() {
        let mut texts: Vec<String> = (0..=0x7F_u8).map(|b| char::from(b).to_string()).collect();
        texts.extend(
            [
                "",
                "plain",
                "a \"q\" \\ b\u{1}\u{1f}\u{7f}",
                "ü é 漢字 😀\u{2028}",
            ]
            .map(String::from),
        );
        // Escapes at every position of strings of every length up to 40.
        let specials = [
            '"', '\\', '\n', '\u{1}', '\u{1f}', ' ', '!', '#', '[', ']', '\u{7f}', 'é', '😀',
        ];
        texts.extend(random_u64s(20_000).map(|r| {
            let len = (r % 40) as usize;
            let mut text = "abcdefgh".repeat(5)[..len].to_owned();
            if len > 0 {
                let at = (r >> 8) as usize % len;
                let special = specials[(r >> 16) as usize % specials.len()];
                text.replace_range(at..at + 1, special.encode_utf8(&mut [0; 4]));
            }
            text
        }));
        for text in &texts {
            let mut out = Vec::new();
            write_str(&mut out, text);
            assert_eq!(out, serde_json::to_vec(text).unwrap(), "{text:?}");
        }
        let floats = [
            0.0,
            -0.0,
            1.5,
            0.1,
            1e308,
            -2.5e-310,
            1e-7,
            123456789.0,
            1e21,
            1e22,
        ];
        let randoms = random_u64s(10_000).map(f64::from_bits);
        for value in floats.into_iter().chain(randoms) {
            let mut out = Vec::new();
            write_f64(&mut out, value);
            assert_eq!(out, serde_json::to_vec(&value).unwrap(), "{value:e}");
        }
        for value in random_u64s(10_000) {
            let mut out = Vec::new();
            write_i64(&mut out, value as i64);
            write_u64(&mut out, value);
            let expected = format!("{}{}", value as i64, value);
            assert_eq!(out, expected.as_bytes());
        }
    }

    #[test]
    fn serde_embeds_the_same_json() {
        let event = ChangeEvent {
            id: EventId {
                commit_lsn: Lsn(0x16B3800),
                ordinal: 3,
            },
            op: Op::Update,
            schema: Arc::from("public"),
            table: Arc::from("or\"ders"),
            key: Some(Row::new([("id", Datum::Int(42))])),
            new: Some(Row::new([
                ("id", Datum::Int(42)),
                ("s", Datum::Text("b".into())),
            ])),
            old: Some(Row::new([
                ("id", Datum::Int(42)),
                ("s", Datum::Text("a".into())),
            ])),
            changed: Some(vec![Arc::from("s")]),
            unchanged_toast: vec![Arc::from("body")],
            lsn: Lsn(0x16B3748),
            commit_lsn: Lsn(0x16B3800),
            xid: u32::MAX,
            commit_time: PgTimestamp(i64::MAX),
        };
        let json = String::from_utf8(event.to_json()).unwrap();
        assert_eq!(
            json,
            r#"{"id":"00000000016B3800-0000000003","op":"update","schema":"public","table":"or\"ders","key":{"id":42},"new":{"id":42,"s":"b"},"old":{"id":42,"s":"a"},"changed":["s"],"unchanged_toast":["body"],"lsn":"0/16B3748","commit_lsn":"0/16B3800","xid":4294967295,"commit_time":"9223372036854775807"}"#
        );
        assert_eq!(serde_json::to_string(&event).unwrap(), json);
        #[derive(Serialize)]
        struct Wrapped<'a> {
            event: &'a ChangeEvent,
        }
        let wrapped = serde_json::to_string(&Wrapped { event: &event }).unwrap();
        assert_eq!(wrapped, format!(r#"{{"event":{json}}}"#));
    }
}
