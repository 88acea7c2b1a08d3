//! The publisher's writes in flight: messages handed to lapin whose frames
//! are not on the socket yet, in sequence order.
//!
//! A write's first poll, in [`Writes::start`], assigns its delivery tag and
//! queues its frames; doing that in sequence order is what keeps messages
//! in order on the wire while several writes are outstanding. Later polls
//! (in [`Writes::next`], with the engine's waker) only wait for the socket.
//! lapin's `basic_publish` future is over a kilobyte, which glibc serves
//! from its shared arena (taking its lock, and consolidating its fast
//! bins) rather than from the thread's cache, so the boxes of finished
//! writes are kept and reused.
//!
//! It does not decide what to write or when (the engine does), and hands
//! each write's confirm back without waiting for it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use lapin::options::BasicPublishOptions;
use lapin::types::ShortString;
use lapin::PublisherConfirm;
use tokio_util::sync::ReusableBoxFuture;

use super::encoder::Encoded;

type WriteFuture = ReusableBoxFuture<'static, lapin::Result<PublisherConfirm>>;

/// A write handed to lapin: still going, or done at its first poll.
enum Write {
    Pending(WriteFuture),
    Done(Option<lapin::Result<PublisherConfirm>>),
}

/// Writes in flight, oldest first, and the boxes of finished ones.
#[derive(Default)]
pub(super) struct Writes {
    writing: VecDeque<(u64, Write)>,
    spare: Vec<WriteFuture>,
}

impl Writes {
    pub(super) fn len(&self) -> usize {
        self.writing.len()
    }

    /// Hands message `seq` to lapin (see the module doc).
    pub(super) fn start(
        &mut self,
        seq: u64,
        channel: Arc<lapin::Channel>,
        exchange: ShortString,
        message: Arc<Encoded>,
    ) {
        let future = publish(channel, exchange, message);
        let mut write = match self.spare.pop() {
            Some(mut spare) => {
                spare.set(future);
                spare
            }
            None => ReusableBoxFuture::new(future),
        };
        let mut cx = Context::from_waker(Waker::noop());
        match write.poll(&mut cx) {
            Poll::Ready(result) => {
                self.spare.push(write);
                self.writing.push_back((seq, Write::Done(Some(result))));
            }
            Poll::Pending => self.writing.push_back((seq, Write::Pending(write))),
        }
    }

    /// The oldest write, once its frames are on the socket; pending when
    /// none is outstanding. Cancel-safe: an unfinished write stays queued.
    pub(super) async fn next(&mut self) -> (u64, lapin::Result<PublisherConfirm>) {
        let Some((seq, write)) = self.writing.front_mut() else {
            return std::future::pending().await;
        };
        let seq = *seq;
        let result = match write {
            Write::Pending(future) => std::future::poll_fn(|cx| future.poll(cx)).await,
            Write::Done(result) => result.take().expect("a finished write is taken once"),
        };
        if let Some((_, Write::Pending(future))) = self.writing.pop_front() {
            self.spare.push(future);
        }
        (seq, result)
    }

    /// Drops every write in flight (the link they were on is gone).
    pub(super) fn clear(&mut self) {
        self.writing.clear();
    }
}

/// Writes `message` to `channel`. Not mandatory: an event no queue is
/// bound to is dropped by the broker (and acked), by design.
async fn publish(
    channel: Arc<lapin::Channel>,
    exchange: ShortString,
    message: Arc<Encoded>,
) -> lapin::Result<PublisherConfirm> {
    channel
        .basic_publish(
            exchange,
            message.routing_key.clone(),
            BasicPublishOptions::default(),
            &message.body,
            message.properties.clone(),
        )
        .await
}
