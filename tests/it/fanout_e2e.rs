//! End-to-end tests of the consumer and the fan-out: real RabbitMQ, a real
//! Socket.IO server, real socket.io-client processes in Node.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;
use walcast::fanout::HubOptions;

use crate::support::sio::{event, event_id, Gateway, GatewayOptions, NodeClient, TIMEOUT};

fn options(replay_buffer: usize, socket_buffer: usize) -> GatewayOptions {
    GatewayOptions {
        hub: HubOptions {
            replay_buffer,
            socket_buffer,
            ..HubOptions::default()
        },
        ..GatewayOptions::default()
    }
}

fn ids(raws: &[String]) -> Vec<String> {
    raws.iter()
        .map(|raw| {
            serde_json::from_str::<Value>(raw).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

fn expected_ids(range: std::ops::RangeInclusive<u64>) -> Vec<String> {
    range.map(|n| event_id(n).to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_payloads_are_byte_identical_in_order_and_survive_malformed_bodies() {
    let started = Instant::now();
    let gw = Gateway::start(GatewayOptions::default()).await;
    // Polling first, then the upgrade to websocket, as a browser does.
    let mut client = NodeClient::spawn_with(json!({
        "url": gw.url(), "auth": {}, "transports": ["polling", "websocket"]
    }));
    assert_eq!(client.next().await.kind(), "connect");
    gw.wait_sockets(1).await;

    let tables = ["public.orders", "public.customers", "inventory.items"];
    let mut published = Vec::new();
    for n in 1..=40u64 {
        let table = tables[n as usize % tables.len()];
        let body = gw
            .publish(&event(n, 1000 + n as u32, table, n as i64, 0))
            .await;
        published.push(String::from_utf8(body).unwrap());
        if n == 20 {
            gw.publish_raw("public.orders.insert", b"{not json", None)
                .await;
            gw.publish_raw("public.orders.insert", br#"{"id":"nope"}"#, None)
                .await;
        }
    }
    let received = client.changes(published.len()).await;
    assert_eq!(
        received, published,
        "payloads differ from the published bodies"
    );
    let stats = gw.hub.stats().snapshot();
    assert_eq!(stats.malformed, 2);
    assert_eq!(gw.consumer.rejected(), 2);
    assert_eq!(stats.delivered, 40);
    assert_eq!(stats.duplicates, 0);

    // Shutdown closes the socket cleanly.
    gw.shutdown.cancel();
    let line = client.next().await;
    assert_eq!(line.kind(), "disconnect", "{line:?}");
    assert_eq!(line.0["reason"], "io server disconnect");
    gw.teardown().await;
    eprintln!("byte-identical: {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_narrow_widen_and_acks_report_errors() {
    let started = Instant::now();
    let gw = Gateway::start(GatewayOptions::default()).await;
    let mut client = NodeClient::connect(&gw.url(), json!({})).await;
    gw.wait_sockets(1).await;

    let ack = client
        .request(
            "subscribe",
            Some(json!({"table": "public.orders", "key": {"id": 42}})),
        )
        .await;
    assert_eq!(ack, json!({"ok": true}));

    for (payload, error) in [
        (Some(json!({"key": {"id": 1}})), "missing field \"table\""),
        (Some(json!({"table": "orders"})), "is not \"schema.table\""),
        (
            Some(json!({"table": "public.orders", "key": 42})),
            "key must be an object",
        ),
        (Some(json!("public.orders")), "payload must be an object"),
        (None, "payload must be an object"),
    ] {
        let ack = client.request("subscribe", payload.clone()).await;
        assert_eq!(ack["ok"], false, "{payload:?}");
        assert!(
            ack["error"].as_str().unwrap().contains(error),
            "{payload:?}: {ack}"
        );
    }
    let ack = client.request("frobnicate", Some(json!({}))).await;
    assert_eq!(ack["ok"], false);
    assert!(ack["error"].as_str().unwrap().contains("unknown event"));
    client.emit_no_ack("frobnicate", json!({"x": 1})).await;

    let orders_42 = [2u64, 5];
    gw.publish(&event(1, 1, "public.orders", 41, 0)).await;
    let e2 = gw.publish(&event(2, 2, "public.orders", 42, 0)).await;
    gw.publish(&event(3, 3, "public.customers", 42, 0)).await;
    gw.publish(&event(4, 4, "public.orders", 43, 0)).await;
    let e5 = gw.publish(&event(5, 5, "public.orders", 42, 0)).await;
    let received = client.changes(orders_42.len()).await;
    assert_eq!(
        received,
        vec![
            String::from_utf8(e2).unwrap(),
            String::from_utf8(e5).unwrap()
        ]
    );

    // Widen to a whole table; then drop the row.
    let ack = client
        .request("subscribe", Some(json!({"table": "public.customers"})))
        .await;
    assert_eq!(ack, json!({"ok": true}));
    let ack = client
        .request(
            "unsubscribe",
            Some(json!({"table": "public.orders", "key": {"id": 42}})),
        )
        .await;
    assert_eq!(ack, json!({"ok": true}));
    gw.publish(&event(6, 6, "public.orders", 42, 0)).await;
    gw.publish(&event(7, 7, "public.customers", 9, 0)).await;
    let received = client.changes(1).await;
    assert_eq!(ids(&received), expected_ids(7..=7));
    assert!(
        client
            .next_within(Duration::from_millis(300))
            .await
            .is_none(),
        "nothing else is due"
    );
    gw.teardown().await;
    eprintln!("subscriptions: {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_and_redeliveries_reach_a_client_once() {
    let started = Instant::now();
    let gw = Gateway::start(GatewayOptions {
        drop_connection_before_ack: Some(5),
        ..GatewayOptions::default()
    })
    .await;
    let mut client = NodeClient::connect(&gw.url(), json!({})).await;
    gw.wait_sockets(1).await;

    for n in 1..=10 {
        gw.publish(&event(n, n as u32, "public.orders", n as i64, 0))
            .await;
    }
    // The same ids again, as a publisher retry would send them.
    gw.publish(&event(3, 3, "public.orders", 3, 0)).await;
    gw.publish(&event(7, 7, "public.orders", 7, 0)).await;
    gw.publish(&event(11, 11, "public.orders", 11, 0)).await;

    let received = client.changes(11).await;
    assert_eq!(ids(&received), expected_ids(1..=11));
    assert!(
        client
            .next_within(Duration::from_millis(300))
            .await
            .is_none(),
        "no duplicate follows"
    );
    let stats = gw.hub.stats().snapshot();
    assert!(gw.consumer.sessions() >= 2, "the consumer reconnected");
    assert!(gw.consumer.redelivered() >= 1, "the broker redelivered");
    assert!(stats.duplicates >= 3, "{stats:?}");
    assert_eq!(stats.delivered, 11);
    gw.teardown().await;
    eprintln!("dedupe: {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn since_replays_then_goes_live_without_gap_or_duplicate() {
    let started = Instant::now();
    let gw = Gateway::start(GatewayOptions::default()).await;
    let mut a = NodeClient::connect(&gw.url(), json!({})).await;
    gw.wait_sockets(1).await;

    const TOTAL: u64 = 400;
    let publisher = {
        let gw = &gw;
        async move {
            for n in 1..=TOTAL {
                gw.publish(&event(n, n as u32, "public.orders", (n % 7) as i64, 64))
                    .await;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    };
    let clients = async {
        let first = a.changes(100).await;
        assert_eq!(ids(&first), expected_ids(1..=100));
        // Reconnect with the 50th id while changes keep flowing.
        let since = event_id(50).to_string();
        let mut b = NodeClient::connect(&gw.url(), json!({"since": since})).await;
        let mut got = Vec::new();
        while got.len() < (TOTAL - 50) as usize {
            let line = b.next().await;
            assert_eq!(line.kind(), "change", "{line:?}");
            got.push(line.change_id());
        }
        assert_eq!(
            got,
            expected_ids(51..=TOTAL),
            "gap or duplicate at the seam"
        );
        let rest = a.changes((TOTAL - 100) as usize).await;
        assert_eq!(ids(&rest), expected_ids(101..=TOTAL));
        b
    };
    let ((), b) = tokio::join!(publisher, clients);
    drop(b);
    gw.teardown().await;
    eprintln!("since seam: {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn since_older_than_the_buffer_resyncs_and_garbage_is_refused() {
    let started = Instant::now();
    let gw = Gateway::start(options(10, 4096)).await;

    // Before any change: this gateway cannot vouch for any cursor.
    let mut early = NodeClient::connect(&gw.url(), json!({"since": event_id(1).to_string()})).await;
    let line = early.next().await;
    assert_eq!(line.0["event"], "resync");
    assert_eq!(
        line.0["data"],
        json!({"reason": "no_history", "latest_id": null})
    );

    for n in 1..=30 {
        gw.publish(&event(n, n as u32, "public.orders", 1, 0)).await;
    }
    gw.wait_delivered(30).await;
    assert_eq!(early.changes(30).await.len(), 30);

    let mut old = NodeClient::connect(&gw.url(), json!({"since": event_id(5).to_string()})).await;
    let line = old.next().await;
    assert_eq!(line.kind(), "event", "{line:?}");
    assert_eq!(line.0["event"], "resync");
    assert_eq!(
        line.0["data"],
        json!({"reason": "since_too_old", "latest_id": event_id(30).to_string()})
    );
    // Just inside the buffer: the 10 held are 21..=30.
    let mut inside =
        NodeClient::connect(&gw.url(), json!({"since": event_id(20).to_string()})).await;
    assert_eq!(ids(&inside.changes(10).await), expected_ids(21..=30));
    // Newer than everything held: live only.
    let mut newest =
        NodeClient::connect(&gw.url(), json!({"since": event_id(30).to_string()})).await;
    gw.wait_sockets(4).await;
    gw.publish(&event(31, 31, "public.orders", 1, 0)).await;
    for client in [&mut early, &mut old, &mut inside, &mut newest] {
        assert_eq!(ids(&client.changes(1).await), expected_ids(31..=31));
    }

    let mut garbage = NodeClient::spawn(&gw.url(), json!({"since": "garbage"}));
    let line = garbage.next().await;
    assert_eq!(line.kind(), "connect_error", "{line:?}");
    let message = line.0["message"].as_str().unwrap();
    assert!(
        message.starts_with("auth.since: invalid event id \"garbage\""),
        "{message}"
    );
    let mut garbage = NodeClient::spawn(&gw.url(), json!({"snapshot": "12:oops"}));
    let line = garbage.next().await;
    assert_eq!(line.kind(), "connect_error", "{line:?}");
    assert!(line.0["message"]
        .as_str()
        .unwrap()
        .starts_with("auth.snapshot: invalid snapshot"));
    assert_eq!(gw.hub.stats().snapshot().connects_refused, 2);
    gw.teardown().await;
    eprintln!("resync: {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_hand_off_sends_exactly_what_the_snapshot_does_not_see() {
    let started = Instant::now();
    let gw = Gateway::start(GatewayOptions::default()).await;
    // The consumer has no Postgres here: as if it had taken 100:100: after
    // binding its queue.
    gw.set_history_start(100);
    // Changes 1..=6 from transactions 100..=105.
    let mut bodies = vec![String::new()];
    for n in 1..=6u64 {
        let body = gw
            .publish(&event(n, 99 + n as u32, "public.orders", n as i64, 0))
            .await;
        bodies.push(String::from_utf8(body).unwrap());
    }
    gw.wait_delivered(6).await;

    // xmin 100, xmax 105, in progress 102 and 104: not seen are xids 102
    // (change 3), 104 (change 5) and 105 (change 6).
    let mut s1 = NodeClient::connect(&gw.url(), json!({"snapshot": "100:105:102,104"})).await;
    assert_eq!(
        s1.changes(3).await,
        vec![bodies[3].clone(), bodies[5].clone(), bodies[6].clone()]
    );

    // The filter also applies to live changes until one from after xmax.
    let mut s2 = NodeClient::connect(&gw.url(), json!({"snapshot": "106:110:107"})).await;
    gw.wait_sockets(2).await;
    gw.publish(&event(7, 109, "public.orders", 7, 0)).await; // seen by s2
    gw.publish(&event(8, 107, "public.orders", 8, 0)).await; // in progress
    gw.publish(&event(9, 110, "public.orders", 9, 0)).await; // after xmax
    gw.publish(&event(10, 111, "public.orders", 10, 0)).await;
    assert_eq!(ids(&s2.changes(3).await), expected_ids(8..=10));
    assert_eq!(ids(&s1.changes(4).await), expected_ids(7..=10));

    // The history starts at xmax 100: xmin 99 is not covered.
    let mut s3 = NodeClient::connect(&gw.url(), json!({"snapshot": "99:100:"})).await;
    let line = s3.next().await;
    assert_eq!(line.0["event"], "resync", "{line:?}");
    assert_eq!(
        line.0["data"],
        json!({"reason": "snapshot_too_old", "latest_id": event_id(10).to_string()})
    );
    gw.teardown().await;
    eprintln!("snapshot: {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_older_than_evicted_changes_resyncs() {
    let gw = Gateway::start(options(3, 4096)).await;
    gw.set_history_start(100);
    for n in 1..=6u64 {
        gw.publish(&event(n, 99 + n as u32, "public.orders", 1, 0))
            .await;
    }
    gw.wait_delivered(6).await;
    // Evicted xids 100..=102: a snapshot with xmin 102 may miss one.
    let mut old = NodeClient::connect(&gw.url(), json!({"snapshot": "102:104:"})).await;
    let line = old.next().await;
    assert_eq!(line.0["data"]["reason"], "snapshot_too_old", "{line:?}");
    // xmin 103: everything evicted is seen; held 103..=105 → 104, 105 unseen.
    let mut ok = NodeClient::connect(&gw.url(), json!({"snapshot": "103:104:"})).await;
    assert_eq!(ids(&ok.changes(2).await), expected_ids(5..=6));
    gw.teardown().await;
}

/// A raw Engine.IO/Socket.IO client over a tiny receive buffer that stops
/// reading after the handshake.
async fn stalled_client(
    addr: std::net::SocketAddr,
) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    let url = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket");
    let (mut ws, _) = tokio_tungstenite::client_async(url, stream).await.unwrap();
    let open = ws.next().await.unwrap().unwrap();
    assert!(open.to_text().unwrap().starts_with('0'), "{open:?}");
    ws.send(Message::text("40")).await.unwrap();
    loop {
        let message = tokio::time::timeout(TIMEOUT, ws.next())
            .await
            .expect("socket.io CONNECT reply")
            .unwrap()
            .unwrap();
        match message {
            Message::Text(text) if text.as_str().starts_with("40") => return ws,
            other => eprintln!("stalled client handshake: skipping {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_socket_is_disconnected_and_others_are_unaffected() {
    let started = Instant::now();
    let gw = Gateway::start(options(100_000, 64)).await;
    let mut fast = NodeClient::connect(&gw.url(), json!({})).await;
    let mut stalled = stalled_client(gw.addr).await;
    gw.wait_sockets(2).await;

    let stats = gw.hub.stats();
    let mut n = 0u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    while stats.snapshot().slow_disconnects == 0 {
        assert!(
            Instant::now() < deadline,
            "the stalled socket was never disconnected"
        );
        for _ in 0..50 {
            n += 1;
            gw.publish(&event(n, n as u32, "public.orders", 1, 4096))
                .await;
        }
        // Keep the fast client caught up, so only the stalled one falls behind.
        let got = fast.changes(50).await;
        assert_eq!(ids(&got), expected_ids(n - 49..=n));
    }
    assert_eq!(stats.snapshot().slow_disconnects, 1);
    gw.wait_sockets(1).await;
    eprintln!("stalled socket detached after {n} changes of ~4 KiB");

    // Still served: the fast client gets the next change.
    n += 1;
    gw.publish(&event(n, n as u32, "public.orders", 1, 0)).await;
    assert_eq!(ids(&fast.changes(1).await), expected_ids(n..=n));

    // The stalled client, reading again, finds a gap-free prefix and then
    // the disconnect.
    let mut prefix = Vec::new();
    let mut disconnected = false;
    let read_deadline = Instant::now() + TIMEOUT;
    while !disconnected && Instant::now() < read_deadline {
        match tokio::time::timeout(TIMEOUT, stalled.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => {
                let text = text.as_str();
                if let Some(payload) = text.strip_prefix("42[\"change\",") {
                    let v: Value = serde_json::from_str(&payload[..payload.len() - 1]).unwrap();
                    prefix.push(v["id"].as_str().unwrap().to_owned());
                } else if text == "41" || text == "1" {
                    disconnected = true;
                } else if text == "2" {
                    stalled.send(Message::text("3")).await.ok();
                }
            }
            Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => disconnected = true,
            Ok(Some(Ok(_))) => {}
            Err(_) => break,
        }
    }
    assert!(disconnected, "the stalled client was not told to go");
    assert!(!prefix.is_empty());
    assert_eq!(
        prefix,
        expected_ids(1..=prefix.len() as u64),
        "not a gap-free prefix"
    );
    eprintln!(
        "stalled client had {} of {n} changes queued; slow socket test: {:?}",
        prefix.len(),
        started.elapsed()
    );
    gw.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_longer_than_the_socket_buffer_waits_for_room() {
    let started = Instant::now();
    let gw = Gateway::start(options(5000, 32)).await;
    const TOTAL: u64 = 1500;
    for n in 1..=TOTAL {
        gw.publish(&event(n, n as u32, "public.orders", 1, 256))
            .await;
    }
    gw.wait_delivered(TOTAL).await;
    let mut client =
        NodeClient::connect(&gw.url(), json!({"since": event_id(1).to_string()})).await;
    assert_eq!(
        ids(&client.changes((TOTAL - 1) as usize).await),
        expected_ids(2..=TOTAL)
    );
    gw.publish(&event(TOTAL + 1, 0, "public.orders", 1, 0))
        .await;
    assert_eq!(
        ids(&client.changes(1).await),
        expected_ids(TOTAL + 1..=TOTAL + 1)
    );
    assert_eq!(gw.hub.stats().snapshot().slow_disconnects, 0);
    gw.teardown().await;
    eprintln!("long replay: {:?}", started.elapsed());
}

/// After a nack the publisher republishes from the nacked change on, and
/// the changes after it may have reached the queue first: the nacked change
/// comes late, here even before the first change of the history. It must
/// reach every socket (a `since` cursor above it does not cover it: this
/// gateway never delivered it), once, and the republished rest must not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_republished_late_after_a_nack_reaches_every_socket_once() {
    let gw = Gateway::start(options(100, 4096)).await;
    let mut live = NodeClient::connect(&gw.url(), json!({})).await;
    gw.wait_sockets(1).await;
    // Changes 2 and 3 overtook the nacked change 1.
    for n in [2, 3] {
        gw.publish(&event(n, n as u32, "public.orders", 1, 0)).await;
    }
    assert_eq!(ids(&live.changes(2).await), expected_ids(2..=3));
    let mut since = NodeClient::connect(&gw.url(), json!({"since": event_id(2).to_string()})).await;
    assert_eq!(ids(&since.changes(1).await), expected_ids(3..=3));
    gw.wait_sockets(2).await;

    // The republish: 1, then 2 and 3 again; then a new change as marker.
    for n in [1, 2, 3, 4] {
        gw.publish(&event(n, n as u32, "public.orders", 1, 0)).await;
    }
    let expected = vec![event_id(1).to_string(), event_id(4).to_string()];
    assert_eq!(ids(&live.changes(2).await), expected, "live socket");
    assert_eq!(ids(&since.changes(2).await), expected, "since socket");
    let stats = gw.hub.stats().snapshot();
    assert_eq!((stats.delivered, stats.duplicates), (4, 2));

    // The history holds it in id order: a snapshot hand-off gets it.
    gw.set_history_start(1);
    let mut snapshot = NodeClient::connect(&gw.url(), json!({"snapshot": "1:1:"})).await;
    assert_eq!(ids(&snapshot.changes(4).await), expected_ids(1..=4));
    gw.teardown().await;
}
