//! The change event: the one type every stage after the decoder speaks.
//!
//! A [`ChangeEvent`] is one committed row change (or one truncated table).
//! It has exactly one JSON encoding, the one in `../shared/contract.md`
//! section 1, produced by [`ChangeEvent::to_json`]; every hop (stdout of
//! `walcast tail`, the RabbitMQ body, the Socket.IO payload) carries those same
//! bytes. This module also holds the small value types the event is made of:
//! [`Lsn`], [`EventId`], [`Row`], [`Datum`] and [`PgTimestamp`].
//!
//! It does not decode anything (that is `decoder`) and does not know about
//! RabbitMQ or Socket.IO.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;

/// A PostgreSQL write-ahead-log position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    pub const ZERO: Lsn = Lsn(0);

    /// The 16-digit upper-case hex form used inside event ids.
    pub fn to_hex16(self) -> String {
        format!("{:016X}", self.0)
    }
}

impl fmt::Display for Lsn {
    /// Postgres's own `X/X` text form, e.g. `0/16B3748`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
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

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016X}-{:010}", self.commit_lsn.0, self.ordinal)
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
}

impl fmt::Display for PgTimestamp {
    /// RFC 3339 in UTC with microseconds, e.g. `2026-11-22T05:04:10.580065Z`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
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
    /// `json`/`jsonb`: the value embedded as it is.
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

impl Serialize for Datum {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Datum::Null => serializer.serialize_unit(),
            Datum::Bool(v) => serializer.serialize_bool(*v),
            Datum::Int(v) => serializer.serialize_i64(*v),
            Datum::UInt(v) => serializer.serialize_u64(*v),
            Datum::Float(v) => serializer.serialize_f64(*v),
            Datum::Text(v) => serializer.serialize_str(v),
            Datum::Json(v) => v.serialize(serializer),
            Datum::Array(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
        }
    }
}

/// A column name shared between the relation cache and every event.
pub type ColumnName = Arc<str>;

/// Named column values in table order; serializes as a JSON object.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Row(pub Vec<(ColumnName, Datum)>);

impl Row {
    pub fn get(&self, column: &str) -> Option<&Datum> {
        self.0
            .iter()
            .find(|(name, _)| &**name == column)
            .map(|(_, value)| value)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Serialize for Row {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, value) in &self.0 {
            map.serialize_entry(&**name, value)?;
        }
        map.end()
    }
}

/// One committed row change, field for field the contract's event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChangeEvent {
    pub id: EventId,
    pub op: Op,
    pub schema: Arc<str>,
    pub table: Arc<str>,
    pub key: Option<Row>,
    pub new: Option<Row>,
    pub old: Option<Row>,
    #[serde(skip_serializing_if = "Option::is_none")]
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
        let mut out = Vec::with_capacity(512);
        self.write_json(&mut out);
        out
    }

    /// Appends the JSON encoding to `out` (reuses the caller's buffer).
    pub fn write_json(&self, out: &mut Vec<u8>) {
        // Serializing these types cannot fail: every map key is a string and
        // no value has a fallible Serialize impl.
        serde_json::to_writer(out, self).expect("a change event always serializes");
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
            key: Some(Row(vec![(name.clone(), Datum::Int(42))])),
            new: None,
            old: Some(Row(vec![(name, Datum::Int(42))])),
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
    fn datums_serialize_as_the_contract_says() {
        let row = Row(vec![
            (Arc::from("n"), Datum::Null),
            (Arc::from("b"), Datum::Bool(true)),
            (Arc::from("f"), Datum::Float(1.5)),
            (Arc::from("nan"), Datum::Text("NaN".into())),
            (
                Arc::from("j"),
                Datum::Json(RawValue::from_string(r#"{"a": [1, 2]}"#.into()).unwrap()),
            ),
            (
                Arc::from("arr"),
                Datum::Array(vec![Datum::Int(1), Datum::Null]),
            ),
        ]);
        assert_eq!(
            serde_json::to_string(&row).unwrap(),
            r#"{"n":null,"b":true,"f":1.5,"nan":"NaN","j":{"a": [1, 2]},"arr":[1,null]}"#
        );
    }
}
