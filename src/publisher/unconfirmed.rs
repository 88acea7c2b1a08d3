//! A published message the broker has not confirmed yet, and what to do
//! with one the broker refused as too large: swap in its `oversize` stub
//! ([`fit`]), once. The engine owns the queue of them; this module only
//! knows one message.

use std::sync::Arc;

use tracing::warn;

use super::encoder::Encoded;
use super::error::PublishError;
use super::stats::PublisherStats;

/// A message accepted from the [`super::Publisher`] and not yet confirmed.
pub(super) struct Unconfirmed {
    pub(super) seq: u64,
    pub(super) message: Arc<Encoded>,
    pub(super) stub: Option<Encoded>,
    pub(super) charge: u32,
}

/// Replaces `pending` by its `oversize` stub when it is larger than the
/// broker's `max` (counted and logged): true when it did. An error when
/// even the stub is too large (or there is none: it already is one).
pub(super) fn fit(
    pending: &mut Unconfirmed,
    max: usize,
    stats: &PublisherStats,
    url: &str,
) -> Result<bool, Box<PublishError>> {
    let size = pending.message.body.len();
    if size <= max {
        return Ok(false);
    }
    let id = pending
        .message
        .properties
        .message_id()
        .as_ref()
        .map_or_else(String::new, |id| id.to_string());
    match pending.stub.take() {
        Some(stub) if stub.body.len() <= max => {
            warn!(%id, size, broker_max = max, routing_key = %stub.routing_key, "event larger than the broker's max_message_size; publishing its oversize stub");
            stats.oversize(stub.routing_key.as_str());
            pending.message = Arc::new(stub);
            Ok(true)
        }
        stub => Err(Box::new(PublishError::BrokerLimit {
            url: url.to_owned(),
            broker_max: max,
            id,
            size: stub.map_or(size, |stub| stub.body.len()),
        })),
    }
}
