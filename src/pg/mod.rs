//! What every connection to PostgreSQL shares, whichever protocol runs on
//! it (the replication connection in `wal`, the `tokio-postgres`
//! connections of `catalog`, the CLI, the API's pool and the gateway's
//! history start):
//!
//! - [`PgConfig`]: the connection settings, tokio-postgres's plus TLS.
//!   [`PgConfig::parse`] takes libpq's TLS parameters (`sslmode`,
//!   `sslrootcert`, `sslcert`, `sslkey`) out of the URL itself, because
//!   tokio-postgres knows only three sslmodes and no certificate files.
//! - [`PgConfig::connect`]: the one way to open a `tokio-postgres`
//!   connection, with TLS as configured.
//! - `tls`: sslmode semantics and the rustls configuration.
//! - `error`: one classification of server errors as transient or
//!   definite, and one operator-readable description of a client error.
//!
//! It does not run queries (that is `catalog`'s) or speak the replication
//! protocol (`wal`'s).

mod error;
mod tls;

use std::ops::{Deref, DerefMut};
use std::path::PathBuf;

use tokio_postgres::{Client, Connection, Socket};

pub use error::{describe, is_transient, is_transient_sqlstate};
pub use tls::{MakeRustlsConnect, RustlsStream, SslMode, TlsError, TlsSettings};

/// The URL parameters that are walcast's to handle, not tokio-postgres's.
const TLS_PARAMETERS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

/// Connection settings of one Postgres database: tokio-postgres's (host,
/// user, ...; reachable through `Deref`) and the TLS settings.
#[derive(Debug, Clone)]
pub struct PgConfig {
    postgres: tokio_postgres::Config,
    tls: TlsSettings,
}

impl PgConfig {
    /// Parses a connection string (`postgres://…` URL or `key=value` form).
    /// TLS parameters in it win over `defaults` (the `postgres.ssl*`
    /// settings), as libpq's connection string wins over `PGSSLMODE` and
    /// friends.
    pub fn parse(url: &str, defaults: &TlsSettings) -> Result<PgConfig, String> {
        let (rest, found) = take_tls_parameters(url);
        let mut tls = defaults.clone();
        for (key, value) in found {
            let path = || (!value.is_empty()).then(|| PathBuf::from(&value));
            match key.as_str() {
                "sslmode" => {
                    tls.mode = SslMode::parse(&value).map_err(|e| format!("sslmode {e}"))?
                }
                "sslrootcert" => tls.root_cert = path(),
                "sslcert" => tls.cert = path(),
                "sslkey" => tls.key = path(),
                _ => unreachable!("only TLS parameters are taken"),
            }
        }
        let mut postgres: tokio_postgres::Config = rest
            .parse()
            .map_err(|e: tokio_postgres::Error| e.to_string())?;
        postgres.ssl_mode(tls.tokio_postgres_mode());
        Ok(PgConfig { postgres, tls })
    }

    pub fn tls(&self) -> &TlsSettings {
        &self.tls
    }

    /// The TLS connector for tokio-postgres (and deadpool-postgres).
    pub fn make_tls(&self) -> MakeRustlsConnect {
        MakeRustlsConnect::new(self.tls.clone())
    }

    /// Opens a tokio-postgres connection with TLS as configured. The caller
    /// spawns (or awaits) the connection.
    pub async fn connect(
        &self,
    ) -> Result<(Client, Connection<Socket, RustlsStream<Socket>>), tokio_postgres::Error> {
        self.postgres.connect(self.make_tls()).await
    }
}

/// The tokio-postgres part, for the settings TLS does not touch
/// (`application_name`, timeouts, hosts). Connect through
/// [`PgConfig::connect`], which shadows `tokio_postgres::Config::connect`.
impl Deref for PgConfig {
    type Target = tokio_postgres::Config;
    fn deref(&self) -> &tokio_postgres::Config {
        &self.postgres
    }
}

impl DerefMut for PgConfig {
    fn deref_mut(&mut self) -> &mut tokio_postgres::Config {
        &mut self.postgres
    }
}

/// A bare tokio-postgres config: its own sslmode (disable, prefer,
/// require), no certificate files.
impl From<tokio_postgres::Config> for PgConfig {
    fn from(postgres: tokio_postgres::Config) -> PgConfig {
        let mode = match postgres.get_ssl_mode() {
            tokio_postgres::config::SslMode::Disable => SslMode::Disable,
            tokio_postgres::config::SslMode::Prefer => SslMode::Prefer,
            _ => SslMode::Require,
        };
        PgConfig {
            postgres,
            tls: TlsSettings {
                mode,
                ..TlsSettings::default()
            },
        }
    }
}

impl From<&tokio_postgres::Config> for PgConfig {
    fn from(postgres: &tokio_postgres::Config) -> PgConfig {
        PgConfig::from(postgres.clone())
    }
}

impl From<&PgConfig> for PgConfig {
    fn from(config: &PgConfig) -> PgConfig {
        config.clone()
    }
}

/// Splits the TLS parameters off a connection string: the string without
/// them (for tokio-postgres, whose parser rejects verify-ca and
/// verify-full) and the parameters, decoded, in order.
fn take_tls_parameters(url: &str) -> (String, Vec<(String, String)>) {
    let is_tls = |key: &str| TLS_PARAMETERS.contains(&key);
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let Some((base, query)) = url.split_once('?') else {
            return (url.to_owned(), Vec::new());
        };
        let mut kept = Vec::new();
        let mut taken = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let key = percent_decode(key);
            if is_tls(&key) {
                taken.push((key, percent_decode(value)));
            } else {
                kept.push(pair);
            }
        }
        let rest = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        return (rest, taken);
    }
    // key=value form: values may be single-quoted, with backslash escapes.
    let mut rest = String::new();
    let mut taken = Vec::new();
    let mut chars = url.char_indices().peekable();
    while let Some(&(start, c)) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let mut key = String::new();
        while let Some(&(_, c)) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|&(_, c)| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_some_and(|&(_, c)| c == '=') {
            chars.next();
        }
        while chars.peek().is_some_and(|&(_, c)| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        let quoted = chars.peek().is_some_and(|&(_, c)| c == '\'');
        if quoted {
            chars.next();
        }
        while let Some((_, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, escaped)) = chars.next() {
                        value.push(escaped);
                    }
                }
                '\'' if quoted => break,
                c if c.is_whitespace() && !quoted => break,
                c => value.push(c),
            }
        }
        let end = chars.peek().map_or(url.len(), |&(i, _)| i);
        if is_tls(&key) {
            taken.push((key, value));
        } else {
            rest.push_str(url[start..end].trim_end());
            rest.push(' ');
        }
    }
    (rest.trim_end().to_owned(), taken)
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_parameters_leave_the_url_before_tokio_postgres_sees_it() {
        let (rest, taken) = take_tls_parameters(
            "postgres://u:p@db.example.com:5432/app?sslmode=verify-full&connect_timeout=5&sslrootcert=%2Fetc%2Fca.pem",
        );
        assert_eq!(
            rest,
            "postgres://u:p@db.example.com:5432/app?connect_timeout=5"
        );
        assert_eq!(
            taken,
            vec![
                ("sslmode".to_owned(), "verify-full".to_owned()),
                ("sslrootcert".to_owned(), "/etc/ca.pem".to_owned())
            ]
        );
        let (rest, taken) = take_tls_parameters("postgres://h/d?sslmode=require");
        assert_eq!(rest, "postgres://h/d");
        assert_eq!(taken.len(), 1);
    }

    #[test]
    fn key_value_strings_lose_only_their_tls_parameters() {
        let (rest, taken) = take_tls_parameters(
            "host=db user=u sslmode = verify-ca sslrootcert='/a b/ca.pem' password='x\\'y' dbname=d",
        );
        assert_eq!(rest, "host=db user=u password='x\\'y' dbname=d");
        assert_eq!(
            taken,
            vec![
                ("sslmode".to_owned(), "verify-ca".to_owned()),
                ("sslrootcert".to_owned(), "/a b/ca.pem".to_owned())
            ]
        );
    }

    #[test]
    fn the_url_wins_over_the_settings() {
        let defaults = TlsSettings {
            mode: SslMode::Disable,
            root_cert: Some("/from/settings.pem".into()),
            ..TlsSettings::default()
        };
        let config = PgConfig::parse("postgres://u@h/d?sslmode=verify-full", &defaults).unwrap();
        assert_eq!(config.tls().mode, SslMode::VerifyFull);
        assert_eq!(
            config.tls().root_cert.as_deref(),
            Some(std::path::Path::new("/from/settings.pem"))
        );
        assert_eq!(
            config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        );
        let config = PgConfig::parse("postgres://u@h/d", &defaults).unwrap();
        assert_eq!(config.tls().mode, SslMode::Disable);
        assert_eq!(
            config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Disable
        );
        let error = PgConfig::parse("postgres://u@h/d?sslmode=verify", &defaults).unwrap_err();
        assert!(
            error.contains("sslmode \"verify\" is not one of"),
            "{error}"
        );
    }
}
