//! The capture role's families: what the capture loop decoded and handed
//! over, and what the publisher published and RabbitMQ confirmed. Reads the
//! stages' handles; counts nothing.

use super::render::{Exposition, Kind};
use crate::capture::CaptureStats;
use crate::publisher::PublisherStats;

pub(super) fn render_capture(out: &mut Exposition, capture: &CaptureStats) {
    let name = "walcast_capture_changes_decoded_total";
    out.family(
        name,
        Kind::Counter,
        "Changes decoded from the slot and handed to the publisher, by table and op.",
    );
    for decoded in capture.decoded() {
        let table = format!("{}.{}", decoded.schema, decoded.table);
        out.sample(
            name,
            &[("table", &table), ("op", decoded.op.as_str())],
            decoded.count,
        );
    }
    out.counter(
        "walcast_capture_transactions_total",
        "Transactions whose every change was handed to the publisher.",
        capture.transactions(),
    );
    out.histogram(
        "walcast_capture_commit_to_publish_lag_seconds",
        "Time from a change's commit in Postgres to its hand-over to the publisher.",
        &capture.commit_to_publish_lag(),
    );
    if let Some(lag) = capture.last_commit_to_publish_lag() {
        out.gauge(
            "walcast_capture_last_commit_to_publish_lag_seconds",
            "Commit-to-publish lag of the last change handed to the publisher.",
            lag.as_secs_f64(),
        );
    }
    if let Some(lsn) = capture.durable_lsn() {
        out.gauge(
            "walcast_capture_durable_lsn",
            "WAL position (bytes) up to which RabbitMQ confirmed every change; reported to Postgres as flushed.",
            lsn.0,
        );
    }
    let backfill = capture.backfill();
    out.counter(
        "walcast_backfill_rows_total",
        "Rows a backfill published as read events (walcast backfill).",
        backfill.rows,
    );
    out.counter(
        "walcast_backfill_rows_dropped_total",
        "Rows a backfill read but left out because they changed inside their chunk's window.",
        backfill.dropped,
    );
    out.counter(
        "walcast_backfill_chunks_total",
        "Backfill chunks whose high watermark the capture processed.",
        backfill.chunks,
    );
    let name = "walcast_capture_changes_filtered_total";
    out.family(
        name,
        Kind::Counter,
        "Changes of tables outside postgres.tables that the publication sent and walcast left out, by op.",
    );
    for (op, count) in capture.filtered() {
        out.sample(name, &[("op", op.as_str())], count);
    }
}

pub(super) fn render_publisher(out: &mut Exposition, publisher: &PublisherStats) {
    let by_key = publisher.by_routing_key();
    type Count = fn(&crate::publisher::RoutingKeyCounts) -> u64;
    let families: [(&str, &str, Count); 3] = [
        (
            "walcast_publisher_published_total",
            "Messages published to RabbitMQ (republishes included), by table and op.",
            |c| c.published,
        ),
        (
            "walcast_publisher_confirmed_total",
            "Messages RabbitMQ confirmed, by table and op.",
            |c| c.confirmed,
        ),
        (
            "walcast_publisher_oversize_total",
            "Events published as their oversize stub (new and old null), too large for rabbitmq.max_event_bytes or the broker, by table and op.",
            |c| c.oversize,
        ),
    ];
    for (name, help, count) in families {
        out.family(name, Kind::Counter, help);
        for (routing_key, counts) in &by_key {
            // `<schema>.<table>.<op>`: the op never has a dot in it.
            let (table, op) = routing_key.rsplit_once('.').unwrap_or((routing_key, ""));
            out.sample(name, &[("table", table), ("op", op)], count(counts));
        }
    }
    let stats = publisher.snapshot();
    out.counter(
        "walcast_publisher_nacks_total",
        "Messages RabbitMQ refused (nack); each is republished.",
        stats.nacked,
    );
    out.counter(
        "walcast_publisher_republished_total",
        "Publishes of a message published before (after a nack or a lost connection).",
        stats.republished,
    );
    out.counter(
        "walcast_publisher_returned_total",
        "Confirmed messages the broker also returned as unroutable.",
        stats.returned,
    );
    out.counter(
        "walcast_publisher_refused_total",
        "Times RabbitMQ refused a published message (406, e.g. larger than its max_message_size).",
        stats.refused,
    );
    out.counter(
        "walcast_publisher_reconnects_total",
        "Connections to RabbitMQ established again after one was lost.",
        stats.reconnects,
    );
    out.histogram(
        "walcast_publisher_confirm_latency_seconds",
        "Time from writing a message to RabbitMQ's confirm of it.",
        &publisher.confirm_latency(),
    );
    out.gauge(
        "walcast_publisher_connected",
        "Whether the publisher has a connection with a confirming channel.",
        stats.connected,
    );
    out.gauge(
        "walcast_publisher_blocked",
        "Whether RabbitMQ blocks publishing (resource alarm).",
        stats.blocked,
    );
}
