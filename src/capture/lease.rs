//! The slot lease: a session-level advisory lock in Postgres that makes one
//! capture process the owner of a slot, so that a second `walcast run`
//! against the same slot waits as a hot standby instead of fighting for it.
//!
//! It does not stream: `walcast run` holds the lease around the capture
//! loop and stops the loop when the lease is lost.

use std::time::Duration;

use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::catalog::{describe, CatalogError};

/// The session-level advisory lock that makes one capture process the owner
/// of a slot.
///
/// Why an advisory lock and not only the slot's own exclusivity: the slot
/// already refuses a second reader (SQLSTATE 55006), and that stays the hard
/// guarantee. But a standby that polls START_REPLICATION fills both logs with
/// errors and cannot tell "another walcast owns it" from "a dying walsender
/// still holds it". The lock is held by a session of the owner; when the
/// owner dies, Postgres ends the session and frees the lock at once, and the
/// standby that was waiting on it takes over within its poll interval.
pub struct SlotLease {
    client: Client,
    connection_lost: CancellationToken,
}

impl SlotLease {
    /// Waits until this process holds the lock for `slot` (or `shutdown`);
    /// calls `on_standby` once when it finds another process holding it.
    /// The lease's connection runs in a task on `tasks`, which ends when
    /// the lease is released or dropped.
    pub async fn acquire(
        pg: &crate::pg::PgConfig,
        slot: &str,
        poll: Duration,
        tasks: &TaskTracker,
        shutdown: &CancellationToken,
        mut on_standby: impl FnMut(),
    ) -> Result<Option<SlotLease>, CatalogError> {
        let key = lease_key(slot);
        let mut announced = false;
        loop {
            let (client, connection) = pg.connect().await.map_err(CatalogError::Connect)?;
            let connection_lost = CancellationToken::new();
            let lost = connection_lost.clone();
            tasks.spawn(async move {
                if let Err(e) = connection.await {
                    warn!(error = %describe(&e), "slot lease connection closed");
                }
                lost.cancel();
            });
            loop {
                let row = client
                    .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
                    .await?;
                if row.get::<_, bool>(0) {
                    info!(slot, "holding the slot lease; this process captures");
                    return Ok(Some(SlotLease {
                        client,
                        connection_lost,
                    }));
                }
                if !announced {
                    on_standby();
                    info!(
                        slot,
                        "another capture process owns the slot; waiting as hot standby"
                    );
                    announced = true;
                }
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return Ok(None),
                    _ = connection_lost.cancelled() => break,
                    _ = tokio::time::sleep(poll) => {}
                }
            }
        }
    }

    /// Resolves when the lease's session is gone (the lock with it).
    pub async fn lost(&self) {
        self.connection_lost.cancelled().await
    }

    /// Releases the lock explicitly (it also goes with the session).
    pub async fn release(self, slot: &str) {
        let _ = self
            .client
            .query_one("SELECT pg_advisory_unlock($1)", &[&lease_key(slot)])
            .await;
    }
}

/// A stable 64-bit key for the slot's advisory lock (FNV-1a).
fn lease_key(slot: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in b"walcast.slot:".iter().chain(slot.as_bytes()) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_keys_differ_per_slot_and_are_stable() {
        assert_eq!(lease_key("walcast"), lease_key("walcast"));
        assert_ne!(lease_key("walcast"), lease_key("walcast2"));
    }
}
