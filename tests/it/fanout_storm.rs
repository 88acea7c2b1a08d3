//! Connect storm: two rounds of 10,000 Socket.IO connections opened and
//! closed against one gateway, some leaving abruptly or abusively.
//! In a process of its own, so the RSS it reads is this gateway's.

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::support;
use crate::support::sio::{
    event, event_id, rss_kib, spawn_node, Gateway, GatewayOptions, NodeClient, TIMEOUT,
};

async fn node_result(
    child: &mut tokio::process::Child,
    kind: &str,
    timeout: Duration,
) -> serde_json::Value {
    let stdout = child.stdout.as_mut().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(timeout, lines.next_line())
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {kind}"))
        .unwrap()
        .expect("node printed a result");
    let value: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(value["t"], kind, "{value}");
    value
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_storm_leaves_no_sockets_behind() {
    let _heavy = support::heavy().await;
    if !support::in_own_process(module_path!(), "connect_storm_leaves_no_sockets_behind") {
        return;
    }
    let gw = Gateway::start(GatewayOptions::default()).await;
    let stats = gw.hub.stats();
    // Warm up allocator pools and lazily built state with one client.
    let warm = NodeClient::connect(&gw.url(), json!({})).await;
    gw.wait_sockets(1).await;
    warm.close().await;
    gw.wait_sockets(0).await;
    let baseline = rss_kib();

    // Idle cost: hold 1,000 sockets open.
    const HELD: u64 = 1000;
    let mut hold =
        spawn_node(json!({"mode": "hold", "url": gw.url(), "total": HELD, "concurrency": 100}));
    let held = node_result(&mut hold, "held", Duration::from_secs(120)).await;
    assert_eq!(held["ok"], HELD, "{held}");
    gw.wait_sockets(HELD).await;
    let with_held = rss_kib();
    drop(hold.stdin.take()); // release them
    gw.wait_sockets(0).await;
    hold.wait().await.unwrap();
    let per_socket = (with_held.saturating_sub(baseline)) as f64 / HELD as f64;

    // The storm, twice: 10,000 connections each, a quarter of them leaving
    // cleanly, a quarter subscribing to a row and then dropping the TCP
    // connection without a goodbye, a quarter sending an unknown event and
    // a malformed subscribe first, a quarter dropping the connection at
    // once. The first round may grow the allocator's pools; a second round
    // that grows RSS again is state left behind per socket: a leak.
    const TOTAL: u64 = 10_000;
    let mut rss_after = Vec::new();
    let mut rounds = Vec::new();
    for round in 1..=2 {
        let started = Instant::now();
        let mut storm = spawn_node(json!({
            "mode": "storm", "url": gw.url(), "total": TOTAL, "concurrency": 50, "mix": true
        }));
        let result = node_result(&mut storm, "storm", Duration::from_secs(300)).await;
        storm.wait().await.unwrap();
        let storm_time = started.elapsed();
        assert_eq!(result["ok"], TOTAL, "round {round}: {result}");
        assert_eq!(result["failed"], 0, "round {round}: {result}");
        assert_eq!(result["stuck"], 0, "round {round}: {result}");
        assert_eq!(
            result["refused"],
            TOTAL / 4,
            "round {round}: every malformed subscribe is answered ok:false: {result}"
        );
        let drained = Instant::now();
        gw.wait_sockets(0).await;
        rounds.push((storm_time, drained.elapsed()));
        rss_after.push(rss_kib());
    }
    let (after_first, after_second) = (rss_after[0], rss_after[1]);

    // Still serving: a fresh client gets a change.
    let mut fresh = NodeClient::connect(&gw.url(), json!({})).await;
    gw.wait_sockets(1).await;
    gw.publish(&event(1, 1, "public.orders", 1, 0)).await;
    let got = fresh.changes(1).await;
    assert!(got[0].contains(&event_id(1).to_string()));

    eprintln!(
        "rss baseline {baseline} KiB; {HELD} idle sockets {with_held} KiB (~{per_socket:.1} KiB/socket); \
         storm rounds of {TOTAL} mixed connections (time, sockets back to 0 after) {rounds:?}; \
         rss after round 1 {after_first} KiB (+{} KiB), after round 2 {after_second} KiB (+{} KiB); stats {:?}",
        after_first as i64 - baseline as i64,
        after_second as i64 - after_first as i64,
        stats.snapshot()
    );
    // Generous: the allocator keeps freed pages, but 10k sockets' worth of
    // state must not stay behind (that would be >> 64 MiB).
    assert!(
        after_first < baseline + 64 * 1024,
        "rss grew from {baseline} KiB to {after_first} KiB"
    );
    // The leak signal: 10,000 more sockets, and the pools are warm. Even a
    // few hundred bytes left per socket would show (10,000 × 800 B).
    assert!(
        after_second < after_first + 8 * 1024,
        "rss grew again in the second round: {after_first} KiB -> {after_second} KiB"
    );
    fresh.close().await;
    gw.teardown().await;
    let _ = TIMEOUT;
}
