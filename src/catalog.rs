//! Ordinary SQL against the captured database: the catalog questions the
//! other stages ask (primary keys, domains, slots, publications, server
//! settings) and the idempotent setup of schema, publication and slot.
//!
//! This is a plain `tokio-postgres` connection, never the replication
//! connection (`wal`), and it holds no state beyond the connection.

use std::fmt;
use std::time::Duration;

use tokio_postgres::Client;
use tokio_util::task::TaskTracker;
use tracing::warn;

use crate::event::Lsn;
use crate::pg::PgConfig;

mod name;
pub(crate) use name::check_identifier;
pub use name::{quote_identifier, TableName};

/// The schema, publication and sample data shipped in `sql/`.
pub const SCHEMA_SQL: &str = include_str!("../sql/schema.sql");
pub const SAMPLE_DATA_SQL: &str = include_str!("../sql/sample_data.sql");

/// Errors of catalog queries.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// Not a `#[source]`: `describe` already spells out the whole chain,
    /// and `{:#}` would print it twice.
    #[error("cannot connect to postgres: {}", describe(.0))]
    Connect(tokio_postgres::Error),
    #[error("{}", describe(.0))]
    Query(#[from] tokio_postgres::Error),
    #[error("{0}")]
    Setup(String),
}

impl CatalogError {
    /// Errors a reconnect can heal: connection trouble, server restarts
    /// (see [`crate::pg::is_transient`]).
    pub fn is_retryable(&self) -> bool {
        match self {
            CatalogError::Connect(e) | CatalogError::Query(e) => crate::pg::is_transient(e),
            CatalogError::Setup(_) => false,
        }
    }
}

pub use crate::pg::describe;

/// A replication slot as `pg_replication_slots` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SlotInfo {
    pub slot_name: String,
    pub plugin: Option<String>,
    pub slot_type: String,
    pub database: Option<String>,
    pub temporary: bool,
    pub active: bool,
    pub active_pid: Option<i32>,
    pub restart_lsn: Option<String>,
    pub confirmed_flush_lsn: Option<String>,
    /// WAL the server keeps for this slot: current WAL position − restart_lsn.
    pub retained_wal_bytes: Option<i64>,
    pub wal_status: Option<String>,
    pub safe_wal_size: Option<i64>,
}

impl fmt::Display for SlotInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let or_dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        writeln!(f, "slot:                {}", self.slot_name)?;
        writeln!(
            f,
            "type:                {} ({})",
            self.slot_type,
            or_dash(&self.plugin)
        )?;
        writeln!(f, "database:            {}", or_dash(&self.database))?;
        writeln!(f, "temporary:           {}", self.temporary)?;
        writeln!(
            f,
            "active:              {}{}",
            self.active,
            self.active_pid
                .map(|p| format!(" (pid {p})"))
                .unwrap_or_default()
        )?;
        writeln!(f, "restart_lsn:         {}", or_dash(&self.restart_lsn))?;
        writeln!(
            f,
            "confirmed_flush_lsn: {}",
            or_dash(&self.confirmed_flush_lsn)
        )?;
        writeln!(
            f,
            "retained WAL:        {}",
            self.retained_wal_bytes
                .map(human_bytes)
                .unwrap_or_else(|| "-".into())
        )?;
        writeln!(f, "wal_status:          {}", or_dash(&self.wal_status))?;
        write!(
            f,
            "safe_wal_size:       {}",
            self.safe_wal_size
                .map(human_bytes)
                .unwrap_or_else(|| "unlimited (max_slot_wal_keep_size = -1)".into())
        )
    }
}

/// `1536` → `1.5 KiB`.
pub fn human_bytes(bytes: i64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value.abs() >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

const SLOT_COLUMNS: &str =
    "slot_name::text, plugin::text, slot_type, database::text, temporary, active, \
     active_pid, restart_lsn::text, confirmed_flush_lsn::text, \
     (CASE WHEN restart_lsn IS NULL THEN NULL ELSE \
        pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn() \
                             ELSE pg_current_wal_lsn() END, restart_lsn)::int8 END), \
     wal_status, safe_wal_size";

fn slot_from_row(row: &tokio_postgres::Row) -> SlotInfo {
    SlotInfo {
        slot_name: row.get(0),
        plugin: row.get(1),
        slot_type: row.get(2),
        database: row.get(3),
        temporary: row.get(4),
        active: row.get(5),
        active_pid: row.get(6),
        restart_lsn: row.get(7),
        confirmed_flush_lsn: row.get(8),
        retained_wal_bytes: row.get(9),
        wal_status: row.get(10),
        safe_wal_size: row.get(11),
    }
}

/// A catalog connection.
pub struct Catalog {
    client: Client,
}

impl Catalog {
    /// Connects, driving the connection on a tracker of its own (for the
    /// one-shot commands); `walcast run` uses [`Catalog::connect_on`].
    pub async fn connect(config: &PgConfig) -> Result<Catalog, CatalogError> {
        Catalog::connect_on(config, &TaskTracker::new()).await
    }

    /// Connects, driving the connection in a task on `tasks`; the task
    /// ends once the `Catalog` is dropped.
    pub async fn connect_on(
        config: &PgConfig,
        tasks: &TaskTracker,
    ) -> Result<Catalog, CatalogError> {
        let (client, connection) = config.connect().await.map_err(CatalogError::Connect)?;
        tasks.spawn(async move {
            if let Err(e) = connection.await {
                warn!(error = %describe(&e), "catalog connection closed");
            }
        });
        Ok(Catalog { client })
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The primary-key columns of a table, in key order; empty without one.
    pub async fn primary_key(&self, oid: u32) -> Result<Vec<String>, CatalogError> {
        let rows = self
            .client
            .query(
                "SELECT a.attname::text \
                 FROM pg_index i \
                 JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n) ON true \
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                 WHERE i.indrelid = $1::oid AND i.indisprimary \
                 ORDER BY k.n",
                &[&oid],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    pub async fn slot(&self, name: &str) -> Result<Option<SlotInfo>, CatalogError> {
        let sql = format!("SELECT {SLOT_COLUMNS} FROM pg_replication_slots WHERE slot_name = $1");
        let row = self.client.query_opt(&sql, &[&name]).await?;
        Ok(row.as_ref().map(slot_from_row))
    }

    pub async fn slots(&self) -> Result<Vec<SlotInfo>, CatalogError> {
        let sql = format!("SELECT {SLOT_COLUMNS} FROM pg_replication_slots ORDER BY slot_name");
        let rows = self.client.query(&sql, &[]).await?;
        Ok(rows.iter().map(slot_from_row).collect())
    }

    pub async fn setting(&self, name: &str) -> Result<String, CatalogError> {
        let row = self
            .client
            .query_one("SELECT current_setting($1)", &[&name])
            .await?;
        Ok(row.get(0))
    }

    /// The current WAL position.
    pub async fn current_lsn(&self) -> Result<Lsn, CatalogError> {
        let row = self
            .client
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await?;
        let text: String = row.get(0);
        text.parse()
            .map_err(|e: crate::event::ParseLsnError| CatalogError::Setup(e.to_string()))
    }

    /// The tables a publication includes (`None` when it does not exist).
    pub async fn publication_tables(
        &self,
        publication: &str,
    ) -> Result<Option<Vec<TableName>>, CatalogError> {
        let exists = self
            .client
            .query_opt(
                "SELECT 1 FROM pg_publication WHERE pubname = $1",
                &[&publication],
            )
            .await?;
        if exists.is_none() {
            return Ok(None);
        }
        let rows = self
            .client
            .query(
                "SELECT schemaname::text, tablename::text FROM pg_publication_tables \
                 WHERE pubname = $1 ORDER BY 1, 2",
                &[&publication],
            )
            .await?;
        Ok(Some(
            rows.iter()
                .map(|r| TableName {
                    schema: r.get(0),
                    table: r.get(1),
                })
                .collect(),
        ))
    }

    /// Whether a publication is `FOR ALL TABLES` (`None` when it does not
    /// exist). Such a publication sends every table, today's and future
    /// ones, and cannot be narrowed with ALTER PUBLICATION.
    pub async fn publication_is_for_all_tables(
        &self,
        publication: &str,
    ) -> Result<Option<bool>, CatalogError> {
        let row = self
            .client
            .query_opt(
                "SELECT puballtables FROM pg_publication WHERE pubname = $1",
                &[&publication],
            )
            .await?;
        Ok(row.map(|row| row.get(0)))
    }

    /// The server's `wal_sender_timeout` as this session sees it (role and
    /// database settings included, as for the replication connection);
    /// zero means disabled.
    pub async fn wal_sender_timeout(&self) -> Result<Duration, CatalogError> {
        // pg_settings gives the value in its base unit (ms), whatever unit
        // SHOW would print it in.
        let row = self
            .client
            .query_one(
                "SELECT setting::int8 FROM pg_settings WHERE name = 'wal_sender_timeout'",
                &[],
            )
            .await?;
        let millis: i64 = row.get(0);
        Ok(Duration::from_millis(u64::try_from(millis).unwrap_or(0)))
    }

    /// Every domain, and every array of a domain, paired with the type
    /// whose values it holds: its base type (through domains over domains),
    /// or the base type's array type. pgoutput names a column's domain, not
    /// its base type, so the decoder needs this to type the values.
    pub async fn domain_base_types(&self) -> Result<Vec<(u32, u32)>, CatalogError> {
        let rows = self
            .client
            .query(
                "WITH RECURSIVE chain(domain, base, depth) AS ( \
                     SELECT oid, typbasetype, 1 FROM pg_type WHERE typtype = 'd' \
                   UNION ALL \
                     SELECT chain.domain, t.typbasetype, chain.depth + 1 \
                     FROM chain JOIN pg_type t ON t.oid = chain.base \
                     WHERE t.typtype = 'd' AND chain.depth < 64) \
                 SELECT d.oid, b.oid, d.typarray, b.typarray \
                 FROM chain \
                 JOIN pg_type d ON d.oid = chain.domain \
                 JOIN pg_type b ON b.oid = chain.base \
                 WHERE b.typtype <> 'd'",
                &[],
            )
            .await?;
        let mut aliases = Vec::with_capacity(rows.len() * 2);
        for row in rows {
            let (domain, base, domain_array, base_array): (u32, u32, u32, u32) =
                (row.get(0), row.get(1), row.get(2), row.get(3));
            aliases.push((domain, base));
            // 0: no array type (a domain over an array has none of its own
            // base array to map to).
            if domain_array != 0 && base_array != 0 {
                aliases.push((domain_array, base_array));
            }
        }
        Ok(aliases)
    }

    /// Whether type `oid` is visible in `pg_type` to this session.
    pub async fn type_exists(&self, oid: u32) -> Result<bool, CatalogError> {
        let row = self
            .client
            .query_opt("SELECT 1 FROM pg_type WHERE oid = $1", &[&oid])
            .await?;
        Ok(row.is_some())
    }

    /// Applies the shipped schema (idempotent: every statement is guarded).
    pub async fn apply_schema(&self, with_sample_data: bool) -> Result<(), CatalogError> {
        self.client.batch_execute(SCHEMA_SQL).await?;
        if with_sample_data {
            self.client.batch_execute(SAMPLE_DATA_SQL).await?;
        }
        Ok(())
    }

    /// Creates the publication for `tables`, or adds the tables it lacks.
    /// Returns the tables added.
    pub async fn ensure_publication(
        &self,
        publication: &str,
        tables: &[TableName],
    ) -> Result<Vec<TableName>, CatalogError> {
        let list = |tables: &[&TableName]| {
            tables
                .iter()
                .map(|t| t.quoted())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match self.publication_tables(publication).await? {
            None => {
                let all: Vec<&TableName> = tables.iter().collect();
                self.client
                    .batch_execute(&format!(
                        "CREATE PUBLICATION {} FOR TABLE {}",
                        quote_identifier(publication),
                        list(&all)
                    ))
                    .await?;
                Ok(tables.to_vec())
            }
            Some(existing) => {
                let missing: Vec<&TableName> =
                    tables.iter().filter(|t| !existing.contains(t)).collect();
                if !missing.is_empty() {
                    self.client
                        .batch_execute(&format!(
                            "ALTER PUBLICATION {} ADD TABLE {}",
                            quote_identifier(publication),
                            list(&missing)
                        ))
                        .await?;
                }
                Ok(missing.into_iter().cloned().collect())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_bytes_reads_well() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(16 * 1024 * 1024), "16.0 MiB");
    }
}
