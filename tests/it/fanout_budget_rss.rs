//! A client that connects with an old `since` while the gateway holds a
//! large history, and then never reads, is cut off at its byte budget
//! (`fanout.socket_buffer_bytes`, 8 MiB by default), and the gateway's
//! memory stays bounded; another client keeps receiving. In a process of
//! its own, so the RSS it reads is this gateway's alone.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use walcast::fanout::HubOptions;

use crate::support;
use crate::support::sio::{event, event_id, rss_kib, Gateway, GatewayOptions, NodeClient};

/// Events held before the client connects, each with this much padding:
/// 600 x 64 KiB, about 38 MiB of replay.
const HELD: u64 = 600;
const PADDING: usize = 64 * 1024;

/// The default byte budget.
const BUDGET_KIB: u64 = 8 * 1024;

/// A raw Socket.IO client over a small receive buffer that connects with
/// `since` and then reads nothing more.
async fn never_reading_client(
    addr: std::net::SocketAddr,
    since: &str,
) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    let url = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket");
    let (mut ws, _) = tokio_tungstenite::client_async(url, stream).await.unwrap();
    let open = ws.next().await.unwrap().unwrap();
    assert!(open.to_text().unwrap().starts_with('0'), "{open:?}");
    let connect = format!("40{}", json!({ "since": since }));
    ws.send(Message::text(connect)).await.unwrap();
    ws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_cut_at_its_byte_budget_and_rss_stays_bounded() {
    let _heavy = support::heavy().await;
    if !support::in_own_process(
        module_path!(),
        "a_client_that_never_reads_is_cut_at_its_byte_budget_and_rss_stays_bounded",
    ) {
        return;
    }
    let gw = Gateway::start(GatewayOptions {
        hub: HubOptions {
            replay_buffer: 10_000,
            // The heartbeat must not be what cuts the client off.
            ping_interval: Duration::from_secs(120),
            ping_timeout: Duration::from_secs(120),
            ..HubOptions::default()
        },
        ..GatewayOptions::default()
    })
    .await;
    for n in 1..=HELD {
        gw.publish(&event(n, n as u32, "public.orders", n as i64, PADDING))
            .await;
    }
    gw.wait_delivered(HELD).await;

    let mut other = NodeClient::connect(&gw.url(), json!({})).await;
    gw.wait_sockets(1).await;
    let stats = gw.hub.stats();
    let baseline = rss_kib();

    let stuck = never_reading_client(gw.addr, &event_id(1).to_string()).await;
    // Cut off once its queue passes the budget. The old code queued the
    // whole replay instead and never cut it (the heartbeat is 4 minutes).
    // (Asserted below, with the numbers.)
    let _ = support::poll(Duration::from_secs(30), || async {
        stats.snapshot().slow_disconnects > 0
    })
    .await;
    let cut = stats.snapshot().slow_disconnects;
    // Let whatever the gateway would still queue land before measuring.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let grown = rss_kib().saturating_sub(baseline);
    eprintln!(
        "never-reading client: cut {cut}, RSS {baseline} KiB -> +{grown} KiB \
         (replay held: {} KiB, budget {BUDGET_KIB} KiB)",
        HELD * PADDING as u64 / 1024
    );
    assert_eq!(cut, 1, "the never-reading client was not cut off");
    gw.wait_sockets(1).await;
    // The budget, plus as much again for allocator slack and the
    // serializing of packets; the old code grew by the whole replay.
    assert!(
        grown < 2 * BUDGET_KIB,
        "RSS grew by {grown} KiB for one client that does not read"
    );

    // The other client is unaffected.
    let body = gw
        .publish(&event(HELD + 1, 9, "public.orders", 1, 16))
        .await;
    let got = other.changes(1).await;
    assert_eq!(got[0].as_bytes(), body.as_slice());
    drop(stuck);
    other.close().await;
    gw.teardown().await;
}
