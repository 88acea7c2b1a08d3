//! What a socket asked to receive: `subscribe` / `unsubscribe` payloads and
//! the index the hub routes by.
//!
//! A socket starts in "everything" mode. The first `subscribe` narrows it to
//! the named table or row; each further one widens it; `unsubscribe` removes
//! one subscription (and is a no-op for one it does not hold; it never
//! narrows "everything" mode). Rows are matched by comparing the event's
//! `key` object with the subscribed one as JSON values, through a canonical
//! text form ([`canonical_json`]: object keys sorted, no whitespace), so
//! `{"id": 42}` matches an event key `{"id":42}`.
//!
//! The [`Index`] maps tables and rows to socket ids so a change reaches its
//! subscribers without scanning every socket. It holds no sockets and does no
//! I/O.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::Value;
use socketioxide::socket::Sid;

/// At most this many subscriptions per socket; bounds what one client can
/// make the gateway hold.
pub const MAX_SUBSCRIPTIONS: usize = 1024;

/// A row: `schema.table` plus the canonical JSON of its key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RowKey {
    pub table: String,
    pub key: String,
}

/// One subscription target.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    Table(String),
    Row(RowKey),
}

/// Compact JSON with object keys sorted at every level, so equal JSON values
/// have equal text.
pub fn canonical_json(value: &Value) -> String {
    fn sorted(value: &Value) -> Value {
        match value {
            Value::Object(map) => {
                let ordered: BTreeMap<&String, Value> =
                    map.iter().map(|(k, v)| (k, sorted(v))).collect();
                let mut out = serde_json::Map::new();
                for (k, v) in ordered {
                    out.insert(k.clone(), v);
                }
                Value::Object(out)
            }
            Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    // serde_json's default map is a BTreeMap and sorts anyway; rebuilding in
    // sorted order keeps this true if another crate in the build turns on
    // `preserve_order`.
    serde_json::to_string(&sorted(value)).expect("a JSON value always serializes")
}

/// Parses a `subscribe`/`unsubscribe` payload:
/// `{ "table": "schema.table", "key": {...}? }`.
pub fn parse_target(payload: Option<&Value>) -> Result<Target, String> {
    let Some(Value::Object(map)) = payload else {
        return Err(
            "payload must be an object like {\"table\": \"public.orders\", \"key\": {\"id\": 42}}"
                .into(),
        );
    };
    if let Some(unknown) = map.keys().find(|k| *k != "table" && *k != "key") {
        return Err(format!(
            "unknown field {unknown:?}; expected \"table\" and optionally \"key\""
        ));
    }
    let table = match map.get("table") {
        Some(Value::String(table)) => table,
        Some(_) => return Err("table must be a string \"schema.table\"".into()),
        None => return Err("missing field \"table\" (\"schema.table\")".into()),
    };
    match table.split_once('.') {
        Some((schema, name)) if !schema.is_empty() && !name.is_empty() && table.len() <= 255 => {}
        _ => {
            return Err(format!(
                "table {:?} is not \"schema.table\", e.g. \"public.orders\"",
                table.chars().take(64).collect::<String>()
            ))
        }
    }
    match map.get("key") {
        None | Some(Value::Null) => Ok(Target::Table(table.clone())),
        Some(key @ Value::Object(fields)) if !fields.is_empty() => Ok(Target::Row(RowKey {
            table: table.clone(),
            key: canonical_json(key),
        })),
        Some(Value::Object(_)) => Err("key must not be an empty object".into()),
        Some(_) => Err("key must be an object of key columns, e.g. {\"id\": 42}".into()),
    }
}

/// One socket's subscriptions.
#[derive(Debug, Clone)]
pub struct Subscriptions {
    /// "Everything" mode: true until the first subscribe.
    pub all: bool,
    pub targets: HashSet<Target>,
}

impl Default for Subscriptions {
    fn default() -> Self {
        Subscriptions {
            all: true,
            targets: HashSet::new(),
        }
    }
}

/// Table and row subscriptions → socket ids, plus the "everything" set.
#[derive(Debug, Default)]
pub struct Index {
    all: HashSet<Sid>,
    tables: HashMap<String, HashSet<Sid>>,
    rows: HashMap<RowKey, HashSet<Sid>>,
}

impl Index {
    /// Indexes a new socket, in "everything" mode.
    pub fn add_socket(&mut self, sid: Sid) {
        self.all.insert(sid);
    }

    /// Removes every entry of a socket.
    pub fn remove_socket(&mut self, sid: Sid, subs: &Subscriptions) {
        self.all.remove(&sid);
        for target in &subs.targets {
            self.remove(sid, target);
        }
    }

    /// Applies a subscribe; returns an error if the socket holds too many.
    pub fn subscribe(
        &mut self,
        sid: Sid,
        subs: &mut Subscriptions,
        target: Target,
    ) -> Result<(), String> {
        if subs.targets.contains(&target) && !subs.all {
            return Ok(());
        }
        if subs.targets.len() >= MAX_SUBSCRIPTIONS {
            return Err(format!(
                "too many subscriptions (at most {MAX_SUBSCRIPTIONS} per socket)"
            ));
        }
        if subs.all {
            subs.all = false;
            self.all.remove(&sid);
        }
        match &target {
            Target::Table(table) => {
                self.tables.entry(table.clone()).or_default().insert(sid);
            }
            Target::Row(row) => {
                self.rows.entry(row.clone()).or_default().insert(sid);
            }
        }
        subs.targets.insert(target);
        Ok(())
    }

    /// Applies an unsubscribe (a no-op for a target not held).
    pub fn unsubscribe(&mut self, sid: Sid, subs: &mut Subscriptions, target: &Target) {
        if subs.targets.remove(target) {
            self.remove(sid, target);
        }
    }

    fn remove(&mut self, sid: Sid, target: &Target) {
        match target {
            Target::Table(table) => {
                if let Some(set) = self.tables.get_mut(table) {
                    set.remove(&sid);
                    if set.is_empty() {
                        self.tables.remove(table);
                    }
                }
            }
            Target::Row(row) => {
                if let Some(set) = self.rows.get_mut(row) {
                    set.remove(&sid);
                    if set.is_empty() {
                        self.rows.remove(row);
                    }
                }
            }
        }
    }

    /// The sockets a change of `table` (and `row`) goes to, each once, in
    /// no particular order.
    pub fn targets(&self, table: &str, row: Option<&RowKey>, out: &mut Vec<Sid>) {
        out.clear();
        out.extend(self.all.iter().copied());
        let mut sources = 0;
        if let Some(set) = self.tables.get(table) {
            out.extend(set.iter().copied());
            sources += 1;
        }
        if let Some(set) = row.and_then(|row| self.rows.get(row)) {
            out.extend(set.iter().copied());
            sources += 1;
        }
        // A socket is in `all` xor in the table/row sets, but it may hold
        // both a table and one of its rows.
        if sources == 2 {
            out.sort_unstable();
            out.dedup();
        }
    }

    /// Whether a socket with these subscriptions receives this change.
    pub fn matches(subs: &Subscriptions, table: &str, row: Option<&RowKey>) -> bool {
        subs.all
            || subs.targets.contains(&Target::Table(table.to_owned()))
            || row.is_some_and(|row| subs.targets.contains(&Target::Row(row.clone())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        assert_eq!(
            canonical_json(&json!({"b": 1, "a": {"d": [1, {"z": 0, "y": 1}], "c": null}})),
            r#"{"a":{"c":null,"d":[1,{"y":1,"z":0}]},"b":1}"#
        );
        assert_eq!(canonical_json(&json!({"id": 42})), r#"{"id":42}"#);
    }

    #[test]
    fn parses_subscribe_payloads() {
        assert_eq!(
            parse_target(Some(&json!({"table": "public.orders"}))).unwrap(),
            Target::Table("public.orders".into())
        );
        assert_eq!(
            parse_target(Some(&json!({"table": "public.orders", "key": {"id": 42}}))).unwrap(),
            Target::Row(RowKey {
                table: "public.orders".into(),
                key: r#"{"id":42}"#.into()
            })
        );
        assert_eq!(
            parse_target(Some(&json!({"table": "public.orders", "key": null}))).unwrap(),
            Target::Table("public.orders".into())
        );
    }

    #[test]
    fn rejects_malformed_payloads_with_a_reason() {
        let cases = [
            (None, "payload must be an object"),
            (Some(json!("public.orders")), "payload must be an object"),
            (Some(json!({})), "missing field \"table\""),
            (Some(json!({"table": 1})), "table must be a string"),
            (Some(json!({"table": "orders"})), "is not \"schema.table\""),
            (Some(json!({"table": ".orders"})), "is not \"schema.table\""),
            (Some(json!({"table": "public."})), "is not \"schema.table\""),
            (
                Some(json!({"table": "public.orders", "key": 42})),
                "key must be an object",
            ),
            (
                Some(json!({"table": "public.orders", "key": {}})),
                "must not be an empty object",
            ),
            (
                Some(json!({"table": "public.orders", "keys": {"id": 1}})),
                "unknown field \"keys\"",
            ),
        ];
        for (payload, expected) in cases {
            let err = parse_target(payload.as_ref()).unwrap_err();
            assert!(err.contains(expected), "{payload:?}: {err}");
        }
    }

    fn sid(n: u8) -> Sid {
        // Sids are random; make distinct ones deterministically for tests.
        let text = format!("AAAAAAAAAAAAAAA{}", (b'A' + n) as char);
        text.parse().unwrap()
    }

    #[test]
    fn first_subscribe_narrows_then_widens_and_unsubscribe_removes() {
        let mut index = Index::default();
        let (a, b) = (sid(0), sid(1));
        let mut subs_a = Subscriptions::default();
        let subs_b = Subscriptions::default();
        index.add_socket(a);
        index.add_socket(b);
        let order42 = RowKey {
            table: "public.orders".into(),
            key: r#"{"id":42}"#.into(),
        };
        let order7 = RowKey {
            table: "public.orders".into(),
            key: r#"{"id":7}"#.into(),
        };
        let mut out = Vec::new();

        index.targets("public.orders", Some(&order7), &mut out);
        out.sort();
        assert_eq!(out, {
            let mut v = vec![a, b];
            v.sort();
            v
        });

        index
            .subscribe(a, &mut subs_a, Target::Row(order42.clone()))
            .unwrap();
        index.targets("public.orders", Some(&order7), &mut out);
        assert_eq!(out, vec![b]);
        index.targets("public.orders", Some(&order42), &mut out);
        out.sort();
        assert_eq!(out.len(), 2);
        assert!(Index::matches(&subs_a, "public.orders", Some(&order42)));
        assert!(!Index::matches(&subs_a, "public.orders", Some(&order7)));

        // Widen to the whole table: still one copy of the row's change.
        index
            .subscribe(a, &mut subs_a, Target::Table("public.orders".into()))
            .unwrap();
        index.targets("public.orders", Some(&order42), &mut out);
        assert_eq!(out.iter().filter(|s| **s == a).count(), 1);

        index.unsubscribe(a, &mut subs_a, &Target::Table("public.orders".into()));
        index.unsubscribe(a, &mut subs_a, &Target::Row(order42.clone()));
        index.targets("public.orders", Some(&order42), &mut out);
        assert_eq!(out, vec![b]);
        assert!(!Index::matches(&subs_a, "public.orders", Some(&order42)));

        index.remove_socket(a, &subs_a);
        index.remove_socket(b, &subs_b);
        index.targets("public.orders", Some(&order42), &mut out);
        assert!(out.is_empty());
        assert!(index.tables.is_empty() && index.rows.is_empty());
    }
}
