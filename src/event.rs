//! The change event: the one type every stage after the decoder speaks.
//!
//! A [`ChangeEvent`] is one committed row change (or one truncated table).
//! It has exactly one JSON encoding, the one in `docs/protocol.md`
//! section 1, produced by [`ChangeEvent::to_json`]; every hop (stdout of
//! `walcast tail`, the RabbitMQ body, the Socket.IO payload) carries those same
//! bytes. An event too large to publish goes out as its `oversize` stub
//! ([`ChangeEvent::write_oversize_json`], the same writer without the rows).
//! This module also holds the small value types the event is made of:
//! [`Lsn`], [`EventId`], [`Row`], [`Datum`] and [`PgTimestamp`].
//!
//! The encoding is written by hand rather than derived, because it is the
//! hot path of the whole pipeline: a [`Row`] holds its columns already
//! encoded as a JSON object (the decoder writes it straight from the
//! pgoutput tuple, with each column's `"name":` escaped once per relation),
//! and ids, LSNs and timestamps are formatted into fixed-size buffers.
//! Strings are escaped and numbers formatted exactly as `serde_json` does
//! (the `json` helpers below), and the [`Serialize`] impls embed these same
//! bytes, so an event serialized through serde is byte for byte `to_json`.
//!
//! It does not decode anything (that is `decoder`) and does not know about
//! RabbitMQ or Socket.IO.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;

/// A PostgreSQL write-ahead-log position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    pub const ZERO: Lsn = Lsn(0);

    /// The 16-digit upper-case hex form used inside event ids.
    pub fn to_hex16(self) -> String {
        Ascii::<16>::from(hex16(self.0)).as_str().to_owned()
    }

    /// Postgres's own `X/X` text form, e.g. `0/16B3748`: each half in
    /// upper-case hex without leading zeros.
    fn text(self) -> Ascii<17> {
        let mut text = Ascii::default();
        let (high, low) = ((self.0 >> 32) as u32, self.0 as u32);
        text.push_hex(high);
        text.push(b"/");
        text.push_hex(low);
        text
    }
}

impl fmt::Display for Lsn {
    /// Postgres's own `X/X` text form, e.g. `0/16B3748`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text().as_str())
    }
}

/// Why a string is not an LSN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid LSN {input:?}: expected the form X/X with hex digits, e.g. 0/16B3748")]
pub struct ParseLsnError {
    input: String,
}

impl FromStr for Lsn {
    type Err = ParseLsnError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseLsnError {
            input: s.to_owned(),
        };
        let (hi, lo) = s.split_once('/').ok_or_else(err)?;
        let valid = |part: &str| {
            !part.is_empty() && part.len() <= 8 && part.bytes().all(|b| b.is_ascii_hexdigit())
        };
        if !valid(hi) || !valid(lo) {
            return Err(err());
        }
        let hi = u64::from_str_radix(hi, 16).map_err(|_| err())?;
        let lo = u64::from_str_radix(lo, 16).map_err(|_| err())?;
        Ok(Lsn((hi << 32) | lo))
    }
}

impl Serialize for Lsn {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Lsn {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The deterministic id of a change: the commit LSN of its transaction and
/// its ordinal inside that transaction. The text form
/// `<16 hex digits>-<10 digits>` sorts as a string in commit order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventId {
    pub commit_lsn: Lsn,
    pub ordinal: u32,
}

impl EventId {
    /// `<16 upper-case hex digits>-<10 decimal digits>`.
    fn text(self) -> Ascii<27> {
        let mut text = Ascii::from(hex16(self.commit_lsn.0));
        text.push(b"-");
        let mut digits = [b'0'; 10];
        let mut ordinal = self.ordinal;
        for digit in digits.iter_mut().rev() {
            *digit = b'0' + (ordinal % 10) as u8;
            ordinal /= 10;
        }
        text.push(&digits);
        text
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text().as_str())
    }
}

/// Why a string is not an event id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid event id {input:?}: expected <16 hex digits>-<10 digits>, e.g. 00000000016B3800-0000000003")]
pub struct ParseEventIdError {
    input: String,
}

impl FromStr for EventId {
    type Err = ParseEventIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseEventIdError {
            input: s.chars().take(64).collect(),
        };
        let (lsn, ordinal) = s.split_once('-').ok_or_else(err)?;
        if lsn.len() != 16
            || !lsn.bytes().all(|b| b.is_ascii_hexdigit())
            || ordinal.len() != 10
            || !ordinal.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(err());
        }
        Ok(EventId {
            commit_lsn: Lsn(u64::from_str_radix(lsn, 16).map_err(|_| err())?),
            ordinal: ordinal.parse().map_err(|_| err())?,
        })
    }
}

impl Serialize for EventId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for EventId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A Postgres timestamp: microseconds since 2000-01-01 00:00:00 UTC, the
/// unit pgoutput and the replication protocol use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PgTimestamp(pub i64);

/// Seconds between the Unix epoch and the Postgres epoch (2000-01-01).
const PG_EPOCH_UNIX_SECS: i64 = 946_684_800;

impl PgTimestamp {
    pub fn now() -> Self {
        let micros = chrono::Utc::now().timestamp_micros();
        PgTimestamp(micros - PG_EPOCH_UNIX_SECS * 1_000_000)
    }

    /// Microseconds since the Unix epoch.
    pub fn unix_micros(self) -> i64 {
        self.0.saturating_add(PG_EPOCH_UNIX_SECS * 1_000_000)
    }

    pub fn to_chrono(self) -> Option<chrono::DateTime<chrono::Utc>> {
        chrono::DateTime::from_timestamp_micros(self.unix_micros())
    }

    /// `YYYY-MM-DDTHH:MM:SS.ffffffZ` for the years 0 to 9999, the ones
    /// written with exactly four digits; `None` for the others.
    fn rfc3339(self) -> Option<Ascii<27>> {
        let micros = self.unix_micros();
        let seconds = micros.div_euclid(1_000_000);
        let fraction = micros.rem_euclid(1_000_000) as u32;
        let (year, month, day) = civil_from_days(seconds.div_euclid(86_400));
        let second_of_day = seconds.rem_euclid(86_400) as u32;
        let year = u32::try_from(year).ok().filter(|&year| year <= 9999)?;
        let mut text = Ascii::default();
        text.push_digits(year, 4);
        text.push(b"-");
        text.push_digits(month, 2);
        text.push(b"-");
        text.push_digits(day, 2);
        text.push(b"T");
        text.push_digits(second_of_day / 3600, 2);
        text.push(b":");
        text.push_digits(second_of_day / 60 % 60, 2);
        text.push(b":");
        text.push_digits(second_of_day % 60, 2);
        text.push(b".");
        text.push_digits(fraction, 6);
        text.push(b"Z");
        Some(text)
    }
}

/// The proleptic Gregorian (year, month, day) of a day count since
/// 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_from_march + 2) / 5 + 1) as u32;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

impl fmt::Display for PgTimestamp {
    /// RFC 3339 in UTC with microseconds, e.g. `2026-11-22T05:04:10.580065Z`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(text) = self.rfc3339() {
            return f.write_str(text.as_str());
        }
        // Beyond four-digit years: chrono's signed form (`+12345-…`).
        match self.to_chrono() {
            Some(t) => write!(f, "{}", t.format("%Y-%m-%dT%H:%M:%S%.6fZ")),
            None => write!(f, "{}", self.0),
        }
    }
}

impl Serialize for PgTimestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// What happened to the row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Insert,
    Update,
    Delete,
    Truncate,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Insert => "insert",
            Op::Update => "update",
            Op::Delete => "delete",
            Op::Truncate => "truncate",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One typed column value, as the contract maps Postgres types to JSON.
#[derive(Debug, Clone)]
pub enum Datum {
    Null,
    Bool(bool),
    Int(i64),
    /// `oid` and other unsigned values that may not fit an `i64`.
    UInt(u64),
    /// A finite float; NaN and the infinities are [`Datum::Text`].
    Float(f64),
    Text(String),
    /// `json`/`jsonb`: the value embedded as JSON.
    Json(Box<RawValue>),
    Array(Vec<Datum>),
}

impl PartialEq for Datum {
    fn eq(&self, other: &Self) -> bool {
        use Datum::*;
        match (self, other) {
            (Null, Null) => true,
            (Bool(a), Bool(b)) => a == b,
            (Int(a), Int(b)) => a == b,
            (UInt(a), UInt(b)) => a == b,
            (Float(a), Float(b)) => a.to_bits() == b.to_bits(),
            (Text(a), Text(b)) => a == b,
            (Json(a), Json(b)) => a.get() == b.get(),
            (Array(a), Array(b)) => a == b,
            _ => false,
        }
    }
}

impl Datum {
    /// Appends the value's JSON.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        match self {
            Datum::Null => out.extend_from_slice(b"null"),
            Datum::Bool(v) => json::write_bool(out, *v),
            Datum::Int(v) => json::write_i64(out, *v),
            Datum::UInt(v) => json::write_u64(out, *v),
            Datum::Float(v) => json::write_f64(out, *v),
            Datum::Text(v) => json::write_str(out, v),
            Datum::Json(v) => out.extend_from_slice(v.get().as_bytes()),
            Datum::Array(items) => {
                out.push(b'[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    item.write_json(out);
                }
                out.push(b']');
            }
        }
    }
}

/// A column name shared between the relation cache and every event.
pub type ColumnName = Arc<str>;

/// Named column values in table order, held as the JSON object the event
/// carries, e.g. `{"id":42,"status":"pending"}`.
///
/// The decoder writes it straight from the pgoutput tuple; [`Row::new`]
/// builds one from typed values.
#[derive(Clone, PartialEq, Eq)]
pub struct Row {
    /// Always one JSON object in UTF-8 (every constructor writes one).
    json: Vec<u8>,
}

impl Row {
    /// A row of these columns, in this order.
    pub fn new<N: AsRef<str>>(columns: impl IntoIterator<Item = (N, Datum)>) -> Row {
        let mut row = RowWriter::with_capacity(64);
        for (name, value) in columns {
            value.write_json(row.column(&json::object_key(name.as_ref())));
        }
        row.finish()
    }

    /// The JSON object.
    pub fn as_json(&self) -> &str {
        std::str::from_utf8(&self.json).expect("a row is written as UTF-8 JSON")
    }
}

impl Default for Row {
    /// No columns: `{}`.
    fn default() -> Self {
        Row::new(std::iter::empty::<(&str, Datum)>())
    }
}

impl fmt::Debug for Row {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Row").field(&self.as_json()).finish()
    }
}

impl Serialize for Row {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        embed_json(self.as_json(), serializer)
    }
}

/// Writes a row's JSON object column by column; crate-internal, so that
/// every [`Row`] holds what its writer produced: a valid JSON object.
pub(crate) struct RowWriter {
    json: Vec<u8>,
}

impl RowWriter {
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        let mut json = Vec::with_capacity(capacity);
        json.push(b'{');
        RowWriter { json }
    }

    /// Starts a column: the separator and `key`, the column's
    /// [`json::object_key`]; the caller appends exactly one JSON value to the
    /// returned buffer.
    pub(crate) fn column(&mut self, key: &[u8]) -> &mut Vec<u8> {
        if self.json.len() > 1 {
            self.json.push(b',');
        }
        self.json.extend_from_slice(key);
        &mut self.json
    }

    /// Where the next value will start (for [`RowWriter::value`]).
    pub(crate) fn position(&self) -> usize {
        self.json.len()
    }

    /// The JSON of a value written since `start`, to copy into another row.
    pub(crate) fn value(&self, span: std::ops::Range<usize>) -> &[u8] {
        &self.json[span]
    }

    pub(crate) fn finish(mut self) -> Row {
        self.json.push(b'}');
        Row { json: self.json }
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
            .map(|row| row.json.len())
            .sum();
        out.reserve(256 + row_bytes);

        out.extend_from_slice(b"{\"id\":\"");
        out.extend_from_slice(self.id.text().as_bytes());
        out.extend_from_slice(b"\",\"op\":\"");
        out.extend_from_slice(self.op.as_str().as_bytes());
        out.extend_from_slice(b"\",\"schema\":");
        json::write_str(out, &self.schema);
        out.extend_from_slice(b",\"table\":");
        json::write_str(out, &self.table);
        for (field, row) in [b",\"key\":" as &[u8], b",\"new\":", b",\"old\":"]
            .into_iter()
            .zip(rows)
        {
            out.extend_from_slice(field);
            match row {
                Some(row) => out.extend_from_slice(&row.json),
                None => out.extend_from_slice(b"null"),
            }
        }
        if let Some(changed) = &self.changed {
            out.extend_from_slice(b",\"changed\":");
            json::write_names(out, changed);
        }
        out.extend_from_slice(b",\"unchanged_toast\":");
        json::write_names(out, &self.unchanged_toast);
        out.extend_from_slice(b",\"lsn\":\"");
        out.extend_from_slice(self.lsn.text().as_bytes());
        out.extend_from_slice(b"\",\"commit_lsn\":\"");
        out.extend_from_slice(self.commit_lsn.text().as_bytes());
        out.extend_from_slice(b"\",\"xid\":");
        json::write_u64(out, u64::from(self.xid));
        out.extend_from_slice(b",\"commit_time\":");
        match self.commit_time.rfc3339() {
            Some(text) => {
                out.push(b'"');
                out.extend_from_slice(text.as_bytes());
                out.push(b'"');
            }
            None => json::write_str(out, &self.commit_time.to_string()),
        }
        if oversize {
            out.extend_from_slice(b",\"oversize\":true");
        }
        out.push(b'}');
    }

    /// `<schema>.<table>`, the name clients subscribe by.
    pub fn qualified_table(&self) -> String {
        format!("{}.{}", self.schema, self.table)
    }

    /// The RabbitMQ routing key: `<schema>.<table>.<op>`.
    pub fn routing_key(&self) -> String {
        format!("{}.{}.{}", self.schema, self.table, self.op)
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
fn embed_json<S: Serializer>(json: &str, serializer: S) -> Result<S::Ok, S::Error> {
    let raw: &RawValue = serde_json::from_str(json).map_err(serde::ser::Error::custom)?;
    raw.serialize(serializer)
}

/// A short ASCII text formatted on the stack (ids, LSNs, timestamps).
#[derive(Clone, Copy)]
struct Ascii<const N: usize> {
    bytes: [u8; N],
    len: usize,
}

impl<const N: usize> Default for Ascii<N> {
    fn default() -> Self {
        Ascii {
            bytes: [0; N],
            len: 0,
        }
    }
}

impl<const N: usize> From<[u8; 16]> for Ascii<N> {
    fn from(digits: [u8; 16]) -> Self {
        let mut text = Ascii::default();
        text.push(&digits);
        text
    }
}

impl<const N: usize> Ascii<N> {
    /// Panics past `N` bytes: every caller's longest text is its `N`.
    fn push(&mut self, bytes: &[u8]) {
        self.bytes[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }

    /// `value` in decimal, zero-padded to `width` digits (`value` has no more).
    fn push_digits(&mut self, mut value: u32, width: usize) {
        let digits = &mut self.bytes[self.len..self.len + width];
        for digit in digits.iter_mut().rev() {
            *digit = b'0' + (value % 10) as u8;
            value /= 10;
        }
        self.len += width;
    }

    /// `value` in upper-case hex without leading zeros, as `{:X}` writes it.
    fn push_hex(&mut self, value: u32) {
        let width = (8 - value.leading_zeros() as usize / 4).max(1);
        let digits = &mut self.bytes[self.len..self.len + width];
        for (i, digit) in digits.iter_mut().rev().enumerate() {
            *digit = HEX_DIGITS[(value >> (4 * i)) as usize & 0xF];
        }
        self.len += width;
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).expect("formatted as ASCII")
    }
}

const HEX_DIGITS: &[u8; 16] = b"0123456789ABCDEF";

/// `value` as exactly 16 upper-case hex digits.
fn hex16(value: u64) -> [u8; 16] {
    let mut out = [0; 16];
    for (i, digit) in out.iter_mut().enumerate() {
        *digit = HEX_DIGITS[(value >> (60 - 4 * i)) as usize & 0xF];
    }
    out
}

/// JSON values written exactly as `serde_json` writes them, so the
/// hand-written encoding stays byte for byte what `serde_json` produced
/// for the same event: numbers through serde_json's own formatter, strings
/// with its escape table.
pub(crate) mod json {
    use serde_json::ser::{CompactFormatter, Formatter as _};

    use super::ColumnName;

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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_round_trips_through_text() {
        let lsn: Lsn = "0/16B3748".parse().unwrap();
        assert_eq!(lsn, Lsn(0x16B3748));
        assert_eq!(lsn.to_string(), "0/16B3748");
        let high: Lsn = "1A/FF".parse().unwrap();
        assert_eq!(high.0, (0x1A << 32) | 0xFF);
        assert_eq!(high.to_string(), "1A/FF");
    }

    #[test]
    fn malformed_lsns_are_rejected() {
        for bad in [
            "",
            "16B3748",
            "0/",
            "/1",
            "0/xyz",
            "123456789/0",
            "0/1/2",
            " 0/1",
        ] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn event_id_format_matches_the_contract() {
        let id = EventId {
            commit_lsn: Lsn(0x16B3800),
            ordinal: 3,
        };
        assert_eq!(id.to_string(), "00000000016B3800-0000000003");
        assert_eq!(id.to_string().parse::<EventId>().unwrap(), id);
        assert!("00000000016B3800-3".parse::<EventId>().is_err());
        assert!("garbage".parse::<EventId>().is_err());
    }

    #[test]
    fn event_ids_sort_as_strings_in_commit_order() {
        let ids = [
            EventId {
                commit_lsn: Lsn(0xF),
                ordinal: 10,
            },
            EventId {
                commit_lsn: Lsn(0x10),
                ordinal: 0,
            },
            EventId {
                commit_lsn: Lsn(0x1_0000_0000),
                ordinal: 2,
            },
        ];
        let mut texts: Vec<String> = ids.iter().map(ToString::to_string).collect();
        texts.sort();
        let parsed: Vec<EventId> = texts.iter().map(|t| t.parse().unwrap()).collect();
        let mut sorted = ids.to_vec();
        sorted.sort();
        assert_eq!(parsed, sorted);
    }

    #[test]
    fn commit_time_is_rfc3339_utc_with_microseconds() {
        // 2026-11-22T05:04:10.580065Z
        let unix = chrono::DateTime::parse_from_rfc3339("2026-11-22T05:04:10.580065Z")
            .unwrap()
            .timestamp_micros();
        let ts = PgTimestamp(unix - PG_EPOCH_UNIX_SECS * 1_000_000);
        assert_eq!(ts.to_string(), "2026-11-22T05:04:10.580065Z");
        assert_eq!(PgTimestamp(0).to_string(), "2000-01-01T00:00:00.000000Z");
    }

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
    fn datums_serialize_as_the_contract_says() {
        let row = Row::new([
            ("n", Datum::Null),
            ("b", Datum::Bool(true)),
            ("f", Datum::Float(1.5)),
            ("nan", Datum::Text("NaN".into())),
            (
                "j",
                Datum::Json(RawValue::from_string(r#"{"a": [1, 2]}"#.into()).unwrap()),
            ),
            ("arr", Datum::Array(vec![Datum::Int(1), Datum::Null])),
            ("q\"\\\n", Datum::Float(f64::NAN)),
        ]);
        assert_eq!(
            row.as_json(),
            r#"{"n":null,"b":true,"f":1.5,"nan":"NaN","j":{"a": [1, 2]},"arr":[1,null],"q\"\\\n":null}"#
        );
        assert_eq!(serde_json::to_string(&row).unwrap(), row.as_json());
        assert_eq!(Row::default().as_json(), "{}");
    }

    /// xorshift64*, for the comparisons below.
    fn random_u64s(count: usize) -> impl Iterator<Item = u64> {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        (0..count).map(move |_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_F491_4F6C_DD1D)
        })
    }

    #[test]
    fn hand_formatting_matches_core_fmt_and_chrono() {
        let chrono_text = |ts: PgTimestamp| match ts.to_chrono() {
            Some(t) => t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
            None => ts.0.to_string(),
        };
        let edges = [
            0,
            -1,
            1,
            i64::MIN,
            i64::MAX,
            // 0000-01-01T00:00:00Z and a microsecond before it.
            -63_082_281_600_000_000,
            -63_082_281_600_000_001,
            // 9999-12-31T23:59:59.999999Z and a microsecond after it.
            252_455_615_999_999_999,
            252_455_616_000_000_000,
            // Around leap days.
            (10_286 * 86_400 - 1) * 1_000_000,
            (10_287 * 86_400) * 1_000_000,
        ];
        let randoms = random_u64s(100_000).enumerate().map(|(i, r)| {
            // Spread the magnitudes: whole range, ±300k years, ±9k years.
            (r as i64) >> [0, 8, 14, 20, 30][i % 5]
        });
        for micros in edges.into_iter().chain(randoms) {
            let ts = PgTimestamp(micros);
            assert_eq!(ts.to_string(), chrono_text(ts), "{micros}");
        }
        for (i, r) in random_u64s(100_000).enumerate() {
            let value = r >> (i % 64);
            let lsn = Lsn(value);
            assert_eq!(
                lsn.to_string(),
                format!("{:X}/{:X}", value >> 32, value & 0xFFFF_FFFF)
            );
            assert_eq!(lsn.to_hex16(), format!("{value:016X}"));
            let id = EventId {
                commit_lsn: lsn,
                ordinal: (r as u32) >> (i % 32),
            };
            assert_eq!(
                id.to_string(),
                format!("{:016X}-{:010}", id.commit_lsn.0, id.ordinal)
            );
        }
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
            json::write_str(&mut out, text);
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
            json::write_f64(&mut out, value);
            assert_eq!(out, serde_json::to_vec(&value).unwrap(), "{value:e}");
        }
        for value in random_u64s(10_000) {
            let mut out = Vec::new();
            json::write_i64(&mut out, value as i64);
            json::write_u64(&mut out, value);
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
