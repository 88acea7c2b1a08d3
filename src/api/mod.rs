//! The HTTP API: a slim CRUD side door for the `orders` table, plus health
//! and the OpenAPI description (contract section 4).
//!
//! Writes go to Postgres only. The API never publishes change events: every
//! change it makes reaches clients through the WAL, like an edit typed into
//! psql. `GET /orders` hands out the listing's `snapshot` so a client can
//! join the change stream without gap or duplicate (contract section 3).
//!
//! [`router`] builds the axum router from an [`ApiState`]; the caller binds
//! the listener and serves it (the app also mounts Socket.IO on the same
//! listener). The [`Health`] registry, the [`Authenticator`] and the
//! [`RequestStats`] are cloneable handles that other stages share: the
//! pipeline stages report their health, the Socket.IO handshake reuses the
//! authenticator, and a `/metrics` endpoint can read the stats.
//!
//! The same router serves the browser dashboard (`/`, `/dashboard/...`,
//! embedded in the binary; see `dashboard.rs`). This module does not serve
//! `/metrics`, and does not bind sockets itself.

mod auth;
mod dashboard;
mod error;
mod extract;
mod health;
mod openapi;
mod orders;
mod stats;

use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::get;
use axum::Router;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};

use crate::catalog::describe;
use crate::config::Config;
use crate::pg::PgConfig;

pub use auth::{AuthError, Authenticator};
pub use error::{ApiError, ErrorBody, ErrorDetail};
pub use health::{healthz, readiness, ComponentHealth, ComponentState, Health};
pub use openapi::ApiDoc;
pub use orders::{Order, OrderList, OrderStatus, MAX_NAME_CHARS};
pub use stats::{RequestKey, RequestStats, RouteStats};

/// How long `/readyz` waits for its own Postgres round trip. Short, because
/// an orchestrator's probe has its own timeout and a slow answer is as bad
/// as none.
const READY_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Why the API could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ApiSetupError {
    #[error("cannot build the API's Postgres pool: {0}")]
    Pool(String),
    #[error("the API cannot reach postgres: {message}")]
    Connect { message: String, transient: bool },
}

impl ApiSetupError {
    /// A failed first connection may heal (Postgres still starting), unless
    /// the server or the TLS settings said no for good (see
    /// [`crate::pg::is_transient`]); a pool that cannot be built will not.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ApiSetupError::Connect {
                transient: true,
                ..
            }
        )
    }

    fn connect(error: &tokio_postgres::Error) -> ApiSetupError {
        ApiSetupError::Connect {
            message: describe(error),
            transient: crate::pg::is_transient(error),
        }
    }
}

/// Everything a request handler needs; cheap to clone (all handles).
#[derive(Clone)]
pub struct ApiState {
    pool: Pool,
    health: Health,
    auth: Option<Authenticator>,
    stats: RequestStats,
    body_limit: usize,
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState")
            .field("pool", &self.pool.status())
            .field("auth", &self.auth)
            .field("body_limit", &self.body_limit)
            .finish_non_exhaustive()
    }
}

impl ApiState {
    /// Builds the state without any I/O: connections are made on first use,
    /// so the API can start (and report not ready) while Postgres is down.
    pub fn new(config: &Config, health: Health) -> Result<ApiState, ApiSetupError> {
        let pg = api_pg_config(config);
        let manager = Manager::from_config(
            tokio_postgres::Config::clone(&pg),
            pg.make_tls(),
            // Fast: a pooled connection is reused unless its socket is
            // known to be closed; a query on a connection that died
            // quietly fails once with 503 and the pool replaces it.
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let timeout = Some(Duration::from_millis(config.http.pool_timeout_ms));
        let pool = Pool::builder(manager)
            .max_size(config.http.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(timeout)
            .create_timeout(timeout)
            .recycle_timeout(timeout)
            .build()
            .map_err(|e| ApiSetupError::Pool(e.to_string()))?;
        Ok(ApiState {
            pool,
            health,
            auth: Authenticator::from_config(&config.auth),
            stats: RequestStats::default(),
            body_limit: config.http.body_limit_bytes,
        })
    }

    /// [`ApiState::new`], then one round trip to Postgres, so that a wrong
    /// URL or password shows at startup rather than on the first request.
    pub async fn connect(config: &Config, health: Health) -> Result<ApiState, ApiSetupError> {
        let state = ApiState::new(config, health)?;
        let client = state.pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Backend(e) => ApiSetupError::connect(&e),
            other => ApiSetupError::Connect {
                message: other.to_string(),
                transient: true,
            },
        })?;
        client
            .simple_query("SELECT 1")
            .await
            .map_err(|e| ApiSetupError::connect(&e))?;
        drop(client);
        Ok(state)
    }

    /// The health registry `/readyz` reports from.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// Per-route request counts, for `/metrics`.
    pub fn stats(&self) -> &RequestStats {
        &self.stats
    }

    /// The bearer-token check, `None` when `auth.enabled` is false (then
    /// everyone may write and connect).
    pub fn authenticator(&self) -> Option<&Authenticator> {
        self.auth.as_ref()
    }
}

/// The API's connection settings: the captured database's, tagged in
/// `pg_stat_activity` and with the session settings the API relies on.
fn api_pg_config(config: &Config) -> PgConfig {
    let mut pg = config.pg_config();
    pg.application_name(format!("{}-api", config.postgres.application_name));
    // DateStyle=ISO: timestamps are read as text and must have the same
    // form the decoder turns into event values, whatever the server's
    // default. statement_timeout bounds how long a request can hold a
    // connection.
    let mut options = pg.get_options().unwrap_or_default().to_owned();
    if !options.is_empty() {
        options.push(' ');
    }
    options.push_str(&format!(
        "-c DateStyle=ISO,YMD -c statement_timeout={}",
        config.http.statement_timeout_ms
    ));
    pg.options(&options);
    pg
}

/// The API's routes, with error mapping, body limit, auth on writes and
/// per-request tracing. Serve it with `axum::serve`.
pub fn router(state: ApiState) -> Router {
    // route_layer: only matched routes need a token; an unknown path stays
    // a 404 for everyone.
    let require_token =
        middleware::from_fn_with_state(state.auth.clone(), auth::require_bearer_token_for_writes);
    let orders = Router::new()
        .route(
            "/orders",
            get(orders::list_orders).post(orders::create_order),
        )
        .route(
            "/orders/{id}",
            get(orders::get_order)
                .put(orders::replace_order)
                .patch(orders::patch_order)
                .delete(orders::delete_order),
        )
        .route_layer(require_token);
    Router::new()
        .merge(orders)
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/openapi.json", get(openapi::openapi_json))
        .route("/", get(dashboard::index))
        .route("/dashboard/{*path}", get(dashboard::asset))
        .fallback(unknown_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.body_limit))
        .layer(middleware::from_fn(extract::close_if_body_unread))
        .layer(middleware::from_fn_with_state(
            state.stats.clone(),
            stats::track_request,
        ))
        .with_state(state)
}

async fn unknown_route() -> ApiError {
    ApiError::not_found("no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_connections_keep_url_options_and_add_their_own() {
        let mut config = Config::default();
        config.postgres.url = "postgres://u:secret@h:5432/d?options=-c%20search_path%3Dshop".into();
        config.http.statement_timeout_ms = 1234;
        let pg = api_pg_config(&config);
        assert_eq!(
            pg.get_options(),
            Some("-c search_path=shop -c DateStyle=ISO,YMD -c statement_timeout=1234")
        );
        assert_eq!(pg.get_application_name(), Some("walcast-api"));
    }
}
