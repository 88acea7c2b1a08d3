//! Test harness for the fan-out: a gateway (hub + consumer + Socket.IO
//! server on 127.0.0.1:0) on its own exchange and queue, a publisher that
//! sends crafted change events the way the contract says, and Node
//! socket.io-client processes driven over stdin/stdout.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::serve::ListenerExt;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueDeleteOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use walcast::config::RabbitConfig;
use walcast::consumer::{Consumer, ConsumerStatus};
use walcast::event::{ChangeEvent, Datum, EventId, Lsn, Op, PgTimestamp, Row};
use walcast::fanout::{self, Hub, HubOptions};

pub const TIMEOUT: Duration = Duration::from_secs(30);

/// The `x-walcast-source` the test publisher stamps on every message, as
/// walcast's capture does (contract section 2).
pub const TEST_SOURCE: &str = "7000000000000000001/walcast_test/walcast_test";

pub fn amqp_url() -> String {
    std::env::var("WALCAST_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{}.{}.{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Polls `cond` until it holds or `timeout` passes.
pub async fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    super::poll(timeout, || std::future::ready(cond()))
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

/// VmRSS of this process, in KiB.
pub fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

pub struct Gateway {
    pub hub: Hub,
    pub addr: std::net::SocketAddr,
    pub consumer: ConsumerStatus,
    pub shutdown: CancellationToken,
    pub exchange: String,
    pub queue: String,
    publisher: Publisher,
    server: tokio::task::JoinHandle<()>,
    consumer_task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
pub struct GatewayOptions {
    pub hub: HubOptions,
    pub drop_connection_before_ack: Option<u64>,
    /// End the whole process after handing this delivery to the hub.
    pub exit_process_before_ack: Option<u64>,
    /// Exchange and queue to use (a restarted gateway); fresh unique ones
    /// when `None`.
    pub names: Option<(String, String)>,
    /// Postgres to take the history start from.
    pub history_start: Option<tokio_postgres::Config>,
    /// `rabbitmq.queue_expires_ms`; walcast's default when `None`.
    pub queue_expires_ms: Option<u64>,
    /// `rabbitmq.queue_type`; walcast's default (classic) when `None`.
    pub queue_type: Option<walcast::config::QueueType>,
    /// `rabbitmq.source` (a pinned source); unpinned when `None`.
    pub pinned_source: Option<String>,
}

/// The consumer with the faults [`GatewayOptions`] ask for (feature
/// `fault-injection`, which scripts/test.sh turns on).
#[cfg(feature = "fault-injection")]
fn with_faults(
    mut consumer: Consumer,
    drop_before: Option<u64>,
    exit_before: Option<u64>,
) -> Consumer {
    if let Some(n) = drop_before {
        consumer = consumer.drop_connection_before_ack(n);
    }
    if let Some(n) = exit_before {
        consumer = consumer.exit_process_before_ack(n);
    }
    consumer
}

/// Without the feature a test cannot inject faults: say so instead of
/// running the test without them.
#[cfg(not(feature = "fault-injection"))]
fn with_faults(consumer: Consumer, drop_before: Option<u64>, exit_before: Option<u64>) -> Consumer {
    assert!(
        drop_before.is_none() && exit_before.is_none(),
        "fault injection needs `cargo test --features fault-injection` (scripts/test.sh sets it)"
    );
    consumer
}

/// The dead-letter exchange and queue of a test gateway's queue.
pub fn dead_letter_name(queue: &str) -> String {
    format!("{queue}.dead")
}

/// Fresh, unique exchange and queue names for one test.
pub fn unique_names() -> (String, String) {
    let suffix = unique_suffix();
    (
        format!("walcast.test.{suffix}"),
        format!("walcast.test.{suffix}.gateway"),
    )
}

/// Publishes crafted events to a test exchange, with publisher confirms.
pub struct Publisher {
    channel: Channel,
    _conn: Connection,
    exchange: String,
}

impl Publisher {
    /// Connects and declares `exchange` (durable topic, as walcast does).
    pub async fn connect(exchange: &str) -> Publisher {
        let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .unwrap();
        let channel = conn.create_channel().await.unwrap();
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        channel
            .exchange_declare(
                ShortString::from(exchange),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        Publisher {
            channel,
            _conn: conn,
            exchange: exchange.to_owned(),
        }
    }

    /// Publishes an event as the publisher does (contract section 2) and
    /// waits for the broker's confirm; returns the body.
    pub async fn publish(&self, event: &ChangeEvent) -> Vec<u8> {
        let body = event.to_json();
        self.publish_raw(&event.routing_key(), &body, Some(&event.id.to_string()))
            .await;
        body
    }

    pub async fn publish_raw(&self, routing_key: &str, body: &[u8], message_id: Option<&str>) {
        let mut properties = BasicProperties::default()
            .with_content_type(ShortString::from("application/json"))
            .with_delivery_mode(2)
            .with_app_id(ShortString::from("walcast"));
        if let Some(id) = message_id {
            properties = properties.with_message_id(ShortString::from(id));
        }
        let properties = walcast::publisher::encoder::with_source(properties, TEST_SOURCE);
        self.publish_with(routing_key, body, properties).await
    }

    /// Publishes with exactly these properties and waits for the confirm.
    pub async fn publish_with(&self, routing_key: &str, body: &[u8], properties: BasicProperties) {
        let confirm = self
            .channel
            .basic_publish(
                ShortString::from(self.exchange.as_str()),
                ShortString::from(routing_key),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirm.is_ack(), "broker nacked a test publish");
    }

    /// Deletes a test queue, its dead letters and this publisher's exchange.
    pub async fn delete(&self, queue: &str) {
        self.channel
            .queue_delete(ShortString::from(queue), QueueDeleteOptions::default())
            .await
            .ok();
        let dead = dead_letter_name(queue);
        self.channel
            .queue_delete(
                ShortString::from(dead.as_str()),
                QueueDeleteOptions::default(),
            )
            .await
            .ok();
        self.channel
            .exchange_delete(
                ShortString::from(dead.as_str()),
                ExchangeDeleteOptions::default(),
            )
            .await
            .ok();
        self.channel
            .exchange_delete(
                ShortString::from(self.exchange.as_str()),
                ExchangeDeleteOptions::default(),
            )
            .await
            .ok();
    }
}

impl Gateway {
    pub async fn start(options: GatewayOptions) -> Gateway {
        let (exchange, queue) = options.names.clone().unwrap_or_else(unique_names);
        let config = RabbitConfig {
            url: amqp_url(),
            exchange: exchange.clone(),
            queue: queue.clone(),
            prefetch: 200,
            max_backoff_ms: 200,
            queue_expires_ms: options
                .queue_expires_ms
                .unwrap_or(RabbitConfig::default().queue_expires_ms),
            queue_type: options.queue_type.unwrap_or_default(),
            dead_letter: dead_letter_name(&queue),
            source: options.pinned_source.clone().unwrap_or_default(),
            ..RabbitConfig::default()
        };
        let shutdown = CancellationToken::new();
        let hub = Hub::new(options.hub, shutdown.clone());

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let listener = listener.tap_io(|tcp| {
            // Change events are small writes that should leave at once.
            tcp.set_nodelay(true).ok();
        });
        let app = fanout::router(&hub);
        let server_shutdown = shutdown.clone();
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { server_shutdown.cancelled().await })
                .await
                .unwrap();
        });

        let mut consumer = Consumer::new(config, hub.clone());
        consumer = with_faults(
            consumer,
            options.drop_connection_before_ack,
            options.exit_process_before_ack,
        );
        if let Some(pg) = options.history_start {
            consumer = consumer.with_history_start(pg);
        }
        let status = consumer.status();
        let consumer_task = tokio::spawn(consumer.run(shutdown.clone()));
        wait_until("the consumer to consume", TIMEOUT, || status.is_consuming()).await;

        let publisher = Publisher::connect(&exchange).await;

        Gateway {
            hub,
            addr,
            consumer: status,
            shutdown,
            exchange,
            queue,
            publisher,
            server,
            consumer_task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Publishes an event as the publisher does (contract section 2) and
    /// waits for the broker's confirm; returns the body.
    pub async fn publish(&self, event: &ChangeEvent) -> Vec<u8> {
        self.publisher.publish(event).await
    }

    // Only the fault-injection modules use it.
    #[cfg(feature = "fault-injection")]
    pub async fn publish_raw(&self, routing_key: &str, body: &[u8], message_id: Option<&str>) {
        self.publisher
            .publish_raw(routing_key, body, message_id)
            .await
    }

    /// Gives the hub a history start as if the consumer had taken a
    /// snapshot with this `xmax` after binding its queue.
    // Only the fault-injection modules use it.
    #[cfg(feature = "fault-injection")]
    pub fn set_history_start(&self, xmax: u32) {
        let generation = self.hub.history_start_needed().expect("no start yet");
        let snapshot = format!("{xmax}:{xmax}:").parse().unwrap();
        assert!(self.hub.offer_history_start(&snapshot, generation));
    }

    pub async fn wait_delivered(&self, n: u64) {
        let stats = self.hub.stats();
        wait_until(&format!("{n} changes delivered"), TIMEOUT, || {
            stats.snapshot().delivered >= n
        })
        .await;
    }

    pub async fn wait_sockets(&self, n: u64) {
        let stats = self.hub.stats();
        wait_until(&format!("{n} attached sockets"), TIMEOUT, || {
            stats.snapshot().connected_sockets == n
        })
        .await;
    }

    /// Stops everything and deletes the test's queue and exchange.
    pub async fn teardown(self) {
        let (publisher, queue) = self.stop_inner().await;
        publisher.delete(&queue).await;
    }

    /// Whether `queue` exists on the test broker (a passive declare).
    // Only the fault-injection modules use it.
    #[cfg(feature = "fault-injection")]
    pub async fn queue_exists(queue: &str) -> bool {
        let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .unwrap();
        let channel = conn.create_channel().await.unwrap();
        let exists = channel
            .queue_declare(
                ShortString::from(queue),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .is_ok();
        conn.close(200, ShortString::from("done")).await.ok();
        exists
    }

    /// Stops gracefully and keeps the queue and exchange, for a restart on
    /// the same names. With a replay log, waits until its lock is free.
    pub async fn stop(self) {
        let dir = self.hub.options().replay_dir.clone();
        self.stop_inner().await;
        if let Some(dir) = dir {
            wait_for_lock_release(&dir).await;
        }
    }

    async fn stop_inner(self) -> (Publisher, String) {
        self.shutdown.cancel();
        tokio::time::timeout(TIMEOUT, self.consumer_task)
            .await
            .expect("consumer stops on shutdown")
            .unwrap();
        tokio::time::timeout(TIMEOUT, self.server).await.ok();
        (self.publisher, self.queue)
    }
}

/// Waits until no hub holds the replay log in `dir` (the last handle on a
/// stopped hub may be dropped by a task that is still finishing).
pub async fn wait_for_lock_release(dir: &Path) {
    let lock = std::fs::File::open(dir.join(walcast::fanout::LOCK_FILE)).unwrap();
    wait_until(
        "the replay log lock to be released",
        TIMEOUT,
        || match fs4::FileExt::try_lock(&lock) {
            Ok(()) => {
                fs4::FileExt::unlock(&lock).unwrap();
                true
            }
            Err(_) => false,
        },
    )
    .await;
}

/// The id of test event `n` (commit LSNs 0x1000 apart, ordinal 0).
pub fn event_id(n: u64) -> EventId {
    EventId {
        commit_lsn: Lsn(0x1_0000 + n * 0x1000),
        ordinal: 0,
    }
}

/// A crafted change event: number `n`, transaction `xid`, on
/// `schema.table`, row `id = key`, with `padding` bytes of text.
pub fn event(n: u64, xid: u32, table: &str, key: i64, padding: usize) -> ChangeEvent {
    let (schema, table) = table.split_once('.').unwrap();
    let id = event_id(n);
    let col = |name: &str| -> Arc<str> { Arc::from(name) };
    ChangeEvent {
        id,
        op: if n % 3 == 0 { Op::Update } else { Op::Insert },
        schema: Arc::from(schema),
        table: Arc::from(table),
        key: Some(Row::new(vec![(col("id"), Datum::Int(key))])),
        new: Some(Row::new(vec![
            (col("id"), Datum::Int(key)),
            (
                col("note"),
                Datum::Text(format!(
                    "event {n} — ünïcode \"quoted\" {}",
                    "x".repeat(padding)
                )),
            ),
            (col("price"), Datum::Text("12.50".into())),
            (col("ratio"), Datum::Float(0.1 + n as f64)),
        ])),
        old: None,
        changed: None,
        unchanged_toast: vec![],
        lsn: Lsn(id.commit_lsn.0 - 8),
        commit_lsn: id.commit_lsn,
        xid,
        commit_time: PgTimestamp(800_000_000_000_000 + n as i64),
    }
}

/// One line the Node client printed.
#[derive(Debug, Clone)]
pub struct Line(pub Value);

impl Line {
    pub fn kind(&self) -> &str {
        self.0["t"].as_str().unwrap_or("")
    }
    pub fn raw(&self) -> &str {
        self.0["raw"].as_str().expect("a change line")
    }
    /// The id of a `change` line.
    pub fn change_id(&self) -> String {
        let v: Value = serde_json::from_str(self.raw()).unwrap();
        v["id"].as_str().unwrap().to_owned()
    }
}

fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js")
}

/// Installs the Node client's dependencies once if they are missing.
pub fn ensure_node_modules() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let dir = js_dir();
        if dir.join("node_modules/socket.io-client").exists() {
            return;
        }
        let status = std::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .status()
            .expect("npm is installed");
        assert!(status.success(), "npm ci in tests/js failed");
    });
}

/// Runs the Node script in `mode` and returns the child with piped stdio.
pub fn spawn_node(options: Value) -> Child {
    ensure_node_modules();
    Command::new("node")
        .arg(js_dir().join("sio-client.mjs"))
        .arg(options.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("node is installed")
}

/// A socket.io-client in a Node process.
pub struct NodeClient {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::UnboundedReceiver<Line>,
    seq: u64,
}

impl NodeClient {
    pub fn spawn(url: &str, auth: Value) -> NodeClient {
        Self::spawn_with(json!({"url": url, "auth": auth}))
    }

    pub fn spawn_with(options: Value) -> NodeClient {
        let mut child = spawn_node(options);
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                let value: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("node printed a non-JSON line {line:?}: {e}"));
                if tx.send(Line(value)).is_err() {
                    break;
                }
            }
        });
        NodeClient {
            child,
            stdin,
            lines,
            seq: 0,
        }
    }

    /// Connects and waits for the `connect` line.
    pub async fn connect(url: &str, auth: Value) -> NodeClient {
        let mut client = Self::spawn(url, auth);
        let line = client.next().await;
        assert_eq!(line.kind(), "connect", "expected connect, got {line:?}");
        client
    }

    /// The next line; panics after [`TIMEOUT`].
    pub async fn next(&mut self) -> Line {
        self.next_within(TIMEOUT)
            .await
            .expect("timed out waiting for the node client")
    }

    pub async fn next_within(&mut self, timeout: Duration) -> Option<Line> {
        match tokio::time::timeout(timeout, self.lines.recv()).await {
            Ok(Some(line)) => Some(line),
            Ok(None) => panic!("the node client exited"),
            Err(_) => None,
        }
    }

    /// The next `n` change payloads; any other line fails the test.
    pub async fn changes(&mut self, n: usize) -> Vec<String> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let line = self.next().await;
            assert_eq!(line.kind(), "change", "expected a change, got {line:?}");
            out.push(line.raw().to_owned());
        }
        out
    }

    /// Emits `event` with `data` and waits for its ack.
    pub async fn request(&mut self, event: &str, data: Option<Value>) -> Value {
        self.seq += 1;
        let mut cmd = json!({"cmd": "emit", "event": event, "seq": self.seq});
        if let Some(data) = data {
            cmd["data"] = data;
        }
        self.send(cmd).await;
        // Acks come back in order with everything else the client prints;
        // the tests ask only when no change is due.
        let line = self.next().await;
        assert!(
            line.kind() == "ack" && line.0["seq"] == self.seq,
            "expected the ack of request {}, got {line:?}",
            self.seq
        );
        assert!(line.0.get("error").is_none(), "ack failed: {line:?}");
        line.0["data"].clone()
    }

    /// Emits without asking for an ack.
    // Only the fault-injection modules use it.
    #[cfg(feature = "fault-injection")]
    pub async fn emit_no_ack(&mut self, event: &str, data: Value) {
        self.send(json!({"cmd": "emit", "event": event, "data": data, "noack": true}))
            .await;
    }

    pub async fn send(&mut self, cmd: Value) {
        let mut line = cmd.to_string();
        line.push('\n');
        self.stdin.write_all(line.as_bytes()).await.unwrap();
        self.stdin.flush().await.unwrap();
    }

    pub async fn close(mut self) {
        self.send(json!({"cmd": "close"})).await;
        tokio::time::timeout(TIMEOUT, self.child.wait()).await.ok();
    }
}
