//! The health registry: every stage of every role (capture, gateway, API)
//! reports its [`ComponentState`] here under its component name, and
//! `/readyz` (`api::health`) and `/metrics` serve what it holds.
//!
//! Stages publish their state on a [`tokio::sync::watch`]; one generic
//! task per stage, [`Health::mirror`], copies every change into the
//! registry as it happens (no polling). A state type says how it reads on
//! `/readyz` by implementing [`StageState`].
//!
//! The registry only holds what stages tell it; it does not probe them and
//! serves no HTTP. Each report's reason goes to the log when the state
//! changes, never to `/readyz` (contract section 4).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

/// What a component is doing, as `/readyz` names it. Only `ready` and
/// `standby` count as healthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ComponentState {
    /// Registered, not connected yet.
    Starting,
    /// Making its first connection.
    Connecting,
    /// Lost its connection; retrying with backoff.
    Reconnecting,
    /// Doing its job.
    Ready,
    /// A hot standby: another process holds the slot; healthy.
    Standby,
    /// The broker blocks publishing (a resource alarm).
    Blocked,
    /// The gateway's queue is consumed by another gateway; it retries and
    /// takes the queue over when that one goes. The log names the fix.
    QueueInUse,
    /// A dependency does not answer.
    Unavailable,
    /// Stopped on an error a retry will not heal; the log says which.
    Failed,
}

impl ComponentState {
    pub fn is_healthy(self) -> bool {
        matches!(self, ComponentState::Ready | ComponentState::Standby)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ComponentState::Starting => "starting",
            ComponentState::Connecting => "connecting",
            ComponentState::Reconnecting => "reconnecting",
            ComponentState::Ready => "ready",
            ComponentState::Standby => "standby",
            ComponentState::Blocked => "blocked",
            ComponentState::QueueInUse => "queue_in_use",
            ComponentState::Unavailable => "unavailable",
            ComponentState::Failed => "failed",
        }
    }
}

impl std::fmt::Display for ComponentState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stage's state as the registry shows it: the component's state, and
/// why (for the log only).
pub trait StageState {
    fn health(&self) -> (ComponentState, String);
}

/// The state of one component as last reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ComponentHealth {
    #[schema(example = "rabbitmq")]
    pub name: String,
    pub healthy: bool,
    /// What the component is doing; why goes to the log, never here.
    #[schema(example = "ready")]
    pub state: ComponentState,
}

/// A shared registry of component health, e.g. `"postgres"`, `"rabbitmq"`,
/// `"slot_stream"`. Cheap to clone; every clone is the same registry.
#[derive(Debug, Clone, Default)]
pub struct Health {
    components: Arc<Mutex<BTreeMap<&'static str, ComponentState>>>,
}

impl Health {
    pub fn new() -> Health {
        Health::default()
    }

    /// Records a component's state; `reason` (which may hold error text)
    /// is logged when the state changes and is never shown on `/readyz`.
    /// A component, once set, counts for readiness until
    /// [`Health::remove`]d. Repeated reports of the same state are not
    /// logged. A component's first report, when it is not healthy yet, is a
    /// start, not a fault: logged at info.
    pub fn set(&self, component: &'static str, state: ComponentState, reason: impl fmt::Display) {
        let previous = self.lock().insert(component, state);
        let state_name = state.as_str();
        match (previous, state.is_healthy()) {
            (Some(was), _) if was == state => {}
            (_, true) => {
                tracing::info!(component, state = state_name, %reason, "component healthy")
            }
            (None, false) => {
                tracing::info!(component, state = state_name, %reason, "component starting")
            }
            (Some(was), false) if !was.is_healthy() => {
                tracing::info!(component, state = state_name, %reason, "component still not ready")
            }
            (Some(_), false) => {
                tracing::warn!(component, state = state_name, %reason, "component unhealthy")
            }
        }
    }

    /// Mirrors a stage's `state` into `component`: sets it now and on every
    /// change, until the stage drops its sender or `stop` is cancelled. It
    /// leaves the last state registered; removing it is the caller's call.
    pub async fn mirror<S: StageState>(
        self,
        component: &'static str,
        mut state: watch::Receiver<S>,
        stop: CancellationToken,
    ) {
        loop {
            // Not held across the await: the stage's sends never wait on
            // this task.
            let (now, reason) = state.borrow_and_update().health();
            self.set(component, now, reason);
            tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                changed = state.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
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
            .map(|(name, state)| ComponentHealth {
                name: (*name).to_owned(),
                healthy: state.is_healthy(),
                state: *state,
            })
            .collect()
    }

    /// Whether every registered component is healthy (true when none is).
    pub fn all_healthy(&self) -> bool {
        self.lock().values().all(|state| state.is_healthy())
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<&'static str, ComponentState>> {
        // A panic while holding this lock cannot leave the map half
        // updated (single inserts/removes), so a poisoned lock is usable.
        self.components
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Copy)]
    enum Link {
        Up,
        Down,
    }

    impl StageState for Link {
        fn health(&self) -> (ComponentState, String) {
            match self {
                Link::Up => (ComponentState::Ready, "up".into()),
                Link::Down => (ComponentState::Reconnecting, "down".into()),
            }
        }
    }

    fn state_of(health: &Health, name: &str) -> Option<ComponentState> {
        let components = health.components();
        components
            .into_iter()
            .find(|c| c.name == name)
            .map(|c| c.state)
    }

    /// Lets the other tasks run until `done`, for at most 100 yields: far
    /// less than any polling interval, so what `done` waits for must
    /// follow from the change itself, not from a timer.
    async fn settle(what: &str, mut done: impl FnMut() -> bool) {
        for _ in 0..100 {
            if done() {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("{what} did not happen within 100 yields");
    }

    #[tokio::test]
    async fn every_change_reaches_health_at_once_and_the_mirror_ends_with_the_sender() {
        let health = Health::new();
        let (sender, receiver) = watch::channel(Link::Down);
        let mirror = tokio::spawn(health.clone().mirror(
            "rabbitmq",
            receiver,
            CancellationToken::new(),
        ));
        let reads = |state| {
            let health = health.clone();
            move || state_of(&health, "rabbitmq") == Some(state)
        };
        settle("the first state", reads(ComponentState::Reconnecting)).await;
        sender.send_replace(Link::Up);
        settle("up", reads(ComponentState::Ready)).await;
        assert!(health.all_healthy());
        sender.send_replace(Link::Down);
        settle("down again", reads(ComponentState::Reconnecting)).await;

        drop(sender);
        settle("the mirror ending", || mirror.is_finished()).await;
        mirror.await.unwrap();
        // The last state stays registered until someone removes it.
        assert_eq!(
            state_of(&health, "rabbitmq"),
            Some(ComponentState::Reconnecting)
        );
    }

    #[tokio::test]
    async fn the_mirror_ends_on_stop_while_the_stage_lives_on() {
        let health = Health::new();
        let (sender, receiver) = watch::channel(Link::Up);
        let stop = CancellationToken::new();
        let mirror = tokio::spawn(health.clone().mirror("gateway", receiver, stop.clone()));
        settle("the first state", || {
            state_of(&health, "gateway") == Some(ComponentState::Ready)
        })
        .await;
        stop.cancel();
        settle("the mirror ending", || mirror.is_finished()).await;
        mirror.await.unwrap();
        sender.send_replace(Link::Down);
        tokio::task::yield_now().await;
        assert_eq!(
            state_of(&health, "gateway"),
            Some(ComponentState::Ready),
            "a stopped mirror copies nothing"
        );
    }
}
