//! The replay history across crashes and restarts, and the history start
//! of a fresh gateway: real RabbitMQ, real Postgres (5433 cluster), real
//! socket.io-client processes, and a gateway process that is SIGKILLed.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_util::sync::CancellationToken;
use walcast::fanout::{xid_precedes, Hub, HubOptions, Snapshot, LOG_FILE};

use crate::support;
use crate::support::sio::{
    event, event_id, unique_names, wait_until, Gateway, GatewayOptions, NodeClient, Publisher,
    TIMEOUT,
};

const CHILD_ENV: &str = "WALCAST_TEST_CHILD_GATEWAY";
const READY: &str = "WALCAST-CHILD-READY ";

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

fn hub_options(dir: &Path, replay_buffer: usize) -> HubOptions {
    HubOptions {
        replay_buffer,
        replay_dir: Some(dir.to_path_buf()),
        ..HubOptions::default()
    }
}

fn pg_url() -> String {
    std::env::var("WALCAST_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5433/postgres".into())
}

/// Not a test on its own: the gateway process that
/// `sigkill_mid_stream_then_since_gets_every_change_exactly_once` starts
/// (this test binary, run with [`CHILD_ENV`] set) and SIGKILLs. Without
/// the variable it does nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_gateway_process() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let spec: Value = serde_json::from_str(&spec).unwrap();
    let dir = PathBuf::from(spec["dir"].as_str().unwrap());
    let names = (
        spec["exchange"].as_str().unwrap().to_owned(),
        spec["queue"].as_str().unwrap().to_owned(),
    );
    let replay_buffer = spec["replay_buffer"].as_u64().unwrap() as usize;
    let gw = Gateway::start(GatewayOptions {
        hub: hub_options(&dir, replay_buffer),
        names: Some(names),
        exit_process_before_ack: spec["exit_before_ack"].as_u64(),
        ..GatewayOptions::default()
    })
    .await;
    println!("{READY}{}", gw.addr);
    std::future::pending::<()>().await;
}

/// Starts [`child_gateway_process`] in a new process; returns it and the
/// address its Socket.IO server listens on.
async fn spawn_child_gateway(
    dir: &Path,
    names: &(String, String),
    replay_buffer: usize,
    exit_before_ack: Option<u64>,
) -> (tokio::process::Child, std::net::SocketAddr) {
    let spec = json!({
        "dir": dir, "exchange": names.0, "queue": names.1, "replay_buffer": replay_buffer,
        "exit_before_ack": exit_before_ack,
    });
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            &support::test_path(module_path!(), "child_gateway_process"),
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, spec.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = tokio::time::timeout(TIMEOUT, async {
        loop {
            let line = lines
                .next_line()
                .await
                .unwrap()
                .expect("the child gateway exited before it was ready");
            // libtest may have printed "test child_gateway_process ... "
            // on the same line.
            if let Some((_, addr)) = line.split_once(READY) {
                return addr.trim().parse().unwrap();
            }
        }
    })
    .await
    .expect("the child gateway is ready");
    // Keep draining its stdout so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, addr)
}

/// How the gateway process dies.
#[derive(Debug, Clone, Copy)]
enum Crash {
    /// SIGKILL from outside once client A has this many changes.
    SigkillAfter(u64),
    /// The process exits right after handing this delivery to the hub,
    /// before acking it: logged, maybe emitted, redelivered after restart.
    ExitBeforeAck(u64),
}

/// Gateway process with a replay log; client A; the process dies while
/// changes keep being published; a gateway restarted on the same directory
/// and queue; client B with `since` = the 40th id gets 41.. exactly once,
/// then live changes.
async fn crash_and_restart(crash: Crash) {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let names = unique_names();
    const TOTAL: u64 = 300;
    const LIVE: u64 = 10;
    let exit_before_ack = match crash {
        Crash::ExitBeforeAck(n) => Some(n),
        Crash::SigkillAfter(_) => None,
    };
    let (mut child, addr) = spawn_child_gateway(dir.path(), &names, 1000, exit_before_ack).await;

    // A second gateway on the same directory is refused, clearly.
    let Err(err) = Hub::open(hub_options(dir.path(), 1000), CancellationToken::new()) else {
        panic!("a second gateway opened a replay_dir in use");
    };
    let message = err.to_string();
    assert!(
        message.contains("in use by another walcast process") && message.contains("replay_dir"),
        "{message}"
    );

    let mut a = NodeClient::connect(&format!("http://{addr}"), json!({})).await;
    let publisher = Publisher::connect(&names.0).await;
    // Changes keep coming while the gateway dies and until it is back.
    let publishing = tokio::spawn(async move {
        for n in 1..=TOTAL {
            publisher
                .publish(&event(n, n as u32, "public.orders", n as i64, 64))
                .await;
        }
        publisher
    });
    match crash {
        Crash::SigkillAfter(n) => {
            let first = a.changes(n as usize).await;
            assert_eq!(ids(&first), expected_ids(1..=n));
            child.kill().await.unwrap(); // no shutdown path runs
        }
        Crash::ExitBeforeAck(n) => {
            let status = tokio::time::timeout(TIMEOUT, child.wait())
                .await
                .expect("the gateway process exits at the fault")
                .unwrap();
            assert_eq!(status.code(), Some(137));
            // What A got before the crash is a gap-free prefix.
            let mut got = Vec::new();
            loop {
                let line = a.next().await;
                match line.kind() {
                    "change" => got.push(line.change_id()),
                    "disconnect" => break,
                    other => panic!("unexpected {other}: {line:?}"),
                }
            }
            assert!(got.len() as u64 <= n);
            assert_eq!(got, expected_ids(1..=got.len() as u64));
        }
    }
    let died_at = started.elapsed();
    drop(a);
    let publisher = publishing.await.unwrap();

    let gw = Gateway::start(GatewayOptions {
        hub: hub_options(dir.path(), 1000),
        names: Some(names.clone()),
        ..GatewayOptions::default()
    })
    .await;
    let mut b = NodeClient::connect(&gw.url(), json!({"since": event_id(40).to_string()})).await;
    assert_eq!(
        ids(&b.changes((TOTAL - 40) as usize).await),
        expected_ids(41..=TOTAL),
        "gap or duplicate across the crash"
    );
    for n in TOTAL + 1..=TOTAL + LIVE {
        publisher
            .publish(&event(n, n as u32, "public.orders", n as i64, 64))
            .await;
    }
    assert_eq!(
        ids(&b.changes(LIVE as usize).await),
        expected_ids(TOTAL + 1..=TOTAL + LIVE)
    );
    assert!(
        b.next_within(Duration::from_millis(300)).await.is_none(),
        "no duplicate follows"
    );
    let stats = gw.hub.stats().snapshot();
    if let Crash::ExitBeforeAck(_) = crash {
        // The change logged but not acked came back and was dropped.
        assert!(stats.duplicates >= 1, "{stats:?}");
    }
    eprintln!(
        "{crash:?}: died after {died_at:?}; restarted gateway dropped {} redelivered duplicates; total {:?}",
        stats.duplicates,
        started.elapsed()
    );
    gw.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_then_since_gets_every_change_exactly_once() {
    crash_and_restart(Crash::SigkillAfter(100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_log_and_ack_is_deduped_after_restart() {
    crash_and_restart(Crash::ExitBeforeAck(150)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_last_record_is_dropped_at_load_and_not_served() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let names = unique_names();
    let gw = Gateway::start(GatewayOptions {
        hub: hub_options(dir.path(), 1000),
        names: Some(names.clone()),
        ..GatewayOptions::default()
    })
    .await;
    for n in 1..=20u64 {
        gw.publish(&event(n, n as u32, "public.orders", 1, 0)).await;
    }
    gw.wait_delivered(20).await;
    gw.stop().await; // everything acked: nothing comes back from the broker

    // Cut the clean-close record and the end of change 20, as a write torn
    // by a crash would leave it.
    let path = dir.path().join(LOG_FILE);
    let len = std::fs::metadata(&path).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(len - 9 - 5).unwrap();
    drop(file);

    let gw = Gateway::start(GatewayOptions {
        hub: hub_options(dir.path(), 1000),
        names: Some(names),
        ..GatewayOptions::default()
    })
    .await;
    assert_eq!(gw.hub.latest_id(), Some(event_id(19)));
    let mut client =
        NodeClient::connect(&gw.url(), json!({"since": event_id(15).to_string()})).await;
    assert_eq!(ids(&client.changes(4).await), expected_ids(16..=19));
    gw.wait_sockets(1).await;
    gw.publish(&event(21, 21, "public.orders", 1, 0)).await;
    assert_eq!(ids(&client.changes(1).await), expected_ids(21..=21));
    gw.teardown().await;
    eprintln!("torn tail: {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_keeps_the_log_bounded_and_the_history_intact() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let names = unique_names();
    const BUFFER: usize = 50;
    const TOTAL: u64 = 10 * BUFFER as u64;
    let gw = Gateway::start(GatewayOptions {
        hub: hub_options(dir.path(), BUFFER),
        names: Some(names.clone()),
        ..GatewayOptions::default()
    })
    .await;
    let mut largest_body = 0;
    let mut largest_file = 0;
    for n in 1..=TOTAL {
        let body = gw
            .publish(&event(n, n as u32, "public.orders", n as i64, 32))
            .await;
        largest_body = largest_body.max(body.len() as u64);
        if n % 25 == 0 {
            gw.wait_delivered(n).await;
            largest_file = largest_file.max(gw.hub.replay_log_len().unwrap());
        }
    }
    // At most 2 x BUFFER + 1 change records (8-byte frame, kind, 12-byte
    // id, body) plus the header and horizons.
    let bound = (2 * BUFFER as u64 + 1) * (8 + 1 + 12 + largest_body) + 512;
    assert!(
        largest_file <= bound,
        "replay log grew to {largest_file} bytes, bound {bound}"
    );
    let mut client = NodeClient::connect(
        &gw.url(),
        json!({"since": event_id(TOTAL - 40).to_string()}),
    )
    .await;
    assert_eq!(
        ids(&client.changes(40).await),
        expected_ids(TOTAL - 39..=TOTAL)
    );
    gw.stop().await;

    let gw = Gateway::start(GatewayOptions {
        hub: hub_options(dir.path(), BUFFER),
        names: Some(names),
        ..GatewayOptions::default()
    })
    .await;
    let mut client = NodeClient::connect(
        &gw.url(),
        json!({"since": event_id(TOTAL - BUFFER as u64).to_string()}),
    )
    .await;
    assert_eq!(
        ids(&client.changes(BUFFER).await),
        expected_ids(TOTAL - BUFFER as u64 + 1..=TOTAL)
    );
    let mut old = NodeClient::connect(
        &gw.url(),
        json!({"since": event_id(TOTAL - BUFFER as u64 - 1).to_string()}),
    )
    .await;
    let line = old.next().await;
    assert_eq!(line.0["data"]["reason"], "since_too_old", "{line:?}");
    gw.teardown().await;
    eprintln!(
        "compaction: largest log {largest_file} bytes (bound {bound}); {:?}",
        started.elapsed()
    );
}

async fn current_snapshot(client: &tokio_postgres::Client) -> (String, Snapshot) {
    let text: String = client
        .query_one("SELECT pg_current_snapshot()::text", &[])
        .await
        .unwrap()
        .get(0);
    let snapshot = text.parse().unwrap();
    (text, snapshot)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_gateway_in_a_quiet_system_hands_off_snapshots_from_its_start() {
    let started = Instant::now();
    let pg: tokio_postgres::Config = pg_url().parse().unwrap();
    let (client, connection) = pg.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let (before, _) = current_snapshot(&client).await;
    // One committed transaction between that snapshot and the gateway's
    // start, so the start is strictly later.
    client
        .query_one("SELECT pg_current_xact_id()::text", &[])
        .await
        .unwrap();

    let gw = Gateway::start(GatewayOptions {
        history_start: Some(pg.clone()),
        ..GatewayOptions::default()
    })
    .await;
    let hub = gw.hub.clone();
    wait_until("the history start", TIMEOUT, || {
        hub.history_start().is_some()
    })
    .await;
    let start = gw.hub.history_start().unwrap();

    // A listing taken now. Transactions of other sessions on this cluster
    // may hold xmin back for a moment; the hand-off needs xmin >= start.
    let (after, after_snapshot) = support::eventually(TIMEOUT, || async {
        let (text, snapshot) = current_snapshot(&client).await;
        if xid_precedes(snapshot.xmin, start) {
            Err(format!("xmin {} below {start}", snapshot.xmin))
        } else {
            Ok((text, snapshot))
        }
    })
    .await;

    let mut late = NodeClient::connect(&gw.url(), json!({"snapshot": after})).await;
    let mut early = NodeClient::connect(&gw.url(), json!({"snapshot": before})).await;
    let line = early.next().await;
    assert_eq!(line.0["event"], "resync", "{line:?}");
    assert_eq!(
        line.0["data"],
        json!({"reason": "snapshot_too_old", "latest_id": null})
    );
    gw.wait_sockets(2).await;
    // A change the listing does not see is the first thing the late client
    // gets: no resync came before it.
    gw.publish(&event(1, after_snapshot.xmax, "public.orders", 1, 0))
        .await;
    assert_eq!(ids(&late.changes(1).await), expected_ids(1..=1));
    assert_eq!(ids(&early.changes(1).await), expected_ids(1..=1));
    assert_eq!(gw.hub.stats().snapshot().resyncs, 1);
    gw.teardown().await;
    eprintln!(
        "history start {start}, snapshots before {before:?} / after {after:?}: {:?}",
        started.elapsed()
    );
}

/// A gateway that is gone for good must not leave a queue behind that
/// piles up every event on the broker's disk: its queue carries
/// `x-expires` (`rabbitmq.queue_expires_ms`), so the broker deletes it once
/// it has had no consumer for that long. When the gateway comes back, it
/// sees the queue was recreated and restarts its (persisted) history, so a
/// client whose cursor is from before gets `resync`, not a silent gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_of_a_gateway_gone_for_good_expires_and_its_return_restarts_history() {
    let dir = tempfile::tempdir().unwrap();
    let names = unique_names();
    let expires = Duration::from_secs(10);
    let options = || GatewayOptions {
        hub: hub_options(dir.path(), 1000),
        names: Some(names.clone()),
        queue_expires_ms: Some(expires.as_millis() as u64),
        ..GatewayOptions::default()
    };
    let change = |n| event(n, 1000 + n as u32, "public.orders", 1, 0);

    let gw = Gateway::start(options()).await;
    let queue = gw.queue.clone();
    gw.publish(&change(1)).await;
    gw.wait_delivered(1).await;
    gw.stop().await;
    assert!(
        Gateway::queue_exists(&queue).await,
        "the queue outlives its gateway for x-expires"
    );
    // Published while the gateway is away: held in its queue, then lost
    // with it when the queue expires.
    let publisher = Publisher::connect(&names.0).await;
    publisher.publish(&change(2)).await;
    // Watched with rabbitmqctl: a passive declare would renew the lease.
    let away = Instant::now();
    support::poll(expires + TIMEOUT, || async {
        !broker_lists_queue(&queue).await
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "the queue of a gateway gone for {:?} still exists (x-expires {expires:?})",
            away.elapsed()
        )
    });
    eprintln!(
        "queue expired {:?} after its gateway stopped",
        away.elapsed()
    );

    let gw = Gateway::start(options()).await;
    gw.publish(&change(3)).await;
    gw.wait_delivered(1).await;
    let mut client =
        NodeClient::connect(&gw.url(), json!({"since": event_id(1).to_string()})).await;
    let line = client.next().await;
    assert_eq!(
        line.0["event"], "resync",
        "a cursor from before the lost queue gets resync: {line:?}"
    );
    client.close().await;
    publisher.delete(&queue).await;
    gw.teardown().await;
}

/// Whether the (local, shared) broker lists `queue`, asked through
/// rabbitmqctl, which unlike a passive declare does not count as a use.
async fn broker_lists_queue(queue: &str) -> bool {
    let out = tokio::process::Command::new("rabbitmqctl")
        .args(["-q", "list_queues", "name"])
        .output()
        .await
        .expect("rabbitmqctl runs");
    assert!(
        out.status.success(),
        "rabbitmqctl list_queues: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|line| line.trim() == queue)
}
