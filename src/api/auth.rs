//! Bearer-token authentication: static tokens and HS256 JWTs.
//!
//! [`Authenticator`] checks one token; the HTTP API uses it for writes
//! (POST, PUT, PATCH, DELETE) when `auth.enabled` is on, and the Socket.IO
//! handshake reuses it for `auth.token`. Reads stay open: what the API
//! shows is what every connected client receives through the change
//! stream anyway.
//!
//! Static tokens are compared in constant time (on their SHA-256 digests,
//! so neither content nor length leaks through timing). JWTs must be HS256,
//! carry `exp`, and pass `nbf` when present. Tokens and the secret are never
//! logged and never in `Debug` output. There are no roles or scopes: a valid
//! token may do every write.

use std::fmt;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

use super::ApiError;
use crate::config::AuthConfig;

/// Clock skew tolerated for `exp` and `nbf`, in seconds.
const JWT_LEEWAY_SECS: u64 = 60;

/// Why a token was refused. The variants say as much as a client may know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token; send Authorization: Bearer <token>")]
    Missing,
    #[error("the Authorization header is not of the form \"Bearer <token>\"")]
    Malformed,
    #[error("the token has expired")]
    Expired,
    #[error("invalid token")]
    Invalid,
}

/// Checks bearer tokens against the configured static tokens and JWT
/// secret. Cheap to clone.
#[derive(Clone)]
pub struct Authenticator {
    inner: Arc<Inner>,
}

struct Inner {
    token_digests: Vec<[u8; 32]>,
    jwt: Option<(DecodingKey, Validation)>,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("static_tokens", &self.inner.token_digests.len())
            .field("jwt", &self.inner.jwt.is_some())
            .finish()
    }
}

impl Authenticator {
    /// An authenticator accepting `tokens` and, unless `jwt_secret` is
    /// empty, HS256 JWTs signed with its UTF-8 bytes.
    pub fn new(tokens: &[String], jwt_secret: &str) -> Authenticator {
        let token_digests = tokens.iter().map(|t| digest(t)).collect();
        let jwt = (!jwt_secret.is_empty()).then(|| {
            let mut validation = Validation::new(Algorithm::HS256);
            validation.leeway = JWT_LEEWAY_SECS;
            validation.validate_exp = true;
            validation.validate_nbf = true;
            // No audience is configured, so none is checked; a token with
            // an `aud` claim is still accepted.
            validation.validate_aud = false;
            validation.set_required_spec_claims(&["exp"]);
            (DecodingKey::from_secret(jwt_secret.as_bytes()), validation)
        });
        Authenticator {
            inner: Arc::new(Inner { token_digests, jwt }),
        }
    }

    /// The authenticator `auth` asks for; `None` when auth is off.
    pub fn from_config(auth: &AuthConfig) -> Option<Authenticator> {
        auth.enabled
            .then(|| Authenticator::new(&auth.tokens, &auth.jwt_secret))
    }

    /// Accepts `token` if it is one of the static tokens or a valid JWT.
    pub fn verify(&self, token: &str) -> Result<(), AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let presented = digest(token);
        // Every configured token is compared, match or not.
        let matched = self
            .inner
            .token_digests
            .iter()
            .fold(Choice::from(0), |found, known| {
                found | known.as_slice().ct_eq(presented.as_slice())
            });
        if bool::from(matched) {
            return Ok(());
        }
        let Some((key, validation)) = &self.inner.jwt else {
            return Err(AuthError::Invalid);
        };
        match jsonwebtoken::decode::<serde::de::IgnoredAny>(token, key, validation) {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.kind(), ErrorKind::ExpiredSignature) => Err(AuthError::Expired),
            Err(_) => Err(AuthError::Invalid),
        }
    }

    /// Checks an `Authorization` header value: `Bearer <token>`, the
    /// scheme in any case (RFC 7235).
    pub fn verify_header(&self, value: Option<&HeaderValue>) -> Result<(), AuthError> {
        let value = value.ok_or(AuthError::Missing)?;
        let value = value.to_str().map_err(|_| AuthError::Malformed)?;
        let (scheme, token) = value.trim().split_once(' ').ok_or(AuthError::Malformed)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::Malformed);
        }
        let token = token.trim_start();
        if token.is_empty() {
            return Err(AuthError::Malformed);
        }
        self.verify(token)
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Methods that never change anything, and so need no token.
fn is_read(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// Middleware for the write routes: with auth on, a write needs a valid
/// bearer token, else 401 with `WWW-Authenticate: Bearer`.
pub async fn require_bearer_token_for_writes(
    State(auth): State<Option<Authenticator>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(auth) = auth else {
        return next.run(request).await;
    };
    if is_read(request.method()) {
        return next.run(request).await;
    }
    let header = request.headers().get(header::AUTHORIZATION);
    match auth.verify_header(header) {
        Ok(()) => next.run(request).await,
        Err(reason) => {
            tracing::info!(%reason, "refused a write without a valid token");
            ApiError::Unauthorized {
                message: reason.to_string(),
                token_given: header.is_some(),
            }
            .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    const TOKEN: &str = "static-token-0123456789";
    const SECRET: &str = "jwt-secret-0123456789-0123456789-abcdef";

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn jwt(secret: &str, claims: serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn authenticator() -> Authenticator {
        Authenticator::new(&["another-token-abcdefgh".into(), TOKEN.into()], SECRET)
    }

    #[test]
    fn static_tokens() {
        let auth = authenticator();
        assert_eq!(auth.verify(TOKEN), Ok(()));
        assert_eq!(auth.verify("another-token-abcdefgh"), Ok(()));
        assert_eq!(
            auth.verify("static-token-012345678"),
            Err(AuthError::Invalid)
        );
        assert_eq!(auth.verify(&format!("{TOKEN}x")), Err(AuthError::Invalid));
        assert_eq!(auth.verify(""), Err(AuthError::Missing));
    }

    #[test]
    fn jwts() {
        let auth = authenticator();
        let valid = jwt(SECRET, json!({"sub": "dashboard", "exp": now() + 600}));
        assert_eq!(auth.verify(&valid), Ok(()));
        let expired = jwt(SECRET, json!({"sub": "dashboard", "exp": now() - 3600}));
        assert_eq!(auth.verify(&expired), Err(AuthError::Expired));
        let no_exp = jwt(SECRET, json!({"sub": "dashboard"}));
        assert_eq!(auth.verify(&no_exp), Err(AuthError::Invalid));
        let wrong_secret = jwt(
            "some-other-secret-0123456789-0123456789",
            json!({"exp": now() + 600}),
        );
        assert_eq!(auth.verify(&wrong_secret), Err(AuthError::Invalid));
        let not_yet = jwt(SECRET, json!({"exp": now() + 7200, "nbf": now() + 3600}));
        assert_eq!(auth.verify(&not_yet), Err(AuthError::Invalid));
        // A string `nbf` must not be mistaken for an absent one.
        let string_nbf = jwt(
            SECRET,
            json!({"exp": now() + 7200, "nbf": (now() + 3600).to_string()}),
        );
        assert_eq!(auth.verify(&string_nbf), Err(AuthError::Invalid));
        let with_audience = jwt(SECRET, json!({"exp": now() + 600, "aud": "walcast"}));
        assert_eq!(auth.verify(&with_audience), Ok(()));
    }

    #[test]
    fn unsigned_and_other_algorithms_are_refused() {
        let auth = authenticator();
        let b64 = |v: serde_json::Value| {
            use base64::Engine;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        let claims = b64(json!({"exp": now() + 600}));
        let none = format!("{}.{claims}.", b64(json!({"alg": "none", "typ": "JWT"})));
        assert_eq!(auth.verify(&none), Err(AuthError::Invalid));
        let hs512 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &json!({"exp": now() + 600}),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        assert_eq!(auth.verify(&hs512), Err(AuthError::Invalid));
    }

    #[test]
    fn without_a_secret_jwts_are_refused() {
        let auth = Authenticator::new(&[TOKEN.into()], "");
        let valid = jwt(SECRET, json!({"exp": now() + 600}));
        assert_eq!(auth.verify(&valid), Err(AuthError::Invalid));
    }

    #[test]
    fn authorization_headers() {
        let auth = authenticator();
        let header = |v: &str| HeaderValue::from_str(v).unwrap();
        assert_eq!(
            auth.verify_header(Some(&header(&format!("Bearer {TOKEN}")))),
            Ok(())
        );
        assert_eq!(
            auth.verify_header(Some(&header(&format!("bearer  {TOKEN}")))),
            Ok(())
        );
        assert_eq!(auth.verify_header(None), Err(AuthError::Missing));
        assert_eq!(
            auth.verify_header(Some(&header(&format!("Basic {TOKEN}")))),
            Err(AuthError::Malformed)
        );
        assert_eq!(
            auth.verify_header(Some(&header(TOKEN))),
            Err(AuthError::Malformed)
        );
        assert_eq!(
            auth.verify_header(Some(&header("Bearer "))),
            Err(AuthError::Malformed)
        );
    }

    #[test]
    fn debug_shows_no_secrets() {
        let text = format!("{:?}", authenticator());
        assert!(
            !text.contains("static-token") && !text.contains("jwt-secret"),
            "{text}"
        );
        assert_eq!(text, "Authenticator { static_tokens: 2, jwt: true }");
    }

    #[test]
    fn config_switches_it_on() {
        let mut config = AuthConfig {
            tokens: vec![TOKEN.into()],
            ..AuthConfig::default()
        };
        assert!(Authenticator::from_config(&config).is_none());
        config.enabled = true;
        assert!(Authenticator::from_config(&config).is_some());
    }
}
