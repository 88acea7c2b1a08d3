//! The history start: once the gateway queue is bound, the consumer takes
//! `pg_current_snapshot()` from Postgres and offers it to the hub as the
//! start of its history (see the `consumer` module doc), retrying with
//! backoff while Postgres is down.
//!
//! It does not consume and does not decide whether a start is needed: the
//! hub says so (`Hub::history_start_needed`).

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::fanout::{Hub, ParseSnapshotError, Snapshot};
use crate::retry::Backoff;

/// How long connecting to Postgres for the history start may take.
const PG_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the history start snapshot could not be taken; always retried.
#[derive(Debug, thiserror::Error)]
pub enum HistoryStartError {
    #[error("cannot connect to Postgres: {0}")]
    Connect(#[source] tokio_postgres::Error),
    #[error("connecting to Postgres timed out after {PG_CONNECT_TIMEOUT:?}")]
    ConnectTimeout,
    #[error("SELECT pg_current_snapshot() failed: {0} (it needs PostgreSQL 13 or later)")]
    Query(#[source] tokio_postgres::Error),
    #[error(transparent)]
    Parse(#[from] ParseSnapshotError),
}

/// Takes `pg_current_snapshot()` and offers it to the hub as the start of
/// the history at `generation`, retrying with backoff until it succeeds or
/// `cancel` fires (the session ended).
pub(super) async fn take_history_start(
    pg: crate::pg::PgConfig,
    hub: Hub,
    generation: u64,
    backoff: Backoff,
    cancel: CancellationToken,
) {
    let mut attempt: u32 = 0;
    loop {
        let result = tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            result = current_snapshot(&pg) => result,
        };
        match result {
            Ok(snapshot) => {
                if !hub.offer_history_start(&snapshot, generation) {
                    debug!(%snapshot, "history start not needed any more");
                }
                return;
            }
            Err(e) => warn!(
                error = %e,
                attempt,
                "cannot take the history start from Postgres; retrying (until then snapshot clients get resync)"
            ),
        }
        attempt = attempt.saturating_add(1);
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff.delay(attempt)) => {}
        }
    }
}

async fn current_snapshot(pg: &crate::pg::PgConfig) -> Result<Snapshot, HistoryStartError> {
    let (client, connection) = tokio::time::timeout(PG_CONNECT_TIMEOUT, pg.connect())
        .await
        .map_err(|_| HistoryStartError::ConnectTimeout)?
        .map_err(HistoryStartError::Connect)?;
    // Driven here, not spawned: it ends once the client is dropped.
    let query = async move {
        client
            .query_one("SELECT pg_current_snapshot()::text", &[])
            .await
            .map_err(HistoryStartError::Query)
    };
    let (row, _) = tokio::join!(query, connection);
    let text: String = row?.get(0);
    Ok(text.parse()?)
}
