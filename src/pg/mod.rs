//! What every connection to PostgreSQL shares, whichever protocol runs on
//! it (the replication connection in `wal`, the `tokio-postgres`
//! connections of `catalog`, the CLI, the API's pool and the gateway's
//! history start):
//!
//! - `error`: one classification of server errors as transient or
//!   definite, and one operator-readable description of a client error.
//!
//! It does not run queries (that is `catalog`'s) or speak the replication
//! protocol (`wal`'s).

mod error;

pub use error::{describe, is_transient, is_transient_sqlstate};
