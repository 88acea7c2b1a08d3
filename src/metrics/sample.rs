//! Test-only: a [`Metrics`] with every role wired and a sample in every
//! family it can fill from inside the crate, and the per-event hot path of
//! the capture role's counters, for instruction counts.
//!
//! `print_exposition` and `hot_path` are `#[ignore]`d tools, not checks:
//!
//! ```text
//! cargo test --lib metrics::sample::print_exposition -- --ignored --nocapture
//! WALCAST_HOT_PATH_EVENTS=20000 valgrind --tool=callgrind <test binary> \
//!     metrics::sample::hot_path --ignored --exact
//! ```

use std::time::Duration;

use axum::http::{Method, StatusCode};
use futures_util::FutureExt;

use super::Metrics;
use crate::api::{ComponentState, Health, RequestStats};
use crate::capture::{Metered, Sink};
use crate::catalog::SlotInfo;
use crate::consumer::ConsumerStatus;
use crate::event::{ChangeEvent, Lsn, Op, PgTimestamp};
use crate::fanout::{DisconnectReason, FanoutStats};

/// A sink that takes everything at once and keeps nothing.
struct Discard;

impl Sink for Discard {
    type Error = std::io::Error;
    async fn send(&mut self, _event: ChangeEvent) -> Result<(), Self::Error> {
        Ok(())
    }
    async fn end_transaction(&mut self, _end_lsn: Lsn) -> Result<(), Self::Error> {
        Ok(())
    }
    async fn durable(&mut self) -> Result<Lsn, Self::Error> {
        Ok(Lsn(0x200))
    }
    async fn drain(&mut self) -> Result<Option<Lsn>, Self::Error> {
        Ok(Some(Lsn(0x200)))
    }
}

/// A streaming slot as `pg_replication_slots` describes it.
pub(super) fn slot_info() -> SlotInfo {
    SlotInfo {
        slot_name: "walcast".into(),
        plugin: Some("pgoutput".into()),
        slot_type: "logical".into(),
        database: Some("walcast".into()),
        temporary: false,
        active: true,
        active_pid: Some(42),
        restart_lsn: Some("0/16B3700".into()),
        confirmed_flush_lsn: Some("0/16B3800".into()),
        retained_wal_bytes: Some(4096),
        wal_status: Some("reserved".into()),
        safe_wal_size: Some(1 << 30),
    }
}

/// Every role wired, with a sample in each family that the crate can fill
/// without a broker: the consumer's counters are only zeros.
pub(super) fn populated() -> Metrics {
    let health = Health::new();
    health.set("rabbitmq", ComponentState::Reconnecting, "reconnecting");
    let metrics = Metrics::new(health);

    let capture = metrics.capture("walcast");
    let mut inner = Discard;
    let mut sink = Metered::new(&mut inner, capture.capture.clone());
    for (table, op) in [
        ("orders", Op::Insert),
        ("orders", Op::Insert),
        ("items", Op::Delete),
    ] {
        sink.send(ChangeEvent::bare(table, op, PgTimestamp::now()))
            .now_or_never()
            .unwrap()
            .unwrap();
    }
    sink.filtered(Op::Insert);
    sink.backfill_chunk(2, 1);
    sink.end_transaction(Lsn(0x200))
        .now_or_never()
        .unwrap()
        .unwrap();
    sink.durable().now_or_never().unwrap().unwrap();

    let publisher = &capture.publisher;
    publisher.published("public.orders.insert", false);
    publisher.published("public.orders.insert", true);
    publisher.confirmed("public.orders.insert", Duration::from_millis(3));
    publisher.oversize("public.items.delete");
    publisher.nacked();
    publisher.returned();
    publisher.refused();
    publisher.reconnected();
    publisher.set_connected(true);

    capture.slot.record(Some(slot_info()));

    let fanout = FanoutStats::for_tables(&["orders".into()]);
    fanout.record_delivered("public.orders", Op::Insert);
    fanout.record_delivered("public.items", Op::Delete);
    fanout.record_duplicate();
    fanout.record_malformed();
    fanout.record_source_change();
    fanout.record_emitted(3);
    fanout.record_disconnect(DisconnectReason::QueueFull);
    fanout.record_resync();
    fanout.record_connect_refused();
    fanout.set_connected_sockets(2);
    fanout.set_buffer(5, 1000);
    metrics.watch_gateway(fanout, ConsumerStatus::default());

    let requests = RequestStats::default();
    requests.record(
        &Method::GET,
        "/orders/{id}",
        StatusCode::NOT_FOUND,
        Duration::from_millis(250),
    );
    requests.record(
        &Method::POST,
        "/orders",
        StatusCode::CREATED,
        Duration::from_millis(4),
    );
    metrics.watch_requests(requests);
    metrics
}

#[test]
#[ignore = "a tool: prints the exposition of every role"]
fn print_exposition() {
    print!("{}", populated().render().unwrap());
}

/// What the capture role counts per change on the drain path: the metered
/// sink (decoded by table and op, commit-to-publish lag), the publisher's
/// publish and confirm (by routing key, confirm latency), and one
/// transaction per ten changes. `WALCAST_HOT_PATH_EVENTS` changes (default
/// 1000); `WALCAST_HOT_PATH_BARE=1` runs the same loop without counting, the
/// baseline to subtract.
#[test]
#[ignore = "a tool: run under callgrind to count instructions per change"]
fn hot_path() {
    let events: u64 = std::env::var("WALCAST_HOT_PATH_EVENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000);
    let bare = std::env::var_os("WALCAST_HOT_PATH_BARE").is_some();
    let metrics = Metrics::new(Health::new());
    let capture = metrics.capture("walcast");
    let publisher = capture.publisher.clone();
    let template = ChangeEvent::bare("orders", Op::Insert, PgTimestamp::now());
    let routing_key = String::from("public.orders.insert");
    let mut inner = Discard;
    if bare {
        for n in 0..events {
            inner
                .send(std::hint::black_box(template.clone()))
                .now_or_never()
                .unwrap()
                .unwrap();
            if n % 10 == 9 {
                inner
                    .end_transaction(Lsn(n))
                    .now_or_never()
                    .unwrap()
                    .unwrap();
            }
            std::hint::black_box(&routing_key);
        }
        return;
    }
    let mut sink = Metered::new(&mut inner, capture.capture.clone());
    for n in 0..events {
        sink.send(std::hint::black_box(template.clone()))
            .now_or_never()
            .unwrap()
            .unwrap();
        publisher.published(std::hint::black_box(&routing_key), false);
        publisher.confirmed(&routing_key, Duration::from_micros(1500));
        if n % 10 == 9 {
            sink.end_transaction(Lsn(n))
                .now_or_never()
                .unwrap()
                .unwrap();
        }
    }
}
