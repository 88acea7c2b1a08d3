//! The replication slot's families and the poller that feeds them:
//! [`poll_slot`] asks the catalog for the slot's row of
//! `pg_replication_slots` every few seconds and keeps the latest answer in
//! [`SlotStats`]. The query itself lives in `catalog`; this module only
//! schedules it, bounds it by a timeout and, at each scrape, encodes the
//! latest answer ([`SlotStats::register`]).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::catalog::{Catalog, SlotInfo};
use crate::config::Config;
use crate::event::Lsn;

/// How often [`poll_slot`] reads `pg_replication_slots`.
pub const SLOT_POLL_INTERVAL: Duration = Duration::from_secs(5);

/// How long one slot poll (connecting included) may take. A Postgres that
/// answers slower than this is reported as a failed poll.
pub const SLOT_POLL_TIMEOUT: Duration = Duration::from_secs(2);

/// The latest answer of `pg_replication_slots` for one slot, kept by
/// [`poll_slot`]. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SlotStats(Arc<Mutex<SlotState>>);

#[derive(Debug)]
struct SlotState {
    slot: String,
    last_poll_ok: bool,
    failures: u64,
    /// From the last successful poll; `None` when the slot did not exist.
    info: Option<SlotInfo>,
}

impl SlotStats {
    pub fn new(slot: &str) -> SlotStats {
        SlotStats(Arc::new(Mutex::new(SlotState {
            slot: slot.to_owned(),
            last_poll_ok: false,
            failures: 0,
            info: None,
        })))
    }

    /// The slot's confirmed_flush_lsn from the last successful poll.
    pub fn confirmed_flush_lsn(&self) -> Option<Lsn> {
        let state = self.lock();
        state
            .info
            .as_ref()?
            .confirmed_flush_lsn
            .as_deref()?
            .parse()
            .ok()
    }

    /// Adds the `walcast_slot_*` families to `registry`, read from the last
    /// poll at each scrape.
    pub fn register(&self, registry: &mut Registry) {
        registry.register_collector(Box::new(Families(self.clone())));
    }

    pub(super) fn record(&self, info: Option<SlotInfo>) {
        let mut state = self.lock();
        state.last_poll_ok = true;
        state.info = info;
    }

    pub(super) fn record_failure(&self) {
        let mut state = self.lock();
        state.last_poll_ok = false;
        state.failures += 1;
    }

    fn lock(&self) -> MutexGuard<'_, SlotState> {
        // Single-field updates: a poisoned lock holds consistent data.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Reads the slot's row of `pg_replication_slots` into `stats` every
/// [`SLOT_POLL_INTERVAL`] until `stop`. Each poll, connecting included, is
/// bounded by [`SLOT_POLL_TIMEOUT`]; a failed or slow poll drops the
/// connection and is retried at the next interval. The connection's task
/// runs on `tasks`.
pub async fn poll_slot(
    stats: SlotStats,
    config: &Config,
    tasks: &TaskTracker,
    stop: CancellationToken,
) {
    let mut pg = config.pg_config();
    pg.application_name(format!("{}-metrics", config.postgres.application_name));
    pg.connect_timeout(SLOT_POLL_TIMEOUT);
    let slot = config.postgres.slot.clone();
    let mut catalog: Option<Catalog> = None;
    let mut failing = false;
    loop {
        let poll = async {
            if catalog.is_none() {
                catalog = Some(Catalog::connect_on(&pg, tasks).await?);
            }
            match &catalog {
                Some(catalog) => catalog.slot(&slot).await,
                None => unreachable!("connected above"),
            }
        };
        let error = match tokio::time::timeout(SLOT_POLL_TIMEOUT, poll).await {
            Ok(Ok(info)) => {
                stats.record(info);
                if failing {
                    info!(slot, "reading the slot's metrics works again");
                    failing = false;
                }
                None
            }
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some(format!(
                "no answer within {} ms",
                SLOT_POLL_TIMEOUT.as_millis()
            )),
        };
        if let Some(error) = error {
            // A fresh connection next time: this one may be stuck.
            catalog = None;
            stats.record_failure();
            if !failing {
                warn!(slot, %error, "cannot read the slot's metrics from pg_replication_slots; retrying");
                failing = true;
            }
        }
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(SLOT_POLL_INTERVAL) => {}
        }
    }
}

/// One gauge family with the slot's label, `value` from the last poll.
fn gauge(
    encoder: &mut DescriptorEncoder,
    labels: &[(&str, &str)],
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    ConstGauge::new(value).encode(
        encoder
            .encode_descriptor(name, help, None, MetricType::Gauge)?
            .encode_family(&labels)?,
    )
}

/// The slot's families, from the last poll.
#[derive(Debug)]
struct Families(SlotStats);

impl Collector for Families {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let state = self.0.lock();
        let labels = [("slot", state.slot.as_str())];
        gauge(
            &mut encoder,
            &labels,
            "walcast_slot_poll_success",
            "Whether the last read of pg_replication_slots succeeded within its timeout.",
            i64::from(state.last_poll_ok),
        )?;
        ConstCounter::new(state.failures).encode(
            encoder
                .encode_descriptor(
                    "walcast_slot_poll_failures",
                    "Reads of pg_replication_slots that failed or timed out.",
                    None,
                    MetricType::Counter,
                )?
                .encode_family(&labels)?,
        )?;
        if !state.last_poll_ok {
            return Ok(());
        }
        gauge(
            &mut encoder,
            &labels,
            "walcast_slot_exists",
            "Whether the replication slot exists.",
            i64::from(state.info.is_some()),
        )?;
        let Some(info) = &state.info else {
            return Ok(());
        };
        gauge(
            &mut encoder,
            &labels,
            "walcast_slot_active",
            "Whether a replication connection is streaming from the slot.",
            i64::from(info.active),
        )?;
        let confirmed = info
            .confirmed_flush_lsn
            .as_deref()
            .and_then(|text| text.parse::<Lsn>().ok());
        let gauges = [
            (
                "walcast_slot_confirmed_flush_lsn",
                "The slot's confirmed_flush_lsn, as a WAL position in bytes.",
                confirmed.and_then(|lsn| i64::try_from(lsn.0).ok()),
            ),
            (
                "walcast_slot_retained_wal_bytes",
                "WAL the server keeps for the slot: current WAL position minus restart_lsn.",
                info.retained_wal_bytes,
            ),
            (
                "walcast_slot_safe_wal_size_bytes",
                "WAL that can still be written before the slot is invalidated (max_slot_wal_keep_size).",
                info.safe_wal_size,
            ),
        ];
        for (name, help, value) in gauges {
            if let Some(value) = value {
                gauge(&mut encoder, &labels, name, help, value)?;
            }
        }
        Ok(())
    }
}
