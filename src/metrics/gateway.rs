//! The gateway role's families: the RabbitMQ consumer and the Socket.IO
//! fan-out. Reads the stages' handles; counts nothing.

use super::render::{Exposition, Kind};
use crate::consumer::{ConsumerStatus, DeadReason};
use crate::fanout::FanoutStats;

pub(super) fn render_consumer(out: &mut Exposition, consumer: &ConsumerStatus) {
    out.counter(
        "walcast_consumer_received_total",
        "Deliveries received from this gateway's RabbitMQ queue.",
        consumer.received(),
    );
    out.counter(
        "walcast_consumer_acked_total",
        "Deliveries acknowledged after the fan-out took them.",
        consumer.acked(),
    );
    out.counter(
        "walcast_consumer_rejected_total",
        "Deliveries not taken by the fan-out (dead-lettered, any reason).",
        consumer.rejected(),
    );
    let dead = "walcast_consumer_dead_letters_total";
    out.family(
        dead,
        Kind::Counter,
        "Messages published to the dead-letter queue (rabbitmq.dead_letter), by x-walcast-reason.",
    );
    for reason in DeadReason::ALL {
        out.sample(
            dead,
            &[("reason", reason.as_str())],
            consumer.dead_letters(reason),
        );
    }
    out.counter(
        "walcast_consumer_redelivered_total",
        "Deliveries RabbitMQ flagged as redelivered.",
        consumer.redelivered(),
    );
    out.counter(
        "walcast_consumer_sessions_total",
        "Consuming sessions started (1 + reconnects).",
        consumer.sessions(),
    );
    out.gauge(
        "walcast_consumer_consuming",
        "Whether a consuming session is up.",
        consumer.is_consuming(),
    );
}

pub(super) fn render_fanout(out: &mut Exposition, fanout: &FanoutStats) {
    let delivered = "walcast_fanout_delivered_total";
    out.family(
        delivered,
        Kind::Counter,
        "Changes accepted from RabbitMQ and fanned out (duplicates excluded), by table and op.",
    );
    for count in fanout.delivered_by_table() {
        out.sample(
            delivered,
            &[("table", &count.table), ("op", count.op.as_str())],
            count.count,
        );
    }
    let stats = fanout.snapshot();
    for (name, help, value) in [
        (
            "walcast_fanout_duplicates_total",
            "Changes dropped because their id was seen already.",
            stats.duplicates,
        ),
        (
            "walcast_fanout_malformed_total",
            "RabbitMQ bodies that were not change events.",
            stats.malformed,
        ),
        (
            "walcast_fanout_source_changes_total",
            "Times the stream's x-walcast-source changed and the replay history restarted.",
            stats.source_changes,
        ),
        (
            "walcast_fanout_emitted_total",
            "change packets handed to sockets, live and replayed.",
            stats.emitted,
        ),
        (
            "walcast_fanout_slow_disconnects_total",
            "Sockets disconnected as too slow: send queue full (packets or bytes) or replay stalled.",
            stats.slow_disconnects,
        ),
        (
            "walcast_fanout_resyncs_total",
            "resync events sent.",
            stats.resyncs,
        ),
        (
            "walcast_fanout_connects_refused_total",
            "Socket.IO handshakes refused.",
            stats.connects_refused,
        ),
    ] {
        out.counter(name, help, value);
    }
    let disconnects = "walcast_fanout_disconnects_total";
    out.family(
        disconnects,
        Kind::Counter,
        "Sockets the gateway disconnected, by reason (queue_full, queue_bytes, replay_stall, token_expired).",
    );
    for (reason, count) in fanout.disconnects() {
        out.sample(disconnects, &[("reason", reason.as_str())], count);
    }
    out.gauge(
        "walcast_fanout_connected_sockets",
        "Socket.IO sockets currently attached.",
        stats.connected_sockets,
    );
    out.gauge(
        "walcast_fanout_replay_buffer_events",
        "Changes held in the replay buffer.",
        stats.buffered_events,
    );
    out.gauge(
        "walcast_fanout_replay_buffer_bytes",
        "Approximate bytes held in the replay buffer.",
        stats.buffered_bytes,
    );
}
