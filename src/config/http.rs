//! `[http]`: the listener of the API, dashboard and Socket.IO, the request
//! body limit and the API's own Postgres pool.
//!
//! It checks the address's shape and the ranges; binding is `app`'s job.

use std::net::SocketAddr;
use std::ops::RangeInclusive;

use serde::Deserialize;

use super::{check_ranges, Problem};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_BODY_LIMIT_BYTES: usize = 64 * 1024;
pub const DEFAULT_POOL_SIZE: usize = 16;
pub const DEFAULT_POOL_TIMEOUT_MS: u64 = 5_000;
pub const DEFAULT_STATEMENT_TIMEOUT_MS: u64 = 10_000;

const BODY_LIMIT_BYTES: RangeInclusive<u64> = 1024..=64 * 1024 * 1024;
const POOL_SIZE: RangeInclusive<u64> = 1..=1024;
const POOL_TIMEOUT_MS: RangeInclusive<u64> = 100..=600_000;
const STATEMENT_TIMEOUT_MS: RangeInclusive<u64> = 100..=3_600_000;

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
            listen: DEFAULT_LISTEN.into(),
            body_limit_bytes: DEFAULT_BODY_LIMIT_BYTES,
            pool_size: DEFAULT_POOL_SIZE,
            pool_timeout_ms: DEFAULT_POOL_TIMEOUT_MS,
            statement_timeout_ms: DEFAULT_STATEMENT_TIMEOUT_MS,
        }
    }
}

impl HttpConfig {
    /// Adds every problem of `[http]` to `problems`.
    pub(super) fn validate(&self, problems: &mut Vec<Problem>) {
        if self.listen.parse::<SocketAddr>().is_err() {
            problems.push(Problem::new(
                "http.listen",
                format!(
                    "{:?} is not a socket address; expected host:port, e.g. 127.0.0.1:8080",
                    self.listen
                ),
            ));
        }
        check_ranges(
            problems,
            &[
                (
                    "http.body_limit_bytes",
                    self.body_limit_bytes as u64,
                    BODY_LIMIT_BYTES,
                ),
                ("http.pool_size", self.pool_size as u64, POOL_SIZE),
                (
                    "http.pool_timeout_ms",
                    self.pool_timeout_ms,
                    POOL_TIMEOUT_MS,
                ),
                (
                    "http.statement_timeout_ms",
                    self.statement_timeout_ms,
                    STATEMENT_TIMEOUT_MS,
                ),
            ],
        );
    }
}
