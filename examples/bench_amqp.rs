//! Benchmark helper (not part of walcast): a plain lapin publisher, the
//! baseline walcast's publishing is compared with, plus AMQP cleanup.
//!
//!   cargo run --release --example bench_amqp -- publish --exchange X --queue Q \
//!       --count 1000000 --size 560 --window 1024
//!   cargo run --release --example bench_amqp -- delete --exchange X --queue Q
//!
//! `publish` declares a durable topic exchange and a durable queue bound to
//! it with `#` (what a walcast gateway does), then sends `count` persistent
//! messages of `size` bytes on one channel in confirm mode, keeping up to
//! `window` unconfirmed at once (walcast's `rabbitmq.publish_window`), with
//! the properties walcast sets (content type, message id, timestamp, app
//! id) and routing keys cycling insert/update/delete. It prints one JSON
//! line: `{"messages":…,"seconds":…,"rate":…}`, timed from the first publish
//! to the last confirm, and deletes the queue and exchange unless `--keep`.
//!
//! `delete` deletes the named queues and exchanges (missing ones are fine).

use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use futures_util::stream::{FuturesUnordered, StreamExt};
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{FieldTable, ShortString};
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
        /// Leave the exchange and queue in place.
        #[arg(long)]
        keep: bool,
    },
    /// Declare the durable topic exchange and a durable queue bound with `#`.
    Declare {
        #[arg(long)]
        exchange: String,
        #[arg(long)]
        queue: String,
    },
    Delete {
        #[arg(long)]
        exchange: Vec<String>,
        #[arg(long)]
        queue: Vec<String>,
    },
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
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
            keep,
        } => {
            let result = publish(&connection, &exchange, &queue, count, size, window.max(1)).await;
            if !keep {
                delete(&connection, &[exchange], &[queue]).await?;
            }
            let (seconds, confirmed) = result?;
            println!(
                "{{\"messages\":{confirmed},\"seconds\":{seconds:.3},\"rate\":{:.0}}}",
                confirmed as f64 / seconds
            );
        }
        Command::Declare { exchange, queue } => {
            let channel = connection.create_channel().await?;
            declare(&channel, &exchange, &queue).await?;
        }
        Command::Delete { exchange, queue } => delete(&connection, &exchange, &queue).await?,
    }
    let _ = connection.close(200, "bench done".into()).await;
    Ok(())
}

async fn publish(
    connection: &Connection,
    exchange: &str,
    queue: &str,
    count: u64,
    size: usize,
    window: usize,
) -> Result<(f64, u64)> {
    let channel = connection.create_channel().await?;
    declare(&channel, exchange, queue).await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;

    // A JSON-looking body of exactly `size` bytes.
    let mut body = b"{\"pad\":\"".to_vec();
    body.resize(size.saturating_sub(2).max(body.len()), b'x');
    body.extend_from_slice(b"\"}");
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

async fn declare(channel: &Channel, exchange: &str, queue: &str) -> Result<()> {
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
