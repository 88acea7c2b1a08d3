//! `walcast tail` against a real PostgreSQL with wal_level=logical: what a
//! user sees on stdout for changes made with psql.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{json, Value};

use crate::support;
use crate::support::pgtest;
use crate::support::pgtest::TestDb;

const WAIT: Duration = Duration::from_secs(30);

fn assert_id_shape(event: &Value) {
    let id = event["id"].as_str().expect("id is a string");
    let (lsn_hex, ordinal) = id.split_once('-').expect("id has a dash");
    assert_eq!(lsn_hex.len(), 16, "{id}");
    assert!(lsn_hex
        .chars()
        .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_lowercase()));
    assert_eq!(ordinal.len(), 10, "{id}");
    // The id's LSN is the commit LSN.
    let commit_lsn = event["commit_lsn"].as_str().unwrap();
    let (hi, lo) = commit_lsn.split_once('/').unwrap();
    let value = (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap();
    assert_eq!(
        format!("{value:016X}"),
        lsn_hex,
        "id {id} vs commit_lsn {commit_lsn}"
    );
    assert!(event["commit_time"].as_str().unwrap().ends_with('Z'));
    assert!(event["xid"].as_u64().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_changes_appear_in_commit_order_with_typed_values() {
    let db = TestDb::create("tail_dml").await;
    db.psql("INSERT INTO orders (customer_name, product_name) VALUES ('Harry', 'iPhone 17')")
        .await;
    db.psql("UPDATE orders SET status = 'shipped' WHERE customer_name = 'Harry'")
        .await;
    db.psql(
        "BEGIN; INSERT INTO orders (customer_name, product_name) VALUES ('Ghost', 'Nothing'); ROLLBACK;",
    )
    .await;
    db.psql(
        "BEGIN; \
         INSERT INTO orders (customer_name, product_name) VALUES ('Ada', 'ThinkPad'); \
         INSERT INTO orders (customer_name, product_name) VALUES ('Grace', 'Kindle'); \
         UPDATE orders SET status = 'processing' WHERE customer_name = 'Ada'; \
         COMMIT;",
    )
    .await;
    db.psql("DELETE FROM orders WHERE customer_name = 'Harry'")
        .await;
    db.psql("TRUNCATE orders").await;

    let mut tail = db.tail(&[]);
    let events = tail.events(7, WAIT).await;
    for event in &events {
        assert_id_shape(event);
        assert_eq!(event["schema"], "public");
        assert_eq!(event["table"], "orders");
    }
    let ops: Vec<&str> = events.iter().map(|e| e["op"].as_str().unwrap()).collect();
    assert_eq!(
        ops,
        ["insert", "update", "insert", "insert", "update", "delete", "truncate"]
    );
    // Ids sort, as strings, in commit order.
    let ids: Vec<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted);
    assert_eq!(ids.iter().collect::<BTreeSet<_>>().len(), ids.len());

    let insert = &events[0];
    assert_eq!(insert["key"], json!({"id": 1}));
    assert_eq!(insert["new"]["customer_name"], "Harry");
    assert_eq!(insert["new"]["product_name"], "iPhone 17");
    assert_eq!(insert["new"]["status"], "pending");
    assert_eq!(insert["new"]["id"], 1);
    assert!(insert["old"].is_null());
    assert!(insert.get("changed").is_none(), "changed only for updates");
    assert_eq!(insert["unchanged_toast"], json!([]));
    // The contract's form: `YYYY-MM-DDTHH:MM:SS.ffffff`, always six
    // fraction digits (Postgres drops trailing zeros; walcast pads).
    let updated_at = insert["new"]["updated_at"].as_str().unwrap();
    assert_eq!(updated_at.len(), 26, "{updated_at}");
    for (i, byte) in updated_at.bytes().enumerate() {
        let expected_ok = match i {
            4 | 7 => byte == b'-',
            10 => byte == b'T',
            13 | 16 => byte == b':',
            19 => byte == b'.',
            _ => byte.is_ascii_digit(),
        };
        assert!(expected_ok, "{updated_at}: byte {i}");
    }
    assert!(insert["id"].as_str().unwrap().ends_with("-0000000000"));

    let update = &events[1];
    assert_eq!(update["old"]["status"], "pending");
    assert_eq!(update["new"]["status"], "shipped");
    assert_eq!(update["key"], json!({"id": 1}));
    assert_eq!(update["changed"], json!(["status", "updated_at"]));

    // The multi-row transaction: one commit LSN, ordinals 0, 1, 2, in order.
    let txn = &events[2..5];
    assert!(txn.iter().all(|e| e["commit_lsn"] == txn[0]["commit_lsn"]));
    assert!(txn.iter().all(|e| e["xid"] == txn[0]["xid"]));
    for (ordinal, event) in txn.iter().enumerate() {
        assert!(event["id"]
            .as_str()
            .unwrap()
            .ends_with(&format!("-{ordinal:010}")));
    }
    assert_eq!(txn[0]["new"]["customer_name"], "Ada");
    assert_eq!(txn[1]["new"]["customer_name"], "Grace");
    assert_eq!(txn[2]["new"]["status"], "processing");
    // The rolled-back insert never shows.
    assert!(events.iter().all(|e| e["new"]["customer_name"] != "Ghost"));

    let delete = &events[5];
    assert_eq!(delete["key"], json!({"id": 1}));
    assert!(delete["new"].is_null());
    assert_eq!(delete["old"]["customer_name"], "Harry");
    assert_eq!(delete["old"]["status"], "shipped");

    let truncate = &events[6];
    assert!(truncate["key"].is_null());
    assert!(truncate["new"].is_null());
    assert!(truncate["old"].is_null());

    tail.interrupt();
    let (ok, stderr) = tail.wait(WAIT).await;
    assert!(ok, "tail failed: {stderr}");
    assert!(
        stderr.contains("last flushed position"),
        "tail should report where it stopped: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_family_maps_to_the_documented_json() {
    let db = TestDb::create("tail_types").await;
    db.psql(&format!(
        "CREATE TYPE mood AS ENUM ('sad', 'happy'); \
         CREATE TABLE types ( \
            id int4 PRIMARY KEY, b bool, bf bool, i2 int2, i4 int4, i8 int8, o oid, \
            f4 float4, f8 float8, fnan float8, finf float8, fninf float8, n numeric(10,2), \
            t text, vc varchar(10), bp char(3), j json, jb jsonb, u uuid, d date, \
            ts timestamp, tstz timestamptz, by bytea, ai int4[], at text[], a2 int4[][], \
            ab bool[], af float8[], ajb jsonb[], e mood, iv interval, r int4range, pt point, \
            ip inet, nl text, jn json, aj json[], ts0 timestamp, tstz0 timestamptz, \
            tinf timestamp, tninf timestamp, tzinf timestamptz, tzninf timestamptz, \
            f4nan float4, ae mood[], tm time, tmtz timetz, ats timestamp[]); \
         ALTER PUBLICATION {} ADD TABLE types;",
        db.publication
    ))
    .await;
    db.psql(
        r#"INSERT INTO types VALUES (
            1, true, false, -2, 4, 9007199254740993, 4294967295,
            1.5, -2.25, 'NaN', 'Infinity', '-Infinity', 12.5,
            'hello "world" ✓', 'short', 'ab', '{"a": [1, 2]}', '{"b": {"c": null}}',
            'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '2026-11-22',
            '2026-11-22 05:04:10.580065', '2026-11-22 07:04:10.580065+02', '\x0102ff',
            '{1,NULL,3}', '{"a b","c,d",NULL,"q\"uote","back\\slash"}', '{{1,2},{3,4}}',
            '{t,f}', '{1.5,NaN,-Infinity}', ARRAY['{"k": 1}'::jsonb, 'null'::jsonb],
            'happy', '1 day 02:00:00', '[1,5)', '(1,2)', '192.168.1.1/24', NULL,
            E'{"b":\n  1,\r\n\t"a" : [ 2 , "x y" ],\n "b": 3}',
            ARRAY[E'{\n "k": 1\n}'::json, 'null'::json],
            '2026-11-22 05:01:00', '2026-11-22 07:01:00.5+02',
            'infinity', '-infinity', 'infinity', '-infinity',
            'NaN', '{happy,sad,NULL}', '05:04:10.5', '05:04:10+05:30',
            ARRAY['2026-11-22 05:01:00'::timestamp, 'infinity'])"#,
    )
    .await;
    let mut tail = db.tail(&["--tables", "public.orders,public.types"]);
    // One event is one line, even with newlines inside a json value.
    let line = tail.try_next_line(WAIT).await.expect("an event line");
    let event: Value = serde_json::from_str(&line)
        .unwrap_or_else(|e| panic!("the event is not one JSON line {line:?}: {e}"));
    // json keeps key order and duplicate keys (a parsed Value would not
    // show them): only the whitespace between tokens is gone.
    assert!(
        line.contains(r#""jn":{"b":1,"a":[2,"x y"],"b":3}"#),
        "{line}"
    );
    assert!(line.contains(r#""aj":[{"k":1},null]"#), "{line}");
    assert_eq!(event["table"], "types");
    assert_eq!(event["key"], json!({"id": 1}));
    let mut expected = json!({
        "id": 1, "b": true, "bf": false, "i2": -2, "i4": 4, "i8": 9007199254740993_i64,
        "o": 4294967295_u64, "f4": 1.5, "f8": -2.25, "fnan": "NaN", "finf": "Infinity",
        "fninf": "-Infinity", "n": "12.50", "t": "hello \"world\" ✓", "vc": "short",
        "bp": "ab ", "j": {"a": [1, 2]}, "jb": {"b": {"c": null}},
        "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "d": "2026-11-22",
        "ts": "2026-11-22T05:04:10.580065", "tstz": "2026-11-22T05:04:10.580065Z",
        "by": "AQL/", "ai": [1, null, 3], "at": ["a b", "c,d", null, "q\"uote", "back\\slash"],
        "a2": [[1, 2], [3, 4]], "ab": [true, false], "af": [1.5, "NaN", "-Infinity"],
        "ajb": [{"k": 1}, null], "e": "happy", "iv": "1 day 02:00:00", "r": "[1,5)",
        "pt": "(1,2)", "ip": "192.168.1.1/24", "nl": null
    });
    // In two parts: one json! this size exceeds the macro recursion limit.
    let more = json!({
        "jn": {"a": [2, "x y"], "b": 3}, "aj": [{"k": 1}, null],
        "ts0": "2026-11-22T05:01:00.000000", "tstz0": "2026-11-22T05:01:00.500000Z",
        "tinf": "infinity", "tninf": "-infinity", "tzinf": "infinity", "tzninf": "-infinity",
        "f4nan": "NaN", "ae": ["happy", "sad", null], "tm": "05:04:10.5",
        "tmtz": "05:04:10+05:30", "ats": ["2026-11-22T05:01:00.000000", "infinity"]
    });
    expected
        .as_object_mut()
        .unwrap()
        .extend(more.as_object().unwrap().clone());
    assert_eq!(event["new"], expected);
    // Integers beyond 2^53 stay exact in the JSON text.
    let line = serde_json::to_string(&event["new"]["i8"]).unwrap();
    assert_eq!(line, "9007199254740993");
    tail.interrupt();
    tail.wait(WAIT).await;
}

/// Events follow commit order, not begin order: T1 begins and writes
/// first, T2 writes and commits, then T1 commits. T2's event comes first
/// and its id sorts first, although T1 holds the older xid and row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interleaved_transactions_arrive_in_commit_order() {
    let db = TestDb::create("tail_commit_order").await;
    let t1 = db.client().await;
    let t2 = db.client().await;
    t1.batch_execute(
        "BEGIN; INSERT INTO orders (customer_name, product_name) VALUES ('T1', 'first begun')",
    )
    .await
    .unwrap();
    t2.batch_execute(
        "INSERT INTO orders (customer_name, product_name) VALUES ('T2', 'first committed')",
    )
    .await
    .unwrap();
    t1.batch_execute("COMMIT").await.unwrap();

    let mut tail = db.tail(&[]);
    let events = tail.events(2, WAIT).await;
    let names: Vec<&str> = events
        .iter()
        .map(|e| e["new"]["customer_name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["T2", "T1"]);
    let (first, second) = (&events[0], &events[1]);
    assert!(
        first["id"].as_str().unwrap() < second["id"].as_str().unwrap(),
        "ids sort in commit order: {} then {}",
        first["id"],
        second["id"]
    );
    // What the order is not: T1 began first, so it has the older xid and
    // the lower row id.
    assert!(second["xid"].as_u64().unwrap() < first["xid"].as_u64().unwrap());
    assert!(second["new"]["id"].as_i64().unwrap() < first["new"]["id"].as_i64().unwrap());
    tail.interrupt();
    let (ok, stderr) = tail.wait(WAIT).await;
    assert!(ok, "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_toast_values_are_listed_and_filled_from_the_old_row() {
    let db = TestDb::create("tail_toast").await;
    db.psql(&format!(
        "CREATE TABLE docs_full (id int PRIMARY KEY, title text, body text); \
         ALTER TABLE docs_full ALTER COLUMN body SET STORAGE EXTERNAL; \
         ALTER TABLE docs_full REPLICA IDENTITY FULL; \
         CREATE TABLE docs_default (id int PRIMARY KEY, title text, body text); \
         ALTER TABLE docs_default ALTER COLUMN body SET STORAGE EXTERNAL; \
         ALTER PUBLICATION {} ADD TABLE docs_full, docs_default;",
        db.publication
    ))
    .await;
    db.psql(
        "INSERT INTO docs_full SELECT 1, 'first', string_agg(md5(g::text), '') FROM generate_series(1, 400) g; \
         INSERT INTO docs_default SELECT 1, 'first', string_agg(md5(g::text), '') FROM generate_series(1, 400) g;",
    )
    .await;
    db.psql("UPDATE docs_full SET title = 'second' WHERE id = 1")
        .await;
    db.psql("UPDATE docs_default SET title = 'second' WHERE id = 1")
        .await;
    let body = db.psql("SELECT body FROM docs_full WHERE id = 1").await;
    assert!(body.len() > 8 * 1024);

    let mut tail = db.tail(&["--tables", "public.docs_full,public.docs_default"]);
    let events = tail.events(4, WAIT).await;
    let full = &events[2];
    assert_eq!(full["table"], "docs_full");
    assert_eq!(full["op"], "update");
    assert_eq!(full["unchanged_toast"], json!(["body"]));
    assert_eq!(
        full["new"]["body"].as_str().unwrap(),
        body,
        "filled from old"
    );
    assert_eq!(full["new"]["title"], "second");
    assert_eq!(full["changed"], json!(["title"]));

    let default = &events[3];
    assert_eq!(default["table"], "docs_default");
    assert_eq!(default["unchanged_toast"], json!(["body"]));
    assert!(
        default["new"].get("body").is_none(),
        "absent, never a placeholder: {}",
        default["new"]
    );
    assert_eq!(default["new"]["title"], "second");
    assert!(
        default["old"].is_null(),
        "no key change under DEFAULT: no old row"
    );
    assert!(default.get("changed").is_none());
    for event in &events {
        assert!(!event.to_string().contains("unchanged-toast"));
    }
    tail.interrupt();
    tail.wait(WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alter_table_mid_stream_adds_the_column_to_later_events() {
    let db = TestDb::create("tail_alter").await;
    let mut tail = db.tail(&[]);
    db.psql("INSERT INTO orders (customer_name, product_name) VALUES ('Ada', 'Pen')")
        .await;
    let first = tail.next_event(WAIT).await;
    assert!(first["new"].get("priority").is_none());

    db.psql("ALTER TABLE orders ADD COLUMN priority int NOT NULL DEFAULT 0")
        .await;
    db.psql(
        "INSERT INTO orders (customer_name, product_name, priority) VALUES ('Grace', 'Ink', 5)",
    )
    .await;
    db.psql("UPDATE orders SET priority = 9 WHERE customer_name = 'Ada'")
        .await;
    db.psql("ALTER TABLE orders DROP COLUMN priority").await;
    db.psql("UPDATE orders SET status = 'shipped' WHERE customer_name = 'Grace'")
        .await;

    let events = tail.events(3, WAIT).await;
    assert_eq!(events[0]["new"]["priority"], 5);
    assert_eq!(events[0]["new"]["customer_name"], "Grace");
    assert_eq!(events[1]["new"]["priority"], 9);
    assert_eq!(events[1]["old"]["priority"], 0);
    // Table order: the added column comes last.
    assert_eq!(events[1]["changed"], json!(["updated_at", "priority"]));
    assert!(events[2]["new"].get("priority").is_none());
    assert_eq!(events[2]["new"]["status"], "shipped");
    tail.interrupt();
    let (ok, stderr) = tail.wait(WAIT).await;
    assert!(ok, "{stderr}");
}

/// Stop (SIGINT) and kill (SIGKILL) tail in the middle of 10,000 changes:
/// every change is seen at least once and a repeat carries the same id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_or_killed_tail_resumes_without_losing_a_change() {
    const TRANSACTIONS: usize = 100;
    const ROWS: usize = 100;
    let db = TestDb::create("tail_resume").await;
    let writer_url = db.url.clone();
    let writer = tokio::spawn(async move {
        let (client, connection) = tokio_postgres::connect(&writer_url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        for t in 0..TRANSACTIONS {
            client
                .batch_execute(&format!(
                    "INSERT INTO orders (customer_name, product_name) \
                     SELECT 'c' || g, 'p{t}' FROM generate_series(1, {ROWS}) g"
                ))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });

    // Event id -> the whole event, to check that a repeated id is the same
    // event; row id -> event id, to check that a row change delivered again
    // carries the id of its first delivery (each row is inserted once, so
    // one row is one change).
    let mut seen: BTreeMap<String, Value> = BTreeMap::new();
    let mut by_row: BTreeMap<i64, String> = BTreeMap::new();
    let mut repeats = 0usize;
    let mut record = |event: Value, seen: &mut BTreeMap<String, Value>| {
        assert_eq!(event["op"], "insert", "{event}");
        let id = event["id"].as_str().unwrap().to_owned();
        let row = event["new"]["id"].as_i64().expect("row id");
        match by_row.get(&row) {
            Some(first) => assert_eq!(
                first, &id,
                "row {row} delivered again under another event id"
            ),
            None => {
                by_row.insert(row, id.clone());
            }
        }
        if let Some(previous) = seen.get(&id) {
            assert_eq!(previous, &event, "a repeat must be the same event");
            repeats += 1;
        } else {
            seen.insert(id, event);
        }
    };

    // 1: stop with SIGINT after 2,000 events.
    let mut tail = db.tail(&[]);
    for _ in 0..2_000 {
        let event = tail.next_event(WAIT).await;
        record(event, &mut seen);
    }
    tail.interrupt();
    while let Some(line) = tail.try_next_line(Duration::from_secs(10)).await {
        record(serde_json::from_str(&line).unwrap(), &mut seen);
    }
    let (ok, stderr) = tail.wait(WAIT).await;
    assert!(ok, "{stderr}");

    // 2: SIGKILL after 3,000 more lines.
    let mut tail = db.tail(&[]);
    for _ in 0..3_000 {
        let event = tail.next_event(WAIT).await;
        record(event, &mut seen);
    }
    tail.child.start_kill().unwrap();
    while let Some(line) = tail.try_next_line(Duration::from_secs(5)).await {
        if let Ok(event) = serde_json::from_str(&line) {
            record(event, &mut seen);
        }
    }
    tail.child.wait().await.unwrap();

    // 3: the rest.
    writer.await.unwrap();
    let mut tail = db.tail(&[]);
    let expected = TRANSACTIONS * ROWS;
    let inserted_id =
        |event: &Value| (event["op"] == "insert").then(|| event["new"]["id"].as_i64().unwrap());
    let mut ids: BTreeSet<i64> = seen.values().filter_map(inserted_id).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while ids.len() < expected {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let event = tail.next_event(left).await;
        ids.extend(inserted_id(&event));
        record(event, &mut seen);
    }
    assert_eq!(ids.len(), expected);
    assert_eq!(ids.first(), Some(&1));
    assert_eq!(ids.last(), Some(&(expected as i64)));
    // Exactly one event id per change: 10,000 distinct ids, each the id of
    // exactly one row (a change re-sent under a new id would make more ids
    // than rows, and has already failed the by_row check above).
    assert_eq!(seen.len(), expected, "distinct event ids");
    let row_ids: BTreeSet<&String> = by_row.values().collect();
    assert_eq!(row_ids.len(), expected);
    assert!(seen.keys().eq(row_ids.into_iter()));
    eprintln!("{} distinct events, {repeats} repeats", seen.len());
    tail.interrupt();
    let (ok, stderr) = tail.wait(WAIT).await;
    assert!(ok, "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peek_does_not_advance_the_slot_and_from_skips_ahead() {
    let db = TestDb::create("tail_peek").await;
    db.psql("INSERT INTO orders (customer_name, product_name) VALUES ('a', 'x')")
        .await;
    let mut tail = db.tail(&["--peek"]);
    let first = tail.next_event(WAIT).await;
    tail.interrupt();
    let (ok, stderr) = tail.wait(WAIT).await;
    assert!(ok, "{stderr}");
    assert!(stderr.contains("peek"), "{stderr}");

    // Seen again: the slot did not move.
    let mut tail = db.tail(&[]);
    let again = tail.next_event(WAIT).await;
    assert_eq!(first, again);
    tail.interrupt();
    tail.wait(WAIT).await;

    // --from past a change skips it.
    db.psql("INSERT INTO orders (customer_name, product_name) VALUES ('b', 'y')")
        .await;
    let after_b = db.psql("SELECT pg_current_wal_lsn()").await;
    db.psql("INSERT INTO orders (customer_name, product_name) VALUES ('c', 'z')")
        .await;
    let mut tail = db.tail(&["--from", &after_b]);
    let event = tail.next_event(WAIT).await;
    assert_eq!(event["new"]["customer_name"], "c");
    tail.interrupt();
    tail.wait(WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporary_tail_sees_new_changes_and_leaves_no_slot() {
    let db = TestDb::create("tail_temp").await;
    db.psql("INSERT INTO orders (customer_name, product_name) VALUES ('before', 'x')")
        .await;
    let mut tail = db.tail(&["--temporary"]);
    // Wait until its slot exists, then change something.
    support::eventually(WAIT, || async {
        let count = db
            .psql(&format!(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE '{}_tail_%' AND temporary",
                db.slot
            ))
            .await;
        if count == "1" {
            Ok(())
        } else {
            Err(format!("{count} temporary slots"))
        }
    })
    .await;
    db.psql("INSERT INTO orders (customer_name, product_name) VALUES ('after', 'y')")
        .await;
    let event = tail.next_event(WAIT).await;
    assert_eq!(event["new"]["customer_name"], "after");
    tail.interrupt();
    let (ok, stderr) = tail.wait(WAIT).await;
    assert!(ok, "{stderr}");
    let left = db
        .psql(&format!(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE '{}_tail_%'",
            db.slot
        ))
        .await;
    assert_eq!(left, "0");
}

/// An event over `rabbitmq.max_event_bytes` is the same `oversize` stub on
/// stdout as on RabbitMQ (an event is identical wherever it goes); the
/// changes around it are whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_over_the_size_limit_is_written_as_its_oversize_stub() {
    let db = TestDb::create("tail_oversize").await;
    // Room for a 5,000-character name (the table allows 200).
    db.psql("ALTER TABLE orders DROP CONSTRAINT orders_product_name_check")
        .await;
    let mut cmd = db.walcast(&["tail"]);
    cmd.env("WALCAST_RABBITMQ_MAX_EVENT_BYTES", "4096");
    let mut tail = pgtest::Tail::spawn(cmd);
    db.psql("INSERT INTO orders (customer_name, product_name) VALUES ('Ada', 'Pen')")
        .await;
    db.psql(&format!(
        "UPDATE orders SET product_name = '{}' WHERE customer_name = 'Ada'",
        "z".repeat(5000)
    ))
    .await;
    db.psql("INSERT INTO orders (customer_name, product_name) VALUES ('Cy', 'Ink')")
        .await;
    let events = tail.events(3, WAIT).await;
    let big = &events[1];
    assert_eq!(big["op"], "update");
    assert_eq!(big["oversize"], json!(true), "{big}");
    assert!(big["new"].is_null() && big["old"].is_null(), "{big}");
    assert_eq!(big["key"], json!({"id": events[0]["key"]["id"]}), "{big}");
    assert_id_shape(big);
    for event in [&events[0], &events[2]] {
        assert!(event.get("oversize").is_none(), "{event}");
        assert!(event["new"].is_object(), "{event}");
    }
    tail.interrupt();
    tail.wait(WAIT).await;
}
