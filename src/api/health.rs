//! Liveness and readiness: `GET /healthz`, `GET /readyz`, and the
//! [`Health`] registry the pipeline stages report to.
//!
//! `/healthz` answers 200 while the process serves HTTP at all. `/readyz`
//! answers 200 only when every registered component is healthy and the
//! API's own Postgres pool completes a round trip within a short timeout;
//! otherwise 503, naming each unhealthy component and why.
//!
//! The registry only holds what stages tell it; it does not probe them.
//! Details are shown on `/readyz`: stages must keep secrets out of them.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{ApiState, ErrorDetail, READY_CHECK_TIMEOUT};

/// The name `/readyz` gives its own live check of the API's pool.
pub const API_POSTGRES: &str = "api_postgres";

/// The state of one component as last reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ComponentHealth {
    #[schema(example = "rabbitmq")]
    pub name: String,
    pub healthy: bool,
    /// What the component last said about itself.
    #[schema(example = "connected to 127.0.0.1:5672")]
    pub detail: String,
}

/// A shared registry of component health, e.g. `"postgres"`, `"rabbitmq"`,
/// `"slot_stream"`. Cheap to clone; every clone is the same registry.
#[derive(Debug, Clone, Default)]
pub struct Health {
    components: Arc<Mutex<BTreeMap<&'static str, (bool, String)>>>,
}

impl Health {
    pub fn new() -> Health {
        Health::default()
    }

    /// Records a component's state. A component, once set, counts for
    /// readiness until [`Health::remove`]d. Changes of `healthy` are
    /// logged; repeated reports are not. A component's first report, when
    /// it is not healthy yet, is a start, not a fault: logged at info.
    pub fn set(&self, component: &'static str, healthy: bool, detail: impl Into<String>) {
        let detail = detail.into();
        let previous = self.lock().insert(component, (healthy, detail.clone()));
        match (previous, healthy) {
            (Some((was_healthy, _)), _) if was_healthy == healthy => {}
            (_, true) => tracing::info!(component, detail = %detail, "component healthy"),
            (None, false) => tracing::info!(component, detail = %detail, "component starting"),
            (Some(_), false) => {
                tracing::warn!(component, detail = %detail, "component unhealthy")
            }
        }
    }

    /// Stops counting a component (a stage that was shut down on purpose).
    pub fn remove(&self, component: &'static str) {
        self.lock().remove(component);
    }

    /// Every registered component, by name.
    pub fn components(&self) -> Vec<ComponentHealth> {
        self.lock()
            .iter()
            .map(|(name, (healthy, detail))| ComponentHealth {
                name: (*name).to_owned(),
                healthy: *healthy,
                detail: detail.clone(),
            })
            .collect()
    }

    /// Whether every registered component is healthy (true when none is).
    pub fn all_healthy(&self) -> bool {
        self.lock().values().all(|(healthy, _)| *healthy)
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<&'static str, (bool, String)>> {
        // A panic while holding this lock cannot leave the map half
        // updated (single inserts/removes), so a poisoned lock is usable.
        self.components
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The body of `/healthz`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Liveness {
    #[schema(example = "ok")]
    pub status: String,
}

/// The body of `/readyz`, in both outcomes.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Readiness {
    /// `ready` or `not_ready`.
    #[schema(example = "ready")]
    pub status: String,
    /// Every component, the API's own `api_postgres` check included.
    pub components: Vec<ComponentHealth>,
    /// Present when not ready (code `not_ready`), naming the unhealthy
    /// components; the same shape as every other error.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub error: Option<ErrorDetail>,
}

/// Liveness: the process is up and serving HTTP.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses((status = 200, description = "Always, while the process serves", body = Liveness))
)]
pub async fn healthz() -> Json<Liveness> {
    Json(Liveness {
        status: "ok".to_owned(),
    })
}

/// Readiness: every registered component is healthy and the API's
/// Postgres pool answers.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "Not ready; `error.message` names the unhealthy components", body = Readiness),
    )
)]
pub async fn readyz(State(state): State<ApiState>) -> Response {
    let mut components = state.health.components();
    components.push(check_pool(&state).await);
    readiness(components)
}

/// The `/readyz` answer for `components`: 200 when every one is healthy,
/// else 503 naming the unhealthy ones. Shared by the API and by processes
/// without the API role, so the body has one shape whatever the roles.
pub fn readiness(mut components: Vec<ComponentHealth>) -> Response {
    components.sort_by(|a, b| a.name.cmp(&b.name));
    let unhealthy: Vec<String> = components
        .iter()
        .filter(|c| !c.healthy)
        .map(|c| format!("{}: {}", c.name, c.detail))
        .collect();
    if unhealthy.is_empty() {
        let body = Readiness {
            status: "ready".to_owned(),
            components,
            error: None,
        };
        return (StatusCode::OK, Json(body)).into_response();
    }
    let body = Readiness {
        status: "not_ready".to_owned(),
        components,
        error: Some(ErrorDetail {
            code: "not_ready".to_owned(),
            message: unhealthy.join("; "),
            field: None,
        }),
    };
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}

/// One round trip on a pooled connection. The detail says what kind of
/// failure it was, not the server's message (that goes to the log).
async fn check_pool(state: &ApiState) -> ComponentHealth {
    let probe = async {
        let client = state.pool.get().await?;
        client.simple_query("SELECT 1").await?;
        Ok::<(), super::ApiError>(())
    };
    let (healthy, detail) = match tokio::time::timeout(READY_CHECK_TIMEOUT, probe).await {
        Ok(Ok(())) => (true, "ok".to_owned()),
        Ok(Err(error)) => {
            tracing::warn!(error = ?error, "readiness: api postgres pool check failed");
            (false, "cannot query postgres".to_owned())
        }
        Err(_) => (
            false,
            format!(
                "no answer from postgres within {} ms",
                READY_CHECK_TIMEOUT.as_millis()
            ),
        ),
    };
    ComponentHealth {
        name: API_POSTGRES.to_owned(),
        healthy,
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_is_shared_between_clones() {
        let health = Health::new();
        assert!(health.all_healthy());
        let stage = health.clone();
        stage.set("rabbitmq", false, "connection refused");
        assert!(!health.all_healthy());
        stage.set("rabbitmq", true, "connected");
        stage.set("postgres", true, "streaming");
        assert!(health.all_healthy());
        assert_eq!(
            health.components(),
            vec![
                ComponentHealth {
                    name: "postgres".into(),
                    healthy: true,
                    detail: "streaming".into()
                },
                ComponentHealth {
                    name: "rabbitmq".into(),
                    healthy: true,
                    detail: "connected".into()
                },
            ]
        );
        stage.set("slot_stream", false, "lagging");
        stage.remove("slot_stream");
        assert!(health.all_healthy());
    }
}
