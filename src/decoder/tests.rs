//! Decoder tests over hand-assembled pgoutput bytes.
//!
//! `wire` builds messages byte for byte as the PostgreSQL docs ("Logical
//! Replication Message Formats", protocol version 1) lay them out, so each
//! test reads as the stream Postgres would send. Value conversion details
//! are tested in `value` and `array`; these tests cover the event shape.

use super::*;
use crate::event::PgTimestamp;

use super::wire_builders as wire;

use wire::{t, Null, Toast};

const ORDERS: u32 = 16_384;
const ITEMS: u32 = 16_390;
const FINAL_LSN: u64 = 0x16B_3800;
const XID: u32 = 1234;

/// 2026-11-22T05:04:10.580065Z in Postgres-epoch microseconds.
fn commit_time() -> i64 {
    let unix = chrono::DateTime::parse_from_rfc3339("2026-11-22T05:04:10.580065Z")
        .unwrap()
        .timestamp_micros();
    unix - 946_684_800_000_000
}

/// `orders(id int4, customer_name text, status text, note text)`; `key`
/// says which columns carry the replica-identity flag.
fn orders_relation(key: [bool; 4]) -> Vec<u8> {
    wire::relation(
        ORDERS,
        "public",
        "orders",
        &[
            (key[0], "id", 23),
            (key[1], "customer_name", 25),
            (key[2], "status", 25),
            (key[3], "note", 25),
        ],
    )
}

const DEFAULT_IDENTITY: [bool; 4] = [true, false, false, false];
const FULL_IDENTITY: [bool; 4] = [true; 4];

/// A decoder that has seen `orders` and is inside a transaction.
fn decoder_in_transaction(identity: [bool; 4]) -> Decoder {
    let mut decoder = Decoder::new();
    decode(&mut decoder, &orders_relation(identity));
    decode(&mut decoder, &wire::begin(FINAL_LSN, commit_time(), XID));
    decoder
}

fn decode(decoder: &mut Decoder, message: &[u8]) -> Decoded {
    decoder
        .decode(Lsn(0x16B_3700), message)
        .unwrap_or_else(|e| panic!("decode failed: {e}"))
}

fn change(decoder: &mut Decoder, message: &[u8]) -> ChangeEvent {
    match decode(decoder, message) {
        Decoded::Change(event) => event,
        other => panic!("expected a change, got {other:?}"),
    }
}

/// A row as compact JSON, for readable assertions.
fn json(row: &Option<Row>) -> String {
    serde_json::to_string(row).unwrap()
}

fn names(columns: &[ColumnName]) -> Vec<&str> {
    columns.iter().map(|c| &**c).collect()
}

#[test]
fn update_event_json_matches_the_contract_example() {
    let mut decoder = Decoder::new();
    let relation = wire::relation(
        ORDERS,
        "public",
        "orders",
        &[
            (true, "id", 23),
            (true, "customer_name", 25),
            (true, "product_name", 25),
            (true, "status", 25),
            (true, "updated_at", 1114),
        ],
    );
    assert_eq!(
        decode(&mut decoder, &relation),
        Decoded::Relation(RelationInfo {
            oid: ORDERS,
            schema: Arc::from("public"),
            table: Arc::from("orders"),
            replica_identity: 'd',
            captured: true,
        })
    );
    // REPLICA IDENTITY FULL flags every column; the caller knows the PK.
    decoder.set_key_columns(ORDERS, vec!["id".into()]);
    decode(&mut decoder, &wire::begin(FINAL_LSN, commit_time(), XID));
    let row = |id: &'static str| {
        [
            t(id),
            t("Ann"),
            t("Pen"),
            t("pending"),
            t("2026-11-22 05:00:00"),
        ]
    };
    for id in ["1", "2", "3"] {
        change(&mut decoder, &wire::insert(ORDERS, &row(id)));
    }
    let update = wire::update(
        ORDERS,
        Some((
            b'O',
            &[
                t("42"),
                t("Harry"),
                t("iPhone 17"),
                t("pending"),
                t("2026-11-22 05:01:00"),
            ],
        )),
        &[
            t("42"),
            t("Harry"),
            t("iPhone 17"),
            t("shipped"),
            t("2026-11-22 05:04:10.580065"),
        ],
    );
    let Decoded::Change(event) = decoder.decode(Lsn(0x16B_3748), &update).unwrap() else {
        panic!("expected a change");
    };
    let expected = concat!(
        r#"{"id":"00000000016B3800-0000000003","op":"update","schema":"public","table":"orders","#,
        r#""key":{"id":42},"#,
        r#""new":{"id":42,"customer_name":"Harry","product_name":"iPhone 17","#,
        r#""status":"shipped","updated_at":"2026-11-22T05:04:10.580065"},"#,
        r#""old":{"id":42,"customer_name":"Harry","product_name":"iPhone 17","#,
        r#""status":"pending","updated_at":"2026-11-22T05:01:00.000000"},"#,
        r#""changed":["status","updated_at"],"unchanged_toast":[],"#,
        r#""lsn":"0/16B3748","commit_lsn":"0/16B3800","xid":1234,"#,
        r#""commit_time":"2026-11-22T05:04:10.580065Z"}"#
    );
    assert_eq!(String::from_utf8(event.to_json()).unwrap(), expected);

    let commit = wire::commit(FINAL_LSN, FINAL_LSN + 0x30, commit_time());
    assert_eq!(
        decode(&mut decoder, &commit),
        Decoded::Commit(Commit {
            commit_lsn: Lsn(FINAL_LSN),
            end_lsn: Lsn(FINAL_LSN + 0x30),
            commit_time: PgTimestamp(commit_time()),
        })
    );
    assert!(!decoder.in_transaction());
}

#[test]
fn insert_event() {
    let mut decoder = decoder_in_transaction(DEFAULT_IDENTITY);
    let insert = wire::insert(ORDERS, &[t("7"), t("Ann"), t("new"), Null]);
    let Decoded::Change(event) = decoder.decode(Lsn(0x16B_3750), &insert).unwrap() else {
        panic!("expected a change");
    };
    assert_eq!(event.op, Op::Insert);
    assert_eq!(event.id.to_string(), "00000000016B3800-0000000000");
    assert_eq!(event.lsn, Lsn(0x16B_3750));
    assert_eq!(event.commit_lsn, Lsn(FINAL_LSN));
    assert_eq!(event.xid, XID);
    assert_eq!(event.commit_time, PgTimestamp(commit_time()));
    assert_eq!((&*event.schema, &*event.table), ("public", "orders"));
    assert_eq!(json(&event.key), r#"{"id":7}"#);
    assert_eq!(
        json(&event.new),
        r#"{"id":7,"customer_name":"Ann","status":"new","note":null}"#
    );
    assert_eq!(event.old, None);
    assert_eq!(event.changed, None);
    assert!(event.unchanged_toast.is_empty());
}

#[test]
fn begin_is_returned_and_ids_follow_the_transaction() {
    let mut decoder = Decoder::new();
    decode(&mut decoder, &orders_relation(DEFAULT_IDENTITY));
    decode(
        &mut decoder,
        &wire::relation(ITEMS, "shop", "items", &[(true, "sku", 25)]),
    );
    assert_eq!(
        decode(&mut decoder, &wire::begin(FINAL_LSN, commit_time(), XID)),
        Decoded::Begin(Begin {
            final_lsn: Lsn(FINAL_LSN),
            commit_time: PgTimestamp(commit_time()),
            xid: XID,
        })
    );
    let row = [t("1"), t("a"), t("b"), t("c")];
    let mut ids = vec![change(&mut decoder, &wire::insert(ORDERS, &row)).id];
    assert_eq!(
        decode(&mut decoder, &wire::origin(5, "elsewhere")),
        Decoded::Other
    );
    assert_eq!(
        decode(&mut decoder, &wire::logical_message("app", b"hello")),
        Decoded::Message(WalMessage {
            transactional: true,
            lsn: Lsn(0x100),
            prefix: "app".into(),
            content: b"hello".to_vec(),
        })
    );
    let Decoded::Truncate { events, filtered } =
        decode(&mut decoder, &wire::truncate(&[ORDERS, ITEMS], 1))
    else {
        panic!("expected a truncate");
    };
    assert_eq!(filtered, []);
    for event in &events {
        assert_eq!(event.op, Op::Truncate);
        assert_eq!((&event.key, &event.new, &event.old), (&None, &None, &None));
        assert_eq!(event.changed, None);
    }
    assert_eq!(
        events
            .iter()
            .map(|e| e.qualified_table())
            .collect::<Vec<_>>(),
        ["public.orders", "shop.items"]
    );
    ids.extend(events.iter().map(|e| e.id));
    ids.push(
        change(
            &mut decoder,
            &wire::delete(ORDERS, b'K', &[t("1"), Null, Null, Null]),
        )
        .id,
    );
    let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
    assert_eq!(
        ids,
        [
            "00000000016B3800-0000000000",
            "00000000016B3800-0000000001",
            "00000000016B3800-0000000002",
            "00000000016B3800-0000000003",
        ]
    );
    decode(
        &mut decoder,
        &wire::commit(FINAL_LSN, FINAL_LSN + 8, commit_time()),
    );

    // The next transaction numbers from 0 under its own commit LSN.
    decode(
        &mut decoder,
        &wire::begin(0x1_0000_0000, commit_time(), XID + 1),
    );
    let event = change(&mut decoder, &wire::insert(ORDERS, &row));
    assert_eq!(event.id.to_string(), "0000000100000000-0000000000");
    assert_eq!(event.xid, XID + 1);
}

#[test]
fn a_begin_inside_a_transaction_restarts_it() {
    // What a reconnect looks like: the interrupted transaction is replayed.
    let mut decoder = decoder_in_transaction(DEFAULT_IDENTITY);
    let row = [t("1"), t("a"), t("b"), t("c")];
    change(&mut decoder, &wire::insert(ORDERS, &row));
    decode(&mut decoder, &wire::begin(FINAL_LSN, commit_time(), XID));
    let event = change(&mut decoder, &wire::insert(ORDERS, &row));
    assert_eq!(event.id.ordinal, 0);
}

#[test]
fn update_under_default_identity_without_key_change_has_no_old_row() {
    let mut decoder = decoder_in_transaction(DEFAULT_IDENTITY);
    let event = change(
        &mut decoder,
        &wire::update(ORDERS, None, &[t("7"), t("Ann"), t("paid"), Null]),
    );
    assert_eq!(event.op, Op::Update);
    assert_eq!(json(&event.key), r#"{"id":7}"#);
    assert_eq!(
        json(&event.new),
        r#"{"id":7,"customer_name":"Ann","status":"paid","note":null}"#
    );
    assert_eq!(event.old, None);
    assert_eq!(event.changed, None);
}

#[test]
fn update_with_key_tuple_keeps_only_identity_columns_in_old() {
    let mut decoder = decoder_in_transaction(DEFAULT_IDENTITY);
    let event = change(
        &mut decoder,
        &wire::update(
            ORDERS,
            Some((b'K', &[t("7"), Null, Null, Null])),
            &[t("8"), t("Ann"), t("paid"), Null],
        ),
    );
    assert_eq!(json(&event.old), r#"{"id":7}"#);
    assert_eq!(json(&event.key), r#"{"id":8}"#);
    assert_eq!(event.changed, None);
}

#[test]
fn update_under_full_identity_reports_changed_columns() {
    let mut decoder = decoder_in_transaction(FULL_IDENTITY);
    decoder.set_key_columns(ORDERS, vec!["id".into()]);
    let event = change(
        &mut decoder,
        &wire::update(
            ORDERS,
            Some((b'O', &[t("7"), t("Ann"), t("new"), Null])),
            &[t("7"), t("Ann"), t("paid"), t("gift")],
        ),
    );
    assert_eq!(json(&event.key), r#"{"id":7}"#);
    assert_eq!(
        json(&event.old),
        r#"{"id":7,"customer_name":"Ann","status":"new","note":null}"#
    );
    assert_eq!(names(event.changed.as_deref().unwrap()), ["status", "note"]);

    // Without the override every flagged column is the key.
    decoder.set_key_columns(ORDERS, vec![]);
    let event = change(
        &mut decoder,
        &wire::update(
            ORDERS,
            Some((b'O', &[t("7"), t("Ann"), t("paid"), Null])),
            &[t("7"), t("Ann"), t("paid"), Null],
        ),
    );
    assert_eq!(
        json(&event.key),
        r#"{"id":7,"customer_name":"Ann","status":"paid","note":null}"#
    );
    assert_eq!(event.changed, Some(vec![]));
}

#[test]
fn unchanged_toast_is_filled_from_a_whole_old_row() {
    let mut decoder = decoder_in_transaction(FULL_IDENTITY);
    decoder.set_key_columns(ORDERS, vec!["id".into()]);
    let event = change(
        &mut decoder,
        &wire::update(
            ORDERS,
            Some((b'O', &[t("7"), t("Ann"), t("new"), t("long text")])),
            &[t("7"), t("Ann"), t("paid"), Toast],
        ),
    );
    assert_eq!(
        json(&event.new),
        r#"{"id":7,"customer_name":"Ann","status":"paid","note":"long text"}"#
    );
    assert_eq!(names(&event.unchanged_toast), ["note"]);
    // Filled in, not changed.
    assert_eq!(names(event.changed.as_deref().unwrap()), ["status"]);
}

#[test]
fn unchanged_toast_without_old_value_is_absent_from_new() {
    let mut decoder = decoder_in_transaction(DEFAULT_IDENTITY);
    let event = change(
        &mut decoder,
        &wire::update(ORDERS, None, &[t("7"), t("Ann"), t("paid"), Toast]),
    );
    assert_eq!(
        json(&event.new),
        r#"{"id":7,"customer_name":"Ann","status":"paid"}"#
    );
    assert_eq!(names(&event.unchanged_toast), ["note"]);

    // A key tuple carries no value for non-identity columns either.
    let event = change(
        &mut decoder,
        &wire::update(
            ORDERS,
            Some((b'K', &[t("7"), Null, Null, Null])),
            &[t("8"), t("Ann"), t("paid"), Toast],
        ),
    );
    assert_eq!(
        json(&event.new),
        r#"{"id":8,"customer_name":"Ann","status":"paid"}"#
    );
    assert_eq!(names(&event.unchanged_toast), ["note"]);

    // Nor does an old row whose own value was not resent.
    decoder.set_key_columns(ORDERS, vec!["id".into()]);
    let event = change(
        &mut decoder,
        &wire::update(
            ORDERS,
            Some((b'O', &[t("8"), t("Ann"), t("paid"), Toast])),
            &[t("8"), t("Bob"), t("paid"), Toast],
        ),
    );
    assert_eq!(
        json(&event.new),
        r#"{"id":8,"customer_name":"Bob","status":"paid"}"#
    );
    assert_eq!(names(&event.changed.unwrap()), ["customer_name"]);
}

#[test]
fn delete_with_key_tuple_and_with_whole_old_row() {
    let mut decoder = decoder_in_transaction(DEFAULT_IDENTITY);
    let event = change(
        &mut decoder,
        &wire::delete(ORDERS, b'K', &[t("7"), Null, Null, Null]),
    );
    assert_eq!(event.op, Op::Delete);
    assert_eq!(json(&event.key), r#"{"id":7}"#);
    assert_eq!(json(&event.old), r#"{"id":7}"#);
    assert_eq!(event.new, None);
    assert_eq!(event.changed, None);

    let mut decoder = decoder_in_transaction(FULL_IDENTITY);
    decoder.set_key_columns(ORDERS, vec!["id".into(), "status".into()]);
    let event = change(
        &mut decoder,
        &wire::delete(ORDERS, b'O', &[t("7"), t("Ann"), t("new"), Null]),
    );
    assert_eq!(json(&event.key), r#"{"id":7,"status":"new"}"#);
    assert_eq!(
        json(&event.old),
        r#"{"id":7,"customer_name":"Ann","status":"new","note":null}"#
    );
}

#[test]
fn key_columns_are_kept_in_table_order_and_survive_relation_updates() {
    let mut decoder = Decoder::new();
    // Set before the Relation message arrives, in a different order, with a
    // name the table does not have.
    decoder.set_key_columns(ORDERS, vec!["status".into(), "nope".into(), "id".into()]);
    decode(&mut decoder, &orders_relation(FULL_IDENTITY));
    decode(&mut decoder, &wire::begin(FINAL_LSN, commit_time(), XID));
    let row = [t("7"), t("Ann"), t("new"), Null];
    let event = change(&mut decoder, &wire::insert(ORDERS, &row));
    assert_eq!(json(&event.key), r#"{"id":7,"status":"new"}"#);

    decode(&mut decoder, &orders_relation(FULL_IDENTITY));
    let event = change(&mut decoder, &wire::insert(ORDERS, &row));
    assert_eq!(json(&event.key), r#"{"id":7,"status":"new"}"#);
}

#[test]
fn relation_replaced_mid_stream_maps_later_tuples_to_the_new_columns() {
    let mut decoder = decoder_in_transaction(DEFAULT_IDENTITY);
    // ALTER TABLE orders DROP COLUMN note, ADD COLUMN qty int2, RENAME status TO state
    let altered = wire::relation(
        ORDERS,
        "public",
        "orders",
        &[
            (true, "id", 23),
            (false, "customer_name", 25),
            (false, "state", 25),
            (false, "qty", 21),
            (false, "paid", 16),
        ],
    );
    decode(&mut decoder, &altered);
    let event = change(
        &mut decoder,
        &wire::insert(ORDERS, &[t("7"), t("Ann"), t("new"), t("3"), t("t")]),
    );
    assert_eq!(
        json(&event.new),
        r#"{"id":7,"customer_name":"Ann","state":"new","qty":3,"paid":true}"#
    );

    let stale = wire::insert(ORDERS, &[t("8"), t("Bob"), t("new"), Null]);
    let err = decoder.decode(Lsn(1), &stale).unwrap_err();
    assert!(
        matches!(
            err,
            DecodeError::ColumnCountMismatch {
                expected: 5,
                actual: 4,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "Insert message for public.orders (oid 16384): new tuple has 4 columns, the relation has 5"
    );
    // The failed change took no ordinal.
    let event = change(
        &mut decoder,
        &wire::insert(ORDERS, &[t("9"), t("Cy"), t("new"), t("1"), t("f")]),
    );
    assert_eq!(event.id.ordinal, 1);

    // Old and key tuples are checked too.
    let update = wire::update(
        ORDERS,
        Some((b'K', &[t("9"), Null, Null, Null])),
        &[t("9"), t("Cy"), t("new"), t("1"), t("f")],
    );
    assert!(matches!(
        decoder.decode(Lsn(1), &update),
        Err(DecodeError::ColumnCountMismatch {
            tuple: "key tuple",
            ..
        })
    ));
    let delete = wire::delete(ORDERS, b'O', &[t("9"), Null]);
    assert!(matches!(
        decoder.decode(Lsn(1), &delete),
        Err(DecodeError::ColumnCountMismatch {
            tuple: "old tuple",
            ..
        })
    ));
}

#[test]
fn values_are_typed_by_column_type() {
    let mut decoder = Decoder::new();
    let columns = [
        (true, "b", 16),
        (false, "i2", 21),
        (false, "i8", 20),
        (false, "o", 26),
        (false, "f4", 700),
        (false, "f8", 701),
        (false, "n", 1700),
        (false, "j", 3802),
        (false, "u", 2950),
        (false, "d", 1082),
        (false, "ts", 1114),
        (false, "tz", 1184),
        (false, "by", 17),
        (false, "arr", 1007),
        (false, "iv", 1186),
    ];
    decode(&mut decoder, &wire::relation(ORDERS, "", "types", &columns));
    decode(&mut decoder, &wire::begin(FINAL_LSN, commit_time(), XID));
    let event = change(
        &mut decoder,
        &wire::insert(
            ORDERS,
            &[
                t("t"),
                t("-2"),
                t("9007199254740993"),
                t("4000000000"),
                t("NaN"),
                t("-0.5"),
                t("12.50"),
                t(r#"{"k": [true]}"#),
                t("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
                t("2026-11-22"),
                t("2026-11-22 05:04:10.580065"),
                t("2026-11-22 10:34:10+05:30"),
                t("\\x00ff"),
                t("[0:1]={{1,NULL},{3,4}}"),
                t("1 day"),
            ],
        ),
    );
    // An empty namespace is pg_catalog.
    assert_eq!(&*event.schema, "pg_catalog");
    assert_eq!(
        json(&event.new),
        concat!(
            r#"{"b":true,"i2":-2,"i8":9007199254740993,"o":4000000000,"f4":"NaN","f8":-0.5,"#,
            r#""n":"12.50","j":{"k":[true]},"u":"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11","#,
            r#""d":"2026-11-22","ts":"2026-11-22T05:04:10.580065","tz":"2026-11-22T05:04:10.000000Z","#,
            r#""by":"AP8=","arr":[[1,null],[3,4]],"iv":"1 day"}"#
        )
    );
}

#[test]
fn custom_types_from_type_messages() {
    let mut decoder = Decoder::new();
    assert_eq!(
        decode(&mut decoder, &wire::type_message(70_000, "public", "mood")),
        Decoded::Type { oid: 70_000 }
    );
    decode(&mut decoder, &wire::type_message(70_001, "public", "_mood"));
    let columns = [
        (true, "m", 70_000),
        (false, "ms", 70_001),
        (false, "late", 70_002),
    ];
    decode(
        &mut decoder,
        &wire::relation(ORDERS, "public", "moods", &columns),
    );
    // A type described after the relation that uses it still applies.
    decode(&mut decoder, &wire::type_message(70_002, "public", "_tag"));
    decode(&mut decoder, &wire::begin(FINAL_LSN, commit_time(), XID));
    let event = change(
        &mut decoder,
        &wire::insert(ORDERS, &[t("happy"), t(r#"{sad,"so so",NULL}"#), t("{a}")]),
    );
    assert_eq!(
        json(&event.new),
        r#"{"m":"happy","ms":["sad","so so",null],"late":["a"]}"#
    );
}

#[test]
fn changes_outside_a_transaction_are_errors() {
    let mut decoder = Decoder::new();
    decode(&mut decoder, &orders_relation(DEFAULT_IDENTITY));
    let row = [t("1"), t("a"), t("b"), t("c")];
    let key = [t("1"), Null, Null, Null];
    for (message, name) in [
        (wire::insert(ORDERS, &row), "Insert"),
        (wire::update(ORDERS, None, &row), "Update"),
        (wire::delete(ORDERS, b'K', &key), "Delete"),
        (wire::truncate(&[ORDERS], 0), "Truncate"),
        (wire::commit(FINAL_LSN, FINAL_LSN, 0), "Commit"),
    ] {
        match decoder.decode(Lsn(1), &message) {
            Err(DecodeError::OutsideTransaction { message }) => assert_eq!(message, name),
            other => panic!("{name}: expected OutsideTransaction, got {other:?}"),
        }
    }
    // Relation, Type, Origin and logical messages may come at any time.
    assert_eq!(decode(&mut decoder, &wire::origin(1, "o")), Decoded::Other);
    assert!(matches!(
        decode(&mut decoder, &wire::logical_message("p", b"")),
        Decoded::Message(WalMessage { content, .. }) if content.is_empty()
    ));
}

#[test]
fn logical_messages_carry_their_flags_lsn_prefix_and_content() {
    let mut decoder = Decoder::new();
    // Non-transactional: outside any transaction, flag bit clear.
    let message =
        wire::logical_message_with(0, 0x1_0000_00AB, "walcast.backfill", b"{\"kind\":\"low\"}");
    assert_eq!(
        decode(&mut decoder, &message),
        Decoded::Message(WalMessage {
            transactional: false,
            lsn: Lsn(0x1_0000_00AB),
            prefix: "walcast.backfill".into(),
            content: b"{\"kind\":\"low\"}".to_vec(),
        })
    );
    // Content is bytes, not text.
    let message = wire::logical_message_with(1, 7, "", &[0, 0xFF, 0]);
    let Decoded::Message(decoded) = decode(&mut decoder, &message) else {
        panic!("expected a message");
    };
    assert_eq!((decoded.transactional, decoded.prefix.as_str()), (true, ""));
    assert_eq!(decoded.content, [0, 0xFF, 0]);
    // A message does not take an ordinal: the change after it is still 0.
    let mut decoder = decoder_in_transaction(DEFAULT_IDENTITY);
    decode(&mut decoder, &wire::logical_message("p", b"x"));
    let event = change(
        &mut decoder,
        &wire::insert(ORDERS, &[t("1"), Null, Null, Null]),
    );
    assert_eq!(event.id.ordinal, 0);
}

#[test]
fn malformed_logical_messages_are_errors() {
    let mut decoder = Decoder::new();
    let whole = wire::logical_message("prefix", b"content");
    // Cut inside the content, inside the length, inside the prefix.
    for cut in [whole.len() - 1, whole.len() - 8, 12] {
        let err = decoder.decode(Lsn(1), &whole[..cut]).unwrap_err();
        assert!(matches!(err, DecodeError::Malformed(_)), "{cut}: {err}");
        assert!(err.to_string().contains("Message"), "{err}");
    }
    // A negative content length.
    let mut negative = wire::logical_message("p", b"");
    let len_at = negative.len() - 4;
    negative[len_at..].copy_from_slice(&(-1i32).to_be_bytes());
    let err = decoder.decode(Lsn(1), &negative).unwrap_err();
    assert!(err.to_string().contains("negative"), "{err}");
    // Trailing bytes after the content.
    let mut long = whole.clone();
    long.push(0);
    assert!(decoder.decode(Lsn(1), &long).is_err());
}

#[test]
fn changes_for_unknown_relations_are_errors() {
    let mut decoder = decoder_in_transaction(DEFAULT_IDENTITY);
    let err = decoder
        .decode(Lsn(1), &wire::insert(99, &[t("1")]))
        .unwrap_err();
    assert!(
        matches!(
            err,
            DecodeError::UnknownRelation {
                oid: 99,
                message: "Insert"
            }
        ),
        "{err}"
    );
    // A truncate naming one unknown relation emits nothing and numbers nothing.
    let err = decoder
        .decode(Lsn(1), &wire::truncate(&[ORDERS, 99], 0))
        .unwrap_err();
    assert!(
        matches!(err, DecodeError::UnknownRelation { oid: 99, .. }),
        "{err}"
    );
    let event = change(
        &mut decoder,
        &wire::insert(ORDERS, &[t("1"), t("a"), t("b"), t("c")]),
    );
    assert_eq!(event.id.ordinal, 0);
}

/// `public.orders` is captured, `public.users` is not: its changes come
/// back as `Filtered` (not decoded: a tuple that does not even match its
/// relation is no error), a truncate of both keeps only orders, and the
/// filtered changes take their ordinals, so the ids of the captured ones
/// are those an unfiltered decoder would give.
#[test]
fn changes_of_tables_outside_the_captured_set_are_filtered() {
    const USERS: u32 = 16_400;
    let mut decoder = Decoder::new();
    decoder.set_tables([("public", "orders")]);
    let Decoded::Relation(orders) = decode(&mut decoder, &orders_relation(DEFAULT_IDENTITY)) else {
        panic!("expected a relation");
    };
    assert!(orders.captured);
    let users_relation = wire::relation(
        USERS,
        "public",
        "users",
        &[(true, "id", 23), (false, "password_hash", 25)],
    );
    let Decoded::Relation(users) = decode(&mut decoder, &users_relation) else {
        panic!("expected a relation");
    };
    assert!(!users.captured);
    // Same name, other schema: not captured either.
    let Decoded::Relation(other) = decode(
        &mut decoder,
        &wire::relation(ITEMS, "shop", "orders", &[(true, "id", 23)]),
    ) else {
        panic!("expected a relation");
    };
    assert!(!other.captured);

    decode(&mut decoder, &wire::begin(FINAL_LSN, commit_time(), XID));
    let secret = [t("1"), t("$argon2id$secret")];
    assert_eq!(
        decode(&mut decoder, &wire::insert(USERS, &secret)),
        Decoded::Filtered {
            relation: users.clone(),
            op: Op::Insert
        }
    );
    let row = [t("1"), t("a"), t("b"), t("c")];
    let insert = change(&mut decoder, &wire::insert(ORDERS, &row));
    assert_eq!(insert.id.ordinal, 1);
    // Three values for a two-column relation: never looked at.
    let bad = [t("1"), t("x"), t("y")];
    assert!(matches!(
        decode(&mut decoder, &wire::update(USERS, None, &bad)),
        Decoded::Filtered { op: Op::Update, .. }
    ));
    assert!(matches!(
        decode(&mut decoder, &wire::delete(USERS, b'K', &[t("1"), Null])),
        Decoded::Filtered { op: Op::Delete, .. }
    ));
    let Decoded::Truncate { events, filtered } =
        decode(&mut decoder, &wire::truncate(&[USERS, ORDERS, ITEMS], 0))
    else {
        panic!("expected a truncate");
    };
    assert_eq!(filtered, [users, other]);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].qualified_table(), "public.orders");
    assert_eq!(events[0].id.ordinal, 5);
    let json = String::from_utf8(insert.to_json()).unwrap();
    assert!(!json.contains("argon2"), "{json}");
    let after = change(&mut decoder, &wire::insert(ORDERS, &row));
    assert_eq!(after.id.ordinal, 7);

    // A table added to the set is captured from its next Relation message.
    decoder.set_tables([("public", "orders"), ("public", "users")]);
    let Decoded::Relation(users) = decode(&mut decoder, &users_relation) else {
        panic!("expected a relation");
    };
    assert!(users.captured);
    let event = change(&mut decoder, &wire::insert(USERS, &secret));
    assert_eq!(event.id.ordinal, 8);
}

/// pgoutput names a domain (with a Type message), never its base type; the
/// caller resolves domains from the catalog and the values get the base
/// type's JSON: a domain over int4 is a number, over text a string, over
/// numeric an exact string, over a domain over int8 a number, and an array
/// of domains an array of the base type.
#[test]
fn domains_decode_as_their_base_type() {
    const POSINT: u32 = 70_100;
    const POSINT_ARRAY: u32 = 70_101;
    const EMAIL: u32 = 70_102;
    const PRICE: u32 = 70_103;
    const BIG_ID: u32 = 70_104;
    const LATE: u32 = 70_105;
    let mut decoder = Decoder::new();
    // Unknown until the caller says what it is.
    assert_eq!(
        decode(
            &mut decoder,
            &wire::type_message(POSINT, "public", "posint")
        ),
        Decoded::Type { oid: POSINT }
    );
    decoder.set_type_aliases([
        (POSINT, 23),
        (POSINT_ARRAY, 1007),
        (EMAIL, 25),
        (PRICE, 1700),
        (BIG_ID, 20),
    ]);
    // Known now: nothing more to look up.
    assert_eq!(
        decode(
            &mut decoder,
            &wire::type_message(POSINT, "public", "posint")
        ),
        Decoded::Other
    );
    for (oid, name) in [
        (POSINT_ARRAY, "_posint"),
        (EMAIL, "email"),
        (PRICE, "price"),
        (BIG_ID, "big_id"),
        (LATE, "late"),
    ] {
        decode(&mut decoder, &wire::type_message(oid, "public", name));
    }
    decode(
        &mut decoder,
        &wire::relation(
            ORDERS,
            "public",
            "orders",
            &[
                (true, "n", POSINT),
                (false, "ns", POSINT_ARRAY),
                (false, "email", EMAIL),
                (false, "price", PRICE),
                (false, "big", BIG_ID),
                (false, "late", LATE),
            ],
        ),
    );
    // Resolved after the relation was cached: applies all the same.
    decoder.set_type_aliases([(LATE, 16)]);
    decode(&mut decoder, &wire::begin(FINAL_LSN, commit_time(), XID));
    let event = change(
        &mut decoder,
        &wire::insert(
            ORDERS,
            &[
                t("42"),
                t("{1,NULL,3}"),
                t("a@example.com"),
                t("12.50"),
                t("9007199254740993"),
                t("t"),
            ],
        ),
    );
    assert_eq!(
        json(&event.new),
        r#"{"n":42,"ns":[1,null,3],"email":"a@example.com","price":"12.50","big":9007199254740993,"late":true}"#
    );
    assert_eq!(json(&event.key), r#"{"n":42}"#);
}

/// `key` follows the replica identity Postgres flags once the primary key
/// no longer covers it: after the primary key is dropped under REPLICA
/// IDENTITY FULL (the caller then passes an empty list), and under REPLICA
/// IDENTITY USING INDEX on other columns (a delete's key tuple holds only
/// those).
#[test]
fn key_follows_the_replica_identity_when_the_primary_key_does_not_cover_it() {
    let mut decoder = decoder_in_transaction(FULL_IDENTITY);
    decoder.set_key_columns(ORDERS, vec!["id".into()]);
    let row = [t("7"), t("Ann"), t("new"), Null];
    assert_eq!(
        json(&change(&mut decoder, &wire::insert(ORDERS, &row)).key),
        r#"{"id":7}"#
    );

    // ALTER TABLE orders DROP CONSTRAINT orders_pkey: a new Relation
    // message, and the catalog has no primary key any more.
    decode(
        &mut decoder,
        &wire::relation_with_identity(
            ORDERS,
            "public",
            "orders",
            b'f',
            &[
                (true, "id", 23),
                (true, "customer_name", 25),
                (true, "status", 25),
                (true, "note", 25),
            ],
        ),
    );
    decoder.set_key_columns(ORDERS, vec![]);
    let event = change(
        &mut decoder,
        &wire::update(
            ORDERS,
            Some((b'O', &row)),
            &[t("7"), t("Ann"), t("paid"), Null],
        ),
    );
    assert_eq!(
        json(&event.key),
        r#"{"id":7,"customer_name":"Ann","status":"paid","note":null}"#
    );

    // REPLICA IDENTITY USING INDEX on (customer_name), primary key back on
    // id: the index is what Postgres flags, and what a delete carries.
    let Decoded::Relation(info) = decode(
        &mut decoder,
        &wire::relation_with_identity(
            ORDERS,
            "public",
            "orders",
            b'i',
            &[
                (false, "id", 23),
                (true, "customer_name", 25),
                (false, "status", 25),
                (false, "note", 25),
            ],
        ),
    ) else {
        panic!("expected a relation");
    };
    assert_eq!(info.replica_identity, 'i');
    decoder.set_key_columns(ORDERS, vec!["id".into()]);
    let event = change(
        &mut decoder,
        &wire::update(ORDERS, None, &[t("7"), t("Ann"), t("shipped"), Null]),
    );
    assert_eq!(json(&event.key), r#"{"customer_name":"Ann"}"#);
    let event = change(
        &mut decoder,
        &wire::delete(ORDERS, b'K', &[Null, t("Ann"), Null, Null]),
    );
    assert_eq!(json(&event.key), r#"{"customer_name":"Ann"}"#);

    // REPLICA IDENTITY NOTHING flags nothing (only inserts are sent): the
    // primary key, taken from the new row, is still the key.
    decode(
        &mut decoder,
        &wire::relation_with_identity(
            ORDERS,
            "public",
            "orders",
            b'n',
            &[
                (false, "id", 23),
                (false, "customer_name", 25),
                (false, "status", 25),
                (false, "note", 25),
            ],
        ),
    );
    decoder.set_key_columns(ORDERS, vec!["id".into()]);
    assert_eq!(
        json(&change(&mut decoder, &wire::insert(ORDERS, &row)).key),
        r#"{"id":7}"#
    );
}

#[test]
fn commit_must_match_begin() {
    let mut decoder = decoder_in_transaction(DEFAULT_IDENTITY);
    let err = decoder
        .decode(Lsn(1), &wire::commit(FINAL_LSN + 1, FINAL_LSN + 8, 0))
        .unwrap_err();
    assert!(
        err.to_string().contains("differs from the final LSN"),
        "{err}"
    );
}

#[test]
fn invalid_utf8_is_an_error_naming_the_column() {
    let mut decoder = decoder_in_transaction(DEFAULT_IDENTITY);
    let mut insert = wire::insert(ORDERS, &[t("1"), t("a"), t("b"), t("cc")]);
    let len = insert.len();
    insert[len - 1] = 0xFF;
    let err = decoder.decode(Lsn(1), &insert).unwrap_err().to_string();
    assert!(err.contains("public.orders, column note"), "{err}");
    assert!(err.contains("not valid UTF-8"), "{err}");

    let mut relation = orders_relation(DEFAULT_IDENTITY);
    relation[6] = 0xC3; // inside "public"
    assert!(Decoder::new().decode(Lsn(1), &relation).is_err());
}

/// A valid session touching every message type and tuple kind.
fn sample_session() -> Vec<Vec<u8>> {
    let row = [t("7"), t("Ann"), t("new"), t("x")];
    vec![
        wire::type_message(70_001, "public", "_mood"),
        orders_relation(FULL_IDENTITY),
        wire::relation(
            ITEMS,
            "shop",
            "items",
            &[
                (true, "sku", 25),
                (false, "tags", 70_001),
                (false, "at", 1184),
                (false, "j", 3802),
            ],
        ),
        wire::begin(FINAL_LSN, commit_time(), XID),
        wire::origin(3, "origin"),
        wire::insert(ORDERS, &row),
        wire::insert(
            ITEMS,
            &[
                t("s1"),
                t(r#"{a,"b c",NULL}"#),
                t("2026-11-22 05:04:10+01"),
                t("[1]"),
            ],
        ),
        wire::update(ORDERS, None, &row),
        wire::update(ORDERS, Some((b'K', &[t("7"), Null, Null, Null])), &row),
        wire::update(
            ORDERS,
            Some((b'O', &row)),
            &[t("7"), Toast, t("paid"), Null],
        ),
        wire::delete(ORDERS, b'K', &[t("7"), Null, Null, Null]),
        wire::delete(ORDERS, b'O', &row),
        wire::truncate(&[ORDERS, ITEMS], 3),
        wire::logical_message("prefix", b"content"),
        wire::commit(FINAL_LSN, FINAL_LSN + 8, commit_time()),
    ]
}

#[test]
fn the_sample_session_decodes() {
    let mut decoder = Decoder::new();
    for message in sample_session() {
        decode(&mut decoder, &message);
    }
}

#[test]
fn every_truncation_of_a_valid_message_is_an_error() {
    for message in sample_session() {
        for len in 0..message.len() {
            let mut decoder = Decoder::new();
            for setup in &sample_session()[..4] {
                decode(&mut decoder, setup);
            }
            assert!(
                decoder.decode(Lsn(1), &message[..len]).is_err(),
                "{:?} truncated to {len} bytes decoded",
                char::from(message[0])
            );
        }
    }
}

/// xorshift64*: deterministic, dependency-free, good enough to mutate bytes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// The in-crate companion of the cargo-fuzz target (`fuzz/`): random and
/// mutated valid messages must only ever produce `Ok` or `Err`, never a
/// panic, and every event decoded must still serialize. Set
/// `WALCAST_DECODER_SOAK=<iterations>` to run longer with a time-based seed.
#[test]
fn random_and_mutated_messages_never_panic() {
    let soak: Option<usize> = std::env::var("WALCAST_DECODER_SOAK")
        .ok()
        .and_then(|n| n.parse().ok());
    let iterations = soak.unwrap_or(200_000);
    let seed = match soak {
        Some(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64 | 1),
        None => 0x9E37_79B9_7F4A_7C15,
    };
    println!("seed {seed:#x}, {iterations} iterations");
    let session = sample_session();
    let mut rng = Rng(seed);
    let mut decoder = Decoder::new();
    let mut decoded_ok = 0;
    for iteration in 0..iterations {
        // Keep the caches and the transaction warm most of the time, so
        // mutations reach the change paths, not just "unknown relation".
        if iteration % 64 == 0 {
            decoder = Decoder::new();
            for message in &session[..4] {
                decode(&mut decoder, message);
            }
        }
        let mut message = session[rng.below(session.len())].clone();
        match rng.below(6) {
            0 => {
                let len = rng.below(64);
                message = (0..len).map(|_| rng.next() as u8).collect();
                if let (Some(first), true) = (message.first_mut(), rng.below(2) == 0) {
                    *first = b"BCORYIUDTM"[rng.below(10)];
                }
            }
            1 => {
                for _ in 0..=rng.below(4) {
                    let at = rng.below(message.len());
                    message[at] ^= 1 << rng.below(8);
                }
            }
            2 => {
                let at = rng.below(message.len());
                message[at] = [0, 0xFF, 0x7F, 0x80, b'n', b'u', b't', b'b'][rng.below(8)];
            }
            3 => message.truncate(rng.below(message.len())),
            4 => {
                let at = rng.below(message.len());
                let junk: Vec<u8> = (0..rng.below(8)).map(|_| rng.next() as u8).collect();
                message.splice(at..at, junk);
            }
            _ => {
                // Overwrite a length-sized field with an extreme value.
                let at = rng.below(message.len().saturating_sub(4));
                let extreme = [0u32, 1, 0x7FFF_FFFF, 0x8000_0000, u32::MAX][rng.below(5)];
                if let Some(field) = message.get_mut(at..at + 4) {
                    field.copy_from_slice(&extreme.to_be_bytes());
                }
            }
        }
        match decoder.decode(Lsn(iteration as u64), &message) {
            Ok(Decoded::Change(event)) => {
                decoded_ok += 1;
                assert!(!event.to_json().is_empty());
            }
            Ok(Decoded::Truncate { events, .. }) => {
                decoded_ok += 1;
                events
                    .iter()
                    .for_each(|event| assert!(!event.to_json().is_empty()));
            }
            Ok(_) => decoded_ok += 1,
            Err(error) => assert!(!error.to_string().is_empty()),
        }
    }
    // The mutations must not all be rejected at the first byte.
    assert!(decoded_ok > iterations / 20, "only {decoded_ok} decoded");
}
