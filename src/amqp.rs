//! AMQP connect and declare, shared by the publisher and the gateway.
//!
//! [`Endpoint`] is where and how to reach RabbitMQ: the URLs of
//! `rabbitmq.url` (several, comma-separated, are the nodes of a cluster,
//! tried in order on every connect), each with its password redacted for
//! logs, and the TLS material for `amqps://` (a CA file trusted besides the
//! built-in public roots, an optional client certificate), read once from
//! disk. [`connect`] opens one connection within [`CONNECT_TIMEOUT`] per
//! URL and names what failed in the TLS handshake (unknown CA, host name
//! mismatch, a plain server on an amqps URL). The declare helpers declare
//! the exchange (durable topic) and the gateway queue with its arguments
//! (`x-queue-type`, single active consumer on quorum, `x-expires`), its
//! binding, and the dead letters (fanout exchange and queue) the same way
//! wherever they are needed.
//!
//! It does not retry (callers own their [`crate::retry::Backoff`]), does not
//! publish or consume, and does not decide which broker errors stop walcast:
//! the publisher and the consumer classify those for their own stage.

use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};

use crate::config::{redact_url, QueueType, RabbitConfig};

/// Longest wait for one connection: TCP, TLS and the AMQP handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why RabbitMQ could not be reached, or the settings to reach it are wrong.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AmqpError {
    #[error("rabbitmq.url {url:?} is not a valid AMQP URL: {message}")]
    InvalidUrl { url: String, message: String },

    #[error(
        "cannot read {field} {path:?}: {message}; check the path and that walcast may read it"
    )]
    TlsFile {
        field: &'static str,
        path: String,
        message: String,
    },

    #[error("TLS with RabbitMQ at {url} failed: {problem} ({source})")]
    Tls {
        url: String,
        problem: TlsProblem,
        source: lapin::Error,
    },

    #[error("cannot connect to RabbitMQ at {url}: {source}")]
    Connect { url: String, source: lapin::Error },

    #[error("connecting to RabbitMQ at {url} timed out after {} s", CONNECT_TIMEOUT.as_secs())]
    ConnectTimeout { url: String },
}

impl AmqpError {
    /// Errors that a later attempt may heal: the broker is down, restarting
    /// or unreachable. Bad settings and certificates that do not verify are
    /// not retried by the publisher (the gateway retries everything).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            AmqpError::Connect { .. } | AmqpError::ConnectTimeout { .. }
        )
    }
}

/// What went wrong in a TLS handshake, in the operator's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TlsProblem {
    #[error("the broker's certificate is not signed by a CA walcast trusts; set rabbitmq.tls_ca_file to the PEM file of the CA that signed it")]
    UnknownCa,
    #[error("the broker's certificate is not valid for the host name in rabbitmq.url; connect by a name the certificate lists (subjectAltName), or reissue the certificate")]
    HostMismatch,
    #[error("the broker's certificate has expired or is not yet valid; renew it on the broker")]
    Expired,
    #[error("the server did not answer with TLS; is this a plain AMQP port? Use amqp:// for port 5672, or the broker's TLS listener (usually 5671) for amqps://")]
    NotTls,
    #[error("the broker refused walcast's client certificate, or asked for one and got none; set rabbitmq.tls_cert_file and rabbitmq.tls_key_file to a certificate its CA signed")]
    ClientCertificate,
    #[error("the handshake failed")]
    Other,
}

/// One broker URL: parsed, and redacted for logs.
#[derive(Clone)]
struct Target {
    uri: AMQPUri,
    url: String,
}

/// Where and how to reach RabbitMQ. Its `Debug` shows redacted URLs only.
#[derive(Clone)]
pub struct Endpoint {
    targets: Vec<Target>,
    tls: OwnedTLSConfig,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("urls", &self.url())
            .field("tls_ca", &self.tls.cert_chain.is_some())
            .field("tls_client_certificate", &self.tls.identity.is_some())
            .finish()
    }
}

impl Endpoint {
    /// Parses `rabbitmq.url` and reads the TLS files it names.
    pub fn new(config: &RabbitConfig) -> Result<Endpoint, AmqpError> {
        let targets = config
            .urls()
            .map(|raw| {
                let url = redact_url(raw);
                let uri = raw
                    .parse::<AMQPUri>()
                    .map_err(|message| AmqpError::InvalidUrl {
                        url: url.clone(),
                        message,
                    })?;
                Ok(Target { uri, url })
            })
            .collect::<Result<Vec<_>, AmqpError>>()?;
        if targets.is_empty() {
            return Err(AmqpError::InvalidUrl {
                url: String::new(),
                message: "no URL given".into(),
            });
        }
        let mut tls = OwnedTLSConfig::default();
        if !config.tls_ca_file.is_empty() {
            let pem = read_tls_file("rabbitmq.tls_ca_file", &config.tls_ca_file)?;
            if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
                return Err(AmqpError::TlsFile {
                    field: "rabbitmq.tls_ca_file",
                    path: config.tls_ca_file.clone(),
                    message: "it holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into(),
                });
            }
            tls.cert_chain = Some(String::from_utf8_lossy(&pem).into_owned());
        }
        if !config.tls_cert_file.is_empty() || !config.tls_key_file.is_empty() {
            // validate() makes sure both are set; PKCS#8 here is lapin's
            // name for "PEM certificate plus PEM key", and the key may be
            // PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
            tls.identity = Some(OwnedIdentity::PKCS8 {
                pem: read_tls_file("rabbitmq.tls_cert_file", &config.tls_cert_file)?,
                key: read_tls_file("rabbitmq.tls_key_file", &config.tls_key_file)?,
            });
        }
        Ok(Endpoint { targets, tls })
    }

    /// The URLs, redacted, comma-separated: for logs.
    pub fn url(&self) -> String {
        let urls: Vec<&str> = self.targets.iter().map(|t| t.url.as_str()).collect();
        urls.join(",")
    }

    /// Whether any URL is amqps://.
    pub fn uses_tls(&self) -> bool {
        self.targets
            .iter()
            .any(|t| t.uri.scheme == AMQPScheme::AMQPS)
    }
}

fn read_tls_file(field: &'static str, path: &str) -> Result<Vec<u8>, AmqpError> {
    std::fs::read(path).map_err(|e| AmqpError::TlsFile {
        field,
        path: path.to_owned(),
        message: e.to_string(),
    })
}

/// A connected broker: the connection and the (redacted) URL it went to.
pub struct Connected {
    pub connection: Connection,
    pub url: String,
}

/// Connects to the first URL of `endpoint` that answers, trying them in
/// order, each within [`CONNECT_TIMEOUT`]. `name` shows in the broker's
/// connection list. The error is the last URL's.
pub async fn connect(endpoint: &Endpoint, name: &str) -> Result<Connected, AmqpError> {
    let mut last = None;
    for target in &endpoint.targets {
        match connect_one(target, &endpoint.tls, name).await {
            Ok(connection) => {
                return Ok(Connected {
                    connection,
                    url: target.url.clone(),
                })
            }
            Err(e) => {
                if endpoint.targets.len() > 1 {
                    tracing::debug!(url = %target.url, error = %e, "rabbitmq node unavailable; trying the next url");
                }
                last = Some(e);
            }
        }
    }
    Err(last.expect("an endpoint has at least one url"))
}

async fn connect_one(
    target: &Target,
    tls: &OwnedTLSConfig,
    name: &str,
) -> Result<Connection, AmqpError> {
    let properties = ConnectionProperties::default()
        .with_connection_name(LongString::from(name))
        .with_client_property("product".into(), "walcast".into());
    let runtime = lapin::runtime::default_runtime().map_err(|source| AmqpError::Connect {
        url: target.url.clone(),
        source,
    })?;
    let connect =
        Connection::connect_uri_with_config(target.uri.clone(), properties, tls.clone(), runtime);
    match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
        Err(_) => Err(AmqpError::ConnectTimeout {
            url: target.url.clone(),
        }),
        Ok(Ok(connection)) => Ok(connection),
        Ok(Err(source)) => {
            let url = target.url.clone();
            Err(match tls_problem(&source) {
                Some(problem) if target.uri.scheme == AMQPScheme::AMQPS => AmqpError::Tls {
                    url,
                    problem,
                    source,
                },
                _ => AmqpError::Connect { url, source },
            })
        }
    }
}

/// The TLS failure behind a connection error, if it is one.
fn tls_problem(error: &lapin::Error) -> Option<TlsProblem> {
    use rustls::{AlertDescription, CertificateError, Error as Tls};
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(tls) = e.downcast_ref::<Tls>() {
            return Some(match tls {
                Tls::InvalidCertificate(CertificateError::UnknownIssuer) => TlsProblem::UnknownCa,
                Tls::InvalidCertificate(
                    CertificateError::NotValidForName
                    | CertificateError::NotValidForNameContext { .. },
                ) => TlsProblem::HostMismatch,
                Tls::InvalidCertificate(
                    CertificateError::Expired
                    | CertificateError::ExpiredContext { .. }
                    | CertificateError::NotValidYet
                    | CertificateError::NotValidYetContext { .. },
                ) => TlsProblem::Expired,
                Tls::InvalidMessage(_) | Tls::InappropriateMessage { .. } => TlsProblem::NotTls,
                Tls::AlertReceived(
                    AlertDescription::CertificateRequired
                    | AlertDescription::BadCertificate
                    | AlertDescription::UnknownCA
                    | AlertDescription::CertificateUnknown
                    | AlertDescription::HandshakeFailure,
                ) => TlsProblem::ClientCertificate,
                _ => TlsProblem::Other,
            });
        }
        source = match e.downcast_ref::<std::io::Error>() {
            // io::Error's source() skips the error it wraps.
            Some(io) => io.get_ref().map(|inner| inner as _),
            None => e.source(),
        };
    }
    None
}

/// Declares the exchange events go to: a durable topic exchange, as the
/// contract says, whoever declares it first.
pub async fn declare_exchange(channel: &Channel, exchange: &str) -> lapin::Result<()> {
    declare_durable_exchange(channel, exchange, ExchangeKind::Topic).await
}

async fn declare_durable_exchange(
    channel: &Channel,
    name: &str,
    kind: ExchangeKind,
) -> lapin::Result<()> {
    channel
        .exchange_declare(
            ShortString::from(name),
            kind,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
}

/// Whether `queue` exists (a passive declare). The broker closes the
/// channel on a missing queue, so the caller opens a new one after `false`.
pub async fn queue_exists(channel: &Channel, queue: &str) -> lapin::Result<bool> {
    let passive = channel
        .queue_declare(
            ShortString::from(queue),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await;
    match passive {
        Ok(_) => Ok(true),
        Err(e) if is_reply(&e, 404) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Declares the gateway queue: durable, with [`queue_arguments`]. Returns
/// how many consumers it has already. A queue that exists with other
/// arguments is refused with 406 PRECONDITION_FAILED.
pub async fn declare_gateway_queue(
    channel: &Channel,
    queue: &str,
    config: &RabbitConfig,
) -> lapin::Result<u32> {
    channel
        .queue_declare(
            ShortString::from(queue),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            queue_arguments(config),
        )
        .await
        .map(|declared| declared.consumer_count())
}

/// How many consumers `queue` has, waiting single active consumers
/// included (a passive declare).
pub async fn consumer_count(channel: &Channel, queue: &str) -> lapin::Result<u32> {
    channel
        .queue_declare(
            ShortString::from(queue),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map(|declared| declared.consumer_count())
}

/// The gateway queue's arguments: its explicit `x-queue-type`, a single
/// active consumer on quorum queues (which ignore exclusive consumers), and
/// `x-expires` unless it is turned off (both types accept it).
pub fn queue_arguments(config: &RabbitConfig) -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert(
        ShortString::from("x-queue-type"),
        AMQPValue::LongString(LongString::from(config.queue_type.as_str())),
    );
    if config.queue_type == QueueType::Quorum {
        arguments.insert(
            ShortString::from("x-single-active-consumer"),
            AMQPValue::Boolean(true),
        );
    }
    if config.queue_expires_ms > 0 {
        // validate() keeps it within a u32, as RabbitMQ wants.
        let expires = config.queue_expires_ms.min(u64::from(u32::MAX)) as i64;
        arguments.insert(
            ShortString::from("x-expires"),
            AMQPValue::LongLongInt(expires),
        );
    }
    arguments
}

/// Binds `queue` to `exchange` with `routing_key`.
pub async fn bind_queue(
    channel: &Channel,
    queue: &str,
    exchange: &str,
    routing_key: &str,
) -> lapin::Result<()> {
    channel
        .queue_bind(
            ShortString::from(queue),
            ShortString::from(exchange),
            ShortString::from(routing_key),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
}

/// Declares the dead letters `name`: a durable fanout exchange and a
/// durable queue of the same name bound to it. On failure, says which of
/// the three (`"dead-letter exchange"`, `"dead-letter queue"`, `"binding
/// of dead-letter queue"`) the broker refused.
///
/// The queue has the gateway queue's type (`queue_type`): a classic queue
/// lives on one node, and while that node is down it cannot even be
/// declared, which would stop every gateway of a quorum cluster.
pub async fn declare_dead_letter(
    channel: &Channel,
    name: &str,
    queue_type: QueueType,
) -> Result<(), (&'static str, lapin::Error)> {
    declare_durable_exchange(channel, name, ExchangeKind::Fanout)
        .await
        .map_err(|e| ("dead-letter exchange", e))?;
    channel
        .queue_declare(
            ShortString::from(name),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            dead_letter_arguments(queue_type),
        )
        .await
        .map_err(|e| ("dead-letter queue", e))?;
    bind_queue(channel, name, name, "")
        .await
        .map_err(|e| ("binding of dead-letter queue", e))
}

fn dead_letter_arguments(queue_type: QueueType) -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert(
        ShortString::from("x-queue-type"),
        AMQPValue::LongString(LongString::from(queue_type.as_str())),
    );
    arguments
}

/// Whether the broker answered `error` with this AMQP reply code (404
/// NOT_FOUND, 406 PRECONDITION_FAILED, 403 ACCESS_REFUSED, ...).
pub fn is_reply(error: &lapin::Error, code: u16) -> bool {
    matches!(error.kind(), lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == code)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str) -> RabbitConfig {
        RabbitConfig {
            url: url.into(),
            ..RabbitConfig::default()
        }
    }

    #[test]
    fn several_urls_are_tried_in_order_and_shown_redacted() {
        let endpoint = Endpoint::new(&config(
            "amqp://u:secret@a:5681/%2f, amqp://u:secret@b:5682/%2f",
        ))
        .unwrap();
        assert_eq!(endpoint.targets.len(), 2);
        assert_eq!(endpoint.targets[1].uri.authority.port, 5682);
        assert!(!endpoint.url().contains("secret"), "{}", endpoint.url());
        assert!(!format!("{endpoint:?}").contains("secret"));
    }

    #[test]
    fn a_bad_url_or_an_unreadable_tls_file_is_named() {
        let e = Endpoint::new(&config("amqp://u:secret@a:notaport/")).unwrap_err();
        assert!(matches!(e, AmqpError::InvalidUrl { .. }), "{e}");
        assert!(!e.to_string().contains("secret"), "{e}");
        let e = Endpoint::new(&RabbitConfig {
            tls_ca_file: "/nonexistent/ca.pem".into(),
            ..config("amqps://h/")
        })
        .unwrap_err();
        assert!(e.to_string().contains("rabbitmq.tls_ca_file"), "{e}");
        assert!(!e.is_retryable());
    }

    #[test]
    fn a_ca_file_without_a_certificate_is_refused() {
        let dir = std::env::temp_dir().join(format!("walcast-amqp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("not-a-ca.pem");
        std::fs::write(&path, "hello").unwrap();
        let e = Endpoint::new(&RabbitConfig {
            tls_ca_file: path.display().to_string(),
            ..config("amqps://h/")
        })
        .unwrap_err();
        assert!(e.to_string().contains("no PEM certificate"), "{e}");
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn queue_arguments_name_the_type_and_single_active_consumer_on_quorum() {
        let classic = queue_arguments(&RabbitConfig::default());
        let inner = classic.inner();
        assert_eq!(
            inner.get("x-queue-type"),
            Some(&AMQPValue::LongString("classic".into()))
        );
        assert!(!inner.contains_key("x-single-active-consumer"));
        assert!(inner.contains_key("x-expires"));
        let quorum = queue_arguments(&RabbitConfig {
            queue_type: QueueType::Quorum,
            queue_expires_ms: 0,
            ..RabbitConfig::default()
        });
        let inner = quorum.inner();
        assert_eq!(
            inner.get("x-queue-type"),
            Some(&AMQPValue::LongString("quorum".into()))
        );
        assert_eq!(
            inner.get("x-single-active-consumer"),
            Some(&AMQPValue::Boolean(true))
        );
        assert!(!inner.contains_key("x-expires"));
    }
}
