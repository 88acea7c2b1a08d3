//! `/orders`: list (keyset pages with the snapshot hand-off), get, create,
//! replace, patch and delete rows of `public.orders`.
//!
//! Request bodies are checked field by field (`body`), so that every problem
//! is a 422 naming its field, before any SQL runs; the table's CHECK
//! constraints stay the last line of defence (and map to 422 as well, with
//! the field [`field_of_constraint`] names). This module writes to Postgres
//! and nothing else: change events come from the WAL, never from here.
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
//!
//! Submodules: `model` (the rows answered), `body` (the request bodies and
//! their checks), `query` (the parameters of `GET /orders`), `responses`
//! (the documented error responses).

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use deadpool_postgres::tokio_postgres::IsolationLevel;

use super::extract::{JsonBody, OrderId};
use super::{ApiError, ApiState};

mod body;
mod model;
mod query;
mod responses;

pub use body::{Name, OrderInput, OrderPatch};
pub use model::{Order, OrderList, OrderStatus};
use query::ListParams;
pub use query::ListQuery;
use responses::{ChangeErrors, CreateErrors, DeleteErrors, GetErrors, ListErrors};

/// Longest `customer_name` / `product_name`, in characters after trimming
/// (the table's CHECK constraints say the same).
pub const MAX_NAME_CHARS: usize = 200;
/// Page size of `GET /orders` without `limit`, and the largest allowed.
pub const DEFAULT_PAGE_SIZE: i64 = 50;
pub const MAX_PAGE_SIZE: i64 = 500;

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
        ListErrors,
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
        GetErrors,
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
        CreateErrors,
    )
)]
pub async fn create_order(
    State(state): State<ApiState>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let input = OrderInput::from_json(&body)?;
    let (customer_name, product_name) = (input.customer_name.as_str(), input.product_name.as_str());
    let client = state.pool.get().await?;
    let row = match input.status {
        None => {
            let statement = client.prepare_cached(INSERT_DEFAULT_STATUS).await?;
            client
                .query_one(&statement, &[&customer_name, &product_name])
                .await?
        }
        Some(status) => {
            let statement = client.prepare_cached(INSERT_WITH_STATUS).await?;
            client
                .query_one(
                    &statement,
                    &[&customer_name, &product_name, &status.as_str()],
                )
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
        ChangeErrors,
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
        ChangeErrors,
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
    let patch = OrderPatch::from_json(&body)?;
    if patch.is_empty() {
        // Nothing to change: an UPDATE would still fire the trigger and
        // emit a change event for nothing.
        return get_order(State(state), OrderId(id)).await;
    }
    update(&state, id, &patch).await
}

async fn update(state: &ApiState, id: i64, patch: &OrderPatch) -> Result<Json<Order>, ApiError> {
    let client = state.pool.get().await?;
    let statement = client.prepare_cached(UPDATE).await?;
    let status = patch.status.map(OrderStatus::as_str);
    let row = client
        .query_opt(
            &statement,
            &[
                &id,
                &patch.customer_name.as_ref().map(Name::as_str),
                &patch.product_name.as_ref().map(Name::as_str),
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
        DeleteErrors,
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

/// The field a constraint of `public.orders` guards, for the `field` of a
/// 422 or the message of a 409 when the database refuses a value:
/// `orders_customer_name_check` → `customer_name`, `orders_pkey` → `id`.
pub(super) fn field_of_constraint(constraint: &str) -> Option<String> {
    match constraint {
        "orders_pkey" => Some("id".into()),
        "orders_status_check" => Some("status".into()),
        "orders_customer_name_check" => Some("customer_name".into()),
        "orders_product_name_check" => Some("product_name".into()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constraint_names_map_to_fields() {
        assert_eq!(field_of_constraint("orders_pkey").as_deref(), Some("id"));
        assert_eq!(
            field_of_constraint("orders_product_name_check").as_deref(),
            Some("product_name")
        );
        assert_eq!(field_of_constraint("something_else"), None);
    }
}
