//! The publisher's connection to RabbitMQ: one connection with a channel
//! in confirm mode and the exchange declared ([`open_link`]), how long to
//! wait before the next attempt ([`reconnect_delay`]), and closing one
//! without waiting. The engine (`engine.rs`) decides when to connect and
//! what to write; this module does neither.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use lapin::options::ConfirmSelectOptions;
use lapin::types::ShortString;
use lapin::{Channel, Connection, Event};
use tokio_util::task::TaskTracker;

use super::engine::Settings;
use super::error::{PublishError, Step};
use crate::amqp::{self, Connected, CONNECT_TIMEOUT};
use crate::retry::Backoff;

/// Longest wait for a graceful `connection.close`.
pub(super) const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// One connection with a confirming channel and the exchange declared.
pub(crate) struct Link {
    /// The broker URL (redacted) this link went to.
    pub(super) url: String,
    pub(super) connection: Connection,
    /// Shared with every write in flight: a lapin `Channel` is a score of
    /// reference counts, and a write's future holds one pointer to it.
    pub(super) channel: Arc<Channel>,
    /// `settings.exchange`, as every publish names it.
    pub(super) exchange: ShortString,
    pub(super) events: Pin<Box<dyn Stream<Item = Event> + Send>>,
}

/// Connects, opens a channel in confirm mode and declares the exchange.
pub(crate) async fn open_link(settings: &Settings) -> Result<Link, PublishError> {
    let Connected { connection, url } = amqp::connect(&settings.endpoint, "walcast publisher")
        .await
        .map_err(|e| PublishError::from_connect(e, &settings.exchange))?;
    let redacted = url.as_str();
    let classify = |step| {
        move |e: lapin::Error| PublishError::from_setup(e, step, redacted, &settings.exchange)
    };
    // Subscribe before anything can go wrong: lapin only queues events
    // while someone listens.
    let events = Box::pin(connection.events_listener());
    let setup = async {
        let channel = connection
            .create_channel()
            .await
            .map_err(classify(Step::Other))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(classify(Step::Other))?;
        amqp::declare_exchange(&channel, &settings.exchange)
            .await
            .map_err(classify(Step::DeclareExchange))?;
        Ok(channel)
    };
    let channel = match tokio::time::timeout(CONNECT_TIMEOUT, setup).await {
        Ok(Ok(channel)) => channel,
        Ok(Err(e)) => {
            close_in_background(&settings.tasks, connection);
            return Err(e);
        }
        Err(_) => {
            close_in_background(&settings.tasks, connection);
            return Err(PublishError::ConnectTimeout {
                url: redacted.to_owned(),
                seconds: CONNECT_TIMEOUT.as_secs(),
            });
        }
    };
    Ok(Link {
        url,
        connection,
        channel: Arc::new(channel),
        exchange: ShortString::from(settings.exchange.as_str()),
        events,
    })
}

/// Closes a connection without waiting for it; a dead one just errors.
pub(super) fn close_in_background(tasks: &TaskTracker, connection: Connection) {
    tasks.spawn(async move {
        let _ = tokio::time::timeout(
            CLOSE_TIMEOUT,
            connection.close(200, "walcast publisher reconnecting".into()),
        )
        .await;
    });
}

/// Reconnect delay: at once after a first failure (a broker that closed
/// one connection usually takes the next), then [`Backoff`] from 100 ms,
/// capped at `max`, jittered so that many walcasts do not reconnect in step.
pub(crate) fn reconnect_delay(attempt: u32, max: Duration) -> Duration {
    match attempt.checked_sub(1) {
        None => Duration::ZERO,
        Some(n) => Backoff::new(Duration::from_millis(100), max).delay(n),
    }
}
