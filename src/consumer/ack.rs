//! Ack batching: deliveries handed to the hub are acked together, with one
//! `basic.ack(multiple)` on the last one's tag, at most [`MAX_ACK_BATCH`]
//! at a time.
//!
//! An ack is handed to lapin and not waited for: the delivery loop goes on
//! with the next deliveries while lapin's I/O thread writes it, and the
//! next flush (or the loop, while it waits for deliveries) collects its
//! outcome. Waiting for each ack in turn would cost a round trip through
//! lapin's threads per batch, during which nothing is delivered. At most
//! one ack is outstanding, and it is bounded by [`IO_TIMEOUT`] like before.
//!
//! It does not decide when to flush: the delivery loop does, once no more
//! deliveries are waiting (and the replay log holds the batch).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use lapin::options::BasicAckOptions;
use lapin::Acker;

use super::{ConsumerError, IO_TIMEOUT};

/// Deliveries handed to the hub in one batch, at most; their ack waits
/// for the batch. Well under any sensible prefetch, so the broker keeps
/// sending while a batch is acked.
pub(super) const MAX_ACK_BATCH: u64 = 256;

type AckFuture = Pin<Box<dyn Future<Output = Result<(), ConsumerError>> + Send>>;

/// Deliveries handed to the hub and not yet acked, acked together with
/// one `basic.ack(multiple)` on the last one's tag; and the ack sent last,
/// until it is known to be written.
#[derive(Default)]
pub(super) struct AckBatch {
    last: Option<Acker>,
    pub(super) len: u64,
    /// The ack handed to lapin and not yet settled, with how many
    /// deliveries it covers.
    in_flight: Option<(u64, AckFuture)>,
}

impl AckBatch {
    pub(super) fn push(&mut self, acker: Acker) {
        self.last = Some(acker);
        self.len += 1;
    }

    /// Whether an ack is outstanding.
    pub(super) fn in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Sends the batch's ack after the one before it has settled; does not
    /// wait for this one. Returns how many deliveries the acks known to be
    /// written by now cover.
    pub(super) async fn flush(&mut self) -> Result<u64, ConsumerError> {
        let mut acked = self.settle().await?;
        let Some(last) = self.last.take() else {
            return Ok(acked);
        };
        let covered = std::mem::take(&mut self.len);
        let mut ack: AckFuture = Box::pin(async move {
            match tokio::time::timeout(IO_TIMEOUT, last.ack(BasicAckOptions { multiple: true }))
                .await
            {
                Err(_) => Err(ConsumerError::AckTimeout),
                Ok(Err(e)) => Err(ConsumerError::Channel(e)),
                Ok(Ok(_)) => Ok(()),
            }
        });
        // The first poll hands the ack to lapin, in batch order; later
        // polls (with the loop's waker, in `settle`) only learn the outcome.
        match ack.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(result) => {
                result?;
                acked += covered;
            }
            Poll::Pending => self.in_flight = Some((covered, ack)),
        }
        Ok(acked)
    }

    /// Waits for the outstanding ack, if any; returns how many deliveries
    /// it covered. Cancel-safe: an unfinished ack stays outstanding.
    pub(super) async fn settle(&mut self) -> Result<u64, ConsumerError> {
        let Some((covered, ack)) = &mut self.in_flight else {
            return Ok(0);
        };
        let covered = *covered;
        let result = ack.as_mut().await;
        self.in_flight = None;
        result.map(|()| covered)
    }
}
