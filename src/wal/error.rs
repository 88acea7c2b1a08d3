//! The errors of the replication connection and their classification.
//!
//! Every error is classified where it enters walcast: [`WalError::is_retryable`]
//! says whether reconnecting (with backoff) may heal it, so the capture loop
//! never has to inspect SQLSTATEs itself. Display strings are written for an
//! operator: SQLSTATE, the server's message, its detail, and a hint (the
//! server's own, or walcast's advice for the failures we know how to fix).
//!
//! This module does not decide how long to back off; that is the caller's.

use std::fmt::Write as _;
use std::time::Duration;

/// Errors of the replication connection.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// An ErrorResponse from the server (during startup, a command, or streaming).
    #[error("{}", describe_server_error(.severity, .code, .message, .detail.as_deref(), .hint.as_deref()))]
    Server {
        severity: String,
        code: String,
        message: String,
        detail: Option<String>,
        hint: Option<String>,
    },
    /// The established connection failed (reset, EOF, write error).
    #[error("connection to postgres lost: {0}")]
    Io(#[from] std::io::Error),
    /// The server sent something the protocol does not allow at this point,
    /// or the connection was left in an unknown state.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// Authentication could not be carried out on our side (no password,
    /// unsupported method, bad SCRAM signature). Wrong passwords come back
    /// from the server as [`WalError::Server`] with SQLSTATE 28P01.
    #[error("authentication failed: {0}")]
    Auth(String),
    /// The server could not be reached at all.
    #[error("cannot connect to postgres at {address}: {source}")]
    Connect {
        address: String,
        #[source]
        source: std::io::Error,
    },
    /// An operation with a deadline did not finish in time.
    #[error("timed out after {after:?} {operation}")]
    Timeout { operation: String, after: Duration },
    /// The connection settings cannot work (no host, ...).
    #[error("invalid replication connection settings: {0}")]
    Config(String),
    /// TLS could not be set up: a certificate check failed, a file is
    /// missing, or the server does not support SSL under a mode that needs it.
    #[error("postgres TLS: {0}")]
    Tls(#[from] crate::pg::TlsError),
}

impl WalError {
    /// True for errors a reconnect may heal: lost or refused connections,
    /// timeouts, and server errors that are about the server's current state
    /// rather than about our request (see [`crate::pg::is_transient_sqlstate`]).
    pub fn is_retryable(&self) -> bool {
        match self {
            WalError::Io(_) | WalError::Connect { .. } | WalError::Timeout { .. } => true,
            WalError::Server { code, .. } => crate::pg::is_transient_sqlstate(code),
            // A protocol violation is a bug (ours or the server's); retrying
            // in a loop would hide it. Auth and config need an operator.
            WalError::Protocol(_) | WalError::Auth(_) | WalError::Config(_) => false,
            WalError::Tls(e) => !e.is_definite(),
        }
    }

    /// The SQLSTATE of a server error.
    pub fn code(&self) -> Option<&str> {
        match self {
            WalError::Server { code, .. } => Some(code),
            _ => None,
        }
    }

    /// An I/O error of the established connection when the server closed it.
    pub(crate) fn closed_by_server() -> WalError {
        WalError::Io(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the server closed the connection",
        ))
    }
}

/// What an operator should do about a server error the server gives no
/// hint for.
fn advice(code: &str, message: &str) -> Option<&'static str> {
    Some(match code {
        "28P01" | "28000" => {
            "check the user and password in the database URL and the server's pg_hba.conf"
        }
        "42704" if message.contains("replication slot") => {
            "create it with `walcast slot create` or `walcast setup`, or fix postgres.slot"
        }
        "55000" if message.contains("wal_level") => {
            "set wal_level = logical in postgresql.conf and restart PostgreSQL"
        }
        "55006" => {
            "another connection is streaming from this slot; walcast retries until it is released"
        }
        "42501" => "grant the role the REPLICATION attribute (ALTER ROLE ... REPLICATION)",
        "53300" => {
            "the server has no free connection or WAL sender slots (max_connections, max_wal_senders); walcast retries"
        }
        "53400" => "raise max_replication_slots or drop unused slots",
        "57P01" | "57P02" | "57P03" => "the server is shutting down or starting up; walcast retries",
        _ => return None,
    })
}

fn describe_server_error(
    severity: &str,
    code: &str,
    message: &str,
    detail: Option<&str>,
    hint: Option<&str>,
) -> String {
    let mut text = format!("postgres {severity} {code}: {message}");
    if let Some(detail) = detail {
        let _ = write!(text, "; detail: {detail}");
    }
    if let Some(hint) = hint.or_else(|| advice(code, message)) {
        let _ = write!(text, "; hint: {hint}");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(code: &str, message: &str) -> WalError {
        WalError::Server {
            severity: "ERROR".into(),
            code: code.into(),
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    #[test]
    fn reconnect_heals_busy_slots_and_restarts_but_not_misconfiguration() {
        assert!(server("55006", "replication slot \"s\" is active for PID 1").is_retryable());
        assert!(server("57P01", "terminating connection").is_retryable());
        assert!(server("53300", "too many connections").is_retryable());
        assert!(server("08006", "connection failure").is_retryable());
        assert!(!server("28P01", "password authentication failed").is_retryable());
        assert!(!server("42704", "replication slot \"s\" does not exist").is_retryable());
        assert!(!server("55000", "logical decoding requires wal_level >= logical").is_retryable());
        assert!(!server("42501", "permission denied").is_retryable());
        assert!(!WalError::Auth("x".into()).is_retryable());
    }

    #[test]
    fn display_carries_sqlstate_message_and_advice() {
        let text = server("55000", "logical decoding requires wal_level >= logical").to_string();
        assert_eq!(
            text,
            "postgres ERROR 55000: logical decoding requires wal_level >= logical; \
             hint: set wal_level = logical in postgresql.conf and restart PostgreSQL"
        );
        let with_server_hint = WalError::Server {
            severity: "FATAL".into(),
            code: "XX000".into(),
            message: "m".into(),
            detail: Some("d".into()),
            hint: Some("h".into()),
        };
        assert_eq!(
            with_server_hint.to_string(),
            "postgres FATAL XX000: m; detail: d; hint: h"
        );
    }
}
