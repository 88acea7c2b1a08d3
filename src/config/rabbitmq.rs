//! `[rabbitmq]`: the broker, the exchange events go to, the gateway's own
//! queue, the publisher's window and the broker connection's TLS files.
//!
//! It checks shapes and ranges; whether the broker is reachable is
//! `walcast check`'s question.

use std::fmt;
use std::ops::RangeInclusive;

use serde::Deserialize;

use super::{check_ranges, redact_url, Problem};

#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RabbitConfig {
    /// AMQP URL of the broker.
    pub url: String,
    /// Topic exchange events are published to.
    pub exchange: String,
    /// This gateway's own durable queue, bound to the exchange. Every gateway
    /// instance needs its own; empty means `walcast.gateway.<hostname>`.
    pub queue: String,
    /// Deliveries the broker may push to this gateway before it acks (basic.qos).
    pub prefetch: u16,
    /// Published but unconfirmed messages the publisher allows in flight.
    pub publish_window: usize,
    /// Longest wait between reconnect attempts, in milliseconds.
    pub max_backoff_ms: u64,
    /// The gateway queue is deleted by the broker after it has had no
    /// consumer for this long (`x-expires`), so a gateway that is gone for
    /// good does not pile up every event on the broker's disk. 0 keeps it
    /// forever.
    pub queue_expires_ms: u64,
    /// An event whose JSON encoding is larger than this many bytes is
    /// published as its `oversize` stub (`new`/`old` null). Must stay below
    /// the broker's `max_message_size` (128 MiB by default in RabbitMQ 3.10).
    pub max_event_bytes: usize,
    /// Bytes of published but unconfirmed messages the publisher allows in
    /// flight, besides `publish_window` messages; one larger event may
    /// still go alone.
    pub publish_window_bytes: usize,
    /// `x-queue-type` of the gateway queue: classic, or quorum (replicated,
    /// then consumed as a single active consumer).
    pub queue_type: QueueType,
    /// PEM file of the CA(s) that sign the broker's certificate (amqps://),
    /// trusted besides the built-in public roots; empty: public roots only.
    pub tls_ca_file: String,
    /// PEM client certificate (chain) for brokers that ask for one; needs
    /// `tls_key_file`.
    pub tls_cert_file: String,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1, unencrypted) of `tls_cert_file`.
    pub tls_key_file: String,
    /// Pins the gateway to one stream: the `x-walcast-source`
    /// (`<system identifier>/<database>/<slot>`) it follows; messages from
    /// any other source go to the dead letters. Empty: follow the newest
    /// source (a change of source restarts the replay history).
    pub source: String,
    /// Dead-letter exchange and queue (both durable, the queue bound to the
    /// fanout exchange) for messages the gateway cannot use.
    pub dead_letter: String,
}

/// The type of the gateway's queue (`x-queue-type`). Declared explicitly,
/// because brokers differ in what they create by default (Amazon MQ and
/// RabbitMQ 4.x can make new queues quorum).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    /// A single-node queue; one gateway holds it with an exclusive consumer.
    #[default]
    Classic,
    /// A replicated (Raft) queue; one gateway holds it as its single active
    /// consumer, others wait as standbys.
    Quorum,
}

impl QueueType {
    /// The value of `x-queue-type`.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
        }
    }
}

/// 16 MiB: an eighth of RabbitMQ's default `max_message_size` (128 MiB),
/// so a broker left at its default never refuses an event; and larger than
/// any row a browser client can sensibly take in one `change` message.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;
/// RabbitMQ 3.10's default (and walcast's upper bound) for `max_event_bytes`.
pub const RABBITMQ_DEFAULT_MAX_MESSAGE_SIZE: usize = 128 * 1024 * 1024;
/// 64 MiB: four largest events, or a full count window of 64 KiB events.
pub const DEFAULT_PUBLISH_WINDOW_BYTES: usize = 64 * 1024 * 1024;
pub const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const DEFAULT_EXCHANGE: &str = "walcast.changes";
pub const DEFAULT_PREFETCH: u16 = 1000;
pub const DEFAULT_PUBLISH_WINDOW: usize = 1024;
pub const DEFAULT_MAX_BACKOFF_MS: u64 = 30_000;
/// Half an hour without a consumer before the broker drops the queue.
pub const DEFAULT_QUEUE_EXPIRES_MS: u64 = 1_800_000;
pub const DEFAULT_DEAD_LETTER: &str = "walcast.dead";

/// Messages in flight: at least one, at most what a u16 delivery window holds.
const PUBLISH_WINDOW: RangeInclusive<u64> = 1..=65_535;
/// Backoff: a tenth of a second to an hour.
const MAX_BACKOFF_MS: RangeInclusive<u64> = 100..=3_600_000;
/// `x-expires` below ten seconds would drop the queue of a restarting gateway.
const QUEUE_EXPIRES_MS: RangeInclusive<u64> = 10_000..=u32::MAX as u64;
const MAX_EVENT_BYTES: RangeInclusive<usize> = 1024..=RABBITMQ_DEFAULT_MAX_MESSAGE_SIZE;
const PUBLISH_WINDOW_BYTES: RangeInclusive<u64> = 65_536..=u32::MAX as u64;
/// AMQP short strings (exchange and queue names) hold at most 255 bytes.
const NAME_LEN: RangeInclusive<usize> = 1..=255;

impl Default for RabbitConfig {
    fn default() -> Self {
        RabbitConfig {
            url: DEFAULT_URL.into(),
            exchange: DEFAULT_EXCHANGE.into(),
            queue: String::new(),
            prefetch: DEFAULT_PREFETCH,
            publish_window: DEFAULT_PUBLISH_WINDOW,
            max_backoff_ms: DEFAULT_MAX_BACKOFF_MS,
            queue_expires_ms: DEFAULT_QUEUE_EXPIRES_MS,
            max_event_bytes: DEFAULT_MAX_EVENT_BYTES,
            publish_window_bytes: DEFAULT_PUBLISH_WINDOW_BYTES,
            queue_type: QueueType::Classic,
            tls_ca_file: String::new(),
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
            source: String::new(),
            dead_letter: DEFAULT_DEAD_LETTER.into(),
        }
    }
}

impl fmt::Debug for RabbitConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitConfig")
            .field("url", &redact_url(&self.url))
            .field("exchange", &self.exchange)
            .field("queue", &self.queue)
            .field("prefetch", &self.prefetch)
            .field("publish_window", &self.publish_window)
            .field("max_backoff_ms", &self.max_backoff_ms)
            .field("queue_expires_ms", &self.queue_expires_ms)
            .field("max_event_bytes", &self.max_event_bytes)
            .field("publish_window_bytes", &self.publish_window_bytes)
            .field("queue_type", &self.queue_type)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("tls_cert_file", &self.tls_cert_file)
            .field("tls_key_file", &self.tls_key_file)
            .field("source", &self.source)
            .field("dead_letter", &self.dead_letter)
            .finish()
    }
}

impl RabbitConfig {
    /// The broker URLs, in the order they are tried: `url` may list
    /// several, comma-separated (the nodes of a cluster).
    pub fn urls(&self) -> impl Iterator<Item = &str> {
        self.url.split(',').map(str::trim).filter(|u| !u.is_empty())
    }

    /// The gateway queue name, with the hostname default filled in.
    pub fn queue_name(&self) -> String {
        if !self.queue.is_empty() {
            return self.queue.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "local".into());
        format!("walcast.gateway.{host}")
    }

    /// Adds every problem of `[rabbitmq]` to `problems`.
    pub(super) fn validate(&self, problems: &mut Vec<Problem>) {
        self.validate_urls(problems);
        if !NAME_LEN.contains(&self.exchange.len()) {
            problems.push(Problem::new(
                "rabbitmq.exchange",
                "must be 1 to 255 characters",
            ));
        }
        if self.queue.len() > *NAME_LEN.end() {
            problems.push(Problem::new(
                "rabbitmq.queue",
                "must be at most 255 characters",
            ));
        }
        if self.prefetch == 0 {
            problems.push(Problem::new("rabbitmq.prefetch", "must be at least 1"));
        }
        check_ranges(
            problems,
            &[
                (
                    "rabbitmq.publish_window",
                    self.publish_window as u64,
                    PUBLISH_WINDOW,
                ),
                (
                    "rabbitmq.max_backoff_ms",
                    self.max_backoff_ms,
                    MAX_BACKOFF_MS,
                ),
            ],
        );
        if self.queue_expires_ms != 0 && !QUEUE_EXPIRES_MS.contains(&self.queue_expires_ms) {
            problems.push(Problem::new(
                "rabbitmq.queue_expires_ms",
                format!(
                    "{} must be 0 (never) or in {}..={}",
                    self.queue_expires_ms,
                    QUEUE_EXPIRES_MS.start(),
                    QUEUE_EXPIRES_MS.end()
                ),
            ));
        }
        if !MAX_EVENT_BYTES.contains(&self.max_event_bytes) {
            problems.push(Problem::new(
                "rabbitmq.max_event_bytes",
                format!(
                    "{} is out of range {}..={}; keep it below the broker's max_message_size (128 MiB by default)",
                    self.max_event_bytes,
                    MAX_EVENT_BYTES.start(),
                    MAX_EVENT_BYTES.end()
                ),
            ));
        }
        check_ranges(
            problems,
            &[(
                "rabbitmq.publish_window_bytes",
                self.publish_window_bytes as u64,
                PUBLISH_WINDOW_BYTES,
            )],
        );
        if !self.source.is_empty()
            && (self.source.len() > 1024 || self.source.matches('/').count() < 2)
        {
            problems.push(Problem::new(
                "rabbitmq.source",
                "must be empty (follow the newest source) or <system identifier>/<database>/<slot> as in the x-walcast-source header of a message (walcast dlq list shows it)",
            ));
        }
        if !NAME_LEN.contains(&self.dead_letter.len()) {
            problems.push(Problem::new(
                "rabbitmq.dead_letter",
                "must be 1 to 255 characters",
            ));
        }
    }

    /// The URL list and the TLS files that only make sense with amqps://.
    fn validate_urls(&self, problems: &mut Vec<Problem>) {
        if self.urls().next().is_none() {
            problems.push(Problem::new(
                "rabbitmq.url",
                "is empty; expected amqp://user:password@host:5672/%2f",
            ));
        }
        for url in self.urls() {
            if !(url.starts_with("amqp://") || url.starts_with("amqps://")) {
                problems.push(Problem::new(
                    "rabbitmq.url",
                    format!(
                        "{:?} is not an AMQP URL; expected amqp://user:password@host:5672/%2f (several, comma-separated, are tried in order)",
                        redact_url(url)
                    ),
                ));
            }
        }
        let tls_files = [&self.tls_ca_file, &self.tls_cert_file, &self.tls_key_file];
        if tls_files.iter().any(|f| !f.is_empty()) {
            for url in self.urls().filter(|u| u.starts_with("amqp://")) {
                problems.push(Problem::new(
                    "rabbitmq.url",
                    format!(
                        "{:?} is plain amqp:// but rabbitmq.tls_* is set; use amqps:// (port 5671) so the certificates are used, or unset rabbitmq.tls_*",
                        redact_url(url)
                    ),
                ));
            }
        }
        if self.tls_cert_file.is_empty() != self.tls_key_file.is_empty() {
            problems.push(Problem::new(
                if self.tls_cert_file.is_empty() {
                    "rabbitmq.tls_cert_file"
                } else {
                    "rabbitmq.tls_key_file"
                },
                "a client certificate needs both rabbitmq.tls_cert_file and rabbitmq.tls_key_file",
            ));
        }
    }
}
