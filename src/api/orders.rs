//! `/orders`: list (keyset pages with the snapshot hand-off), get, create,
//! replace, patch and delete rows of `public.orders`.
//!
//! Request bodies are checked field by field here, so that every problem is
//! a 422 naming its field, before any SQL runs; the table's CHECK
//! constraints stay the last line of defence (and map to 422 as well).
//! This module writes to Postgres and nothing else: change events come from
//! the WAL, never from here.
//!
//! Semantics worth knowing:
//! - `PUT` and `PATCH` both take any subset of the three fields (contract
//!   section 4: "with any of those fields"); an omitted field is left as it
//!   is. `status` in particular has a life of its own (workers and psql
//!   move it), and a stale form must not reset it to `pending`.
//! - `{}` changes nothing and answers the current order (200) without
//!   writing, so no change event: the same as any request that names no
//!   new value, and idempotent like the rest of PUT.
//! - Names are stored trimmed; at most 200 characters after trimming, like
//!   the table's CHECK constraints.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use deadpool_postgres::tokio_postgres::{IsolationLevel, Row};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

use super::extract::{JsonBody, OrderId};
use super::{ApiError, ApiState, ErrorBody};

/// Longest `customer_name` / `product_name`, in characters after trimming
/// (the table's CHECK constraints say the same).
pub const MAX_NAME_CHARS: usize = 200;
/// Page size of `GET /orders` without `limit`, and the largest allowed.
pub const DEFAULT_PAGE_SIZE: i64 = 50;
pub const MAX_PAGE_SIZE: i64 = 500;

/// The fields a client may write; everything else in a body is refused.
const WRITABLE_FIELDS: [&str; 3] = ["customer_name", "product_name", "status"];
/// Fields of an order that the server sets; named in the error when a
/// client sends an order it read back.
const READ_ONLY_FIELDS: [&str; 3] = ["id", "created_at", "updated_at"];

/// The columns of an order as the API returns them. Timestamps are read as
/// text and converted like the decoder does, so the dashboard can compare
/// them with event values byte for byte.
macro_rules! order_columns {
    () => {
        "id, customer_name, product_name, status, \
         created_at::text AS created_at, updated_at::text AS updated_at"
    };
}

const SELECT_ONE: &str = concat!(
    "SELECT ",
    order_columns!(),
    " FROM public.orders WHERE id = $1"
);
const LIST_FIRST: &str = concat!(
    "SELECT ",
    order_columns!(),
    " FROM public.orders ORDER BY id LIMIT $1"
);
const LIST_AFTER: &str = concat!(
    "SELECT ",
    order_columns!(),
    " FROM public.orders WHERE id > $1 ORDER BY id LIMIT $2"
);
// Separate statements per filter, so that each plan can use its index
// (orders_status_id_idx for the status filter) rather than a generic
// `$1 IS NULL OR …` plan.
const LIST_STATUS_FIRST: &str = concat!(
    "SELECT ",
    order_columns!(),
    " FROM public.orders WHERE status = $1 ORDER BY id LIMIT $2"
);
const LIST_STATUS_AFTER: &str = concat!(
    "SELECT ",
    order_columns!(),
    " FROM public.orders WHERE status = $1 AND id > $2 ORDER BY id LIMIT $3"
);
const INSERT_DEFAULT_STATUS: &str = concat!(
    "INSERT INTO public.orders (customer_name, product_name) VALUES ($1, $2) RETURNING ",
    order_columns!()
);
const INSERT_WITH_STATUS: &str = concat!(
    "INSERT INTO public.orders (customer_name, product_name, status) VALUES ($1, $2, $3) RETURNING ",
    order_columns!()
);
const UPDATE: &str = concat!(
    "UPDATE public.orders SET customer_name = COALESCE($2, customer_name), \
     product_name = COALESCE($3, product_name), status = COALESCE($4, status) \
     WHERE id = $1 RETURNING ",
    order_columns!()
);
const DELETE: &str = "DELETE FROM public.orders WHERE id = $1";
const SNAPSHOT: &str = "SELECT pg_current_snapshot()::text";
/// The WAL position just before the listing's transaction. On a standby
/// (read replica) the replayed position is the one that counts.
const CURRENT_LSN: &str = "SELECT (CASE WHEN pg_is_in_recovery() \
     THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END)::text";

/// An order's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OrderStatus {
    Pending,
    Processing,
    Shipped,
    Delivered,
    Cancelled,
}

impl OrderStatus {
    pub const ALL: [OrderStatus; 5] = [
        OrderStatus::Pending,
        OrderStatus::Processing,
        OrderStatus::Shipped,
        OrderStatus::Delivered,
        OrderStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "pending",
            OrderStatus::Processing => "processing",
            OrderStatus::Shipped => "shipped",
            OrderStatus::Delivered => "delivered",
            OrderStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<OrderStatus> {
        OrderStatus::ALL.into_iter().find(|s| s.as_str() == text)
    }

    fn expected() -> String {
        OrderStatus::ALL.map(OrderStatus::as_str).join(", ")
    }
}

/// One row of `public.orders`, with the table's field names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Order {
    #[schema(example = 42)]
    pub id: i64,
    #[schema(example = "Harry")]
    pub customer_name: String,
    #[schema(example = "iPhone 17")]
    pub product_name: String,
    /// One of the five statuses the table's CHECK constraint allows.
    #[schema(value_type = OrderStatus)]
    pub status: String,
    /// `timestamp` (UTC, no offset) in the change events' form.
    #[schema(example = "2026-11-22T05:04:10.580065")]
    pub created_at: String,
    /// Set by a trigger on every UPDATE, from the API or not.
    #[schema(example = "2026-11-22T05:04:10.580065")]
    pub updated_at: String,
}

impl Order {
    fn from_row(row: &Row) -> Result<Order, ApiError> {
        let read = || -> Result<Order, tokio_postgres::Error> {
            Ok(Order {
                id: row.try_get("id")?,
                customer_name: row.try_get("customer_name")?,
                product_name: row.try_get("product_name")?,
                status: row.try_get("status")?,
                created_at: event_timestamp(row.try_get("created_at")?),
                updated_at: event_timestamp(row.try_get("updated_at")?),
            })
        };
        read().map_err(|e| ApiError::internal(format!("unexpected orders row: {e}")))
    }
}

/// Postgres's ISO text of a `timestamp` (`2026-11-22 05:04:10.58`) in the
/// change events' form (`2026-11-22T05:04:10.580000`: six fraction digits,
/// which Postgres does not always write). Other forms (`infinity`, BC
/// dates) stay as Postgres wrote them, as in events.
fn event_timestamp(text: String) -> String {
    let bytes = text.as_bytes();
    let plain = bytes.len() >= 19
        && bytes[10] == b' '
        && bytes[..10].iter().enumerate().all(|(i, b)| match i {
            4 | 7 => *b == b'-',
            _ => b.is_ascii_digit(),
        })
        && bytes[11..]
            .iter()
            .all(|b| b.is_ascii_digit() || *b == b':' || *b == b'.');
    if plain {
        let mut text = text;
        text.replace_range(10..11, "T");
        // `YYYY-MM-DDTHH:MM:SS` is 19 bytes; `.ffffff` makes 26.
        match text.len() {
            19 => text.push_str(".000000"),
            21..=25 if text.as_bytes()[19] == b'.' => {
                let pad = 26 - text.len();
                text.extend(std::iter::repeat_n('0', pad));
            }
            _ => {}
        }
        text
    } else {
        text
    }
}

/// A page of `GET /orders`, with what a client needs to join the change
/// stream exactly where the page was read.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OrderList {
    /// Orders in ascending `id` order.
    pub orders: Vec<Order>,
    /// The `after` value for the next page; `null` on the last page.
    #[schema(required = true, example = 50)]
    pub next_after: Option<i64>,
    /// `pg_current_snapshot()` of the transaction the page was read in,
    /// `xmin:xmax:xip,…`. Pass it as the Socket.IO handshake's
    /// `auth.snapshot` to receive exactly the changes this page does not
    /// show.
    #[schema(example = "745:749:745,747")]
    pub snapshot: String,
    /// The WAL position (`X/X`) read just before that transaction began.
    #[schema(example = "0/16B3748")]
    pub snapshot_lsn: String,
}

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

/// Body of `POST /orders`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // Describes the accepted JSON; bodies are checked by `parse_fields`.
pub struct OrderInput {
    /// Required; 1 to 200 characters after trimming; stored trimmed.
    #[schema(min_length = 1, max_length = 200, example = "Harry")]
    customer_name: String,
    /// Required; 1 to 200 characters after trimming; stored trimmed.
    #[schema(min_length = 1, max_length = 200, example = "iPhone 17")]
    product_name: String,
    /// Defaults to `pending`.
    #[schema(nullable = false)]
    status: Option<OrderStatus>,
}

/// Body of `PUT /orders/{id}` and `PATCH /orders/{id}`: any subset of the
/// writable fields; an omitted field is left unchanged, `{}` changes nothing.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // Describes the accepted JSON; bodies are checked by `parse_fields`.
pub struct OrderPatch {
    #[schema(nullable = false, min_length = 1, max_length = 200)]
    customer_name: Option<String>,
    #[schema(nullable = false, min_length = 1, max_length = 200)]
    product_name: Option<String>,
    #[schema(nullable = false)]
    status: Option<OrderStatus>,
}

/// Writable fields of a request body after checking.
#[derive(Debug, Default, PartialEq, Eq)]
struct Fields {
    customer_name: Option<String>,
    product_name: Option<String>,
    status: Option<OrderStatus>,
}

/// Checks a request body. With `names_required`, `customer_name` and
/// `product_name` must be present (POST). The first problem found is
/// reported, checking unknown fields first so that a typo (`staus`) is
/// named as such rather than as a missing field.
fn parse_fields(body: &Value, names_required: bool) -> Result<Fields, ApiError> {
    let Value::Object(object) = body else {
        return Err(ApiError::Validation {
            code: "invalid_body",
            message: format!(
                "the body must be a JSON object with the fields {}",
                WRITABLE_FIELDS.join(", ")
            ),
            field: None,
        });
    };
    for key in object.keys() {
        if READ_ONLY_FIELDS.contains(&key.as_str()) {
            return Err(ApiError::invalid(
                "read_only_field",
                key,
                format!("{key} is set by the server and cannot be written"),
            ));
        }
        if !WRITABLE_FIELDS.contains(&key.as_str()) {
            return Err(ApiError::invalid(
                "unknown_field",
                key,
                format!(
                    "unknown field; the writable fields are {}",
                    WRITABLE_FIELDS.join(", ")
                ),
            ));
        }
    }
    let customer_name = name_field(object, "customer_name", names_required)?;
    let product_name = name_field(object, "product_name", names_required)?;
    let status = match object.get("status") {
        None => None,
        Some(value) => {
            let text = string_field(value, "status")?;
            Some(OrderStatus::parse(text).ok_or_else(|| {
                ApiError::invalid(
                    "invalid_field",
                    "status",
                    format!("status must be one of {}", OrderStatus::expected()),
                )
            })?)
        }
    };
    Ok(Fields {
        customer_name,
        product_name,
        status,
    })
}

fn name_field(
    object: &Map<String, Value>,
    field: &str,
    required: bool,
) -> Result<Option<String>, ApiError> {
    let Some(value) = object.get(field) else {
        return if required {
            Err(ApiError::invalid(
                "missing_field",
                field,
                format!("{field} is required"),
            ))
        } else {
            Ok(None)
        };
    };
    let trimmed = string_field(value, field)?.trim();
    if trimmed.is_empty() {
        return Err(ApiError::invalid(
            "invalid_field",
            field,
            format!("{field} must not be empty"),
        ));
    }
    if trimmed.chars().count() > MAX_NAME_CHARS {
        return Err(ApiError::invalid(
            "invalid_field",
            field,
            format!("{field} must be at most {MAX_NAME_CHARS} characters"),
        ));
    }
    // Postgres text cannot hold NUL; refusing it here keeps the database
    // error (and its text) out of the picture.
    if trimmed.contains('\0') {
        return Err(ApiError::invalid(
            "invalid_field",
            field,
            format!("{field} must not contain NUL characters"),
        ));
    }
    Ok(Some(trimmed.to_owned()))
}

fn string_field<'a>(value: &'a Value, field: &str) -> Result<&'a str, ApiError> {
    value.as_str().ok_or_else(|| {
        ApiError::invalid(
            "invalid_type",
            field,
            format!("{field} must be a string, not {}", json_type(value)),
        )
    })
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// `limit`, `after` and `status` of `GET /orders`, checked.
#[derive(Debug, PartialEq, Eq)]
struct ListParams {
    status: Option<OrderStatus>,
    limit: i64,
    after: Option<i64>,
}

impl ListParams {
    /// An empty value (`?status=`, what a form's "any" choice sends) is the
    /// same as leaving the parameter out.
    fn parse(query: ListQuery) -> Result<ListParams, ApiError> {
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

/// List orders, one keyset page at a time.
///
/// Read in one REPEATABLE READ transaction: `snapshot` is that
/// transaction's `pg_current_snapshot()` and `snapshot_lsn` the WAL
/// position read just before it began.
#[utoipa::path(
    get,
    path = "/orders",
    tag = "orders",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of orders", body = OrderList),
        (status = 400, description = "Bad query parameter (`invalid_query`, with `field`)", body = ErrorBody),
        (status = 503, description = "Database unavailable (`unavailable`)", body = ErrorBody),
        (status = 500, description = "Server fault (`internal`); details are only logged", body = ErrorBody),
    )
)]
pub async fn list_orders(
    State(state): State<ApiState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<OrderList>, ApiError> {
    let Query(query) = query?;
    let params = ListParams::parse(query)?;
    let mut client = state.pool.get().await?;

    // Before BEGIN, so that everything the snapshot sees committed at or
    // before this position (contract section 4).
    let snapshot_lsn: String = client
        .query_one(&client.prepare_cached(CURRENT_LSN).await?, &[])
        .await?
        .try_get(0)?;
    let transaction = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    // The first statement fixes a REPEATABLE READ transaction's snapshot,
    // so this is exactly the snapshot the listing below is read with.
    let snapshot: String = transaction
        .query_one(&transaction.prepare_cached(SNAPSHOT).await?, &[])
        .await?
        .try_get(0)?;
    // One row more than asked tells whether there is a next page.
    let fetch = params.limit + 1;
    let rows = match (params.status, params.after) {
        (None, None) => {
            let statement = transaction.prepare_cached(LIST_FIRST).await?;
            transaction.query(&statement, &[&fetch]).await?
        }
        (None, Some(after)) => {
            let statement = transaction.prepare_cached(LIST_AFTER).await?;
            transaction.query(&statement, &[&after, &fetch]).await?
        }
        (Some(status), None) => {
            let statement = transaction.prepare_cached(LIST_STATUS_FIRST).await?;
            transaction
                .query(&statement, &[&status.as_str(), &fetch])
                .await?
        }
        (Some(status), Some(after)) => {
            let statement = transaction.prepare_cached(LIST_STATUS_AFTER).await?;
            transaction
                .query(&statement, &[&status.as_str(), &after, &fetch])
                .await?
        }
    };
    transaction.commit().await?;

    let mut orders = rows
        .iter()
        .map(Order::from_row)
        .collect::<Result<Vec<_>, _>>()?;
    let next_after = if orders.len() as i64 > params.limit {
        orders.truncate(params.limit as usize);
        orders.last().map(|order| order.id)
    } else {
        None
    };
    Ok(Json(OrderList {
        orders,
        next_after,
        snapshot,
        snapshot_lsn,
    }))
}

/// Get one order.
#[utoipa::path(
    get,
    path = "/orders/{id}",
    tag = "orders",
    params(("id" = i64, Path, description = "Order id")),
    responses(
        (status = 200, description = "The order", body = Order),
        (status = 400, description = "Non-numeric id (`invalid_path`)", body = ErrorBody),
        (status = 404, description = "No such order (`not_found`)", body = ErrorBody),
        (status = 503, description = "Database unavailable (`unavailable`)", body = ErrorBody),
        (status = 500, description = "Server fault (`internal`); details are only logged", body = ErrorBody),
    )
)]
pub async fn get_order(
    State(state): State<ApiState>,
    OrderId(id): OrderId,
) -> Result<Json<Order>, ApiError> {
    let client = state.pool.get().await?;
    let statement = client.prepare_cached(SELECT_ONE).await?;
    match client.query_opt(&statement, &[&id]).await? {
        Some(row) => Ok(Json(Order::from_row(&row)?)),
        None => Err(no_such_order(id)),
    }
}

/// Create an order.
#[utoipa::path(
    post,
    path = "/orders",
    tag = "orders",
    request_body(content = OrderInput, content_type = "application/json"),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Created", body = Order,
            headers(("Location" = String, description = "/orders/{id} of the new order"))),
        (status = 400, description = "Malformed JSON (`malformed_json`)", body = ErrorBody),
        (status = 401, description = "Auth on and no valid bearer token (`unauthorized`)", body = ErrorBody),
        (status = 409, description = "Conflict with an existing row (`conflict`)", body = ErrorBody),
        (status = 413, description = "Body over http.body_limit_bytes (`payload_too_large`)", body = ErrorBody),
        (status = 415, description = "Body not declared as JSON (`unsupported_media_type`)", body = ErrorBody),
        (status = 422, description = "Invalid content (`missing_field`, `invalid_type`, `invalid_field`, `unknown_field`, `read_only_field`, `invalid_body`), with `field`", body = ErrorBody),
        (status = 503, description = "Database unavailable (`unavailable`)", body = ErrorBody),
        (status = 500, description = "Server fault (`internal`); details are only logged", body = ErrorBody),
    )
)]
pub async fn create_order(
    State(state): State<ApiState>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let fields = parse_fields(&body, true)?;
    let (Some(customer_name), Some(product_name)) = (&fields.customer_name, &fields.product_name)
    else {
        return Err(ApiError::internal("required names missing after checking"));
    };
    let client = state.pool.get().await?;
    let row = match fields.status {
        None => {
            let statement = client.prepare_cached(INSERT_DEFAULT_STATUS).await?;
            client
                .query_one(&statement, &[customer_name, product_name])
                .await?
        }
        Some(status) => {
            let statement = client.prepare_cached(INSERT_WITH_STATUS).await?;
            client
                .query_one(&statement, &[customer_name, product_name, &status.as_str()])
                .await?
        }
    };
    let order = Order::from_row(&row)?;
    let location = format!("/orders/{}", order.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(order),
    )
        .into_response())
}

/// Change an order: the same as `PATCH`.
///
/// Any subset of `customer_name`, `product_name`, `status`; omitted fields
/// are left as they are (contract section 4). `{}` changes nothing and
/// returns the order as it is, without a change event.
#[utoipa::path(
    put,
    path = "/orders/{id}",
    tag = "orders",
    params(("id" = i64, Path, description = "Order id")),
    request_body(content = OrderPatch, content_type = "application/json"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The updated order (as it is, for `{}`)", body = Order),
        (status = 400, description = "Malformed JSON or non-numeric id", body = ErrorBody),
        (status = 401, description = "Auth on and no valid bearer token (`unauthorized`)", body = ErrorBody),
        (status = 404, description = "No such order (`not_found`)", body = ErrorBody),
        (status = 413, description = "Body over http.body_limit_bytes (`payload_too_large`)", body = ErrorBody),
        (status = 415, description = "Body not declared as JSON (`unsupported_media_type`)", body = ErrorBody),
        (status = 422, description = "Invalid content, with `field`", body = ErrorBody),
        (status = 503, description = "Database unavailable (`unavailable`)", body = ErrorBody),
        (status = 500, description = "Server fault (`internal`); details are only logged", body = ErrorBody),
    )
)]
pub async fn replace_order(
    state: State<ApiState>,
    id: OrderId,
    body: JsonBody,
) -> Result<Json<Order>, ApiError> {
    change_order(state, id, body).await
}

/// Change some fields of an order.
///
/// Any subset of `customer_name`, `product_name`, `status`; `{}` changes
/// nothing and returns the order as it is, without a change event.
#[utoipa::path(
    patch,
    path = "/orders/{id}",
    tag = "orders",
    params(("id" = i64, Path, description = "Order id")),
    request_body(content = OrderPatch, content_type = "application/json"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The updated order (as it is, for `{}`)", body = Order),
        (status = 400, description = "Malformed JSON or non-numeric id", body = ErrorBody),
        (status = 401, description = "Auth on and no valid bearer token (`unauthorized`)", body = ErrorBody),
        (status = 404, description = "No such order (`not_found`)", body = ErrorBody),
        (status = 413, description = "Body over http.body_limit_bytes (`payload_too_large`)", body = ErrorBody),
        (status = 415, description = "Body not declared as JSON (`unsupported_media_type`)", body = ErrorBody),
        (status = 422, description = "Invalid content, with `field`", body = ErrorBody),
        (status = 503, description = "Database unavailable (`unavailable`)", body = ErrorBody),
        (status = 500, description = "Server fault (`internal`); details are only logged", body = ErrorBody),
    )
)]
pub async fn patch_order(
    state: State<ApiState>,
    id: OrderId,
    body: JsonBody,
) -> Result<Json<Order>, ApiError> {
    change_order(state, id, body).await
}

/// PUT and PATCH: check the body, then write the fields it names.
async fn change_order(
    State(state): State<ApiState>,
    OrderId(id): OrderId,
    JsonBody(body): JsonBody,
) -> Result<Json<Order>, ApiError> {
    let fields = parse_fields(&body, false)?;
    if fields == Fields::default() {
        // Nothing to change: an UPDATE would still fire the trigger and
        // emit a change event for nothing.
        return get_order(State(state), OrderId(id)).await;
    }
    update(&state, id, fields).await
}

async fn update(state: &ApiState, id: i64, fields: Fields) -> Result<Json<Order>, ApiError> {
    let client = state.pool.get().await?;
    let statement = client.prepare_cached(UPDATE).await?;
    let status = fields.status.map(OrderStatus::as_str);
    let row = client
        .query_opt(
            &statement,
            &[
                &id,
                &fields.customer_name.as_deref(),
                &fields.product_name.as_deref(),
                &status,
            ],
        )
        .await?;
    match row {
        Some(row) => Ok(Json(Order::from_row(&row)?)),
        None => Err(no_such_order(id)),
    }
}

/// Delete an order.
#[utoipa::path(
    delete,
    path = "/orders/{id}",
    tag = "orders",
    params(("id" = i64, Path, description = "Order id")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Non-numeric id (`invalid_path`)", body = ErrorBody),
        (status = 401, description = "Auth on and no valid bearer token (`unauthorized`)", body = ErrorBody),
        (status = 404, description = "No such order (`not_found`)", body = ErrorBody),
        (status = 503, description = "Database unavailable (`unavailable`)", body = ErrorBody),
        (status = 500, description = "Server fault (`internal`); details are only logged", body = ErrorBody),
    )
)]
pub async fn delete_order(
    State(state): State<ApiState>,
    OrderId(id): OrderId,
) -> Result<StatusCode, ApiError> {
    let client = state.pool.get().await?;
    let statement = client.prepare_cached(DELETE).await?;
    match client.execute(&statement, &[&id]).await? {
        0 => Err(no_such_order(id)),
        _ => Ok(StatusCode::NO_CONTENT),
    }
}

fn no_such_order(id: i64) -> ApiError {
    ApiError::not_found(format!("no order with id {id}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rejected(body: Value, names_required: bool) -> (&'static str, Option<String>) {
        match parse_fields(&body, names_required).unwrap_err() {
            ApiError::Validation { code, field, .. } => (code, field),
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn accepts_the_common_shape_and_trims() {
        let fields = parse_fields(
            &json!({"customer_name": "  Harry ", "product_name": "iPhone 17", "status": "shipped"}),
            true,
        )
        .unwrap();
        assert_eq!(
            fields,
            Fields {
                customer_name: Some("Harry".into()),
                product_name: Some("iPhone 17".into()),
                status: Some(OrderStatus::Shipped),
            }
        );
        assert_eq!(parse_fields(&json!({}), false).unwrap(), Fields::default());
    }

    #[test]
    fn every_rule_names_its_field() {
        let name = |n: &str| json!({"customer_name": n, "product_name": "p"});
        assert_eq!(
            rejected(json!({"product_name": "p"}), true),
            ("missing_field", Some("customer_name".into()))
        );
        assert_eq!(
            rejected(name("   "), true),
            ("invalid_field", Some("customer_name".into()))
        );
        assert_eq!(
            rejected(name(&"é".repeat(201)), true),
            ("invalid_field", Some("customer_name".into()))
        );
        assert!(parse_fields(&name(&"é".repeat(200)), true).is_ok());
        assert_eq!(
            rejected(name("a\0b"), true),
            ("invalid_field", Some("customer_name".into()))
        );
        assert_eq!(
            rejected(json!({"customer_name": 7, "product_name": "p"}), true),
            ("invalid_type", Some("customer_name".into()))
        );
        assert_eq!(
            rejected(json!({"status": "lost"}), false),
            ("invalid_field", Some("status".into()))
        );
        assert_eq!(
            rejected(json!({"status": null}), false),
            ("invalid_type", Some("status".into()))
        );
        assert_eq!(
            rejected(json!({"staus": "shipped"}), false),
            ("unknown_field", Some("staus".into()))
        );
        assert_eq!(
            rejected(json!({"id": 3, "customer_name": "c"}), false),
            ("read_only_field", Some("id".into()))
        );
        assert_eq!(rejected(json!([1, 2]), false), ("invalid_body", None));
    }

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

    #[test]
    fn timestamps_take_the_event_form() {
        assert_eq!(
            event_timestamp("2026-11-22 05:04:10.580065".into()),
            "2026-11-22T05:04:10.580065"
        );
        assert_eq!(
            event_timestamp("2026-11-22 05:04:10".into()),
            "2026-11-22T05:04:10.000000"
        );
        assert_eq!(
            event_timestamp("2026-11-22 05:04:10.58".into()),
            "2026-11-22T05:04:10.580000"
        );
        assert_eq!(event_timestamp("infinity".into()), "infinity");
        assert_eq!(
            event_timestamp("0044-03-15 12:00:00 BC".into()),
            "0044-03-15 12:00:00 BC"
        );
    }

    #[test]
    fn statuses_round_trip() {
        for status in OrderStatus::ALL {
            assert_eq!(OrderStatus::parse(status.as_str()), Some(status));
            assert_eq!(
                serde_json::to_value(status).unwrap(),
                Value::String(status.as_str().into())
            );
        }
    }
}
