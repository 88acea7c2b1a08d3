//! `walcast check`: a preflight that says exactly what is wrong and how to
//! fix it, before anything streams.

use std::process::ExitCode;

use crate::catalog::{Catalog, CatalogError};
use crate::config::{quote_identifier, Config, TableName};
use crate::pg::{PgConfig, SslMode};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Ok,
    Warn,
    Fail,
}

struct Report {
    lines: Vec<(Level, String)>,
}

impl Report {
    fn add(&mut self, level: Level, message: impl Into<String>) {
        let message = message.into();
        let tag = match level {
            Level::Ok => "ok  ",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
        };
        println!("{tag} {message}");
        self.lines.push((level, message));
    }

    fn failed(&self) -> bool {
        self.lines.iter().any(|(level, _)| *level == Level::Fail)
    }
}

/// Fails with the fix when the server cannot do logical decoding; used by
/// the commands that need it before they try.
pub async fn require_logical(catalog: &Catalog) -> anyhow::Result<()> {
    let wal_level = catalog.setting("wal_level").await?;
    if wal_level != "logical" {
        anyhow::bail!(
            "wal_level is {wal_level:?}; set wal_level=logical (ALTER SYSTEM SET wal_level = logical) and restart Postgres"
        );
    }
    Ok(())
}

pub async fn run(config: &Config) -> anyhow::Result<ExitCode> {
    let mut report = Report { lines: Vec::new() };
    let pg = config.pg_config();
    let catalog = match Catalog::connect(&pg).await {
        Ok(catalog) => {
            report.add(
                Level::Ok,
                format!(
                    "connected to {}",
                    crate::config::redact_url(&config.postgres.url)
                ),
            );
            catalog
        }
        Err(e) => {
            report.add(
                Level::Fail,
                format!("{e}; check postgres.url (DATABASE_URL)"),
            );
            return Ok(ExitCode::FAILURE);
        }
    };
    match encrypted(&catalog).await {
        Ok(encrypted) => {
            let (level, message) =
                encryption_finding(&remote_hosts(&pg), pg.tls().effective_mode(), encrypted);
            report.add(level, message);
        }
        Err(e) => report.add(
            Level::Warn,
            format!("cannot tell whether the connection is encrypted: {e}"),
        ),
    }
    if let Err(e) = checks(config, &catalog, &mut report).await {
        report.add(Level::Fail, format!("check aborted: {e}"));
    }
    let warnings = report
        .lines
        .iter()
        .filter(|(l, _)| *l == Level::Warn)
        .count();
    if report.failed() {
        let failures = report
            .lines
            .iter()
            .filter(|(l, _)| *l == Level::Fail)
            .count();
        println!("{failures} problem(s) must be fixed, {warnings} warning(s)");
        Ok(ExitCode::FAILURE)
    } else {
        println!("ready to stream ({warnings} warning(s))");
        Ok(ExitCode::SUCCESS)
    }
}

async fn checks(
    config: &Config,
    catalog: &Catalog,
    report: &mut Report,
) -> Result<(), CatalogError> {
    let client = catalog.client();
    let pg = &config.postgres;

    let wal_level = catalog.setting("wal_level").await?;
    if wal_level == "logical" {
        report.add(Level::Ok, "wal_level is logical");
    } else {
        report.add(
            Level::Fail,
            format!("wal_level is {wal_level:?}; set wal_level=logical (ALTER SYSTEM SET wal_level = logical) and restart Postgres"),
        );
    }

    let role = client
        .query_one(
            "SELECT current_user::text, rolreplication, rolsuper FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await?;
    let (user, replication, superuser): (String, bool, bool) =
        (role.get(0), role.get(1), role.get(2));
    if replication || superuser {
        report.add(Level::Ok, format!("role {user} may replicate"));
    } else {
        report.add(
            Level::Fail,
            format!(
                "role {user} lacks the REPLICATION attribute; run ALTER ROLE {} REPLICATION",
                quote_identifier(&user)
            ),
        );
    }

    let slot = catalog.slot(&pg.slot).await?;
    let max_slots: i64 = catalog
        .setting("max_replication_slots")
        .await?
        .parse()
        .unwrap_or(0);
    let used_slots = catalog.slots().await?.len() as i64;
    if slot.is_none() && used_slots >= max_slots {
        report.add(
            Level::Fail,
            format!("all {max_slots} replication slots are in use (max_replication_slots); raise it and restart Postgres, or drop an unused slot"),
        );
    }

    let publication = catalog.publication_tables(&pg.publication).await?;
    match &publication {
        None => report.add(
            Level::Fail,
            format!(
                "publication {:?} does not exist; run `walcast setup` or CREATE PUBLICATION {} FOR TABLE {}",
                pg.publication,
                quote_identifier(&pg.publication),
                config
                    .tables()
                    .iter()
                    .map(TableName::quoted)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
        Some(_) => report.add(Level::Ok, format!("publication {} exists", pg.publication)),
    }

    for table in config.tables() {
        let row = client
            .query_opt(
                "SELECT c.relreplident::text, \
                        EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary) \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
                &[&table.schema, &table.table],
            )
            .await?;
        let Some(row) = row else {
            report.add(
                Level::Fail,
                format!("table {table} does not exist; create it (for the demo schema: `walcast setup`)"),
            );
            continue;
        };
        let (identity, has_pk): (String, bool) = (row.get(0), row.get(1));
        if let Some(tables) = &publication {
            if tables.contains(&table) {
                report.add(Level::Ok, format!("table {table} is in the publication"));
            } else {
                report.add(
                    Level::Fail,
                    format!(
                        "table {table} is not in publication {:?}; run ALTER PUBLICATION {} ADD TABLE {}",
                        pg.publication,
                        quote_identifier(&pg.publication),
                        table.quoted()
                    ),
                );
            }
        }
        let fix_full = format!("ALTER TABLE {} REPLICA IDENTITY FULL", table.quoted());
        match (identity.as_str(), has_pk) {
            ("f", _) => report.add(Level::Ok, format!("table {table} has REPLICA IDENTITY FULL")),
            ("d", true) | ("i", _) => report.add(
                Level::Warn,
                format!("table {table} sends only key columns as the old row (REPLICA IDENTITY DEFAULT/INDEX): events carry no whole `old` row, no `changed` list, and unchanged TOAST values cannot be filled; for those run {fix_full}"),
            ),
            ("d", false) => report.add(
                Level::Fail,
                format!("table {table} has no primary key and REPLICA IDENTITY DEFAULT: UPDATE and DELETE on it will fail once it is published; add a primary key or run {fix_full}"),
            ),
            _ => report.add(
                Level::Fail,
                format!("table {table} has REPLICA IDENTITY NOTHING: UPDATE and DELETE on it will fail once it is published; run {fix_full}"),
            ),
        }
    }

    let current_db: String = client
        .query_one("SELECT current_database()::text", &[])
        .await?
        .get(0);
    match slot {
        None => report.add(
            Level::Fail,
            format!(
                "replication slot {:?} does not exist; run `walcast slot create` or `walcast setup`",
                pg.slot
            ),
        ),
        Some(slot) => {
            if slot.slot_type != "logical" || slot.plugin.as_deref() != Some("pgoutput") {
                report.add(
                    Level::Fail,
                    format!(
                        "slot {} is a {} slot with plugin {:?}, not logical/pgoutput; drop it and run `walcast slot create`",
                        slot.slot_name, slot.slot_type, slot.plugin
                    ),
                );
            } else if slot.database.as_deref() != Some(current_db.as_str()) {
                report.add(
                    Level::Fail,
                    format!(
                        "slot {} belongs to database {:?}, not {current_db:?}; use another slot name or point postgres.url at that database",
                        slot.slot_name, slot.database
                    ),
                );
            } else if slot.wal_status.as_deref() == Some("lost") {
                report.add(
                    Level::Fail,
                    format!("slot {} has lost WAL it needed (wal_status lost, max_slot_wal_keep_size exceeded): changes were skipped; drop and recreate it and reload clients from a snapshot", slot.slot_name),
                );
            } else {
                let level = if slot.wal_status.as_deref() == Some("unreserved") {
                    Level::Warn
                } else {
                    Level::Ok
                };
                report.add(
                    level,
                    format!(
                        "slot {} is ready (wal_status {}, retains {})",
                        slot.slot_name,
                        slot.wal_status.as_deref().unwrap_or("-"),
                        slot.retained_wal_bytes
                            .map(crate::catalog::human_bytes)
                            .unwrap_or_else(|| "-".into())
                    ),
                );
            }
        }
    }

    let keep = catalog.setting("max_slot_wal_keep_size").await?;
    let (level, message) = wal_keep_finding(&keep);
    report.add(level, message);
    Ok(())
}

/// Whether this session runs over TLS, as the server sees it (which also
/// tells whether `prefer` ended up plain).
async fn encrypted(catalog: &Catalog) -> Result<bool, CatalogError> {
    let row = catalog
        .client()
        .query_opt(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await?;
    Ok(row.is_some_and(|row| row.get::<_, bool>(0)))
}

/// The hosts of the connection settings that are not this machine: TCP
/// hosts other than loopback addresses and `localhost` (a Unix socket is
/// local). `hostaddr`, when given, is where libpq connects.
fn remote_hosts(pg: &PgConfig) -> Vec<String> {
    use tokio_postgres::config::Host;
    if !pg.get_hostaddrs().is_empty() {
        return pg
            .get_hostaddrs()
            .iter()
            .filter(|addr| !addr.is_loopback())
            .map(ToString::to_string)
            .collect();
    }
    pg.get_hosts()
        .iter()
        .filter_map(|host| match host {
            Host::Tcp(name) => Some(name.as_str()),
            #[cfg(unix)]
            Host::Unix(_) => None,
        })
        .filter(|name| !is_loopback_name(name))
        .map(str::to_owned)
        .collect()
}

fn is_loopback_name(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match host.parse::<std::net::IpAddr>() {
        Ok(addr) => addr.is_loopback(),
        Err(_) => {
            host.eq_ignore_ascii_case("localhost")
                || host.to_ascii_lowercase().ends_with(".localhost")
        }
    }
}

/// The finding about transport security: a connection that leaves the
/// machine should be encrypted, and its server's certificate checked.
/// Pure, so the non-loopback cases are tested without a remote server.
fn encryption_finding(remote_hosts: &[String], mode: SslMode, encrypted: bool) -> (Level, String) {
    let fix = "set sslmode=verify-full and sslrootcert=<file of the server's CA> (in the URL or postgres.sslmode/postgres.sslrootcert)";
    match (remote_hosts.is_empty(), encrypted, mode) {
        (true, true, _) => (Level::Ok, format!("connection is encrypted (sslmode={mode})")),
        (true, false, _) => (
            Level::Ok,
            format!("connection is not encrypted (sslmode={mode}), which is fine on this machine"),
        ),
        (false, false, _) => (
            Level::Warn,
            format!(
                "the connection to {} is not encrypted (sslmode={mode}{}): the password and every captured row cross the network in clear text; {fix}",
                remote_hosts.join(", "),
                if mode == SslMode::Prefer { ", and the server did not offer SSL" } else { "" }
            ),
        ),
        (false, true, SslMode::VerifyFull) => (
            Level::Ok,
            "connection is encrypted and the server's certificate and name are verified (sslmode=verify-full)".into(),
        ),
        (false, true, SslMode::VerifyCa) => (
            Level::Ok,
            "connection is encrypted and the server's certificate is verified, not its name (sslmode=verify-ca)".into(),
        ),
        (false, true, _) => (
            Level::Warn,
            format!(
                "the connection to {} is encrypted, but the server's certificate is not checked (sslmode={mode}): anyone between walcast and the server can pose as it; {fix}",
                remote_hosts.join(", ")
            ),
        ),
    }
}

/// The finding for `max_slot_wal_keep_size` as `SHOW` prints it (`-1` when
/// unset, otherwise a size such as `4GB`). Pure, so the unset case is
/// tested without a server configured that way.
fn wal_keep_finding(keep: &str) -> (Level, String) {
    if keep.trim() == "-1" {
        (
            Level::Warn,
            "max_slot_wal_keep_size is unset (-1): a stopped walcast lets the slot retain WAL until the disk fills; set it, e.g. ALTER SYSTEM SET max_slot_wal_keep_size = '10GB'; SELECT pg_reload_conf();".into(),
        )
    } else {
        (Level::Ok, format!("max_slot_wal_keep_size is {keep}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_connections_off_this_machine_warn_with_the_fix() {
        let remote = vec!["db.example.com".to_owned()];
        for mode in [SslMode::Disable, SslMode::Prefer] {
            let (level, message) = encryption_finding(&remote, mode, false);
            assert_eq!(level, Level::Warn, "{mode}");
            assert!(
                message.contains("the connection to db.example.com is not encrypted"),
                "{message}"
            );
            assert!(message.contains("sslmode=verify-full"), "{message}");
        }
        let (_, message) = encryption_finding(&remote, SslMode::Prefer, false);
        assert!(
            message.contains("the server did not offer SSL"),
            "{message}"
        );
        // Encrypted without a certificate check is still open to an
        // impostor.
        let (level, message) = encryption_finding(&remote, SslMode::Require, true);
        assert_eq!(level, Level::Warn);
        assert!(message.contains("certificate is not checked"), "{message}");
        for mode in [SslMode::VerifyCa, SslMode::VerifyFull] {
            assert_eq!(encryption_finding(&remote, mode, true).0, Level::Ok);
        }
        // On this machine nothing crosses a network.
        for mode in [SslMode::Disable, SslMode::Prefer] {
            assert_eq!(encryption_finding(&[], mode, false).0, Level::Ok);
        }
    }

    #[test]
    fn loopback_hosts_are_this_machine() {
        let hosts = |url: &str| remote_hosts(&PgConfig::parse(url, &Default::default()).unwrap());
        assert!(hosts("postgres://u@127.0.0.1:5432/d").is_empty());
        assert!(hosts("postgres://u@localhost/d").is_empty());
        assert!(hosts("postgres://u@[::1]/d").is_empty());
        assert!(hosts("host=/var/run/postgresql user=u").is_empty());
        assert_eq!(hosts("postgres://u@db.internal/d"), ["db.internal"]);
        assert_eq!(hosts("postgres://u@10.1.2.3/d"), ["10.1.2.3"]);
        assert_eq!(
            hosts("host=db.internal hostaddr=127.0.0.1 user=u"),
            Vec::<String>::new()
        );
    }

    #[test]
    fn unset_wal_keep_size_warns_with_the_fix() {
        let (level, message) = wal_keep_finding("-1");
        assert_eq!(level, Level::Warn);
        assert!(message.contains("unset (-1)"), "{message}");
        assert!(
            message.contains("ALTER SYSTEM SET max_slot_wal_keep_size"),
            "{message}"
        );

        for size in ["4GB", "10240MB"] {
            let (level, message) = wal_keep_finding(size);
            assert_eq!(level, Level::Ok, "{size}");
            assert_eq!(message, format!("max_slot_wal_keep_size is {size}"));
        }
    }
}
