//! psql to browser through the WAL: a real `walcast run` (capture, gateway
//! and API in one process, or split into processes by role), rows changed
//! with plain SQL, real socket.io-client processes watching.
//!
//! Real PostgreSQL, real RabbitMQ, real socket.io-client.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support;
use crate::support::pgtest::TestDb;
use crate::support::sio::NodeClient;
use crate::support::stack;
use crate::support::stack::{unique, RunSpec, Walcast};

const TIMEOUT: Duration = Duration::from_secs(60);

fn spec(roles: &'static str, queue: String, exchange: String) -> RunSpec {
    RunSpec {
        amqp_url: stack::shared_amqp_url(),
        exchange,
        queue,
        roles,
        replay_dir: None,
    }
}

/// The next change on `client` about one of `rows` (the database may have
/// other rows; they are skipped), or a failure naming what came instead.
async fn next_change(client: &mut NodeClient, rows: &[i64], walcast: &Walcast) -> Value {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(line) = client.next_within(left).await else {
            panic!(
                "no change within {TIMEOUT:?}; walcast log:\n{}",
                stack::log_tail(&walcast.log())
            );
        };
        assert_eq!(line.kind(), "change", "{:?}", line.0);
        let event: Value = serde_json::from_str(line.raw()).unwrap();
        if event["key"]["id"]
            .as_i64()
            .is_some_and(|id| rows.contains(&id))
        {
            return event;
        }
    }
}

/// `(op, row id, status after)` of a change event, for comparing sequences.
fn summary(event: &Value) -> (String, i64, Value) {
    let op = event["op"].as_str().unwrap().to_owned();
    let id = event["key"]["id"].as_i64().unwrap();
    let status = event["new"]["status"].clone();
    (op, id, status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn psql_changes_reach_clients_through_the_wal_including_deletes_and_subscriptions() {
    let db = TestDb::create("run_e2e").await;
    let walcast = Walcast::start(
        &db,
        &spec("capture,gateway,api", unique("gateway"), unique("exchange")),
    )
    .await;
    walcast.wait_ready().await;
    let mut everything = NodeClient::connect(&walcast.url(), json!({})).await;

    let client = db.client().await;
    let insert =
        "INSERT INTO orders (customer_name, product_name) VALUES ($1, 'psql') RETURNING id";
    let x: i64 = client.query_one(insert, &[&"X"]).await.unwrap().get(0);
    let y: i64 = client.query_one(insert, &[&"Y"]).await.unwrap().get(0);
    let rows = [x, y];
    for (expected, name) in [(x, "X"), (y, "Y")] {
        let event = next_change(&mut everything, &rows, &walcast).await;
        assert_eq!(event["op"], "insert", "{event}");
        assert_eq!(event["key"], json!({ "id": expected }), "{event}");
        assert_eq!(event["new"]["customer_name"], name, "{event}");
    }

    // A second client narrows to row X only; its ack says it took.
    let mut only_x = NodeClient::connect(&walcast.url(), json!({})).await;
    let ack = only_x
        .request(
            "subscribe",
            Some(json!({"table": "public.orders", "key": {"id": x}})),
        )
        .await;
    assert_eq!(ack, json!({"ok": true}));

    let update = "UPDATE orders SET status = $2 WHERE id = $1";
    client.execute(update, &[&y, &"processing"]).await.unwrap();
    client.execute(update, &[&x, &"shipped"]).await.unwrap();
    client
        .execute("DELETE FROM orders WHERE id = $1", &[&y])
        .await
        .unwrap();
    client
        .execute("DELETE FROM orders WHERE id = $1", &[&x])
        .await
        .unwrap();
    // The marker: a later change of X that the narrowed client must get
    // too. Anything of Y it was wrongly sent would come before it.
    let marker: i64 = client
        .query_one(
            "INSERT INTO orders (id, customer_name, product_name) VALUES ($1, 'X again', 'psql') RETURNING id",
            &[&x],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(marker, x);

    let processing = json!("processing");
    let shipped = json!("shipped");
    let expected_all = vec![
        ("update".to_owned(), y, processing),
        ("update".to_owned(), x, shipped.clone()),
        ("delete".to_owned(), y, Value::Null),
        ("delete".to_owned(), x, Value::Null),
        ("insert".to_owned(), x, json!("pending")),
    ];
    let mut seen_all = Vec::new();
    let mut events_all = Vec::new();
    for _ in 0..expected_all.len() {
        let event = next_change(&mut everything, &rows, &walcast).await;
        seen_all.push(summary(&event));
        events_all.push(event);
    }
    assert_eq!(seen_all, expected_all, "the unfiltered client, in order");
    // Deletes carry the key and the old row (REPLICA IDENTITY FULL).
    for (event, id, status) in [
        (&events_all[2], y, "processing"),
        (&events_all[3], x, "shipped"),
    ] {
        assert_eq!(event["key"], json!({ "id": id }), "{event}");
        assert_eq!(event["new"], Value::Null, "{event}");
        assert_eq!(event["old"]["id"], id, "{event}");
        assert_eq!(event["old"]["status"], status, "{event}");
    }
    let mut ids: Vec<&str> = events_all
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    let in_order = ids.clone();
    ids.sort();
    assert_eq!(ids, in_order, "ids sort in commit order");

    // The narrowed client: X's update, X's delete, the marker, and nothing
    // of Y (next_change does not skip Y: both rows count).
    let mut seen_x = Vec::new();
    for _ in 0..3 {
        seen_x.push(summary(&next_change(&mut only_x, &rows, &walcast).await));
    }
    assert_eq!(
        seen_x,
        vec![
            ("update".to_owned(), x, shipped),
            ("delete".to_owned(), x, Value::Null),
            ("insert".to_owned(), x, json!("pending")),
        ],
        "the client subscribed to row X"
    );

    let log = walcast.stop().await;
    assert!(!log.contains("panicked"), "{log}");
}

/// Reads `client` until it has an insert for every row in `expected`;
/// fails on a repeat or a disconnect.
async fn read_inserts(
    client: &mut NodeClient,
    expected: &std::collections::BTreeSet<i64>,
    walcast: &Walcast,
) {
    let mut seen = std::collections::BTreeSet::new();
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while !seen.is_superset(expected) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(line) = client.next_within(left).await else {
            panic!(
                "client stalled with {} of {} inserts; gateway log:\n{}",
                seen.len(),
                expected.len(),
                stack::log_tail(&walcast.log())
            );
        };
        assert_eq!(line.kind(), "change", "{:?}", line.0);
        let event: Value = serde_json::from_str(line.raw()).unwrap();
        let id = event["new"]["id"].as_i64().unwrap();
        assert!(seen.insert(id), "row {id} twice");
    }
}

async fn insert_rows(db: &TestDb, transactions: usize, rows: usize) {
    let client = db.client().await;
    for t in 0..transactions {
        client
            .batch_execute(&format!(
                "INSERT INTO orders (customer_name, product_name) \
                 SELECT 'customer ' || g, 'product {t}' FROM generate_series(1, {rows}) g"
            ))
            .await
            .unwrap();
    }
}

/// Split roles: one capture process, two gateways with queues of their
/// own, each with a client: both clients get every change. A third gateway
/// started on the first one's queue does not silently take half of its
/// changes: it is refused, says why on /readyz, and takes the queue over
/// once the first gateway is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gateways_need_queues_of_their_own_and_a_shared_one_is_refused() {
    let db = TestDb::create("run_gateways").await;
    let exchange = unique("exchange");
    let capture = Walcast::start(&db, &spec("capture", unique("unused"), exchange.clone())).await;
    let queue_a = unique("gateway_a");
    let gateway_a = Walcast::start(&db, &spec("gateway", queue_a.clone(), exchange.clone())).await;
    let gateway_b =
        Walcast::start(&db, &spec("gateway", unique("gateway_b"), exchange.clone())).await;
    for process in [&capture, &gateway_a, &gateway_b] {
        process.wait_ready().await;
    }
    let mut client_a = NodeClient::connect(&gateway_a.url(), json!({})).await;
    let mut client_b = NodeClient::connect(&gateway_b.url(), json!({})).await;

    // Gateway C on A's queue: refused; /readyz says so by state, the log
    // says what to do.
    let gateway_c = Walcast::start(&db, &spec("gateway", queue_a.clone(), exchange.clone())).await;
    support::poll(TIMEOUT, || async {
        let (status, body) = gateway_c.readyz().await;
        let state = body["components"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["name"] == "gateway"))
            .map(|c| c["state"].as_str().unwrap_or("").to_owned())
            .unwrap_or_default();
        if state != "queue_in_use" {
            return Err(body);
        }
        assert_eq!(status, 503, "{body}");
        assert_eq!(
            body["error"]["message"],
            "not ready: gateway (queue_in_use)"
        );
        Ok(())
    })
    .await
    .unwrap_or_else(|last| {
        panic!(
            "gateway C never reported its queue taken: {last}; log:\n{}",
            stack::log_tail(&gateway_c.log())
        )
    });
    let log = gateway_c.log();
    assert!(
        log.contains("WALCAST_RABBITMQ_QUEUE")
            && log.contains("rabbitmq.queue")
            && log.contains(&queue_a)
            && log.contains("queue_in_use"),
        "{log}"
    );

    // Every change reaches both clients, none is taken away by C.
    insert_rows(&db, 20, 10).await;
    let expected = stack::order_ids(&db).await;
    assert_eq!(expected.len(), 200);
    read_inserts(&mut client_a, &expected, &gateway_a).await;
    read_inserts(&mut client_b, &expected, &gateway_b).await;
    let mut client_c = NodeClient::connect(&gateway_c.url(), json!({})).await;

    // A stops (a rolling restart): C takes the queue over and goes on.
    let log = gateway_a.stop().await;
    assert!(!log.contains("panicked"), "{log}");
    gateway_c.wait_ready().await;
    insert_rows(&db, 1, 10).await;
    let later: std::collections::BTreeSet<i64> = stack::order_ids(&db)
        .await
        .difference(&expected)
        .copied()
        .collect();
    read_inserts(&mut client_c, &later, &gateway_c).await;
    read_inserts(&mut client_b, &later, &gateway_b).await;

    for process in [gateway_c, gateway_b, capture] {
        let log = process.stop().await;
        assert!(!log.contains("panicked"), "{log}");
    }
}

/// A clean stop is not an error: after SIGTERM, a healthy `walcast run`
/// (all roles, a change delivered) logs nothing at ERROR level until it
/// exits. Operators alert on ERROR lines; one on every restart teaches
/// them to ignore the real ones. (The gateway used to drop its channels
/// while closing its connection; lapin then closed the dead-letter channel
/// on a connection already closing and logged that as a connection error.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_clean_stop_logs_no_error() {
    let db = TestDb::create("clean_stop").await;
    let mut walcast = Walcast::start(
        &db,
        &spec("capture,gateway,api", unique("gateway"), unique("exchange")),
    )
    .await;
    walcast.wait_ready().await;
    let mut client = NodeClient::connect(&walcast.url(), json!({})).await;
    let id: i64 = db
        .client()
        .await
        .query_one(
            "INSERT INTO orders (customer_name, product_name) VALUES ('stop', 'psql') RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let event = next_change(&mut client, &[id], &walcast).await;
    assert_eq!(event["op"], "insert", "{event}");

    let status = walcast.stop_within("TERM", TIMEOUT).await;
    // The log reader may not have read the last lines yet.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !walcast.log().contains("walcast::app: stopped") && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = walcast.log();
    assert!(status.success(), "exit status {status}; log:\n{log}");
    assert!(log.contains("walcast::app: stopped"), "{log}");
    let stop = log
        .find("shutdown requested")
        .unwrap_or_else(|| panic!("no \"shutdown requested\" in the log:\n{log}"));
    let errors: Vec<&str> = log[stop..]
        .lines()
        .filter(|line| line.contains(" ERROR "))
        .collect();
    assert!(
        errors.is_empty(),
        "a clean stop logged errors:\n{}\n\nlog:\n{log}",
        errors.join("\n")
    );
}
