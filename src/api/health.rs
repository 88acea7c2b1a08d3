//! Liveness and readiness: `GET /healthz` and `GET /readyz`, which serve
//! the [`Health`] registry the pipeline stages report to (`crate::health`).
//!
//! `/healthz` answers 200 while the process serves HTTP at all. `/readyz`
//! answers 200 only when every registered component is healthy and the
//! API's own Postgres pool completes a round trip within a short timeout;
//! otherwise 503, naming each unhealthy component and its state.
//!
//! `/readyz` shows each component's [`ComponentState`], a fixed vocabulary,
//! never error text (contract section 4): errors carry URLs, host names and
//! server messages that are nobody's business on an open endpoint. The
//! reason a stage gives with each report goes to the log when the state
//! changes.
//!
//! The registry (`crate::health`) only holds what stages tell it; it does
//! not probe them.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{ApiState, ErrorDetail, READY_CHECK_TIMEOUT};
pub use crate::health::{ComponentHealth, ComponentState, Health};

/// The name `/readyz` gives its own live check of the API's pool.
pub const API_POSTGRES: &str = "api_postgres";

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
    /// components and their states (never error text); the same shape as
    /// every other error.
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
        (status = 503, description = "Not ready; `error.message` names the unhealthy components and their states (the reasons are in the log)", body = Readiness),
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
        .map(|c| format!("{} ({})", c.name, c.state))
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
            message: format!("not ready: {}", unhealthy.join(", ")),
            field: None,
        }),
    };
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}

/// One round trip on a pooled connection; a failure is `unavailable` on
/// `/readyz`, and the error goes to the log.
async fn check_pool(state: &ApiState) -> ComponentHealth {
    let probe = async {
        let client = state.pool.get().await?;
        client.simple_query("SELECT 1").await?;
        Ok::<(), super::ApiError>(())
    };
    let state = match tokio::time::timeout(READY_CHECK_TIMEOUT, probe).await {
        Ok(Ok(())) => ComponentState::Ready,
        Ok(Err(error)) => {
            tracing::warn!(error = ?error, "readiness: api postgres pool check failed");
            ComponentState::Unavailable
        }
        Err(_) => {
            tracing::warn!(
                timeout_ms = READY_CHECK_TIMEOUT.as_millis() as u64,
                "readiness: no answer from postgres in time"
            );
            ComponentState::Unavailable
        }
    };
    ComponentHealth {
        name: API_POSTGRES.to_owned(),
        healthy: state.is_healthy(),
        state,
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
        stage.set(
            "rabbitmq",
            ComponentState::Reconnecting,
            "connection refused",
        );
        assert!(!health.all_healthy());
        stage.set("rabbitmq", ComponentState::Ready, "connected");
        stage.set(
            "postgres",
            ComponentState::Standby,
            "another process owns the slot",
        );
        assert!(health.all_healthy());
        assert_eq!(
            health.components(),
            vec![
                ComponentHealth {
                    name: "postgres".into(),
                    healthy: true,
                    state: ComponentState::Standby,
                },
                ComponentHealth {
                    name: "rabbitmq".into(),
                    healthy: true,
                    state: ComponentState::Ready,
                },
            ]
        );
        stage.set("slot_stream", ComponentState::Failed, "lagging");
        stage.remove("slot_stream");
        assert!(health.all_healthy());
    }

    #[test]
    fn readyz_names_states_and_never_the_reasons() {
        let health = Health::new();
        health.set(
            "rabbitmq",
            ComponentState::Reconnecting,
            "connection to amqp://walcast:s3cret@10.1.2.3:5672 refused: internal error xyz",
        );
        health.set(
            "capture",
            ComponentState::Standby,
            "another process owns the slot",
        );
        let components = health.components();
        let body = serde_json::to_string(&components).unwrap();
        assert!(!body.contains("s3cret") && !body.contains("xyz"), "{body}");
        assert_eq!(
            serde_json::to_value(&components).unwrap(),
            serde_json::json!([
                {"name": "capture", "healthy": true, "state": "standby"},
                {"name": "rabbitmq", "healthy": false, "state": "reconnecting"},
            ])
        );
        for state in [
            ComponentState::Starting,
            ComponentState::Connecting,
            ComponentState::Reconnecting,
            ComponentState::Ready,
            ComponentState::Standby,
            ComponentState::Blocked,
            ComponentState::QueueInUse,
            ComponentState::Unavailable,
            ComponentState::Failed,
        ] {
            assert_eq!(
                serde_json::to_value(state).unwrap(),
                serde_json::Value::String(state.as_str().into())
            );
        }
    }
}
