//! The row values an event carries: [`Datum`] (one typed column value, as
//! the contract maps Postgres types to JSON) and [`Row`] (named columns in
//! table order, held already encoded as one JSON object), with the
//! crate-internal [`RowWriter`] that the decoder writes rows with.
//!
//! It does not decode pgoutput tuples (that is `decoder`); it only holds
//! and writes what the decoder read.

use std::fmt;
use std::sync::Arc;

use serde::{Serialize, Serializer};
use serde_json::value::RawValue;

use super::json;

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

    /// The JSON object's bytes, without the UTF-8 check of [`Row::as_json`]
    /// (the event writer copies them as they are).
    pub(super) fn as_bytes(&self) -> &[u8] {
        &self.json
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
        json::embed_json(self.as_json(), serializer)
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
