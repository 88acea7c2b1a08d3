//! Test support for end-to-end delivery tests: a `walcast run` child
//! process, a steady writer of orders, and an audit queue bound to the
//! exchange that records every event id RabbitMQ routed.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;
use tokio_util::sync::CancellationToken;

use super::pgtest::TestDb;
use super::poll;

pub fn shared_amqp_url() -> String {
    std::env::var("WALCAST_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// The address a `walcast run` process listens on, from its log line
/// "walcast is running" (text or JSON log format): it binds the port it is
/// given, 0 for any, and reports the one it got.
pub fn listen_address(line: &str) -> Option<SocketAddr> {
    if !line.contains("walcast is running") {
        return None;
    }
    if let Ok(entry) = serde_json::from_str::<Value>(line) {
        return entry["fields"]["address"].as_str()?.parse().ok();
    }
    let (_, rest) = line.split_once(" address=")?;
    rest.split_whitespace().next()?.parse().ok()
}

/// How one `walcast run` process is started.
#[derive(Clone)]
pub struct RunSpec {
    pub amqp_url: String,
    pub exchange: String,
    pub queue: String,
    pub roles: &'static str,
    pub replay_dir: Option<String>,
}

/// A `walcast run` child process on a port of its own choosing; its stderr
/// is kept for failure messages.
pub struct Walcast {
    pub child: Child,
    pub address: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl Walcast {
    pub async fn start(db: &TestDb, spec: &RunSpec) -> Walcast {
        Self::start_with_env(db, spec, &[]).await
    }

    /// [`Walcast::start`] with extra environment (auth, log level), set
    /// after the defaults so it may override them.
    pub async fn start_with_env(db: &TestDb, spec: &RunSpec, env: &[(&str, &str)]) -> Walcast {
        Self::start_on(db, spec, env, "127.0.0.1:0").await
    }

    /// [`Walcast::start_with_env`] on the address `listen`: a restart that
    /// clients must find again where the previous process was.
    pub async fn start_on(
        db: &TestDb,
        spec: &RunSpec,
        env: &[(&str, &str)],
        listen: &str,
    ) -> Walcast {
        let mut cmd = db.walcast(&[
            "run",
            "--role",
            spec.roles,
            "--rabbitmq-url",
            &spec.amqp_url,
            "--exchange",
            &spec.exchange,
            "--listen",
            listen,
        ]);
        cmd.env("WALCAST_RABBITMQ_QUEUE", &spec.queue)
            .env("WALCAST_RABBITMQ_MAX_BACKOFF_MS", "1000")
            .env("WALCAST_POSTGRES_MAX_BACKOFF_MS", "1000")
            .env("WALCAST_POSTGRES_STATUS_INTERVAL_MS", "1000")
            .env("WALCAST_FANOUT_REPLAY_BUFFER", "100000")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(dir) = &spec.replay_dir {
            cmd.env("WALCAST_FANOUT_REPLAY_DIR", dir);
        }
        cmd.envs(env.iter().copied());
        let mut child = cmd.spawn().expect("spawn walcast run");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (address_tx, address_rx) = tokio::sync::oneshot::channel();
        let sink = log.clone();
        tokio::spawn(async move {
            let mut address_tx = Some(address_tx);
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(address) = listen_address(&line) {
                    if let Some(tx) = address_tx.take() {
                        let _ = tx.send(address);
                    }
                }
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let address = match tokio::time::timeout(Duration::from_secs(30), address_rx).await {
            Ok(Ok(address)) => address,
            Ok(Err(_)) => panic!(
                "walcast exited before it listened; log:\n{}",
                log.lock().unwrap()
            ),
            Err(_) => panic!(
                "walcast did not report its address within 30 s; log:\n{}",
                log.lock().unwrap()
            ),
        };
        Walcast {
            child,
            address,
            log,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// `GET /readyz`: the status code and the body.
    pub async fn readyz(&self) -> (u16, Value) {
        let response = reqwest::get(format!("{}/readyz", self.url()))
            .await
            .expect("GET /readyz");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Waits until `/readyz` answers 200: every role is up (a gateway's
    /// queue is bound, so no later commit passes it by).
    pub async fn wait_ready(&self) {
        poll(Duration::from_secs(60), || async {
            match self.readyz().await {
                (200, _) => Ok(()),
                (status, body) => Err(format!("/readyz {status}: {body}")),
            }
        })
        .await
        .unwrap_or_else(|last| {
            panic!(
                "walcast never got ready: {last}; log:\n{}",
                log_tail(&self.log())
            )
        });
    }

    /// Waits until walcast's log has a line containing `needle`.
    pub async fn wait_for_log(&self, needle: &str) {
        poll(Duration::from_secs(30), || async {
            self.log().contains(needle)
        })
        .await
        .unwrap_or_else(|_| panic!("walcast never logged {needle:?}:\n{}", self.log()));
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Sends `signal` and waits at most `limit` for the process to exit;
    /// fails the test with the log's tail when it does not.
    pub async fn stop_within(&mut self, signal: &str, limit: Duration) -> std::process::ExitStatus {
        self.signal(signal);
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(status) => status.expect("wait for walcast"),
            Err(_) => panic!(
                "walcast did not exit within {limit:?} of SIG{signal}; log:\n{}",
                log_tail(&self.log())
            ),
        }
    }

    pub fn signal(&self, signal: &str) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args([&format!("-{signal}"), &pid.to_string()])
                .status();
        }
    }

    /// SIGKILL: no shutdown path runs.
    pub async fn kill(&mut self) -> String {
        self.child.start_kill().unwrap();
        self.child.wait().await.unwrap();
        self.log()
    }

    /// SIGTERM and wait for a clean exit.
    pub async fn stop(mut self) -> String {
        self.signal("TERM");
        let status = tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .expect("walcast stopped within 60 s")
            .unwrap();
        assert!(
            status.success(),
            "walcast exited with {status}:\n{}",
            self.log()
        );
        self.log()
    }
}

/// A queue of the test's own bound to the exchange with `#`: what
/// RabbitMQ routed, recorded by event id. It reconnects on its own, and
/// acks only after recording, so a broker restart loses nothing here.
pub struct Audit {
    pub ids: Arc<Mutex<BTreeSet<String>>>,
    /// Row ids of insert events.
    pub inserted: Arc<Mutex<BTreeSet<i64>>>,
    stop: CancellationToken,
}

impl Audit {
    pub async fn start(amqp_url: &str, exchange: &str, queue: &str) -> Audit {
        let ids: Arc<Mutex<BTreeSet<String>>> = Default::default();
        let inserted: Arc<Mutex<BTreeSet<i64>>> = Default::default();
        let stop = CancellationToken::new();
        // Declare and bind before any event is published.
        let connection = Connection::connect(amqp_url, ConnectionProperties::default())
            .await
            .expect("connect to rabbitmq");
        let channel = connection.create_channel().await.unwrap();
        declare(&channel, exchange, queue).await;
        let _ = connection.close(200, "ok".into()).await;

        let (url, exchange, queue) = (amqp_url.to_owned(), exchange.to_owned(), queue.to_owned());
        let (task_ids, task_inserted, task_stop) = (ids.clone(), inserted.clone(), stop.clone());
        tokio::spawn(async move {
            while !task_stop.is_cancelled() {
                let session = consume(&url, &exchange, &queue, &task_ids, &task_inserted);
                tokio::select! {
                    _ = task_stop.cancelled() => break,
                    _ = session => {}
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        });
        Audit {
            ids,
            inserted,
            stop,
        }
    }

    pub fn count(&self) -> usize {
        self.ids.lock().unwrap().len()
    }

    /// Waits until every row id in `expected` has an insert event.
    pub async fn wait_inserted(
        &self,
        expected: &BTreeSet<i64>,
        timeout: Duration,
        walcast: &Walcast,
    ) {
        poll(timeout, || async {
            let seen = self.inserted.lock().unwrap();
            let missing: Vec<i64> = expected.difference(&seen).copied().take(5).collect();
            if missing.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "rows {missing:?} ({} of {} seen)",
                    seen.len(),
                    expected.len()
                ))
            }
        })
        .await
        .unwrap_or_else(|last| {
            panic!(
                "the audit queue misses inserts, e.g. {last}; walcast log:\n{}",
                log_tail(&walcast.log())
            )
        });
    }

    pub async fn delete(self, amqp_url: &str, queue: &str) {
        self.stop.cancel();
        if let Ok(connection) = Connection::connect(amqp_url, ConnectionProperties::default()).await
        {
            if let Ok(channel) = connection.create_channel().await {
                let _ = channel
                    .queue_delete(queue.into(), QueueDeleteOptions::default())
                    .await;
            }
            let _ = connection.close(200, "ok".into()).await;
        }
    }
}

async fn declare(channel: &lapin::Channel, exchange: &str, queue: &str) {
    try_declare(channel, exchange, queue)
        .await
        .expect("declare and bind the audit queue");
}

async fn try_declare(
    channel: &lapin::Channel,
    exchange: &str,
    queue: &str,
) -> Result<(), lapin::Error> {
    channel
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

async fn consume(
    url: &str,
    exchange: &str,
    queue: &str,
    ids: &Mutex<BTreeSet<String>>,
    inserted: &Mutex<BTreeSet<i64>>,
) {
    let Ok(connection) = Connection::connect(url, ConnectionProperties::default()).await else {
        return;
    };
    // A cut connection does not always end the delivery stream, and an ack
    // on it may never answer (as in walcast's own consumer): watch the
    // connection's events and bound every ack.
    let mut events = connection.events_listener();
    let Ok(channel) = connection.create_channel().await else {
        return;
    };
    // The broker may be half up (restarting): fail this session, not the test.
    if try_declare(&channel, exchange, queue).await.is_err() {
        return;
    }
    let Ok(mut consumer) = channel
        .basic_consume(
            queue.into(),
            "audit".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
    else {
        return;
    };
    loop {
        let delivery = tokio::select! {
            event = events.next() => match event {
                Some(lapin::Event::Error(_)) | None => return,
                Some(_) => continue,
            },
            next = consumer.next() => match next {
                Some(Ok(delivery)) => delivery,
                _ => return,
            },
        };
        let event: Value = serde_json::from_slice(&delivery.data).expect("event JSON");
        let id = event["id"].as_str().unwrap().to_owned();
        if let Some(message_id) = delivery.properties.message_id() {
            assert_eq!(message_id.as_str(), id, "message_id is the event id");
        }
        if event["op"] == "insert" {
            inserted
                .lock()
                .unwrap()
                .insert(event["new"]["id"].as_i64().unwrap());
        }
        ids.lock().unwrap().insert(id);
        let ack = delivery.acker.ack(BasicAckOptions::default());
        if !matches!(
            tokio::time::timeout(Duration::from_secs(10), ack).await,
            Ok(Ok(_))
        ) {
            return;
        }
    }
}

/// Inserts `transactions × rows` orders at a steady pace, retrying a
/// transaction whose connection broke (a retry may insert it twice: the
/// table, read afterwards, is the truth).
pub fn spawn_writer(
    url: String,
    transactions: usize,
    rows: usize,
    pause: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut client = None;
        let mut done = 0;
        while done < transactions {
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
            let sql = format!(
                "INSERT INTO orders (customer_name, product_name) \
                 SELECT 'customer ' || g, 'product {done}' FROM generate_series(1, {rows}) g"
            );
            match client.as_ref().unwrap().batch_execute(&sql).await {
                Ok(()) => done += 1,
                Err(_) => client = None,
            }
            tokio::time::sleep(pause).await;
        }
    })
}

/// The row ids in `orders`: every one must have reached RabbitMQ.
pub async fn order_ids(db: &TestDb) -> BTreeSet<i64> {
    let client = db.client().await;
    client
        .query("SELECT id FROM orders", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, i64>(0))
        .collect()
}

/// The last 80 lines of walcast's own log, for a failure message; lapin's
/// reconnect noise would otherwise push everything else out.
pub fn log_tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().filter(|l| !l.contains(" lapin::")).collect();
    lines[lines.len().saturating_sub(80)..].join("\n")
}

pub fn unique(tag: &str) -> String {
    format!(
        "walcast.test.{tag}.{}.{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
            % 1_000_000_000
    )
}
