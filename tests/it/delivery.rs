//! No change lost, whatever crashes: `walcast run` under a steady write
//! load while walcast is killed, RabbitMQ is killed (SIGKILL) and
//! restarted, Postgres restarts, or the connection to RabbitMQ is cut.
//! Every committed change must reach RabbitMQ (an audit queue bound to the
//! exchange), and a browser that reconnects with `since` must end up with
//! every change exactly once.
//!
//! Real PostgreSQL, real RabbitMQ (a node of the test's own where the test
//! restarts it, a proxy of its own where it cuts), real socket.io-client.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::pgtest::TestDb;
use crate::support::sio::NodeClient;
use crate::support::stack::{order_ids, spawn_writer, unique, Audit, RunSpec, Walcast};
use crate::support::{self, pgtest, rabbit_node, stack, tcp_proxy};

/// 2,000 transactions of 10 rows: 20,000 changes.
const TRANSACTIONS: usize = 2_000;
const ROWS: usize = 10;
const CATCH_UP: Duration = Duration::from_secs(180);

/// What a browser saw, across its reconnects.
#[derive(Default)]
struct Browser {
    ids: Vec<String>,
    rows: BTreeSet<i64>,
    resyncs: Vec<Value>,
}

impl Browser {
    fn last_id(&self) -> Option<&str> {
        self.ids.last().map(String::as_str)
    }

    /// Reads `client` until `enough` holds or it disconnects; returns false
    /// on disconnect.
    async fn read(
        &mut self,
        client: &mut NodeClient,
        timeout: Duration,
        walcast: &Walcast,
        enough: impl Fn(&Browser) -> bool,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while !enough(self) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(line) = client.next_within(left).await else {
                panic!(
                    "browser stalled: {} changes, {} rows, resyncs {:?}; walcast log:\n{}",
                    self.ids.len(),
                    self.rows.len(),
                    self.resyncs,
                    stack::log_tail(&walcast.log())
                );
            };
            match line.kind() {
                "change" => {
                    let event: Value = serde_json::from_str(line.raw()).unwrap();
                    self.ids.push(event["id"].as_str().unwrap().to_owned());
                    if event["op"] == "insert" {
                        self.rows.insert(event["new"]["id"].as_i64().unwrap());
                    }
                }
                "event" if line.0["event"] == "resync" => self.resyncs.push(line.0.clone()),
                "disconnect" => return false,
                other => panic!("unexpected line {other}: {:?}", line.0),
            }
        }
        true
    }

    fn assert_exactly_once(&self, expected: &BTreeSet<i64>) {
        assert!(self.resyncs.is_empty(), "resync: {:?}", self.resyncs);
        let distinct: BTreeSet<&String> = self.ids.iter().collect();
        assert_eq!(
            distinct.len(),
            self.ids.len(),
            "a browser saw an event twice"
        );
        assert_eq!(&self.rows, expected, "a browser missed changes");
        let mut sorted = self.ids.clone();
        sorted.sort();
        assert_eq!(sorted, self.ids, "events out of commit order");
    }
}

enum Fault<'a> {
    KillWalcast,
    CrashBroker(&'a rabbit_node::RabbitNode),
    RestartPostgres,
    CutBroker(&'a tcp_proxy::TcpProxy),
}

async fn scenario(db: TestDb, amqp_url: String, fault: Fault<'_>) {
    let exchange = unique("exchange");
    let audit_queue = unique("audit");
    let spec = RunSpec {
        amqp_url: amqp_url.clone(),
        exchange: exchange.clone(),
        queue: unique("gateway"),
        roles: "capture,gateway,api",
        replay_dir: Some(
            tempfile::tempdir()
                .unwrap()
                .keep()
                .join("replay")
                .display()
                .to_string(),
        ),
    };
    let audit = Audit::start(&amqp_url, &exchange, &audit_queue).await;
    let mut walcast = Walcast::start(&db, &spec).await;
    let mut browser = Browser::default();
    let mut client = NodeClient::connect(&walcast.url(), json!({})).await;
    let writer = spawn_writer(db.url.clone(), TRANSACTIONS, ROWS, Duration::from_millis(2));

    // Mid-stream: a quarter of the changes are through.
    let quarter = TRANSACTIONS * ROWS / 4;
    assert!(
        browser
            .read(&mut client, CATCH_UP, &walcast, |b| b.rows.len() >= quarter)
            .await
    );
    match fault {
        Fault::KillWalcast => {
            let log = walcast.kill().await;
            assert!(!log.contains("panicked"), "{log}");
            // The browser's connection went with the process.
            assert!(
                !browser
                    .read(&mut client, CATCH_UP, &walcast, |_| false)
                    .await
            );
            walcast = Walcast::start(&db, &spec).await;
        }
        Fault::CrashBroker(node) => {
            // A crash, not a clean stop: what the broker confirmed must
            // come back from its disk.
            tokio::task::block_in_place(|| node.kill());
            tokio::time::sleep(Duration::from_secs(5)).await;
            tokio::task::block_in_place(|| node.restart());
        }
        Fault::RestartPostgres => {
            pgtest::restart_fault_cluster().await;
        }
        Fault::CutBroker(proxy) => {
            proxy.cut_for(Duration::from_secs(10));
            support::eventually(Duration::from_secs(30), || async { !proxy.is_cut() }).await;
        }
    }

    // A browser that reconnects with `since` gets the rest exactly once.
    let since = browser
        .last_id()
        .expect("events before the fault")
        .to_owned();
    drop(client);
    let mut client = NodeClient::connect(&walcast.url(), json!({ "since": since })).await;

    writer.await.unwrap();
    let expected = order_ids(&db).await;
    assert!(expected.len() >= TRANSACTIONS * ROWS);
    audit.wait_inserted(&expected, CATCH_UP, &walcast).await;
    let connected = browser
        .read(&mut client, CATCH_UP, &walcast, |b| {
            b.rows.is_superset(&expected)
        })
        .await;
    assert!(
        connected,
        "the browser was disconnected; log:\n{}",
        walcast.log()
    );
    // Nothing more is due: a short quiet period finds no repeat.
    if let Some(line) = client.next_within(Duration::from_millis(500)).await {
        panic!("unexpected extra line after catching up: {:?}", line.0);
    }
    browser.assert_exactly_once(&expected);
    eprintln!(
        "{} changes, {} routed to the audit queue (with repeats folded)",
        browser.ids.len(),
        audit.count()
    );
    let log = walcast.stop().await;
    assert!(!log.contains("panicked"), "{log}");
    audit.delete(&amqp_url, &audit_queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_walcast_mid_stream_loses_nothing() {
    let _heavy = support::heavy().await;
    let db = TestDb::create("deliver_kill").await;
    scenario(db, stack::shared_amqp_url(), Fault::KillWalcast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rabbitmq_crash_mid_stream_loses_nothing() {
    let _heavy = support::heavy().await;
    let node = tokio::task::spawn_blocking(|| rabbit_node::RabbitNode::start("deliver"))
        .await
        .unwrap();
    let db = TestDb::create("deliver_mq").await;
    let url = node.url();
    scenario(db, url, Fault::CrashBroker(&node)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_restart_mid_stream_loses_nothing() {
    let _heavy = support::heavy().await;
    let _fault_cluster = pgtest::lock_fault_cluster().await;
    let db = TestDb::create_on(&pgtest::fault_cluster_url(), "deliver_pg").await;
    scenario(db, stack::shared_amqp_url(), Fault::RestartPostgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rabbitmq_connection_cut_for_ten_seconds_loses_nothing() {
    let _heavy = support::heavy().await;
    let upstream = amqp_socket_addr(&stack::shared_amqp_url());
    let proxy = tcp_proxy::TcpProxy::start(upstream).await;
    let url = format!("amqp://guest:guest@127.0.0.1:{}/%2f", proxy.port());
    let db = TestDb::create("deliver_cut").await;
    scenario(db, url, Fault::CutBroker(&proxy)).await;
}

/// SIGTERM under load: walcast drains (every published change confirmed,
/// a last status update to Postgres) and exits 0 in bounded time; the
/// position it logs as final is the slot's `confirmed_flush_lsn`; the
/// browser sees the server close its connection; a restarted walcast
/// delivers the rest, so the audit queue ends up complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_under_load_drains_and_exits_cleanly() {
    let _heavy = support::heavy().await;
    let db = TestDb::create("deliver_term").await;
    let amqp_url = stack::shared_amqp_url();
    let exchange = unique("exchange");
    let audit_queue = unique("audit");
    let audit = Audit::start(&amqp_url, &exchange, &audit_queue).await;
    let spec = RunSpec {
        amqp_url: amqp_url.clone(),
        exchange: exchange.clone(),
        queue: unique("gateway"),
        roles: "capture,gateway,api",
        replay_dir: None,
    };
    let mut walcast = Walcast::start(&db, &spec).await;
    walcast.wait_ready().await;
    let mut client = NodeClient::connect(&walcast.url(), json!({})).await;
    let writer = spawn_writer(db.url.clone(), TRANSACTIONS, ROWS, Duration::from_millis(2));
    let mut browser = Browser::default();
    let quarter = TRANSACTIONS * ROWS / 4;
    assert!(
        browser
            .read(&mut client, CATCH_UP, &walcast, |b| b.rows.len() >= quarter)
            .await
    );

    let signalled = tokio::time::Instant::now();
    // The drain waits for confirms from a healthy broker: seconds, not the
    // 30 s drain timeout; the bound leaves room for a loaded machine.
    let status = walcast.stop_within("TERM", Duration::from_secs(45)).await;
    eprintln!("walcast exited {:?} after SIGTERM", signalled.elapsed());
    let log = walcast.log();
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        stack::log_tail(&log)
    );
    assert!(!log.contains("panicked"), "{log}");
    assert!(
        !writer.is_finished(),
        "the load ended before the stop; the test did not stop walcast mid-load"
    );

    // What walcast logged as its final flushed position is what the slot
    // holds: nothing it confirmed is left unreported, nothing is claimed
    // that was not confirmed.
    let final_line = log
        .lines()
        .find(|l| l.contains("final flushed position"))
        .unwrap_or_else(|| {
            panic!(
                "no final flushed position in the log:\n{}",
                stack::log_tail(&log)
            )
        });
    let flushed = final_line
        .split_whitespace()
        .find_map(|field| field.strip_prefix("flushed="))
        .unwrap_or_else(|| panic!("no flushed= field in {final_line:?}"))
        .trim_matches('"')
        .to_owned();
    let slot_lsn: String = db
        .client()
        .await
        .query_one(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&db.slot],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(flushed, slot_lsn, "final flushed position vs the slot");

    // The browser saw the server close its connection, not a broken pipe.
    let disconnect = loop {
        let line = client
            .next_within(Duration::from_secs(30))
            .await
            .expect("the browser saw no disconnect");
        if line.kind() == "disconnect" {
            break line;
        }
        assert_eq!(line.kind(), "change", "{:?}", line.0);
    };
    assert_eq!(
        disconnect.0["reason"], "io server disconnect",
        "{:?}",
        disconnect.0
    );

    // Restarted, walcast carries on from the slot: nothing is lost.
    let walcast = Walcast::start(&db, &spec).await;
    writer.await.unwrap();
    let expected = order_ids(&db).await;
    assert!(expected.len() >= TRANSACTIONS * ROWS);
    audit.wait_inserted(&expected, CATCH_UP, &walcast).await;
    let log = walcast.stop().await;
    assert!(!log.contains("panicked"), "{log}");
    audit.delete(&amqp_url, &audit_queue).await;
}

/// Two capture processes on one slot: the second waits as hot standby and
/// takes over when the first is killed under load; nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn standby_capture_takes_over_when_the_active_one_dies() {
    let _heavy = support::heavy().await;
    let db = TestDb::create("deliver_standby").await;
    let amqp_url = stack::shared_amqp_url();
    let exchange = unique("exchange");
    let audit_queue = unique("audit");
    let audit = Audit::start(&amqp_url, &exchange, &audit_queue).await;
    let spec = RunSpec {
        amqp_url: amqp_url.clone(),
        exchange: exchange.clone(),
        queue: unique("unused"),
        roles: "capture",
        replay_dir: None,
    };
    let mut active = Walcast::start(&db, &spec).await;
    active.wait_for_log("holding the slot lease").await;
    let standby = Walcast::start(&db, &spec).await;
    standby.wait_for_log("hot standby").await;

    let writer = spawn_writer(db.url.clone(), TRANSACTIONS, ROWS, Duration::from_millis(2));
    support::eventually(CATCH_UP, || async {
        match audit.inserted.lock().unwrap().len() {
            n if n >= TRANSACTIONS * ROWS / 4 => Ok(()),
            n => Err(format!("{n} changes routed: too little progress")),
        }
    })
    .await;
    let killed_at = tokio::time::Instant::now();
    active.kill().await;
    standby.wait_for_log("holding the slot lease").await;
    let takeover = killed_at.elapsed();
    eprintln!("standby took the lease {takeover:?} after the kill");
    // The standby polls the lock every second and Postgres frees it as soon
    // as the killed process's session ends (measured: about 1 s); 5 s leaves
    // room for a loaded machine.
    assert!(takeover < Duration::from_secs(5), "{takeover:?}");

    writer.await.unwrap();
    let expected = order_ids(&db).await;
    audit.wait_inserted(&expected, CATCH_UP, &standby).await;
    let log = standby.stop().await;
    assert!(!log.contains("panicked"), "{log}");
    audit.delete(&amqp_url, &audit_queue).await;
}

fn amqp_socket_addr(url: &str) -> std::net::SocketAddr {
    let rest = url.split("://").nth(1).unwrap();
    let host_port = rest
        .split('@')
        .next_back()
        .unwrap()
        .split('/')
        .next()
        .unwrap();
    let host_port = if host_port.contains(':') {
        host_port.to_owned()
    } else {
        format!("{host_port}:5672")
    };
    let host_port = host_port.replace("localhost", "127.0.0.1");
    host_port.parse().expect("a host:port in the AMQP URL")
}
