//! The API's one error type and its HTTP form.
//!
//! Every non-2xx response of the API, including axum's own rejections (bad
//! path, bad query, body too large) and unknown routes, goes through
//! [`ApiError`]'s `IntoResponse` and has the body
//! `{"error": {"code": "…", "message": "…", "field": "…"}}` (`field` only
//! when one field is at fault).
//!
//! This module decides status codes and public messages; it does not log
//! request outcomes (the request span in `stats` does). What it does log is
//! the internal cause of a 5xx, which is never sent to the client.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use tokio_postgres::error::SqlState;
use utoipa::ToSchema;

use super::orders::field_of_constraint;
use crate::catalog::describe;

/// The body of every error response.
#[derive(Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong, for a program (`code`) and for a person (`message`).
#[derive(Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `missing_field`, `not_found`.
    #[schema(example = "missing_field")]
    pub code: String,
    /// Human-readable explanation; never contains SQL or server internals.
    #[schema(example = "customer_name is required")]
    pub message: String,
    /// The request field at fault (body field, query parameter or path
    /// parameter), when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, example = "customer_name")]
    pub field: Option<String>,
}

/// An API failure, classified by what the client should do about it.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request could not be read (malformed JSON, bad query
    /// parameter, non-numeric id).
    #[error("{message}")]
    BadRequest {
        code: &'static str,
        message: String,
        field: Option<String>,
    },
    /// 401: a write without a valid bearer token while auth is on.
    #[error("{message}")]
    Unauthorized {
        message: String,
        /// Whether a token was sent (RFC 6750 then says `invalid_token`).
        token_given: bool,
    },
    /// 404: no such order, or no such route.
    #[error("{message}")]
    NotFound { message: String },
    /// 405: the route exists but not with this method.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 409: the change conflicts with the current state (unique key).
    #[error("{message}")]
    Conflict { message: String },
    /// 413: body larger than `http.body_limit_bytes`.
    #[error("request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// 415: the body is not declared as JSON.
    #[error("{message}")]
    UnsupportedMediaType { message: String },
    /// 422: the JSON is well-formed but its content is not acceptable.
    #[error("{message}")]
    Validation {
        code: &'static str,
        message: String,
        field: Option<String>,
    },
    /// 503: Postgres cannot be reached or is overloaded; retrying may help.
    /// `internal` is logged, never sent.
    #[error("service unavailable: {internal}")]
    Unavailable { internal: String },
    /// 500: a bug or an unexpected server state. `internal` is logged,
    /// never sent.
    #[error("internal error: {internal}")]
    Internal { internal: String },
}

impl ApiError {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::BadRequest {
            code,
            message: message.into(),
            field: None,
        }
    }

    pub fn bad_field(code: &'static str, field: &str, message: impl Into<String>) -> ApiError {
        ApiError::BadRequest {
            code,
            message: message.into(),
            field: Some(field.to_owned()),
        }
    }

    pub fn invalid(code: &'static str, field: &str, message: impl Into<String>) -> ApiError {
        ApiError::Validation {
            code,
            message: message.into(),
            field: Some(field.to_owned()),
        }
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::NotFound {
            message: message.into(),
        }
    }

    pub fn internal(internal: impl Into<String>) -> ApiError {
        ApiError::Internal {
            internal: internal.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Validation { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The body sent to the client: public fields only.
    pub fn body(&self) -> ErrorBody {
        let (code, message, field) = match self {
            ApiError::BadRequest {
                code,
                message,
                field,
            }
            | ApiError::Validation {
                code,
                message,
                field,
            } => (*code, message.clone(), field.clone()),
            ApiError::Unauthorized { message, .. } => ("unauthorized", message.clone(), None),
            ApiError::NotFound { message } => ("not_found", message.clone(), None),
            ApiError::MethodNotAllowed => (
                "method_not_allowed",
                "this route does not support this method".to_owned(),
                None,
            ),
            ApiError::Conflict { message } => ("conflict", message.clone(), None),
            ApiError::PayloadTooLarge { .. } => ("payload_too_large", self.to_string(), None),
            ApiError::UnsupportedMediaType { message } => {
                ("unsupported_media_type", message.clone(), None)
            }
            ApiError::Unavailable { .. } => (
                "unavailable",
                "the database is unavailable; retry shortly".to_owned(),
                None,
            ),
            ApiError::Internal { .. } => ("internal", "internal server error".to_owned(), None),
        };
        ErrorBody {
            error: ErrorDetail {
                code: code.to_owned(),
                message,
                field,
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            ApiError::Internal { internal } => tracing::error!(error = %internal, "internal error"),
            ApiError::Unavailable { internal } => {
                tracing::warn!(error = %internal, "database unavailable")
            }
            _ => {}
        }
        let status = self.status();
        let mut response = (status, Json(self.body())).into_response();
        let headers = response.headers_mut();
        match &self {
            ApiError::Unauthorized { token_given, .. } => {
                let challenge = if *token_given {
                    "Bearer error=\"invalid_token\""
                } else {
                    "Bearer"
                };
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(challenge),
                );
            }
            ApiError::Unavailable { .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        response
    }
}

/// Non-numeric or out-of-range `{id}` and other path problems.
impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> ApiError {
        match rejection {
            PathRejection::FailedToDeserializePathParams(e) => {
                ApiError::bad_request("invalid_path", e.body_text())
            }
            // MissingPathParams only happens when a handler is mounted on a
            // route without the parameter: a bug, not the client's fault.
            other => ApiError::internal(other.body_text()),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> ApiError {
        ApiError::bad_request("invalid_query", rejection.body_text())
    }
}

/// Errors from the API's pool and queries.
impl From<deadpool_postgres::PoolError> for ApiError {
    fn from(error: deadpool_postgres::PoolError) -> ApiError {
        use deadpool_postgres::PoolError;
        match error {
            PoolError::Backend(e) => ApiError::from(e),
            PoolError::Timeout(kind) => ApiError::Unavailable {
                internal: format!("timed out waiting for a pooled connection ({kind:?})"),
            },
            other => ApiError::Unavailable {
                internal: other.to_string(),
            },
        }
    }
}

/// Maps a Postgres error to what the client may know about it. Constraint
/// and column names become the `field`; SQL text and server messages stay
/// in the log.
impl From<tokio_postgres::Error> for ApiError {
    fn from(error: tokio_postgres::Error) -> ApiError {
        let Some(db) = error.as_db_error() else {
            return if is_connection_trouble(&error) {
                ApiError::Unavailable {
                    internal: describe(&error),
                }
            } else {
                // A row or parameter of an unexpected type: our bug.
                ApiError::Internal {
                    internal: describe(&error),
                }
            };
        };
        let code = db.code();
        let field = db
            .constraint()
            .and_then(field_of_constraint)
            .or_else(|| db.column().map(str::to_owned));
        if *code == SqlState::CHECK_VIOLATION
            || *code == SqlState::NOT_NULL_VIOLATION
            || code.code().starts_with("22")
        {
            // Class 22 is "data exception" (bad encoding, value too long):
            // the input's fault, like a CHECK failure.
            tracing::debug!(error = %describe(&error), "database rejected the values");
            return ApiError::Validation {
                code: "invalid_field",
                message: match &field {
                    Some(field) => format!("{field} has a value the database does not accept"),
                    None => "a value is not accepted by the database".to_owned(),
                },
                field,
            };
        }
        if *code == SqlState::UNIQUE_VIOLATION || *code == SqlState::FOREIGN_KEY_VIOLATION {
            tracing::debug!(error = %describe(&error), "database reported a conflict");
            return ApiError::Conflict {
                message: match field.as_deref() {
                    Some("id") => "an order with this id already exists".to_owned(),
                    Some(field) => format!("{field} conflicts with an existing row"),
                    None => "the change conflicts with an existing row".to_owned(),
                },
            };
        }
        // A passing state of the server (shutdown, overload, failover,
        // serialization failure): retrying may succeed.
        if crate::pg::is_transient_sqlstate(code.code()) {
            return ApiError::Unavailable {
                internal: describe(&error),
            };
        }
        ApiError::Internal {
            internal: describe(&error),
        }
    }
}

/// Whether a client-side tokio-postgres error means the database could not
/// be reached or the connection broke. tokio-postgres exposes its error
/// kind only through `is_closed` and the wording of its `Display`, which
/// starts with a fixed text per kind.
fn is_connection_trouble(error: &tokio_postgres::Error) -> bool {
    const KINDS: [&str; 6] = [
        "error connecting to server",
        "error communicating with the server",
        "timeout waiting for server",
        "error performing TLS handshake",
        "authentication error",
        "connection closed",
    ];
    let text = error.to_string();
    error.is_closed() || KINDS.iter().any(|kind| text.starts_with(kind))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internals_never_reach_the_body() {
        let error = ApiError::Internal {
            internal: "ERROR 42P01: relation \"orders\" does not exist".into(),
        };
        let body = serde_json::to_string(&error.body()).unwrap();
        assert!(!body.contains("relation"), "{body}");
        assert_eq!(
            body,
            r#"{"error":{"code":"internal","message":"internal server error"}}"#
        );
        let error = ApiError::Unavailable {
            internal: "connection refused".into(),
        };
        let body = serde_json::to_string(&error.body()).unwrap();
        assert!(!body.contains("refused"), "{body}");
        assert_eq!(error.status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn field_is_omitted_when_absent() {
        let body = serde_json::to_value(ApiError::not_found("no order 7").body()).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"error": {"code": "not_found", "message": "no order 7"}})
        );
        let body = serde_json::to_value(
            ApiError::invalid(
                "missing_field",
                "customer_name",
                "customer_name is required",
            )
            .body(),
        )
        .unwrap();
        assert_eq!(body["error"]["field"], "customer_name");
    }
}
