//! The error responses `/openapi.json` documents for the `/orders` routes:
//! one table of statuses and descriptions (every body is [`ErrorBody`]),
//! and one utoipa [`IntoResponses`] type, [`OrderErrors`], that each route
//! names with the kinds of request it takes (`ListErrors`, `GetErrors`, …).
//!
//! It only describes; what a route really answers is decided by
//! [`ApiError`](crate::api::ApiError) and the handlers.

use std::collections::BTreeMap;

use utoipa::openapi::{Content, Ref, RefOr, ResponseBuilder};
use utoipa::{IntoResponses, ToSchema};

use crate::api::ErrorBody;

// What a route takes, as flags of [`OrderErrors`]; each adds the errors
// that only such a route answers.

/// A query string: 400 `invalid_query`.
const QUERY: u8 = 1 << 0;
/// An `{id}` in the path: 400 `invalid_path`, 404.
const BY_ID: u8 = 1 << 1;
/// A write: 401 when auth is on.
const WRITE: u8 = 1 << 2;
/// A JSON body: 400 `malformed_json`, 413, 415, 422.
const BODY: u8 = 1 << 3;
/// An INSERT: 409 on an existing key.
const INSERT: u8 = 1 << 4;
/// Errors every route answers.
const ANY: u8 = 0;

pub type ListErrors = OrderErrors<QUERY>;
pub type GetErrors = OrderErrors<BY_ID>;
pub type CreateErrors = OrderErrors<{ WRITE | BODY | INSERT }>;
pub type ChangeErrors = OrderErrors<{ BY_ID | WRITE | BODY }>;
pub type DeleteErrors = OrderErrors<{ BY_ID | WRITE }>;

/// Why a request is a 400, by what the route takes (the description is
/// these, joined with "or").
const BAD_REQUEST_CAUSES: [(u8, &str); 3] = [
    (QUERY, "bad query parameter (`invalid_query`, with `field`)"),
    (BY_ID, "non-numeric id (`invalid_path`)"),
    (BODY, "malformed JSON (`malformed_json`)"),
];

/// Every other error status, its description and which routes answer it.
const ERRORS: [(u16, u8, &str); 8] = [
    (
        401,
        WRITE,
        "Auth on and no valid bearer token (`unauthorized`)",
    ),
    (404, BY_ID, "No such order (`not_found`)"),
    (409, INSERT, "Conflict with an existing row (`conflict`)"),
    (
        413,
        BODY,
        "Body over http.body_limit_bytes (`payload_too_large`)",
    ),
    (
        415,
        BODY,
        "Body not declared as JSON (`unsupported_media_type`)",
    ),
    (
        422,
        BODY,
        "Invalid content (`missing_field`, `invalid_type`, `invalid_field`, \
         `unknown_field`, `read_only_field`, `invalid_body`), with `field`",
    ),
    (
        500,
        ANY,
        "Server fault (`internal`); details are only logged",
    ),
    (503, ANY, "Database unavailable (`unavailable`)"),
];

/// The documented error responses of a route that takes `TAKES` (a sum of
/// the flags above): 400, 500 and 503 always, the others by flag.
pub struct OrderErrors<const TAKES: u8>;

impl<const TAKES: u8> IntoResponses for OrderErrors<TAKES> {
    fn responses() -> BTreeMap<String, RefOr<utoipa::openapi::Response>> {
        let causes: Vec<&str> = BAD_REQUEST_CAUSES
            .iter()
            .filter(|(flag, _)| TAKES & flag != 0)
            .map(|(_, cause)| *cause)
            .collect();
        let mut bad_request = causes.join(" or ");
        if let Some(first) = bad_request.get_mut(..1) {
            first.make_ascii_uppercase();
        }
        let errors = ERRORS
            .iter()
            .filter(|(_, flag, _)| *flag == ANY || TAKES & flag != 0)
            .map(|(status, _, description)| (*status, description.to_string()));
        std::iter::once((400, bad_request))
            .chain(errors)
            .map(|(status, description)| (status.to_string(), error_response(description)))
            .collect()
    }
}

/// A response with the error body.
fn error_response(description: String) -> RefOr<utoipa::openapi::Response> {
    let schema = Ref::from_schema_name(ErrorBody::name());
    ResponseBuilder::new()
        .description(description)
        .content("application/json", Content::new(Some(schema)))
        .build()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn statuses<T: IntoResponses>() -> Vec<String> {
        T::responses().into_keys().collect()
    }

    /// Each route documents exactly the statuses it can answer.
    #[test]
    fn each_route_documents_its_statuses() {
        assert_eq!(statuses::<ListErrors>(), ["400", "500", "503"]);
        assert_eq!(statuses::<GetErrors>(), ["400", "404", "500", "503"]);
        assert_eq!(
            statuses::<CreateErrors>(),
            ["400", "401", "409", "413", "415", "422", "500", "503"]
        );
        assert_eq!(
            statuses::<ChangeErrors>(),
            ["400", "401", "404", "413", "415", "422", "500", "503"]
        );
        assert_eq!(
            statuses::<DeleteErrors>(),
            ["400", "401", "404", "500", "503"]
        );
    }
}
