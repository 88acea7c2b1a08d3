//! The publisher's errors, each classified as retry or stop.
//!
//! Classification happens where a broker error enters
//! ([`PublishError::from_setup`]): refused credentials, a missing or
//! forbidden vhost and an exchange that exists with other settings will not
//! heal by reconnecting, so they stop walcast with a message that says what
//! to fix. Everything else (refused or lost connections, a broker shutting
//! down, channel errors, timeouts) is retried with backoff and never reaches
//! the caller. This module does not retry anything itself.

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
    fn lost_connections_and_forced_closes_are_retried() {
        let forced = amqp(AMQPErrorKind::Hard(AMQPHardError::CONNECTIONFORCED));
        assert!(PublishError::from_setup(forced, Step::Connect, "u", "x").is_retryable());
        let io: lapin::Error =
            std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused").into();
        assert!(PublishError::from_setup(io, Step::Connect, "u", "x").is_retryable());
    }
}
