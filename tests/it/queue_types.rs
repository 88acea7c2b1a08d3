//! The gateway queue's explicit type (contract section 2): classic by
//! default, quorum on request with a single active consumer, so that one
//! gateway per queue holds on both types; a queue of another type is
//! refused with an error that names the setting.
//!
//! Real RabbitMQ (the shared broker, queues of the test's own); the queue
//! arguments are read back with `rabbitmqctl list_queues`.

use std::time::Duration;

use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Connection, ConnectionProperties};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use walcast::config::{QueueType, RabbitConfig};
use walcast::consumer::Consumer;
use walcast::fanout::{Hub, HubOptions};

use crate::support::sio::{
    amqp_url, event, unique_names, wait_until, Gateway, GatewayOptions, TIMEOUT,
};

/// `rabbitmqctl list_queues` for one queue: its type and arguments.
fn queue_info(queue: &str) -> Value {
    let output = std::process::Command::new("rabbitmqctl")
        .args([
            "list_queues",
            "-q",
            "name",
            "type",
            "arguments",
            "--formatter",
            "json",
        ])
        .output()
        .expect("run rabbitmqctl");
    assert!(output.status.success(), "{output:?}");
    let queues: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
    queues
        .into_iter()
        .find(|q| q["name"] == queue)
        .unwrap_or_else(|| panic!("queue {queue} not listed"))
}

/// The value of argument `name` in `rabbitmqctl`'s JSON (a list of
/// `[name, type, value]` triples or an object, depending on the version).
fn argument(info: &Value, name: &str) -> Value {
    match &info["arguments"] {
        Value::Object(map) => map.get(name).cloned().unwrap_or(Value::Null),
        Value::Array(pairs) => pairs
            .iter()
            .find(|pair| pair[0] == name)
            .map(|pair| pair[pair.as_array().map_or(1, |p| p.len() - 1)].clone())
            .unwrap_or(Value::Null),
        _ => Value::Null,
    }
}

async fn declare_raw(queue: &str, arguments: FieldTable) {
    let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    channel
        .queue_declare(
            ShortString::from(queue),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            arguments,
        )
        .await
        .unwrap();
    conn.close(200, ShortString::from("done")).await.ok();
}

async fn delete_raw(queue: &str) {
    let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    channel
        .queue_delete(ShortString::from(queue), QueueDeleteOptions::default())
        .await
        .ok();
    conn.close(200, ShortString::from("done")).await.ok();
}

fn quorum() -> GatewayOptions {
    GatewayOptions {
        queue_type: Some(QueueType::Quorum),
        ..GatewayOptions::default()
    }
}

#[tokio::test]
async fn a_classic_queue_is_declared_with_an_explicit_type() {
    let gateway = Gateway::start(GatewayOptions::default()).await;
    let info = queue_info(&gateway.queue);
    assert_eq!(info["type"], "classic", "{info}");
    assert_eq!(argument(&info, "x-queue-type"), "classic", "{info}");
    assert_eq!(argument(&info, "x-expires"), 1_800_000, "{info}");
    gateway.teardown().await;
}

#[tokio::test]
async fn a_quorum_queue_has_a_single_active_consumer() {
    let gateway = Gateway::start(quorum()).await;
    let info = queue_info(&gateway.queue);
    assert_eq!(info["type"], "quorum", "{info}");
    assert_eq!(argument(&info, "x-queue-type"), "quorum", "{info}");
    assert_eq!(argument(&info, "x-single-active-consumer"), true, "{info}");
    assert!(!gateway.consumer.is_standby());
    // It consumes: a change goes through.
    gateway.publish(&event(1, 700, "public.orders", 1, 0)).await;
    gateway.wait_delivered(1).await;
    gateway.teardown().await;
}

/// Two gateways on one quorum queue: the first gets every change, the
/// second none (no round-robin split) and says it is a standby; when the
/// first goes, the second takes over.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_gateways_on_one_quorum_queue_do_not_split_it() {
    let names = unique_names();
    let active = Gateway::start(GatewayOptions {
        names: Some(names.clone()),
        ..quorum()
    })
    .await;
    let standby = Gateway::start(GatewayOptions {
        names: Some(names.clone()),
        ..quorum()
    })
    .await;
    assert!(
        standby.consumer.is_standby(),
        "second gateway not a standby"
    );
    assert!(!active.consumer.is_standby());

    for n in 1..=50 {
        active
            .publish(&event(n, 700 + n as u32, "public.orders", n as i64, 0))
            .await;
    }
    active.wait_delivered(50).await;
    // The standby had every chance to get a share: the broker routed all
    // 50 before the active one had them.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(active.consumer.received(), 50);
    assert_eq!(standby.consumer.received(), 0, "the queue was split");
    assert_eq!(standby.hub.stats().snapshot().delivered, 0);
    assert!(standby.consumer.is_standby());

    // The active gateway stops (a rolling restart): the standby takes over.
    active.stop().await;
    let status = standby.consumer.clone();
    wait_until("the standby to become active", TIMEOUT, || {
        !status.is_standby()
    })
    .await;
    for n in 51..=60 {
        standby
            .publish(&event(n, 700 + n as u32, "public.orders", n as i64, 0))
            .await;
    }
    standby.wait_delivered(10).await;
    standby.teardown().await;
}

/// A queue that exists as quorum while the gateway is set to classic (the
/// broker made it quorum by default, or the setting changed): refused,
/// with an error that names rabbitmq.queue_type and the fix.
#[tokio::test]
async fn a_queue_of_another_type_is_refused_with_a_clear_error() {
    let (exchange, queue) = unique_names();
    let mut arguments = FieldTable::default();
    arguments.insert(
        ShortString::from("x-queue-type"),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    declare_raw(&queue, arguments).await;

    let config = RabbitConfig {
        url: amqp_url(),
        exchange,
        queue: queue.clone(),
        max_backoff_ms: 200,
        ..RabbitConfig::default()
    };
    let shutdown = CancellationToken::new();
    let hub = Hub::new(HubOptions::default(), shutdown.clone());
    let consumer = Consumer::new(config, hub);
    let status = consumer.status();
    let task = tokio::spawn(consumer.run(shutdown.clone()));
    wait_until("the consumer to report the mismatch", TIMEOUT, || {
        status.refused().is_some()
    })
    .await;
    let refused = status.refused().unwrap();
    for needle in ["rabbitmq.queue_type", "x-queue-type", "delete", &queue] {
        assert!(refused.contains(needle), "{needle:?} missing in: {refused}");
    }
    assert!(!status.is_consuming());
    shutdown.cancel();
    tokio::time::timeout(TIMEOUT, task).await.unwrap().unwrap();
    delete_raw(&queue).await;
}

/// A queue an older walcast declared without `x-queue-type` is classic:
/// an upgraded gateway (classic by default) keeps using it.
#[tokio::test]
async fn a_queue_declared_without_a_type_by_an_older_walcast_is_kept() {
    let names = unique_names();
    let mut arguments = FieldTable::default();
    arguments.insert(
        ShortString::from("x-expires"),
        AMQPValue::LongLongInt(1_800_000),
    );
    declare_raw(&names.1, arguments).await;
    let gateway = Gateway::start(GatewayOptions {
        names: Some(names),
        ..GatewayOptions::default()
    })
    .await;
    gateway.publish(&event(1, 700, "public.orders", 1, 0)).await;
    gateway.wait_delivered(1).await;
    gateway.teardown().await;
}
