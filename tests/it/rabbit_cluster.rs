//! A real three-node RabbitMQ cluster (the test's own), the capture and a
//! gateway on a quorum queue as separate `walcast run` processes, and a
//! Socket.IO client. Under a load of psql inserts, the node that leads the
//! gateway's quorum queue is killed (`kill -9` of its Erlang VM). walcast
//! lists every node in `rabbitmq.url` and fails over to the next one. Then:
//! every change reached the client, none twice on that connection, and the
//! queue ends empty.
//!
//! Real PostgreSQL, real RabbitMQ nodes, real socket.io-client.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support;
use crate::support::pgtest::TestDb;
use crate::support::rabbit_cluster::RabbitCluster;
use crate::support::sio::NodeClient;
use crate::support::stack;
use crate::support::stack::{order_ids, spawn_writer, unique, RunSpec, Walcast};

/// 300 transactions of 10 rows: 3,000 changes, over about ten seconds, so
/// that the kill falls in the middle of the load.
const TRANSACTIONS: usize = 300;
const ROWS: usize = 10;
const CATCH_UP: Duration = Duration::from_secs(90);

/// What the client saw: event ids in order of arrival, inserted row ids.
#[derive(Default)]
struct Seen {
    ids: Vec<String>,
    rows: BTreeSet<i64>,
}

impl Seen {
    /// Reads `client` until `enough` holds; fails on a stall, a
    /// disconnect or a resync.
    async fn read(
        &mut self,
        client: &mut NodeClient,
        gateway: &Walcast,
        capture: &Walcast,
        enough: impl Fn(&Seen) -> bool,
    ) {
        let deadline = tokio::time::Instant::now() + CATCH_UP;
        while !enough(self) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(line) = client.next_within(left).await else {
                panic!(
                    "client stalled at {} changes; gateway log:\n{}\ncapture log:\n{}",
                    self.ids.len(),
                    stack::log_tail(&gateway.log()),
                    stack::log_tail(&capture.log())
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
                other => panic!("unexpected {other}: {:?}", line.0),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_quorum_queue_leader_under_load_loses_and_doubles_nothing() {
    // Three RabbitMQ nodes and a steady load.
    let _heavy = support::heavy().await;
    let cluster = tokio::task::block_in_place(|| RabbitCluster::start("cluster"));
    let db = TestDb::create("rabbit_cluster").await;
    let urls = cluster.urls().join(",");
    let exchange = unique("exchange");
    let queue = unique("gateway");
    let spec = |roles| RunSpec {
        amqp_url: urls.clone(),
        exchange: exchange.clone(),
        queue: queue.clone(),
        roles,
        replay_dir: None,
    };
    let quorum = [("WALCAST_RABBITMQ_QUEUE_TYPE", "quorum")];
    let gateway = Walcast::start_with_env(&db, &spec("gateway"), &quorum).await;
    gateway.wait_ready().await;
    let capture = Walcast::start(&db, &spec("capture")).await;
    capture.wait_ready().await;
    let info = cluster.queue_info(&queue);
    assert_eq!(info["type"], "quorum", "{info}");
    assert_eq!(info["members"].as_array().map(Vec::len), Some(3), "{info}");

    let mut client = NodeClient::connect(&gateway.url(), json!({})).await;
    let writer = spawn_writer(
        db.url.clone(),
        TRANSACTIONS,
        ROWS,
        Duration::from_millis(10),
    );
    let mut seen = Seen::default();
    let quarter = TRANSACTIONS * ROWS / 4;
    seen.read(&mut client, &gateway, &capture, |s| s.rows.len() >= quarter)
        .await;

    // Mid-load: a crash of the leader's VM, no clean shutdown. walcast's
    // connections went to the first URL; when that is the leader, both
    // fail over to the next node.
    let leader = cluster.leader_of(&queue);
    // Changes are still being committed: the capture must publish and the
    // gateway consume after the kill, not merely drain what came before.
    assert!(!writer.is_finished(), "the load ended before the kill");
    eprintln!(
        "killing {} (leader of {queue}) after {} changes",
        cluster.nodes[leader].name,
        seen.ids.len()
    );
    tokio::task::block_in_place(|| cluster.nodes[leader].kill());

    writer.await.unwrap();
    let expected = order_ids(&db).await;
    assert!(expected.len() >= TRANSACTIONS * ROWS);
    seen.read(&mut client, &gateway, &capture, |s| {
        s.rows.is_superset(&expected)
    })
    .await;
    // Nothing more is due: a short quiet period finds no repeat.
    if let Some(line) = client.next_within(Duration::from_millis(500)).await {
        panic!("unexpected extra line after catching up: {:?}", line.0);
    }
    let distinct: BTreeSet<&String> = seen.ids.iter().collect();
    assert_eq!(distinct.len(), seen.ids.len(), "a change arrived twice");
    assert_eq!(seen.rows, expected, "changes missing");

    // Everything delivered was acked: the queue ends empty.
    let new_leader = cluster.leader_of(&queue);
    assert_ne!(new_leader, leader);
    support::eventually(Duration::from_secs(30), || async {
        let info = cluster.queue_info(&queue);
        if info["messages"] == 0 {
            Ok(())
        } else {
            Err(format!("queue not drained: {info}"))
        }
    })
    .await;
    eprintln!(
        "{} changes, leader moved from {} to {}",
        seen.ids.len(),
        cluster.nodes[leader].name,
        cluster.nodes[new_leader].name
    );
    for process in [gateway, capture] {
        let log = process.stop().await;
        assert!(!log.contains("panicked"), "{log}");
    }
}
