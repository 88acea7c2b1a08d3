//! Payload projection: a client's request for smaller `change` events
//! (contract section 3).
//!
//! A `subscribe` may carry `"fields": ["col", …]`, and then `new` and `old`
//! hold only those columns plus the key columns (the names in the event's
//! `key`), and `"old": false`, and then `old` is `null`. Everything else in
//! the event stays as published, byte for byte, in the published order;
//! kept columns keep their values' exact text. An event whose `new`/`old`
//! is `null` (a delete's `new`, a truncate, an `oversize` event) keeps it
//! `null`.
//!
//! A projection is parsed and checked here ([`Projection::parse`]: `fields`
//! an array of at most [`MAX_FIELDS`] distinct column names of 1 to
//! [`MAX_FIELD_BYTES`] bytes, `old` a boolean) and applied to an event's raw
//! JSON ([`Projection::apply`]). Which socket gets which projection is the
//! subscriptions' business (`subscription`); encoding the result once per
//! event and projection is the hub's.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

/// Columns a `fields` list may name: a Postgres table has at most 1,600.
pub const MAX_FIELDS: usize = 1600;

/// Bytes of one column name: Postgres identifiers are at most 63 bytes
/// (`NAMEDATALEN` − 1).
pub const MAX_FIELD_BYTES: usize = 63;

/// What a socket wants of one table's events.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Projection {
    /// The columns kept in `new` and `old` besides the key columns, sorted
    /// and without duplicates; `None`: every column.
    fields: Option<Box<[String]>>,
    /// Whether `old` is sent (`false`: it is `null`).
    old: bool,
}

impl Projection {
    /// Reads `fields` and `old` from a subscribe payload: `Ok(None)` when it
    /// has neither (whole events), `Err` with the reason when one is
    /// malformed.
    pub fn parse(payload: &serde_json::Map<String, Value>) -> Result<Option<Projection>, String> {
        let fields =
            match payload.get("fields") {
                None | Some(Value::Null) => None,
                Some(Value::Array(items)) => Some(parse_fields(items)?),
                Some(_) => return Err(
                    "fields must be an array of column names, e.g. [\"status\", \"updated_at\"]"
                        .into(),
                ),
            };
        let old = match payload.get("old") {
            None | Some(Value::Null) => true,
            Some(Value::Bool(old)) => *old,
            Some(_) => return Err("old must be true or false".into()),
        };
        if fields.is_none() && old {
            return Ok(None);
        }
        Ok(Some(Projection { fields, old }))
    }

    /// Bytes this projection makes the gateway hold (its column names),
    /// counted against `fanout.max_subscription_bytes`.
    pub fn bytes(&self) -> usize {
        self.fields
            .as_deref()
            .map_or(0, |fields| fields.iter().map(String::len).sum())
    }

    /// The event `raw` (a change event, a JSON object) as this projection
    /// shapes it. A body that is not an object comes back unchanged.
    pub fn apply(&self, raw: &str) -> String {
        let Ok(Entries(entries)) = serde_json::from_str::<Entries>(raw) else {
            return raw.to_owned();
        };
        let key_columns: Vec<Cow<'_, str>> = entries
            .iter()
            .find(|(name, _)| name == "key")
            .and_then(|(_, key)| serde_json::from_str::<Entries>(key.get()).ok())
            .map(|Entries(key)| key.into_iter().map(|(name, _)| name).collect())
            .unwrap_or_default();
        let mut out = String::with_capacity(raw.len());
        out.push('{');
        for (i, (name, value)) in entries.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            push_json_string(&mut out, name);
            out.push(':');
            match &**name {
                "old" if !self.old => out.push_str("null"),
                "new" | "old" => self.push_row(&mut out, value, &key_columns),
                _ => out.push_str(value.get()),
            }
        }
        out.push('}');
        out
    }

    /// Writes a row (`new` or `old`) with only the wanted columns.
    fn push_row(&self, out: &mut String, row: &RawValue, key_columns: &[Cow<'_, str>]) {
        let Some(fields) = &self.fields else {
            out.push_str(row.get());
            return;
        };
        let Ok(Entries(columns)) = serde_json::from_str::<Entries>(row.get()) else {
            // `null` (or anything but an object) stays as it is.
            out.push_str(row.get());
            return;
        };
        out.push('{');
        let mut first = true;
        for (name, value) in &columns {
            let wanted = fields.binary_search_by(|f| f.as_str().cmp(name)).is_ok()
                || key_columns.iter().any(|k| k == name);
            if !wanted {
                continue;
            }
            if !first {
                out.push(',');
            }
            first = false;
            push_json_string(out, name);
            out.push(':');
            out.push_str(value.get());
        }
        out.push('}');
    }
}

fn parse_fields(items: &[Value]) -> Result<Box<[String]>, String> {
    if items.len() > MAX_FIELDS {
        return Err(format!(
            "fields names {} columns; at most {MAX_FIELDS} (a table has no more)",
            items.len()
        ));
    }
    let mut fields = Vec::with_capacity(items.len());
    for item in items {
        let Value::String(name) = item else {
            return Err("fields must be an array of column names (strings)".into());
        };
        if name.is_empty() || name.len() > MAX_FIELD_BYTES {
            return Err(format!(
                "field {:?} is not a column name: 1 to {MAX_FIELD_BYTES} bytes",
                name.chars().take(64).collect::<String>()
            ));
        }
        fields.push(name.clone());
    }
    fields.sort_unstable();
    fields.dedup();
    Ok(fields.into_boxed_slice())
}

fn push_json_string(out: &mut String, text: &str) {
    // Names that need no escaping (all of walcast's) are copied as they are.
    if text.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push('"');
        out.push_str(text);
        out.push('"');
    } else {
        out.push_str(&serde_json::to_string(text).expect("a string always serializes"));
    }
}

/// A JSON object's members in their order, values as raw text.
struct Entries<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

/// An object member's name, borrowed unless it had escapes.
struct Name<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Name<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NameVisitor;
        impl<'de> Visitor<'de> for NameVisitor {
            type Value = Name<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Owned(v.to_owned())))
            }
        }
        deserializer.deserialize_str(NameVisitor)
    }
}

impl<'de> Deserialize<'de> for Entries<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EntriesVisitor;
        impl<'de> Visitor<'de> for EntriesVisitor {
            type Value = Entries<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries<'de>, A::Error> {
                let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(16));
                while let Some((Name(name), value)) = map.next_entry::<Name<'de>, &RawValue>()? {
                    entries.push((name, value));
                }
                Ok(Entries(entries))
            }
        }
        deserializer.deserialize_map(EntriesVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const UPDATE: &str = r#"{"id":"00000000016B3800-0000000003","op":"update","schema":"public","table":"orders","key":{"id":42},"new":{"id":42,"customer_name":"Harry","status":"shipped","price":"12.50"},"old":{"id":42,"customer_name":"Harry","status":"pending","price":"12.50"},"changed":["status"],"unchanged_toast":[],"lsn":"0/16B3748","commit_lsn":"0/16B3800","xid":1234,"commit_time":"2026-11-22T05:04:10.580065Z"}"#;

    fn parse(payload: Value) -> Result<Option<Projection>, String> {
        Projection::parse(payload.as_object().unwrap())
    }

    #[test]
    fn keeps_the_fields_asked_for_plus_the_key_columns_in_new_and_old() {
        let projection = parse(json!({"fields": ["status"]})).unwrap().unwrap();
        let projected = projection.apply(UPDATE);
        assert_eq!(
            projected,
            UPDATE
                .replace(
                    r#""new":{"id":42,"customer_name":"Harry","status":"shipped","price":"12.50"}"#,
                    r#""new":{"id":42,"status":"shipped"}"#
                )
                .replace(
                    r#""old":{"id":42,"customer_name":"Harry","status":"pending","price":"12.50"}"#,
                    r#""old":{"id":42,"status":"pending"}"#
                )
        );
        // Everything else is as published, in the published order.
        let v: Value = serde_json::from_str(&projected).unwrap();
        assert_eq!(v["changed"], json!(["status"]));
        assert_eq!(v["key"], json!({"id": 42}));
    }

    #[test]
    fn old_false_sends_old_as_null() {
        let projection = parse(json!({"old": false})).unwrap().unwrap();
        let v: Value = serde_json::from_str(&projection.apply(UPDATE)).unwrap();
        assert_eq!(v["old"], Value::Null);
        assert_eq!(v["new"]["customer_name"], "Harry", "new is whole");
        let both = parse(json!({"old": false, "fields": ["price"]}))
            .unwrap()
            .unwrap();
        let v: Value = serde_json::from_str(&both.apply(UPDATE)).unwrap();
        assert_eq!(v["old"], Value::Null);
        assert_eq!(v["new"], json!({"id": 42, "price": "12.50"}));
    }

    #[test]
    fn an_empty_field_list_keeps_only_the_key_columns_and_null_rows_stay_null() {
        let keys_only = parse(json!({"fields": []})).unwrap().unwrap();
        let v: Value = serde_json::from_str(&keys_only.apply(UPDATE)).unwrap();
        assert_eq!(v["new"], json!({"id": 42}));
        let delete = r#"{"id":"x","op":"delete","key":{"a":1,"b":"2"},"new":null,"old":{"a":1,"b":"2","c":3}}"#;
        let v: Value = serde_json::from_str(&keys_only.apply(delete)).unwrap();
        assert_eq!(v["new"], Value::Null);
        assert_eq!(v["old"], json!({"a": 1, "b": "2"}), "a composite key");
        let truncate = r#"{"id":"x","op":"truncate","key":null,"new":null,"old":null}"#;
        assert_eq!(keys_only.apply(truncate), truncate);
    }

    #[test]
    fn values_keep_their_exact_text_and_names_with_escapes_work() {
        let raw = r#"{"key":{"id":1},"new":{"id":1,"f":1.50,"t\"q":{"a": [1, 2]},"x":"y"}}"#;
        let projection = parse(json!({"fields": ["f", "t\"q"]})).unwrap().unwrap();
        assert_eq!(
            projection.apply(raw),
            r#"{"key":{"id":1},"new":{"id":1,"f":1.50,"t\"q":{"a": [1, 2]}}}"#
        );
    }

    #[test]
    fn without_fields_or_old_there_is_no_projection() {
        assert_eq!(parse(json!({"table": "public.orders"})).unwrap(), None);
        assert_eq!(parse(json!({"old": true, "fields": null})).unwrap(), None);
    }

    #[test]
    fn invalid_field_lists_are_refused_with_a_reason() {
        let long = "c".repeat(MAX_FIELD_BYTES + 1);
        let many: Vec<String> = (0..=MAX_FIELDS).map(|i| format!("c{i}")).collect();
        let cases = [
            (json!({"fields": "status"}), "must be an array"),
            (json!({"fields": {"status": true}}), "must be an array"),
            (json!({"fields": ["status", 1]}), "column names (strings)"),
            (json!({"fields": [""]}), "not a column name"),
            (json!({"fields": [long]}), "not a column name"),
            (json!({"fields": many}), "at most 1600"),
            (json!({"old": "no"}), "old must be true or false"),
        ];
        for (payload, expected) in cases {
            let err = parse(payload.clone()).unwrap_err();
            assert!(err.contains(expected), "{payload}: {err}");
        }
    }

    #[test]
    fn equal_requests_are_equal_projections_and_bytes_count_the_names() {
        let a = parse(json!({"fields": ["b", "a", "b"]})).unwrap().unwrap();
        let b = parse(json!({"fields": ["a", "b"]})).unwrap().unwrap();
        assert_eq!(a, b);
        assert_eq!(a.bytes(), 2);
    }
}
