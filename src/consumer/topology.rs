//! The gateway's topology: the exchange (durable topic, as the publisher
//! declares it), this gateway's own queue bound with `#`, and the dead
//! letters, declared on every session with the shared `amqp` helpers. A
//! queue that did not exist restarts the hub's history first (see the
//! `consumer` module doc).
//!
//! It does not consume: `delivery.rs` starts that on the channel declared
//! here.

use std::time::Duration;

use lapin::types::ShortString;
use lapin::{Channel, Connection};
use tracing::debug;

use super::{Consumer, ConsumerError};
use crate::amqp;

/// How long a stop waits for the broker to close the session's channels
/// (milliseconds on a healthy broker) before it closes the connection.
const CLOSE_CHANNELS_TIMEOUT: Duration = Duration::from_secs(2);

/// What a session declared, and the channels it consumes and
/// dead-letters on.
pub(super) struct Topology {
    /// The channel the gateway queue is consumed on.
    pub(super) channel: Channel,
    /// A channel in confirm mode that dead letters are published on.
    pub(super) dead_letters: Channel,
    /// Consumers the gateway queue had already when it was declared.
    pub(super) others: u32,
}

impl Topology {
    /// Closes the dead-letter channel, then the consuming one (which ends
    /// the consumer on it), within [`CLOSE_CHANNELS_TIMEOUT`] together: a
    /// stop waits for a slow broker no longer than that here, and what did
    /// not close is left to the connection's close.
    pub(super) async fn close(self) {
        let close = async {
            for channel in [self.dead_letters, self.channel] {
                let id = channel.id();
                if let Err(e) = channel
                    .close(200, ShortString::from("walcast gateway stopping"))
                    .await
                {
                    debug!(channel = id, error = %e, "channel.close failed");
                }
            }
        };
        if tokio::time::timeout(CLOSE_CHANNELS_TIMEOUT, close)
            .await
            .is_err()
        {
            debug!("channel.close did not answer; closing the connection");
        }
    }
}

impl Consumer {
    /// Declares the exchange, the gateway queue and its binding, and the
    /// dead letters. A queue that existed with other arguments is
    /// [`ConsumerError::QueueMismatch`].
    pub(super) async fn declare_topology(
        &mut self,
        connection: &Connection,
    ) -> Result<Topology, ConsumerError> {
        let mut channel = connection
            .create_channel()
            .await
            .map_err(ConsumerError::Channel)?;
        let exchange = self.config.exchange.as_str();
        amqp::declare_exchange(&channel, exchange)
            .await
            .map_err(|source| declare("exchange", exchange, source))?;
        let queue = self.queue.as_str();
        let existed = amqp::queue_exists(&channel, queue)
            .await
            .map_err(|source| declare("queue", queue, source))?;
        if !existed {
            // What was published while the queue did not exist is lost to
            // this gateway: its history cannot reach across.
            self.hub
                .restart_history()
                .await
                .map_err(ConsumerError::HistoryRestart)?;
            // The broker closed the channel on the 404.
            channel = connection
                .create_channel()
                .await
                .map_err(ConsumerError::Channel)?;
        }
        let others = amqp::declare_gateway_queue(&channel, queue, &self.config)
            .await
            .map_err(|source| {
                if amqp::is_reply(&source, 406) {
                    self.queue_mismatch(source)
                } else {
                    declare("queue", queue, source)
                }
            })?;
        amqp::bind_queue(&channel, queue, exchange, "#")
            .await
            .map_err(|source| declare("binding of queue", queue, source))?;
        let dead_letters = self.declare_dead_letter(connection).await?;
        Ok(Topology {
            channel,
            dead_letters,
            others,
        })
    }

    /// The error for a queue that exists with other arguments (406).
    fn queue_mismatch(&self, source: lapin::Error) -> ConsumerError {
        ConsumerError::QueueMismatch {
            queue: self.queue.clone(),
            queue_type: self.config.queue_type.as_str(),
            expires: match self.config.queue_expires_ms {
                0 => String::new(),
                ms => format!(", x-expires = {ms}"),
            },
            source,
        }
    }
}

/// The error for a declare of `what` named `name` that the broker refused.
pub(super) fn declare(what: &'static str, name: &str, source: lapin::Error) -> ConsumerError {
    ConsumerError::Declare {
        what,
        name: name.to_owned(),
        source,
    }
}
