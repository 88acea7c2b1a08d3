//! [`Redacted`]: a setting that is a secret (a bearer token, the JWT
//! secret). Its `Debug` and `Display` print `***` (or `(unset)` when it is
//! empty), so printing a config, a section or a problem never shows it;
//! code that needs the value asks for it with [`Redacted::expose`].
//!
//! URLs are not wrapped: their password is hidden by
//! [`redact_url`](super::redact_url), which keeps the rest readable.

use std::fmt;

use serde::Deserialize;

/// A secret setting, read from config like the value it wraps.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Redacted<T>(T);

impl<T> Redacted<T> {
    pub fn new(value: T) -> Redacted<T> {
        Redacted(value)
    }

    /// The secret itself; every use is a place it could leak, so keep it
    /// out of logs and messages.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl Redacted<String> {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Redacted<String> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Redacted<String> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "(unset)" } else { "***" })
    }
}

impl From<&str> for Redacted<String> {
    fn from(value: &str) -> Self {
        Redacted(value.to_owned())
    }
}

impl From<String> for Redacted<String> {
    fn from(value: String) -> Self {
        Redacted(value)
    }
}

/// So a test can compare settings with plain strings.
impl PartialEq<&str> for Redacted<String> {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints_the_secret() {
        let secret = Redacted::from("hunter2-hunter2-hunter2");
        assert_eq!(format!("{secret:?}"), "***");
        assert_eq!(format!("{secret}"), "***");
        assert_eq!(format!("{:?}", vec![secret.clone()]), "[***]");
        assert_eq!(format!("{:?}", Redacted::<String>::default()), "(unset)");
        assert_eq!(secret.expose(), "hunter2-hunter2-hunter2");
    }
}
