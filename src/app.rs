//! `walcast run`: wires the stages of the roles this process plays.
//!
//! - **capture**: holds the slot and publishes every change to RabbitMQ.
//!   Only one capture process may own a slot; another one started against
//!   the same slot waits as a hot standby (see [`SlotLease`]).
//! - **gateway**: consumes this instance's queue and fans events out to
//!   browsers over Socket.IO.
//! - **api**: the HTTP API and the dashboard.
//!
//! Nothing here transforms data; it only starts, connects and stops stages.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::catalog::{describe, CatalogError};

/// A role `walcast run` can play.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Capture,
    Gateway,
    Api,
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "capture" => Ok(Role::Capture),
            "gateway" => Ok(Role::Gateway),
            "api" => Ok(Role::Api),
            other => Err(format!(
                "unknown role {other:?}; expected capture, gateway or api"
            )),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Capture => "capture",
            Role::Gateway => "gateway",
            Role::Api => "api",
        })
    }
}

/// The set of roles; all three when none is named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roles(pub BTreeSet<Role>);

impl Roles {
    pub fn all() -> Roles {
        Roles([Role::Capture, Role::Gateway, Role::Api].into())
    }

    pub fn has(&self, role: Role) -> bool {
        self.0.contains(&role)
    }
}

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
    /// Waits until this process holds the lock for `slot` (or `shutdown`).
    pub async fn acquire(
        pg: &tokio_postgres::Config,
        slot: &str,
        poll: Duration,
        shutdown: &CancellationToken,
    ) -> Result<Option<SlotLease>, CatalogError> {
        let key = lease_key(slot);
        let mut announced = false;
        loop {
            let (client, connection) = pg
                .connect(tokio_postgres::NoTls)
                .await
                .map_err(CatalogError::Connect)?;
            let connection_lost = CancellationToken::new();
            let lost = connection_lost.clone();
            tokio::spawn(async move {
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
    fn roles_parse() {
        assert_eq!("capture".parse::<Role>(), Ok(Role::Capture));
        assert!("nope".parse::<Role>().unwrap_err().contains("capture"));
    }

    #[test]
    fn lease_keys_differ_per_slot_and_are_stable() {
        assert_eq!(lease_key("walcast"), lease_key("walcast"));
        assert_ne!(lease_key("walcast"), lease_key("walcast2"));
    }
}
