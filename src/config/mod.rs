//! Settings: loading, layering and validation.
//!
//! Settings come from three layers, each overriding the one before:
//! `config.toml` (or the file named by `--config` / `WALCAST_CONFIG`), the
//! environment (`WALCAST_<SECTION>_<KEY>`, plus `DATABASE_URL` and
//! `RABBITMQ_URL` as commonly used), and command-line flags. Unknown keys are
//! errors, never silently ignored. [`Config::validate`] is pure and reports
//! every problem with the field it belongs to.
//!
//! Secrets: URLs may carry passwords. Anything that prints a URL goes through
//! [`redact_url`]; `Debug` of [`Config`] redacts too, and shows `[auth]`
//! tokens and the JWT secret only as a count and a set/unset mark (the
//! secrets are [`Redacted`]).
//!
//! Layout: this file loads, layers and validates; each section
//! (`postgres`, `rabbitmq`, `http`, `fanout`, `auth`, `log`, `runtime`) has its own
//! file with its struct, its defaults as named constants, its `Debug` and
//! its own `validate`, whose numeric settings are a table of named ranges
//! checked by `check_ranges`. Table names live in `catalog`.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

mod auth;
mod fanout;
mod http;
mod log;
mod postgres;
mod rabbitmq;
mod redacted;
mod runtime;

pub use self::auth::{AuthConfig, DEFAULT_JWT_LEEWAY_SECS, MIN_JWT_SECRET_LEN, MIN_TOKEN_LEN};
pub use self::fanout::{
    FanoutConfig, DEFAULT_REPLAY_MAX_BYTES, DEFAULT_SOCKET_BUFFER_BYTES, MIN_REPLAY_MAX_BYTES,
};
pub use self::http::HttpConfig;
pub use self::log::LogConfig;
pub use self::postgres::PostgresConfig;
pub use self::rabbitmq::{
    QueueType, RabbitConfig, DEFAULT_MAX_EVENT_BYTES, DEFAULT_PUBLISH_WINDOW_BYTES,
    RABBITMQ_DEFAULT_MAX_MESSAGE_SIZE,
};
pub use self::redacted::Redacted;
pub use self::runtime::{RuntimeConfig, AUTO_WORKER_THREADS, DEFAULT_MMAP_THRESHOLD_BYTES};
// Table names live with the catalog; these paths stay for existing callers.
pub use crate::catalog::{quote_identifier, TableName};

use crate::pg::{PgConfig, TlsSettings};

/// Why settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("invalid configuration: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<Problem>),
}

/// One problem found by [`Config::validate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub field: &'static str,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// All of walcast's settings. See `config.toml` for each one's meaning.
impl Problem {
    /// A problem with `field` (`section.key`).
    pub fn new(field: &'static str, message: impl Into<String>) -> Problem {
        Problem {
            field,
            message: message.into(),
        }
    }
}

/// Checks each `(field, value, range)` of a section's table of numeric
/// settings, with the same message for every one that is out of range.
fn check_ranges(problems: &mut Vec<Problem>, checks: &[(&'static str, u64, RangeInclusive<u64>)]) {
    for (field, value, range) in checks {
        if !range.contains(value) {
            problems.push(Problem::new(
                field,
                format!(
                    "{value} is out of range {}..={}",
                    range.start(),
                    range.end()
                ),
            ));
        }
    }
}

#[derive(Clone, Deserialize, Default, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub postgres: PostgresConfig,
    pub rabbitmq: RabbitConfig,
    pub http: HttpConfig,
    pub fanout: FanoutConfig,
    pub log: LogConfig,
    pub auth: AuthConfig,
    pub runtime: RuntimeConfig,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("postgres", &self.postgres)
            .field("rabbitmq", &self.rabbitmq)
            .field("http", &self.http)
            .field("fanout", &self.fanout)
            .field("log", &self.log)
            .field("auth", &self.auth)
            .field("runtime", &self.runtime)
            .finish()
    }
}

/// Values given on the command line; `None` leaves the lower layers' value.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub database_url: Option<String>,
    pub slot: Option<String>,
    pub publication: Option<String>,
    pub tables: Option<Vec<String>>,
    pub rabbitmq_url: Option<String>,
    pub exchange: Option<String>,
    pub listen: Option<String>,
    pub log_level: Option<String>,
    pub log_format: Option<String>,
}

/// The sections a `WALCAST_<SECTION>_<KEY>` variable may name.
const SECTIONS: [&str; 7] = [
    "postgres", "rabbitmq", "http", "fanout", "log", "auth", "runtime",
];

impl Config {
    /// Loads the layered configuration and validates it.
    ///
    /// `path` is the file named on the command line; without it
    /// `WALCAST_CONFIG` is used, and then `./config.toml` if it exists.
    pub fn load(
        path: Option<&Path>,
        env: &BTreeMap<String, String>,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        let explicit = path
            .map(Path::to_path_buf)
            .or_else(|| env.get("WALCAST_CONFIG").map(PathBuf::from));
        let mut table = match &explicit {
            Some(path) => read_table(path)?,
            None if Path::new("config.toml").exists() => read_table(Path::new("config.toml"))?,
            None => toml::Table::new(),
        };
        let source = explicit.unwrap_or_else(|| PathBuf::from("config.toml"));
        // The file alone first, so that its mistakes are blamed on it and
        // the environment's (checked one variable at a time by `apply_env`)
        // on the variable.
        let mut config = deserialize(&table).map_err(|message| ConfigError::Parse {
            path: source,
            message,
        })?;
        if let Some(layered) = apply_env(&mut table, env)? {
            config = layered;
        }
        config.apply(overrides);
        let problems = config.validate();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// Parses a TOML document (no layering); for tests and tools.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Parse {
                path: PathBuf::from("<string>"),
                message: e.message().to_owned(),
            })?;
        Config::deserialize(toml::Value::Table(table)).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<string>"),
            message: e.message().to_owned(),
        })
    }

    fn apply(&mut self, o: &Overrides) {
        let set = |slot: &mut String, value: &Option<String>| {
            if let Some(value) = value {
                slot.clone_from(value);
            }
        };
        set(&mut self.postgres.url, &o.database_url);
        set(&mut self.postgres.slot, &o.slot);
        set(&mut self.postgres.publication, &o.publication);
        if let Some(tables) = &o.tables {
            self.postgres.tables.clone_from(tables);
        }
        set(&mut self.rabbitmq.url, &o.rabbitmq_url);
        set(&mut self.rabbitmq.exchange, &o.exchange);
        set(&mut self.http.listen, &o.listen);
        set(&mut self.log.level, &o.log_level);
        set(&mut self.log.format, &o.log_format);
    }

    /// Every problem with these settings, each with its field. Pure.
    pub fn validate(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        self.postgres.validate(&mut problems);
        self.rabbitmq.validate(&mut problems);
        self.fanout.validate(&mut problems);
        self.http.validate(&mut problems);
        self.auth.validate(&mut problems);
        self.log.validate(&mut problems);
        self.runtime.validate(&mut problems);
        problems
    }

    /// The parsed Postgres connection settings, TLS included (valid after
    /// `validate`).
    pub fn pg_config(&self) -> PgConfig {
        let mut config = PgConfig::parse(&self.postgres.url, &self.tls_defaults())
            .unwrap_or_else(|_| PgConfig::from(tokio_postgres::Config::new()));
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_millis(self.postgres.connect_timeout_ms));
        }
        config.application_name(&self.postgres.application_name);
        config
    }

    /// The `postgres.ssl*` settings, which the URL's own parameters
    /// override.
    fn tls_defaults(&self) -> TlsSettings {
        self.postgres.tls_defaults()
    }

    /// The captured tables, parsed (valid after `validate`).
    pub fn tables(&self) -> Vec<TableName> {
        self.postgres
            .tables
            .iter()
            .filter_map(|t| TableName::parse(t).ok())
            .collect()
    }
}

/// Postgres allows only lower-case letters, digits and underscores in slot names.
pub fn check_slot_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 63 {
        return Err(format!("slot name {name:?} must be 1 to 63 characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(format!(
            "slot name {name:?} may contain only lower-case letters, digits and underscores"
        ));
    }
    Ok(())
}

/// The URL with any password replaced by `***`.
pub fn redact_url(url: &str) -> String {
    // A list of URLs (rabbitmq.url naming several nodes): each one.
    if url.matches("://").count() > 1 && url.contains(',') {
        let redacted: Vec<String> = url.split(',').map(|u| redact_url(u.trim())).collect();
        return redacted.join(",");
    }
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return redact_query_password(url);
    };
    let userinfo = &authority[..at];
    let redacted_userinfo = match userinfo.split_once(':') {
        Some((user, _password)) => format!("{user}:***"),
        None => userinfo.to_owned(),
    };
    redact_query_password(&format!(
        "{}{}@{}",
        &url[..scheme_end + 3],
        redacted_userinfo,
        &rest[at..].trim_start_matches('@')
    ))
}

fn redact_query_password(url: &str) -> String {
    let Some((base, query)) = url.split_once('?') else {
        return url.to_owned();
    };
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
            _ => pair.to_owned(),
        })
        .collect();
    format!("{base}?{}", query.join("&"))
}

fn read_table(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    text.parse::<toml::Table>().map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string().trim().replace('\n', " "),
    })
}

/// The settings of a TOML table, or serde's message for what is wrong.
fn deserialize(table: &toml::Table) -> Result<Config, String> {
    Config::deserialize(toml::Value::Table(table.clone())).map_err(|e| e.message().to_owned())
}

/// Lays `WALCAST_<SECTION>_<KEY>`, `DATABASE_URL` and `RABBITMQ_URL` over the
/// file's table (which already deserializes). A `WALCAST_` variable whose
/// section is not one of walcast's is not a setting (`WALCAST_CONFIG`, test
/// harness variables) and is left alone.
///
/// The table is checked after each variable, so a misspelt key
/// (`WALCAST_POSTGRES_SLOTT`) or a bad value is reported against the
/// variable that brought it, not against a config file that may not even
/// exist. A handful of variables makes this a handful of small parses.
/// Returns the settings after the last variable; `None` if none applied.
fn apply_env(
    table: &mut toml::Table,
    env: &BTreeMap<String, String>,
) -> Result<Option<Config>, ConfigError> {
    let mut layered = None;
    let mut set = |section: &str, key: &str, value: toml::Value| {
        let entry = table
            .entry(section.to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        match entry {
            toml::Value::Table(t) => {
                t.insert(key.to_owned(), value);
            }
            _ => return Err(format!("[{section}] in the config file is not a table")),
        }
        deserialize(table).map_err(|message| match message.strip_prefix("unknown field") {
            Some(rest) => {
                let expected = rest.split_once(", ").map_or("", |(_, expected)| expected);
                format!("not a walcast setting: [{section}] has no key `{key}`; {expected}")
            }
            None => message,
        })
    };
    // The common names first, so WALCAST_* wins over them.
    for (var, section) in [("DATABASE_URL", "postgres"), ("RABBITMQ_URL", "rabbitmq")] {
        if let Some(value) = env.get(var) {
            let config =
                set(section, "url", toml::Value::String(value.clone())).map_err(|message| {
                    ConfigError::Env {
                        var: var.into(),
                        message,
                    }
                })?;
            layered = Some(config);
        }
    }
    for (var, value) in env {
        let Some(rest) = var.strip_prefix("WALCAST_") else {
            continue;
        };
        let rest = rest.to_ascii_lowercase();
        let Some(section) = SECTIONS.iter().find(|s| rest.starts_with(&format!("{s}_"))) else {
            continue;
        };
        let key = &rest[section.len() + 1..];
        let value = env_value(key, value);
        let config = set(section, key, value).map_err(|message| ConfigError::Env {
            var: var.clone(),
            message,
        })?;
        layered = Some(config);
    }
    Ok(layered)
}

/// Keys whose environment value is a boolean (`true`/`1`/`yes`/`on`, ...).
const BOOLEAN_KEYS: [&str; 3] = ["enabled", "replay_fsync", "allow_anonymous"];
/// Keys whose environment value is a comma-separated list.
const LIST_KEYS: [&str; 2] = ["tables", "tokens"];
/// Keys whose environment value is a number: by suffix, and by name.
const NUMBER_SUFFIXES: [&str; 3] = ["_ms", "_bytes", "_secs"];
const NUMBER_KEYS: [&str; 7] = [
    "prefetch",
    "publish_window",
    "replay_buffer",
    "socket_buffer",
    "pool_size",
    "max_subscriptions",
    "worker_threads",
];

/// Environment values are strings; numbers and lists are converted by key.
fn env_value(key: &str, value: &str) -> toml::Value {
    if BOOLEAN_KEYS.contains(&key) {
        match value.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => return toml::Value::Boolean(true),
            "false" | "0" | "no" | "off" | "" => return toml::Value::Boolean(false),
            // Anything else stays a string, so deserializing names the variable's field.
            _ => {}
        }
    }
    if LIST_KEYS.contains(&key) {
        return toml::Value::Array(
            value
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(|t| toml::Value::String(t.to_owned()))
                .collect(),
        );
    }
    if NUMBER_SUFFIXES.iter().any(|suffix| key.ends_with(suffix)) || NUMBER_KEYS.contains(&key) {
        if let Ok(n) = value.trim().parse::<i64>() {
            return toml::Value::Integer(n);
        }
    }
    toml::Value::String(value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_valid() {
        assert_eq!(Config::default().validate(), vec![]);
    }

    #[test]
    fn shipped_config_toml_parses_and_validates() {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml"))
            .expect("config.toml at the repository root");
        let config = Config::from_toml(&text).expect("config.toml parses");
        assert_eq!(config.validate(), vec![]);
    }

    /// The field names serde knows for struct `T`, read from the
    /// `deserialize_struct` call its derived `Deserialize` makes.
    fn struct_fields<T: for<'de> Deserialize<'de>>() -> &'static [&'static str] {
        use serde::de::{self, Visitor};

        struct Capture<'a>(&'a mut &'static [&'static str]);
        impl<'de> de::Deserializer<'de> for Capture<'_> {
            type Error = de::value::Error;
            fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
                Err(de::Error::custom("not a struct"))
            }
            fn deserialize_struct<V: Visitor<'de>>(
                self,
                _name: &'static str,
                fields: &'static [&'static str],
                _visitor: V,
            ) -> Result<V::Value, Self::Error> {
                *self.0 = fields;
                Err(de::Error::custom("fields captured"))
            }
            serde::forward_to_deserialize_any! {
                bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
                bytes byte_buf option unit unit_struct newtype_struct seq tuple
                tuple_struct map enum identifier ignored_any
            }
        }
        let mut fields: &'static [&'static str] = &[];
        let _ = T::deserialize(Capture(&mut fields));
        fields
    }

    /// Every setting of every section appears in the shipped config.toml
    /// with a comment above it (directly, or above the group of keys it
    /// belongs to), so no setting goes undocumented.
    #[test]
    fn every_setting_is_documented_in_config_toml() {
        let sections: [(&str, &[&str]); 7] = [
            ("postgres", struct_fields::<PostgresConfig>()),
            ("rabbitmq", struct_fields::<RabbitConfig>()),
            ("http", struct_fields::<HttpConfig>()),
            ("fanout", struct_fields::<FanoutConfig>()),
            ("log", struct_fields::<LogConfig>()),
            ("auth", struct_fields::<AuthConfig>()),
            ("runtime", struct_fields::<RuntimeConfig>()),
        ];
        // The hand list above (and SECTIONS) is exactly Config's sections.
        let mut names: Vec<&str> = sections.iter().map(|(name, _)| *name).collect();
        let mut config_fields = struct_fields::<Config>().to_vec();
        names.sort_unstable();
        config_fields.sort_unstable();
        assert_eq!(names, config_fields);
        let mut known = SECTIONS.to_vec();
        known.sort_unstable();
        assert_eq!(known, config_fields);

        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml"))
            .expect("config.toml at the repository root");
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        for (section, fields) in sections {
            assert!(!fields.is_empty(), "[{section}] has no fields?");
            let header = format!("[{section}]");
            let start = lines
                .iter()
                .position(|line| *line == header)
                .unwrap_or_else(|| panic!("config.toml has no {header}"));
            let end = lines[start + 1..]
                .iter()
                .position(|line| line.starts_with('['))
                .map_or(lines.len(), |i| start + 1 + i);
            let is_key = |line: &str, key: &str| {
                line.strip_prefix(key)
                    .is_some_and(|rest| rest.trim_start().starts_with('='))
            };
            for field in fields {
                let at = (start + 1..end)
                    .find(|&i| is_key(lines[i], field))
                    .unwrap_or_else(|| panic!("{section}.{field} is not in config.toml"));
                let documented = lines[start + 1..at]
                    .iter()
                    .rev()
                    .find(|line| !line.contains('=') || line.starts_with('#'))
                    .is_some_and(|line| line.starts_with('#'));
                assert!(
                    documented,
                    "{section}.{field} has no comment in config.toml"
                );
            }
        }
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = Config::from_toml("[postgres]\nslott = \"x\"\n").unwrap_err();
        assert!(err.to_string().contains("unknown field `slott`"), "{err}");
        let err = Config::from_toml("[nope]\n").unwrap_err();
        assert!(err.to_string().contains("unknown field `nope`"), "{err}");
    }

    #[test]
    fn layers_file_then_env_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[postgres]\nslot = \"from_file\"\npublication = \"file_pub\"\nurl = \"postgres://a@h/d\"\n",
        )
        .unwrap();
        let vars = env(&[
            ("WALCAST_POSTGRES_PUBLICATION", "env_pub"),
            ("WALCAST_POSTGRES_STATUS_INTERVAL_MS", "2500"),
            ("WALCAST_POSTGRES_TABLES", "public.orders, shop.items"),
            ("DATABASE_URL", "postgres://common@h/d"),
            ("WALCAST_TEST_PG_URL", "ignored, not a setting"),
        ]);
        let overrides = Overrides {
            slot: Some("from_flag".into()),
            ..Overrides::default()
        };
        let config = Config::load(Some(&path), &vars, &overrides).unwrap();
        assert_eq!(config.postgres.slot, "from_flag");
        assert_eq!(config.postgres.publication, "env_pub");
        assert_eq!(config.postgres.url, "postgres://common@h/d");
        assert_eq!(config.postgres.status_interval_ms, 2500);
        assert_eq!(config.postgres.tables, vec!["public.orders", "shop.items"]);
    }

    #[test]
    fn runtime_keys_come_from_the_environment_and_are_validated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.toml");
        std::fs::write(&path, "").unwrap();
        let load =
            |vars: &[(&str, &str)]| Config::load(Some(&path), &env(vars), &Overrides::default());
        let none = load(&[]).unwrap().runtime;
        assert_eq!(none.worker_threads, AUTO_WORKER_THREADS);
        assert_eq!(none.mmap_threshold_bytes, DEFAULT_MMAP_THRESHOLD_BYTES);
        let set = load(&[
            ("WALCAST_RUNTIME_WORKER_THREADS", "3"),
            ("WALCAST_RUNTIME_MMAP_THRESHOLD_BYTES", "8192"),
        ])
        .unwrap()
        .runtime;
        assert_eq!(set.worker_threads, 3);
        assert_eq!(set.mmap_threshold_bytes, 8192);
        for (var, value, field) in [
            (
                "WALCAST_RUNTIME_WORKER_THREADS",
                "5000",
                "runtime.worker_threads",
            ),
            (
                "WALCAST_RUNTIME_MMAP_THRESHOLD_BYTES",
                "999999999",
                "runtime.mmap_threshold_bytes",
            ),
        ] {
            let err = load(&[(var, value)]).unwrap_err();
            assert!(err.to_string().contains(field), "{err}");
        }
    }

    #[test]
    fn fanout_keys_come_from_the_environment_and_are_validated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.toml");
        std::fs::write(&path, "").unwrap();
        let vars = env(&[
            ("WALCAST_FANOUT_REPLAY_DIR", ".walcast/replay"),
            ("WALCAST_FANOUT_REPLAY_FSYNC", "true"),
            ("WALCAST_FANOUT_PING_INTERVAL_MS", "5000"),
            ("WALCAST_FANOUT_PING_TIMEOUT_MS", "4000"),
            ("WALCAST_FANOUT_REPLAY_STALL_TIMEOUT_MS", "250"),
            ("WALCAST_FANOUT_REPLAY_MAX_BYTES", "1048576"),
            ("WALCAST_FANOUT_SOCKET_BUFFER_BYTES", "2097152"),
            ("WALCAST_FANOUT_MAX_SUBSCRIPTIONS", "16"),
            ("WALCAST_FANOUT_MAX_PACKET_BYTES", "4096"),
            ("WALCAST_AUTH_JWT_LEEWAY_SECS", "5"),
        ]);
        let config = Config::load(Some(&path), &vars, &Overrides::default()).unwrap();
        let f = &config.fanout;
        assert_eq!(f.replay_dir, ".walcast/replay");
        assert!(f.replay_fsync);
        assert_eq!(f.replay_max_bytes, 1_048_576);
        assert_eq!(
            (
                f.socket_buffer_bytes,
                f.max_subscriptions,
                f.max_packet_bytes
            ),
            (2_097_152, 16, 4096)
        );
        assert_eq!(config.auth.jwt_leeway_secs, 5);
        assert_eq!(
            (
                f.ping_interval_ms,
                f.ping_timeout_ms,
                f.replay_stall_timeout_ms
            ),
            (5000, 4000, 250)
        );

        let mut config = Config::default();
        config.fanout.replay_fsync = true;
        config.fanout.ping_timeout_ms = 10;
        config.fanout.replay_stall_timeout_ms = 0;
        config.fanout.replay_max_bytes = 1000;
        config.fanout.socket_buffer_bytes = 1000;
        config.fanout.max_subscriptions = 0;
        config.fanout.max_key_bytes = 0;
        config.fanout.max_subscription_bytes = 0;
        config.fanout.max_packet_bytes = 64 << 20;
        config.auth.jwt_audience = "walcast".into();
        config.auth.jwt_leeway_secs = 3600;
        let fields: Vec<&str> = config.validate().iter().map(|p| p.field).collect();
        assert_eq!(
            fields,
            vec![
                "fanout.replay_max_bytes",
                "fanout.replay_fsync",
                "fanout.ping_timeout_ms",
                "fanout.replay_stall_timeout_ms",
                "fanout.socket_buffer_bytes",
                "fanout.max_subscriptions",
                "fanout.max_key_bytes",
                "fanout.max_subscription_bytes",
                "fanout.max_packet_bytes",
                "auth.jwt_audience",
                "auth.jwt_leeway_secs",
            ]
        );
    }

    #[test]
    fn replay_max_bytes_is_zero_for_no_cap_or_at_least_the_minimum() {
        let mut config = Config::default();
        for ok in [0, MIN_REPLAY_MAX_BYTES, DEFAULT_REPLAY_MAX_BYTES] {
            config.fanout.replay_max_bytes = ok;
            assert_eq!(config.validate(), vec![], "{ok}");
        }
        config.fanout.replay_max_bytes = MIN_REPLAY_MAX_BYTES - 1;
        let problems = config.validate();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].field, "fanout.replay_max_bytes");
    }

    #[test]
    fn tls_settings_come_from_the_environment_and_the_url_wins() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "not a certificate").unwrap();
        let path = dir.path().join("empty.toml");
        std::fs::write(&path, "").unwrap();
        let vars = env(&[
            ("WALCAST_POSTGRES_URL", "postgres://u@db.example.com/d"),
            ("WALCAST_POSTGRES_SSLMODE", "verify-ca"),
            ("WALCAST_POSTGRES_SSLROOTCERT", ca.to_str().unwrap()),
        ]);
        // The root certificate is read: a file without a PEM certificate
        // is reported against the setting and the file.
        let Err(ConfigError::Invalid(problems)) =
            Config::load(Some(&path), &vars, &Overrides::default())
        else {
            panic!("an unusable sslrootcert must be refused");
        };
        let text = format!("{problems:?}");
        assert!(
            text.contains(&format!("sslrootcert={} is not usable", ca.display())),
            "{text}"
        );

        let mut config = Config::default();
        config.postgres.sslmode = "verify-ca".into();
        config.postgres.sslrootcert = "/etc/ca.pem".into();
        config.postgres.url = "postgres://u@h/d?sslmode=disable".into();
        let tls = config.pg_config().tls().clone();
        assert_eq!(tls.mode, crate::pg::SslMode::Disable, "the URL wins");
        assert_eq!(tls.root_cert.as_deref(), Some(Path::new("/etc/ca.pem")));

        config.postgres.sslmode = "verify_full".into();
        config.postgres.sslcert = "/etc/client.pem".into();
        let fields: Vec<&str> = config.validate().iter().map(|p| p.field).collect();
        assert!(fields.contains(&"postgres.sslmode"), "{fields:?}");
        let problems = format!("{:?}", config.validate());
        assert!(
            problems.contains("sslcert is set but sslkey is not"),
            "{problems}"
        );
    }

    #[test]
    fn walcast_url_variable_wins_over_the_common_name() {
        let vars = env(&[
            ("DATABASE_URL", "postgres://common@h/d"),
            ("WALCAST_POSTGRES_URL", "postgres://specific@h/d"),
        ]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.toml");
        std::fs::write(&path, "").unwrap();
        let config = Config::load(Some(&path), &vars, &Overrides::default()).unwrap();
        assert_eq!(config.postgres.url, "postgres://specific@h/d");
    }

    #[test]
    fn unknown_environment_key_names_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.toml");
        std::fs::write(&path, "").unwrap();
        let vars = env(&[("WALCAST_POSTGRES_SLOTT", "x")]);
        let err = Config::load(Some(&path), &vars, &Overrides::default()).unwrap_err();
        let message = err.to_string();
        assert!(
            message.starts_with("environment variable WALCAST_POSTGRES_SLOTT: "),
            "{message}"
        );
        assert!(message.contains("not a walcast setting"), "{message}");
        assert!(message.contains("`slott`"), "{message}");
        assert!(!message.contains("empty.toml"), "{message}");

        // A bad value is the variable's too, not the file's.
        let vars = env(&[
            ("WALCAST_POSTGRES_SLOT", "fine"),
            ("WALCAST_POSTGRES_STATUS_INTERVAL_MS", "often"),
        ]);
        let err = Config::load(Some(&path), &vars, &Overrides::default()).unwrap_err();
        let message = err.to_string();
        assert!(
            message.starts_with("environment variable WALCAST_POSTGRES_STATUS_INTERVAL_MS: "),
            "{message}"
        );
        assert!(message.contains("often"), "{message}");

        // The file's own mistakes stay the file's, whatever the environment.
        std::fs::write(&path, "[postgres]\nslott = \"x\"\n").unwrap();
        let vars = env(&[("WALCAST_POSTGRES_SLOT", "fine")]);
        let err = Config::load(Some(&path), &vars, &Overrides::default()).unwrap_err();
        let message = err.to_string();
        assert!(message.starts_with("config file "), "{message}");
        assert!(
            message.contains("empty.toml") && message.contains("slott"),
            "{message}"
        );
    }

    #[test]
    fn a_pinned_source_names_a_stream_and_dead_letters_have_a_name() {
        let mut config = Config::default();
        config.rabbitmq.source = "7412/shop/walcast".into();
        assert_eq!(config.validate(), vec![]);
        config.rabbitmq.source = "shop".into();
        config.rabbitmq.dead_letter = String::new();
        let fields: Vec<&str> = config.validate().iter().map(|p| p.field).collect();
        assert_eq!(fields, vec!["rabbitmq.source", "rabbitmq.dead_letter"]);
    }

    #[test]
    fn validate_reports_every_problem_with_its_field() {
        let mut config = Config::default();
        config.postgres.slot = "Bad-Slot".into();
        config.postgres.tables = vec!["a.b.c".into()];
        config.postgres.status_interval_ms = 1;
        config.rabbitmq.url = "http://x".into();
        config.http.listen = "nowhere".into();
        config.log.format = "xml".into();
        let fields: Vec<&str> = config.validate().iter().map(|p| p.field).collect();
        assert_eq!(
            fields,
            vec![
                "postgres.slot",
                "postgres.tables",
                "postgres.status_interval_ms",
                "rabbitmq.url",
                "http.listen",
                "log.format"
            ]
        );
    }

    #[test]
    fn queue_expiry_is_off_or_at_least_ten_seconds() {
        let mut config = Config::default();
        assert_eq!(config.rabbitmq.queue_expires_ms, 1_800_000);
        for ok in [0, 10_000, u64::from(u32::MAX)] {
            config.rabbitmq.queue_expires_ms = ok;
            assert!(config.validate().is_empty(), "{ok} is valid");
        }
        for bad in [1, 9_999, u64::from(u32::MAX) + 1] {
            config.rabbitmq.queue_expires_ms = bad;
            let problems = config.validate();
            assert_eq!(problems.len(), 1, "{bad}: {problems:?}");
            assert_eq!(problems[0].field, "rabbitmq.queue_expires_ms");
        }
    }

    #[test]
    fn event_and_window_byte_limits_are_bounded() {
        let mut config = Config::default();
        assert_eq!(config.rabbitmq.max_event_bytes, 16 * 1024 * 1024);
        assert!(config.validate().is_empty());
        for (max_event_bytes, window_bytes, field) in [
            (
                1023,
                DEFAULT_PUBLISH_WINDOW_BYTES,
                "rabbitmq.max_event_bytes",
            ),
            (
                RABBITMQ_DEFAULT_MAX_MESSAGE_SIZE + 1,
                DEFAULT_PUBLISH_WINDOW_BYTES,
                "rabbitmq.max_event_bytes",
            ),
            (
                DEFAULT_MAX_EVENT_BYTES,
                1000,
                "rabbitmq.publish_window_bytes",
            ),
        ] {
            config.rabbitmq.max_event_bytes = max_event_bytes;
            config.rabbitmq.publish_window_bytes = window_bytes;
            let problems = config.validate();
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert_eq!(problems[0].field, field);
        }
        config.rabbitmq.max_event_bytes = RABBITMQ_DEFAULT_MAX_MESSAGE_SIZE;
        config.rabbitmq.publish_window_bytes = 65_536;
        assert!(config.validate().is_empty());
    }

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            redact_url("postgres://user:s3cret@host:5432/db"),
            "postgres://user:***@host:5432/db"
        );
        assert_eq!(
            redact_url("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            redact_url("postgres://host/db?user=u&password=s3cret"),
            "postgres://host/db?user=u&password=***"
        );
        assert_eq!(redact_url("postgres://host/db"), "postgres://host/db");
        let mut config = Config::default();
        config.postgres.url = "postgres://u:s3cret@h/d".into();
        config.rabbitmq.url = "amqp://u:s3cret@h/".into();
        assert!(!format!("{config:?}").contains("s3cret"));
        config.rabbitmq.url = "http://u:s3cret@h/".into();
        let problems = config.validate();
        assert!(!format!("{problems:?}").contains("s3cret"));
    }

    #[test]
    fn auth_settings_come_from_the_environment_and_never_show() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.toml");
        std::fs::write(&path, "").unwrap();
        let vars = env(&[
            ("WALCAST_AUTH_ENABLED", "true"),
            (
                "WALCAST_AUTH_TOKENS",
                "tok-aaaaaaaaaaaaaaaa, tok-bbbbbbbbbbbbbbbb",
            ),
            (
                "WALCAST_AUTH_JWT_SECRET",
                "jwt-secret-jwt-secret-jwt-secret-0123",
            ),
            ("WALCAST_HTTP_BODY_LIMIT_BYTES", "2048"),
            ("WALCAST_HTTP_POOL_SIZE", "4"),
        ]);
        let config = Config::load(Some(&path), &vars, &Overrides::default()).unwrap();
        assert!(config.auth.enabled);
        assert_eq!(
            config.auth.tokens,
            vec!["tok-aaaaaaaaaaaaaaaa", "tok-bbbbbbbbbbbbbbbb"]
        );
        assert_eq!(config.http.body_limit_bytes, 2048);
        assert_eq!(config.http.pool_size, 4);
        let debug = format!("{config:?}");
        assert!(!debug.contains("tok-a"), "{debug}");
        assert!(!debug.contains("jwt-secret"), "{debug}");
        assert!(debug.contains("[2 redacted]"), "{debug}");
    }

    #[test]
    fn auth_validation_names_the_field_without_the_secret() {
        let mut config = Config::default();
        config.auth.enabled = true;
        assert_eq!(
            config
                .validate()
                .iter()
                .map(|p| p.field)
                .collect::<Vec<_>>(),
            vec!["auth.enabled"]
        );
        config.auth.tokens = vec!["short-secret".into(), "has space in it 0123".into()];
        config.auth.jwt_secret = "too-short-secret".into();
        let problems = config.validate();
        let fields: Vec<&str> = problems.iter().map(|p| p.field).collect();
        assert_eq!(
            fields,
            vec!["auth.tokens", "auth.tokens", "auth.jwt_secret"]
        );
        let text = format!("{problems:?}");
        assert!(!text.contains("short-secret") && !text.contains("too-short"));
    }

    #[test]
    fn http_limits_are_checked() {
        let mut config = Config::default();
        config.http.body_limit_bytes = 10;
        config.http.pool_size = 0;
        let fields: Vec<&str> = config.validate().iter().map(|p| p.field).collect();
        assert_eq!(fields, vec!["http.body_limit_bytes", "http.pool_size"]);
    }

    #[test]
    fn table_names_default_to_public() {
        assert_eq!(
            TableName::parse("orders").unwrap(),
            TableName {
                schema: "public".into(),
                table: "orders".into()
            }
        );
        assert_eq!(
            TableName::parse("shop.Items").unwrap().quoted(),
            "\"shop\".\"Items\""
        );
        assert!(TableName::parse("").is_err());
    }

    #[test]
    fn rabbitmq_url_lists_tls_files_and_queue_types_are_validated() {
        assert_eq!(
            redact_url("amqp://u:s3cret@a:5681/%2f,amqps://u:s3cret@b:5671/%2f"),
            "amqp://u:***@a:5681/%2f,amqps://u:***@b:5671/%2f"
        );
        let mut config = Config::default();
        config.rabbitmq.url = "amqp://u:s3cret@a/%2f, http://u:s3cret@b/".into();
        let problems = config.validate();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].field, "rabbitmq.url");
        assert!(!format!("{problems:?}").contains("s3cret"));

        let mut config = Config::default();
        config.rabbitmq.tls_ca_file = "/ca.pem".into();
        let problems = config.validate();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].message.contains("use amqps://"), "{problems:?}");
        config.rabbitmq.url = "amqps://u:p@h:5671/%2f".into();
        assert!(config.validate().is_empty());
        config.rabbitmq.tls_cert_file = "/client.pem".into();
        let problems = config.validate();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].field, "rabbitmq.tls_key_file");

        let mut table: toml::Table = toml::from_str("[rabbitmq]\nqueue_type = \"quorum\"").unwrap();
        assert_eq!(
            deserialize(&table).unwrap().rabbitmq.queue_type,
            QueueType::Quorum
        );
        table = toml::from_str("[rabbitmq]\nqueue_type = \"stream\"").unwrap();
        assert!(deserialize(&table).unwrap_err().contains("classic"));
    }
}
