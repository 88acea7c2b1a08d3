//! History that cannot be poisoned (issue 9): the gateway follows one
//! stream source, dead-letters what it cannot use, and restarts its history
//! when the source changes. Real RabbitMQ, the real consumer and hub, real
//! socket.io-client processes in Node.

use std::time::Duration;

use lapin::options::{BasicGetOptions, BasicRejectOptions};
use lapin::types::{AMQPValue, ShortString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::{json, Value};
use walcast::event::{EventId, Lsn};
use walcast::fanout::HubOptions;
use walcast::publisher::encoder::with_source;

use crate::support;
use crate::support::sio;
use crate::support::sio::{
    amqp_url, dead_letter_name, event, event_id, wait_until, Gateway, GatewayOptions, NodeClient,
    TEST_SOURCE, TIMEOUT,
};

/// A dead letter as read back from the queue.
#[derive(Debug)]
struct Letter {
    reason: String,
    routing_key: String,
    message_id: Option<String>,
    body: Vec<u8>,
}

/// Reads every dead letter in `queue` (basic.get, then reject with requeue
/// once all are read, so they stay).
async fn read_dead_letters(queue: &str, expected: usize) -> Vec<Letter> {
    let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    let mut letters = Vec::new();
    let mut held = Vec::new();
    while letters.len() < expected {
        let message = support::poll(TIMEOUT, || async {
            channel
                .basic_get(ShortString::from(queue), BasicGetOptions::default())
                .await
                .unwrap()
        })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "timed out: {} of {expected} dead letters in {queue}: {letters:?}",
                letters.len()
            )
        });
        let delivery = message.delivery;
        let headers = delivery.properties.headers().clone().unwrap_or_default();
        let reason = match headers.inner().get("x-walcast-reason") {
            Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
            other => panic!("dead letter without x-walcast-reason: {other:?}"),
        };
        letters.push(Letter {
            reason,
            routing_key: delivery.routing_key.as_str().to_owned(),
            message_id: delivery
                .properties
                .message_id()
                .as_ref()
                .map(|m| m.as_str().to_owned()),
            body: delivery.data.clone(),
        });
        held.push(delivery.acker);
    }
    for acker in held {
        acker
            .reject(BasicRejectOptions { requeue: true })
            .await
            .unwrap();
    }
    conn.close(200, ShortString::from("done")).await.ok();
    letters
}

fn properties(app_id: Option<&str>, source: Option<&str>, message_id: &str) -> BasicProperties {
    let mut p = BasicProperties::default()
        .with_content_type(ShortString::from("application/json"))
        .with_delivery_mode(2)
        .with_message_id(ShortString::from(message_id));
    if let Some(app_id) = app_id {
        p = p.with_app_id(ShortString::from(app_id));
    }
    match source {
        Some(source) => with_source(p, source),
        None => p,
    }
}

/// Publishes test event `n` as coming from `source`; returns the body.
async fn publish_from(publisher: &sio::Publisher, n: u64, source: &str) -> String {
    let e = event(n, 1000 + n as u32, "public.orders", n as i64, 0);
    let body = e.to_json();
    let p = properties(Some("walcast"), Some(source), &e.id.to_string());
    publisher.publish_with(&e.routing_key(), &body, p).await;
    String::from_utf8(body).unwrap()
}

/// message_id, app_id, source, body, expected x-walcast-reason.
type Case<'a> = (&'a str, Option<&'a str>, Option<&'a str>, &'a [u8], &'a str);

/// A huge id, far above anything the test publishes.
fn high_id() -> EventId {
    EventId {
        commit_lsn: Lsn(0x7FFF_FFFF_0000_0000),
        ordinal: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_and_malformed_messages_go_to_the_dead_letters_and_poison_nothing() {
    // A small buffer: a high id that got held and evicted would become the
    // horizon at once (the old code dropped everything below it).
    let gw = Gateway::start(GatewayOptions {
        hub: HubOptions {
            replay_buffer: 2,
            ..HubOptions::default()
        },
        ..GatewayOptions::default()
    })
    .await;
    let mut client = NodeClient::connect(&gw.url(), json!({})).await;
    gw.wait_sockets(1).await;

    // The followed source is set by the first real change.
    let first = gw.publish(&event(1, 101, "public.orders", 1, 0)).await;
    assert_eq!(
        client.changes(1).await,
        vec![String::from_utf8(first).unwrap()]
    );

    let publisher = sio::Publisher::connect(&gw.exchange).await;
    let high = event(2, 102, "public.orders", 2, 0);
    let high_body = String::from_utf8(high.to_json())
        .unwrap()
        .replace(&high.id.to_string(), &high_id().to_string());
    let cases: [Case; 5] = [
        (
            "no-app-id",
            None,
            Some(TEST_SOURCE),
            high_body.as_bytes(),
            "foreign_app_id",
        ),
        (
            "other-app",
            Some("intruder"),
            Some(TEST_SOURCE),
            high_body.as_bytes(),
            "foreign_app_id",
        ),
        (
            "no-source",
            Some("walcast"),
            None,
            high_body.as_bytes(),
            "missing_source",
        ),
        (
            "malformed",
            Some("walcast"),
            Some(TEST_SOURCE),
            b"{not json",
            "malformed_body",
        ),
        (
            "bad-header",
            Some("walcast"),
            Some(TEST_SOURCE),
            br#"{"id":"nope"}"#,
            "malformed_body",
        ),
    ];
    for (message_id, app_id, source, body, _) in &cases {
        publisher
            .publish_with(
                "public.orders.insert",
                body,
                properties(*app_id, *source, message_id),
            )
            .await;
    }

    // The next real changes still reach the client, although the foreign
    // high id sorts above them.
    let mut expected = Vec::new();
    for n in 3..=6u64 {
        let body = gw
            .publish(&event(n, 100 + n as u32, "public.orders", n as i64, 0))
            .await;
        expected.push(String::from_utf8(body).unwrap());
    }
    assert_eq!(client.changes(expected.len()).await, expected);
    let stats = gw.hub.stats().snapshot();
    assert_eq!(stats.delivered, 5);
    assert_eq!(stats.duplicates, 0);

    let letters = read_dead_letters(&dead_letter_name(&gw.queue), cases.len()).await;
    for (message_id, _, _, body, reason) in &cases {
        let letter = letters
            .iter()
            .find(|l| l.message_id.as_deref() == Some(*message_id))
            .unwrap_or_else(|| panic!("no dead letter for {message_id}: {letters:?}"));
        assert_eq!(letter.reason, *reason, "{message_id}");
        assert_eq!(letter.routing_key, "public.orders.insert");
        assert_eq!(letter.body, *body, "the body is dead-lettered unchanged");
    }
    assert_eq!(gw.consumer.rejected(), cases.len() as u64);
    assert_eq!(
        gw.consumer
            .dead_letters(walcast::consumer::DeadReason::ForeignAppId),
        2
    );
    assert!(client
        .next_within(Duration::from_millis(300))
        .await
        .is_none());
    client.close().await;
    gw.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_gateway_dead_letters_other_sources() {
    let gw = Gateway::start(GatewayOptions {
        pinned_source: Some(TEST_SOURCE.into()),
        ..GatewayOptions::default()
    })
    .await;
    let mut client = NodeClient::connect(&gw.url(), json!({})).await;
    gw.wait_sockets(1).await;
    let publisher = sio::Publisher::connect(&gw.exchange).await;
    // A walcast message from another stream, with a high id.
    let foreign = event(50, 150, "public.orders", 50, 0);
    publisher
        .publish_with(
            "public.orders.insert",
            &foreign.to_json(),
            properties(Some("walcast"), Some("99/other/slot"), "foreign"),
        )
        .await;
    let body = gw.publish(&event(1, 101, "public.orders", 1, 0)).await;
    assert_eq!(
        client.changes(1).await,
        vec![String::from_utf8(body).unwrap()]
    );
    let letters = read_dead_letters(&dead_letter_name(&gw.queue), 1).await;
    assert_eq!(letters[0].reason, "foreign_source");
    assert_eq!(gw.hub.stats().snapshot().source_changes, 0);
    client.close().await;
    gw.teardown().await;
}

/// A gateway whose queue and replay log outlive a switch to a database on
/// a new cluster: the new source's ids are lower than everything before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_source_restarts_the_history_and_every_change_of_it_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubOptions {
        replay_buffer: 4,
        replay_dir: Some(dir.path().to_path_buf()),
        ..HubOptions::default()
    };
    let old_source = "6000000000000000001/shop/walcast";
    let new_source = "6000000000000000002/shop/walcast";
    // Source A: changes 100..=110 (more than the buffer holds, so the old
    // history has an eviction horizon at 106).
    let gw = Gateway::start(GatewayOptions {
        hub: hub.clone(),
        ..GatewayOptions::default()
    })
    .await;
    let publisher = sio::Publisher::connect(&gw.exchange).await;
    for n in 100..=110 {
        publish_from(&publisher, n, old_source).await;
    }
    gw.wait_delivered(11).await;
    let names = (gw.exchange.clone(), gw.queue.clone());
    gw.stop().await;

    // The gateway comes back with its queue and log; a client reconnects
    // with a cursor of the old source.
    let gw = Gateway::start(GatewayOptions {
        hub: hub.clone(),
        names: Some(names),
        ..GatewayOptions::default()
    })
    .await;
    let mut live =
        NodeClient::connect(&gw.url(), json!({"since": event_id(110).to_string()})).await;
    gw.wait_sockets(1).await;

    // Source B: a restored database, ids far below A's horizon.
    let mut expected = Vec::new();
    for n in 1..=6 {
        expected.push(publish_from(&publisher, n, new_source).await);
    }
    // The connected client is told to reload, then gets every new change.
    let line = live.next().await;
    assert_eq!(line.kind(), "event", "{line:?}");
    assert_eq!(line.0["event"], "resync", "{line:?}");
    assert_eq!(line.0["data"]["reason"], "source_changed", "{line:?}");
    assert_eq!(live.changes(expected.len()).await, expected);
    assert_eq!(gw.hub.stats().snapshot().source_changes, 1);
    assert_eq!(gw.hub.stats().snapshot().duplicates, 0);

    // A client arriving later with an old cursor gets resync too.
    let mut late =
        NodeClient::connect(&gw.url(), json!({"since": event_id(108).to_string()})).await;
    let line = late.next().await;
    assert_eq!(line.0["event"], "resync", "{line:?}");
    assert_eq!(line.0["data"]["reason"], "source_changed", "{line:?}");
    assert_eq!(
        line.0["data"]["latest_id"],
        Value::String(event_id(6).to_string())
    );
    // A cursor of the new source is replayed from.
    let mut fresh = NodeClient::connect(&gw.url(), json!({"since": event_id(4).to_string()})).await;
    assert_eq!(fresh.changes(2).await, expected[4..].to_vec());

    // The switch survives a restart: the log holds the new source.
    let names = (gw.exchange.clone(), gw.queue.clone());
    live.close().await;
    late.close().await;
    fresh.close().await;
    gw.stop().await;
    let gw = Gateway::start(GatewayOptions {
        hub,
        names: Some(names),
        ..GatewayOptions::default()
    })
    .await;
    let mut again = NodeClient::connect(&gw.url(), json!({"since": event_id(5).to_string()})).await;
    assert_eq!(again.changes(1).await, expected[5..].to_vec());
    let next = publish_from(&publisher, 7, new_source).await;
    assert_eq!(again.changes(1).await, vec![next]);
    assert_eq!(gw.hub.stats().snapshot().source_changes, 0);
    wait_until("no dead letters", Duration::from_millis(1), || {
        gw.consumer.rejected() == 0
    })
    .await;
    again.close().await;
    gw.teardown().await;
}
