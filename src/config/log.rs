//! `[log]`: the tracing filter and the output format.
//!
//! It checks that the filter parses; installing the subscriber is `main`'s job.

use serde::Deserialize;

use super::Problem;

pub const DEFAULT_LEVEL: &str = "info";
pub const DEFAULT_FORMAT: &str = "text";

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `error`, `warn`, `info`, `debug`, `trace`, or a tracing filter directive.
    pub level: String,
    /// `text` or `json`.
    pub format: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: DEFAULT_LEVEL.into(),
            format: DEFAULT_FORMAT.into(),
        }
    }
}

impl LogConfig {
    /// Adds every problem of `[log]` to `problems`.
    pub(super) fn validate(&self, problems: &mut Vec<Problem>) {
        if tracing_subscriber::EnvFilter::try_new(&self.level).is_err() {
            problems.push(Problem::new(
                "log.level",
                format!(
                    "{:?} is not a level (error, warn, info, debug, trace) or filter directive",
                    self.level
                ),
            ));
        }
        if !matches!(self.format.as_str(), "text" | "json") {
            problems.push(Problem::new(
                "log.format",
                format!("{:?} is not one of: text, json", self.format),
            ));
        }
    }
}
