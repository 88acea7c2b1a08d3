//! Which WAL position is durable, given how far RabbitMQ has confirmed.
//!
//! Every published message has a sequence number (1, 2, 3, … in send
//! order). [`Tracker`] remembers, for each transaction end, the last sequence
//! number sent before it; given the highest sequence number up to which
//! every message is confirmed, it answers with the end of the last
//! transaction that is wholly confirmed. It never answers a position inside
//! a transaction, nor one whose messages are not all confirmed, and it never
//! goes backwards.
//!
//! Pure bookkeeping: no I/O, no waiting. Memory is bounded by the publish
//! window: transaction ends that share a last sequence number are merged
//! (the later one covers the earlier), and ends already covered are dropped
//! as soon as they are known to be durable.

use std::collections::VecDeque;

use crate::event::Lsn;

#[derive(Debug, Default)]
pub struct Tracker {
    /// (last sequence number of the transaction, its end LSN), in order;
    /// none of them is known to be durable yet.
    ends: VecDeque<(u64, Lsn)>,
    /// Highest position found durable so far.
    durable: Option<Lsn>,
    /// Highest position handed out by [`Tracker::take_moved`].
    reported: Option<Lsn>,
}

impl Tracker {
    /// Records that the transaction ending at `end_lsn` ended after message
    /// `last_seq` (0 when nothing was ever sent); `confirmed` is the current
    /// confirmed prefix, so an end that is already covered does not linger.
    pub fn end_transaction(&mut self, last_seq: u64, end_lsn: Lsn, confirmed: u64) {
        match self.ends.back_mut() {
            Some((seq, lsn)) if *seq == last_seq => *lsn = (*lsn).max(end_lsn),
            _ => self.ends.push_back((last_seq, end_lsn)),
        }
        self.advance(confirmed);
    }

    /// Moves past every transaction whose messages are all confirmed
    /// (`confirmed` = every message with a sequence number up to it).
    pub fn advance(&mut self, confirmed: u64) {
        while let Some(&(seq, lsn)) = self.ends.front() {
            if seq > confirmed {
                break;
            }
            self.ends.pop_front();
            if self.durable.is_none_or(|d| lsn > d) {
                self.durable = Some(lsn);
            }
        }
    }

    /// The durable position if it moved since the last call.
    pub fn take_moved(&mut self) -> Option<Lsn> {
        let durable = self.durable?;
        if self.reported.is_some_and(|r| r >= durable) {
            return None;
        }
        self.reported = Some(durable);
        Some(durable)
    }

    /// The highest durable position so far, reported or not.
    pub fn durable(&self) -> Option<Lsn> {
        self.durable
    }

    /// Transaction ends still waiting for confirms.
    pub fn waiting(&self) -> usize {
        self.ends.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transaction_is_durable_only_when_all_its_messages_are() {
        let mut t = Tracker::default();
        // tx A: messages 1..=3, tx B: 4..=5
        t.end_transaction(3, Lsn(100), 0);
        t.end_transaction(5, Lsn(200), 0);
        t.advance(2);
        assert_eq!(t.take_moved(), None);
        t.advance(4);
        assert_eq!(t.take_moved(), Some(Lsn(100)));
        assert_eq!(t.take_moved(), None);
        t.advance(5);
        assert_eq!(t.take_moved(), Some(Lsn(200)));
        assert_eq!(t.durable(), Some(Lsn(200)));
        assert_eq!(t.waiting(), 0);
    }

    #[test]
    fn several_transactions_confirmed_at_once_report_the_last() {
        let mut t = Tracker::default();
        for i in 1..=10u64 {
            t.end_transaction(i * 2, Lsn(i * 1000), 0);
        }
        t.advance(15);
        assert_eq!(t.take_moved(), Some(Lsn(7000)));
        t.advance(20);
        assert_eq!(t.take_moved(), Some(Lsn(10_000)));
    }

    #[test]
    fn empty_transactions_merge_and_resolve_at_once() {
        let mut t = Tracker::default();
        t.end_transaction(0, Lsn(10), 0);
        assert_eq!(t.take_moved(), Some(Lsn(10)));
        t.end_transaction(4, Lsn(20), 0);
        t.end_transaction(4, Lsn(30), 0);
        t.end_transaction(4, Lsn(40), 0);
        assert_eq!(t.waiting(), 1);
        t.advance(4);
        assert_eq!(t.take_moved(), Some(Lsn(40)));
        // Already confirmed: durable on the spot.
        t.end_transaction(4, Lsn(50), 4);
        assert_eq!(t.waiting(), 0);
        assert_eq!(t.take_moved(), Some(Lsn(50)));
    }

    #[test]
    fn nothing_durable_before_any_confirm() {
        let mut t = Tracker::default();
        t.end_transaction(1, Lsn(5), 0);
        assert_eq!(t.durable(), None);
        assert_eq!(t.take_moved(), None);
    }
}
