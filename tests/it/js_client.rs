//! walcast-client (clients/js) and the `ready` signal against the real
//! `walcast` binary (`run`, every role), real PostgreSQL and RabbitMQ, in
//! Node with real socket.io-client:
//!
//! - `ready` comes after every replayed change and before every live one,
//!   for a plain connect, a `since` cursor and a listing's `snapshot`
//!   (tests/js/sio-client.mjs, the raw protocol).
//! - A feed (`walcast.orders`, tests/js/feed-client.mjs) that loads and
//!   connects while psql inserts, updates and deletes ends with exactly the
//!   table's rows; again after walcast restarts with its history on disk
//!   (`fanout.replay_dir`: no resync), without it (`resync`), and with a
//!   replay buffer too small for what happened while it was down (a forced
//!   `resync`, `since_too_old`).
//! - The Python example (examples/python) does the same hand-off.
//! - The Node client the tests drive prints every line before it exits,
//!   however slowly the test reads it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::{Connection, ConnectionProperties};
use serde_json::{json, Value};

use crate::support::pgtest::TestDb;
use crate::support::sio::{ensure_node_modules, spawn_node, NodeClient};
use crate::support::stack::{log_tail, shared_amqp_url, unique, RunSpec, Walcast};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

/// Bound on catching up with the table after the writes stop.
const CONVERGE: Duration = Duration::from_secs(90);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn spec(tag: &str, replay_dir: Option<&Path>) -> RunSpec {
    let exchange = unique(tag);
    RunSpec {
        amqp_url: shared_amqp_url(),
        queue: format!("{exchange}.gateway"),
        exchange,
        roles: "capture,gateway,api",
        replay_dir: replay_dir.map(|dir| dir.display().to_string()),
    }
}

/// Removes a test's queue and exchange.
async fn delete_broker_objects(spec: &RunSpec) {
    let Ok(connection) = Connection::connect(&spec.amqp_url, ConnectionProperties::default()).await
    else {
        return;
    };
    if let Ok(channel) = connection.create_channel().await {
        let _ = channel
            .queue_delete(spec.queue.as_str().into(), QueueDeleteOptions::default())
            .await;
        let _ = channel
            .exchange_delete(
                spec.exchange.as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await;
    }
    let _ = connection.close(200, "ok".into()).await;
}

/// `GET /orders`' snapshot, for a snapshot handshake.
async fn listing_snapshot(walcast: &Walcast) -> String {
    let body: Value = reqwest::get(format!("{}/orders?limit=1", walcast.url()))
        .await
        .expect("GET /orders")
        .json()
        .await
        .unwrap();
    body["snapshot"].as_str().expect("a snapshot").to_owned()
}

/// Changes the gateway took in (`walcast_fanout_delivered_total`, every
/// table and op).
async fn delivered(walcast: &Walcast) -> u64 {
    let text = reqwest::get(format!("{}/metrics", walcast.url()))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|line| line.starts_with("walcast_fanout_delivered_total"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// One order inserted in its own transaction.
async fn insert_one(db: &TestDb, n: usize) {
    db.psql(&format!(
        "INSERT INTO orders (customer_name, product_name) VALUES ('ready {n}', 'p')"
    ))
    .await;
}

/// What a raw client printed until its `ready`: the change ids, then ready's
/// `latest_id`.
async fn until_ready(client: &mut NodeClient) -> (Vec<String>, Option<String>) {
    let mut ids = Vec::new();
    loop {
        let line = client.next().await;
        match line.kind() {
            "change" => ids.push(line.change_id()),
            "event" if line.0["event"] == "ready" => {
                return (ids, line.0["data"]["latest_id"].as_str().map(String::from));
            }
            _ => panic!("unexpected line before ready: {:?}", line.0),
        }
    }
}

/// Opens a raw client that reports `ready`, waits for its `connect`.
async fn raw_client(walcast: &Walcast, auth: Value) -> NodeClient {
    let mut client =
        NodeClient::spawn_with(json!({"url": walcast.url(), "auth": auth, "ready": true}));
    let line = client.next().await;
    assert_eq!(line.kind(), "connect", "{:?}", line.0);
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_follows_every_replayed_change_and_precedes_every_live_one() {
    let db = TestDb::create("js_ready").await;
    let spec = spec("ready", None);
    let walcast = Walcast::start(&db, &spec).await;
    walcast.wait_ready().await;

    // A plain connect to an empty history: ready at once, null.
    let mut first = raw_client(&walcast, json!({})).await;
    let (replayed, latest) = until_ready(&mut first).await;
    assert!(
        replayed.is_empty() && latest.is_none(),
        "{replayed:?} {latest:?}"
    );
    for n in 0..6 {
        insert_one(&db, n).await;
    }
    let history: Vec<String> = first
        .changes(6)
        .await
        .iter()
        .map(|raw| {
            serde_json::from_str::<Value>(raw).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    // A listing read now sees the first six; then four more.
    let snapshot = listing_snapshot(&walcast).await;
    for n in 6..10 {
        insert_one(&db, n).await;
    }
    let more = first.changes(4).await;
    let history: Vec<String> = history
        .into_iter()
        .chain(more.iter().map(|raw| {
            serde_json::from_str::<Value>(raw).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        }))
        .collect();
    let newest = history.last().cloned();

    let mut plain = raw_client(&walcast, json!({})).await;
    let mut since = raw_client(&walcast, json!({"since": history[2]})).await;
    let mut listed = raw_client(&walcast, json!({"snapshot": snapshot})).await;
    let (plain_replayed, plain_latest) = until_ready(&mut plain).await;
    let (since_replayed, since_latest) = until_ready(&mut since).await;
    let (listed_replayed, listed_latest) = until_ready(&mut listed).await;
    assert!(plain_replayed.is_empty(), "{plain_replayed:?}");
    assert_eq!(
        since_replayed,
        history[3..],
        "since: every change after the cursor, then ready"
    );
    assert_eq!(
        listed_replayed,
        history[6..],
        "snapshot: every change the listing misses, then ready"
    );
    for latest in [plain_latest, since_latest, listed_latest] {
        assert_eq!(latest, newest, "ready names the newest change held");
    }

    // After ready, changes are live: the next two, and no second ready.
    for n in 10..12 {
        insert_one(&db, n).await;
    }
    for client in [&mut first, &mut plain, &mut since, &mut listed] {
        let live = client.changes(2).await;
        assert_eq!(live.len(), 2);
        assert!(
            client
                .next_within(Duration::from_millis(300))
                .await
                .is_none(),
            "nothing else, and no second ready"
        );
    }
    for client in [first, plain, since, listed] {
        client.close().await;
    }
    walcast.stop().await;
    delete_broker_objects(&spec).await;
}

/// The Node client exits after a `disconnect`; lines still in its stdout
/// queue (a test reading slowly, a full pipe) are written first. Before,
/// `process.exit` dropped them and a test read a line cut short, then EOF.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_client_prints_every_line_before_it_exits() {
    let db = TestDb::create("js_exit").await;
    let spec = spec("exit", None);
    let walcast = Walcast::start(&db, &spec).await;
    walcast.wait_ready().await;

    let mut child = spawn_node(json!({"url": walcast.url(), "auth": {}}));
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).await.unwrap();
    assert!(first.contains(r#""t":"connect""#), "{first:?}");

    // Far more than a pipe holds (64 KiB), not read while it arrives.
    const ROWS: u64 = 2000;
    db.psql(&format!(
        "INSERT INTO orders (customer_name, product_name) \
         SELECT 'customer ' || n, repeat('p', 200) FROM generate_series(1, {ROWS}) n"
    ))
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while delivered(&walcast).await < ROWS {
        assert!(
            tokio::time::Instant::now() < deadline,
            "walcast took in too few changes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stdin.write_all(b"{\"cmd\":\"close\"}\n").await.unwrap();
    // The client disconnects and exits; the old script was gone by now,
    // with whatever its pipe had not taken.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut rest = String::new();
    tokio::time::timeout(Duration::from_secs(30), stdout.read_to_string(&mut rest))
        .await
        .expect("the node client's stdout ends")
        .unwrap();
    let lines: Vec<&str> = rest.lines().collect();
    for line in &lines {
        serde_json::from_str::<Value>(line)
            .unwrap_or_else(|e| panic!("a line cut short ({e}): {line:?}"));
    }
    let last: Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    assert_eq!(last["t"], "disconnect", "the last line is the disconnect");
    assert!(
        rest.len() > 128 * 1024,
        "the client printed {} bytes; more than a pipe holds was expected",
        rest.len()
    );
    assert!(child.wait().await.unwrap().success());
    walcast.stop().await;
    delete_broker_objects(&spec).await;
}

/// psql writes while the feed works: inserts, updates and deletes of random
/// rows, each in its own transaction, until stopped.
fn spawn_psql_writer(url: String, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut client = None;
        let mut done = 0u64;
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        while !stop.load(Ordering::Relaxed) {
            if client.is_none() {
                match tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
                    Ok((c, connection)) => {
                        tokio::spawn(connection);
                        client = Some(c);
                    }
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                }
            }
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let sql = match seed % 10 {
                0..=3 => format!(
                    "INSERT INTO orders (customer_name, product_name) VALUES ('w{done}', 'p{}')",
                    seed % 97
                ),
                4..=7 => format!(
                    "UPDATE orders SET customer_name = 'u{done}', \
                     status = (ARRAY['pending','processing','shipped','delivered','cancelled'])[{}] \
                     WHERE id = (SELECT id FROM orders ORDER BY random() LIMIT 1)",
                    seed % 5 + 1
                ),
                _ => "DELETE FROM orders WHERE id = (SELECT id FROM orders ORDER BY random() LIMIT 1)"
                    .into(),
            };
            match client.as_ref().unwrap().batch_execute(&sql).await {
                Ok(()) => done += 1,
                Err(_) => client = None,
            }
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
        done
    })
}

/// The writer of one phase; [`Writer::finish`] stops it.
struct Writer {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<u64>,
}

impl Writer {
    fn start(db: &TestDb) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        Writer {
            task: spawn_psql_writer(db.url.clone(), stop.clone()),
            stop,
        }
    }

    async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

/// The table, as the comparison sees it: id, names and status.
async fn table_rows(db: &TestDb) -> Vec<Value> {
    db.client()
        .await
        .query(
            "SELECT id, customer_name, product_name, status FROM orders ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| {
            json!({
                "id": r.get::<_, i64>(0),
                "customer_name": r.get::<_, String>(1),
                "product_name": r.get::<_, String>(2),
                "status": r.get::<_, String>(3),
            })
        })
        .collect()
}

/// A `walcast.orders` feed in a Node process.
struct Feed {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::UnboundedReceiver<Value>,
    /// Every line but `rows` answers, in order.
    history: Vec<Value>,
}

impl Feed {
    fn spawn(options: Value) -> Feed {
        ensure_node_modules();
        let mut child = Command::new("node")
            .arg(repo().join("tests/js/feed-client.mjs"))
            .arg(options.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("node is installed");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                let value: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("feed-client.mjs printed {line:?}: {e}"));
                if tx.send(value).is_err() {
                    break;
                }
            }
        });
        Feed {
            child,
            stdin,
            lines,
            history: Vec::new(),
        }
    }

    /// The statuses reported since `from` (an index into the history).
    fn statuses_since(&self, from: usize) -> Vec<String> {
        self.history[from..]
            .iter()
            .filter(|line| line["t"] == "status")
            .map(|line| line["status"].as_str().unwrap().to_owned())
            .collect()
    }

    /// The feed's rows (and status), reduced to what the comparison sees.
    async fn rows(&mut self) -> (String, Vec<Value>) {
        let mut cmd = json!({"cmd": "rows"}).to_string();
        cmd.push('\n');
        self.stdin.write_all(cmd.as_bytes()).await.unwrap();
        loop {
            let line = tokio::time::timeout(Duration::from_secs(30), self.lines.recv())
                .await
                .expect("feed-client.mjs answers within 30 s")
                .expect("feed-client.mjs is running");
            if line["t"] != "rows" {
                self.history.push(line);
                continue;
            }
            let rows = line["rows"]
                .as_array()
                .unwrap()
                .iter()
                .map(|row| {
                    json!({
                        "id": row["id"],
                        "customer_name": row["customer_name"],
                        "product_name": row["product_name"],
                        "status": row["status"],
                    })
                })
                .collect();
            return (line["status"].as_str().unwrap().to_owned(), rows);
        }
    }

    /// How many change events the feed received so far.
    async fn events(&mut self) -> u64 {
        self.command(json!({"cmd": "rows"})).await;
        loop {
            let line = tokio::time::timeout(Duration::from_secs(30), self.lines.recv())
                .await
                .expect("feed-client.mjs answers within 30 s")
                .expect("feed-client.mjs is running");
            if line["t"] == "rows" {
                return line["events"].as_u64().unwrap();
            }
            self.history.push(line);
        }
    }

    /// Waits until the feed is live and holds exactly the table's rows.
    async fn converge(&mut self, db: &TestDb, walcast: &Walcast, phase: &str) {
        let want = table_rows(db).await;
        let started = tokio::time::Instant::now();
        let deadline = started + CONVERGE;
        loop {
            let (status, rows) = self.rows().await;
            if status == "live" && rows == want {
                eprintln!(
                    "[js_client] {phase}: {} rows, live, {} ms after the writes stopped",
                    rows.len(),
                    started.elapsed().as_millis()
                );
                return;
            }
            if tokio::time::Instant::now() > deadline {
                let have: std::collections::BTreeSet<String> =
                    rows.iter().map(Value::to_string).collect();
                let wanted: std::collections::BTreeSet<String> =
                    want.iter().map(Value::to_string).collect();
                panic!(
                    "{phase}: the feed ({status}, {} rows) is not the table ({} rows) within {CONVERGE:?}\n\
                     only in the feed: {:?}\nonly in the table: {:?}\nfeed said: {:?}\nwalcast log:\n{}",
                    rows.len(),
                    want.len(),
                    have.difference(&wanted).take(5).collect::<Vec<_>>(),
                    wanted.difference(&have).take(5).collect::<Vec<_>>(),
                    &self.history[self.history.len().saturating_sub(20)..],
                    log_tail(&walcast.log())
                );
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    async fn command(&mut self, command: Value) {
        let mut line = command.to_string();
        line.push('\n');
        self.stdin.write_all(line.as_bytes()).await.unwrap();
    }

    async fn close(mut self) {
        let _ = self.stdin.write_all(b"{\"cmd\":\"close\"}\n").await;
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

/// Restarts walcast on the same address, slot and queue, with `replay_dir`
/// and extra environment, while the writer keeps writing.
async fn restart(walcast: Walcast, db: &TestDb, spec: &RunSpec, env: &[(&str, &str)]) -> Walcast {
    let address = walcast.address.to_string();
    walcast.stop().await;
    // Changes while it is down: the feed must get them after the restart.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let walcast = Walcast::start_on(db, spec, env, &address).await;
    walcast.wait_ready().await;
    walcast
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_ends_with_exactly_the_table_through_writes_restarts_and_resyncs() {
    let db = TestDb::create("js_feed").await;
    // Several listing pages (page size 200), so the feed's hand-off spans
    // pages read with different snapshots while psql writes.
    db.psql(
        "INSERT INTO orders (customer_name, product_name) \
         SELECT 'c' || g, 'p' || g FROM generate_series(1, 1000) g",
    )
    .await;
    let replay_dir = tempfile::tempdir().unwrap();
    let mut spec = spec("feed", Some(replay_dir.path()));
    let walcast = Walcast::start(&db, &spec).await;
    walcast.wait_ready().await;

    // Loads and connects while psql writes.
    let writer = Writer::start(&db);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut feed = Feed::spawn(json!({"url": walcast.url(), "pageSize": 200}));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let writes = writer.finish().await;
    feed.converge(&db, &walcast, "load under writes").await;
    assert!(writes > 20, "the writer wrote ({writes} statements)");
    let first = &feed.history;
    let ready_at = first.iter().position(|l| l["t"] == "ready").expect("ready");
    let live_at = first
        .iter()
        .position(|l| l["t"] == "status" && l["status"] == "live")
        .expect("live");
    assert!(
        live_at < ready_at,
        "status live is reported as ready is handled"
    );
    assert!(
        first.iter().any(|l| l["t"] == "until-live"),
        "untilLive resolved"
    );

    // walcast restarts with its history on disk: the feed replays with
    // `since`, no resync.
    let from = feed.history.len();
    let writer = Writer::start(&db);
    let walcast = restart(walcast, &db, &spec, &[]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    writer.finish().await;
    feed.converge(&db, &walcast, "restart with replay_dir")
        .await;
    let statuses = feed.statuses_since(from);
    assert!(statuses.contains(&"offline".to_owned()), "{statuses:?}");
    assert!(!statuses.contains(&"resyncing".to_owned()), "{statuses:?}");

    // Without its history: the cursor is unknown, the gateway says
    // `resync`, the feed reloads and hands over again.
    let from = feed.history.len();
    let writer = Writer::start(&db);
    spec.replay_dir = None;
    let walcast = restart(walcast, &db, &spec, &[]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    writer.finish().await;
    feed.converge(&db, &walcast, "restart without replay_dir")
        .await;
    let statuses = feed.statuses_since(from);
    assert!(statuses.contains(&"resyncing".to_owned()), "{statuses:?}");

    // A forced resync: a replay buffer of four changes, and the feed's
    // connection down while far more than four go through the gateway.
    let walcast = restart(
        walcast,
        &db,
        &spec,
        &[("WALCAST_FANOUT_REPLAY_BUFFER", "4")],
    )
    .await;
    feed.converge(&db, &walcast, "restart with a tiny replay buffer")
        .await;
    let from = feed.history.len();
    feed.command(json!({"cmd": "drop"})).await;
    let writer = Writer::start(&db);
    let before = delivered(&walcast).await;
    let deadline = tokio::time::Instant::now() + CONVERGE;
    while delivered(&walcast).await < before + 20 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the gateway got no changes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    feed.command(json!({"cmd": "resume"})).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    writer.finish().await;
    feed.converge(&db, &walcast, "resync after the buffer moved on")
        .await;
    let resyncs: Vec<&Value> = feed.history[from..]
        .iter()
        .filter(|l| l["t"] == "resync")
        .collect();
    // Its cursor (`since`), or its listing's snapshot when no change came
    // since the last reload, is older than the four held changes.
    assert!(
        resyncs
            .iter()
            .any(|l| l["reason"] == "since_too_old" || l["reason"] == "snapshot_too_old"),
        "{:?}",
        &feed.history[from..]
    );
    let errors: Vec<&Value> = feed
        .history
        .iter()
        .filter(|l| l["t"] == "error" && l["kind"] != "unreachable")
        .collect();
    assert!(errors.is_empty(), "the feed reported errors: {errors:?}");

    feed.close().await;
    walcast.stop().await;
    delete_broker_objects(&spec).await;
}

/// A feed of one row (`keys`): the gateway sends only that row's changes
/// (the feed subscribes to its key on connect), and the feed holds exactly
/// that row as the table has it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_of_one_key_subscribes_to_it_and_holds_that_row() {
    let db = TestDb::create("js_key").await;
    db.psql(
        "INSERT INTO orders (customer_name, product_name) \
         SELECT 'c' || g, 'p' || g FROM generate_series(1, 20) g",
    )
    .await;
    let spec = spec("key", None);
    let walcast = Walcast::start(&db, &spec).await;
    walcast.wait_ready().await;
    let mut feed = Feed::spawn(json!({"url": walcast.url(), "keys": [{"id": 5}]}));
    let (status, rows) = loop {
        let (status, rows) = feed.rows().await;
        if status == "live" {
            break (status, rows);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status, "live");
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["id"], 5);
    // The socket handles its commands in order: once this one (a table
    // without changes) is acked, the feed's own subscription, sent on
    // connect, is in force.
    feed.command(json!({"cmd": "subscribe", "target": {"table": "public.quiet"}}))
        .await;
    let ack = loop {
        let line = tokio::time::timeout(Duration::from_secs(30), feed.lines.recv())
            .await
            .expect("the ack within 30 s")
            .expect("feed-client.mjs is running");
        if line["t"] == "ack" {
            break line;
        }
        feed.history.push(line);
    };
    assert_eq!(ack["ack"]["ok"], true, "{ack}");
    let events_before = feed.events().await;
    for id in [6, 7, 5, 8] {
        db.psql(&format!(
            "UPDATE orders SET status = 'shipped', customer_name = 'moved {id}' WHERE id = {id}"
        ))
        .await;
    }
    db.psql("DELETE FROM orders WHERE id = 9").await;
    let want: Vec<Value> = table_rows(&db)
        .await
        .into_iter()
        .filter(|row| row["id"] == 5)
        .collect();
    let deadline = tokio::time::Instant::now() + CONVERGE;
    loop {
        let (_, rows) = feed.rows().await;
        if rows == want {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{rows:?} != {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Only row 5's change came (the others were not sent at all).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(feed.events().await - events_before, 1);
    feed.close().await;
    walcast.stop().await;
    delete_broker_objects(&spec).await;
}

/// examples/python/orders_feed.py with python-socketio: loads the listing,
/// connects with its snapshot, follows psql writes, prints its rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_example_follows_the_same_hand_off() {
    let python = python_with_socketio();
    let db = TestDb::create("js_python").await;
    db.psql(
        "INSERT INTO orders (customer_name, product_name) \
         SELECT 'c' || g, 'p' || g FROM generate_series(1, 300) g",
    )
    .await;
    let spec = spec("python", None);
    let walcast = Walcast::start(&db, &spec).await;
    walcast.wait_ready().await;
    let writer = Writer::start(&db);
    let mut child = Command::new(&python)
        .arg(repo().join("examples/python/orders_feed.py"))
        .args([
            "--url",
            &walcast.url(),
            "--page-size",
            "100",
            "--print-rows-on-stdin",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("run the python example");
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    tokio::time::sleep(Duration::from_secs(2)).await;
    writer.finish().await;
    let want = table_rows(&db).await;
    let deadline = tokio::time::Instant::now() + CONVERGE;
    loop {
        stdin.write_all(b"rows\n").await.unwrap();
        let rows = loop {
            let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
                .await
                .expect("the example answers")
                .unwrap()
                .expect("the example is running");
            let value: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
            if value["t"] == "rows" {
                break value;
            }
        };
        let have: Vec<Value> = rows["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|row| {
                json!({
                    "id": row["id"],
                    "customer_name": row["customer_name"],
                    "product_name": row["product_name"],
                    "status": row["status"],
                })
            })
            .collect();
        if rows["live"] == true && have == want {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the python example ({} rows, live {}) is not the table ({} rows)",
            have.len(),
            rows["live"],
            want.len()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    drop(stdin);
    let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
    walcast.stop().await;
    delete_broker_objects(&spec).await;
}

/// A Python with python-socketio: `WALCAST_TEST_PYTHON`, else the venv
/// scripts/test.sh makes (target/python-venv), else `python3` if it has it.
fn python_with_socketio() -> PathBuf {
    let candidates = [
        std::env::var("WALCAST_TEST_PYTHON").ok().map(PathBuf::from),
        Some(repo().join("target/python-venv/bin/python")),
        Some(PathBuf::from("python3")),
    ];
    for python in candidates.into_iter().flatten() {
        let ok = std::process::Command::new(&python)
            .args(["-c", "import socketio, requests"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return python;
        }
    }
    panic!(
        "no Python with python-socketio and requests: run scripts/test.sh (it makes target/python-venv), \
         or pip install -r examples/python/requirements.txt"
    );
}
