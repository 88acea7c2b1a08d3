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
//! carry `exp`, pass `nbf` when present, and name `auth.jwt_audience` and
//! `auth.jwt_issuer` when those are set. [`Authenticator::verify`] returns
//! until when a JWT stays valid, so the Socket.IO side can disconnect a
//! socket when its token expires. Tokens and the secret are never
//! logged and never in `Debug` output. There are no roles or scopes: a valid
//! token may do every write.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

use super::ApiError;
use crate::config::{AuthConfig, DEFAULT_JWT_LEEWAY_SECS};

/// Until when a verified token stays valid: `Some(exp + leeway)` for a JWT,
/// `None` for a static token (valid until the configuration changes).
pub type ValidUntil = Option<SystemTime>;

/// The claims walcast reads itself; the rest are checked by `jsonwebtoken`.
#[derive(serde::Deserialize)]
struct Claims {
    exp: u64,
}

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

/// What a JWT must carry beyond a valid signature and `exp`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtRules {
    /// `aud` must name this one (unchecked when `None`).
    pub audience: Option<String>,
    /// `iss` must equal this one (unchecked when `None`).
    pub issuer: Option<String>,
    /// Clock skew tolerated for `exp` and `nbf`, in seconds.
    pub leeway_secs: u64,
}

impl Default for JwtRules {
    fn default() -> Self {
        JwtRules {
            audience: None,
            issuer: None,
            leeway_secs: DEFAULT_JWT_LEEWAY_SECS,
        }
    }
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
        Authenticator::with_rules(tokens, jwt_secret, &JwtRules::default())
    }

    /// Like [`Authenticator::new`], with audience, issuer and leeway rules
    /// for JWTs.
    pub fn with_rules(tokens: &[String], jwt_secret: &str, rules: &JwtRules) -> Authenticator {
        let token_digests = tokens.iter().map(|t| digest(t)).collect();
        let jwt = (!jwt_secret.is_empty()).then(|| {
            let mut validation = Validation::new(Algorithm::HS256);
            validation.leeway = rules.leeway_secs;
            validation.validate_exp = true;
            validation.validate_nbf = true;
            let mut required = vec!["exp"];
            match &rules.audience {
                Some(audience) => {
                    validation.set_audience(&[audience]);
                    required.push("aud");
                }
                // No audience is configured, so none is checked; a token
                // with an `aud` claim is still accepted.
                None => validation.validate_aud = false,
            }
            if let Some(issuer) = &rules.issuer {
                validation.set_issuer(&[issuer]);
                required.push("iss");
            }
            validation.set_required_spec_claims(&required);
            (DecodingKey::from_secret(jwt_secret.as_bytes()), validation)
        });
        Authenticator {
            inner: Arc::new(Inner { token_digests, jwt }),
        }
    }

    /// The authenticator `auth` asks for; `None` when auth is off.
    pub fn from_config(auth: &AuthConfig) -> Option<Authenticator> {
        let set = |value: &String| (!value.is_empty()).then(|| value.clone());
        let rules = JwtRules {
            audience: set(&auth.jwt_audience),
            issuer: set(&auth.jwt_issuer),
            leeway_secs: auth.jwt_leeway_secs,
        };
        let tokens: Vec<String> = auth.tokens.iter().map(|t| t.expose().clone()).collect();
        auth.enabled
            .then(|| Authenticator::with_rules(&tokens, auth.jwt_secret.expose(), &rules))
    }

    /// Accepts `token` if it is one of the static tokens or a valid JWT;
    /// says until when it stays valid.
    pub fn verify(&self, token: &str) -> Result<ValidUntil, AuthError> {
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
            return Ok(None);
        }
        let Some((key, validation)) = &self.inner.jwt else {
            return Err(AuthError::Invalid);
        };
        match jsonwebtoken::decode::<Claims>(token, key, validation) {
            Ok(data) => Ok(Some(
                UNIX_EPOCH + Duration::from_secs(data.claims.exp.saturating_add(validation.leeway)),
            )),
            Err(e) if matches!(e.kind(), ErrorKind::ExpiredSignature) => Err(AuthError::Expired),
            Err(_) => Err(AuthError::Invalid),
        }
    }

    /// Checks an `Authorization` header value: `Bearer <token>`, the
    /// scheme in any case (RFC 7235).
    pub fn verify_header(&self, value: Option<&HeaderValue>) -> Result<ValidUntil, AuthError> {
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
        Ok(_) => next.run(request).await,
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
        assert_eq!(auth.verify(TOKEN), Ok(None));
        assert_eq!(auth.verify("another-token-abcdefgh"), Ok(None));
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
        let until = UNIX_EPOCH + Duration::from_secs(now() + 600 + DEFAULT_JWT_LEEWAY_SECS);
        let got = auth.verify(&valid).unwrap().expect("a JWT expires");
        // `now()` may tick between the two reads.
        assert!(got <= until && got + Duration::from_secs(2) >= until);
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
        assert!(auth.verify(&with_audience).is_ok());
    }

    #[test]
    fn audience_and_issuer_are_checked_when_set() {
        let rules = JwtRules {
            audience: Some("walcast".into()),
            issuer: Some("https://id.example".into()),
            leeway_secs: 0,
        };
        let auth = Authenticator::with_rules(&[], SECRET, &rules);
        let exp = now() + 600;
        let good = jwt(
            SECRET,
            json!({"exp": exp, "aud": "walcast", "iss": "https://id.example"}),
        );
        assert_eq!(
            auth.verify(&good),
            Ok(Some(UNIX_EPOCH + Duration::from_secs(exp)))
        );
        let among_several = jwt(
            SECRET,
            json!({"exp": exp, "aud": ["other", "walcast"], "iss": "https://id.example"}),
        );
        assert!(auth.verify(&among_several).is_ok());
        for claims in [
            json!({"exp": exp, "aud": "other", "iss": "https://id.example"}),
            json!({"exp": exp, "iss": "https://id.example"}),
            json!({"exp": exp, "aud": "walcast", "iss": "https://evil.example"}),
            json!({"exp": exp, "aud": "walcast"}),
        ] {
            assert_eq!(
                auth.verify(&jwt(SECRET, claims.clone())),
                Err(AuthError::Invalid),
                "{claims}"
            );
        }
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
            Ok(None)
        );
        assert_eq!(
            auth.verify_header(Some(&header(&format!("bearer  {TOKEN}")))),
            Ok(None)
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
