//! A gateway whose queue and replay log outlive a switch of its database to
//! a fresh cluster (issue 9): real `walcast run` processes (capture and
//! gateway), two real PostgreSQL clusters with different system
//! identifiers (the shared one and walcast_fault), real RabbitMQ, real
//! socket.io-client processes.

use std::time::Duration;

use serde_json::{json, Value};
use walcast::event::{EventId, Lsn};

use crate::support::pgtest::TestDb;
use crate::support::sio::NodeClient;
use crate::support::stack::{unique, RunSpec, Walcast};
use crate::support::{sio, stack};

const TIMEOUT: Duration = Duration::from_secs(60);

fn fault_url() -> String {
    std::env::var("WALCAST_TEST_PG_FAULT_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5434/postgres".into())
}

async fn wal_position(db: &TestDb) -> Lsn {
    db.psql("SELECT pg_current_wal_lsn()")
        .await
        .trim()
        .parse()
        .unwrap()
}

async fn insert_rows(db: &TestDb, rows: usize) {
    let client = db.client().await;
    for n in 0..rows {
        client
            .batch_execute(&format!(
                "INSERT INTO orders (customer_name, product_name) VALUES ('c{n}', 'p{n}')"
            ))
            .await
            .unwrap();
    }
}

/// The next `n` insert events on `client`; any other line fails the test.
async fn inserts(client: &mut NodeClient, n: usize, walcast: &Walcast) -> Vec<Value> {
    let mut out = Vec::new();
    while out.len() < n {
        let Some(line) = client.next_within(TIMEOUT).await else {
            panic!(
                "{} of {n} changes within {TIMEOUT:?}; walcast log:\n{}",
                out.len(),
                stack::log_tail(&walcast.log())
            );
        };
        assert_eq!(line.kind(), "change", "{:?}", line.0);
        let event: Value = serde_json::from_str(line.raw()).unwrap();
        assert_eq!(event["op"], "insert", "{event}");
        out.push(event);
    }
    out
}

async fn metric(walcast: &Walcast, name: &str) -> String {
    let text = reqwest::get(format!("{}/metrics", walcast.url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(name))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gateway_moved_to_a_fresh_cluster_resyncs_then_delivers_every_change() {
    let a = TestDb::create("srcswitch").await;
    let b = TestDb::create_on(&fault_url(), "srcswitch").await;
    // The database "restored onto a new cluster" is the one whose WAL is
    // behind: its ids are lower than the old history's horizon.
    let (old, new) = if wal_position(&a).await >= wal_position(&b).await {
        (a, b)
    } else {
        (b, a)
    };
    let replay = tempfile::tempdir().unwrap();
    let spec = RunSpec {
        amqp_url: stack::shared_amqp_url(),
        exchange: unique("srcswitch"),
        queue: unique("srcswitch.gw"),
        roles: "capture,gateway",
        replay_dir: Some(replay.path().to_str().unwrap().to_owned()),
    };
    let dead_letter = sio::dead_letter_name(&spec.queue);
    let env = [
        ("WALCAST_FANOUT_REPLAY_BUFFER", "4"),
        ("WALCAST_RABBITMQ_DEAD_LETTER", dead_letter.as_str()),
    ];

    let walcast = Walcast::start_with_env(&old, &spec, &env).await;
    walcast.wait_ready().await;
    let mut client = NodeClient::connect(&walcast.url(), json!({})).await;
    insert_rows(&old, 8).await;
    let before = inserts(&mut client, 8, &walcast).await;
    let last_old: EventId = before[7]["id"].as_str().unwrap().parse().unwrap();
    client.close().await;
    walcast.stop().await;

    // The same gateway queue and replay log, now fed from the new cluster.
    let walcast = Walcast::start_with_env(&new, &spec, &env).await;
    walcast.wait_ready().await;
    let mut live =
        NodeClient::connect(&walcast.url(), json!({"since": last_old.to_string()})).await;
    insert_rows(&new, 5).await;
    let line = live.next_within(TIMEOUT).await.expect("a resync");
    assert_eq!(line.0["event"], "resync", "{:?}", line.0);
    assert_eq!(line.0["data"]["reason"], "source_changed", "{:?}", line.0);
    let after = inserts(&mut live, 5, &walcast).await;
    let first_new: EventId = after[0]["id"].as_str().unwrap().parse().unwrap();
    assert!(
        first_new < last_old,
        "precondition: the new cluster's ids ({first_new}) are below the old history ({last_old})"
    );

    // A client coming back later with its old cursor is told to reload.
    let mut late = NodeClient::connect(&walcast.url(), json!({"since": before[5]["id"]})).await;
    let line = late.next_within(TIMEOUT).await.expect("a resync");
    assert_eq!(line.0["data"]["reason"], "source_changed", "{:?}", line.0);
    assert_eq!(line.0["data"]["latest_id"], after[4]["id"], "{:?}", line.0);
    insert_rows(&new, 1).await;
    assert_eq!(inserts(&mut live, 1, &walcast).await.len(), 1);
    assert_eq!(inserts(&mut late, 1, &walcast).await.len(), 1);

    assert_eq!(
        metric(&walcast, "walcast_fanout_source_changes_total ").await,
        "walcast_fanout_source_changes_total 1"
    );
    let dead = metric(&walcast, "walcast_consumer_dead_letters_total{").await;
    assert!(
        dead.lines().all(|l| l.ends_with(" 0")),
        "the capture's messages carry their source: {dead}"
    );
    live.close().await;
    late.close().await;
    walcast.stop().await;
    // The gateway queue, its dead letters and the exchange.
    sio::Publisher::connect(&spec.exchange)
        .await
        .delete(&spec.queue)
        .await;
}
