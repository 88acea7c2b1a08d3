//! Payload projection (contract section 3) against a real gateway
//! (RabbitMQ, socketioxide) and real socket.io-client sockets in Node:
//!
//! - `subscribe` with `fields`: `new` and `old` hold those columns plus
//!   the key columns (a composite key here, not named in `fields`);
//!   everything else in the event is as published;
//! - `old: false`: `old` is `null`;
//! - a socket without a projection still gets the RabbitMQ body byte for
//!   byte, from the same delivery;
//! - an invalid field list is answered `{ok: false, error}` and changes
//!   nothing.

use crate::support::sio;
use std::sync::Arc;

use serde_json::{json, Value};
use sio::{event, Gateway, GatewayOptions, NodeClient};
use walcast::event::{ChangeEvent, Datum, Op, Row};

/// An update of `public.orders` with a composite key (`id`, `region`) and
/// a whole old row.
fn update(n: u64) -> ChangeEvent {
    let col = |name: &str| -> Arc<str> { Arc::from(name) };
    let mut e = event(n, n as u32, "public.orders", n as i64, 8);
    e.op = Op::Update;
    e.key = Some(Row::new(vec![
        (col("id"), Datum::Int(n as i64)),
        (col("region"), Datum::Text("eu".into())),
    ]));
    let row = |status: &str| {
        Row::new(vec![
            (col("id"), Datum::Int(n as i64)),
            (col("region"), Datum::Text("eu".into())),
            (col("customer_name"), Datum::Text("Harry".into())),
            (col("status"), Datum::Text(status.into())),
            (col("price"), Datum::Text("12.50".into())),
        ])
    };
    e.new = Some(row("shipped"));
    e.old = Some(row("pending"));
    e
}

fn parse(raw: &str) -> Value {
    serde_json::from_str(raw).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fields_and_old_shape_the_events_a_socket_asked_to_shape() {
    let gw = Gateway::start(GatewayOptions::default()).await;
    let mut whole = NodeClient::connect(&gw.url(), json!({})).await;
    let mut slim = NodeClient::connect(&gw.url(), json!({})).await;
    let mut no_old = NodeClient::connect(&gw.url(), json!({})).await;
    gw.wait_sockets(3).await;

    let reply = slim
        .request(
            "subscribe",
            Some(json!({"table": "public.orders", "fields": ["status"]})),
        )
        .await;
    assert_eq!(reply, json!({"ok": true}));
    let reply = no_old
        .request(
            "subscribe",
            Some(json!({"table": "public.orders", "old": false})),
        )
        .await;
    assert_eq!(reply, json!({"ok": true}));

    let body = gw.publish(&update(1)).await;
    let published = parse(std::str::from_utf8(&body).unwrap());

    // No projection: the body as published, byte for byte.
    assert_eq!(whole.changes(1).await[0].as_bytes(), body.as_slice());

    // fields: the column asked for plus both key columns, in new and old.
    let got = parse(&slim.changes(1).await[0]);
    assert_eq!(
        got["new"],
        json!({"id": 1, "region": "eu", "status": "shipped"})
    );
    assert_eq!(
        got["old"],
        json!({"id": 1, "region": "eu", "status": "pending"})
    );
    let mut rest = got.clone();
    let mut expected = published.clone();
    for v in [&mut rest, &mut expected] {
        v.as_object_mut().unwrap().remove("new");
        v.as_object_mut().unwrap().remove("old");
    }
    assert_eq!(rest, expected, "everything else as published");

    // old: false: old is null, new whole.
    let got = parse(&no_old.changes(1).await[0]);
    assert_eq!(got["old"], Value::Null);
    assert_eq!(got["new"], published["new"]);
    assert_eq!(got["id"], published["id"]);

    for client in [whole, slim, no_old] {
        client.close().await;
    }
    gw.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_field_list_is_refused_and_changes_nothing() {
    let gw = Gateway::start(GatewayOptions::default()).await;
    let mut client = NodeClient::connect(&gw.url(), json!({})).await;
    gw.wait_sockets(1).await;

    let long = "c".repeat(64);
    let too_many: Vec<String> = (0..=1600).map(|i| format!("c{i}")).collect();
    let refused = [
        (
            json!({"table": "public.orders", "fields": "status"}),
            "must be an array",
        ),
        (
            json!({"table": "public.orders", "fields": ["status", 7]}),
            "column names (strings)",
        ),
        (
            json!({"table": "public.orders", "fields": [""]}),
            "not a column name",
        ),
        (
            json!({"table": "public.orders", "fields": [long]}),
            "not a column name",
        ),
        (
            json!({"table": "public.orders", "fields": too_many}),
            "at most 1600",
        ),
        (
            json!({"table": "public.orders", "old": "no"}),
            "old must be true or false",
        ),
    ];
    for (payload, reason) in refused {
        let reply = client.request("subscribe", Some(payload.clone())).await;
        assert_eq!(reply["ok"], false, "{payload}: {reply}");
        let error = reply["error"].as_str().unwrap();
        assert!(error.contains(reason), "{payload}: {error}");
    }

    // Nothing changed: still every table, whole events.
    let items = gw.publish(&event(1, 1, "public.items", 1, 8)).await;
    let orders = gw.publish(&update(2)).await;
    let got = client.changes(2).await;
    assert_eq!(got[0].as_bytes(), items.as_slice());
    assert_eq!(got[1].as_bytes(), orders.as_slice());
    client.close().await;
    gw.teardown().await;
}
