//! `[postgres]`: the captured database, its slot, publication and tables,
//! and the replication connection's timing and TLS.
//!
//! It checks names and ranges; whether the slot, publication or tables
//! exist is `walcast check`'s question, not this module's.

use std::fmt;
use std::ops::RangeInclusive;
use std::path::PathBuf;

use serde::Deserialize;

use super::{check_ranges, check_slot_name, redact_url, Problem};
use crate::catalog::{check_identifier, TableName};
use crate::pg::{PgConfig, SslMode, TlsSettings};

/// Where walcast looks for its database when nothing else is said.
pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
pub const DEFAULT_SLOT: &str = "walcast";
pub const DEFAULT_PUBLICATION: &str = "walcast";
pub const DEFAULT_TABLE: &str = "public.orders";
pub const DEFAULT_STATUS_INTERVAL_MS: u64 = 10_000;
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 10_000;
pub const DEFAULT_MAX_BACKOFF_MS: u64 = 30_000;
pub const DEFAULT_APPLICATION_NAME: &str = "walcast";
pub const DEFAULT_SSLMODE: &str = "prefer";
pub const DEFAULT_FEEDBACK_INTERVAL_MS: u64 = 1_000;

/// Intervals and backoff: a tenth of a second to an hour.
const INTERVAL_MS: RangeInclusive<u64> = 100..=3_600_000;
/// Connect timeout: a tenth of a second to ten minutes.
const CONNECT_TIMEOUT_MS: RangeInclusive<u64> = 100..=600_000;
/// Postgres truncates `application_name` to 63 bytes (NAMEDATALEN - 1).
const APPLICATION_NAME_LEN: RangeInclusive<usize> = 1..=63;

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
            url: DEFAULT_URL.into(),
            slot: DEFAULT_SLOT.into(),
            publication: DEFAULT_PUBLICATION.into(),
            tables: vec![DEFAULT_TABLE.into()],
            status_interval_ms: DEFAULT_STATUS_INTERVAL_MS,
            connect_timeout_ms: DEFAULT_CONNECT_TIMEOUT_MS,
            max_backoff_ms: DEFAULT_MAX_BACKOFF_MS,
            application_name: DEFAULT_APPLICATION_NAME.into(),
            sslmode: DEFAULT_SSLMODE.into(),
            sslrootcert: String::new(),
            sslcert: String::new(),
            sslkey: String::new(),
            feedback_interval_ms: DEFAULT_FEEDBACK_INTERVAL_MS,
        }
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

impl PostgresConfig {
    /// Adds every problem of `[postgres]` to `problems`.
    pub(super) fn validate(&self, problems: &mut Vec<Problem>) {
        if let Err(message) = SslMode::parse(&self.sslmode) {
            problems.push(Problem::new("postgres.sslmode", message));
        }
        match PgConfig::parse(&self.url, &self.tls_defaults()) {
            Ok(parsed) => {
                if parsed.get_hosts().is_empty() {
                    problems.push(Problem::new("postgres.url", "names no host"));
                }
                for message in parsed.tls().problems() {
                    problems.push(Problem::new("postgres.url", message));
                }
            }
            Err(e) => problems.push(Problem::new(
                "postgres.url",
                format!(
                    "{:?} is not a valid Postgres URL ({e}); expected postgres://user:password@host:port/database",
                    redact_url(&self.url)
                ),
            )),
        }
        if let Err(message) = check_slot_name(&self.slot) {
            problems.push(Problem::new("postgres.slot", message));
        }
        if let Err(message) = check_identifier(&self.publication) {
            problems.push(Problem::new("postgres.publication", message));
        }
        if self.tables.is_empty() {
            problems.push(Problem::new(
                "postgres.tables",
                "is empty; name at least one table, e.g. [\"public.orders\"]",
            ));
        }
        for table in &self.tables {
            if let Err(message) = TableName::parse(table) {
                problems.push(Problem::new("postgres.tables", message));
            }
        }
        check_ranges(
            problems,
            &[
                (
                    "postgres.status_interval_ms",
                    self.status_interval_ms,
                    INTERVAL_MS,
                ),
                (
                    "postgres.connect_timeout_ms",
                    self.connect_timeout_ms,
                    CONNECT_TIMEOUT_MS,
                ),
                ("postgres.max_backoff_ms", self.max_backoff_ms, INTERVAL_MS),
            ],
        );
        if !APPLICATION_NAME_LEN.contains(&self.application_name.len()) {
            problems.push(Problem::new(
                "postgres.application_name",
                "must be 1 to 63 characters",
            ));
        }
        check_ranges(
            problems,
            &[(
                "postgres.feedback_interval_ms",
                self.feedback_interval_ms,
                INTERVAL_MS,
            )],
        );
    }

    /// The `ssl*` settings, which the URL's own parameters override. An
    /// unknown sslmode is reported by `validate`.
    pub(super) fn tls_defaults(&self) -> TlsSettings {
        let path = |text: &str| (!text.is_empty()).then(|| PathBuf::from(text));
        TlsSettings {
            mode: SslMode::parse(&self.sslmode).unwrap_or_default(),
            root_cert: path(&self.sslrootcert),
            cert: path(&self.sslcert),
            key: path(&self.sslkey),
        }
    }
}
