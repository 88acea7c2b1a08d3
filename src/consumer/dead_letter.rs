//! Dead letters: which deliveries the hub may not take ([`DeadReason`]),
//! and publishing them, unchanged but for the `x-walcast-reason` header,
//! to `rabbitmq.dead_letter` with a confirm before they are acked (see the
//! `consumer` module doc). The exchange and queue are declared with the
//! rest of the topology (`topology.rs`).
//!
//! It does not parse bodies: a malformed body is found by the delivery
//! loop, which hands it here with its reason.

use std::sync::atomic::Ordering;
use std::time::Duration;

use lapin::message::Delivery;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection};
use tracing::warn;

use super::ack::AckBatch;
use super::{Consumer, ConsumerError, IO_TIMEOUT};
use crate::amqp;

/// Why a message went to the dead letters (`x-walcast-reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadReason {
    /// `app_id` is not `walcast`: not from walcast's capture.
    ForeignAppId,
    /// No `x-walcast-source` header: the stream cannot be told.
    MissingSource,
    /// A source other than the pinned `rabbitmq.source`.
    ForeignSource,
    /// The body is not a change event.
    MalformedBody,
}

impl DeadReason {
    pub const ALL: [DeadReason; 4] = [
        DeadReason::ForeignAppId,
        DeadReason::MissingSource,
        DeadReason::ForeignSource,
        DeadReason::MalformedBody,
    ];

    /// The `x-walcast-reason` header and metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            DeadReason::ForeignAppId => "foreign_app_id",
            DeadReason::MissingSource => "missing_source",
            DeadReason::ForeignSource => "foreign_source",
            DeadReason::MalformedBody => "malformed_body",
        }
    }
}

/// Header carrying the stream's source (contract section 2).
pub const SOURCE_HEADER: &str = crate::publisher::encoder::SOURCE_HEADER;
/// Header carrying why a message was dead-lettered.
pub const REASON_HEADER: &str = "x-walcast-reason";

impl Consumer {
    /// Declares the dead-letter exchange and queue (see the module doc) and
    /// returns a channel in confirm mode to publish dead letters on.
    pub(super) async fn declare_dead_letter(
        &self,
        connection: &Connection,
    ) -> Result<Channel, ConsumerError> {
        let name = self.config.dead_letter.as_str();
        let channel = connection
            .create_channel()
            .await
            .map_err(ConsumerError::Channel)?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(ConsumerError::Channel)?;
        amqp::declare_dead_letter(&channel, name, self.config.queue_type)
            .await
            .map_err(|(what, source)| super::topology::declare(what, name, source))?;
        Ok(channel)
    }

    /// Publishes `delivery` to the dead letters with its reason, waits for
    /// the broker's confirm, then adds it to the ack batch. Any failure ends
    /// the session without acking it.
    pub(super) async fn dead_letter(
        &mut self,
        channel: &Channel,
        delivery: Delivery,
        reason: DeadReason,
        error: Option<&str>,
        batch: &mut AckBatch,
    ) -> Result<(), ConsumerError> {
        let exchange = self.config.dead_letter.clone();
        let failed = |detail: String| ConsumerError::DeadLetter {
            exchange: exchange.clone(),
            detail,
        };
        let mut headers = delivery.properties.headers().clone().unwrap_or_default();
        headers.insert(
            ShortString::from(REASON_HEADER),
            AMQPValue::LongString(LongString::from(reason.as_str())),
        );
        let properties: BasicProperties = delivery.properties.clone().with_headers(headers);
        let publish = async {
            channel
                .basic_publish(
                    ShortString::from(exchange.as_str()),
                    delivery.routing_key.clone(),
                    // Returned if no queue is bound (someone deleted
                    // walcast.dead): then it is not acked either.
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &delivery.data,
                    properties,
                )
                .await?
                .await
        };
        let confirm = match tokio::time::timeout(IO_TIMEOUT, publish).await {
            Err(_) => return Err(failed(format!("no confirm within {IO_TIMEOUT:?}"))),
            Ok(Err(e)) => return Err(failed(e.to_string())),
            Ok(Ok(confirm)) => confirm,
        };
        if !confirm.is_ack() {
            return Err(failed("the broker nacked it".into()));
        }
        if confirm.take_message().is_some() {
            return Err(failed(
                "no queue is bound to it (the gateway declares the queue again when it reconnects)"
                    .into(),
            ));
        }
        let i = DeadReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        self.status.0.dead_letters[i].fetch_add(1, Ordering::Relaxed);
        self.status.0.rejected.fetch_add(1, Ordering::Relaxed);
        let now = std::time::Instant::now();
        let (suppressed, last) = &mut self.dead_log;
        if last.is_some_and(|at| now.duration_since(at) < Duration::from_secs(1)) {
            *suppressed += 1;
        } else {
            warn!(
                reason = reason.as_str(),
                message_id = ?delivery.properties.message_id().as_ref().map(|m| m.as_str()),
                routing_key = %delivery.routing_key,
                app_id = ?delivery.properties.app_id().as_ref().map(|a| a.as_str()),
                source = ?source_header(&delivery.properties),
                error,
                dead_letter = %exchange,
                not_logged_since_last = *suppressed,
                "message dead-lettered: the gateway does not take it (see walcast dlq list)"
            );
            *suppressed = 0;
            *last = Some(now);
        }
        batch.push(delivery.acker);
        Ok(())
    }
}

/// The source of a message the hub may take, or why it goes to the dead
/// letters (all but a malformed body, which needs parsing).
pub(super) fn classify(delivery: &Delivery, pinned: &str) -> Result<String, DeadReason> {
    let p = &delivery.properties;
    if p.app_id().as_ref().map(|a| a.as_str()) != Some(crate::publisher::encoder::APP_ID) {
        return Err(DeadReason::ForeignAppId);
    }
    let Some(source) = source_header(p).filter(|s| !s.is_empty()) else {
        return Err(DeadReason::MissingSource);
    };
    if !pinned.is_empty() && source != pinned {
        return Err(DeadReason::ForeignSource);
    }
    Ok(source)
}

/// The `x-walcast-source` header, if it is a string.
pub fn source_header(properties: &BasicProperties) -> Option<String> {
    let headers = properties.headers().as_ref()?;
    match headers.inner().get(SOURCE_HEADER)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}
