//! The pgoutput messages the decoder benchmarks feed: the `orders` row and a
//! 30-column row of mixed types, as Postgres sends them (protocol version 1,
//! text tuples, REPLICA IDENTITY FULL as `sql/schema.sql` sets it).
//!
//! Shared by `benches/decoder.rs` (criterion, wall clock) and
//! `examples/decoder_instructions.rs` (a fixed number of changes, for
//! `valgrind --tool=callgrind`), so both measure the same bytes.

#![allow(dead_code)] // each user takes what it needs

#[path = "../../src/decoder/wire_builders.rs"]
pub mod wire;

use walcast::decoder::{Decoded, Decoder};
use walcast::event::Lsn;
use wire::V::{self, Null, Text as T};

pub const ORDERS: u32 = 16_384;
pub const WIDE: u32 = 16_400;
pub const FINAL_LSN: u64 = 0x16B3_8000;
/// 2026-11-22T05:04:10.580065Z in Postgres-epoch microseconds.
pub const COMMIT_TIME: i64 = 848_639_050_580_065;

/// `sql/schema.sql`'s orders table.
pub const ORDERS_COLUMNS: &[(&str, u32)] = &[
    ("id", 20),
    ("customer_name", 25),
    ("product_name", 25),
    ("status", 25),
    ("created_at", 1114),
    ("updated_at", 1114),
];

pub fn orders_row<'a>(id: &'a str, status: &'a str, updated_at: &'a str) -> [V<'a>; 6] {
    [
        T(id),
        T("Harry Hole"),
        T("iPhone 17 Pro Max 256 GB"),
        T(status),
        T("2026-11-22 05:01:00.123456"),
        T(updated_at),
    ]
}

/// 30 columns of mixed types, text forms as Postgres sends them with
/// walcast's session settings (DateStyle=ISO, TimeZone=UTC,
/// extra_float_digits=3, bytea_output=hex).
pub const WIDE_COLUMNS: &[(&str, u32)] = &[
    ("id", 20),
    ("small", 21),
    ("count", 23),
    ("active", 16),
    ("score", 701),
    ("ratio", 700),
    ("price", 1700),
    ("code", 25),
    ("label", 1043),
    ("description", 25),
    ("uuid", 2950),
    ("day", 1082),
    ("created_at", 1114),
    ("seen_at", 1184),
    ("attrs", 3802),
    ("digest", 17),
    ("ids", 1007),
    ("tags", 1009),
    ("ttl", 1186),
    ("flag", 16),
    ("big", 20),
    ("tax", 1700),
    ("note", 25),
    ("updated_at", 1184),
    ("payload", 114),
    ("country", 1042),
    ("weight", 701),
    ("version", 23),
    ("email", 25),
    ("parent_uuid", 2950),
];

pub fn wide_row<'a>(id: &'a str, version: &'a str) -> Vec<V<'a>> {
    vec![
        T(id),
        T("12"),
        T("48213"),
        T("t"),
        T("0.30000000000000004"),
        T("3.14159274"),
        T("1234.50"),
        T("SKU-0042"),
        T("Widget, large"),
        T("A long-ish free text description of the item, with punctuation: \"quoted\", commas, and a tab\tinside."),
        T("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
        T("2026-11-22"),
        T("2026-11-22 05:04:10.580065"),
        T("2026-11-22 05:04:10.580065+00"),
        T(r#"{"color": "red", "sizes": [1, 2, 3], "nested": {"a": true, "b": null}}"#),
        T("\\x0123456789abcdef0123456789abcdef"),
        T("{1,2,3,4,5}"),
        T(r#"{red,"dark blue",NULL}"#),
        T("1 day 02:03:04"),
        T("f"),
        T("9223372036854775807"),
        T("0.19"),
        Null,
        T("2026-11-22 05:04:11+00"),
        T(r#"{"k":"v"}"#),
        T("SE "),
        T("72.5"),
        T(version),
        T("harry.hole@example.com"),
        T("6ba7b810-9dad-11d1-80b4-00c04fd430c8"),
    ]
}

/// A decoder that has seen the relation (with its primary key set, as
/// walcast does from the catalog) and is inside a transaction.
pub fn decoder_for(oid: u32, name: &str, columns: &[(&str, u32)]) -> Decoder {
    // REPLICA IDENTITY FULL: every column is part of the identity.
    let identity: Vec<(bool, &str, u32)> = columns.iter().map(|&(n, t)| (true, n, t)).collect();
    let mut decoder = Decoder::new();
    decoder.set_key_columns(oid, vec!["id".to_owned()]);
    decoder
        .decode(Lsn(0x100), &wire::relation(oid, "public", name, &identity))
        .expect("relation");
    decoder
        .decode(Lsn(0x100), &wire::begin(FINAL_LSN, COMMIT_TIME, 1234))
        .expect("begin");
    decoder
}

/// The WAL start every benchmark change arrives with.
pub const WAL_START: Lsn = Lsn(0x16B3_7000);

/// One benchmark input: a change message for a relation.
pub struct Case {
    pub name: &'static str,
    pub oid: u32,
    pub table: &'static str,
    pub columns: &'static [(&'static str, u32)],
    pub message: Vec<u8>,
}

impl Case {
    /// A decoder that has seen this case's relation and is inside a
    /// transaction.
    pub fn decoder(&self) -> Decoder {
        decoder_for(self.oid, self.table, self.columns)
    }
}

const TS: &str = "2026-11-22 05:04:10.580065";

/// The single-change cases: orders insert, update (old + new row) and
/// delete; 30-column insert and update.
pub fn cases() -> Vec<Case> {
    let case = |name, oid, table, columns, message| Case {
        name,
        oid,
        table,
        columns,
        message,
    };
    vec![
        case(
            "orders_insert",
            ORDERS,
            "orders",
            ORDERS_COLUMNS,
            wire::insert(ORDERS, &orders_row("1234567", "pending", TS)),
        ),
        case(
            "orders_update",
            ORDERS,
            "orders",
            ORDERS_COLUMNS,
            wire::update(
                ORDERS,
                Some((
                    b'O',
                    &orders_row("1234567", "pending", "2026-11-22 05:01:00.123456"),
                )),
                &orders_row("1234567", "shipped", TS),
            ),
        ),
        case(
            "orders_delete",
            ORDERS,
            "orders",
            ORDERS_COLUMNS,
            wire::delete(ORDERS, b'O', &orders_row("1234567", "shipped", TS)),
        ),
        case(
            "wide_insert",
            WIDE,
            "wide",
            WIDE_COLUMNS,
            wire::insert(WIDE, &wide_row("1234567", "1")),
        ),
        case(
            "wide_update",
            WIDE,
            "wide",
            WIDE_COLUMNS,
            wire::update(
                WIDE,
                Some((b'O', &wide_row("1234567", "1"))),
                &wide_row("1234567", "2"),
            ),
        ),
    ]
}

/// The backlog-drain mix as one whole transaction: Begin, 5 inserts,
/// 3 updates, 2 deletes, Commit (10 changes) on `orders`.
pub fn orders_transaction() -> Vec<Vec<u8>> {
    let mut txn: Vec<Vec<u8>> = vec![wire::begin(FINAL_LSN, COMMIT_TIME, 1234)];
    let ids: Vec<String> = (1_000_000..1_000_005).map(|i| i.to_string()).collect();
    for id in &ids {
        txn.push(wire::insert(ORDERS, &orders_row(id, "pending", TS)));
    }
    for id in &ids[..3] {
        txn.push(wire::update(
            ORDERS,
            Some((b'O', &orders_row(id, "pending", TS))),
            &orders_row(id, "processing", "2026-11-22 05:04:10.600001"),
        ));
    }
    for id in &ids[3..] {
        txn.push(wire::delete(ORDERS, b'O', &orders_row(id, "pending", TS)));
    }
    txn.push(wire::commit(FINAL_LSN, FINAL_LSN + 0x30, COMMIT_TIME));
    txn
}

/// Decode one message into an event and serialize it, as capture + encoder do.
#[inline]
pub fn decode_encode(decoder: &mut Decoder, message: &[u8], out: &mut Vec<u8>) {
    out.clear();
    match decoder.decode(WAL_START, message) {
        Ok(Decoded::Change(event)) => event.write_json(out),
        Ok(_) => {}
        Err(e) => panic!("decode failed: {e}"),
    }
}
