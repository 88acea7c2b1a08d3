//! The publisher's errors, each classified as retry or stop.
//!
//! Classification happens where a broker error enters
//! ([`PublishError::from_setup`]): refused credentials, a missing or
//! forbidden vhost and an exchange that exists with other settings will not
//! heal by reconnecting, so they stop walcast with a message that says what
//! to fix. Everything else (refused or lost connections, a broker shutting
//! down, channel errors, timeouts) is retried with backoff and never reaches
//! the caller. A message the broker refuses with 406 PRECONDITION_FAILED
//! while publishing ([`publish_refusal`]) is neither: republishing it
//! unchanged would be refused forever, so the engine publishes its
//! `oversize` stub instead, or stops with [`PublishError::BrokerLimit`] /
//! [`PublishError::Refused`]. This module does not retry anything itself.

use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use lapin::ErrorKind;

use crate::amqp::AmqpError;

/// Why the publisher stopped or could not start.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PublishError {
    /// An invalid URL, an unreadable TLS file, a TLS handshake that failed.
    #[error(transparent)]
    Amqp(Box<AmqpError>),

    #[error("RabbitMQ at {url} refused the credentials or the virtual host ({source}); check the user, password and vhost in rabbitmq.url and the user's permissions (rabbitmqctl list_permissions -p <vhost>)")]
    AccessRefused { url: String, source: lapin::Error },

    #[error("exchange {exchange:?} exists on RabbitMQ at {url} with settings other than a durable topic exchange ({source}); delete it or set rabbitmq.exchange to another name")]
    ExchangeMismatch {
        url: String,
        exchange: String,
        source: lapin::Error,
    },

    /// A broker error that a reconnect may heal; only surfaces when it could
    /// not be retried (shutdown during the first connection).
    #[error("RabbitMQ at {url} is unavailable: {source}")]
    Unavailable { url: String, source: lapin::Error },

    #[error("connecting to RabbitMQ at {url} timed out after {seconds} s")]
    ConnectTimeout { url: String, seconds: u64 },

    /// The broker refuses even the `oversize` stub of an event.
    #[error("RabbitMQ at {url} refuses messages larger than {broker_max} bytes (its max_message_size), and event {id} is {size} bytes even as an oversize stub; set rabbitmq.max_event_bytes below the broker's max_message_size and keep max_message_size above an event's key and metadata (or raise max_message_size on the broker)")]
    BrokerLimit {
        url: String,
        broker_max: usize,
        id: String,
        size: usize,
    },

    /// A 406 on publish that walcast cannot act on: republishing would
    /// be refused the same way.
    #[error("RabbitMQ at {url} refused a published message ({reason}); walcast stopped rather than republish it forever. If the broker limits message size, set rabbitmq.max_event_bytes below its max_message_size")]
    Refused { url: String, reason: String },

    #[error("shutdown was requested before RabbitMQ accepted the event; it was not published and Postgres will send it again")]
    Shutdown,

    #[error("the publisher's background task has stopped")]
    Stopped,
}

/// Where in the setup an error happened, for classification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    Connect,
    DeclareExchange,
    Other,
}

impl PublishError {
    /// Classifies a failed [`crate::amqp::connect`]: the broker's refusals
    /// as [`PublishError::from_setup`] does, the rest as they are.
    pub(crate) fn from_connect(error: AmqpError, exchange: &str) -> PublishError {
        match error {
            AmqpError::Connect { url, source } => {
                PublishError::from_setup(source, Step::Connect, &url, exchange)
            }
            AmqpError::ConnectTimeout { url } => PublishError::ConnectTimeout {
                url,
                seconds: crate::amqp::CONNECT_TIMEOUT.as_secs(),
            },
            other => PublishError::Amqp(Box::new(other)),
        }
    }

    /// Classifies a lapin error met while connecting or setting up the
    /// channel. `url` must already be redacted.
    pub(crate) fn from_setup(
        error: lapin::Error,
        step: Step,
        url: &str,
        exchange: &str,
    ) -> PublishError {
        let url = url.to_owned();
        if let ErrorKind::ProtocolError(amqp) = error.kind() {
            match amqp.kind() {
                AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED)
                | AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED)
                | AMQPErrorKind::Hard(AMQPHardError::INVALIDPATH) => {
                    return PublishError::AccessRefused { url, source: error };
                }
                AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED)
                    if step == Step::DeclareExchange =>
                {
                    return PublishError::ExchangeMismatch {
                        url,
                        exchange: exchange.to_owned(),
                        source: error,
                    };
                }
                _ => {}
            }
        }
        PublishError::Unavailable { url, source: error }
    }

    /// Errors a reconnect can heal.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            PublishError::Unavailable { .. } | PublishError::ConnectTimeout { .. }
        )
    }
}

/// A broker's refusal of a published message (406 PRECONDITION_FAILED,
/// which closes the channel).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// The broker's reply text.
    pub reason: String,
    /// The broker's `max_message_size` when the refusal says that the
    /// message was larger (RabbitMQ: "message size 10240 is larger than
    /// configured max size 4096").
    pub max_message_size: Option<usize>,
}

/// Whether `error`, met while publishing, is the broker refusing a message
/// (and not a lost connection, which a reconnect heals).
pub(crate) fn publish_refusal(error: &lapin::Error) -> Option<Refusal> {
    let ErrorKind::ProtocolError(amqp) = error.kind() else {
        return None;
    };
    if *amqp.kind() != AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED) {
        return None;
    }
    let reason = amqp.get_message().to_string();
    let max_message_size = reason.split_once("max size ").and_then(|(_, rest)| {
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    });
    Some(Refusal {
        reason,
        max_message_size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::protocol::AMQPError;

    fn amqp(kind: AMQPErrorKind) -> lapin::Error {
        ErrorKind::ProtocolError(AMQPError::new(kind, "test".into())).into()
    }

    #[test]
    fn refused_credentials_and_vhosts_stop() {
        for kind in [
            AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED),
            AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED),
        ] {
            let e = PublishError::from_setup(amqp(kind), Step::Connect, "amqp://u:***@h/", "x");
            assert!(!e.is_retryable(), "{e}");
            assert!(e.to_string().contains("rabbitmq.url"), "{e}");
        }
    }

    #[test]
    fn a_mismatched_exchange_stops_but_only_when_declaring_it() {
        let kind = AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED);
        let e = PublishError::from_setup(amqp(kind.clone()), Step::DeclareExchange, "u", "ex");
        assert!(matches!(e, PublishError::ExchangeMismatch { .. }));
        let e = PublishError::from_setup(amqp(kind), Step::Other, "u", "ex");
        assert!(e.is_retryable());
    }

    #[test]
    fn a_406_on_publish_is_a_refusal_with_the_brokers_limit() {
        let error: lapin::Error = ErrorKind::ProtocolError(AMQPError::new(
            AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED),
            "PRECONDITION_FAILED - message size 10240 is larger than configured max size 4096"
                .into(),
        ))
        .into();
        let refusal = publish_refusal(&error).unwrap();
        assert_eq!(refusal.max_message_size, Some(4096));
        assert!(refusal.reason.contains("message size 10240"));
        // RabbitMQ's wording at its hard limit.
        let error: lapin::Error = ErrorKind::ProtocolError(AMQPError::new(
            AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED),
            "PRECONDITION_FAILED - message size 600000000 is larger than max size 536870912".into(),
        ))
        .into();
        assert_eq!(
            publish_refusal(&error).unwrap().max_message_size,
            Some(536_870_912)
        );
        // Another 406: a refusal, without a size.
        let other = amqp(AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED));
        assert_eq!(publish_refusal(&other).unwrap().max_message_size, None);
        // Lost connections and other errors are not refusals.
        let forced = amqp(AMQPErrorKind::Hard(AMQPHardError::CONNECTIONFORCED));
        assert_eq!(publish_refusal(&forced), None);
        let io: lapin::Error =
            std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset").into();
        assert_eq!(publish_refusal(&io), None);
    }

    #[test]
    fn lost_connections_and_forced_closes_are_retried() {
        let forced = amqp(AMQPErrorKind::Hard(AMQPHardError::CONNECTIONFORCED));
        assert!(PublishError::from_setup(forced, Step::Connect, "u", "x").is_retryable());
        let io: lapin::Error =
            std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused").into();
        assert!(PublishError::from_setup(io, Step::Connect, "u", "x").is_retryable());
    }
}
