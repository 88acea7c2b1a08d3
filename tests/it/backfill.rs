//! `walcast backfill` against a real `walcast run` capture, real Postgres
//! and real RabbitMQ: a queue bound before the backfill ends up holding
//! enough to rebuild the table exactly (apply `read`, `insert`, `update`
//! and `delete` in id order), while psql-style writers change the table
//! throughout. Twice on the same table, once with the CLI killed halfway
//! and resumed; and the errors an operator meets.

use crate::support::publisher_fixtures::BoundQueue;
use crate::support::{pgtest, stack};
use std::collections::{BTreeMap, HashSet};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgtest::TestDb;
use serde_json::Value;
use stack::{unique, RunSpec, Walcast};

const TIMEOUT: Duration = Duration::from_secs(120);

/// Every event the exchange routed to a queue of the test's own, bound
/// before anything is published.
struct Collector {
    events: Arc<Mutex<Vec<Value>>>,
    queue: BoundQueue,
}

impl Collector {
    async fn start(exchange: &str, queue: &str) -> Collector {
        let queue = BoundQueue::declare(&stack::shared_amqp_url(), exchange, queue).await;
        let (events, _task) = queue.collect_json("backfill-test").await;
        Collector { events, queue }
    }

    fn events(&self) -> Vec<Value> {
        self.events.lock().unwrap().clone()
    }

    /// Inserts a row and waits for its insert event: everything committed
    /// before it has arrived too (one queue, one publisher, in order).
    async fn sync(&self, db: &TestDb, walcast: &Walcast) {
        let id: i64 = db
            .psql("INSERT INTO orders (customer_name, product_name) VALUES ('sync', 'sync') RETURNING id")
            .await
            .parse()
            .unwrap();
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            let seen = self
                .events
                .lock()
                .unwrap()
                .iter()
                .any(|e| e["op"] == "insert" && e["new"]["id"] == id);
            if seen {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the sync row's insert never arrived; walcast log:\n{}",
                walcast.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn delete(self) {
        self.queue.delete().await;
    }
}

/// The table as the events would show it: id → the row's JSON.
async fn table_rows(db: &TestDb) -> BTreeMap<i64, Value> {
    let text = db
        .psql(
            "SELECT coalesce(json_agg(json_build_object(\
               'id', id, 'customer_name', customer_name, 'product_name', product_name, \
               'status', status, \
               'created_at', to_char(created_at, 'YYYY-MM-DD\"T\"HH24:MI:SS.US'), \
               'updated_at', to_char(updated_at, 'YYYY-MM-DD\"T\"HH24:MI:SS.US')) ORDER BY id), '[]') \
             FROM orders",
        )
        .await;
    let rows: Vec<Value> = serde_json::from_str(&text).unwrap();
    rows.into_iter()
        .map(|row| (row["id"].as_i64().unwrap(), row))
        .collect()
}

/// Applies the events in id order (each id once): what a consumer that
/// saw all of them holds.
fn rebuild(events: &[Value]) -> BTreeMap<i64, Value> {
    let mut sorted: Vec<&Value> = events.iter().collect();
    sorted.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    let mut seen = HashSet::new();
    let mut rows = BTreeMap::new();
    for event in sorted {
        if !seen.insert(event["id"].as_str().unwrap().to_owned()) {
            continue;
        }
        assert_ne!(
            event["oversize"], true,
            "no event here is oversize: {event}"
        );
        let key = event["key"]["id"].as_i64().expect("every event has a key");
        match event["op"].as_str().unwrap() {
            "read" | "insert" | "update" => {
                rows.insert(key, event["new"].clone());
            }
            "delete" => {
                rows.remove(&key);
            }
            other => panic!("unexpected op {other}: {event}"),
        }
    }
    rows
}

fn assert_rebuilt(events: &[Value], table: &BTreeMap<i64, Value>) {
    let rebuilt = rebuild(events);
    let missing: Vec<_> = table
        .keys()
        .filter(|k| !rebuilt.contains_key(k))
        .take(5)
        .collect();
    let extra: Vec<_> = rebuilt
        .keys()
        .filter(|k| !table.contains_key(k))
        .take(5)
        .collect();
    let differ: Vec<_> = table
        .iter()
        .filter(|(k, row)| rebuilt.get(k).is_some_and(|r| r != *row))
        .take(3)
        .map(|(k, row)| format!("{k}: table {row} vs events {}", rebuilt[k]))
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty() && differ.is_empty(),
        "rebuilt from {} events ≠ SELECT * FROM orders ({} rows): missing {missing:?}, extra {extra:?}, differ {differ:#?}",
        events.len(),
        table.len()
    );
}

trait Pair {
    fn get_pair(&self) -> (i64, i64);
}

impl Pair for tokio_postgres::Row {
    fn get_pair(&self) -> (i64, i64) {
        (self.get(0), self.get(1))
    }
}

/// psql-style writers: single-statement INSERT/UPDATE/DELETE and small
/// transactions on random rows, until stopped.
fn spawn_writer(url: String, stop: Arc<AtomicBool>, seed: u64) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let (mut client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .expect("writer connects");
        tokio::spawn(connection);
        let mut state = 0x2545_F491_4F6C_DD1Du64 ^ seed;
        let mut next = move |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        let statuses = ["pending", "processing", "shipped", "delivered", "cancelled"];
        let mut statements = 0;
        while !stop.load(Ordering::Relaxed) {
            // Half the time, a row of the chunk being read right now: the
            // rows a backfill is most likely to get wrong.
            let (max, chunk_start): (i64, i64) = client
                .query_one(
                    "SELECT coalesce(max(id), 1), \
                       coalesce((SELECT last_key[1]::bigint FROM walcast.backfill), 0) FROM orders",
                    &[],
                )
                .await
                .unwrap()
                .get_pair();
            let id = if next(2) == 0 {
                chunk_start + 1 + next(100) as i64
            } else {
                1 + next(max as u64) as i64
            };
            let status = statuses[next(5) as usize];
            let result = match next(10) {
                0..=2 => client
                    .execute(
                        "INSERT INTO orders (customer_name, product_name) VALUES ('writer', $1)",
                        &[&status],
                    )
                    .await,
                3..=6 => {
                    client
                        .execute(
                            "UPDATE orders SET status = $2 WHERE id = $1",
                            &[&id, &status],
                        )
                        .await
                }
                7 => {
                    client
                        .execute("DELETE FROM orders WHERE id = $1", &[&id])
                        .await
                }
                _ => {
                    let transaction = client.transaction().await.unwrap();
                    transaction
                        .execute(
                            "UPDATE orders SET status = $2 WHERE id = $1",
                            &[&id, &status],
                        )
                        .await
                        .unwrap();
                    transaction
                        .execute("DELETE FROM orders WHERE id = $1", &[&(id + 1)])
                        .await
                        .unwrap();
                    transaction
                        .execute("INSERT INTO orders (customer_name, product_name) VALUES ('writer', 'tx')", &[])
                        .await
                        .unwrap();
                    transaction.commit().await.map(|_| 0)
                }
            };
            result.expect("writer statement");
            statements += 1;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        statements
    })
}

/// A database whose orders exist before the slot: no event carries them
/// until a backfill does.
async fn seeded(prefix: &str, rows: usize) -> TestDb {
    let db = TestDb::create_empty(prefix).await;
    let setup = db.walcast(&["setup", "--no-slot"]).output().await.unwrap();
    assert!(
        setup.status.success(),
        "{}",
        String::from_utf8_lossy(&setup.stderr)
    );
    db.psql(&format!(
        "INSERT INTO orders (customer_name, product_name) \
         SELECT 'customer ' || g, 'product ' || g FROM generate_series(1, {rows}) g"
    ))
    .await;
    // The progress table the CLI would create, made early for the writers
    // that follow it.
    db.psql(include_str!("../../sql/backfill.sql")).await;
    let slot = db.walcast(&["slot", "create"]).output().await.unwrap();
    assert!(
        slot.status.success(),
        "{}",
        String::from_utf8_lossy(&slot.stderr)
    );
    db
}

async fn start_capture(db: &TestDb, exchange: &str) -> Walcast {
    let spec = RunSpec {
        amqp_url: stack::shared_amqp_url(),
        exchange: exchange.to_owned(),
        queue: unique("backfill.gateway"),
        roles: "capture",
        replay_dir: None,
    };
    let walcast = Walcast::start(db, &spec).await;
    walcast.wait_ready().await;
    walcast
}

/// `walcast backfill` with `args`; returns (success, stdout + stderr).
async fn backfill(db: &TestDb, args: &[&str]) -> (bool, String) {
    let mut all = vec!["backfill"];
    all.extend_from_slice(args);
    let out = tokio::time::timeout(TIMEOUT, db.walcast(&all).output())
        .await
        .expect("backfill finished in time")
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfills_under_concurrent_writes_rebuild_the_table_twice() {
    let db = seeded("backfill_twice", 2000).await;
    let exchange = unique("walcast.backfill.twice");
    let collector = Collector::start(&exchange, &unique("backfill.twice.audit")).await;
    let walcast = start_capture(&db, &exchange).await;

    for round in 1..=2 {
        let stop = Arc::new(AtomicBool::new(false));
        let writers = [1, 2].map(|seed| spawn_writer(db.url.clone(), stop.clone(), seed));
        // The second round reads only the even rows (--where).
        let before = collector.events().len();
        let args: &[&str] = match round {
            1 => &["--chunk", "100"],
            _ => &["--chunk", "100", "--where", "id % 2 = 0"],
        };
        let (ok, output) = backfill(&db, args).await;
        assert!(
            ok,
            "round {round}: backfill failed:\n{output}\nwalcast log:\n{}",
            walcast.log()
        );
        assert!(output.contains("backfilled public.orders"), "{output}");
        stop.store(true, Ordering::Relaxed);
        for writer in writers {
            let statements = writer.await.unwrap();
            assert!(statements > 0, "the writers wrote during the backfill");
        }
        collector.sync(&db, &walcast).await;

        let events = collector.events();
        let reads: Vec<&Value> = events[before..]
            .iter()
            .filter(|e| e["op"] == "read")
            .collect();
        let expected = if round == 1 { 1900 } else { 950 };
        assert!(
            reads.len() >= expected,
            "round {round}: only {} reads",
            reads.len()
        );
        if round == 2 {
            let odd = reads
                .iter()
                .find(|e| e["key"]["id"].as_i64().unwrap() % 2 == 1);
            assert_eq!(odd, None, "--where id % 2 = 0 read an odd row");
        }
        let read = reads[0];
        assert_eq!(read["old"], Value::Null);
        assert_eq!(read["schema"], "public");
        assert!(read["key"]["id"].is_i64() && read["new"]["customer_name"].is_string());
        let id = read["id"].as_str().unwrap();
        assert_eq!(id.len(), 27, "{id}");
        assert_eq!(
            read["commit_lsn"].as_str().unwrap(),
            format_lsn(u64::from_str_radix(&id[..16], 16).unwrap())
        );
        assert_rebuilt(&events, &table_rows(&db).await);
    }
    let progress = db
        .psql("SELECT chunks > 0, finished_at IS NOT NULL FROM walcast.backfill")
        .await;
    assert_eq!(progress, "t|t");
    let metrics = reqwest::get(format!("{}/metrics", walcast.url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let rows: u64 = metric(&metrics, "walcast_backfill_rows_total");
    assert!(rows >= 2850, "walcast_backfill_rows_total {rows}");

    walcast.stop().await;
    collector.delete().await;
}

fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("{name} not in /metrics:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_killed_halfway_resumes() {
    let db = seeded("backfill_resume", 6000).await;
    let exchange = unique("walcast.backfill.resume");
    let collector = Collector::start(&exchange, &unique("backfill.resume.audit")).await;
    let walcast = start_capture(&db, &exchange).await;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_writer(db.url.clone(), stop.clone(), 3);

    // Slow enough to be caught halfway: 6000 rows at 1500/s.
    let mut child = db
        .walcast(&["backfill", "--chunk", "100", "--rate", "1500/s"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let done = db
            .psql("SELECT coalesce((SELECT rows_read FROM walcast.backfill), 0)")
            .await;
        if done.parse::<i64>().unwrap() >= 1500 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the backfill made no progress"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let saved = db
        .psql("SELECT rows_read, finished_at IS NULL FROM walcast.backfill")
        .await;
    let (rows_before, unfinished) = saved.split_once('|').unwrap();
    assert_eq!(unfinished, "t", "killed halfway: {saved}");
    assert!(rows_before.parse::<i64>().unwrap() < 6000, "{saved}");

    let (ok, output) = backfill(&db, &["--chunk", "100"]).await;
    assert!(
        ok,
        "resumed backfill failed:\n{output}\nwalcast log:\n{}",
        walcast.log()
    );
    assert!(
        output.contains("resuming the backfill of public.orders after"),
        "{output}"
    );
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    collector.sync(&db, &walcast).await;
    assert_rebuilt(&collector.events(), &table_rows(&db).await);

    walcast.stop().await;
    collector.delete().await;
}

#[tokio::test]
async fn backfill_errors_tell_the_operator_what_to_do() {
    let db = seeded("backfill_errors", 10).await;
    // Nothing streams from the slot yet.
    let (ok, output) = backfill(&db, &[]).await;
    assert!(!ok);
    assert!(output.contains("the capture is not running"), "{output}");

    let (ok, output) = backfill(&db, &["--table", "public.secrets"]).await;
    assert!(!ok);
    assert!(
        output.contains("public.secrets is not a captured table"),
        "{output}"
    );

    db.psql("CREATE TABLE keyless (note text)").await;
    let (ok, output) = backfill(
        &db,
        &[
            "--tables",
            "public.orders,public.keyless",
            "--table",
            "keyless",
        ],
    )
    .await;
    assert!(!ok);
    assert!(output.contains("the capture is not running"), "{output}");

    // A slot in use by something that never confirms (tail --peek): the
    // watermark is never published, and the CLI says so.
    let mut tail = db.tail(&["--peek"]);
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while db
        .psql("SELECT active FROM pg_replication_slots WHERE slot_name = current_database()")
        .await
        != "t"
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "tail never took the slot"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (ok, output) = backfill(
        &db,
        &[
            "--tables",
            "public.orders,public.keyless",
            "--table",
            "keyless",
        ],
    )
    .await;
    assert!(!ok);
    assert!(
        output.contains("public.keyless has no primary key"),
        "{output}"
    );
    let (ok, output) = backfill(&db, &["--timeout", "3"]).await;
    assert!(!ok);
    assert!(
        output.contains("the capture did not publish backfill chunk 0 of public.orders"),
        "{output}"
    );
    // tail --peek did see the rows: read events, typed like changes.
    let event = tail.next_event(TIMEOUT).await;
    assert_eq!(event["op"], "read", "{event}");
    assert_eq!(event["new"]["status"], "pending");
    tail.interrupt();
    tail.wait(TIMEOUT).await;
}
