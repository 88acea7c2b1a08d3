//! `walcast dlq list|purge`: the gateway's dead letters (contract section
//! 2): messages it would not take, parked in the queue `rabbitmq.dead_letter`
//! (`walcast.dead`) with the reason in header `x-walcast-reason`.
//!
//! `list` browses without consuming: it takes up to `--limit` messages with
//! `basic.get` (unacked, so each get returns the next one), prints them,
//! then rejects them all with `requeue`. RabbitMQ puts requeued messages
//! back at (or near) their place in the queue and marks them `redelivered`;
//! while the listing runs they are invisible to anyone else reading the
//! queue, and if the connection drops they are requeued all the same.
//! `purge` empties the queue (`queue.purge`) and prints how many messages
//! it removed. Neither declares anything: a missing queue (no gateway has
//! started yet) is an error that says so.
//!
//! It does not republish dead letters to the exchange: a message was parked
//! because a gateway cannot use it; fix its producer instead.

use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use lapin::options::{BasicGetOptions, BasicNackOptions, QueueDeclareOptions, QueuePurgeOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::json;

use crate::config::{redact_url, Config};
use crate::consumer::{source_header, REASON_HEADER};

/// How long connecting and each broker call may take.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Characters of the body shown by `list`.
const PREVIEW_CHARS: usize = 120;

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Show the dead letters (reason, message_id, routing key, app_id,
    /// source, body preview) without removing them.
    List {
        /// Show at most this many (the oldest first).
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// One JSON object per line instead of text.
        #[arg(long)]
        json: bool,
        /// Dead-letter queue [default: rabbitmq.dead_letter]
        #[arg(long, value_name = "NAME")]
        queue: Option<String>,
    },
    /// Delete every dead letter; prints how many there were.
    Purge {
        /// Dead-letter queue [default: rabbitmq.dead_letter]
        #[arg(long, value_name = "NAME")]
        queue: Option<String>,
    },
}

/// Why a dead-letter command failed.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error("cannot connect to RabbitMQ at {url}: {detail}; check rabbitmq.url")]
    Connect { url: String, detail: String },
    #[error("dead-letter queue {queue:?} does not exist: a gateway declares it when it starts (or set rabbitmq.dead_letter / --queue to the name your gateways use)")]
    Missing { queue: String },
    #[error("RabbitMQ refused to {action} on queue {queue:?}: {detail}")]
    Broker {
        action: &'static str,
        queue: String,
        detail: String,
    },
}

pub async fn run(config: &Config, command: DlqCommand) -> anyhow::Result<ExitCode> {
    let url = redact_url(&config.rabbitmq.url);
    let connect = Connection::connect(
        &config.rabbitmq.url,
        ConnectionProperties::default().with_connection_name("walcast dlq".into()),
    );
    let connection = match tokio::time::timeout(TIMEOUT, connect).await {
        Err(_) => {
            return Err(DlqError::Connect {
                url,
                detail: format!("timed out after {TIMEOUT:?}"),
            }
            .into())
        }
        Ok(Err(e)) => {
            return Err(DlqError::Connect {
                url,
                detail: e.to_string(),
            }
            .into())
        }
        Ok(Ok(connection)) => connection,
    };
    let result = match command {
        DlqCommand::List { limit, json, queue } => {
            let queue = queue.unwrap_or_else(|| config.rabbitmq.dead_letter.clone());
            list(&connection, &queue, limit, json).await
        }
        DlqCommand::Purge { queue } => {
            let queue = queue.unwrap_or_else(|| config.rabbitmq.dead_letter.clone());
            purge(&connection, &queue).await
        }
    };
    // Unacked gets go back to the queue when the connection closes anyway.
    let _ = tokio::time::timeout(
        TIMEOUT,
        connection.close(200, ShortString::from("walcast dlq done")),
    )
    .await;
    result?;
    Ok(ExitCode::SUCCESS)
}

async fn broker<T>(
    action: &'static str,
    queue: &str,
    call: impl std::future::Future<Output = lapin::Result<T>>,
) -> Result<T, DlqError> {
    let failed = |detail: String| DlqError::Broker {
        action,
        queue: queue.to_owned(),
        detail,
    };
    match tokio::time::timeout(TIMEOUT, call).await {
        Err(_) => Err(failed(format!("no answer within {TIMEOUT:?}"))),
        Ok(Err(e)) if is_not_found(&e) => Err(DlqError::Missing {
            queue: queue.to_owned(),
        }),
        Ok(Err(e)) => Err(failed(e.to_string())),
        Ok(Ok(value)) => Ok(value),
    }
}

fn is_not_found(e: &lapin::Error) -> bool {
    matches!(e.kind(), lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == 404)
}

/// Message count of an existing queue (a passive declare).
async fn count(channel: &lapin::Channel, queue: &str) -> Result<u32, DlqError> {
    let declared = broker(
        "inspect",
        queue,
        channel.queue_declare(
            ShortString::from(queue),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        ),
    )
    .await?;
    Ok(declared.message_count())
}

async fn list(
    connection: &Connection,
    queue: &str,
    limit: u32,
    json: bool,
) -> Result<(), DlqError> {
    let channel = broker("open a channel", queue, connection.create_channel()).await?;
    let total = count(&channel, queue).await?;
    let mut last_tag = None;
    let mut shown = 0u32;
    while shown < limit {
        let got = broker(
            "get a message",
            queue,
            channel.basic_get(ShortString::from(queue), BasicGetOptions { no_ack: false }),
        )
        .await?;
        let Some(message) = got else { break };
        let delivery = message.delivery;
        print_letter(
            &delivery.properties,
            delivery.routing_key.as_str(),
            &delivery.data,
            json,
        );
        last_tag = Some(delivery.delivery_tag);
        shown += 1;
    }
    if let Some(tag) = last_tag {
        broker(
            "requeue the listed messages",
            queue,
            channel.basic_nack(
                tag,
                BasicNackOptions {
                    multiple: true,
                    requeue: true,
                },
            ),
        )
        .await?;
    }
    if !json {
        println!("{shown} of {total} dead letters in {queue} shown; they stay in the queue (walcast dlq purge removes them)");
    }
    Ok(())
}

fn print_letter(properties: &BasicProperties, routing_key: &str, body: &[u8], json: bool) {
    let reason = properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(REASON_HEADER).cloned())
        .and_then(|v| match v {
            AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
            AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
            _ => None,
        });
    let message_id = properties
        .message_id()
        .as_ref()
        .map(|m| m.as_str().to_owned());
    let app_id = properties.app_id().as_ref().map(|a| a.as_str().to_owned());
    let source = source_header(properties);
    let text = String::from_utf8_lossy(body);
    let mut preview: String = text.chars().take(PREVIEW_CHARS).collect();
    if text.chars().count() > PREVIEW_CHARS {
        preview.push('…');
    }
    if json {
        println!(
            "{}",
            json!({
                "reason": reason,
                "message_id": message_id,
                "routing_key": routing_key,
                "app_id": app_id,
                "source": source,
                "bytes": body.len(),
                "body_preview": preview,
            })
        );
    } else {
        let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        println!(
            "reason={} message_id={} routing_key={} app_id={} source={} bytes={} body={}",
            show(&reason),
            show(&message_id),
            routing_key,
            show(&app_id),
            show(&source),
            body.len(),
            preview.replace('\n', "\\n"),
        );
    }
}

async fn purge(connection: &Connection, queue: &str) -> Result<(), DlqError> {
    let channel = broker("open a channel", queue, connection.create_channel()).await?;
    count(&channel, queue).await?;
    let purged = broker(
        "purge",
        queue,
        channel.queue_purge(ShortString::from(queue), QueuePurgeOptions::default()),
    )
    .await?;
    println!("purged {purged} dead letters from {queue}");
    Ok(())
}
