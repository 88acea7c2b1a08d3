//! Ack batching: deliveries handed to the hub are acked together, with one
//! `basic.ack(multiple)` on the last one's tag, at most [`MAX_ACK_BATCH`]
//! at a time.
//!
//! It does not decide when to flush: the delivery loop does, once no more
//! deliveries are waiting (and the replay log holds the batch).

use lapin::options::BasicAckOptions;
use lapin::Acker;

use super::{ConsumerError, IO_TIMEOUT};

/// Deliveries handed to the hub in one batch, at most; their ack waits
/// for the batch. Well under any sensible prefetch, so the broker keeps
/// sending while a batch is acked.
pub(super) const MAX_ACK_BATCH: u64 = 256;

/// Deliveries handed to the hub and not yet acked, acked together with
/// one `basic.ack(multiple)` on the last one's tag.
#[derive(Default)]
pub(super) struct AckBatch {
    last: Option<Acker>,
    pub(super) len: u64,
}

impl AckBatch {
    pub(super) fn push(&mut self, acker: Acker) {
        self.last = Some(acker);
        self.len += 1;
    }

    /// Acks the batch; returns how many deliveries that covered.
    pub(super) async fn flush(&mut self) -> Result<u64, ConsumerError> {
        let Some(last) = self.last.take() else {
            return Ok(0);
        };
        match tokio::time::timeout(IO_TIMEOUT, last.ack(BasicAckOptions { multiple: true })).await {
            Err(_) => Err(ConsumerError::AckTimeout),
            Ok(Err(e)) => Err(ConsumerError::Channel(e)),
            Ok(Ok(_)) => Ok(std::mem::take(&mut self.len)),
        }
    }
}
