//! The query of `GET /orders`: [`ListQuery`] as it arrives (text, so that
//! each problem names its parameter) and the checked `ListParams`.
//!
//! It does not run the listing (the handler in `orders` does).

use serde::Deserialize;
use utoipa::IntoParams;

use super::{OrderStatus, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE};
use crate::api::ApiError;

/// Query parameters of `GET /orders`. Read as text and parsed by hand, so
/// that each problem names its parameter.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only orders with this status. An empty value (`status=`), like
    /// every empty parameter here, counts as absent.
    #[param(value_type = Option<OrderStatus>)]
    status: Option<String>,
    /// Page size, 1 to 500; default 50.
    #[param(value_type = Option<i64>, minimum = 1, maximum = 500, default = 50)]
    limit: Option<String>,
    /// Keyset cursor: only orders with an id greater than this (the
    /// previous page's `next_after`).
    #[param(value_type = Option<i64>)]
    after: Option<String>,
}

/// `limit`, `after` and `status` of `GET /orders`, checked.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct ListParams {
    pub(super) status: Option<OrderStatus>,
    pub(super) limit: i64,
    pub(super) after: Option<i64>,
}

impl ListParams {
    /// An empty value (`?status=`, what a form's "any" choice sends) is the
    /// same as leaving the parameter out.
    pub(super) fn parse(query: ListQuery) -> Result<ListParams, ApiError> {
        fn given(value: &Option<String>) -> Option<&str> {
            value.as_deref().filter(|text| !text.is_empty())
        }
        let status = match given(&query.status) {
            None => None,
            Some(text) => Some(OrderStatus::parse(text).ok_or_else(|| {
                ApiError::bad_field(
                    "invalid_query",
                    "status",
                    format!("status must be one of {}", OrderStatus::expected()),
                )
            })?),
        };
        let limit = match given(&query.limit) {
            None => DEFAULT_PAGE_SIZE,
            Some(text) => text
                .parse::<i64>()
                .ok()
                .filter(|n| (1..=MAX_PAGE_SIZE).contains(n))
                .ok_or_else(|| {
                    ApiError::bad_field(
                        "invalid_query",
                        "limit",
                        format!("limit must be an integer from 1 to {MAX_PAGE_SIZE}"),
                    )
                })?,
        };
        let after = match given(&query.after) {
            None => None,
            Some(text) => Some(text.parse::<i64>().map_err(|_| {
                ApiError::bad_field(
                    "invalid_query",
                    "after",
                    "after must be an integer: the last order id of the previous page",
                )
            })?),
        };
        Ok(ListParams {
            status,
            limit,
            after,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_parameters() {
        let query = |status: Option<&str>, limit: Option<&str>, after: Option<&str>| ListQuery {
            status: status.map(Into::into),
            limit: limit.map(Into::into),
            after: after.map(Into::into),
        };
        assert_eq!(
            ListParams::parse(query(None, None, None)).unwrap(),
            ListParams {
                status: None,
                limit: 50,
                after: None
            }
        );
        assert_eq!(
            ListParams::parse(query(Some("pending"), Some("500"), Some("-3"))).unwrap(),
            ListParams {
                status: Some(OrderStatus::Pending),
                limit: 500,
                after: Some(-3)
            }
        );
        assert_eq!(
            ListParams::parse(query(Some(""), Some(""), Some(""))).unwrap(),
            ListParams::parse(query(None, None, None)).unwrap(),
            "an empty value is an absent one"
        );
        for (bad, field) in [
            (query(None, Some("0"), None), "limit"),
            (query(Some(" "), None, None), "status"),
            (query(None, Some("501"), None), "limit"),
            (query(None, Some("ten"), None), "limit"),
            (query(None, None, Some("1.5")), "after"),
            (query(Some("Pending"), None, None), "status"),
        ] {
            match ListParams::parse(bad).unwrap_err() {
                ApiError::BadRequest { field: f, .. } => assert_eq!(f.as_deref(), Some(field)),
                other => panic!("{other:?}"),
            }
        }
    }
}
