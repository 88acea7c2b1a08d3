//! `/metrics` and `/readyz` of the real `walcast run` binary, against real
//! Postgres and RabbitMQ.
//!
//! The process runs every role on its own database, slot, publication,
//! exchange and queue, and reaches RabbitMQ through a TCP proxy of the
//! test's own, so an outage can be made without touching the shared broker.
//!
//! 1. Traffic (psql writes, API requests, a Socket.IO client receiving the
//!    changes) moves the counters of every stage; the test parses the
//!    exposition and checks them by table, op, route and status.
//! 2. Cutting the proxy turns `/readyz` 503 naming rabbitmq; resuming it
//!    turns it 200 again, and the changes made during the cut arrive.
//!
//! A second test starts single roles with RabbitMQ already unreachable:
//! `/readyz` must not answer 200 before RabbitMQ was ever reached, and
//! every role answers it in the same body shape.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::types::ShortString;
use lapin::{Connection, ConnectionProperties};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;

use crate::support;
use crate::support::pgtest::TestDb;
use crate::support::sio::{amqp_url, NodeClient};
use crate::support::tcp_proxy::TcpProxy;
use crate::support::{pgtest, stack};

/// Bound of every wait in this test.
const TIMEOUT: Duration = Duration::from_secs(30);

/// One scrape, parsed: series (name and labels) → value.
#[derive(Debug)]
struct Scrape {
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
    types: BTreeMap<String, String>,
}

impl Scrape {
    /// A line parser for the text format: `# TYPE` lines, and samples
    /// `name{label="value",...} value` with escaped label values.
    fn parse(text: &str) -> Scrape {
        let mut samples = Vec::new();
        let mut types = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
                assert!(
                    types.insert(name.to_owned(), kind.to_owned()).is_none(),
                    "family {name} declared twice"
                );
                continue;
            }
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let (name, rest) = match line.find('{') {
                Some(brace) => (&line[..brace], &line[brace + 1..]),
                None => {
                    let (name, value) = line.split_once(' ').expect("name value");
                    samples.push((name.to_owned(), BTreeMap::new(), parse_value(value)));
                    continue;
                }
            };
            let mut labels = BTreeMap::new();
            let mut chars = rest.chars();
            loop {
                let label: String = chars.by_ref().take_while(|c| *c != '=').collect();
                assert_eq!(chars.next(), Some('"'), "quoted label value in {line:?}");
                let mut value = String::new();
                loop {
                    match chars.next().expect("closing quote") {
                        '\\' => match chars.next().expect("escaped char") {
                            'n' => value.push('\n'),
                            c => value.push(c),
                        },
                        '"' => break,
                        c => value.push(c),
                    }
                }
                labels.insert(label, value);
                match chars.next() {
                    Some(',') => continue,
                    Some('}') => break,
                    other => panic!("unexpected {other:?} in {line:?}"),
                }
            }
            let value: String = chars.collect();
            samples.push((name.to_owned(), labels, parse_value(value.trim())));
        }
        Scrape { samples, types }
    }

    /// Observations of histogram `family`, checked to be one: its type,
    /// and `_count` equal to the `+Inf` bucket.
    fn histogram_count(&self, family: &str) -> f64 {
        assert_eq!(self.types[family], "histogram", "{family}");
        let count = self.value(&format!("{family}_count"), &[]);
        let all = self.value(&format!("{family}_bucket"), &[("le", "+Inf")]);
        assert_eq!(count, all, "{family}: _count against the +Inf bucket");
        count
    }

    /// The value of the one series of `name` whose labels include `labels`.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut found = self.samples.iter().filter(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        });
        let first = found.next().map(|(_, _, v)| *v);
        assert!(found.next().is_none(), "{name} {labels:?} is ambiguous");
        first
    }

    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no series {name} {labels:?} in the scrape"))
    }
}

fn parse_value(text: &str) -> f64 {
    match text {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        t => t
            .parse()
            .unwrap_or_else(|_| panic!("bad sample value {t:?}")),
    }
}

/// The `walcast run` child, its address, and its log for failure messages.
struct Walcast {
    child: Child,
    base: String,
    log: Arc<Mutex<String>>,
    http: reqwest::Client,
}

impl Walcast {
    async fn start(db: &TestDb, rabbitmq_url: &str, exchange: &str, queue: &str) -> Walcast {
        Walcast::start_roles(db, rabbitmq_url, exchange, queue, "capture,gateway,api").await
    }

    async fn start_roles(
        db: &TestDb,
        rabbitmq_url: &str,
        exchange: &str,
        queue: &str,
        roles: &str,
    ) -> Walcast {
        let mut cmd = db.walcast(&[
            "run",
            "--role",
            roles,
            "--listen",
            "127.0.0.1:0",
            "--exchange",
            exchange,
            "--rabbitmq-url",
            rabbitmq_url,
            "--log-format",
            "json",
        ]);
        cmd.env("WALCAST_RABBITMQ_QUEUE", queue)
            // Reconnect soon after the outage ends, and report positions
            // to Postgres often enough for the slot to show them.
            .env("WALCAST_RABBITMQ_MAX_BACKOFF_MS", "500")
            .env("WALCAST_POSTGRES_STATUS_INTERVAL_MS", "500")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn walcast run");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (address_tx, address_rx) = tokio::sync::oneshot::channel();
        let sink = log.clone();
        tokio::spawn(async move {
            let mut address_tx = Some(address_tx);
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(address) = stack::listen_address(&line) {
                    if let Some(tx) = address_tx.take() {
                        let _ = tx.send(address);
                    }
                }
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let address = match tokio::time::timeout(TIMEOUT, address_rx).await {
            Ok(Ok(address)) => address,
            _ => panic!(
                "walcast did not report its address; log:\n{}",
                log.lock().unwrap()
            ),
        };
        Walcast {
            child,
            base: format!("http://{address}"),
            log,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
        }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    async fn get(&self, path: &str) -> (u16, String, String) {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}; log:\n{}", self.log()));
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        (status, content_type, response.text().await.unwrap())
    }

    async fn scrape(&self) -> Scrape {
        let (status, content_type, body) = self.get("/metrics").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
        Scrape::parse(&body)
    }

    /// Scrapes until `check` passes; fails with the last scrape after
    /// [`TIMEOUT`].
    async fn scrape_until(&self, what: &str, check: impl Fn(&Scrape) -> bool) -> Scrape {
        support::poll(TIMEOUT, || async {
            let scrape = self.scrape().await;
            if check(&scrape) {
                Ok(scrape)
            } else {
                Err(format!("{scrape:#?}"))
            }
        })
        .await
        .unwrap_or_else(|last| {
            panic!(
                "timed out waiting for {what}; last scrape: {last}\nlog:\n{}",
                self.log()
            )
        })
    }

    /// Polls `/readyz` until it answers `status` with a body `check`
    /// accepts; returns the body.
    async fn readyz_until(
        &self,
        status: u16,
        within: Duration,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        support::poll(within, || async {
            let (got, _, body) = self.get("/readyz").await;
            let parsed: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            if got == status && check(&parsed) {
                Ok(parsed)
            } else {
                Err(format!("{got}: {body}"))
            }
        })
        .await
        .unwrap_or_else(|last| {
            panic!(
                "/readyz still {last} after {within:?}\nlog:\n{}",
                self.log()
            )
        })
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        match tokio::time::timeout(TIMEOUT, self.child.wait()).await {
            Ok(status) => assert!(
                status.unwrap().success(),
                "walcast exited with an error; log:\n{}",
                self.log()
            ),
            Err(_) => panic!("walcast did not stop on SIGTERM; log:\n{}", self.log()),
        }
    }
}

/// `amqp_url()` with its host and port replaced by `addr`.
fn via(url: &str, addr: std::net::SocketAddr) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let (userinfo, rest) = match rest.rsplit_once('@') {
        Some((userinfo, rest)) => (format!("{userinfo}@"), rest),
        None => (String::new(), rest),
    };
    let path = rest.find('/').map_or("", |i| &rest[i..]);
    format!("{scheme}://{userinfo}{addr}{path}")
}

async fn upstream(url: &str) -> std::net::SocketAddr {
    let rest = url.split_once("://").unwrap().1;
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let host_port = rest.split('/').next().unwrap();
    let host_port = if host_port.contains(':') {
        host_port.to_owned()
    } else {
        format!("{host_port}:5672")
    };
    tokio::net::lookup_host(host_port)
        .await
        .unwrap()
        .next()
        .expect("the broker's address resolves")
}

/// The `new` row of each change payload.
fn rows(raws: &[String]) -> Vec<Value> {
    raws.iter()
        .map(|raw| serde_json::from_str::<Value>(raw).unwrap())
        .collect()
}

/// Removes what the test left on the shared servers, also when it fails:
/// the gateway's durable queue, the exchange, and the database.
struct Cleanup {
    queue: String,
    exchange: String,
    database: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        // Drop cannot await and runs inside the test's runtime, which must
        // not be blocked on: a thread with a runtime of its own.
        let (queue, exchange) = (self.queue.clone(), self.exchange.clone());
        let broker = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let deleting = async {
                    let conn =
                        Connection::connect(&amqp_url(), ConnectionProperties::default()).await?;
                    let channel = conn.create_channel().await?;
                    let _ = channel
                        .queue_delete(ShortString::from(queue), QueueDeleteOptions::default())
                        .await;
                    let _ = channel
                        .exchange_delete(
                            ShortString::from(exchange),
                            ExchangeDeleteOptions::default(),
                        )
                        .await;
                    conn.close(200, "test done".into()).await
                };
                let _ = tokio::time::timeout(Duration::from_secs(10), deleting).await;
            });
        });
        let _ = broker.join();
        // TestDb's own Drop runs its DROP DATABASE in one transaction block
        // with other statements, where it cannot run: here every statement
        // is a -c of its own (its own transaction). The slot goes first; a
        // database with a logical slot cannot be dropped.
        let db = &self.database;
        let _ = std::process::Command::new("psql")
            .arg(pgtest::pg_url())
            .args(["-q", "-X"])
            .args([
                "-c",
                &format!("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE database = '{db}' AND active_pid IS NOT NULL"),
                "-c",
                "SELECT pg_sleep(0.2)",
                "-c",
                &format!("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = '{db}'"),
                "-c",
                &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// An exchange and a gateway queue of this test's own.
fn exchange_and_queue(tag: &str) -> (String, String) {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let exchange = format!("walcast.test.{tag}.{}.{nanos}", std::process::id());
    let queue = format!("{exchange}.gateway");
    (exchange, queue)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_traffic_and_readyz_follows_rabbitmq() {
    let started = Instant::now();
    let db = TestDb::create("metrics").await;
    let (exchange, queue) = exchange_and_queue("metrics");
    // Declared after `db`, so dropped before it; TestDb's Drop then finds
    // nothing left to do.
    let _cleanup = Cleanup {
        queue: queue.clone(),
        exchange: exchange.clone(),
        database: db.name.clone(),
    };
    let broker = upstream(&amqp_url()).await;
    let proxy = TcpProxy::start(broker).await;
    let walcast = Walcast::start(&db, &via(&amqp_url(), proxy.addr()), &exchange, &queue).await;

    let ready = walcast.readyz_until(200, TIMEOUT, |_| true).await;
    assert_eq!(ready["status"], "ready", "{ready}");

    // --- 1. traffic moves the counters ---------------------------------
    let mut client = NodeClient::connect(&walcast.base, json!({})).await;
    walcast
        .scrape_until("one attached socket", |s| {
            s.get("walcast_fanout_connected_sockets", &[]) == Some(1.0)
        })
        .await;

    db.psql(
        "INSERT INTO orders (customer_name, product_name) \
         VALUES ('Ada', 'lamp'), ('Grace', 'desk'), ('Linus', 'chair')",
    )
    .await;
    db.psql("UPDATE orders SET status = 'shipped' WHERE customer_name = 'Ada'")
        .await;
    let (status, created) = walcast
        .call(
            reqwest::Method::POST,
            "/orders",
            Some(json!({"customer_name": "Barbara", "product_name": "pen"})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_i64().unwrap();
    let (status, _) = walcast
        .call(reqwest::Method::GET, &format!("/orders/{id}"), None)
        .await;
    assert_eq!(status, 200);
    let (status, _) = walcast
        .call(reqwest::Method::GET, "/orders/999999999", None)
        .await;
    assert_eq!(status, 404);
    let (status, listing) = walcast
        .call(reqwest::Method::GET, "/orders?limit=10", None)
        .await;
    assert_eq!(status, 200, "{listing}");

    // Three inserts, one update (psql), one insert (API): five changes, in
    // commit order.
    let changes = rows(&client.changes(5).await);
    let ops: Vec<&str> = changes.iter().map(|c| c["op"].as_str().unwrap()).collect();
    assert_eq!(ops, ["insert", "insert", "insert", "update", "insert"]);
    assert_eq!(changes[4]["new"]["customer_name"], "Barbara");

    let orders = |op: &'static str| [("table", "public.orders"), ("op", op)];
    let scrape = walcast
        .scrape_until("every stage to count the five changes", |s| {
            s.get("walcast_publisher_confirmed_total", &orders("insert")) >= Some(4.0)
                && s.get("walcast_publisher_confirmed_total", &orders("update")) >= Some(1.0)
                && s.get("walcast_fanout_delivered_total", &orders("insert")) == Some(4.0)
                && s.get("walcast_fanout_delivered_total", &orders("update")) == Some(1.0)
                && s.get("walcast_consumer_acked_total", &[]) >= Some(5.0)
        })
        .await;
    let decoded = "walcast_capture_changes_decoded_total";
    assert_eq!(scrape.types[decoded], "counter");
    assert_eq!(scrape.value(decoded, &orders("insert")), 4.0);
    assert_eq!(scrape.value(decoded, &orders("update")), 1.0);
    let delivered = "walcast_fanout_delivered_total";
    assert_eq!(scrape.types[delivered], "counter");
    assert!(
        scrape.get(delivered, &orders("delete")).is_none(),
        "no delete happened, so no delete series"
    );
    assert!(scrape.value("walcast_publisher_published_total", &orders("insert")) >= 4.0);
    assert!(scrape.value("walcast_publisher_published_total", &orders("update")) >= 1.0);
    assert!(scrape.value("walcast_fanout_emitted_total", &[]) >= 5.0);
    assert!(scrape.value("walcast_consumer_received_total", &[]) >= 5.0);
    assert_eq!(scrape.value("walcast_fanout_connected_sockets", &[]), 1.0);
    assert!(scrape.value("walcast_fanout_replay_buffer_events", &[]) >= 5.0);
    assert!(scrape.value("walcast_fanout_replay_buffer_bytes", &[]) > 0.0);
    assert_eq!(
        scrape.histogram_count("walcast_capture_commit_to_publish_lag_seconds"),
        5.0
    );
    assert!(scrape
        .get("walcast_capture_last_commit_to_publish_lag_seconds", &[])
        .is_some());
    // Every change reached the socket live, each timed from its commit.
    assert_eq!(
        scrape.histogram_count("walcast_fanout_commit_to_deliver_lag_seconds"),
        5.0
    );
    assert_eq!(
        scrape.types["walcast_publisher_confirm_latency_seconds"],
        "histogram"
    );
    assert!(scrape.value("walcast_publisher_confirm_latency_seconds_count", &[]) >= 5.0);
    assert_eq!(scrape.value("walcast_publisher_connected", &[]), 1.0);
    assert_eq!(scrape.value("walcast_consumer_consuming", &[]), 1.0);
    assert_eq!(
        scrape.value(
            "walcast_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    assert_eq!(
        scrape.value("walcast_component_healthy", &[("component", "rabbitmq")]),
        1.0
    );
    let requests = "walcast_http_requests_total";
    let route = |method: &'static str, route: &'static str, status: &'static str| {
        [("method", method), ("route", route), ("status", status)]
    };
    assert_eq!(
        scrape.value(requests, &route("POST", "/orders", "201")),
        1.0
    );
    assert_eq!(scrape.value(requests, &route("GET", "/orders", "200")), 1.0);
    assert_eq!(
        scrape.value(requests, &route("GET", "/orders/{id}", "200")),
        1.0
    );
    assert_eq!(
        scrape.value(requests, &route("GET", "/orders/{id}", "404")),
        1.0
    );
    assert!(scrape.value(requests, &route("GET", "/readyz", "200")) >= 1.0);
    assert!(
        scrape.get(requests, &[("route", "/metrics")]).is_none(),
        "scrapes are not API requests"
    );
    assert!(
        scrape.value(
            "walcast_http_request_duration_seconds_count",
            &route("POST", "/orders", "201")
        ) == 1.0
    );
    let slot = [("slot", db.slot.as_str())];
    assert_eq!(scrape.value("walcast_slot_exists", &slot), 1.0);
    assert!(scrape
        .get("walcast_slot_retained_wal_bytes", &slot)
        .is_some());

    // The slot's confirmed position, read from pg_replication_slots, gets
    // to where RabbitMQ confirmed everything.
    let durable = scrape.value("walcast_capture_durable_lsn", &[]);
    assert!(durable > 0.0);
    walcast
        .scrape_until(
            "the slot's confirmed_flush_lsn to reach the durable position",
            |s| {
                s.get("walcast_slot_confirmed_flush_lsn", &slot) >= Some(durable)
                    && s.get("walcast_slot_active", &slot) == Some(1.0)
            },
        )
        .await;
    let phase_one = started.elapsed();

    // --- 2. a RabbitMQ outage: not ready, then ready and caught up -------
    let cut_at = Instant::now();
    proxy.cut();
    // Both sides notice: the publisher (component `rabbitmq`) and the
    // gateway's consumer; the publisher's is the one this waits for.
    let rabbitmq_named = |body: &Value| {
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("rabbitmq ("))
    };
    let not_ready = walcast
        .readyz_until(503, Duration::from_secs(15), rabbitmq_named)
        .await;
    let not_ready_after = cut_at.elapsed();
    assert_eq!(not_ready["status"], "not_ready", "{not_ready}");
    assert_eq!(not_ready["error"]["code"], "not_ready", "{not_ready}");
    let components = not_ready["components"].as_array().unwrap();
    let rabbitmq = components
        .iter()
        .find(|c| c["name"] == "rabbitmq")
        .unwrap_or_else(|| panic!("no rabbitmq component: {not_ready}"));
    assert_eq!(rabbitmq["healthy"], false, "{not_ready}");
    walcast
        .scrape_until("the outage to show in the metrics", |s| {
            s.get("walcast_publisher_connected", &[]) == Some(0.0)
                && s.get("walcast_component_healthy", &[("component", "rabbitmq")]) == Some(0.0)
        })
        .await;

    // Written while RabbitMQ is unreachable: decoded now, published later.
    db.psql("INSERT INTO orders (customer_name, product_name) VALUES ('Edsger', 'clock'), ('Tony', 'sort')")
        .await;
    walcast
        .scrape_until("the outage's changes to be decoded", |s| {
            s.get(decoded, &orders("insert")) == Some(6.0)
        })
        .await;

    let resumed_at = Instant::now();
    proxy.resume();
    let ready = walcast.readyz_until(200, TIMEOUT, |_| true).await;
    let ready_after = resumed_at.elapsed();
    assert_eq!(ready["status"], "ready", "{ready}");
    let late = rows(&client.changes(2).await);
    let names: Vec<&str> = late
        .iter()
        .map(|c| c["new"]["customer_name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Edsger", "Tony"]);
    let scrape = walcast
        .scrape_until("the outage's changes to be confirmed and delivered", |s| {
            s.get("walcast_publisher_confirmed_total", &orders("insert")) >= Some(6.0)
                && s.get("walcast_fanout_delivered_total", &orders("insert")) == Some(6.0)
        })
        .await;
    assert!(scrape.value("walcast_publisher_reconnects_total", &[]) >= 1.0);
    assert!(scrape.value("walcast_consumer_sessions_total", &[]) >= 2.0);
    assert_eq!(scrape.value("walcast_publisher_connected", &[]), 1.0);
    assert_eq!(scrape.value("walcast_fanout_connected_sockets", &[]), 1.0);
    eprintln!(
        "phase 1 (start, traffic, slot position) {phase_one:?}; \
         /readyz 503 {not_ready_after:?} after the cut, 200 {ready_after:?} after resuming"
    );

    client.close().await;
    walcast.stop().await;
}

/// The names and health of `/readyz`'s components.
fn components(body: &Value) -> BTreeMap<String, bool> {
    body["components"]
        .as_array()
        .unwrap_or_else(|| panic!("no components: {body}"))
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_owned(),
                c["healthy"].as_bool().unwrap(),
            )
        })
        .collect()
}

/// The body shape every role's `/readyz` shares (the API's `Readiness`).
fn assert_readiness_shape(status: u16, body: &Value) {
    let ready = status == 200;
    assert_eq!(
        body["status"],
        if ready { "ready" } else { "not_ready" },
        "{body}"
    );
    assert!(body["components"].is_array(), "{body}");
    // A state from the fixed vocabulary, never error text (contract
    // section 4: the reasons go to the log).
    for component in body["components"].as_array().unwrap() {
        let state = component["state"].as_str().unwrap_or_default();
        assert!(
            [
                "starting",
                "connecting",
                "reconnecting",
                "ready",
                "standby",
                "blocked",
                "queue_in_use",
                "unavailable",
                "failed"
            ]
            .contains(&state),
            "{body}"
        );
        assert!(component.get("detail").is_none(), "{body}");
    }
    if ready {
        assert!(body.get("error").is_none(), "{body}");
    } else {
        assert_eq!(body["error"]["code"], "not_ready", "{body}");
        assert!(body["error"]["message"].is_string(), "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_until_rabbitmq_was_reached_in_every_role() {
    let db = TestDb::create("readyroles").await;
    let (exchange, queue) = exchange_and_queue("readyroles");
    let _cleanup = Cleanup {
        queue: queue.clone(),
        exchange: exchange.clone(),
        database: db.name.clone(),
    };
    let proxy = TcpProxy::start(upstream(&amqp_url()).await).await;
    let url = via(&amqp_url(), proxy.addr());

    // --- capture,api: RabbitMQ unreachable from the start ----------------
    proxy.cut();
    let walcast = Walcast::start_roles(&db, &url, &exchange, &queue, "capture,api").await;
    // The very first answer already: the components are registered before
    // the listener serves, not when they first report.
    let (status, _, body) = walcast.get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    let rabbitmq_named = |body: &Value| {
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("rabbitmq ("))
    };
    let not_ready = walcast.readyz_until(503, TIMEOUT, rabbitmq_named).await;
    assert_readiness_shape(503, &not_ready);
    let named = components(&not_ready);
    assert_eq!(named.get("rabbitmq"), Some(&false), "{not_ready}");
    assert_eq!(named.get("slot_stream"), Some(&false), "{not_ready}");
    assert_eq!(named.get("capture"), Some(&true), "{not_ready}");
    assert_eq!(named.get("api_postgres"), Some(&true), "{not_ready}");
    walcast
        .scrape_until("rabbitmq to show as unhealthy", |s| {
            s.get("walcast_component_healthy", &[("component", "rabbitmq")]) == Some(0.0)
        })
        .await;

    proxy.resume();
    let ready = walcast.readyz_until(200, TIMEOUT, |_| true).await;
    assert_readiness_shape(200, &ready);
    let named = components(&ready);
    for component in ["api_postgres", "capture", "rabbitmq", "slot_stream"] {
        assert_eq!(named.get(component), Some(&true), "{ready}");
    }
    // Ready means capturing: a psql change gets confirmed by RabbitMQ.
    db.psql("INSERT INTO orders (customer_name, product_name) VALUES ('Ada', 'lamp')")
        .await;
    walcast
        .scrape_until("the change to be confirmed", |s| {
            s.get(
                "walcast_publisher_confirmed_total",
                &[("table", "public.orders"), ("op", "insert")],
            ) == Some(1.0)
        })
        .await;
    walcast.stop().await;

    // --- gateway alone: not ready until it consumes ------------------------
    proxy.cut();
    let walcast = Walcast::start_roles(&db, &url, &exchange, &queue, "gateway").await;
    let (status, _, body) = walcast.get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_readiness_shape(503, &body);
    assert_eq!(
        components(&body),
        BTreeMap::from([("gateway".to_owned(), false)]),
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("not ready: gateway ("),
        "{body}"
    );
    let (status, _, body) = walcast.get("/healthz").await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"status": "ok"})
    );
    proxy.resume();
    let ready = walcast.readyz_until(200, TIMEOUT, |_| true).await;
    assert_readiness_shape(200, &ready);
    assert_eq!(
        components(&ready),
        BTreeMap::from([("gateway".to_owned(), true)]),
        "{ready}"
    );
    walcast.stop().await;

    // --- api alone: RabbitMQ is none of its business -----------------------
    proxy.cut();
    let walcast = Walcast::start_roles(&db, &url, &exchange, &queue, "api").await;
    let ready = walcast.readyz_until(200, TIMEOUT, |_| true).await;
    assert_readiness_shape(200, &ready);
    assert_eq!(
        components(&ready),
        BTreeMap::from([("api_postgres".to_owned(), true)]),
        "{ready}"
    );
    walcast.stop().await;
}
