//! The replay buffer: recent changes ordered by id, and what this gateway
//! can no longer vouch for.
//!
//! It holds the last `capacity` changes in an ordered map keyed by
//! [`EventId`] (ids sort in commit order) and tracks two horizons:
//!
//! - **id horizon**: every id at or below the largest evicted id, and every
//!   id below the first change this gateway received (after a fresh start
//!   nothing earlier is known), is *not held*. A change whose id is held or
//!   not-held is a duplicate ([`ReplayBuffer::is_duplicate`]): a broker
//!   redelivery or a publisher republish. A genuinely new id that sorts below
//!   the newest one (a republish after a nack can arrive late) is *not*
//!   dropped as long as it is above the horizon.
//! - **xid horizon**: the latest xid (wraparound-aware) among changes not
//!   held; right after a fresh start it is the first change's `xid - 1`,
//!   meaning "anything before is unknown". A snapshot whose `xmin` is at or
//!   before this horizon may miss a change it does not see, so it gets a
//!   resync ([`ReplayBuffer::check_snapshot`]).
//!
//! Pure data structure: no sockets, no locks, no clock.

use std::collections::BTreeMap;
use std::ops::Bound;

use crate::event::EventId;

use super::change::Change;
use super::snapshot::{xid_max, xid_precedes, Snapshot};

/// Why a client must reload over HTTP instead of being replayed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResyncReason {
    /// This gateway has not received any change yet, so it cannot vouch for
    /// any cursor.
    NoHistory,
    /// `since` is older than the oldest change held.
    SinceTooOld,
    /// The held changes no longer reach back to the snapshot.
    SnapshotTooOld,
    /// Changes the client still needed were evicted while it was being
    /// replayed to (it read slower than changes arrived).
    ReplayOverrun,
}

impl ResyncReason {
    /// The `reason` field of the `resync` event.
    pub fn as_str(self) -> &'static str {
        match self {
            ResyncReason::NoHistory => "no_history",
            ResyncReason::SinceTooOld => "since_too_old",
            ResyncReason::SnapshotTooOld => "snapshot_too_old",
            ResyncReason::ReplayOverrun => "replay_overrun",
        }
    }
}

/// Recent changes by id, with the horizons described in the module doc.
#[derive(Debug)]
pub struct ReplayBuffer {
    capacity: usize,
    changes: BTreeMap<EventId, Change>,
    first_received: Option<EventId>,
    max_evicted: Option<EventId>,
    xid_horizon: Option<u32>,
    bytes: usize,
}

impl ReplayBuffer {
    pub fn new(capacity: usize) -> ReplayBuffer {
        ReplayBuffer {
            capacity: capacity.max(1),
            changes: BTreeMap::new(),
            first_received: None,
            max_evicted: None,
            xid_horizon: None,
            bytes: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.changes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// Approximate bytes held by the buffered changes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The newest change held.
    pub fn latest_id(&self) -> Option<EventId> {
        self.changes.last_key_value().map(|(id, _)| *id)
    }

    /// Whether `id` was seen already: held, or at/below the id horizon.
    pub fn is_duplicate(&self, id: &EventId) -> bool {
        self.changes.contains_key(id)
            || self.max_evicted.is_some_and(|evicted| *id <= evicted)
            || self.first_received.is_some_and(|first| *id < first)
    }

    /// Holds a new change (the caller checked [`Self::is_duplicate`]),
    /// evicting the oldest beyond capacity.
    pub fn push(&mut self, change: Change) {
        debug_assert!(!self.is_duplicate(&change.id));
        if self.first_received.is_none() {
            self.first_received = Some(change.id);
            self.xid_horizon = Some(change.xid.wrapping_sub(1));
        }
        self.bytes += change.heap_size();
        self.changes.insert(change.id, change);
        while self.changes.len() > self.capacity {
            let Some((id, evicted)) = self.changes.pop_first() else {
                break;
            };
            self.bytes -= evicted.heap_size();
            self.max_evicted = Some(self.max_evicted.map_or(id, |e| e.max(id)));
            self.xid_horizon = Some(match self.xid_horizon {
                Some(horizon) => xid_max(horizon, evicted.xid),
                None => evicted.xid,
            });
        }
    }

    /// Whether a client whose cursor is `since` can be replayed to: every
    /// change after `since` this gateway received must still be held.
    pub fn check_since(&self, since: EventId) -> Result<(), ResyncReason> {
        let Some(first) = self.first_received else {
            return Err(ResyncReason::NoHistory);
        };
        if since < first || self.max_evicted.is_some_and(|evicted| evicted > since) {
            return Err(ResyncReason::SinceTooOld);
        }
        Ok(())
    }

    /// Whether a client with this snapshot can be handed off; on success,
    /// the replay cursor to start after (changes not held at this point are
    /// all seen by the snapshot, so the replay starts at the oldest held).
    pub fn check_snapshot(&self, snapshot: &Snapshot) -> Result<Option<EventId>, ResyncReason> {
        let Some(horizon) = self.xid_horizon else {
            return Err(ResyncReason::NoHistory);
        };
        if !xid_precedes(horizon, snapshot.xmin) {
            return Err(ResyncReason::SnapshotTooOld);
        }
        Ok(self.max_evicted)
    }

    /// Whether a change after `cursor` was evicted: a client replaying from
    /// `cursor` can no longer get everything.
    pub fn evicted_after(&self, cursor: Option<EventId>) -> bool {
        self.max_evicted
            .is_some_and(|evicted| cursor.is_none_or(|c| evicted > c))
    }

    /// Held changes with an id greater than `cursor` (all of them for
    /// `None`), in id order.
    pub fn after(&self, cursor: Option<EventId>) -> impl Iterator<Item = &Change> {
        let lower = match cursor {
            Some(c) => Bound::Excluded(c),
            None => Bound::Unbounded,
        };
        self.changes
            .range((lower, Bound::Unbounded))
            .map(|(_, change)| change)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Lsn;

    fn id(n: u64) -> EventId {
        EventId {
            commit_lsn: Lsn(n),
            ordinal: 0,
        }
    }

    fn change(n: u64, xid: u32) -> Change {
        let body = format!(
            r#"{{"id":"{}","op":"insert","schema":"public","table":"t","key":{{"id":{n}}},"xid":{xid}}}"#,
            id(n)
        );
        Change::parse(body.into_bytes()).unwrap()
    }

    fn buffer_with(capacity: usize, items: &[(u64, u32)]) -> ReplayBuffer {
        let mut buffer = ReplayBuffer::new(capacity);
        for &(n, xid) in items {
            assert!(!buffer.is_duplicate(&id(n)));
            buffer.push(change(n, xid));
        }
        buffer
    }

    fn held(buffer: &ReplayBuffer, cursor: Option<u64>) -> Vec<u64> {
        buffer
            .after(cursor.map(id))
            .map(|c| c.id.commit_lsn.0)
            .collect()
    }

    #[test]
    fn holds_the_newest_changes_in_id_order() {
        let buffer = buffer_with(3, &[(10, 1), (20, 2), (30, 3), (40, 4)]);
        assert_eq!(held(&buffer, None), vec![20, 30, 40]);
        assert_eq!(held(&buffer, Some(25)), vec![30, 40]);
        assert_eq!(held(&buffer, Some(40)), Vec::<u64>::new());
        assert_eq!(buffer.latest_id(), Some(id(40)));
        assert_eq!(buffer.len(), 3);
    }

    #[test]
    fn duplicates_are_held_or_at_or_below_the_horizon() {
        let buffer = buffer_with(3, &[(10, 1), (20, 2), (30, 3), (40, 4)]);
        assert!(buffer.is_duplicate(&id(30)), "held");
        assert!(buffer.is_duplicate(&id(10)), "evicted");
        assert!(buffer.is_duplicate(&id(5)), "below the first change");
        assert!(!buffer.is_duplicate(&id(50)), "new");
        // A late republish: older than the newest, above the horizon.
        assert!(!buffer.is_duplicate(&id(25)));
    }

    #[test]
    fn a_late_older_id_above_the_horizon_is_held_in_order() {
        let mut buffer = buffer_with(4, &[(10, 1), (30, 3)]);
        assert!(!buffer.is_duplicate(&id(20)));
        buffer.push(change(20, 2));
        assert_eq!(held(&buffer, None), vec![10, 20, 30]);
    }

    #[test]
    fn fresh_start_knows_nothing_before_the_first_change() {
        let empty = ReplayBuffer::new(10);
        assert_eq!(empty.check_since(id(1)), Err(ResyncReason::NoHistory));
        let s: Snapshot = "1:2:".parse().unwrap();
        assert_eq!(empty.check_snapshot(&s), Err(ResyncReason::NoHistory));

        let buffer = buffer_with(10, &[(10, 100), (20, 101)]);
        assert_eq!(buffer.check_since(id(5)), Err(ResyncReason::SinceTooOld));
        assert_eq!(buffer.check_since(id(10)), Ok(()));
        assert_eq!(buffer.check_since(id(15)), Ok(()));
        assert_eq!(buffer.check_since(id(99)), Ok(()), "newer than held: live");
        // xid horizon is 99: a snapshot with xmin 100 is covered, 99 is not.
        let ok: Snapshot = "100:102:".parse().unwrap();
        assert_eq!(buffer.check_snapshot(&ok), Ok(None));
        let old: Snapshot = "99:102:".parse().unwrap();
        assert_eq!(
            buffer.check_snapshot(&old),
            Err(ResyncReason::SnapshotTooOld)
        );
    }

    #[test]
    fn eviction_raises_both_horizons() {
        let buffer = buffer_with(2, &[(10, 100), (20, 107), (30, 103), (40, 104)]);
        // Evicted: 10 (xid 100) and 20 (xid 107). xid horizon = 107.
        assert_eq!(buffer.check_since(id(15)), Err(ResyncReason::SinceTooOld));
        assert_eq!(buffer.check_since(id(20)), Ok(()));
        let s: Snapshot = "107:110:".parse().unwrap();
        assert_eq!(buffer.check_snapshot(&s), Err(ResyncReason::SnapshotTooOld));
        let s: Snapshot = "108:110:".parse().unwrap();
        assert_eq!(buffer.check_snapshot(&s), Ok(Some(id(20))));
        assert!(buffer.evicted_after(None));
        assert!(buffer.evicted_after(Some(id(15))));
        assert!(!buffer.evicted_after(Some(id(20))));
    }

    #[test]
    fn xid_horizon_wraps_around() {
        let buffer = buffer_with(1, &[(10, u32::MAX - 1), (20, 2), (30, 3)]);
        // Evicted xids u32::MAX - 1 and 2: the later one across the wrap is 2.
        let s: Snapshot = "2:5:".parse().unwrap();
        assert_eq!(buffer.check_snapshot(&s), Err(ResyncReason::SnapshotTooOld));
        let s: Snapshot = "3:5:".parse().unwrap();
        assert!(buffer.check_snapshot(&s).is_ok());

        // First change at xid 0: the horizon is u32::MAX ("just before").
        let buffer = buffer_with(10, &[(10, 0)]);
        let s: Snapshot = "0:1:".parse().unwrap();
        assert!(buffer.check_snapshot(&s).is_ok());
        let s = Snapshot {
            xmin: u32::MAX,
            xmax: 1,
            xip: vec![],
        };
        assert_eq!(buffer.check_snapshot(&s), Err(ResyncReason::SnapshotTooOld));
    }

    #[test]
    fn byte_gauge_follows_eviction() {
        let mut buffer = ReplayBuffer::new(2);
        assert_eq!(buffer.bytes(), 0);
        buffer.push(change(10, 1));
        let one = buffer.bytes();
        assert!(one > 0);
        buffer.push(change(20, 2));
        buffer.push(change(30, 3));
        assert_eq!(buffer.len(), 2);
        assert!(buffer.bytes() >= one && buffer.bytes() <= 3 * one);
        assert!(!buffer.is_empty());
    }
}
