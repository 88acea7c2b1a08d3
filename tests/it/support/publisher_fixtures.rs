//! Fixtures for the publisher tests: events, configs, and a bound queue to
//! read the published messages back from.
//!
//! Each test gets exchange and queue names of its own (`unique`) and deletes
//! them at the end, so tests run in parallel against the shared broker.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicConsumeOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use serde_json::Value;
use tokio::task::JoinHandle;
use walcast::config::RabbitConfig;
use walcast::event::{ChangeEvent, Datum, EventId, Lsn, Op, PgTimestamp, Row};

/// The shared broker (never broken by tests).
pub fn shared_amqp_url() -> String {
    std::env::var("WALCAST_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// The shared broker's address, for proxies.
pub fn shared_amqp_addr() -> std::net::SocketAddr {
    let url: lapin::uri::AMQPUri = shared_amqp_url().parse().unwrap();
    let host = if url.authority.host == "localhost" {
        "127.0.0.1".to_owned()
    } else {
        url.authority.host.clone()
    };
    format!("{host}:{}", url.authority.port).parse().unwrap()
}

/// `url` with its host and port replaced by 127.0.0.1:`port`.
pub fn via_port(url: &str, port: u16) -> String {
    let mut uri: lapin::uri::AMQPUri = url.parse().unwrap();
    let user = uri.authority.userinfo.username.clone();
    let password = uri.authority.userinfo.password.clone();
    uri.authority.port = port;
    let vhost = if uri.vhost == "/" {
        "%2f".to_owned()
    } else {
        uri.vhost.clone()
    };
    format!("amqp://{user}:{password}@127.0.0.1:{port}/{vhost}")
}

pub fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("walcast.pubtest.{tag}.{}.{nanos}", std::process::id())
}

pub fn config(url: &str, exchange: &str, window: usize, max_backoff_ms: u64) -> RabbitConfig {
    RabbitConfig {
        url: url.to_owned(),
        exchange: exchange.to_owned(),
        publish_window: window,
        max_backoff_ms,
        ..RabbitConfig::default()
    }
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "walcast=info".into()),
        )
        .try_init();
}

/// Commit LSN of test transaction `tx`.
pub fn commit_lsn(tx: u64) -> Lsn {
    Lsn(0x1_0000_0000 + tx * 0x100)
}

/// End LSN of test transaction `tx`.
pub fn end_lsn(tx: u64) -> Lsn {
    Lsn(commit_lsn(tx).0 + 0x28)
}

/// The `ordinal`-th insert of transaction `tx` into `public.<table>`.
pub fn event(table: &str, tx: u64, ordinal: u32) -> ChangeEvent {
    let id: Arc<str> = Arc::from("id");
    let n = Datum::Int((tx * 1000 + ordinal as u64) as i64);
    ChangeEvent {
        id: EventId {
            commit_lsn: commit_lsn(tx),
            ordinal,
        },
        op: Op::Insert,
        schema: Arc::from("public"),
        table: Arc::from(table),
        key: Some(Row::new(vec![(id.clone(), n.clone())])),
        new: Some(Row::new(vec![
            (id, n),
            (
                Arc::from("note"),
                Datum::Text(format!("row {ordinal} of {tx}")),
            ),
        ])),
        old: None,
        changed: None,
        unchanged_toast: vec![],
        lsn: Lsn(commit_lsn(tx).0 - 0x80 + ordinal as u64),
        commit_lsn: commit_lsn(tx),
        xid: 1000 + tx as u32,
        // 2026-11-22T05:04:10.580065Z, plus tx seconds.
        commit_time: PgTimestamp(848_639_050_580_065 + tx as i64 * 1_000_000),
    }
}

/// A durable queue bound to the exchange with `#`, on its own connection.
pub struct BoundQueue {
    connection: Connection,
    channel: Channel,
    pub exchange: String,
    pub queue: String,
}

impl BoundQueue {
    /// Declares the exchange as the publisher does, a durable queue, and
    /// the binding.
    pub async fn declare(url: &str, exchange: &str, queue: &str) -> BoundQueue {
        Self::declare_with(url, exchange, queue, FieldTable::default()).await
    }

    /// [`BoundQueue::declare`] with queue arguments (`x-max-length`, …).
    pub async fn declare_with(
        url: &str,
        exchange: &str,
        queue: &str,
        arguments: FieldTable,
    ) -> BoundQueue {
        let connection = Connection::connect(url, ConnectionProperties::default())
            .await
            .expect("test connection");
        let channel = connection.create_channel().await.unwrap();
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
            .await
            .unwrap();
        channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                arguments,
            )
            .await
            .unwrap();
        channel
            .queue_bind(
                queue.into(),
                exchange.into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        BoundQueue {
            connection,
            channel,
            exchange: exchange.to_owned(),
            queue: queue.to_owned(),
        }
    }

    /// A consumer of the queue with auto-ack (`no_ack`).
    async fn consume(&self, tag: &str) -> lapin::Consumer {
        self.channel
            .basic_consume(
                self.queue.as_str().into(),
                tag.into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap()
    }

    /// Reads deliveries until `done` says so or `limit` passes; auto-ack.
    pub async fn read_until(
        &self,
        limit: Duration,
        mut done: impl FnMut(&[Delivery]) -> bool,
    ) -> Vec<Delivery> {
        let mut consumer = self.consume("").await;
        let mut deliveries = Vec::new();
        let _ = tokio::time::timeout(limit, async {
            while !done(&deliveries) {
                match consumer.next().await {
                    Some(Ok(delivery)) => deliveries.push(delivery),
                    _ => break,
                }
            }
        })
        .await;
        deliveries
    }

    /// Consumes the queue in the background (auto-ack) and keeps every
    /// delivery's body, parsed as JSON, in arrival order (repeats
    /// included); abort the task to stop.
    pub async fn collect_json(&self, tag: &str) -> (Arc<Mutex<Vec<Value>>>, JoinHandle<()>) {
        let mut consumer = self.consume(tag).await;
        let events: Arc<Mutex<Vec<Value>>> = Arc::default();
        let sink = Arc::clone(&events);
        let task = tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                let event: Value = serde_json::from_slice(&delivery.data).expect("event JSON");
                sink.lock().unwrap().push(event);
            }
        });
        (events, task)
    }

    /// Reads until `n` deliveries arrived (or `limit`).
    pub async fn read(&self, n: usize, limit: Duration) -> Vec<Delivery> {
        self.read_until(limit, |d| d.len() >= n).await
    }

    /// Reads until `n` distinct message ids arrived (or `limit`); returns
    /// the ids in arrival order, duplicates included.
    pub async fn read_distinct_ids(&self, n: usize, limit: Duration) -> Vec<String> {
        let mut seen = HashSet::new();
        let deliveries = self
            .read_until(limit, |d| {
                if let Some(last) = d.last() {
                    seen.insert(message_id(last));
                }
                seen.len() >= n
            })
            .await;
        deliveries.iter().map(message_id).collect()
    }

    /// Deletes the queue and the exchange, and closes the connection.
    pub async fn delete(self) {
        let _ = self
            .channel
            .queue_delete(self.queue.as_str().into(), QueueDeleteOptions::default())
            .await;
        let _ = self
            .channel
            .exchange_delete(
                self.exchange.as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await;
        let _ = self.connection.close(200, "done".into()).await;
    }

    pub async fn close(self) {
        let _ = self.connection.close(200, "done".into()).await;
    }
}

pub fn message_id(delivery: &Delivery) -> String {
    delivery
        .properties
        .message_id()
        .as_ref()
        .map(|id| id.as_str().to_owned())
        .unwrap_or_default()
}
