//! `walcast run`: wires the stages of the roles this process plays.
//!
//! - **capture**: holds the slot and publishes every change to RabbitMQ.
//!   Only one capture process may own a slot; another one started against
//!   the same slot waits as a hot standby (see [`capture::SlotLease`]).
//! - **gateway**: consumes this instance's queue and fans events out to
//!   browsers over Socket.IO.
//! - **api**: the HTTP API and the dashboard.
//!
//! Nothing here transforms data; it only starts, connects and stops stages.
//!
//! # Tasks and shutdown
//!
//! One [`CancellationToken`] tree (the caller's `shutdown`, then `stop`,
//! then each stage's session tokens) and one [`TaskTracker`]: every task
//! the roles start runs on it, the stages' own included (the tracker is
//! handed down: `SlotLease::acquire`, `CaptureOptions::tasks` for the
//! catalog's connection and the replication stream's writer,
//! `Publisher::connect_with_stats` for its engine, `HubOptions::tasks` for
//! the hub's, the socket layer's and the consumer's session tasks). Readiness
//! is one [`Health::mirror`] per stage state. On shutdown the capture stops
//! reading WAL, waits for outstanding confirms and sends a last standby
//! status; the gateway stops consuming, then closes the replay log (joining
//! its writer thread); [`run`] returns once the tracker is empty. The only
//! task on no tracker is the signal listener that cancels `shutdown`.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use axum::http::header::AUTHORIZATION;
use axum::response::Response;
use axum::routing::get;
use axum::serve::ListenerExt;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use std::sync::Arc;

use crate::api::{self, ApiState, Authenticator};
use crate::capture::{self, CaptureError, CaptureOptions, Metered, SlotLease, StreamState};
use crate::config::Config;
use crate::consumer::Consumer;
use crate::fanout::{self, AuthRequest, Authorizer, Hub, HubOptions};
use crate::health::{ComponentState, Health};
use crate::metrics::{CaptureHandles, Metrics};
use crate::publisher::{PublishError, Publisher};

/// A role `walcast run` can play.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Capture,
    Gateway,
    Api,
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "capture" => Ok(Role::Capture),
            "gateway" => Ok(Role::Gateway),
            "api" => Ok(Role::Api),
            other => Err(format!(
                "unknown role {other:?}; expected capture, gateway or api"
            )),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Capture => "capture",
            Role::Gateway => "gateway",
            Role::Api => "api",
        })
    }
}

/// The set of roles; all three when none is named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roles(pub BTreeSet<Role>);

impl Roles {
    pub fn all() -> Roles {
        Roles([Role::Capture, Role::Gateway, Role::Api].into())
    }

    pub fn has(&self, role: Role) -> bool {
        self.0.contains(&role)
    }
}

/// A stage's failure that stops the whole process: the first one is kept
/// and returned by [`run`].
type Failure = Arc<std::sync::Mutex<Option<anyhow::Error>>>;

/// Runs the given roles until `shutdown`, then drains and stops them.
pub async fn run(config: Config, roles: Roles, shutdown: CancellationToken) -> anyhow::Result<()> {
    let health = Health::new();
    let metrics = Metrics::new(health.clone());
    let tracker = TaskTracker::new();
    // A stage that fails for good stops the whole process: a sidecar that
    // silently stops capturing is worse than one that exits and restarts.
    let fatal = CancellationToken::new();
    let failure: Failure = Default::default();
    let stop = shutdown.child_token();

    check_exposure(&config, &roles).map_err(anyhow::Error::msg)?;
    // Bind first: a taken port is a configuration error, reported before
    // any stage has started connections that would then be torn down.
    let listener = TcpListener::bind(&config.http.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.http.listen))?;
    let address = listener.local_addr()?;
    // The steps that can fail come before any task is started (the hub
    // opens its replay log before it starts its own), so that an error
    // leaves nothing running behind it.
    let mut router = if roles.has(Role::Api) {
        let state = ApiState::new(&config, health.clone()).map_err(|e| anyhow::anyhow!("{e}"))?;
        metrics.watch_requests(state.stats().clone());
        api::router(state)
    } else {
        Router::new()
            .route("/healthz", get(api::healthz))
            .route("/readyz", get(readiness))
            .with_state(health.clone())
    };
    // Added after the API's layers: scrapes are not API requests to count.
    router = router.route(
        "/metrics",
        get(crate::metrics::serve).with_state(metrics.clone()),
    );
    if roles.has(Role::Gateway) {
        router = start_gateway(&config, &health, &metrics, &tracker, &stop, router)?;
    }
    if roles.has(Role::Capture) {
        start_capture(
            &config,
            &health,
            &metrics,
            &tracker,
            &stop,
            (&fatal, &failure),
        );
    }
    // The runtime's own count, not the setting: what `runtime.worker_threads`
    // came to on this host.
    let worker_threads = tokio::runtime::Handle::current().metrics().num_workers();
    info!(%address, roles = ?roles.0, worker_threads, "walcast is running");
    let serve_stop = stop.clone();
    let mut server = tracker.spawn(async move {
        // TCP_NODELAY: events are small writes that must leave at once;
        // Nagle's algorithm would hold them for the next ACK.
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, router)
            .with_graceful_shutdown(async move { serve_stop.cancelled().await })
            .await
    });

    tokio::select! {
        _ = shutdown.cancelled() => info!("shutting down"),
        _ = fatal.cancelled() => {}
    }
    stop.cancel();
    tracker.close();
    // The stages drain meanwhile; a server still held open by clients
    // after 10 s is ended, so that waiting for the tracker ends too.
    match tokio::time::timeout(Duration::from_secs(10), &mut server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => warn!(error = %e, "http server stopped with an error"),
        Ok(Err(e)) => warn!(error = %e, "http server task failed"),
        Err(_) => {
            warn!("http server did not stop within 10 s");
            server.abort();
        }
    }
    tracker.wait().await;
    let failure = failure.lock().unwrap_or_else(|p| p.into_inner()).take();
    match failure {
        Some(e) => Err(e),
        None => {
            info!("stopped");
            Ok(())
        }
    }
}

/// Starts the capture role on `tracker`: the slot poller and the capture
/// itself, whose failure cancels `fatal` and is kept in `failure`.
fn start_capture(
    config: &Config,
    health: &Health,
    metrics: &Metrics,
    tracker: &TaskTracker,
    stop: &CancellationToken,
    (fatal, failure): (&CancellationToken, &Failure),
) {
    // Registered before the server answers: until the capture task has
    // taken the lease (or found it taken), nothing has been checked.
    health.set("capture", ComponentState::Starting, "starting");
    let handles = metrics.capture(&config.postgres.slot);
    let (poll_config, slot, poll_stop) = (config.clone(), handles.slot.clone(), stop.clone());
    let poll_tasks = tracker.clone();
    tracker.spawn(async move {
        crate::metrics::poll_slot(slot, &poll_config, &poll_tasks, poll_stop).await
    });
    let (config, health, tasks, stop, fatal, failure) = (
        config.clone(),
        health.clone(),
        tracker.clone(),
        stop.clone(),
        fatal.clone(),
        failure.clone(),
    );
    tracker.spawn(async move {
        if let Err(e) = capture_role(&config, &health, &handles, &tasks, &stop).await {
            error!(error = %format!("{e:#}"), "capture stopped");
            *failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
            fatal.cancel();
        }
    });
}

/// Starts the gateway role on `tracker`: opens the hub, adds Socket.IO to
/// `router`, and runs the consumer and its readiness mirror. Once the
/// consumer has stopped, the replay log is closed (its writer thread
/// joined) before the tracker is done.
fn start_gateway(
    config: &Config,
    health: &Health,
    metrics: &Metrics,
    tracker: &TaskTracker,
    stop: &CancellationToken,
    router: Router,
) -> anyhow::Result<Router> {
    // A change republished after a nack can come up to a publish window
    // late; it is only recognised as new while what overtook it is
    // still held (src/fanout/replay.rs).
    if config.fanout.replay_buffer < config.rabbitmq.publish_window {
        warn!(
            replay_buffer = config.fanout.replay_buffer,
            publish_window = config.rabbitmq.publish_window,
            "fanout.replay_buffer is below rabbitmq.publish_window: a change \
             republished after a nack may be taken for a duplicate and dropped; \
             raise fanout.replay_buffer"
        );
    }
    let mut options = HubOptions::from_config(&config.fanout);
    // Metric labels name only the tables this gateway follows.
    options.tables = config.postgres.tables.clone();
    options.authorizer = Authenticator::from_config(&config.auth).map(socket_authorizer);
    options.tasks = tracker.clone();
    let hub = Hub::open(options, stop.clone())?;
    let (socket_layer, _io) = fanout::layer(&hub);
    // Last, so Socket.IO sees /socket.io/ before the API's routing.
    let router = router.layer(socket_layer);
    let consumer =
        Consumer::new(config.rabbitmq.clone(), hub.clone()).with_history_start(config.pg_config());
    let status = consumer.status();
    metrics.watch_gateway(hub.stats(), status.clone());
    health.set(
        "gateway",
        ComponentState::Connecting,
        "connecting to rabbitmq",
    );
    let consumer_stop = stop.clone();
    tracker.spawn(async move {
        consumer.run(consumer_stop).await;
        hub.close_replay_log().await;
    });
    let mirror = health
        .clone()
        .mirror("gateway", status.state(), stop.clone());
    let health = health.clone();
    tracker.spawn(async move {
        mirror.await;
        health.remove("gateway");
    });
    Ok(router)
}

/// Refuses to serve writes and change streams to anyone on the network by
/// accident: with auth off, a non-loopback `http.listen` needs
/// `auth.allow_anonymous = true`. A capture-only process serves nothing
/// but health and metrics, so it may listen anywhere.
fn check_exposure(config: &Config, roles: &Roles) -> Result<(), String> {
    if !(roles.has(Role::Api) || roles.has(Role::Gateway)) {
        return Ok(());
    }
    if config.auth.enabled || config.auth.allow_anonymous {
        return Ok(());
    }
    // validate() has already checked that it parses.
    let Ok(address) = config.http.listen.parse::<std::net::SocketAddr>() else {
        return Ok(());
    };
    if address.ip().is_loopback() {
        return Ok(());
    }
    Err(format!(
        "http.listen is {address}, which is reachable from other machines, and auth is off: \
         anyone who reaches it could write orders and read every change. Turn auth on \
         (auth.enabled = true with auth.tokens or auth.jwt_secret), listen on 127.0.0.1, or \
         set auth.allow_anonymous = true (WALCAST_AUTH_ALLOW_ANONYMOUS=true) to allow \
         anonymous access explicitly"
    ))
}

/// The Socket.IO handshake takes the same bearer tokens as the API's writes:
/// `auth.token`, or else an `Authorization: Bearer` header on the handshake
/// request, checked exactly like the API's (scheme in any case).
fn socket_authorizer(authenticator: Authenticator) -> Authorizer {
    Arc::new(move |request: AuthRequest| {
        let authenticator = authenticator.clone();
        Box::pin(async move {
            let verified = match (&request.token, request.headers.get(AUTHORIZATION)) {
                (Some(token), _) => authenticator.verify(token),
                (None, Some(header)) => authenticator.verify_header(Some(header)),
                (None, None) => {
                    return Err("a token is required (auth.token)".to_owned());
                }
            };
            verified.map_err(|e| e.to_string())
        })
    })
}

/// `/readyz` for processes without the API role: the health registry
/// alone, in the API's body shape.
async fn readiness(axum::extract::State(health): axum::extract::State<Health>) -> Response {
    api::readiness(health.components())
}

/// The capture role: wait for the slot lease (hot standby), then stream the
/// slot into RabbitMQ until shutdown; go back to waiting if the lease is lost.
async fn capture_role(
    config: &Config,
    health: &Health,
    handles: &CaptureHandles,
    tracker: &TaskTracker,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let pg = config.pg_config();
    let slot = &config.postgres.slot;
    let max_backoff = Duration::from_millis(config.postgres.max_backoff_ms);
    let mut attempt = 0u32;
    while !stop.is_cancelled() {
        // Not publishing (yet, or any more after a lost lease): what the
        // last session said about RabbitMQ and the stream no longer holds.
        health.remove("rabbitmq");
        health.remove("slot_stream");
        health.set(
            "capture",
            ComponentState::Connecting,
            "taking the slot lease",
        );
        // A hot standby is ready: it is doing what it should.
        let standby = || {
            health.set(
                "capture",
                ComponentState::Standby,
                "hot standby: another capture process owns the slot",
            )
        };
        let poll = Duration::from_secs(1);
        let lease = match SlotLease::acquire(&pg, slot, poll, tracker, stop, standby).await {
            Ok(Some(lease)) => lease,
            Ok(None) => break,
            Err(e) if e.is_retryable() => {
                attempt += 1;
                health.set(
                    "capture",
                    ComponentState::Reconnecting,
                    format_args!("postgres unreachable: {e}"),
                );
                warn!(error = %e, "cannot take the slot lease; retrying");
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(capture::reconnect_backoff(max_backoff).delay(attempt)) => {}
                }
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        attempt = 0;
        // Not ready until the publisher has connected and the stream runs:
        // registered now, not when they first report, so that /readyz does
        // not answer 200 while RabbitMQ has never been reached.
        health.set(
            "rabbitmq",
            ComponentState::Connecting,
            "not connected yet: connecting to rabbitmq",
        );
        health.set(
            "slot_stream",
            ComponentState::Starting,
            "waiting for the rabbitmq connection",
        );
        health.set("capture", ComponentState::Ready, "capturing");
        let session = stop.child_token();
        let outcome = tokio::select! {
            outcome = capture_with_lease(config, health, handles, tracker, &session) => outcome,
            _ = lease.lost() => {
                warn!(slot, "slot lease lost; stopping capture and waiting for it again");
                session.cancel();
                Ok(())
            }
        };
        lease.release(slot).await;
        outcome?;
    }
    health.remove("capture");
    health.remove("rabbitmq");
    health.remove("slot_stream");
    Ok(())
}

async fn capture_with_lease(
    config: &Config,
    health: &Health,
    handles: &CaptureHandles,
    tracker: &TaskTracker,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let stats = handles.publisher.clone();
    let connecting = Publisher::connect_with_stats(&config.rabbitmq, stop.clone(), stats, tracker);
    let mut publisher = match connecting.await {
        Ok(publisher) => publisher,
        Err(PublishError::Shutdown) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    // The publisher's link and the stream's state, mirrored into the health
    // registry for /readyz while this session lasts. Both mirrors end with
    // it even when it is dropped midway (a lost lease): the link's by the
    // guard, the stream's with its sender, which goes with the options.
    let link_over = CancellationToken::new();
    let _link_over = link_over.clone().drop_guard();
    let link = publisher.stats().link();
    let rabbitmq = tracker.spawn(health.clone().mirror("rabbitmq", link, link_over.clone()));
    let (state_sender, state) = tokio::sync::watch::channel(StreamState::Connecting);
    let slot_stream = tracker.spawn(health.clone().mirror(
        "slot_stream",
        state,
        CancellationToken::new(),
    ));
    let options = CaptureOptions {
        pg: config.pg_config(),
        application_name: config.postgres.application_name.clone(),
        slot: config.postgres.slot.clone(),
        publications: vec![config.postgres.publication.clone()],
        tables: config.tables(),
        // After a lost lease (e.g. Postgres restarted), resume from what
        // RabbitMQ already confirmed: a restarted Postgres 15/16 may have
        // moved the slot back to its last saved position, which would re-send
        // everything since (the start never goes before the slot's own).
        start: handles
            .capture
            .durable_lsn()
            .unwrap_or(crate::event::Lsn::ZERO),
        advance_slot: true,
        create_temporary_slot: false,
        status_interval: Duration::from_millis(config.postgres.status_interval_ms),
        feedback_interval: Duration::from_millis(config.postgres.feedback_interval_ms),
        max_backoff: Duration::from_millis(config.postgres.max_backoff_ms),
        state: Some(state_sender),
        tasks: tracker.clone(),
    };
    let mut sink = Metered::new(&mut publisher, handles.capture.clone());
    let result = capture::run(&options, &mut sink, stop.clone()).await;
    // The stream's mirror ends with its sender, having copied the last
    // state; the publisher's before it closes (no "reconnecting" at exit).
    drop(options);
    let _ = slot_stream.await;
    link_over.cancel();
    let _ = rabbitmq.await;
    publisher.close().await;
    match result {
        Ok(summary) => {
            if let Some(lsn) = summary.flushed {
                info!(flushed = %lsn, "capture stopped; final flushed position");
            }
            Ok(())
        }
        // Shutdown while the publisher waited for the broker: the drain
        // already ran; Postgres replays from the last confirmed position.
        Err(CaptureError::Sink(_)) if stop.is_cancelled() => Ok(()),
        Err(e) => {
            health.set("slot_stream", ComponentState::Failed, &e);
            Err(e.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_parse() {
        assert_eq!("capture".parse::<Role>(), Ok(Role::Capture));
        assert!("nope".parse::<Role>().unwrap_err().contains("capture"));
    }

    #[test]
    fn a_non_loopback_listener_needs_auth_or_an_explicit_allow_anonymous() {
        let mut config = Config::default();
        let all = Roles::all();
        for loopback in ["127.0.0.1:8080", "[::1]:8080", "127.0.0.2:0"] {
            config.http.listen = loopback.into();
            assert_eq!(check_exposure(&config, &all), Ok(()), "{loopback}");
        }
        for open in ["0.0.0.0:8080", "[::]:8080", "10.1.2.3:80"] {
            config.http.listen = open.into();
            let error = check_exposure(&config, &all).unwrap_err();
            assert!(
                error.contains("auth.allow_anonymous = true") && error.contains(open),
                "{error}"
            );
            let capture_only = Roles([Role::Capture].into());
            assert_eq!(check_exposure(&config, &capture_only), Ok(()));
            config.auth.allow_anonymous = true;
            assert_eq!(check_exposure(&config, &all), Ok(()));
            config.auth.allow_anonymous = false;
            config.auth.enabled = true;
            assert_eq!(check_exposure(&config, &all), Ok(()));
            config.auth.enabled = false;
        }
    }
}
