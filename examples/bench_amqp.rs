//! Benchmark helper (not part of walcast): a plain lapin publisher, the
//! baseline walcast's publishing is compared with, plus AMQP cleanup.
//!
//!   cargo run --release --example bench_amqp -- publish --exchange X --queue Q \
//!       --count 1000000 --size 560 --window 1024
//!   cargo run --release --example bench_amqp -- pipeline --exchange X --queue Q \
//!       --count 200000 --size 480 --window 1024 --prefetch 1000
//!   cargo run --release --example bench_amqp -- delete --exchange X --queue Q
//!
//! `publish` declares a durable topic exchange and a durable queue bound to
//! it with `#` (what a walcast gateway does), then sends `count` persistent
//! messages of `size` bytes on one channel in confirm mode, keeping up to
//! `window` unconfirmed at once (walcast's `rabbitmq.publish_window`), with
//! the properties walcast sets (content type, message id, timestamp, app
//! id, and with `--source` its `x-walcast-source` header) and routing keys
//! cycling insert/update/delete. It prints one JSON
//! line: `{"messages":…,"seconds":…,"rate":…}`, timed from the first publish
//! to the last confirm, and deletes the queue and exchange unless `--keep`.
//!
//! `pipeline` is the baseline of walcast's whole pipeline (capture,
//! publisher, gateway consumer): the same publisher, plus a consumer on a
//! connection of its own consuming the bound queue at the same time, as a
//! gateway does: the queue declared with a gateway's arguments
//! (`x-queue-type` classic, `x-expires`), `basic.qos` of walcast's
//! `rabbitmq.prefetch`, and acks as the gateway sends them (one
//! `multiple` ack for up to 256 deliveries, sent once none is waiting). It
//! prints `{"messages":…,"seconds":…,"rate":…,"cpu_seconds":…}`, timed from
//! the first publish until the consumer has acked the last message, with
//! this process's CPU time over the run.
//!
//! `declare --gateway` declares the queue with a gateway's arguments, so
//! that `walcast run` consumes a queue that was bound before its capture
//! published anything.
//!
//! `delete` deletes the named queues and exchanges (missing ones are fine).
//!
//! `wait-metric` waits until a metric on a walcast's `/metrics` reaches a
//! value, polling it from this one process (every 50 ms by default), and
//! fails if the walcast process exits first. It is how `drain.sh` waits for
//! `walcast run` to ack the backlog: a shell loop spawning `curl`, `awk`
//! and `date` ten times a second took 6-7 % of this 2-core machine's CPU
//! from the run it timed (and none from the baseline, which times itself).

use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    url: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Publish {
        #[arg(long)]
        exchange: String,
        #[arg(long)]
        queue: String,
        #[arg(long, default_value_t = 100_000)]
        count: u64,
        /// Body size in bytes.
        #[arg(long, default_value_t = 512)]
        size: usize,
        /// Unconfirmed messages in flight at most.
        #[arg(long, default_value_t = 1024)]
        window: usize,
        /// The `x-walcast-source` header every message carries, as
        /// walcast's do (`<system id>/<database>/<slot>`); none if absent.
        #[arg(long)]
        source: Option<String>,
        /// Leave the exchange and queue in place.
        #[arg(long)]
        keep: bool,
    },
    /// Publish as `publish` does while a consumer on another connection
    /// consumes the queue as a gateway does.
    Pipeline {
        #[arg(long)]
        exchange: String,
        #[arg(long)]
        queue: String,
        #[arg(long, default_value_t = 100_000)]
        count: u64,
        #[arg(long, default_value_t = 512)]
        size: usize,
        #[arg(long, default_value_t = 1024)]
        window: usize,
        /// `basic.qos` of the consumer (walcast's `rabbitmq.prefetch`).
        #[arg(long, default_value_t = 1000)]
        prefetch: u16,
        /// As for `publish`.
        #[arg(long)]
        source: Option<String>,
    },
    /// Declare the durable topic exchange and a durable queue bound with `#`.
    Declare {
        #[arg(long)]
        exchange: String,
        #[arg(long)]
        queue: String,
        /// With a gateway queue's arguments (`x-queue-type`, `x-expires`).
        #[arg(long)]
        gateway: bool,
    },
    Delete {
        #[arg(long)]
        exchange: Vec<String>,
        #[arg(long)]
        queue: Vec<String>,
    },
    /// Wait until a walcast metric (without labels) reaches `at_least`.
    WaitMetric {
        /// walcast's HTTP listener, `host:port`.
        #[arg(long)]
        endpoint: String,
        #[arg(long)]
        metric: String,
        #[arg(long)]
        at_least: f64,
        /// Fail when this process is gone before the metric gets there.
        #[arg(long)]
        pid: Option<u32>,
        #[arg(long, default_value_t = 50)]
        interval_ms: u64,
        #[arg(long, default_value_t = 3600)]
        timeout_s: u64,
    },
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if let Command::WaitMetric {
        endpoint,
        metric,
        at_least,
        pid,
        interval_ms,
        timeout_s,
    } = &args.command
    {
        let interval = std::time::Duration::from_millis(*interval_ms);
        let deadline = Instant::now() + std::time::Duration::from_secs(*timeout_s);
        loop {
            if scrape(endpoint, metric)
                .await
                .is_some_and(|v| v >= *at_least)
            {
                return Ok(());
            }
            if let Some(pid) = pid {
                if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                    bail!("process {pid} exited before {metric} reached {at_least}");
                }
            }
            if Instant::now() >= deadline {
                bail!("{metric} did not reach {at_least} within {timeout_s} s");
            }
            tokio::time::sleep(interval).await;
        }
    }
    let connection = Connection::connect(&args.url, ConnectionProperties::default())
        .await
        .context("connect to rabbitmq")?;
    match args.command {
        Command::Publish {
            exchange,
            queue,
            count,
            size,
            window,
            source,
            keep,
        } => {
            let channel = connection.create_channel().await?;
            declare(&channel, &exchange, &queue, false).await?;
            let messages = Messages {
                count,
                size,
                source,
            };
            let result = publish(&channel, &exchange, &messages, window.max(1)).await;
            if !keep {
                delete(&connection, &[exchange], &[queue]).await?;
            }
            let (seconds, confirmed) = result?;
            println!(
                "{{\"messages\":{confirmed},\"seconds\":{seconds:.3},\"rate\":{:.0}}}",
                confirmed as f64 / seconds
            );
        }
        Command::Pipeline {
            exchange,
            queue,
            count,
            size,
            window,
            prefetch,
            source,
        } => {
            let messages = Messages {
                count,
                size,
                source,
            };
            let result = pipeline(
                &args.url,
                &connection,
                (&exchange, &queue),
                &messages,
                (window.max(1), prefetch.max(1)),
            )
            .await;
            delete(&connection, &[exchange], &[queue]).await?;
            let seconds = result?;
            println!(
                "{{\"messages\":{count},\"seconds\":{seconds:.3},\"rate\":{:.0},\"cpu_seconds\":{:.2}}}",
                count as f64 / seconds,
                cpu_seconds().unwrap_or(f64::NAN)
            );
        }
        Command::Declare {
            exchange,
            queue,
            gateway,
        } => {
            let channel = connection.create_channel().await?;
            declare(&channel, &exchange, &queue, gateway).await?;
        }
        Command::Delete { exchange, queue } => delete(&connection, &exchange, &queue).await?,
        Command::WaitMetric { .. } => unreachable!("handled before connecting"),
    }
    let _ = connection.close(200, "bench done".into()).await;
    Ok(())
}

/// What `publish` sends: `count` messages with bodies of `size` bytes,
/// with walcast's source header when `source` is set.
struct Messages {
    count: u64,
    size: usize,
    source: Option<String>,
}

/// Publishes the messages on `channel` (declared already); returns the
/// seconds from the first publish to the last confirm and how many were
/// confirmed.
async fn publish(
    channel: &Channel,
    exchange: &str,
    &Messages {
        count,
        size,
        ref source,
    }: &Messages,
    window: usize,
) -> Result<(f64, u64)> {
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;

    // A JSON-looking body of exactly `size` bytes.
    let mut body = b"{\"pad\":\"".to_vec();
    body.resize(size.saturating_sub(2).max(body.len()), b'x');
    body.extend_from_slice(b"\"}");
    let headers = source.as_ref().map(|source| {
        let mut headers = FieldTable::default();
        headers.insert(
            ShortString::from("x-walcast-source"),
            AMQPValue::LongString(LongString::from(source.as_str())),
        );
        headers
    });
    let keys = [
        ShortString::from("public.orders.insert"),
        ShortString::from("public.orders.update"),
        ShortString::from("public.orders.delete"),
    ];
    let exchange = ShortString::from(exchange);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();

    // Every message is one future: publish (lapin resolves it once the
    // frames are written) then wait for its confirm. Up to `window` run at
    // once, so writes and confirms are both pipelined.
    let publish_one = |seq: u64| {
        let channel = channel.clone();
        let exchange = exchange.clone();
        let routing_key = keys[(seq % 3) as usize].clone();
        let body = &body;
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_message_id(format!("{:016X}-{:010}", 0x16B_3800 + seq / 10, seq % 10).into())
            .with_timestamp(now)
            .with_app_id("walcast".into());
        let properties = match &headers {
            Some(headers) => properties.with_headers(headers.clone()),
            None => properties,
        };
        async move {
            let confirm = channel
                .basic_publish(
                    exchange,
                    routing_key,
                    BasicPublishOptions::default(),
                    body,
                    properties,
                )
                .await?;
            anyhow::Ok(confirm.await?.is_ack())
        }
    };
    let start = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    let mut confirmed = 0u64;
    let mut next = 0u64;
    while next < count || !in_flight.is_empty() {
        while next < count && in_flight.len() < window {
            in_flight.push(publish_one(next));
            next += 1;
        }
        match in_flight.next().await {
            Some(Ok(true)) => confirmed += 1,
            Some(Ok(false)) => bail!("message nacked"),
            Some(Err(e)) => return Err(e),
            None => break,
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let _ = channel.close(200, "done".into()).await;
    Ok((seconds, confirmed))
}

/// Declares the gateway's queue setup, starts consuming it on a connection
/// of its own, then publishes; returns the seconds from the first publish
/// until the consumer has acked `count` messages.
async fn pipeline(
    url: &str,
    connection: &Connection,
    (exchange, queue): (&str, &str),
    messages: &Messages,
    (window, prefetch): (usize, u16),
) -> Result<f64> {
    let count = messages.count;
    let channel = connection.create_channel().await?;
    declare(&channel, exchange, queue, true).await?;
    let consuming = Connection::connect(url, ConnectionProperties::default())
        .await
        .context("connect the consumer to rabbitmq")?;
    let consumer_channel = consuming.create_channel().await?;
    consumer_channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let mut deliveries = consumer_channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions {
                exclusive: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    // The gateway's ack policy: while deliveries are waiting, take them;
    // then one `multiple` ack on the last (at most 256 per ack).
    let consume = tokio::spawn(async move {
        let mut acked = 0u64;
        let mut last = None;
        let mut batch = 0u64;
        while acked < count {
            let ready = if batch < 256 {
                deliveries.next().now_or_never()
            } else {
                None
            };
            let next = match ready {
                Some(next) => next,
                None => {
                    if let Some(acker) = last.take() {
                        let acker: lapin::Acker = acker;
                        acker.ack(BasicAckOptions { multiple: true }).await?;
                        acked += std::mem::take(&mut batch);
                        if acked >= count {
                            break;
                        }
                    }
                    deliveries.next().await
                }
            };
            let delivery = next.context("the consumer was cancelled")??;
            last = Some(delivery.acker);
            batch += 1;
        }
        let _ = consuming.close(200, "bench done".into()).await;
        anyhow::Ok(Instant::now())
    });
    let start = Instant::now();
    let (_, confirmed) = publish(&channel, exchange, messages, window).await?;
    if confirmed < count {
        bail!("only {confirmed} of {count} messages were confirmed");
    }
    let consumed = tokio::time::timeout(std::time::Duration::from_secs(600), consume)
        .await
        .context("the consumer did not get every message within 10 minutes")???;
    Ok((consumed - start).as_secs_f64())
}

/// One metric's value from `endpoint`'s `/metrics`; `None` while it does
/// not answer or has no such line. HTTP/1.0, so the body is not chunked.
async fn scrape(endpoint: &str, metric: &str) -> Option<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(endpoint).await.ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\n\r\n")
        .await
        .ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.ok()?;
    let text = String::from_utf8_lossy(&response);
    let (_, body) = text.split_once("\r\n\r\n")?;
    body.lines().find_map(|line| {
        let (name, value) = line.split_once(' ')?;
        (name == metric)
            .then(|| value.trim().parse().ok())
            .flatten()
    })
}

/// User + system CPU seconds of this process so far.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((utime + stime) / ticks)
}

async fn delete(connection: &Connection, exchanges: &[String], queues: &[String]) -> Result<()> {
    // A failed delete closes the channel, so one channel per object.
    for queue in queues {
        let channel = connection.create_channel().await?;
        let _ = channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    for exchange in exchanges {
        let channel = connection.create_channel().await?;
        let _ = channel
            .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
            .await;
    }
    Ok(())
}

async fn declare(channel: &Channel, exchange: &str, queue: &str, gateway: bool) -> Result<()> {
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
            if gateway {
                walcast::amqp::queue_arguments(&walcast::config::RabbitConfig::default())
            } else {
                FieldTable::default()
            },
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
