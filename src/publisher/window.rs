//! The publish window: how much may be published and not yet confirmed,
//! counted in messages (`rabbitmq.publish_window`) and in bytes
//! (`rabbitmq.publish_window_bytes`).
//!
//! [`super::Publisher`] takes a message's share before handing it to the
//! engine, and waits when either budget is spent; the engine gives the
//! share back when RabbitMQ confirms the message. That is walcast's
//! backpressure, and what bounds the publisher's memory whatever the size
//! of a transaction or the length of an outage. A message larger than the
//! whole byte window is charged the whole window: it goes alone, once
//! everything before it is confirmed, instead of never.
//!
//! Pure accounting on two semaphores: it does not publish, and it does not
//! know what a message is beyond its size.

use tokio::sync::Semaphore;

/// The window has been closed: the publisher stopped for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Closed;

#[derive(Debug)]
pub(crate) struct Window {
    messages: Semaphore,
    bytes: Semaphore,
    byte_limit: u32,
}

impl Window {
    /// A window of `messages` messages and `bytes` bytes (each at least 1).
    pub(crate) fn new(messages: usize, bytes: usize) -> Window {
        let messages = messages.clamp(1, Semaphore::MAX_PERMITS);
        // acquire_many counts in u32.
        let byte_limit = u32::try_from(bytes).unwrap_or(u32::MAX).max(1);
        Window {
            messages: Semaphore::new(messages),
            bytes: Semaphore::new(byte_limit as usize),
            byte_limit,
        }
    }

    /// What a message of `size` bytes takes from the byte window: its
    /// size, and no more than the whole window.
    pub(crate) fn charge(&self, size: usize) -> u32 {
        u32::try_from(size).unwrap_or(u32::MAX).min(self.byte_limit)
    }

    /// Takes one message and `charge` bytes if both are free now.
    pub(crate) fn try_acquire(&self, charge: u32) -> bool {
        let Ok(message) = self.messages.try_acquire() else {
            return false;
        };
        let Ok(bytes) = self.bytes.try_acquire_many(charge) else {
            return false;
        };
        message.forget();
        bytes.forget();
        true
    }

    /// Waits until one message and `charge` bytes are free, and takes them.
    /// Cancel-safe: dropped half way, it takes nothing.
    pub(crate) async fn acquire(&self, charge: u32) -> Result<(), Closed> {
        let message = self.messages.acquire().await.map_err(|_| Closed)?;
        let bytes = self.bytes.acquire_many(charge).await.map_err(|_| Closed)?;
        message.forget();
        bytes.forget();
        Ok(())
    }

    /// Gives back what a confirmed message took.
    #[cfg(test)]
    fn release(&self, charge: u32) {
        self.release_many(charge as usize, 1);
    }

    /// Gives back what `messages` confirmed messages took, `bytes` in all.
    pub(crate) fn release_many(&self, bytes: usize, messages: usize) {
        self.bytes.add_permits(bytes);
        self.messages.add_permits(messages);
    }

    /// Wakes every waiter with [`Closed`], for good.
    pub(crate) fn close(&self) {
        self.messages.close();
        self.bytes.close();
    }

    /// Bytes free right now.
    #[cfg(test)]
    fn free_bytes(&self) -> usize {
        self.bytes.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_byte_window_bounds_messages_before_the_count_does() {
        let window = Window::new(100, 10_000);
        let charge = window.charge(4_000);
        assert_eq!(charge, 4_000);
        assert!(window.try_acquire(charge));
        assert!(window.try_acquire(charge));
        // 8,000 of 10,000 bytes taken: a third 4,000-byte message waits,
        // although 98 messages of the count window are free.
        assert!(!window.try_acquire(charge));
        assert_eq!(window.free_bytes(), 2_000);
        // A refused attempt takes nothing, not even a message slot.
        assert!(window.try_acquire(window.charge(2_000)));
        window.release(charge);
        window.release(2_000);
        assert!(window.try_acquire(charge));
        assert_eq!(window.free_bytes(), 2_000);
    }

    #[test]
    fn the_count_window_still_applies_to_small_messages() {
        let window = Window::new(2, 10_000);
        assert!(window.try_acquire(1));
        assert!(window.try_acquire(1));
        assert!(!window.try_acquire(1));
        // The failed try gave its byte share back.
        assert_eq!(window.free_bytes(), 9_998);
        window.release(1);
        assert!(window.try_acquire(1));
    }

    #[tokio::test]
    async fn a_message_larger_than_the_window_goes_alone() {
        let window = Arc::new(Window::new(100, 10_000));
        let huge = window.charge(50_000);
        assert_eq!(huge, 10_000);
        // Alone, it goes at once.
        window.acquire(huge).await.unwrap();
        assert!(!window.try_acquire(1));
        window.release(huge);

        // Behind a small unconfirmed message, it waits for that confirm,
        // and then goes.
        assert!(window.try_acquire(100));
        let waiter = {
            let window = Arc::clone(&window);
            tokio::spawn(async move { window.acquire(huge).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        window.release(100);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the huge message was never admitted")
            .unwrap()
            .unwrap();
        assert_eq!(window.free_bytes(), 0);
    }

    #[tokio::test]
    async fn closing_wakes_waiters() {
        let window = Arc::new(Window::new(1, 10_000));
        assert!(window.try_acquire(10));
        let waiter = {
            let window = Arc::clone(&window);
            tokio::spawn(async move { window.acquire(10).await })
        };
        tokio::task::yield_now().await;
        window.close();
        let outcome = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(outcome, Err(Closed));
    }
}
