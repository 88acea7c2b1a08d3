//! Events too large to publish: walcast's own limit
//! (`rabbitmq.max_event_bytes`) and a broker whose `max_message_size` is
//! lower (406 PRECONDITION_FAILED). Either way the event goes out as the
//! contract's `oversize` stub, the position behind it becomes durable, and
//! later changes flow; nothing is republished in a loop. Also the byte
//! side of the publish window (`rabbitmq.publish_window_bytes`).
//!
//! Real brokers: the shared one for walcast's own limit, a private node
//! (`support/rabbit_node.rs`) with a small `max_message_size` for the 406;
//! the end-to-end test runs the `walcast run` binary against real
//! PostgreSQL with a real socket.io-client.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use walcast::capture::Sink;
use walcast::event::{ChangeEvent, Datum, Lsn, Row};
use walcast::publisher::{encode, Publisher};

use crate::support;
use crate::support::publisher_fixtures::*;
use crate::support::rabbit_node::{NodeOptions, RabbitNode};
use crate::support::tcp_proxy::TcpProxy;
use crate::support::{pgtest, sio, stack};

const TABLE: &str = "orders";

/// An insert like [`event`] whose `note` is `bytes` long.
fn big_event(tx: u64, ordinal: u32, bytes: usize) -> ChangeEvent {
    let mut event = event(TABLE, tx, ordinal);
    let id = Datum::Int((tx * 1000 + ordinal as u64) as i64);
    event.new = Some(Row::new(vec![
        (Arc::from("id"), id),
        (Arc::from("note"), Datum::Text("x".repeat(bytes))),
    ]));
    event
}

fn body(delivery: &lapin::message::Delivery) -> Value {
    serde_json::from_slice(&delivery.data).expect("a JSON body")
}

/// What the stub of `event` must be: the event's own JSON with `new` and
/// `old` null and `"oversize": true`.
fn expected_stub(event: &ChangeEvent) -> Value {
    let mut value: Value = serde_json::from_slice(&event.to_json()).unwrap();
    value["new"] = Value::Null;
    value["old"] = Value::Null;
    value["oversize"] = Value::Bool(true);
    value
}

/// Sends `events` as one transaction ending at `end_lsn(tx)`.
async fn send_tx(publisher: &mut Publisher, tx: u64, events: Vec<ChangeEvent>) {
    for event in events {
        publisher.send(event).await.expect("send");
    }
    publisher.end_transaction(end_lsn(tx)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_over_max_event_bytes_is_published_as_its_oversize_stub() {
    init_tracing();
    let url = shared_amqp_url();
    let exchange = unique("oversize");
    let queue = BoundQueue::declare(&url, &exchange, &unique("oversize.q")).await;
    let mut config = config(&url, &exchange, 16, 1000);
    config.max_event_bytes = 4096;
    let mut publisher = timeout(
        Duration::from_secs(30),
        Publisher::connect(&config, CancellationToken::new()),
    )
    .await
    .unwrap()
    .unwrap();

    let big = big_event(0, 1, 10 * 1024);
    assert!(encode(&big).body.len() > 4096);
    send_tx(
        &mut publisher,
        0,
        vec![event(TABLE, 0, 0), big.clone(), event(TABLE, 0, 2)],
    )
    .await;
    send_tx(&mut publisher, 1, vec![event(TABLE, 1, 0)]).await;
    let drained = timeout(Duration::from_secs(30), publisher.drain())
        .await
        .expect("drain timed out")
        .unwrap();
    assert_eq!(
        drained,
        Some(end_lsn(1)),
        "the transaction after it is durable"
    );

    let deliveries = queue.read(4, Duration::from_secs(10)).await;
    let bodies: Vec<Value> = deliveries.iter().map(body).collect();
    assert_eq!(bodies.len(), 4, "{bodies:?}");
    assert_eq!(bodies[1], expected_stub(&big));
    assert_eq!(message_id(&deliveries[1]), big.id.to_string());
    for (i, other) in [(0, event(TABLE, 0, 0)), (2, event(TABLE, 0, 2))] {
        assert_eq!(deliveries[i].data, other.to_json(), "event {i} untouched");
    }
    let counts = publisher.stats().by_routing_key();
    assert_eq!(counts["public.orders.insert"].oversize, 1);
    assert_eq!(publisher.stats().snapshot().published, 4);
    publisher.close().await;
    queue.delete().await;
}

/// The broker refuses messages over 8 KiB; walcast's own limit is the
/// default 16 MiB. The 20 KiB event is refused once (406, channel closed),
/// republished once as its stub, and everything after it flows. On the old
/// code the same message was republished forever and `drain` never ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_broker_refuses_as_too_large_goes_out_once_as_its_stub() {
    init_tracing();
    let node = RabbitNode::start_with(
        "pub406",
        &NodeOptions {
            max_message_size: Some(8192),
        },
    );
    let url = node.url();
    let exchange = unique("refused");
    let queue = BoundQueue::declare(&url, &exchange, &unique("refused.q")).await;
    let config = config(&url, &exchange, 16, 500);
    assert!(config.max_event_bytes > 8192);
    let mut publisher = timeout(
        Duration::from_secs(30),
        Publisher::connect(&config, CancellationToken::new()),
    )
    .await
    .unwrap()
    .unwrap();

    let big = big_event(0, 1, 20 * 1024);
    send_tx(
        &mut publisher,
        0,
        vec![event(TABLE, 0, 0), big.clone(), event(TABLE, 0, 2)],
    )
    .await;
    let drained = timeout(Duration::from_secs(30), publisher.drain())
        .await
        .expect("drain never ended: the refused message is republished in a loop")
        .unwrap();
    assert_eq!(drained, Some(end_lsn(0)));
    // Later changes flow; another large one is stubbed before it is even
    // written, now that the broker's limit is known.
    let later_big = big_event(1, 1, 30 * 1024);
    send_tx(
        &mut publisher,
        1,
        vec![event(TABLE, 1, 0), later_big.clone()],
    )
    .await;
    let drained = timeout(Duration::from_secs(30), publisher.drain())
        .await
        .expect("drain after the refusal timed out")
        .unwrap();
    assert_eq!(drained, Some(end_lsn(1)));

    let ids = queue.read_distinct_ids(5, Duration::from_secs(10)).await;
    let stats = publisher.stats().snapshot();
    let oversize = publisher.stats().by_routing_key()["public.orders.insert"].oversize;
    publisher.close().await;
    let expected: Vec<String> = [
        event(TABLE, 0, 0),
        big.clone(),
        event(TABLE, 0, 2),
        event(TABLE, 1, 0),
        later_big.clone(),
    ]
    .iter()
    .map(|e| e.id.to_string())
    .collect();
    // A republish after the refusal may repeat a message: the first
    // arrival of each id, in order.
    let mut seen = std::collections::HashSet::new();
    let distinct: Vec<String> = ids
        .into_iter()
        .filter(|id| seen.insert(id.clone()))
        .collect();
    assert_eq!(distinct, expected, "every event arrives, in order");
    assert_eq!(stats.refused, 1, "one 406, no loop: {stats:?}");
    assert_eq!(oversize, 2, "both large events went out as stubs");
    // At most the first transaction's three messages went out twice.
    assert!(stats.published <= 5 + 3, "{stats:?}");
    queue.delete().await;
    drop(node);
}

/// The stub's body, read from a fresh queue on the private node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stub_of_a_refused_message_is_the_contracts_oversize_event() {
    init_tracing();
    let node = RabbitNode::start_with(
        "pub406body",
        &NodeOptions {
            max_message_size: Some(8192),
        },
    );
    let url = node.url();
    let exchange = unique("refusedbody");
    let queue = BoundQueue::declare(&url, &exchange, &unique("refusedbody.q")).await;
    let config = config(&url, &exchange, 16, 500);
    let mut publisher = timeout(
        Duration::from_secs(30),
        Publisher::connect(&config, CancellationToken::new()),
    )
    .await
    .unwrap()
    .unwrap();
    let big = big_event(0, 0, 20 * 1024);
    send_tx(&mut publisher, 0, vec![big.clone()]).await;
    let drained = timeout(Duration::from_secs(30), publisher.drain())
        .await
        .expect("drain timed out")
        .unwrap();
    assert_eq!(drained, Some(end_lsn(0)));
    let deliveries = queue.read(1, Duration::from_secs(10)).await;
    assert_eq!(deliveries.len(), 1);
    assert_eq!(body(&deliveries[0]), expected_stub(&big));
    assert_eq!(message_id(&deliveries[0]), big.id.to_string());
    publisher.close().await;
    queue.delete().await;
    drop(node);
}

/// A broker whose limit is below even the stub: walcast stops with an error
/// that says what to set, instead of looping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_refuses_even_the_stub_stops_the_publisher_with_the_fix() {
    init_tracing();
    let node = RabbitNode::start_with(
        "pub406stub",
        &NodeOptions {
            max_message_size: Some(200),
        },
    );
    let url = node.url();
    let exchange = unique("refusedstub");
    let config = config(&url, &exchange, 16, 500);
    let mut publisher = timeout(
        Duration::from_secs(30),
        Publisher::connect(&config, CancellationToken::new()),
    )
    .await
    .unwrap()
    .unwrap();
    send_tx(&mut publisher, 0, vec![big_event(0, 0, 4 * 1024)]).await;
    let error = timeout(Duration::from_secs(30), publisher.drain())
        .await
        .expect("drain never ended: the refused message is republished in a loop")
        .expect_err("the broker refuses even the stub");
    let message = error.to_string();
    assert!(
        message.contains("rabbitmq.max_event_bytes") && message.contains("max_message_size"),
        "{message}"
    );
    assert_eq!(publisher.stats().snapshot().refused, 1, "{message}");
    publisher.close().await;
    drop(node);
}

/// `walcast run` with `rabbitmq.max_event_bytes` = 4 KiB and a row of 10
/// KiB: the bound queue and a Socket.IO client get the `oversize` event,
/// the slot's confirmed_flush_lsn moves past it, and the next change flows.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_row_over_the_limit_reaches_queue_and_socket_as_oversize_and_the_slot_advances() {
    let db = pgtest::TestDb::create("oversize_e2e").await;
    db.psql("ALTER TABLE orders ADD COLUMN notes text").await;
    let amqp = stack::shared_amqp_url();
    let exchange = unique("oversize_e2e");
    let queue = BoundQueue::declare(&amqp, &exchange, &unique("oversize_e2e.q")).await;
    let spec = stack::RunSpec {
        amqp_url: amqp.clone(),
        exchange: exchange.clone(),
        queue: unique("oversize_e2e.gw"),
        roles: "capture,gateway,api",
        replay_dir: None,
    };
    let walcast =
        stack::Walcast::start_with_env(&db, &spec, &[("WALCAST_RABBITMQ_MAX_EVENT_BYTES", "4096")])
            .await;
    walcast.wait_ready().await;
    let mut client = sio::NodeClient::connect(&walcast.url(), json!({})).await;

    let client_pg = db.client().await;
    let big_id: i64 = client_pg
        .query_one(
            "INSERT INTO orders (customer_name, product_name, notes) \
             VALUES ('Big', 'row', repeat('x', 10240)) RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let small_id: i64 = client_pg
        .query_one(
            "INSERT INTO orders (customer_name, product_name) VALUES ('Small', 'row') RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);

    // The queue: the stub, then the next change in full.
    let deliveries = queue.read(2, Duration::from_secs(60)).await;
    assert_eq!(
        deliveries.len(),
        2,
        "log:\n{}",
        stack::log_tail(&walcast.log())
    );
    let stub = body(&deliveries[0]);
    assert_eq!(stub["oversize"], true, "{stub}");
    assert_eq!(stub["key"], json!({"id": big_id}));
    assert!(stub["new"].is_null() && stub["old"].is_null(), "{stub}");
    assert_eq!(stub["op"], "insert");
    assert_eq!(stub["table"], "orders");
    let next = body(&deliveries[1]);
    assert_eq!(next["new"]["id"], small_id);
    assert!(next.get("oversize").is_none(), "{next}");

    // The socket: the same bytes.
    let changes = timeout(Duration::from_secs(60), client.changes(2))
        .await
        .expect("the socket got both changes");
    let first: Value = serde_json::from_str(&changes[0]).unwrap();
    assert_eq!(first, stub);
    assert_eq!(changes[0].as_bytes(), &deliveries[0].data[..]);
    let second: Value = serde_json::from_str(&changes[1]).unwrap();
    assert_eq!(second["key"]["id"], small_id);

    // The slot moved past the big row.
    let commit_lsn: Lsn = stub["commit_lsn"].as_str().unwrap().parse().unwrap();
    support::poll(Duration::from_secs(60), || async {
        let row = client_pg
            .query_one(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                &[&db.slot],
            )
            .await
            .unwrap();
        let flushed: Lsn = row.get::<_, String>(0).parse().unwrap();
        if flushed > commit_lsn {
            Ok(())
        } else {
            Err(format!("confirmed_flush_lsn stayed at {flushed}"))
        }
    })
    .await
    .unwrap_or_else(|last| {
        panic!(
            "{last}, not past {commit_lsn}; log:\n{}",
            stack::log_tail(&walcast.log())
        )
    });
    let metrics = reqwest::get(format!("{}/metrics", walcast.url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .contains("walcast_publisher_oversize_total{table=\"public.orders\",op=\"insert\"} 1"),
        "{metrics}"
    );
    let log = walcast.log();
    assert!(
        log.contains("oversize stub") && log.contains(&stub["id"].as_str().unwrap().to_owned()),
        "{}",
        stack::log_tail(&log)
    );
    client.close().await;
    walcast.stop().await;
    queue.delete().await;
}

/// While the broker is unreachable, unconfirmed bytes stop `send` long
/// before the message count does; an event larger than the whole byte
/// window still goes, alone, once the broker is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_window_bounds_unconfirmed_bytes_and_lets_a_larger_event_go_alone() {
    init_tracing();
    let url = shared_amqp_url();
    let proxy = TcpProxy::start(shared_amqp_addr()).await;
    let exchange = unique("bytewindow");
    let queue = BoundQueue::declare(&url, &exchange, &unique("bytewindow.q")).await;
    let mut config = config(&via_port(&url, proxy.port()), &exchange, 1024, 500);
    config.publish_window_bytes = 65_536;
    let mut publisher = timeout(
        Duration::from_secs(30),
        Publisher::connect(&config, CancellationToken::new()),
    )
    .await
    .unwrap()
    .unwrap();

    proxy.cut();
    // Six 10 KiB events fit in 64 KiB; the seventh does not, although
    // the count window has 1,018 places left.
    let size = encode(&big_event(0, 0, 10 * 1024)).body.len();
    let fit = 65_536 / size;
    assert_eq!(fit, 6);
    for ordinal in 0..fit as u32 {
        timeout(
            Duration::from_secs(5),
            publisher.send(big_event(0, ordinal, 10 * 1024)),
        )
        .await
        .expect("a send within the byte window does not wait")
        .unwrap();
    }
    publisher.end_transaction(end_lsn(0)).await.unwrap();
    let blocked = timeout(
        Duration::from_secs(2),
        publisher.send(big_event(1, 0, 10 * 1024)),
    )
    .await;
    assert!(
        blocked.is_err(),
        "a send past the byte window completed while the broker was unreachable"
    );
    assert_eq!(publisher.unconfirmed(), fit as u64);

    proxy.resume();
    timeout(
        Duration::from_secs(30),
        publisher.send(big_event(1, 0, 10 * 1024)),
    )
    .await
    .expect("send resumes once the broker confirms")
    .unwrap();
    publisher.end_transaction(end_lsn(1)).await.unwrap();
    // 200 KiB, over the whole byte window (and under max_event_bytes).
    let huge = big_event(2, 0, 200 * 1024);
    timeout(Duration::from_secs(30), publisher.send(huge.clone()))
        .await
        .expect("an event larger than the byte window goes alone")
        .unwrap();
    publisher.end_transaction(end_lsn(2)).await.unwrap();
    let drained = timeout(Duration::from_secs(30), publisher.drain())
        .await
        .expect("drain within 30 s")
        .unwrap();
    assert_eq!(drained, Some(end_lsn(2)));
    // Republishes after the cut may repeat messages; the huge one is last.
    let huge_id = huge.id.to_string();
    let deliveries = queue
        .read_until(Duration::from_secs(10), |d| {
            d.last().is_some_and(|last| message_id(last) == huge_id)
        })
        .await;
    let last = deliveries.last().expect("deliveries");
    assert_eq!(message_id(last), huge.id.to_string());
    assert_eq!(last.data, huge.to_json(), "published whole, not as a stub");
    publisher.close().await;
    queue.delete().await;
}
