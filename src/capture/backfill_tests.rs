//! The window logic over hand-assembled pgoutput bytes and watermarks: no
//! database, no broker.

use super::*;
use crate::decoder::Decoded;

use crate::decoder::wire_builders as wire;

const ORDERS: u32 = 16_384;
const COMMIT_LSN: u64 = 0x16B_3800;
const MESSAGE_LSN: u64 = 0x16B_3790;
const XID: u32 = 4242;

fn orders() -> TableName {
    TableName {
        schema: "public".into(),
        table: "orders".into(),
    }
}

/// A decoder that knows `orders(id int4, status text)` and is inside a
/// transaction.
fn decoder() -> Decoder {
    let mut decoder = Decoder::new();
    decoder
        .decode(
            Lsn(1),
            &wire::relation(
                ORDERS,
                "public",
                "orders",
                &[(true, "id", 23), (false, "status", 25)],
            ),
        )
        .unwrap();
    decoder.set_key_columns(ORDERS, vec!["id".into()]);
    begin(&mut decoder);
    decoder
}

fn begin(decoder: &mut Decoder) {
    decoder
        .decode(Lsn(2), &wire::begin(COMMIT_LSN, 0, XID))
        .unwrap();
}

/// The change event of `message` (an insert, update or delete of orders).
fn change(decoder: &mut Decoder, message: &[u8]) -> ChangeEvent {
    match decoder.decode(Lsn(3), message).unwrap() {
        Decoded::Change(event) => event,
        other => panic!("expected a change, got {other:?}"),
    }
}

fn low(chunk: u64) -> Watermark {
    Watermark::Low(LowWatermark {
        backfill: "run1".into(),
        schema: "public".into(),
        table: "orders".into(),
        chunk,
    })
}

fn high(chunk: u64, ids: &[&str]) -> Watermark {
    Watermark::High(HighWatermark {
        backfill: "run1".into(),
        schema: "public".into(),
        table: "orders".into(),
        chunk,
        columns: vec![
            WatermarkColumn {
                name: "id".into(),
                type_oid: 23,
                type_name: "int4".into(),
                key: true,
            },
            WatermarkColumn {
                name: "status".into(),
                type_oid: 25,
                type_name: "text".into(),
                key: false,
            },
        ],
        rows: ids
            .iter()
            .map(|id| vec![Some(id.to_string()), Some(format!("read {id}"))])
            .collect(),
    })
}

/// The watermark as the decoder hands it over.
fn message(watermark: &Watermark) -> WalMessage {
    WalMessage {
        transactional: true,
        lsn: Lsn(MESSAGE_LSN),
        prefix: WATERMARK_PREFIX.into(),
        content: watermark.to_json().into_bytes(),
    }
}

fn ids(chunk: &Chunk) -> Vec<String> {
    chunk
        .events
        .iter()
        .map(|e| e.new.as_ref().unwrap().as_json().to_owned())
        .collect()
}

#[test]
fn a_chunk_becomes_read_events_at_the_high_watermark() {
    let mut decoder = decoder();
    let mut backfill = Backfill::new(&[orders()]);
    assert!(backfill
        .on_message(&mut decoder, &message(&low(0)))
        .is_none());
    let chunk = backfill
        .on_message(&mut decoder, &message(&high(0, &["1", "2"])))
        .expect("the high watermark closes the chunk");
    assert_eq!(chunk.dropped, 0);
    let event = &chunk.events[0];
    assert_eq!(event.op, Op::Read);
    assert_eq!(event.id.to_string(), "00000000016B3800-0000000000");
    assert_eq!(
        chunk.events[1].id.to_string(),
        "00000000016B3800-0000000001"
    );
    assert_eq!(event.key.as_ref().unwrap().as_json(), r#"{"id":1}"#);
    assert_eq!(
        event.new.as_ref().unwrap().as_json(),
        r#"{"id":1,"status":"read 1"}"#
    );
    assert_eq!((&event.old, &event.changed), (&None, &None));
    assert!(event.unchanged_toast.is_empty());
    assert_eq!(
        (event.lsn, event.commit_lsn, event.xid),
        (Lsn(MESSAGE_LSN), Lsn(COMMIT_LSN), XID)
    );
    assert_eq!(event.routing_key(), "public.orders.read");
}

#[test]
fn rows_changed_inside_the_window_are_dropped() {
    let mut decoder = decoder();
    let mut backfill = Backfill::new(&[orders()]);
    // Before the window: no effect.
    let before = change(
        &mut decoder,
        &wire::insert(ORDERS, &[wire::t("1"), wire::t("new")]),
    );
    backfill.observe(&before);
    backfill.on_message(&mut decoder, &message(&low(0)));
    let update = change(
        &mut decoder,
        &wire::update(ORDERS, None, &[wire::t("2"), wire::t("paid")]),
    );
    backfill.observe(&update);
    let delete = change(
        &mut decoder,
        &wire::delete(ORDERS, b'K', &[wire::t("3"), wire::Null]),
    );
    backfill.observe(&delete);
    let chunk = backfill
        .on_message(&mut decoder, &message(&high(0, &["1", "2", "3", "4"])))
        .unwrap();
    assert_eq!(
        ids(&chunk),
        [
            r#"{"id":1,"status":"read 1"}"#,
            r#"{"id":4,"status":"read 4"}"#
        ]
    );
    assert_eq!(chunk.dropped, 2);
    // Every row took its ordinal (the three changes took 0..=2): the ids
    // do not depend on what was dropped.
    let ordinals: Vec<u32> = chunk.events.iter().map(|e| e.id.ordinal).collect();
    assert_eq!(ordinals, [3, 6]);

    // The window is closed: a later change does not touch the next chunk.
    let after = change(
        &mut decoder,
        &wire::insert(ORDERS, &[wire::t("5"), wire::t("x")]),
    );
    backfill.observe(&after);
    backfill.on_message(&mut decoder, &message(&low(1)));
    let chunk = backfill
        .on_message(&mut decoder, &message(&high(1, &["5"])))
        .unwrap();
    assert_eq!((chunk.events.len(), chunk.dropped), (1, 0));
}

#[test]
fn changes_of_other_tables_do_not_drop_rows() {
    let mut decoder = decoder();
    decoder
        .decode(
            Lsn(1),
            &wire::relation(ORDERS + 1, "public", "items", &[(true, "id", 23)]),
        )
        .unwrap();
    let mut backfill = Backfill::new(&[orders()]);
    backfill.on_message(&mut decoder, &message(&low(0)));
    let other = change(&mut decoder, &wire::insert(ORDERS + 1, &[wire::t("1")]));
    backfill.observe(&other);
    let chunk = backfill
        .on_message(&mut decoder, &message(&high(0, &["1"])))
        .unwrap();
    assert_eq!((chunk.events.len(), chunk.dropped), (1, 0));
}

#[test]
fn a_truncate_inside_the_window_drops_the_whole_chunk() {
    let mut decoder = decoder();
    let mut backfill = Backfill::new(&[orders()]);
    backfill.on_message(&mut decoder, &message(&low(0)));
    let Decoded::Truncate { events, .. } = decoder
        .decode(Lsn(3), &wire::truncate(&[ORDERS], 0))
        .unwrap()
    else {
        panic!("expected a truncate");
    };
    backfill.observe(&events[0]);
    let chunk = backfill
        .on_message(&mut decoder, &message(&high(0, &["1", "2"])))
        .unwrap();
    assert_eq!((chunk.events.len(), chunk.dropped), (0, 2));
}

#[test]
fn a_high_watermark_without_its_window_emits_every_row() {
    let mut decoder = decoder();
    let mut backfill = Backfill::new(&[orders()]);
    // Another chunk's window (its CLI died) does not filter this one.
    backfill.on_message(&mut decoder, &message(&low(7)));
    let update = change(
        &mut decoder,
        &wire::update(ORDERS, None, &[wire::t("2"), wire::t("paid")]),
    );
    backfill.observe(&update);
    let chunk = backfill
        .on_message(&mut decoder, &message(&high(8, &["1", "2"])))
        .unwrap();
    assert_eq!((chunk.events.len(), chunk.dropped), (2, 0));
}

#[test]
fn a_new_low_watermark_replaces_an_abandoned_window() {
    let mut decoder = decoder();
    let mut backfill = Backfill::new(&[orders()]);
    backfill.on_message(&mut decoder, &message(&low(3)));
    let update = change(
        &mut decoder,
        &wire::update(ORDERS, None, &[wire::t("2"), wire::t("paid")]),
    );
    backfill.observe(&update);
    // The resumed run reads chunk 3 again.
    backfill.on_message(&mut decoder, &message(&low(3)));
    let chunk = backfill
        .on_message(&mut decoder, &message(&high(3, &["1", "2"])))
        .unwrap();
    assert_eq!((chunk.events.len(), chunk.dropped), (2, 0));
}

#[test]
fn an_overflowing_window_forgets_its_keys() {
    let mut decoder = decoder();
    let mut backfill = Backfill::new(&[orders()]);
    backfill.on_message(&mut decoder, &message(&low(0)));
    for id in 0..=MAX_WINDOW_KEYS {
        let id = id.to_string();
        let event = change(
            &mut decoder,
            &wire::insert(ORDERS, &[wire::t(&id), wire::Null]),
        );
        backfill.observe(&event);
    }
    let window = backfill.window.as_ref().unwrap();
    assert!(window.overflowed && window.changed.is_empty());
    let chunk = backfill
        .on_message(&mut decoder, &message(&high(0, &["1", "2"])))
        .unwrap();
    assert_eq!((chunk.events.len(), chunk.dropped), (2, 0));
}

#[test]
fn unusable_messages_are_ignored() {
    let mut decoder = decoder();
    let mut backfill = Backfill::new(&[orders()]);
    backfill.on_message(&mut decoder, &message(&low(0)));
    let mut foreign = message(&high(0, &["1"]));
    foreign.prefix = "someone.else".into();
    let mut loose = message(&high(0, &["1"]));
    loose.transactional = false;
    let mut garbage = message(&high(0, &["1"]));
    garbage.content = b"{not json".to_vec();
    let mut uncaptured = high(0, &["1"]);
    if let Watermark::High(high) = &mut uncaptured {
        high.table = "secrets".into();
    }
    let mut short_row = high(0, &["1"]);
    if let Watermark::High(high) = &mut short_row {
        high.rows[0].pop();
    }
    for message in [
        foreign,
        loose,
        garbage,
        message(&uncaptured),
        message(&short_row),
    ] {
        assert!(
            backfill.on_message(&mut decoder, &message).is_none(),
            "{message:?}"
        );
    }
    // None of them closed the window.
    assert!(backfill.window.is_some());
}

#[test]
fn read_rows_are_typed_like_changes() {
    let mut decoder = decoder();
    let mut backfill = Backfill::new(&[orders()]);
    let column = |name: &str, type_oid, type_name: &str, key| WatermarkColumn {
        name: name.into(),
        type_oid,
        type_name: type_name.into(),
        key,
    };
    let watermark = Watermark::High(HighWatermark {
        backfill: "run1".into(),
        schema: "public".into(),
        table: "orders".into(),
        chunk: 0,
        columns: vec![
            column("id", 20, "int8", true),
            column("paid", 16, "bool", false),
            column("total", 1700, "numeric", false),
            column("tags", 1009, "_text", false),
            column("mood", 99_999, "mood", false),
            column("moods", 99_998, "_mood", false),
            column("note", 25, "text", false),
        ],
        rows: vec![vec![
            Some("9".into()),
            Some("t".into()),
            Some("12.50".into()),
            Some("{a,NULL}".into()),
            Some("happy".into()),
            Some("{happy,sad}".into()),
            None,
        ]],
    });
    let chunk = backfill
        .on_message(&mut decoder, &message(&watermark))
        .unwrap();
    assert_eq!(
        chunk.events[0].new.as_ref().unwrap().as_json(),
        r#"{"id":9,"paid":true,"total":"12.50","tags":["a",null],"mood":"happy","moods":["happy","sad"],"note":null}"#
    );
}
