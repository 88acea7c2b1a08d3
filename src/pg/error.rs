//! What a Postgres error means for the caller: one classification of
//! SQLSTATEs as transient (a reconnect or a retry may heal it) or definite
//! (an operator must act), shared by the replication connection (`wal`),
//! the catalog connections and the API, and one operator-readable line for
//! a `tokio-postgres` error.
//!
//! This module decides nothing about backoff or HTTP status codes; the
//! callers map "transient" to their own reaction (reconnect with backoff,
//! 503 with `Retry-After`).

use std::error::Error as _;

use super::tls::TlsError;

/// Whether a server error with this SQLSTATE describes a passing state of
/// the server rather than a problem with the request or the setup.
///
/// Transient:
/// - class 08 connection_exception: the connection broke or could not be
///   made.
/// - class 40 transaction_rollback (40000, 40001 serialization_failure,
///   40003 statement_completion_unknown, 40P01 deadlock_detected): harmless
///   to repeat. 40002 (an integrity constraint at commit) is the data's
///   fault and is not here.
/// - class 53 insufficient_resources (53000, 53100 disk_full, 53200
///   out_of_memory, 53300 too_many_connections, which also covers
///   max_wal_senders exhausted). 53400 configuration_limit_exceeded (e.g.
///   every replication slot in use) is not here: it needs an operator.
/// - class 57 operator_intervention (57000, 57014 query_canceled, 57P01
///   admin_shutdown, 57P02 crash_shutdown, 57P03 cannot_connect_now while
///   starting or in recovery, 57P05 idle_session_timeout). 57P04
///   database_dropped is not here: the database is gone.
/// - 55006 object_in_use: the slot is active for another walsender (an old
///   connection of ours not yet timed out, or a standby instance); it is
///   released when that connection ends. 55P03 lock_not_available.
/// - 25006 read_only_sql_transaction: a standby, usually during a
///   failover, that a reconnect to the new primary heals.
///
/// Everything else (28000/28P01 authentication, 3D000 no such database,
/// 42704 missing slot, 55000 wal_level not logical, 42501 missing
/// privilege, constraint violations, ...) is definite.
pub fn is_transient_sqlstate(code: &str) -> bool {
    let class = code.get(..2).unwrap_or("");
    match class {
        "08" => true,
        "40" => code != "40002",
        "53" => code != "53400",
        "57" => code != "57P04",
        _ => matches!(code, "55006" | "55P03" | "25006"),
    }
}

/// Whether a `tokio-postgres` error may heal by itself: a server error by
/// its SQLSTATE; a TLS failure that comes from the settings or the
/// certificates (wrong CA, host name mismatch, unreadable key, a server
/// without SSL when SSL is required) never does; anything else on the
/// client side (refused, reset, timed out) is connection trouble and may.
pub fn is_transient(error: &tokio_postgres::Error) -> bool {
    if let Some(db) = error.as_db_error() {
        return is_transient_sqlstate(db.code().code());
    }
    let mut source = error.source();
    while let Some(cause) = source {
        if let Some(tls) = cause.downcast_ref::<TlsError>() {
            return !tls.is_definite();
        }
        if cause.to_string() == TOKIO_POSTGRES_NO_SSL {
            return false;
        }
        source = cause.source();
    }
    true
}

/// tokio-postgres's words when the server answers SSLRequest with 'N'
/// under `sslmode=require` (it has no variant for this to match on).
const TOKIO_POSTGRES_NO_SSL: &str = "server does not support TLS";

/// One line for an operator: SQLSTATE, message, detail and hint when the
/// server gave them, or the client-side error with its causes.
/// tokio-postgres's own Display says only "db error".
pub fn describe(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => {
            let mut text = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
            if let Some(detail) = db.detail() {
                text.push_str(&format!(" ({detail})"));
            }
            if let Some(hint) = db.hint() {
                text.push_str(&format!("; hint: {hint}"));
            }
            text
        }
        None => {
            let mut text = error.to_string();
            let mut source = error.source();
            while let Some(cause) = source {
                let cause_text = if cause.to_string() == TOKIO_POSTGRES_NO_SSL {
                    // tokio-postgres knows only "require"; verify-ca and
                    // verify-full reach it as require too.
                    "server does not support SSL, but sslmode requires it (require, verify-ca or \
                     verify-full); turn ssl on in the server, or use sslmode=prefer"
                        .to_owned()
                } else {
                    cause.to_string()
                };
                // tokio-postgres's Display already ends with its cause.
                if !text.ends_with(&cause_text) {
                    if text.ends_with(&cause.to_string()) {
                        text.truncate(text.len() - cause.to_string().len());
                        text.push_str(&cause_text);
                    } else {
                        text.push_str(&format!(": {cause_text}"));
                    }
                }
                source = cause.source();
            }
            text
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passing_server_states_are_transient() {
        for code in [
            "08000", "08006", "08001", "40001", "40P01", "40003", "53000", "53100", "53200",
            "53300", "55006", "55P03", "57014", "57P01", "57P02", "57P03", "57P05", "25006",
        ] {
            assert!(is_transient_sqlstate(code), "{code} should be transient");
        }
    }

    #[test]
    fn what_needs_an_operator_or_a_different_request_is_definite() {
        for code in [
            "28000", "28P01", "3D000", "42704", "42501", "42P01", "55000", "53400", "57P04",
            "40002", "23505", "23514", "22001", "XX000", "", "5",
        ] {
            assert!(!is_transient_sqlstate(code), "{code} should be definite");
        }
    }
}
