//! `[auth]`: who may write through the API and connect over Socket.IO:
//! static bearer tokens, an HS256 JWT secret and the JWT rules.
//!
//! It checks lengths and consistency and never puts a secret in a message
//! or in `Debug`; checking a presented token is `api::auth`'s job.

use std::fmt;
use std::ops::RangeInclusive;

use serde::Deserialize;

use super::{check_ranges, Problem, Redacted};

#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Off by default. When on, API writes (POST, PUT, PATCH, DELETE) need
    /// `Authorization: Bearer <token>`; reads stay open.
    pub enabled: bool,
    /// Static bearer tokens, each at least 16 characters.
    pub tokens: Vec<Redacted<String>>,
    /// Shared secret for HS256 JWTs (at least 32 bytes); empty: no JWTs.
    pub jwt_secret: Redacted<String>,
    /// With auth off, `walcast run` refuses to listen on a non-loopback
    /// address unless this is true: anyone who reaches it may then write
    /// and subscribe.
    pub allow_anonymous: bool,
    /// When set, a JWT's `aud` must name it.
    pub jwt_audience: String,
    /// When set, a JWT's `iss` must equal it.
    pub jwt_issuer: String,
    /// Clock skew tolerated for a JWT's `exp` and `nbf`, in seconds; a
    /// socket admitted with a JWT is disconnected this long after `exp`.
    pub jwt_leeway_secs: u64,
}

/// The leeway `auth.jwt_leeway_secs` has by default.
pub const DEFAULT_JWT_LEEWAY_SECS: u64 = 60;
/// JWT clock skew: none to ten minutes.
const JWT_LEEWAY_SECS: RangeInclusive<u64> = 0..=600;

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            enabled: false,
            tokens: Vec::new(),
            jwt_secret: Redacted::default(),
            jwt_audience: String::new(),
            jwt_issuer: String::new(),
            jwt_leeway_secs: DEFAULT_JWT_LEEWAY_SECS,
            allow_anonymous: false,
        }
    }
}

/// Shortest static token and JWT secret accepted. 32 bytes for HS256 is
/// RFC 7518's minimum key size (3.2); 16 characters keeps guessable
/// tokens out.
pub const MIN_TOKEN_LEN: usize = 16;
pub const MIN_JWT_SECRET_LEN: usize = 32;

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The secrets redact themselves; the tokens show only how many.
        f.debug_struct("AuthConfig")
            .field("enabled", &self.enabled)
            .field("tokens", &format_args!("[{} redacted]", self.tokens.len()))
            .field("jwt_secret", &self.jwt_secret)
            .field("allow_anonymous", &self.allow_anonymous)
            .field("jwt_audience", &self.jwt_audience)
            .field("jwt_issuer", &self.jwt_issuer)
            .field("jwt_leeway_secs", &self.jwt_leeway_secs)
            .finish()
    }
}

impl AuthConfig {
    /// Adds every problem of `[auth]` to `problems`.
    pub(super) fn validate(&self, problems: &mut Vec<Problem>) {
        if self.enabled && self.tokens.is_empty() && self.jwt_secret.is_empty() {
            problems.push(Problem::new(
                "auth.enabled",
                "is true but neither auth.tokens nor auth.jwt_secret is set; nobody could write",
            ));
        }
        // Token values never appear in these messages, only their position.
        for (index, token) in self.tokens.iter().enumerate() {
            let token = token.expose();
            if token.chars().count() < MIN_TOKEN_LEN {
                problems.push(Problem::new(
                    "auth.tokens",
                    format!(
                        "token #{} is shorter than {MIN_TOKEN_LEN} characters",
                        index + 1
                    ),
                ));
            }
            if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
                problems.push(Problem::new(
                    "auth.tokens",
                    format!(
                        "token #{} contains whitespace or control characters",
                        index + 1
                    ),
                ));
            }
        }
        for (field, value) in [
            ("auth.jwt_audience", &self.jwt_audience),
            ("auth.jwt_issuer", &self.jwt_issuer),
        ] {
            if !value.is_empty() && self.jwt_secret.is_empty() {
                problems.push(Problem::new(
                    field,
                    "is set but auth.jwt_secret is empty; there are no JWTs to check it on",
                ));
            }
        }
        check_ranges(
            problems,
            &[(
                "auth.jwt_leeway_secs",
                self.jwt_leeway_secs,
                JWT_LEEWAY_SECS,
            )],
        );
        if !self.jwt_secret.is_empty() && self.jwt_secret.expose().len() < MIN_JWT_SECRET_LEN {
            problems.push(Problem::new(
                "auth.jwt_secret",
                format!(
                    "is shorter than {MIN_JWT_SECRET_LEN} bytes; HS256 needs a 256-bit key, e.g. `openssl rand -base64 48`"
                ),
            ));
        }
    }
}
