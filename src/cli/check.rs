//! `walcast check`: a preflight that says exactly what is wrong and how to
//! fix it, before anything streams.

use std::process::ExitCode;
use std::time::Duration;

use crate::capture::bounded_status_interval;
use crate::catalog::{Catalog, CatalogError, SlotInfo};
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
    server_checks(catalog, report).await?;
    let slot = catalog.slot(&config.postgres.slot).await?;
    slot_capacity_check(catalog, slot.is_some(), report).await?;
    let publication = publication_check(config, catalog, report).await?;
    for table in config.tables() {
        table_check(config, catalog, table, publication.as_ref(), report).await?;
    }
    slot_check(config, catalog, slot, report).await?;

    let keep = catalog.setting("max_slot_wal_keep_size").await?;
    let (level, message) = wal_keep_finding(&keep);
    report.add(level, message);

    capture_findings(config, catalog, report).await?;
    Ok(())
}

/// The server and the role: `wal_level` and the REPLICATION attribute.
async fn server_checks(catalog: &Catalog, report: &mut Report) -> Result<(), CatalogError> {
    let client = catalog.client();

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
    Ok(())
}

/// Whether a new slot could be created, when ours does not exist yet.
async fn slot_capacity_check(
    catalog: &Catalog,
    slot_exists: bool,
    report: &mut Report,
) -> Result<(), CatalogError> {
    let max_slots: i64 = catalog
        .setting("max_replication_slots")
        .await?
        .parse()
        .unwrap_or(0);
    let used_slots = catalog.slots().await?.len() as i64;
    if !slot_exists && used_slots >= max_slots {
        report.add(
            Level::Fail,
            format!("all {max_slots} replication slots are in use (max_replication_slots); raise it and restart Postgres, or drop an unused slot"),
        );
    }
    Ok(())
}

/// Whether the publication exists; its tables when it does.
async fn publication_check(
    config: &Config,
    catalog: &Catalog,
    report: &mut Report,
) -> Result<Option<Vec<TableName>>, CatalogError> {
    let pg = &config.postgres;
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
    Ok(publication)
}

/// One configured table: that it exists, is published and has a replica
/// identity UPDATE and DELETE can work with.
async fn table_check(
    config: &Config,
    catalog: &Catalog,
    table: TableName,
    publication: Option<&Vec<TableName>>,
    report: &mut Report,
) -> Result<(), CatalogError> {
    let client = catalog.client();
    let pg = &config.postgres;
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
            format!(
                "table {table} does not exist; create it (for the demo schema: `walcast setup`)"
            ),
        );
        return Ok(());
    };
    let (identity, has_pk): (String, bool) = (row.get(0), row.get(1));
    if let Some(tables) = publication {
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
    Ok(())
}

/// Our slot: that it exists, is logical/pgoutput in this database and has
/// not lost WAL.
async fn slot_check(
    config: &Config,
    catalog: &Catalog,
    slot: Option<SlotInfo>,
    report: &mut Report,
) -> Result<(), CatalogError> {
    let client = catalog.client();
    let pg = &config.postgres;
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

/// What the capture itself depends on: that the publication sends no table
/// beyond `postgres.tables`, and that the status interval is below the
/// server's `wal_sender_timeout`.
async fn capture_findings(
    config: &Config,
    catalog: &Catalog,
    report: &mut Report,
) -> Result<(), CatalogError> {
    let pg = &config.postgres;
    if let (Some(all_tables), Some(published)) = (
        catalog
            .publication_is_for_all_tables(&pg.publication)
            .await?,
        catalog.publication_tables(&pg.publication).await?,
    ) {
        let (level, message) =
            publication_scope_finding(&pg.publication, all_tables, &published, &config.tables());
        report.add(level, message);
    }
    let timeout = catalog.wal_sender_timeout().await?;
    let (level, message) = status_interval_finding(pg.status_interval_ms, timeout);
    report.add(level, message);
    Ok(())
}

/// Fails when the publication covers tables outside the configured ones:
/// walcast filters them out, but their rows still leave the database on
/// the replication connection, and a publication is the place to say what
/// may leave. Pure, for the tests.
fn publication_scope_finding(
    publication: &str,
    all_tables: bool,
    published: &[TableName],
    configured: &[TableName],
) -> (Level, String) {
    let extra: Vec<String> = published
        .iter()
        .filter(|table| !configured.contains(table))
        .map(ToString::to_string)
        .collect();
    let configured_list = configured
        .iter()
        .map(TableName::quoted)
        .collect::<Vec<_>>()
        .join(", ");
    let quoted = quote_identifier(publication);
    let shown = |tables: &[String]| {
        const SHOWN: usize = 10;
        let mut text = tables
            .iter()
            .take(SHOWN)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        if tables.len() > SHOWN {
            text.push_str(&format!(" and {} more", tables.len() - SHOWN));
        }
        text
    };
    if all_tables {
        let covers = if extra.is_empty() {
            "every table, including those created later".to_owned()
        } else {
            format!("every table, including {}", shown(&extra))
        };
        return (
            Level::Fail,
            format!(
                "publication {publication:?} is FOR ALL TABLES: it sends {covers} over the replication connection (walcast filters them out, but only postgres.tables should leave the database); a FOR ALL TABLES publication cannot be narrowed, so recreate it in one transaction (the slot must never see it missing): BEGIN; DROP PUBLICATION {quoted}; CREATE PUBLICATION {quoted} FOR TABLE {configured_list}; COMMIT;"
            ),
        );
    }
    if extra.is_empty() {
        return (
            Level::Ok,
            format!("publication {publication} covers no table beyond postgres.tables"),
        );
    }
    (
        Level::Fail,
        format!(
            "publication {publication:?} also covers {} (not in postgres.tables): their changes leave the database over the replication connection (walcast filters them out); run ALTER PUBLICATION {quoted} SET TABLE {configured_list}, or add them to postgres.tables if walcast should publish them",
            shown(&extra)
        ),
    )
}

/// Warns when `postgres.status_interval_ms` is not below the server's
/// `wal_sender_timeout` (zero: disabled), since the capture then uses half
/// the timeout instead. Pure, for the tests.
fn status_interval_finding(
    status_interval_ms: u64,
    wal_sender_timeout: Duration,
) -> (Level, String) {
    let configured = Duration::from_millis(status_interval_ms);
    let timeout_ms = wal_sender_timeout.as_millis();
    match bounded_status_interval(configured, wal_sender_timeout) {
        None if wal_sender_timeout.is_zero() => (
            Level::Ok,
            format!("postgres.status_interval_ms is {status_interval_ms} (wal_sender_timeout is disabled)"),
        ),
        None => (
            Level::Ok,
            format!("postgres.status_interval_ms ({status_interval_ms}) is below wal_sender_timeout ({timeout_ms} ms)"),
        ),
        Some(clamped) => (
            Level::Warn,
            format!(
                "postgres.status_interval_ms ({status_interval_ms}) is not below the server's wal_sender_timeout ({timeout_ms} ms): walcast will send status updates every {} ms instead; set postgres.status_interval_ms below {timeout_ms} (e.g. {}), or raise wal_sender_timeout",
                clamped.as_millis(),
                clamped.as_millis()
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

    fn tables(names: &[&str]) -> Vec<TableName> {
        names.iter().map(|n| TableName::parse(n).unwrap()).collect()
    }

    #[test]
    fn a_publication_beyond_the_configured_tables_fails_with_the_fix() {
        let configured = tables(&["public.orders"]);
        let (level, message) =
            publication_scope_finding("walcast", false, &tables(&["public.orders"]), &configured);
        assert_eq!(level, Level::Ok, "{message}");

        let shared = tables(&["public.orders", "public.users", "shop.items"]);
        let (level, message) = publication_scope_finding("walcast", false, &shared, &configured);
        assert_eq!(level, Level::Fail);
        assert!(message.contains("public.users, shop.items"), "{message}");
        assert!(
            message.contains(r#"ALTER PUBLICATION "walcast" SET TABLE "public"."orders""#),
            "{message}"
        );

        let (level, message) = publication_scope_finding("walcast", true, &shared, &configured);
        assert_eq!(level, Level::Fail);
        assert!(message.contains("FOR ALL TABLES"), "{message}");
        assert!(message.contains("public.users"), "{message}");
        assert!(
            message.contains(r#"BEGIN; DROP PUBLICATION "walcast"; CREATE PUBLICATION "walcast" FOR TABLE "public"."orders"; COMMIT;"#),
            "{message}"
        );
        // Even when today it holds only the configured tables.
        let (level, _) = publication_scope_finding("walcast", true, &configured, &configured);
        assert_eq!(level, Level::Fail);

        let many: Vec<TableName> = (0..25)
            .map(|i| TableName::parse(&format!("t{i:02}")).unwrap())
            .collect();
        let (_, message) = publication_scope_finding("walcast", false, &many, &configured);
        assert!(message.contains("and 15 more"), "{message}");
    }

    #[test]
    fn a_status_interval_at_or_above_wal_sender_timeout_warns() {
        let (level, message) = status_interval_finding(10_000, Duration::from_secs(60));
        assert_eq!(level, Level::Ok, "{message}");
        let (level, _) = status_interval_finding(10_000, Duration::ZERO);
        assert_eq!(level, Level::Ok);
        for timeout in [Duration::from_secs(10), Duration::from_secs(5)] {
            let (level, message) = status_interval_finding(10_000, timeout);
            assert_eq!(level, Level::Warn);
            let half = timeout.as_millis() / 2;
            assert!(message.contains(&format!("every {half} ms")), "{message}");
            assert!(
                message.contains(&format!("below {}", timeout.as_millis())),
                "{message}"
            );
        }
    }

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
