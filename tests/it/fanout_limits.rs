//! Per-client limits and routing fixes of the fan-out, against a real
//! gateway (RabbitMQ, socketioxide) and real clients: socket.io-client in
//! Node, and a raw WebSocket client for what a well-behaved client would
//! never send.
//!
//! - A subscription key over `fanout.max_key_bytes`, and subscriptions
//!   past `fanout.max_subscription_bytes`, are answered `{ok: false}` and
//!   change nothing.
//! - A packet over `fanout.max_packet_bytes` closes that client's
//!   connection (WebSocket) or session (polling: 413); another client is
//!   unaffected.
//! - A `truncate` reaches a socket subscribed to a row of its table.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;
use walcast::event::Op;

use crate::support::sio::{event, Gateway, GatewayOptions, NodeClient};

/// The defaults of `fanout.max_key_bytes`, `fanout.max_subscription_bytes`
/// and `fanout.max_packet_bytes`.
const MAX_KEY_BYTES: usize = 1024;
const MAX_SUBSCRIPTION_BYTES: usize = 256 * 1024;
const MAX_PACKET_BYTES: usize = 64 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_over_max_key_bytes_is_refused_and_changes_nothing() {
    let gw = Gateway::start(GatewayOptions::default()).await;
    let mut client = NodeClient::connect(&gw.url(), json!({})).await;
    gw.wait_sockets(1).await;

    let big_key = json!({"table": "public.orders", "key": {"id": "k".repeat(MAX_KEY_BYTES)}});
    let reply = client.request("subscribe", Some(big_key)).await;
    assert_eq!(reply["ok"], false, "{reply}");
    assert!(
        reply["error"].as_str().unwrap().contains("max_key_bytes"),
        "{reply}"
    );
    // Still subscribed to everything.
    let body = gw.publish(&event(1, 1, "public.items", 1, 8)).await;
    assert_eq!(client.changes(1).await[0].as_bytes(), body.as_slice());
    client.close().await;
    gw.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_past_max_subscription_bytes_are_refused_and_change_nothing() {
    let gw = Gateway::start(GatewayOptions::default()).await;
    let mut client = NodeClient::connect(&gw.url(), json!({})).await;
    gw.wait_sockets(1).await;

    // Rows of about 1 KiB each, until the per-socket total refuses one.
    let row = |n: usize| json!({"table": "public.orders", "key": {"id": n, "pad": "p".repeat(MAX_KEY_BYTES - 40)}});
    let mut accepted = 0;
    let refusal = loop {
        let reply = client.request("subscribe", Some(row(accepted))).await;
        if reply["ok"] == false {
            break reply;
        }
        accepted += 1;
        assert!(
            accepted <= MAX_SUBSCRIPTION_BYTES / (MAX_KEY_BYTES - 40),
            "{accepted} subscriptions of about 1 KiB accepted, past fanout.max_subscription_bytes"
        );
    };
    assert!(
        refusal["error"]
            .as_str()
            .unwrap()
            .contains("max_subscription_bytes"),
        "{refusal}"
    );
    assert!(accepted > 200, "{accepted}");

    // The refusals changed nothing: after one row goes, its table fits,
    // and the socket gets that table's changes and no other's.
    let reply = client.request("unsubscribe", Some(row(0))).await;
    assert_eq!(reply["ok"], true, "{reply}");
    let reply = client
        .request("subscribe", Some(json!({"table": "public.items"})))
        .await;
    assert_eq!(reply["ok"], true, "{reply}");
    gw.publish(&event(1, 1, "public.other", 1, 8)).await;
    let body = gw.publish(&event(2, 2, "public.items", 1, 8)).await;
    assert_eq!(client.changes(1).await[0].as_bytes(), body.as_slice());
    client.close().await;
    gw.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_client_packet_disconnects_that_client_only() {
    let gw = Gateway::start(GatewayOptions::default()).await;
    let mut other = NodeClient::connect(&gw.url(), json!({})).await;

    let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", gw.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let open = ws.next().await.unwrap().unwrap();
    assert!(open.to_text().unwrap().starts_with('0'), "{open:?}");
    ws.send(Message::text("40")).await.unwrap();
    gw.wait_sockets(2).await;

    // Just over the limit: a subscribe carrying 64 KiB of key.
    let payload = json!(["subscribe", {"table": "public.orders", "key": {"pad": "x".repeat(MAX_PACKET_BYTES)}}]);
    ws.send(Message::text(format!("42{payload}")))
        .await
        .unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(message)) => eprintln!("oversized client: skipping {message:?}"),
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the connection stayed open after a {} byte packet",
        MAX_PACKET_BYTES + 60
    );
    gw.wait_sockets(1).await;

    // The server and the other client carry on.
    let body = gw.publish(&event(1, 1, "public.orders", 1, 8)).await;
    assert_eq!(other.changes(1).await[0].as_bytes(), body.as_slice());
    other.close().await;
    gw.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncate_reaches_a_socket_subscribed_to_a_row_of_its_table() {
    let gw = Gateway::start(GatewayOptions::default()).await;
    let mut client = NodeClient::connect(&gw.url(), json!({})).await;
    gw.wait_sockets(1).await;
    let reply = client
        .request(
            "subscribe",
            Some(json!({"table": "public.orders", "key": {"id": 7}})),
        )
        .await;
    assert_eq!(reply["ok"], true, "{reply}");

    gw.publish(&event(1, 1, "public.orders", 8, 8)).await; // another row
    let mut truncate = event(2, 2, "public.orders", 7, 8);
    truncate.op = Op::Truncate;
    truncate.key = None;
    truncate.new = None;
    let body = gw.publish(&truncate).await;
    let line = client
        .next_within(Duration::from_secs(10))
        .await
        .expect("the truncate reaches the row's subscriber");
    assert_eq!(line.kind(), "change", "{line:?}");
    assert_eq!(line.raw().as_bytes(), body.as_slice());
    let change: Value = serde_json::from_str(line.raw()).unwrap();
    assert_eq!(change["op"], "truncate");
    client.close().await;
    gw.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_polling_request_closes_that_session_only() {
    let gw = Gateway::start(GatewayOptions::default()).await;
    let mut other = NodeClient::connect(&gw.url(), json!({})).await;
    let http = reqwest::Client::new();
    let base = format!("{}/socket.io/?EIO=4&transport=polling", gw.url());
    let open = http.get(&base).send().await.unwrap().text().await.unwrap();
    let handshake: Value = serde_json::from_str(open.strip_prefix('0').unwrap()).unwrap();
    let session = format!("{base}&sid={}", handshake["sid"].as_str().unwrap());
    let post = |body: String| http.post(&session).body(body).send();
    assert_eq!(post("40".into()).await.unwrap().status(), 200);
    gw.wait_sockets(2).await;

    // Over the limit, below socketioxide's 100 KB default.
    let payload = json!(["subscribe", {"table": "public.orders", "key": {"pad": "x".repeat(MAX_PACKET_BYTES)}}]);
    let status = post(format!("42{payload}")).await.unwrap().status();
    assert_eq!(status, 413, "an oversized polling body is refused");
    let status = http.get(&session).send().await.unwrap().status();
    assert_eq!(status, 400, "the session is closed");
    gw.wait_sockets(1).await;

    let body = gw.publish(&event(1, 1, "public.orders", 1, 8)).await;
    assert_eq!(other.changes(1).await[0].as_bytes(), body.as_slice());
    other.close().await;
    gw.teardown().await;
}
