//! The consumer's state as readiness and metrics see it: a cloneable
//! [`ConsumerStatus`] over shared counters and a watch of the
//! [`ConsumerState`] (which readiness mirrors), and the probe that notices
//! when a standby gateway (quorum queue, single active consumer) becomes
//! the active one.
//!
//! It only records and reports: the session in `consumer` sets the state.
//! [`ConsumerStatus::register`] adds the `walcast_consumer_*` families to
//! the process's registry; they are read from the counters at each scrape.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::DeadReason;
use crate::amqp;
use crate::health::{ComponentState, StageState};

/// How often a standby gateway (quorum queue, single active consumer)
/// checks whether it has become the active one.
const STANDBY_PROBE_INTERVAL: Duration = Duration::from_secs(2);

/// What the consumer is doing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ConsumerState {
    /// Not consuming: connecting, or waiting to reconnect.
    #[default]
    Connecting,
    /// A consuming session is up.
    Consuming,
    /// Consuming a quorum queue as a waiting single active consumer:
    /// another gateway gets the deliveries until it goes.
    Standby,
    /// The broker refuses to let this gateway consume (its queue is taken
    /// by another gateway, or exists with another type); why.
    Refused(String),
}

/// How `/readyz` shows the gateway. Reasons (the queue and the fix) go to
/// the log, never to `/readyz` (the consumer logs them as errors too). A
/// standby is up but gets nothing while another gateway is active: not
/// ready, so a load balancer sends it no browsers.
impl StageState for ConsumerState {
    fn health(&self) -> (ComponentState, String) {
        match self {
            ConsumerState::Connecting => (
                ComponentState::Connecting,
                "connecting to rabbitmq".to_owned(),
            ),
            ConsumerState::Consuming => (ComponentState::Ready, "consuming".to_owned()),
            ConsumerState::Standby => (
                ComponentState::QueueInUse,
                "standby: another gateway is the single active consumer of this queue".to_owned(),
            ),
            ConsumerState::Refused(reason) => (ComponentState::QueueInUse, reason.clone()),
        }
    }
}

#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) state: watch::Sender<ConsumerState>,
    pub(super) sessions: AtomicU64,
    pub(super) received: AtomicU64,
    pub(super) acked: AtomicU64,
    pub(super) rejected: AtomicU64,
    pub(super) redelivered: AtomicU64,
    /// Dead letters, by [`DeadReason::ALL`] index.
    pub(super) dead_letters: [AtomicU64; 4],
}

/// A cloneable view of the consumer's state, for readiness and metrics.
#[derive(Debug, Clone, Default)]
pub struct ConsumerStatus(pub(super) Arc<Counters>);

impl ConsumerStatus {
    /// What the consumer is doing, now and on every change.
    pub fn state(&self) -> watch::Receiver<ConsumerState> {
        self.0.state.subscribe()
    }
    /// Whether a consuming session is up (as the active consumer or as a
    /// standby).
    pub fn is_consuming(&self) -> bool {
        matches!(
            *self.0.state.borrow(),
            ConsumerState::Consuming | ConsumerState::Standby
        )
    }
    /// Whether this gateway consumes a quorum queue but is not its single
    /// active consumer (another gateway is): it gets no deliveries and
    /// takes over when the active one goes.
    pub fn is_standby(&self) -> bool {
        *self.0.state.borrow() == ConsumerState::Standby
    }
    /// Sessions started (1 + reconnects that got as far as consuming).
    pub fn sessions(&self) -> u64 {
        self.0.sessions.load(Ordering::Relaxed)
    }
    pub fn received(&self) -> u64 {
        self.0.received.load(Ordering::Relaxed)
    }
    pub fn acked(&self) -> u64 {
        self.0.acked.load(Ordering::Relaxed)
    }
    /// Messages dead-lettered for `reason`.
    pub fn dead_letters(&self, reason: DeadReason) -> u64 {
        let i = DeadReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        self.0.dead_letters[i].load(Ordering::Relaxed)
    }
    /// Deliveries not taken by the hub: dead-lettered (any reason).
    pub fn rejected(&self) -> u64 {
        self.0.rejected.load(Ordering::Relaxed)
    }
    /// Deliveries the broker flagged as redelivered.
    pub fn redelivered(&self) -> u64 {
        self.0.redelivered.load(Ordering::Relaxed)
    }
    /// Why the broker refuses to let this gateway consume (its queue is
    /// taken by another gateway, or exists with another type), while it
    /// does; `None` once consuming.
    pub fn refused(&self) -> Option<String> {
        match &*self.0.state.borrow() {
            ConsumerState::Refused(reason) => Some(reason.clone()),
            _ => None,
        }
    }

    /// Adds the `walcast_consumer_*` families to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register_collector(Box::new(Families(self.clone())));
    }

    /// The broker refused to let this gateway consume (`Some`), or did
    /// not (`None`: a refusal shown so far no longer holds).
    pub(super) fn set_refused(&self, reason: Option<String>) {
        self.0.state.send_if_modified(|state| match reason {
            Some(reason) => {
                *state = ConsumerState::Refused(reason);
                true
            }
            None if matches!(state, ConsumerState::Refused(_)) => {
                *state = ConsumerState::Connecting;
                true
            }
            None => false,
        });
    }

    /// Consuming started, as a standby or as the active consumer.
    pub(super) fn started(&self, standby: bool) {
        self.set(if standby {
            ConsumerState::Standby
        } else {
            ConsumerState::Consuming
        });
    }

    /// A standby became the active consumer (a no-op otherwise: this runs
    /// on every delivery).
    pub(super) fn became_active(&self) {
        // A shared read first: this runs on every delivery, and only a
        // standby's first delivery changes anything.
        if *self.0.state.borrow() != ConsumerState::Standby {
            return;
        }
        self.0.state.send_if_modified(|state| {
            let standby = *state == ConsumerState::Standby;
            if standby {
                *state = ConsumerState::Consuming;
            }
            standby
        });
    }

    /// The session ended; a refusal, if one is shown, stays.
    pub(super) fn stopped(&self) {
        self.0.state.send_if_modified(|state| {
            let consuming = matches!(state, ConsumerState::Consuming | ConsumerState::Standby);
            if consuming {
                *state = ConsumerState::Connecting;
            }
            consuming
        });
    }

    fn set(&self, new: ConsumerState) {
        self.0.state.send_if_modified(|state| {
            let changed = *state != new;
            *state = new;
            changed
        });
    }
}

/// One unlabelled counter family, `value` read at this scrape.
fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    ConstCounter::new(value).encode(encoder.encode_descriptor(
        name,
        help,
        None,
        MetricType::Counter,
    )?)
}

/// The consumer's families, read from its counters at each scrape.
#[derive(Debug)]
struct Families(ConsumerStatus);

impl Collector for Families {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let status = &self.0;
        counter(
            &mut encoder,
            "walcast_consumer_received",
            "Deliveries received from this gateway's RabbitMQ queue.",
            status.received(),
        )?;
        counter(
            &mut encoder,
            "walcast_consumer_acked",
            "Deliveries acknowledged after the fan-out took them.",
            status.acked(),
        )?;
        counter(
            &mut encoder,
            "walcast_consumer_rejected",
            "Deliveries not taken by the fan-out (dead-lettered, any reason).",
            status.rejected(),
        )?;
        let mut dead = encoder.encode_descriptor(
            "walcast_consumer_dead_letters",
            "Messages published to the dead-letter queue (rabbitmq.dead_letter), by x-walcast-reason.",
            None,
            MetricType::Counter,
        )?;
        for reason in DeadReason::ALL {
            let labels = [("reason", reason.as_str())];
            ConstCounter::new(status.dead_letters(reason)).encode(dead.encode_family(&labels)?)?;
        }
        counter(
            &mut encoder,
            "walcast_consumer_redelivered",
            "Deliveries RabbitMQ flagged as redelivered.",
            status.redelivered(),
        )?;
        counter(
            &mut encoder,
            "walcast_consumer_sessions",
            "Consuming sessions started (1 + reconnects).",
            status.sessions(),
        )?;
        let consuming = ConstGauge::new(i64::from(status.is_consuming()));
        consuming.encode(encoder.encode_descriptor(
            "walcast_consumer_consuming",
            "Whether a consuming session is up.",
            None,
            consuming.metric_type(),
        )?)
    }
}

/// Watches a standby gateway's queue until this gateway is its single
/// active consumer: it received a delivery, or it is the queue's only
/// consumer. AMQP 0-9-1 does not announce the switch, so it polls.
pub(super) async fn watch_standby(
    probe: lapin::Channel,
    queue: String,
    status: ConsumerStatus,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(STANDBY_PROBE_INTERVAL) => {}
        }
        if !status.is_standby() {
            return;
        }
        // Cancellable: on a connection that died under it the probe may
        // never be answered, and shutdown waits for this task.
        let consumers = tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            consumers = amqp::consumer_count(&probe, &queue) => consumers,
        };
        match consumers {
            Ok(consumers) if consumers <= 1 => {
                status.became_active();
                info!("the other consumer is gone: this gateway is the active consumer");
                return;
            }
            Ok(_) => {}
            Err(e) => {
                debug!(error = %e, "standby probe failed; the session will notice");
                return;
            }
        }
    }
}
