//! The delivery loop: starts consuming the gateway queue (exclusive on a
//! classic queue, a single active consumer on a quorum one), hands each
//! delivery to the hub or to the dead letters, and acks in batches once
//! the replay log holds them (see the `consumer` module doc).
//!
//! It does not declare (`topology.rs`) and does not reconnect: every error
//! ends the session, and `Consumer::run` decides what comes next.

use std::sync::atomic::Ordering;

use futures_util::{FutureExt, Stream, StreamExt};
use lapin::message::Delivery;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Connection, Event};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use super::ack::{AckBatch, MAX_ACK_BATCH};
use super::dead_letter::classify;
use super::history::take_history_start;
use super::status::watch_standby;
use super::topology::Topology;
use super::{reconnect_backoff, Consumer, ConsumerError, DeadReason, SessionEnd, SessionError};
use crate::amqp;
use crate::config::QueueType;
use crate::fanout::{Change, Delivered};

impl Consumer {
    /// Starts consuming the declared queue and the tasks that live as long
    /// as the session (`session`): the standby probe and the history start,
    /// on the hub's tracker (the gateway's, waited for at shutdown).
    pub(super) async fn start_consuming(
        &mut self,
        connection: &Connection,
        topology: &Topology,
        session: &CancellationToken,
    ) -> Result<lapin::Consumer, ConsumerError> {
        let channel = &topology.channel;
        channel
            .basic_qos(self.config.prefetch.max(1), BasicQosOptions::default())
            .await
            .map_err(ConsumerError::Channel)?;
        let deliveries = channel
            .basic_consume(
                ShortString::from(self.queue.as_str()),
                ShortString::from(""),
                // See the module doc: one gateway per queue. Quorum queues
                // refuse exclusive consumers; their single active consumer
                // argument does the same job.
                BasicConsumeOptions {
                    exclusive: self.config.queue_type == QueueType::Classic,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|source| {
                if amqp::is_reply(&source, 403) || amqp::is_reply(&source, 405) {
                    ConsumerError::QueueInUse {
                        queue: self.queue.clone(),
                        source,
                    }
                } else {
                    ConsumerError::Channel(source)
                }
            })?;

        self.status.set_refused(None);
        self.status.0.sessions.fetch_add(1, Ordering::Relaxed);
        // A single active consumer that is not alone may be waiting: the
        // broker does not say, so it is probed.
        let standby = self.config.queue_type == QueueType::Quorum && topology.others > 0;
        if standby {
            warn!(
                consumers = topology.others + 1,
                "queue has another consumer: this gateway is a standby (single active consumer) until it goes"
            );
            let probe = connection
                .create_channel()
                .await
                .map_err(ConsumerError::Channel)?;
            self.hub.tasks().spawn(
                watch_standby(
                    probe,
                    self.queue.clone(),
                    self.status.clone(),
                    session.clone(),
                )
                .in_current_span(),
            );
        }
        self.status.started(standby);
        info!(
            prefetch = self.config.prefetch,
            queue_type = self.config.queue_type.as_str(),
            "consuming"
        );
        if let (Some(pg), Some(generation)) = (&self.history_pg, self.hub.history_start_needed()) {
            self.hub.tasks().spawn(
                take_history_start(
                    pg.clone(),
                    self.hub.clone(),
                    generation,
                    reconnect_backoff(&self.config),
                    session.clone(),
                )
                .in_current_span(),
            );
        }
        Ok(deliveries)
    }

    /// Hands deliveries to the hub until the session fails or `shutdown`.
    /// Acks are batched: while more deliveries are already waiting they
    /// are handed to the hub first, then one `multiple` ack covers the
    /// batch. A batch never waits for a delivery that has not arrived, so
    /// the ack follows the last hand-over at once; it is not waited for
    /// before the next deliveries are taken (`ack`).
    pub(super) async fn deliver_all(
        &mut self,
        connection: &Connection,
        deliveries: &mut lapin::Consumer,
        dead_letters: &Channel,
        events: &mut (impl Stream<Item = Event> + Unpin),
        shutdown: &CancellationToken,
    ) -> Result<SessionEnd, SessionError> {
        let mut batch = AckBatch::default();
        loop {
            let next = self
                .next_delivery(connection, deliveries, &mut batch, events, shutdown)
                .await?;
            let Some(delivery) = next else {
                return Ok(SessionEnd::Shutdown);
            };
            if let Some(end) = self.take(delivery, dead_letters, &mut batch).await? {
                return Ok(end);
            }
        }
    }

    /// The next delivery: one already waiting while the batch has room;
    /// otherwise the batch is acked first (unless the previous ack is still
    /// in flight: then when it settles), then it waits for one. `None` on
    /// shutdown.
    async fn next_delivery(
        &mut self,
        connection: &Connection,
        deliveries: &mut lapin::Consumer,
        batch: &mut AckBatch,
        events: &mut (impl Stream<Item = Event> + Unpin),
        shutdown: &CancellationToken,
    ) -> Result<Option<Delivery>, SessionError> {
        let lost = |e| SessionError::Lost(ConsumerError::Channel(e));
        let ready = if batch.len < MAX_ACK_BATCH {
            deliveries.next().now_or_never()
        } else {
            None
        };
        let next = match ready {
            Some(next) => next,
            None => {
                // One ack in flight at a time: while it is, the batch grows
                // (up to MAX_ACK_BATCH) rather than every delivery getting
                // an ack of its own, which costs RabbitMQ more than the
                // delivery itself.
                if !batch.in_flight() || batch.len >= MAX_ACK_BATCH {
                    self.ack(batch).await?;
                }
                loop {
                    tokio::select! {
                        biased;
                        _ = shutdown.cancelled() => {
                            // The last acks go out before the session closes.
                            self.ack(batch).await?;
                            let acked = batch.settle().await.map_err(SessionError::Lost)?;
                            self.status.0.acked.fetch_add(acked, Ordering::Relaxed);
                            return Ok(None);
                        }
                        acked = batch.settle(), if batch.in_flight() => {
                            let acked = acked.map_err(SessionError::Lost)?;
                            self.status.0.acked.fetch_add(acked, Ordering::Relaxed);
                            if batch.len > 0 {
                                self.ack(batch).await?;
                            }
                        }
                        event = events.next() => match event {
                            // lapin reports channel errors here too, e.g.
                            // the 404 of the passive declare: only a
                            // connection in error ends the session (the
                            // delivery stream reports its own channel).
                            Some(Event::Error(e)) if connection.status().connected() => {
                                debug!(error = %e, "rabbitmq channel error on a live connection")
                            }
                            Some(Event::Error(e)) => return Err(lost(e)),
                            None => return Err(SessionError::Lost(ConsumerError::ConnectionLost)),
                            Some(other) => debug!(event = ?other, "rabbitmq connection event"),
                        },
                        next = deliveries.next() => break next,
                    }
                }
            }
        };
        match next {
            None => Err(SessionError::Lost(ConsumerError::Cancelled)),
            Some(Err(e)) => Err(lost(e)),
            Some(Ok(delivery)) => Ok(Some(delivery)),
        }
    }

    /// Acks the batch (once the replay log holds it), after the ack before
    /// it; does not wait for this one (`ack`).
    async fn ack(&mut self, batch: &mut AckBatch) -> Result<(), SessionError> {
        if batch.len > 0 {
            // Acked only once the replay log holds them.
            self.hub
                .wait_logged()
                .await
                .map_err(|e| SessionError::Stalled(e.into()))?;
        }
        let acked = batch.flush().await.map_err(SessionError::Lost)?;
        self.status.0.acked.fetch_add(acked, Ordering::Relaxed);
        Ok(())
    }

    /// Hands one delivery to the hub, or to the dead letters, and adds it
    /// to the ack batch. `Some` when a fault injection ends the session.
    async fn take(
        &mut self,
        mut delivery: Delivery,
        dead_letters: &Channel,
        batch: &mut AckBatch,
    ) -> Result<Option<SessionEnd>, SessionError> {
        #[cfg_attr(not(feature = "fault-injection"), allow(unused_variables))]
        let received = self.status.0.received.fetch_add(1, Ordering::Relaxed) + 1;
        self.status.became_active();
        if delivery.redelivered {
            self.status.0.redelivered.fetch_add(1, Ordering::Relaxed);
        }
        let source = match classify(&delivery, &self.config.source) {
            Ok(source) => source,
            Err(reason) => {
                self.dead_letter(dead_letters, delivery, reason, None, batch)
                    .await
                    .map_err(SessionError::Lost)?;
                return Ok(None);
            }
        };
        let change = match Change::parse_or_return(std::mem::take(&mut delivery.data)) {
            Ok(change) => change,
            Err((e, body)) => {
                self.hub.stats().record_malformed();
                delivery.data = body;
                let error = e.to_string();
                let reason = DeadReason::MalformedBody;
                self.dead_letter(dead_letters, delivery, reason, Some(&error), batch)
                    .await
                    .map_err(SessionError::Lost)?;
                return Ok(None);
            }
        };
        let id = change.id;
        // On error the delivery is not acked: the broker gets it back when
        // this session closes.
        match self
            .hub
            .deliver(change, &source)
            .map_err(|e| SessionError::Stalled(e.into()))?
        {
            Delivered::Fanned { sockets } => {
                debug!(%id, sockets, "change fanned out");
            }
            Delivered::Duplicate => {
                debug!(%id, redelivered = delivery.redelivered, "duplicate change acked");
            }
        }
        #[cfg(feature = "fault-injection")]
        if let Some(end) = self.fault_before_ack(received, id).await {
            return Ok(Some(end));
        }
        batch.push(delivery.acker);
        Ok(None)
    }
}
