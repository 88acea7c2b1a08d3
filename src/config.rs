//! Settings: loading, layering and validation.
//!
//! Settings come from three layers, each overriding the one before:
//! `config.toml` (or the file named by `--config` / `WALCAST_CONFIG`), the
//! environment (`WALCAST_<SECTION>_<KEY>`, plus `DATABASE_URL` and
//! `RABBITMQ_URL` as commonly used), and command-line flags. Unknown keys are
//! errors, never silently ignored. [`Config::validate`] is pure and reports
//! every problem with the field it belongs to.
//!
//! Secrets: URLs may carry passwords. Anything that prints a URL goes through
//! [`redact_url`]; `Debug` of [`Config`] redacts too, and shows `[auth]`
//! tokens and the JWT secret only as a count and a set/unset mark.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::pg::{PgConfig, SslMode, TlsSettings};

/// Why settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("invalid configuration: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<Problem>),
}

/// One problem found by [`Config::validate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub field: &'static str,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// All of walcast's settings. See `config.toml` for each one's meaning.
#[derive(Clone, Deserialize, Default, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub postgres: PostgresConfig,
    pub rabbitmq: RabbitConfig,
    pub http: HttpConfig,
    pub fanout: FanoutConfig,
    pub log: LogConfig,
    pub auth: AuthConfig,
}

#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresConfig {
    /// Connection URL of the database whose changes are captured.
    pub url: String,
    /// Logical replication slot walcast reads from.
    pub slot: String,
    /// Publication that names the captured tables.
    pub publication: String,
    /// Captured tables, `schema.table` (schema defaults to `public`).
    pub tables: Vec<String>,
    /// How often a standby status update is sent, in milliseconds.
    pub status_interval_ms: u64,
    /// Connect timeout, in milliseconds.
    pub connect_timeout_ms: u64,
    /// Longest wait between reconnect attempts, in milliseconds.
    pub max_backoff_ms: u64,
    /// `application_name` reported to Postgres (shows in pg_stat_replication).
    pub application_name: String,
    /// libpq's sslmode: disable, prefer, require, verify-ca, verify-full.
    /// The URL's own `?sslmode=` wins over this (as over PGSSLMODE).
    pub sslmode: String,
    /// PEM file of the CA the server's certificate must lead to.
    pub sslrootcert: String,
    /// PEM file of a client certificate, for servers that ask for one.
    pub sslcert: String,
    /// PEM file of the client certificate's private key.
    pub sslkey: String,
    /// A moved confirmed position is reported to Postgres within this many
    /// milliseconds (bounds what a crash re-sends).
    pub feedback_interval_ms: u64,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            url: "postgres://postgres@127.0.0.1:5432/postgres".into(),
            slot: "walcast".into(),
            publication: "walcast".into(),
            tables: vec!["public.orders".into()],
            status_interval_ms: 10_000,
            connect_timeout_ms: 10_000,
            max_backoff_ms: 30_000,
            application_name: "walcast".into(),
            sslmode: "prefer".into(),
            sslrootcert: String::new(),
            sslcert: String::new(),
            sslkey: String::new(),
            feedback_interval_ms: 1_000,
        }
    }
}

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

impl Default for RabbitConfig {
    fn default() -> Self {
        RabbitConfig {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            exchange: "walcast.changes".into(),
            queue: String::new(),
            prefetch: 1000,
            publish_window: 1024,
            max_backoff_ms: 30_000,
            queue_expires_ms: 1_800_000,
            max_event_bytes: DEFAULT_MAX_EVENT_BYTES,
            publish_window_bytes: DEFAULT_PUBLISH_WINDOW_BYTES,
            queue_type: QueueType::Classic,
            tls_ca_file: String::new(),
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
            source: String::new(),
            dead_letter: "walcast.dead".into(),
        }
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
}

/// 256 MiB: 10,000 held events of up to ~26 KiB each before the cap bites.
pub const DEFAULT_REPLAY_MAX_BYTES: usize = 256 * 1024 * 1024;
/// The smallest byte cap: a few ordinary events.
pub const MIN_REPLAY_MAX_BYTES: usize = 64 * 1024;
/// 8 MiB queued per socket: 4,096 (`socket_buffer`) events of 2 KiB.
pub const DEFAULT_SOCKET_BUFFER_BYTES: usize = 8 * 1024 * 1024;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FanoutConfig {
    /// Recent events held for `since` replay and snapshot hand-off.
    pub replay_buffer: usize,
    /// Bytes the held events may take at most (0: no cap); the oldest go
    /// first, as when `replay_buffer` is reached.
    pub replay_max_bytes: usize,
    /// Events queued per socket before it counts as too slow and is
    /// disconnected (it reconnects with `since` and loses nothing).
    pub socket_buffer: usize,
    /// Directory of the replay log, so the history survives a crash; empty
    /// keeps it in memory only.
    pub replay_dir: String,
    /// fdatasync every replay log record before the delivery is acked.
    pub replay_fsync: bool,
    /// Engine.IO heartbeat interval, in milliseconds.
    pub ping_interval_ms: u64,
    /// How long a client may leave a ping unanswered, in milliseconds.
    pub ping_timeout_ms: u64,
    /// A replay that cannot queue anything for a socket this long (in
    /// milliseconds) disconnects it as too slow.
    pub replay_stall_timeout_ms: u64,
    /// Bytes that may be queued for one socket; past it the socket is
    /// disconnected as too slow (it reconnects with `since`).
    pub socket_buffer_bytes: usize,
    /// Subscriptions one socket may hold.
    pub max_subscriptions: usize,
    /// Largest `key` of a subscription, in bytes of its canonical JSON.
    pub max_key_bytes: usize,
    /// Bytes all of one socket's subscriptions may take together.
    pub max_subscription_bytes: usize,
    /// Largest packet (WebSocket message, polling request body) a client
    /// may send; a larger one closes that client's connection.
    pub max_packet_bytes: usize,
}

impl Default for FanoutConfig {
    fn default() -> Self {
        FanoutConfig {
            replay_buffer: 10_000,
            replay_max_bytes: DEFAULT_REPLAY_MAX_BYTES,
            socket_buffer: 4096,
            replay_dir: String::new(),
            replay_fsync: false,
            ping_interval_ms: 25_000,
            ping_timeout_ms: 20_000,
            replay_stall_timeout_ms: 10_000,
            socket_buffer_bytes: DEFAULT_SOCKET_BUFFER_BYTES,
            max_subscriptions: 1024,
            max_key_bytes: 1024,
            max_subscription_bytes: 256 * 1024,
            max_packet_bytes: 64 * 1024,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address the HTTP API, dashboard and Socket.IO listen on.
    pub listen: String,
    /// Largest request body the API reads; larger ones get 413.
    pub body_limit_bytes: usize,
    /// Connections the API's own Postgres pool may hold.
    pub pool_size: usize,
    /// Longest wait for a pooled connection (including connecting), in
    /// milliseconds; past it a request gets 503.
    pub pool_timeout_ms: u64,
    /// Longest a single API statement may run, in milliseconds (Postgres
    /// `statement_timeout`); past it the request gets 503.
    pub statement_timeout_ms: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:8080".into(),
            body_limit_bytes: 64 * 1024,
            pool_size: 16,
            pool_timeout_ms: 5_000,
            statement_timeout_ms: 10_000,
        }
    }
}

/// Who may write through the HTTP API and connect over Socket.IO.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Off by default. When on, API writes (POST, PUT, PATCH, DELETE) need
    /// `Authorization: Bearer <token>`; reads stay open.
    pub enabled: bool,
    /// Static bearer tokens, each at least 16 characters.
    pub tokens: Vec<String>,
    /// Shared secret for HS256 JWTs (at least 32 bytes); empty: no JWTs.
    pub jwt_secret: String,
    /// With auth off, `walcast run` refuses to listen on a non-loopback
    /// address unless this is true: anyone who reaches it may then write
    /// and subscribe.
    pub allow_anonymous: bool,
    /// When set, a JWT's `aud` must name it.
    pub jwt_audience: String,
    /// When set, a JWT's `iss` must equal it.
    pub jwt_issuer: String,
    /// Clock skew tolerated for a JWT's `exp` and `nbf`, in seconds; a
    /// socket admitted with a JWT is disconnected this long after `exp`.
    pub jwt_leeway_secs: u64,
}

/// The leeway `auth.jwt_leeway_secs` has by default.
pub const DEFAULT_JWT_LEEWAY_SECS: u64 = 60;

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            enabled: false,
            tokens: Vec::new(),
            jwt_secret: String::new(),
            jwt_audience: String::new(),
            jwt_issuer: String::new(),
            jwt_leeway_secs: DEFAULT_JWT_LEEWAY_SECS,
            allow_anonymous: false,
        }
    }
}

/// Shortest static token and JWT secret accepted. 32 bytes for HS256 is
/// RFC 7518's minimum key size (3.2); 16 characters keeps guessable
/// tokens out.
pub const MIN_TOKEN_LEN: usize = 16;
pub const MIN_JWT_SECRET_LEN: usize = 32;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `error`, `warn`, `info`, `debug`, `trace`, or a tracing filter directive.
    pub level: String,
    /// `text` or `json`.
    pub format: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: "text".into(),
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("postgres", &self.postgres)
            .field("rabbitmq", &self.rabbitmq)
            .field("http", &self.http)
            .field("fanout", &self.fanout)
            .field("log", &self.log)
            .field("auth", &self.auth)
            .finish()
    }
}

impl fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &redact_url(&self.url))
            .field("slot", &self.slot)
            .field("publication", &self.publication)
            .field("tables", &self.tables)
            .field("status_interval_ms", &self.status_interval_ms)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("max_backoff_ms", &self.max_backoff_ms)
            .field("application_name", &self.application_name)
            .field("sslmode", &self.sslmode)
            .field("sslrootcert", &self.sslrootcert)
            .field("sslcert", &self.sslcert)
            .field("sslkey", &self.sslkey)
            .field("feedback_interval_ms", &self.feedback_interval_ms)
            .finish()
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

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Secrets: only how many and whether set, never the values.
        f.debug_struct("AuthConfig")
            .field("enabled", &self.enabled)
            .field("tokens", &format_args!("[{} redacted]", self.tokens.len()))
            .field(
                "jwt_secret",
                &format_args!(
                    "{}",
                    if self.jwt_secret.is_empty() {
                        "(unset)"
                    } else {
                        "***"
                    }
                ),
            )
            .field("allow_anonymous", &self.allow_anonymous)
            .field("jwt_audience", &self.jwt_audience)
            .field("jwt_issuer", &self.jwt_issuer)
            .field("jwt_leeway_secs", &self.jwt_leeway_secs)
            .finish()
    }
}

/// Values given on the command line; `None` leaves the lower layers' value.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub database_url: Option<String>,
    pub slot: Option<String>,
    pub publication: Option<String>,
    pub tables: Option<Vec<String>>,
    pub rabbitmq_url: Option<String>,
    pub exchange: Option<String>,
    pub listen: Option<String>,
    pub log_level: Option<String>,
    pub log_format: Option<String>,
}

/// The sections a `WALCAST_<SECTION>_<KEY>` variable may name.
const SECTIONS: [&str; 6] = ["postgres", "rabbitmq", "http", "fanout", "log", "auth"];

impl Config {
    /// Loads the layered configuration and validates it.
    ///
    /// `path` is the file named on the command line; without it
    /// `WALCAST_CONFIG` is used, and then `./config.toml` if it exists.
    pub fn load(
        path: Option<&Path>,
        env: &BTreeMap<String, String>,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        let explicit = path
            .map(Path::to_path_buf)
            .or_else(|| env.get("WALCAST_CONFIG").map(PathBuf::from));
        let mut table = match &explicit {
            Some(path) => read_table(path)?,
            None if Path::new("config.toml").exists() => read_table(Path::new("config.toml"))?,
            None => toml::Table::new(),
        };
        let source = explicit.unwrap_or_else(|| PathBuf::from("config.toml"));
        // The file alone first, so that its mistakes are blamed on it and
        // the environment's (checked one variable at a time by `apply_env`)
        // on the variable.
        let mut config = deserialize(&table).map_err(|message| ConfigError::Parse {
            path: source,
            message,
        })?;
        if let Some(layered) = apply_env(&mut table, env)? {
            config = layered;
        }
        config.apply(overrides);
        let problems = config.validate();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// Parses a TOML document (no layering); for tests and tools.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Parse {
                path: PathBuf::from("<string>"),
                message: e.message().to_owned(),
            })?;
        Config::deserialize(toml::Value::Table(table)).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<string>"),
            message: e.message().to_owned(),
        })
    }

    fn apply(&mut self, o: &Overrides) {
        let set = |slot: &mut String, value: &Option<String>| {
            if let Some(value) = value {
                slot.clone_from(value);
            }
        };
        set(&mut self.postgres.url, &o.database_url);
        set(&mut self.postgres.slot, &o.slot);
        set(&mut self.postgres.publication, &o.publication);
        if let Some(tables) = &o.tables {
            self.postgres.tables.clone_from(tables);
        }
        set(&mut self.rabbitmq.url, &o.rabbitmq_url);
        set(&mut self.rabbitmq.exchange, &o.exchange);
        set(&mut self.http.listen, &o.listen);
        set(&mut self.log.level, &o.log_level);
        set(&mut self.log.format, &o.log_format);
    }

    /// Every problem with these settings, each with its field. Pure.
    pub fn validate(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut problem = |field: &'static str, message: String| {
            problems.push(Problem { field, message });
        };

        let pg = &self.postgres;
        if let Err(message) = SslMode::parse(&pg.sslmode) {
            problem("postgres.sslmode", message);
        }
        match PgConfig::parse(&pg.url, &self.tls_defaults()) {
            Ok(parsed) => {
                if parsed.get_hosts().is_empty() {
                    problem("postgres.url", "names no host".into());
                }
                for message in parsed.tls().problems() {
                    problem("postgres.url", message);
                }
            }
            Err(e) => problem(
                "postgres.url",
                format!(
                    "{:?} is not a valid Postgres URL ({e}); expected postgres://user:password@host:port/database",
                    redact_url(&pg.url)
                ),
            ),
        }
        if let Err(message) = check_slot_name(&pg.slot) {
            problem("postgres.slot", message);
        }
        if let Err(message) = check_identifier(&pg.publication) {
            problem("postgres.publication", message);
        }
        if pg.tables.is_empty() {
            problem(
                "postgres.tables",
                "is empty; name at least one table, e.g. [\"public.orders\"]".into(),
            );
        }
        for table in &pg.tables {
            if let Err(message) = TableName::parse(table) {
                problem("postgres.tables", message);
            }
        }
        if !(100..=3_600_000).contains(&pg.status_interval_ms) {
            problem(
                "postgres.status_interval_ms",
                format!("{} is out of range 100..=3600000", pg.status_interval_ms),
            );
        }
        if !(100..=600_000).contains(&pg.connect_timeout_ms) {
            problem(
                "postgres.connect_timeout_ms",
                format!("{} is out of range 100..=600000", pg.connect_timeout_ms),
            );
        }
        if !(100..=3_600_000).contains(&pg.max_backoff_ms) {
            problem(
                "postgres.max_backoff_ms",
                format!("{} is out of range 100..=3600000", pg.max_backoff_ms),
            );
        }
        if pg.application_name.is_empty() || pg.application_name.len() > 63 {
            problem(
                "postgres.application_name",
                "must be 1 to 63 characters".into(),
            );
        }
        if !(100..=3_600_000).contains(&pg.feedback_interval_ms) {
            problem(
                "postgres.feedback_interval_ms",
                format!("{} is out of range 100..=3600000", pg.feedback_interval_ms),
            );
        }

        let mq = &self.rabbitmq;
        if mq.urls().next().is_none() {
            problem(
                "rabbitmq.url",
                "is empty; expected amqp://user:password@host:5672/%2f".into(),
            );
        }
        for url in mq.urls() {
            if !(url.starts_with("amqp://") || url.starts_with("amqps://")) {
                problem(
                    "rabbitmq.url",
                    format!(
                        "{:?} is not an AMQP URL; expected amqp://user:password@host:5672/%2f (several, comma-separated, are tried in order)",
                        redact_url(url)
                    ),
                );
            }
        }
        let tls_files = [&mq.tls_ca_file, &mq.tls_cert_file, &mq.tls_key_file];
        if tls_files.iter().any(|f| !f.is_empty()) {
            for url in mq.urls().filter(|u| u.starts_with("amqp://")) {
                problem(
                    "rabbitmq.url",
                    format!(
                        "{:?} is plain amqp:// but rabbitmq.tls_* is set; use amqps:// (port 5671) so the certificates are used, or unset rabbitmq.tls_*",
                        redact_url(url)
                    ),
                );
            }
        }
        if mq.tls_cert_file.is_empty() != mq.tls_key_file.is_empty() {
            problem(
                if mq.tls_cert_file.is_empty() {
                    "rabbitmq.tls_cert_file"
                } else {
                    "rabbitmq.tls_key_file"
                },
                "a client certificate needs both rabbitmq.tls_cert_file and rabbitmq.tls_key_file"
                    .into(),
            );
        }
        if mq.exchange.is_empty() || mq.exchange.len() > 255 {
            problem("rabbitmq.exchange", "must be 1 to 255 characters".into());
        }
        if mq.queue.len() > 255 {
            problem("rabbitmq.queue", "must be at most 255 characters".into());
        }
        if mq.prefetch == 0 {
            problem("rabbitmq.prefetch", "must be at least 1".into());
        }
        if !(1..=65_535).contains(&mq.publish_window) {
            problem(
                "rabbitmq.publish_window",
                format!("{} is out of range 1..=65535", mq.publish_window),
            );
        }
        if !(100..=3_600_000).contains(&mq.max_backoff_ms) {
            problem(
                "rabbitmq.max_backoff_ms",
                format!("{} is out of range 100..=3600000", mq.max_backoff_ms),
            );
        }
        if mq.queue_expires_ms != 0 && !(10_000..=u32::MAX as u64).contains(&mq.queue_expires_ms) {
            problem(
                "rabbitmq.queue_expires_ms",
                format!(
                    "{} must be 0 (never) or in 10000..={}",
                    mq.queue_expires_ms,
                    u32::MAX
                ),
            );
        }
        if !(1024..=RABBITMQ_DEFAULT_MAX_MESSAGE_SIZE).contains(&mq.max_event_bytes) {
            problem(
                "rabbitmq.max_event_bytes",
                format!(
                    "{} is out of range 1024..={RABBITMQ_DEFAULT_MAX_MESSAGE_SIZE}; keep it below the broker's max_message_size (128 MiB by default)",
                    mq.max_event_bytes
                ),
            );
        }
        if !(65_536..=u32::MAX as usize).contains(&mq.publish_window_bytes) {
            problem(
                "rabbitmq.publish_window_bytes",
                format!(
                    "{} is out of range 65536..={}",
                    mq.publish_window_bytes,
                    u32::MAX
                ),
            );
        }
        if !mq.source.is_empty() && (mq.source.len() > 1024 || mq.source.matches('/').count() < 2) {
            problem(
                "rabbitmq.source",
                "must be empty (follow the newest source) or <system identifier>/<database>/<slot> as in the x-walcast-source header of a message (walcast dlq list shows it)".into(),
            );
        }
        if mq.dead_letter.is_empty() || mq.dead_letter.len() > 255 {
            problem("rabbitmq.dead_letter", "must be 1 to 255 characters".into());
        }
        if !(1..=10_000_000).contains(&self.fanout.replay_buffer) {
            problem(
                "fanout.replay_buffer",
                format!("{} is out of range 1..=10000000", self.fanout.replay_buffer),
            );
        }
        let max_bytes = self.fanout.replay_max_bytes;
        if max_bytes != 0 && max_bytes < MIN_REPLAY_MAX_BYTES {
            problem(
                "fanout.replay_max_bytes",
                format!("{max_bytes} must be 0 (no cap) or at least {MIN_REPLAY_MAX_BYTES}"),
            );
        }
        if !(16..=1_000_000).contains(&self.fanout.socket_buffer) {
            problem(
                "fanout.socket_buffer",
                format!("{} is out of range 16..=1000000", self.fanout.socket_buffer),
            );
        }
        let fanout = &self.fanout;
        if fanout.replay_dir.trim() != fanout.replay_dir || fanout.replay_dir.contains('\0') {
            problem(
                "fanout.replay_dir",
                format!(
                    "{:?} has surrounding whitespace or a NUL byte; give a directory path, e.g. \".walcast/replay\"",
                    fanout.replay_dir
                ),
            );
        }
        if fanout.replay_fsync && fanout.replay_dir.is_empty() {
            problem(
                "fanout.replay_fsync",
                "is true but fanout.replay_dir is empty; there is no log to fsync".into(),
            );
        }
        for (field, value, range) in [
            (
                "fanout.ping_interval_ms",
                fanout.ping_interval_ms,
                1_000..=3_600_000,
            ),
            (
                "fanout.ping_timeout_ms",
                fanout.ping_timeout_ms,
                1_000..=3_600_000,
            ),
            (
                "fanout.replay_stall_timeout_ms",
                fanout.replay_stall_timeout_ms,
                100..=3_600_000,
            ),
            (
                "fanout.socket_buffer_bytes",
                fanout.socket_buffer_bytes as u64,
                64 * 1024..=1 << 30,
            ),
            (
                "fanout.max_subscriptions",
                fanout.max_subscriptions as u64,
                1..=100_000,
            ),
            (
                "fanout.max_key_bytes",
                fanout.max_key_bytes as u64,
                16..=65_536,
            ),
            (
                "fanout.max_subscription_bytes",
                fanout.max_subscription_bytes as u64,
                1024..=64 << 20,
            ),
            (
                "fanout.max_packet_bytes",
                fanout.max_packet_bytes as u64,
                1024..=16 << 20,
            ),
        ] {
            if !range.contains(&value) {
                problem(
                    field,
                    format!(
                        "{value} is out of range {}..={}",
                        range.start(),
                        range.end()
                    ),
                );
            }
        }

        if self.http.listen.parse::<SocketAddr>().is_err() {
            problem(
                "http.listen",
                format!(
                    "{:?} is not a socket address; expected host:port, e.g. 127.0.0.1:8080",
                    self.http.listen
                ),
            );
        }

        let http = &self.http;
        if !(1024..=64 * 1024 * 1024).contains(&http.body_limit_bytes) {
            problem(
                "http.body_limit_bytes",
                format!("{} is out of range 1024..=67108864", http.body_limit_bytes),
            );
        }
        if !(1..=1024).contains(&http.pool_size) {
            problem(
                "http.pool_size",
                format!("{} is out of range 1..=1024", http.pool_size),
            );
        }
        if !(100..=600_000).contains(&http.pool_timeout_ms) {
            problem(
                "http.pool_timeout_ms",
                format!("{} is out of range 100..=600000", http.pool_timeout_ms),
            );
        }
        if !(100..=3_600_000).contains(&http.statement_timeout_ms) {
            problem(
                "http.statement_timeout_ms",
                format!(
                    "{} is out of range 100..=3600000",
                    http.statement_timeout_ms
                ),
            );
        }

        let auth = &self.auth;
        if auth.enabled && auth.tokens.is_empty() && auth.jwt_secret.is_empty() {
            problem(
                "auth.enabled",
                "is true but neither auth.tokens nor auth.jwt_secret is set; nobody could write"
                    .into(),
            );
        }
        // Token values never appear in these messages, only their position.
        for (index, token) in auth.tokens.iter().enumerate() {
            if token.chars().count() < MIN_TOKEN_LEN {
                problem(
                    "auth.tokens",
                    format!(
                        "token #{} is shorter than {MIN_TOKEN_LEN} characters",
                        index + 1
                    ),
                );
            }
            if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
                problem(
                    "auth.tokens",
                    format!(
                        "token #{} contains whitespace or control characters",
                        index + 1
                    ),
                );
            }
        }
        for (field, value) in [
            ("auth.jwt_audience", &auth.jwt_audience),
            ("auth.jwt_issuer", &auth.jwt_issuer),
        ] {
            if !value.is_empty() && auth.jwt_secret.is_empty() {
                problem(
                    field,
                    "is set but auth.jwt_secret is empty; there are no JWTs to check it on".into(),
                );
            }
        }
        if auth.jwt_leeway_secs > 600 {
            problem(
                "auth.jwt_leeway_secs",
                format!("{} is out of range 0..=600", auth.jwt_leeway_secs),
            );
        }
        if !auth.jwt_secret.is_empty() && auth.jwt_secret.len() < MIN_JWT_SECRET_LEN {
            problem(
                "auth.jwt_secret",
                format!(
                    "is shorter than {MIN_JWT_SECRET_LEN} bytes; HS256 needs a 256-bit key, e.g. `openssl rand -base64 48`"
                ),
            );
        }

        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            problem(
                "log.level",
                format!(
                    "{:?} is not a level (error, warn, info, debug, trace) or filter directive",
                    self.log.level
                ),
            );
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            problem(
                "log.format",
                format!("{:?} is not one of: text, json", self.log.format),
            );
        }
        problems
    }

    /// The parsed Postgres connection settings, TLS included (valid after
    /// `validate`).
    pub fn pg_config(&self) -> PgConfig {
        let mut config = PgConfig::parse(&self.postgres.url, &self.tls_defaults())
            .unwrap_or_else(|_| PgConfig::from(tokio_postgres::Config::new()));
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_millis(self.postgres.connect_timeout_ms));
        }
        config.application_name(&self.postgres.application_name);
        config
    }

    /// The `postgres.ssl*` settings, which the URL's own parameters
    /// override. An unknown sslmode is reported by `validate`.
    fn tls_defaults(&self) -> TlsSettings {
        let path = |text: &str| (!text.is_empty()).then(|| PathBuf::from(text));
        TlsSettings {
            mode: SslMode::parse(&self.postgres.sslmode).unwrap_or_default(),
            root_cert: path(&self.postgres.sslrootcert),
            cert: path(&self.postgres.sslcert),
            key: path(&self.postgres.sslkey),
        }
    }

    /// The captured tables, parsed (valid after `validate`).
    pub fn tables(&self) -> Vec<TableName> {
        self.postgres
            .tables
            .iter()
            .filter_map(|t| TableName::parse(t).ok())
            .collect()
    }
}

/// A schema-qualified table name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableName {
    pub schema: String,
    pub table: String,
}

impl TableName {
    /// Parses `schema.table` or `table` (schema `public`).
    pub fn parse(text: &str) -> Result<TableName, String> {
        let (schema, table) = match text.split_once('.') {
            Some((schema, table)) => (schema, table),
            None => ("public", text),
        };
        check_identifier(schema).map_err(|m| format!("{text:?}: schema {m}"))?;
        check_identifier(table).map_err(|m| format!("{text:?}: table {m}"))?;
        Ok(TableName {
            schema: schema.to_owned(),
            table: table.to_owned(),
        })
    }

    /// `"schema"."table"`, quoted for SQL.
    pub fn quoted(&self) -> String {
        format!(
            "{}.{}",
            quote_identifier(&self.schema),
            quote_identifier(&self.table)
        )
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.table)
    }
}

/// Quotes an SQL identifier (doubling embedded quotes).
pub fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn check_identifier(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("name is empty".into());
    }
    if name.len() > 63 {
        return Err(format!("name {name:?} is longer than 63 bytes"));
    }
    if name.contains('\0') || name.contains('.') {
        return Err(format!("name {name:?} contains '.' or a NUL byte"));
    }
    Ok(())
}

/// Postgres allows only lower-case letters, digits and underscores in slot names.
pub fn check_slot_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 63 {
        return Err(format!("slot name {name:?} must be 1 to 63 characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(format!(
            "slot name {name:?} may contain only lower-case letters, digits and underscores"
        ));
    }
    Ok(())
}

/// The URL with any password replaced by `***`.
pub fn redact_url(url: &str) -> String {
    // A list of URLs (rabbitmq.url naming several nodes): each one.
    if url.matches("://").count() > 1 && url.contains(',') {
        let redacted: Vec<String> = url.split(',').map(|u| redact_url(u.trim())).collect();
        return redacted.join(",");
    }
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return redact_query_password(url);
    };
    let userinfo = &authority[..at];
    let redacted_userinfo = match userinfo.split_once(':') {
        Some((user, _password)) => format!("{user}:***"),
        None => userinfo.to_owned(),
    };
    redact_query_password(&format!(
        "{}{}@{}",
        &url[..scheme_end + 3],
        redacted_userinfo,
        &rest[at..].trim_start_matches('@')
    ))
}

fn redact_query_password(url: &str) -> String {
    let Some((base, query)) = url.split_once('?') else {
        return url.to_owned();
    };
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
            _ => pair.to_owned(),
        })
        .collect();
    format!("{base}?{}", query.join("&"))
}

fn read_table(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    text.parse::<toml::Table>().map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string().trim().replace('\n', " "),
    })
}

/// The settings of a TOML table, or serde's message for what is wrong.
fn deserialize(table: &toml::Table) -> Result<Config, String> {
    Config::deserialize(toml::Value::Table(table.clone())).map_err(|e| e.message().to_owned())
}

/// Lays `WALCAST_<SECTION>_<KEY>`, `DATABASE_URL` and `RABBITMQ_URL` over the
/// file's table (which already deserializes). A `WALCAST_` variable whose
/// section is not one of walcast's is not a setting (`WALCAST_CONFIG`, test
/// harness variables) and is left alone.
///
/// The table is checked after each variable, so a misspelt key
/// (`WALCAST_POSTGRES_SLOTT`) or a bad value is reported against the
/// variable that brought it, not against a config file that may not even
/// exist. A handful of variables makes this a handful of small parses.
/// Returns the settings after the last variable; `None` if none applied.
fn apply_env(
    table: &mut toml::Table,
    env: &BTreeMap<String, String>,
) -> Result<Option<Config>, ConfigError> {
    let mut layered = None;
    let mut set = |section: &str, key: &str, value: toml::Value| {
        let entry = table
            .entry(section.to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        match entry {
            toml::Value::Table(t) => {
                t.insert(key.to_owned(), value);
            }
            _ => return Err(format!("[{section}] in the config file is not a table")),
        }
        deserialize(table).map_err(|message| match message.strip_prefix("unknown field") {
            Some(rest) => {
                let expected = rest.split_once(", ").map_or("", |(_, expected)| expected);
                format!("not a walcast setting: [{section}] has no key `{key}`; {expected}")
            }
            None => message,
        })
    };
    // The common names first, so WALCAST_* wins over them.
    for (var, section) in [("DATABASE_URL", "postgres"), ("RABBITMQ_URL", "rabbitmq")] {
        if let Some(value) = env.get(var) {
            let config =
                set(section, "url", toml::Value::String(value.clone())).map_err(|message| {
                    ConfigError::Env {
                        var: var.into(),
                        message,
                    }
                })?;
            layered = Some(config);
        }
    }
    for (var, value) in env {
        let Some(rest) = var.strip_prefix("WALCAST_") else {
            continue;
        };
        let rest = rest.to_ascii_lowercase();
        let Some(section) = SECTIONS.iter().find(|s| rest.starts_with(&format!("{s}_"))) else {
            continue;
        };
        let key = &rest[section.len() + 1..];
        let value = env_value(key, value);
        let config = set(section, key, value).map_err(|message| ConfigError::Env {
            var: var.clone(),
            message,
        })?;
        layered = Some(config);
    }
    Ok(layered)
}

/// Environment values are strings; numbers and lists are converted by key.
fn env_value(key: &str, value: &str) -> toml::Value {
    if key == "enabled" || key == "replay_fsync" || key == "allow_anonymous" {
        match value.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => return toml::Value::Boolean(true),
            "false" | "0" | "no" | "off" | "" => return toml::Value::Boolean(false),
            // Anything else stays a string, so deserializing names the variable's field.
            _ => {}
        }
    }
    if key == "tables" || key == "tokens" {
        return toml::Value::Array(
            value
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(|t| toml::Value::String(t.to_owned()))
                .collect(),
        );
    }
    if key.ends_with("_ms")
        || key.ends_with("_bytes")
        || key.ends_with("_secs")
        || matches!(
            key,
            "prefetch"
                | "publish_window"
                | "replay_buffer"
                | "socket_buffer"
                | "pool_size"
                | "max_subscriptions"
        )
    {
        if let Ok(n) = value.trim().parse::<i64>() {
            return toml::Value::Integer(n);
        }
    }
    toml::Value::String(value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_valid() {
        assert_eq!(Config::default().validate(), vec![]);
    }

    #[test]
    fn shipped_config_toml_parses_and_validates() {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml"))
            .expect("config.toml at the repository root");
        let config = Config::from_toml(&text).expect("config.toml parses");
        assert_eq!(config.validate(), vec![]);
    }

    /// The field names serde knows for struct `T`, read from the
    /// `deserialize_struct` call its derived `Deserialize` makes.
    fn struct_fields<T: for<'de> Deserialize<'de>>() -> &'static [&'static str] {
        use serde::de::{self, Visitor};

        struct Capture<'a>(&'a mut &'static [&'static str]);
        impl<'de> de::Deserializer<'de> for Capture<'_> {
            type Error = de::value::Error;
            fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
                Err(de::Error::custom("not a struct"))
            }
            fn deserialize_struct<V: Visitor<'de>>(
                self,
                _name: &'static str,
                fields: &'static [&'static str],
                _visitor: V,
            ) -> Result<V::Value, Self::Error> {
                *self.0 = fields;
                Err(de::Error::custom("fields captured"))
            }
            serde::forward_to_deserialize_any! {
                bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
                bytes byte_buf option unit unit_struct newtype_struct seq tuple
                tuple_struct map enum identifier ignored_any
            }
        }
        let mut fields: &'static [&'static str] = &[];
        let _ = T::deserialize(Capture(&mut fields));
        fields
    }

    /// Every setting of every section appears in the shipped config.toml
    /// with a comment above it (directly, or above the group of keys it
    /// belongs to), so no setting goes undocumented.
    #[test]
    fn every_setting_is_documented_in_config_toml() {
        let sections: [(&str, &[&str]); 6] = [
            ("postgres", struct_fields::<PostgresConfig>()),
            ("rabbitmq", struct_fields::<RabbitConfig>()),
            ("http", struct_fields::<HttpConfig>()),
            ("fanout", struct_fields::<FanoutConfig>()),
            ("log", struct_fields::<LogConfig>()),
            ("auth", struct_fields::<AuthConfig>()),
        ];
        // The hand list above (and SECTIONS) is exactly Config's sections.
        let mut names: Vec<&str> = sections.iter().map(|(name, _)| *name).collect();
        let mut config_fields = struct_fields::<Config>().to_vec();
        names.sort_unstable();
        config_fields.sort_unstable();
        assert_eq!(names, config_fields);
        let mut known = SECTIONS.to_vec();
        known.sort_unstable();
        assert_eq!(known, config_fields);

        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml"))
            .expect("config.toml at the repository root");
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        for (section, fields) in sections {
            assert!(!fields.is_empty(), "[{section}] has no fields?");
            let header = format!("[{section}]");
            let start = lines
                .iter()
                .position(|line| *line == header)
                .unwrap_or_else(|| panic!("config.toml has no {header}"));
            let end = lines[start + 1..]
                .iter()
                .position(|line| line.starts_with('['))
                .map_or(lines.len(), |i| start + 1 + i);
            let is_key = |line: &str, key: &str| {
                line.strip_prefix(key)
                    .is_some_and(|rest| rest.trim_start().starts_with('='))
            };
            for field in fields {
                let at = (start + 1..end)
                    .find(|&i| is_key(lines[i], field))
                    .unwrap_or_else(|| panic!("{section}.{field} is not in config.toml"));
                let documented = lines[start + 1..at]
                    .iter()
                    .rev()
                    .find(|line| !line.contains('=') || line.starts_with('#'))
                    .is_some_and(|line| line.starts_with('#'));
                assert!(
                    documented,
                    "{section}.{field} has no comment in config.toml"
                );
            }
        }
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = Config::from_toml("[postgres]\nslott = \"x\"\n").unwrap_err();
        assert!(err.to_string().contains("unknown field `slott`"), "{err}");
        let err = Config::from_toml("[nope]\n").unwrap_err();
        assert!(err.to_string().contains("unknown field `nope`"), "{err}");
    }

    #[test]
    fn layers_file_then_env_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[postgres]\nslot = \"from_file\"\npublication = \"file_pub\"\nurl = \"postgres://a@h/d\"\n",
        )
        .unwrap();
        let vars = env(&[
            ("WALCAST_POSTGRES_PUBLICATION", "env_pub"),
            ("WALCAST_POSTGRES_STATUS_INTERVAL_MS", "2500"),
            ("WALCAST_POSTGRES_TABLES", "public.orders, shop.items"),
            ("DATABASE_URL", "postgres://common@h/d"),
            ("WALCAST_TEST_PG_URL", "ignored, not a setting"),
        ]);
        let overrides = Overrides {
            slot: Some("from_flag".into()),
            ..Overrides::default()
        };
        let config = Config::load(Some(&path), &vars, &overrides).unwrap();
        assert_eq!(config.postgres.slot, "from_flag");
        assert_eq!(config.postgres.publication, "env_pub");
        assert_eq!(config.postgres.url, "postgres://common@h/d");
        assert_eq!(config.postgres.status_interval_ms, 2500);
        assert_eq!(config.postgres.tables, vec!["public.orders", "shop.items"]);
    }

    #[test]
    fn fanout_keys_come_from_the_environment_and_are_validated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.toml");
        std::fs::write(&path, "").unwrap();
        let vars = env(&[
            ("WALCAST_FANOUT_REPLAY_DIR", ".walcast/replay"),
            ("WALCAST_FANOUT_REPLAY_FSYNC", "true"),
            ("WALCAST_FANOUT_PING_INTERVAL_MS", "5000"),
            ("WALCAST_FANOUT_PING_TIMEOUT_MS", "4000"),
            ("WALCAST_FANOUT_REPLAY_STALL_TIMEOUT_MS", "250"),
            ("WALCAST_FANOUT_REPLAY_MAX_BYTES", "1048576"),
            ("WALCAST_FANOUT_SOCKET_BUFFER_BYTES", "2097152"),
            ("WALCAST_FANOUT_MAX_SUBSCRIPTIONS", "16"),
            ("WALCAST_FANOUT_MAX_PACKET_BYTES", "4096"),
            ("WALCAST_AUTH_JWT_LEEWAY_SECS", "5"),
        ]);
        let config = Config::load(Some(&path), &vars, &Overrides::default()).unwrap();
        let f = &config.fanout;
        assert_eq!(f.replay_dir, ".walcast/replay");
        assert!(f.replay_fsync);
        assert_eq!(f.replay_max_bytes, 1_048_576);
        assert_eq!(
            (
                f.socket_buffer_bytes,
                f.max_subscriptions,
                f.max_packet_bytes
            ),
            (2_097_152, 16, 4096)
        );
        assert_eq!(config.auth.jwt_leeway_secs, 5);
        assert_eq!(
            (
                f.ping_interval_ms,
                f.ping_timeout_ms,
                f.replay_stall_timeout_ms
            ),
            (5000, 4000, 250)
        );

        let mut config = Config::default();
        config.fanout.replay_fsync = true;
        config.fanout.ping_timeout_ms = 10;
        config.fanout.replay_stall_timeout_ms = 0;
        config.fanout.replay_max_bytes = 1000;
        config.fanout.socket_buffer_bytes = 1000;
        config.fanout.max_subscriptions = 0;
        config.fanout.max_key_bytes = 0;
        config.fanout.max_subscription_bytes = 0;
        config.fanout.max_packet_bytes = 64 << 20;
        config.auth.jwt_audience = "walcast".into();
        config.auth.jwt_leeway_secs = 3600;
        let fields: Vec<&str> = config.validate().iter().map(|p| p.field).collect();
        assert_eq!(
            fields,
            vec![
                "fanout.replay_max_bytes",
                "fanout.replay_fsync",
                "fanout.ping_timeout_ms",
                "fanout.replay_stall_timeout_ms",
                "fanout.socket_buffer_bytes",
                "fanout.max_subscriptions",
                "fanout.max_key_bytes",
                "fanout.max_subscription_bytes",
                "fanout.max_packet_bytes",
                "auth.jwt_audience",
                "auth.jwt_leeway_secs",
            ]
        );
    }

    #[test]
    fn replay_max_bytes_is_zero_for_no_cap_or_at_least_the_minimum() {
        let mut config = Config::default();
        for ok in [0, MIN_REPLAY_MAX_BYTES, DEFAULT_REPLAY_MAX_BYTES] {
            config.fanout.replay_max_bytes = ok;
            assert_eq!(config.validate(), vec![], "{ok}");
        }
        config.fanout.replay_max_bytes = MIN_REPLAY_MAX_BYTES - 1;
        let problems = config.validate();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].field, "fanout.replay_max_bytes");
    }

    #[test]
    fn tls_settings_come_from_the_environment_and_the_url_wins() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "not a certificate").unwrap();
        let path = dir.path().join("empty.toml");
        std::fs::write(&path, "").unwrap();
        let vars = env(&[
            ("WALCAST_POSTGRES_URL", "postgres://u@db.example.com/d"),
            ("WALCAST_POSTGRES_SSLMODE", "verify-ca"),
            ("WALCAST_POSTGRES_SSLROOTCERT", ca.to_str().unwrap()),
        ]);
        // The root certificate is read: a file without a PEM certificate
        // is reported against the setting and the file.
        let Err(ConfigError::Invalid(problems)) =
            Config::load(Some(&path), &vars, &Overrides::default())
        else {
            panic!("an unusable sslrootcert must be refused");
        };
        let text = format!("{problems:?}");
        assert!(
            text.contains(&format!("sslrootcert={} is not usable", ca.display())),
            "{text}"
        );

        let mut config = Config::default();
        config.postgres.sslmode = "verify-ca".into();
        config.postgres.sslrootcert = "/etc/ca.pem".into();
        config.postgres.url = "postgres://u@h/d?sslmode=disable".into();
        let tls = config.pg_config().tls().clone();
        assert_eq!(tls.mode, crate::pg::SslMode::Disable, "the URL wins");
        assert_eq!(tls.root_cert.as_deref(), Some(Path::new("/etc/ca.pem")));

        config.postgres.sslmode = "verify_full".into();
        config.postgres.sslcert = "/etc/client.pem".into();
        let fields: Vec<&str> = config.validate().iter().map(|p| p.field).collect();
        assert!(fields.contains(&"postgres.sslmode"), "{fields:?}");
        let problems = format!("{:?}", config.validate());
        assert!(
            problems.contains("sslcert is set but sslkey is not"),
            "{problems}"
        );
    }

    #[test]
    fn walcast_url_variable_wins_over_the_common_name() {
        let vars = env(&[
            ("DATABASE_URL", "postgres://common@h/d"),
            ("WALCAST_POSTGRES_URL", "postgres://specific@h/d"),
        ]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.toml");
        std::fs::write(&path, "").unwrap();
        let config = Config::load(Some(&path), &vars, &Overrides::default()).unwrap();
        assert_eq!(config.postgres.url, "postgres://specific@h/d");
    }

    #[test]
    fn unknown_environment_key_names_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.toml");
        std::fs::write(&path, "").unwrap();
        let vars = env(&[("WALCAST_POSTGRES_SLOTT", "x")]);
        let err = Config::load(Some(&path), &vars, &Overrides::default()).unwrap_err();
        let message = err.to_string();
        assert!(
            message.starts_with("environment variable WALCAST_POSTGRES_SLOTT: "),
            "{message}"
        );
        assert!(message.contains("not a walcast setting"), "{message}");
        assert!(message.contains("`slott`"), "{message}");
        assert!(!message.contains("empty.toml"), "{message}");

        // A bad value is the variable's too, not the file's.
        let vars = env(&[
            ("WALCAST_POSTGRES_SLOT", "fine"),
            ("WALCAST_POSTGRES_STATUS_INTERVAL_MS", "often"),
        ]);
        let err = Config::load(Some(&path), &vars, &Overrides::default()).unwrap_err();
        let message = err.to_string();
        assert!(
            message.starts_with("environment variable WALCAST_POSTGRES_STATUS_INTERVAL_MS: "),
            "{message}"
        );
        assert!(message.contains("often"), "{message}");

        // The file's own mistakes stay the file's, whatever the environment.
        std::fs::write(&path, "[postgres]\nslott = \"x\"\n").unwrap();
        let vars = env(&[("WALCAST_POSTGRES_SLOT", "fine")]);
        let err = Config::load(Some(&path), &vars, &Overrides::default()).unwrap_err();
        let message = err.to_string();
        assert!(message.starts_with("config file "), "{message}");
        assert!(
            message.contains("empty.toml") && message.contains("slott"),
            "{message}"
        );
    }

    #[test]
    fn a_pinned_source_names_a_stream_and_dead_letters_have_a_name() {
        let mut config = Config::default();
        config.rabbitmq.source = "7412/shop/walcast".into();
        assert_eq!(config.validate(), vec![]);
        config.rabbitmq.source = "shop".into();
        config.rabbitmq.dead_letter = String::new();
        let fields: Vec<&str> = config.validate().iter().map(|p| p.field).collect();
        assert_eq!(fields, vec!["rabbitmq.source", "rabbitmq.dead_letter"]);
    }

    #[test]
    fn validate_reports_every_problem_with_its_field() {
        let mut config = Config::default();
        config.postgres.slot = "Bad-Slot".into();
        config.postgres.tables = vec!["a.b.c".into()];
        config.postgres.status_interval_ms = 1;
        config.rabbitmq.url = "http://x".into();
        config.http.listen = "nowhere".into();
        config.log.format = "xml".into();
        let fields: Vec<&str> = config.validate().iter().map(|p| p.field).collect();
        assert_eq!(
            fields,
            vec![
                "postgres.slot",
                "postgres.tables",
                "postgres.status_interval_ms",
                "rabbitmq.url",
                "http.listen",
                "log.format"
            ]
        );
    }

    #[test]
    fn queue_expiry_is_off_or_at_least_ten_seconds() {
        let mut config = Config::default();
        assert_eq!(config.rabbitmq.queue_expires_ms, 1_800_000);
        for ok in [0, 10_000, u64::from(u32::MAX)] {
            config.rabbitmq.queue_expires_ms = ok;
            assert!(config.validate().is_empty(), "{ok} is valid");
        }
        for bad in [1, 9_999, u64::from(u32::MAX) + 1] {
            config.rabbitmq.queue_expires_ms = bad;
            let problems = config.validate();
            assert_eq!(problems.len(), 1, "{bad}: {problems:?}");
            assert_eq!(problems[0].field, "rabbitmq.queue_expires_ms");
        }
    }

    #[test]
    fn event_and_window_byte_limits_are_bounded() {
        let mut config = Config::default();
        assert_eq!(config.rabbitmq.max_event_bytes, 16 * 1024 * 1024);
        assert!(config.validate().is_empty());
        for (max_event_bytes, window_bytes, field) in [
            (
                1023,
                DEFAULT_PUBLISH_WINDOW_BYTES,
                "rabbitmq.max_event_bytes",
            ),
            (
                RABBITMQ_DEFAULT_MAX_MESSAGE_SIZE + 1,
                DEFAULT_PUBLISH_WINDOW_BYTES,
                "rabbitmq.max_event_bytes",
            ),
            (
                DEFAULT_MAX_EVENT_BYTES,
                1000,
                "rabbitmq.publish_window_bytes",
            ),
        ] {
            config.rabbitmq.max_event_bytes = max_event_bytes;
            config.rabbitmq.publish_window_bytes = window_bytes;
            let problems = config.validate();
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert_eq!(problems[0].field, field);
        }
        config.rabbitmq.max_event_bytes = RABBITMQ_DEFAULT_MAX_MESSAGE_SIZE;
        config.rabbitmq.publish_window_bytes = 65_536;
        assert!(config.validate().is_empty());
    }

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            redact_url("postgres://user:s3cret@host:5432/db"),
            "postgres://user:***@host:5432/db"
        );
        assert_eq!(
            redact_url("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            redact_url("postgres://host/db?user=u&password=s3cret"),
            "postgres://host/db?user=u&password=***"
        );
        assert_eq!(redact_url("postgres://host/db"), "postgres://host/db");
        let mut config = Config::default();
        config.postgres.url = "postgres://u:s3cret@h/d".into();
        config.rabbitmq.url = "amqp://u:s3cret@h/".into();
        assert!(!format!("{config:?}").contains("s3cret"));
        config.rabbitmq.url = "http://u:s3cret@h/".into();
        let problems = config.validate();
        assert!(!format!("{problems:?}").contains("s3cret"));
    }

    #[test]
    fn auth_settings_come_from_the_environment_and_never_show() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.toml");
        std::fs::write(&path, "").unwrap();
        let vars = env(&[
            ("WALCAST_AUTH_ENABLED", "true"),
            (
                "WALCAST_AUTH_TOKENS",
                "tok-aaaaaaaaaaaaaaaa, tok-bbbbbbbbbbbbbbbb",
            ),
            (
                "WALCAST_AUTH_JWT_SECRET",
                "jwt-secret-jwt-secret-jwt-secret-0123",
            ),
            ("WALCAST_HTTP_BODY_LIMIT_BYTES", "2048"),
            ("WALCAST_HTTP_POOL_SIZE", "4"),
        ]);
        let config = Config::load(Some(&path), &vars, &Overrides::default()).unwrap();
        assert!(config.auth.enabled);
        assert_eq!(
            config.auth.tokens,
            vec!["tok-aaaaaaaaaaaaaaaa", "tok-bbbbbbbbbbbbbbbb"]
        );
        assert_eq!(config.http.body_limit_bytes, 2048);
        assert_eq!(config.http.pool_size, 4);
        let debug = format!("{config:?}");
        assert!(!debug.contains("tok-a"), "{debug}");
        assert!(!debug.contains("jwt-secret"), "{debug}");
        assert!(debug.contains("[2 redacted]"), "{debug}");
    }

    #[test]
    fn auth_validation_names_the_field_without_the_secret() {
        let mut config = Config::default();
        config.auth.enabled = true;
        assert_eq!(
            config
                .validate()
                .iter()
                .map(|p| p.field)
                .collect::<Vec<_>>(),
            vec!["auth.enabled"]
        );
        config.auth.tokens = vec!["short-secret".into(), "has space in it 0123".into()];
        config.auth.jwt_secret = "too-short-secret".into();
        let problems = config.validate();
        let fields: Vec<&str> = problems.iter().map(|p| p.field).collect();
        assert_eq!(
            fields,
            vec!["auth.tokens", "auth.tokens", "auth.jwt_secret"]
        );
        let text = format!("{problems:?}");
        assert!(!text.contains("short-secret") && !text.contains("too-short"));
    }

    #[test]
    fn http_limits_are_checked() {
        let mut config = Config::default();
        config.http.body_limit_bytes = 10;
        config.http.pool_size = 0;
        let fields: Vec<&str> = config.validate().iter().map(|p| p.field).collect();
        assert_eq!(fields, vec!["http.body_limit_bytes", "http.pool_size"]);
    }

    #[test]
    fn table_names_default_to_public() {
        assert_eq!(
            TableName::parse("orders").unwrap(),
            TableName {
                schema: "public".into(),
                table: "orders".into()
            }
        );
        assert_eq!(
            TableName::parse("shop.Items").unwrap().quoted(),
            "\"shop\".\"Items\""
        );
        assert!(TableName::parse("").is_err());
    }

    #[test]
    fn rabbitmq_url_lists_tls_files_and_queue_types_are_validated() {
        assert_eq!(
            redact_url("amqp://u:s3cret@a:5681/%2f,amqps://u:s3cret@b:5671/%2f"),
            "amqp://u:***@a:5681/%2f,amqps://u:***@b:5671/%2f"
        );
        let mut config = Config::default();
        config.rabbitmq.url = "amqp://u:s3cret@a/%2f, http://u:s3cret@b/".into();
        let problems = config.validate();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].field, "rabbitmq.url");
        assert!(!format!("{problems:?}").contains("s3cret"));

        let mut config = Config::default();
        config.rabbitmq.tls_ca_file = "/ca.pem".into();
        let problems = config.validate();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].message.contains("use amqps://"), "{problems:?}");
        config.rabbitmq.url = "amqps://u:p@h:5671/%2f".into();
        assert!(config.validate().is_empty());
        config.rabbitmq.tls_cert_file = "/client.pem".into();
        let problems = config.validate();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].field, "rabbitmq.tls_key_file");

        let mut table: toml::Table = toml::from_str("[rabbitmq]\nqueue_type = \"quorum\"").unwrap();
        assert_eq!(
            deserialize(&table).unwrap().rabbitmq.queue_type,
            QueueType::Quorum
        );
        table = toml::from_str("[rabbitmq]\nqueue_type = \"stream\"").unwrap();
        assert!(deserialize(&table).unwrap_err().contains("classic"));
    }
}
