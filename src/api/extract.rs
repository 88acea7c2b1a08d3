//! Request extractors whose failures are [`ApiError`]s: a JSON body and an
//! order id from the path; and the middleware that closes a connection
//! whose request body was left unread.
//!
//! axum's own `Json` and `Path` would answer in plain text and decide the
//! status themselves; these keep every failure in the API's error shape.
//! They only read the request: what the JSON must contain is checked by
//! the handlers (`orders`).

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use http_body::{Body as _, Frame, SizeHint};

use super::{ApiError, ApiState};

/// A request body that is declared as JSON, within the body limit, and
/// parses as JSON. Its content is not checked here.
pub struct JsonBody(pub serde_json::Value);

impl FromRequest<ApiState> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &ApiState) -> Result<Self, Self::Rejection> {
        // Content type first: a client sending form data learns that it
        // must send JSON rather than why its form data was malformed.
        check_json_content_type(request.headers())?;
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| body_error(rejection, state.body_limit))?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::bad_request("malformed_json", format!("malformed JSON: {e}")))
    }
}

/// `application/json` or any `application/*+json`, parameters allowed.
fn check_json_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let unsupported = |message: &str| ApiError::UnsupportedMediaType {
        message: message.to_owned(),
    };
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Err(unsupported(
            "missing Content-Type; send the body as application/json",
        ));
    };
    let essence = value
        .to_str()
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let is_json = essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"));
    if is_json {
        Ok(())
    } else {
        Err(unsupported(
            "Content-Type is not application/json; send the body as JSON",
        ))
    }
}

fn body_error(rejection: BytesRejection, limit: usize) -> ApiError {
    // axum reports "over the limit" only through the status of its
    // rejection; anything else is a body that broke off mid-way.
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge { limit }
    } else {
        ApiError::bad_request("unreadable_body", "the request body could not be read")
    }
}

/// The `{id}` of `/orders/{id}`: a 64-bit integer, else 400.
pub struct OrderId(pub i64);

impl<S: Send + Sync> FromRequestParts<S> for OrderId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(text) = Path::<String>::from_request_parts(parts, state).await?;
        text.parse::<i64>().map(OrderId).map_err(|_| {
            ApiError::bad_field(
                "invalid_path",
                "id",
                "the order id in the path must be an integer (a 64-bit order id)",
            )
        })
    }
}

/// Middleware: answers with `Connection: close` when the handler did not
/// read the request body to its end (a 401, 413 or 415 decided before or
/// while reading it).
///
/// hyper then closes the connection, since the rest of the body is still
/// on the way; without the header a client may reuse the connection for
/// its next request and see it fail, instead of seeing this response.
pub async fn close_if_body_unread(request: Request, next: Next) -> Response {
    let finished = Arc::new(AtomicBool::new(false));
    let request = request.map(|inner| {
        if inner.is_end_stream() {
            finished.store(true, Ordering::Relaxed);
        }
        Body::new(WatchedBody {
            inner,
            finished: finished.clone(),
        })
    });
    let mut response = next.run(request).await;
    if !finished.load(Ordering::Relaxed) {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// A request body that notes when it has been read to its end.
struct WatchedBody {
    inner: Body,
    finished: Arc<AtomicBool>,
}

impl http_body::Body for WatchedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let poll = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(poll, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.finished.store(true, Ordering::Relaxed);
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(content_type: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(value) = content_type {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    #[test]
    fn json_content_types() {
        for ok in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON",
            "application/merge-patch+json",
        ] {
            assert!(check_json_content_type(&headers(Some(ok))).is_ok(), "{ok}");
        }
        for bad in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "json",
            "",
        ] {
            assert!(
                check_json_content_type(&headers(Some(bad))).is_err(),
                "{bad}"
            );
        }
        assert!(check_json_content_type(&headers(None)).is_err());
    }
}
