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
//! A change without a key (`truncate`) concerns every row of its table, so
//! it also reaches the sockets subscribed to a row of that table.
//!
//! A `subscribe` may also shape the events of its table (`fields`, `old`:
//! see `projection`). The projection belongs to the socket and the table:
//! the latest `subscribe` naming a table sets it for every change of that
//! table the socket receives (one without `fields` and `old` restores whole
//! events), and it goes with the socket's last subscription to the table.
//! `unsubscribe` accepts the same payload and ignores them.
//!
//! What one socket may hold is capped ([`Limits`]: subscriptions, a key's
//! size, all of its subscriptions' bytes, projections' column names
//! included); past a cap the command is refused with a reason and nothing
//! changes.
//!
//! The [`Index`] maps tables and rows to socket ids so a change reaches its
//! subscribers without scanning every socket. It holds no sockets and does no
//! I/O.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use serde_json::Value;
use socketioxide::socket::Sid;

use super::projection::Projection;

/// What one socket's subscriptions may take (`fanout.max_*`); bounds what
/// one client can make the gateway hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Subscriptions per socket.
    pub subscriptions: usize,
    /// Bytes of a key's canonical JSON.
    pub key_bytes: usize,
    /// Bytes of all of a socket's targets together (table names and keys).
    pub total_bytes: usize,
}

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

impl Target {
    /// Bytes this target makes the gateway hold (its text).
    fn bytes(&self) -> usize {
        match self {
            Target::Table(table) => table.len(),
            Target::Row(row) => row.table.len() + row.key.len(),
        }
    }
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

/// The fields a `subscribe`/`unsubscribe` payload may have.
const COMMAND_FIELDS: [&str; 4] = ["table", "key", "fields", "old"];

/// A parsed `subscribe`/`unsubscribe` payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub target: Target,
    /// `fields`/`old`; `None`: whole events.
    pub projection: Option<Projection>,
}

impl From<Target> for Command {
    /// A command for whole events.
    fn from(target: Target) -> Command {
        Command {
            target,
            projection: None,
        }
    }
}

/// Parses a `subscribe`/`unsubscribe` payload:
/// `{ "table": "schema.table", "key": {...}?, "fields": [...]?, "old": bool? }`,
/// with a key of at most `max_key_bytes` (canonical JSON).
pub fn parse_command(payload: Option<&Value>, max_key_bytes: usize) -> Result<Command, String> {
    let target = parse_target(payload, max_key_bytes)?;
    let Some(Value::Object(map)) = payload else {
        unreachable!("parse_target accepts objects only");
    };
    Ok(Command {
        target,
        projection: Projection::parse(map)?,
    })
}

/// The target of a `subscribe`/`unsubscribe` payload (see [`parse_command`]).
pub fn parse_target(payload: Option<&Value>, max_key_bytes: usize) -> Result<Target, String> {
    let Some(Value::Object(map)) = payload else {
        return Err(
            "payload must be an object like {\"table\": \"public.orders\", \"key\": {\"id\": 42}}"
                .into(),
        );
    };
    if let Some(unknown) = map.keys().find(|k| !COMMAND_FIELDS.contains(&k.as_str())) {
        return Err(format!(
            "unknown field {unknown:?}; expected \"table\" and optionally \"key\", \"fields\", \"old\""
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
        Some(key @ Value::Object(fields)) if !fields.is_empty() => {
            let key = canonical_json(key);
            if key.len() > max_key_bytes {
                return Err(format!(
                    "key is {} bytes of JSON; at most {max_key_bytes} (fanout.max_key_bytes)",
                    key.len()
                ));
            }
            Ok(Target::Row(RowKey {
                table: table.clone(),
                key,
            }))
        }
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
    /// Per table, the shape of its changes for this socket (absent: whole).
    projections: HashMap<String, Arc<Projection>>,
    /// Sum of the targets' [`Target::bytes`] and the projections' bytes.
    bytes: usize,
}

impl Default for Subscriptions {
    fn default() -> Self {
        Subscriptions {
            all: true,
            targets: HashSet::new(),
            projections: HashMap::new(),
            bytes: 0,
        }
    }
}

impl Subscriptions {
    /// How this socket wants the changes of `table`; `None`: whole.
    pub fn projection(&self, table: &str) -> Option<&Arc<Projection>> {
        if self.projections.is_empty() {
            return None;
        }
        self.projections.get(table)
    }

    fn holds_table(&self, table: &str) -> bool {
        self.targets.iter().any(|t| match t {
            Target::Table(name) => name == table,
            Target::Row(row) => row.table == table,
        })
    }
}

impl Target {
    /// The `schema.table` it concerns.
    pub fn table(&self) -> &str {
        match self {
            Target::Table(table) => table,
            Target::Row(row) => &row.table,
        }
    }
}

/// Table and row subscriptions → socket ids, plus the "everything" set.
#[derive(Debug, Default)]
pub struct Index {
    all: HashSet<Sid>,
    tables: HashMap<String, HashSet<Sid>>,
    rows: HashMap<RowKey, HashSet<Sid>>,
    /// Per table, the sockets holding a row of it and how many rows: where
    /// a change without a key (`truncate`) goes besides `tables`.
    row_tables: HashMap<String, HashMap<Sid, usize>>,
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

    /// Applies a subscribe (its target, and its projection for the
    /// target's table); past one of `limits` it is refused and nothing
    /// changes.
    pub fn subscribe(
        &mut self,
        sid: Sid,
        subs: &mut Subscriptions,
        command: Command,
        limits: &Limits,
    ) -> Result<(), String> {
        let Command { target, projection } = command;
        let held = subs.targets.contains(&target) && !subs.all;
        if !held && subs.targets.len() >= limits.subscriptions {
            return Err(format!(
                "too many subscriptions: at most {} per socket (fanout.max_subscriptions); unsubscribe from one first",
                limits.subscriptions
            ));
        }
        let table = target.table();
        let old_projection = subs.projections.get(table).map_or(0, |p| p.bytes());
        let new_projection = projection.as_ref().map_or(0, Projection::bytes);
        let bytes =
            subs.bytes + if held { 0 } else { target.bytes() } + new_projection - old_projection;
        if bytes > limits.total_bytes {
            return Err(format!(
                "subscriptions would take {bytes} bytes; at most {} per socket (fanout.max_subscription_bytes)",
                limits.total_bytes
            ));
        }
        subs.bytes = bytes;
        match projection {
            Some(projection) => {
                subs.projections
                    .insert(table.to_owned(), Arc::new(projection));
            }
            None => {
                subs.projections.remove(table);
            }
        }
        if held {
            return Ok(());
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
                *self
                    .row_tables
                    .entry(row.table.clone())
                    .or_default()
                    .entry(sid)
                    .or_default() += 1;
            }
        }
        subs.targets.insert(target);
        Ok(())
    }

    /// Applies an unsubscribe (a no-op for a target not held). The last
    /// subscription to a table takes its projection along.
    pub fn unsubscribe(&mut self, sid: Sid, subs: &mut Subscriptions, target: &Target) {
        if subs.targets.remove(target) {
            subs.bytes -= target.bytes();
            self.remove(sid, target);
            if !subs.holds_table(target.table()) {
                if let Some(projection) = subs.projections.remove(target.table()) {
                    subs.bytes -= projection.bytes();
                }
            }
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
                if let Some(holders) = self.row_tables.get_mut(&row.table) {
                    if let Some(count) = holders.get_mut(&sid) {
                        *count -= 1;
                        if *count == 0 {
                            holders.remove(&sid);
                        }
                    }
                    if holders.is_empty() {
                        self.row_tables.remove(&row.table);
                    }
                }
            }
        }
    }

    /// How many sockets receive everything (have not subscribed yet).
    pub fn everything(&self) -> usize {
        self.all.len()
    }

    /// The sockets a change of `table` (and `row`; `None` for a change
    /// without a key, which concerns every row) goes to, each once, in no
    /// particular order.
    pub fn targets(&self, table: &str, row: Option<&RowKey>, out: &mut Vec<Sid>) {
        out.clear();
        out.extend(self.all.iter().copied());
        self.add_subscribed(table, row, out);
    }

    /// [`Index::targets`] without the sockets that receive everything:
    /// those that subscribed to this table or row, each once.
    pub fn subscribed(&self, table: &str, row: Option<&RowKey>, out: &mut Vec<Sid>) {
        out.clear();
        self.add_subscribed(table, row, out);
    }

    fn add_subscribed(&self, table: &str, row: Option<&RowKey>, out: &mut Vec<Sid>) {
        let mut sources = 0;
        if let Some(set) = self.tables.get(table) {
            out.extend(set.iter().copied());
            sources += 1;
        }
        match row {
            Some(row) => {
                if let Some(set) = self.rows.get(row) {
                    out.extend(set.iter().copied());
                    sources += 1;
                }
            }
            None => {
                if let Some(holders) = self.row_tables.get(table) {
                    out.extend(holders.keys().copied());
                    sources += 1;
                }
            }
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
        if subs.all || subs.targets.contains(&Target::Table(table.to_owned())) {
            return true;
        }
        match row {
            Some(row) => subs.targets.contains(&Target::Row(row.clone())),
            None => subs
                .targets
                .iter()
                .any(|t| matches!(t, Target::Row(r) if r.table == table)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const LIMITS: Limits = Limits {
        subscriptions: 1024,
        key_bytes: 1024,
        total_bytes: 1 << 20,
    };

    fn parse_target_(payload: Option<&Value>) -> Result<Target, String> {
        parse_target(payload, LIMITS.key_bytes)
    }

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
            parse_target_(Some(&json!({"table": "public.orders"}))).unwrap(),
            Target::Table("public.orders".into())
        );
        assert_eq!(
            parse_target_(Some(&json!({"table": "public.orders", "key": {"id": 42}}))).unwrap(),
            Target::Row(RowKey {
                table: "public.orders".into(),
                key: r#"{"id":42}"#.into()
            })
        );
        assert_eq!(
            parse_target_(Some(&json!({"table": "public.orders", "key": null}))).unwrap(),
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
            let err = parse_target_(payload.as_ref()).unwrap_err();
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
            .subscribe(
                a,
                &mut subs_a,
                (Target::Row(order42.clone())).into(),
                &LIMITS,
            )
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
            .subscribe(
                a,
                &mut subs_a,
                (Target::Table("public.orders".into())).into(),
                &LIMITS,
            )
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

    #[test]
    fn a_keyless_change_reaches_the_row_subscribers_of_its_table() {
        let mut index = Index::default();
        let (a, b) = (sid(0), sid(1));
        let (mut subs_a, mut subs_b) = (Subscriptions::default(), Subscriptions::default());
        index.add_socket(a);
        index.add_socket(b);
        let row = |table: &str| {
            Target::Row(RowKey {
                table: table.into(),
                key: r#"{"id":1}"#.into(),
            })
        };
        index
            .subscribe(a, &mut subs_a, (row("public.orders")).into(), &LIMITS)
            .unwrap();
        index
            .subscribe(b, &mut subs_b, (row("public.items")).into(), &LIMITS)
            .unwrap();
        let mut out = Vec::new();
        index.targets("public.orders", None, &mut out);
        assert_eq!(out, vec![a]);
        assert!(Index::matches(&subs_a, "public.orders", None));
        assert!(!Index::matches(&subs_b, "public.orders", None));
        index.unsubscribe(a, &mut subs_a, &row("public.orders"));
        index.targets("public.orders", None, &mut out);
        assert!(out.is_empty());
        assert!(!index.row_tables.contains_key("public.orders"));
    }

    #[test]
    fn caps_refuse_and_change_nothing() {
        let limits = Limits {
            subscriptions: 2,
            key_bytes: 16,
            total_bytes: 40,
        };
        let too_long = json!({"table": "public.orders", "key": {"id": "x".repeat(20)}});
        let err = parse_target(Some(&too_long), limits.key_bytes).unwrap_err();
        assert!(err.contains("fanout.max_key_bytes"), "{err}");

        let mut index = Index::default();
        let a = sid(0);
        let mut subs = Subscriptions::default();
        index.add_socket(a);
        let table = |n: &str| Target::Table(format!("public.{n}"));
        index
            .subscribe(a, &mut subs, (table("orders")).into(), &limits)
            .unwrap();
        // 13 + 26 bytes > 40.
        let err = index
            .subscribe(
                a,
                &mut subs,
                (table("a_rather_long_name_here")).into(),
                &limits,
            )
            .unwrap_err();
        assert!(err.contains("fanout.max_subscription_bytes"), "{err}");
        index
            .subscribe(a, &mut subs, (table("items")).into(), &limits)
            .unwrap();
        let err = index
            .subscribe(a, &mut subs, (table("x")).into(), &limits)
            .unwrap_err();
        assert!(err.contains("fanout.max_subscriptions"), "{err}");
        assert_eq!(subs.targets.len(), 2);
        assert_eq!(subs.bytes, "public.orders".len() + "public.items".len());
        // Subscribing again to what is held is no new subscription.
        index
            .subscribe(a, &mut subs, (table("items")).into(), &limits)
            .unwrap();
        index.unsubscribe(a, &mut subs, &table("items"));
        index
            .subscribe(a, &mut subs, (table("x")).into(), &limits)
            .unwrap();
    }

    #[test]
    fn a_projection_follows_the_latest_subscribe_of_its_table_and_counts_its_bytes() {
        let limits = Limits {
            subscriptions: 8,
            key_bytes: 64,
            total_bytes: 40,
        };
        let mut index = Index::default();
        let a = sid(0);
        let mut subs = Subscriptions::default();
        index.add_socket(a);
        let command = |payload: Value| parse_command(Some(&payload), limits.key_bytes).unwrap();

        // 13 bytes of table + 6 of column names.
        index
            .subscribe(
                a,
                &mut subs,
                command(json!({"table": "public.orders", "fields": ["status"]})),
                &limits,
            )
            .unwrap();
        assert_eq!(subs.bytes, 19);
        assert!(subs.projection("public.orders").is_some());
        assert!(subs.projection("public.items").is_none());
        // A row of the same table re-sets the table's projection: whole.
        let row = json!({"table": "public.orders", "key": {"id": 1}});
        index
            .subscribe(a, &mut subs, command(row.clone()), &limits)
            .unwrap();
        assert!(subs.projection("public.orders").is_none());
        assert_eq!(subs.bytes, 13 + 13 + 8);
        // Too many column bytes: refused, nothing changes.
        let err = index
            .subscribe(
                a,
                &mut subs,
                command(json!({"table": "public.orders", "fields": ["a_long_column_name"]})),
                &limits,
            )
            .unwrap_err();
        assert!(err.contains("fanout.max_subscription_bytes"), "{err}");
        assert!(subs.projection("public.orders").is_none());
        assert_eq!(subs.bytes, 34);
        index
            .subscribe(
                a,
                &mut subs,
                command(json!({"table": "public.orders", "old": false})),
                &limits,
            )
            .unwrap();
        assert!(subs.projection("public.orders").is_some());
        // The projection goes with the table's last subscription.
        index.unsubscribe(a, &mut subs, &command(row).target);
        assert!(subs.projection("public.orders").is_some());
        index.unsubscribe(a, &mut subs, &Target::Table("public.orders".into()));
        assert!(subs.projection("public.orders").is_none());
        assert_eq!(subs.bytes, 0);
    }

    #[test]
    fn malformed_projections_are_refused() {
        for payload in [
            json!({"table": "public.orders", "fields": "status"}),
            json!({"table": "public.orders", "fields": [1]}),
            json!({"table": "public.orders", "old": 0}),
        ] {
            assert!(parse_command(Some(&payload), 64).is_err(), "{payload}");
        }
    }
}
