//! The replay buffer: recent changes ordered by id, and what this gateway
//! can vouch for.
//!
//! It holds the last `capacity` changes in an ordered map keyed by
//! [`EventId`] (ids sort in commit order), fewer when they would take more
//! than `max_bytes` (wide rows: the count alone does not bound memory), and
//! tracks:
//!
//! - **id horizon**: every id at or below the largest evicted id is *not
//!   held*. A change whose id is held or not-held is a duplicate
//!   ([`ReplayBuffer::is_duplicate`]): a broker redelivery or a publisher
//!   republish. A genuinely new id that sorts below the newest one is *not*
//!   dropped as long as it is above the horizon, even below the first change
//!   of this history: after a nack the publisher republishes every
//!   unconfirmed message from the nacked one on, but the ones after it may
//!   have reached this gateway's queue already, so the nacked change comes
//!   late. It was never delivered by this history (else it would be held or
//!   evicted), so dropping it would lose it. The publisher's window bounds
//!   how late it can be: with `replay_buffer >= rabbitmq.publish_window`
//!   the changes that overtook it are still held when it comes, so it is
//!   above the horizon. (The first change still bounds `since`: a cursor
//!   below it gets `resync`.)
//! - **history start**: the `xmax` of a Postgres snapshot S0 taken after
//!   this gateway's queue was bound. Every transaction S0 does not see
//!   committed after the bind, so its changes are in the queue: held, or
//!   still to come. A client snapshot S whose `xmin` is at or after S0's
//!   `xmax` sees everything S0 sees, so every change S does not see is held
//!   or still to come. Without a start (none taken yet, or the queue was
//!   recreated) nothing can be vouched for and a snapshot gets `resync`.
//!   (The first change received is *not* a start: a transaction whose
//!   commit record precedes it can become visible after it, so a snapshot
//!   taken in between may miss a change that never reaches this gateway.)
//! - **xid horizon**: the latest xid (wraparound-aware) among evicted
//!   changes. A snapshot whose `xmin` is at or before it may not see an
//!   evicted change, so it gets a resync ([`ReplayBuffer::check_snapshot`]).
//!
//! [`Horizons`] is everything but the held changes, as the replay log
//! persists it. Pure data structure: no sockets, no locks, no clock, no I/O.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use crate::event::EventId;

use super::change::Change;
use super::snapshot::{xid_max, xid_precedes, Snapshot};

/// Why a client must reload over HTTP instead of being replayed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResyncReason {
    /// This history cannot vouch for the cursor at all: for `since`, no
    /// change has arrived since it began; for `snapshot`, it has no start
    /// yet (no snapshot taken after the queue was bound).
    NoHistory,
    /// `since` is older than the oldest change held.
    SinceTooOld,
    /// The held changes no longer reach back to the snapshot.
    SnapshotTooOld,
    /// Changes the client still needed were evicted while it was being
    /// replayed to (it read slower than changes arrived).
    ReplayOverrun,
    /// The stream's source changed (a database restored onto a new
    /// cluster, another slot): ids from before are not comparable.
    SourceChanged,
}

impl ResyncReason {
    /// The `reason` field of the `resync` event.
    pub fn as_str(self) -> &'static str {
        match self {
            ResyncReason::NoHistory => "no_history",
            ResyncReason::SinceTooOld => "since_too_old",
            ResyncReason::SnapshotTooOld => "snapshot_too_old",
            ResyncReason::ReplayOverrun => "replay_overrun",
            ResyncReason::SourceChanged => "source_changed",
        }
    }
}

/// Everything the buffer knows besides the held changes: what the replay
/// log writes at each compaction and restores at startup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Horizons {
    /// The first change of this history; ids below it are unknown.
    pub first_received: Option<EventId>,
    /// The largest evicted id.
    pub max_evicted: Option<EventId>,
    /// The latest xid among evicted changes.
    pub xid_horizon: Option<u32>,
    /// `xmax` (low 32 bits) of the snapshot that starts this history.
    pub history_start: Option<u32>,
    /// This history began because the source changed: a cursor it cannot
    /// serve is most likely one from the old source.
    pub source_changed: bool,
}

/// Recent changes by id, with the horizons described in the module doc.
/// A clone shares the held changes.
#[derive(Debug, Clone)]
pub struct ReplayBuffer {
    capacity: usize,
    /// Shared with the replay log writer's copy of the buffer (see
    /// `log_writer`), so the copy costs no body bytes.
    changes: BTreeMap<EventId, Arc<Change>>,
    horizons: Horizons,
    /// Bumped when the history restarts, so a history start taken for an
    /// earlier history is not adopted by a later one.
    generation: u64,
    bytes: usize,
    /// 0: no cap.
    max_bytes: usize,
    /// The source of this history (`None`: not known yet, or a log written
    /// before sources existed).
    source: Option<String>,
    /// The change received last, in arrival order (see the module doc).
    last_received: Option<EventId>,
}

impl ReplayBuffer {
    pub fn new(capacity: usize) -> ReplayBuffer {
        ReplayBuffer::with_horizons(capacity, Horizons::default())
    }

    /// An empty buffer that continues a history with these horizons.
    pub fn with_horizons(capacity: usize, horizons: Horizons) -> ReplayBuffer {
        ReplayBuffer {
            capacity: capacity.max(1),
            changes: BTreeMap::new(),
            horizons,
            generation: 0,
            bytes: 0,
            max_bytes: 0,
            source: None,
            last_received: None,
        }
    }

    /// The source this history follows, if known.
    pub fn source(&self) -> Option<&str> {
        self.source.as_deref()
    }

    /// Sets the source of a history that has none yet (the first change of
    /// a gateway, or a log from before sources), keeping everything held.
    pub fn adopt_source(&mut self, source: &str) {
        self.source = Some(source.to_owned());
    }

    /// Starts a new, empty history for `source`: the old one's ids mean
    /// nothing in the new stream, so nothing is held, nothing is a
    /// duplicate, and every cursor and snapshot from before gets `resync`
    /// (`source_changed`).
    pub fn restart_for_source(&mut self, source: &str) {
        let generation = self.generation + 1;
        let max_bytes = self.max_bytes;
        *self = ReplayBuffer::with_horizons(
            self.capacity,
            Horizons {
                source_changed: true,
                ..Horizons::default()
            },
        );
        self.generation = generation;
        self.max_bytes = max_bytes;
        self.source = Some(source.to_owned());
    }

    /// Evicts every held change at or below `id` and raises the horizons
    /// to it: the change `id` (with `xid`) belongs to the history but its
    /// body is not available (too large for the replay log), so no cursor
    /// below it can be served without a gap.
    pub fn evict_through(&mut self, id: EventId, xid: u32) {
        while let Some((&first, _)) = self.changes.first_key_value() {
            if first > id {
                break;
            }
            let (_, evicted) = self.changes.pop_first().expect("non-empty");
            self.bytes -= evicted.heap_size();
            self.raise_xid_horizon(evicted.xid);
        }
        let h = &mut self.horizons;
        if h.first_received.is_none() {
            h.first_received = Some(id);
        }
        h.max_evicted = Some(h.max_evicted.map_or(id, |e| e.max(id)));
        self.raise_xid_horizon(xid);
    }

    fn raise_xid_horizon(&mut self, xid: u32) {
        let h = &mut self.horizons;
        h.xid_horizon = Some(match h.xid_horizon {
            Some(horizon) => xid_max(horizon, xid),
            None => xid,
        });
    }

    pub fn len(&self) -> usize {
        self.changes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Approximate bytes held by the buffered changes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn horizons(&self) -> Horizons {
        self.horizons
    }

    /// See [`ReplayBuffer::restart_history`].
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The newest change held.
    pub fn latest_id(&self) -> Option<EventId> {
        self.changes.last_key_value().map(|(id, _)| *id)
    }

    /// Whether this very change is held.
    pub fn holds(&self, id: &EventId) -> bool {
        self.changes.contains_key(id)
    }

    /// Whether `id` was seen already: held, or at/below the id horizon.
    /// An id below the first change is not a duplicate (see the module doc).
    pub fn is_duplicate(&self, id: &EventId) -> bool {
        self.changes.contains_key(id)
            || self
                .horizons
                .max_evicted
                .is_some_and(|evicted| *id <= evicted)
    }

    /// Whether a new change with this id comes late: after a change with a
    /// larger id (a republish after a nack).
    pub fn is_late(&self, id: &EventId) -> bool {
        self.latest_id().is_some_and(|latest| *id < latest)
    }

    /// Holds a new change (the caller checked [`Self::is_duplicate`]),
    /// evicting the oldest beyond capacity or the byte cap.
    pub fn push(&mut self, change: Change) {
        self.push_shared(Arc::new(change));
    }

    /// [`Self::push`] for a change shared with another buffer.
    pub fn push_shared(&mut self, change: Arc<Change>) {
        debug_assert!(!self.is_duplicate(&change.id));
        let h = &mut self.horizons;
        if h.first_received.is_none() {
            h.first_received = Some(change.id);
        }
        self.last_received = Some(change.id);
        self.bytes += change.heap_size();
        self.changes.insert(change.id, change);
        self.evict();
    }

    /// Caps the bytes held (0: no cap), evicting the oldest now if needed.
    pub fn set_max_bytes(&mut self, max_bytes: usize) {
        self.max_bytes = max_bytes;
        self.evict();
    }

    /// Whether the held changes are over a limit. The newest is always
    /// kept, however large: it is the only one a live cursor may still need.
    fn over_limit(&self) -> bool {
        self.changes.len() > self.capacity
            || (self.max_bytes > 0 && self.bytes > self.max_bytes && self.changes.len() > 1)
    }

    /// Evicts the oldest changes until within the limits, raising the
    /// horizons.
    fn evict(&mut self) {
        while self.over_limit() {
            let h = &mut self.horizons;
            let Some((id, evicted)) = self.changes.pop_first() else {
                break;
            };
            self.bytes -= evicted.heap_size();
            h.max_evicted = Some(h.max_evicted.map_or(id, |e| e.max(id)));
            h.xid_horizon = Some(match h.xid_horizon {
                Some(horizon) => xid_max(horizon, evicted.xid),
                None => evicted.xid,
            });
        }
    }

    /// Adopts `xmax` of a snapshot taken after the queue was bound as the
    /// start of this history, unless it has one (an older start reaches
    /// further back) or the history restarted since `generation`. Returns
    /// whether it was adopted.
    pub fn offer_history_start(&mut self, xmax: u32, generation: u64) -> bool {
        if self.horizons.history_start.is_some() || generation != self.generation {
            return false;
        }
        self.horizons.history_start = Some(xmax);
        true
    }

    /// Forgets where this history starts: changes may have been lost
    /// before the next one (the queue was deleted and declared again).
    /// Held changes stay for dedupe; a `since` from before the next change
    /// and every snapshot (until a new start) get `resync`.
    pub fn restart_history(&mut self) {
        self.horizons.first_received = None;
        self.horizons.history_start = None;
        // Held ids must stay duplicates and must not be replayed as if the
        // history reached back to them. The horizon rises to the change
        // received last, not to the largest id held: a forged huge id held
        // now must not make every later real change a duplicate (module
        // doc). After a load the arrival order is gone and the largest held
        // id stands in for it.
        if let Some(last) = self.last_received.or(self.latest_id()) {
            let h = &mut self.horizons;
            h.max_evicted = Some(h.max_evicted.map_or(last, |e| e.max(last)));
            for change in self.changes.values() {
                h.xid_horizon = Some(match h.xid_horizon {
                    Some(horizon) => xid_max(horizon, change.xid),
                    None => change.xid,
                });
            }
        }
        self.generation += 1;
    }

    /// Whether a client whose cursor is `since` can be replayed to: every
    /// change after `since` this gateway received must still be held.
    pub fn check_since(&self, since: EventId) -> Result<(), ResyncReason> {
        let h = &self.horizons;
        // In a history begun by a source change, a cursor beyond everything
        // held is most likely from the old source (a restored database's ids
        // usually start lower), and so is one below its first change while
        // nothing was evicted yet.
        let Some(first) = h.first_received else {
            return Err(if h.source_changed {
                ResyncReason::SourceChanged
            } else {
                ResyncReason::NoHistory
            });
        };
        if h.source_changed
            && (self.latest_id().is_some_and(|latest| since > latest)
                || (since < first && h.max_evicted.is_none()))
        {
            return Err(ResyncReason::SourceChanged);
        }
        if since < first || h.max_evicted.is_some_and(|evicted| evicted > since) {
            return Err(ResyncReason::SinceTooOld);
        }
        Ok(())
    }

    /// Whether a client with this snapshot can be handed off; on success,
    /// the replay cursor to start after (changes not held at this point are
    /// all seen by the snapshot, so the replay starts at the oldest held).
    pub fn check_snapshot(&self, snapshot: &Snapshot) -> Result<Option<EventId>, ResyncReason> {
        let Some(start) = self.horizons.history_start else {
            // A snapshot of the old source's database says nothing here.
            return Err(if self.horizons.source_changed {
                ResyncReason::SourceChanged
            } else {
                ResyncReason::NoHistory
            });
        };
        // S.xmin >= S0.xmax: S sees everything S0 sees.
        if xid_precedes(snapshot.xmin, start) {
            return Err(ResyncReason::SnapshotTooOld);
        }
        if self
            .horizons
            .xid_horizon
            .is_some_and(|horizon| !xid_precedes(horizon, snapshot.xmin))
        {
            return Err(ResyncReason::SnapshotTooOld);
        }
        Ok(self.horizons.max_evicted)
    }

    /// Whether a change after `cursor` was evicted: a client replaying from
    /// `cursor` can no longer get everything.
    pub fn evicted_after(&self, cursor: Option<EventId>) -> bool {
        self.horizons
            .max_evicted
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
            .map(|(_, change)| &**change)
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
        assert!(buffer.is_duplicate(&id(5)), "below the largest evicted");
        assert!(!buffer.is_duplicate(&id(50)), "new");
        // A late republish: older than the newest, above the horizon.
        assert!(!buffer.is_duplicate(&id(25)));
    }

    #[test]
    fn a_late_older_id_above_the_horizon_is_held_in_order() {
        let mut buffer = buffer_with(4, &[(10, 1), (30, 3)]);
        assert!(!buffer.is_duplicate(&id(20)));
        assert!(buffer.is_late(&id(20)));
        assert!(!buffer.is_late(&id(40)));
        buffer.push(change(20, 2));
        assert_eq!(held(&buffer, None), vec![10, 20, 30]);
    }

    /// The publisher republishes from a nacked change on; the changes after
    /// it may have reached the queue first, even as the first of a history.
    #[test]
    fn a_nacked_change_republished_after_the_first_change_is_not_lost() {
        let mut buffer = buffer_with(4, &[(20, 2), (30, 3)]);
        assert!(!buffer.is_duplicate(&id(10)), "late, never seen: new");
        assert!(buffer.is_late(&id(10)));
        buffer.push(change(10, 1));
        // The republish of what overtook it is a duplicate.
        assert!(buffer.is_duplicate(&id(20)) && buffer.is_duplicate(&id(30)));
        assert_eq!(held(&buffer, None), vec![10, 20, 30]);
        // A snapshot hand-off replays it; `since` still starts at the
        // first change received.
        assert_eq!(buffer.check_since(id(15)), Err(ResyncReason::SinceTooOld));
        assert_eq!(buffer.horizons().first_received, Some(id(20)));
        // Once evicted it stays a duplicate.
        buffer.push(change(40, 4));
        buffer.push(change(50, 5));
        assert!(buffer.is_duplicate(&id(10)));
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
        // The first change is no history start: a transaction committed
        // before it may become visible after it.
        let s: Snapshot = "102:102:".parse().unwrap();
        assert_eq!(buffer.check_snapshot(&s), Err(ResyncReason::NoHistory));
    }

    #[test]
    fn a_history_start_covers_snapshots_from_its_xmax_on() {
        let mut buffer = ReplayBuffer::new(10);
        let generation = buffer.generation();
        assert!(buffer.offer_history_start(100, generation));
        assert!(
            !buffer.offer_history_start(200, generation),
            "older start kept"
        );
        assert_eq!(buffer.horizons().history_start, Some(100));
        // Quiet system: no change yet, a snapshot from after the start is fine.
        let ok: Snapshot = "100:103:101".parse().unwrap();
        assert_eq!(buffer.check_snapshot(&ok), Ok(None));
        let old: Snapshot = "99:103:".parse().unwrap();
        assert_eq!(
            buffer.check_snapshot(&old),
            Err(ResyncReason::SnapshotTooOld)
        );
        // since still needs a first change.
        assert_eq!(buffer.check_since(id(1)), Err(ResyncReason::NoHistory));
    }

    #[test]
    fn a_restarted_history_vouches_for_nothing_before_it() {
        let mut buffer = buffer_with(10, &[(10, 100), (20, 101)]);
        let before = buffer.generation();
        assert!(buffer.offer_history_start(100, before));
        buffer.restart_history();
        assert!(!buffer.offer_history_start(102, before), "stale start");
        let s: Snapshot = "102:102:".parse().unwrap();
        assert_eq!(buffer.check_snapshot(&s), Err(ResyncReason::NoHistory));
        assert_eq!(buffer.check_since(id(20)), Err(ResyncReason::NoHistory));
        assert!(buffer.is_duplicate(&id(20)) && buffer.is_duplicate(&id(10)));
        assert!(buffer.offer_history_start(102, buffer.generation()));
        assert_eq!(
            buffer.check_snapshot(&s),
            Ok(Some(id(20))),
            "held are not replayed"
        );
        buffer.push(change(30, 103));
        assert_eq!(buffer.check_since(id(20)), Err(ResyncReason::SinceTooOld));
        assert_eq!(buffer.check_since(id(30)), Ok(()));
    }

    #[test]
    fn eviction_raises_both_horizons() {
        let mut buffer = buffer_with(2, &[(10, 100), (20, 107), (30, 103), (40, 104)]);
        assert!(buffer.offer_history_start(90, buffer.generation()));
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
        let h = buffer.horizons();
        assert_eq!(
            (h.first_received, h.max_evicted, h.xid_horizon),
            (Some(id(10)), Some(id(20)), Some(107))
        );
    }

    #[test]
    fn xid_comparisons_wrap_around() {
        let mut buffer = buffer_with(1, &[(10, u32::MAX - 1), (20, 2), (30, 3)]);
        assert!(buffer.offer_history_start(u32::MAX - 2, buffer.generation()));
        // Evicted xids u32::MAX - 1 and 2: the later one across the wrap is 2.
        let s: Snapshot = "2:5:".parse().unwrap();
        assert_eq!(buffer.check_snapshot(&s), Err(ResyncReason::SnapshotTooOld));
        let s: Snapshot = "3:5:".parse().unwrap();
        assert!(buffer.check_snapshot(&s).is_ok());

        // A start just before the wrap covers snapshots just after it.
        let mut buffer = ReplayBuffer::new(10);
        assert!(buffer.offer_history_start(u32::MAX, 0));
        let s: Snapshot = "0:1:".parse().unwrap();
        assert!(buffer.check_snapshot(&s).is_ok());
        let s = Snapshot {
            xmin: u32::MAX - 1,
            xmax: 1,
            xip: vec![],
        };
        assert_eq!(buffer.check_snapshot(&s), Err(ResyncReason::SnapshotTooOld));
    }

    #[test]
    fn a_byte_cap_evicts_the_oldest_and_raises_the_horizons() {
        let mut buffer = ReplayBuffer::new(100);
        buffer.push(change(10, 1));
        let one = buffer.bytes();
        // Room for three changes of this size, whatever the count allows.
        buffer.set_max_bytes(3 * one + one / 2);
        for (n, xid) in [(20, 2), (30, 3), (40, 4), (50, 5)] {
            buffer.push(change(n, xid));
        }
        assert_eq!(held(&buffer, None), vec![30, 40, 50]);
        assert!(buffer.bytes() <= 3 * one + one / 2);
        assert_eq!(buffer.horizons().max_evicted, Some(id(20)));
        assert_eq!(buffer.horizons().xid_horizon, Some(2));
        assert!(buffer.is_duplicate(&id(20)));
        assert_eq!(buffer.check_since(id(10)), Err(ResyncReason::SinceTooOld));
        assert_eq!(buffer.check_since(id(20)), Ok(()));
        // Lowering the cap evicts at once; the newest stays however large.
        buffer.set_max_bytes(1);
        assert_eq!(held(&buffer, None), vec![50]);
        // 0 lifts the cap: the count is the only limit again.
        buffer.set_max_bytes(0);
        for (n, xid) in [(60, 6), (70, 7), (80, 8), (90, 9)] {
            buffer.push(change(n, xid));
        }
        assert_eq!(buffer.len(), 5);
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

    #[test]
    fn a_new_source_restarts_the_history_with_its_lower_ids() {
        let mut buffer = buffer_with(2, &[(100, 1), (200, 2), (300, 3)]);
        buffer.adopt_source("1/db/slot");
        assert!(buffer.is_duplicate(&id(5)), "below the old horizon");
        buffer.restart_for_source("2/db/slot");
        assert_eq!(buffer.source(), Some("2/db/slot"));
        assert!(buffer.is_empty());
        assert!(!buffer.is_duplicate(&id(5)), "the new source's ids are new");
        // Old cursors: no history yet, then beyond everything held.
        assert_eq!(
            buffer.check_since(id(300)),
            Err(ResyncReason::SourceChanged)
        );
        buffer.push(change(5, 10));
        buffer.push(change(6, 11));
        assert_eq!(
            buffer.check_since(id(300)),
            Err(ResyncReason::SourceChanged)
        );
        assert_eq!(buffer.check_since(id(1)), Err(ResyncReason::SourceChanged));
        assert_eq!(buffer.check_since(id(5)), Ok(()));
        assert_eq!(held(&buffer, Some(5)), vec![6]);
        let s: Snapshot = "10:12:".parse().unwrap();
        assert_eq!(buffer.check_snapshot(&s), Err(ResyncReason::SourceChanged));
    }

    /// A forged huge id is held at the top; neither eviction nor a history
    /// restart makes it the horizon, so later real changes are not dropped.
    #[test]
    fn a_forged_high_id_never_turns_real_changes_into_duplicates() {
        let mut buffer = buffer_with(3, &[(10, 1), (u64::MAX / 2, 2)]);
        for n in 11..20 {
            assert!(!buffer.is_duplicate(&id(n)), "{n}");
            buffer.push(change(n, n as u32));
        }
        assert_eq!(buffer.latest_id(), Some(id(u64::MAX / 2)));
        buffer.restart_history();
        assert!(!buffer.is_duplicate(&id(20)), "after a restart too");
        assert!(buffer.is_duplicate(&id(19)) && buffer.is_duplicate(&id(u64::MAX / 2)));
    }
}
