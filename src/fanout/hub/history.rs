//! The [`Hub`]'s history and the source it follows (see the `hub` module
//! doc): restarting it for a new source, its start (the snapshot offered
//! once), waiting for the replay log, and the dedupe horizon's warning.
//!
//! It does not deliver or replay changes; `Hub::deliver` calls
//! `State::follow_source` before it holds a change.

use std::sync::atomic::Ordering;

use tracing::{info, warn};

use super::{send_resync, DeliverError, Hub, Phase, State, HORIZON_WARN_INTERVAL};
use crate::event::EventId;
use crate::fanout::log_writer::{wait_written, Op};
use crate::fanout::replay::{ReplayBuffer, ResyncReason};
use crate::fanout::replay_log::ReplayLogError;
use crate::fanout::snapshot::Snapshot;
use crate::fanout::stats::FanoutStats;

impl Hub {
    /// `Some(generation)` while this history has no start (see
    /// [`Hub::offer_history_start`]); `None` once it has one.
    pub fn history_start_needed(&self) -> Option<u64> {
        let state = self.lock();
        state
            .buffer
            .horizons()
            .history_start
            .is_none()
            .then(|| state.buffer.generation())
    }

    /// The `xmax` (low 32 bits) of the snapshot this history starts at.
    pub fn history_start(&self) -> Option<u32> {
        self.lock().buffer.horizons().history_start
    }

    /// Offers `snapshot`, taken after the consumer's queue was bound, as the
    /// start of the history that was at `generation` when the bind was done
    /// (from [`Hub::history_start_needed`]). Adopted unless the history has
    /// a start already or restarted since. Returns whether it was adopted.
    pub fn offer_history_start(&self, snapshot: &Snapshot, generation: u64) -> bool {
        let mut guard = self.lock();
        let state = &mut *guard;
        if !state.buffer.offer_history_start(snapshot.xmax, generation) {
            return false;
        }
        info!(
            xmax = snapshot.xmax,
            "history start set: snapshots from here on can be handed off"
        );
        if let Some(log) = &mut state.log {
            // Not waited for: not persisting it only costs resyncs after a
            // crash (a later start is taken then), never a gap.
            log.send(Op::OfferHistoryStart {
                xmax: snapshot.xmax,
                generation,
            });
        }
        true
    }

    /// Forgets where the history starts (the consumer found its queue gone:
    /// changes published meanwhile are lost to this gateway). Cursors from
    /// before get `resync` until a new history start and new changes.
    ///
    /// Errors when the replay log cannot record it; the caller must not
    /// consume before this succeeds, or a crash could bring back a history
    /// with a hole in it.
    pub async fn restart_history(&self) -> Result<(), ReplayLogError> {
        let pending = {
            let mut guard = self.lock();
            let state = &mut *guard;
            state.buffer.restart_history();
            info!("replay history restarted: the gateway queue was (re)created");
            state.log.as_mut().map(|log| {
                let n = log.send(Op::RestartHistory);
                (log.progress(), n, log.dir().to_path_buf())
            })
        };
        if let Some((progress, n, dir)) = pending {
            wait_written(progress, n)
                .await
                .map_err(|e| ReplayLogError::Io {
                    action: "record a history restart in",
                    path: dir,
                    source: std::io::Error::new(e.kind(), e.to_string()),
                })?;
        }
        Ok(())
    }

    /// Waits until every change handed to [`Hub::deliver`] so far is in the
    /// replay log (at once without one). The consumer acks only after this:
    /// a change the log cannot hold is not acked.
    pub async fn wait_logged(&self) -> Result<(), DeliverError> {
        let pending = {
            let state = self.lock();
            state
                .log
                .as_ref()
                .map(|log| (log.progress(), log.issued(), log.dir().to_path_buf()))
        };
        match pending {
            None => Ok(()),
            Some((progress, n, dir)) => wait_written(progress, n)
                .await
                .map_err(|source| DeliverError::ReplayLog { dir, source }),
        }
    }

    /// Bytes in the replay log file, if there is one (tests, metrics), as
    /// of the writer's last step.
    pub fn replay_log_len(&self) -> Option<u64> {
        self.lock()
            .log
            .as_ref()
            .map(|log| log.progress().borrow().file_len)
    }

    /// Logs a dropped duplicate below everything held, at most once per
    /// [`HORIZON_WARN_INTERVAL`] (a capture restart resends a burst).
    pub(super) fn warn_horizon_duplicate(&self, id: &EventId, buffer: &ReplayBuffer) {
        let now = self.inner.started.elapsed().as_millis() as u64;
        let last = self.inner.horizon_warned_at.load(Ordering::Relaxed);
        let suppressed = self
            .inner
            .horizon_suppressed
            .fetch_add(1, Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < HORIZON_WARN_INTERVAL.as_millis() as u64 {
            return;
        }
        self.inner
            .horizon_warned_at
            .store(now.max(1), Ordering::Relaxed);
        self.inner.horizon_suppressed.store(0, Ordering::Relaxed);
        warn!(
            %id,
            horizon = ?buffer.horizons().max_evicted.map(|e| e.to_string()),
            since_last_warning = suppressed,
            source = ?buffer.source(),
            "dropping a change at or below the eviction horizon as a duplicate (a redelivery of an evicted change); counted in walcast_fanout_duplicates_total"
        );
    }
}

impl State {
    /// Makes `source` the followed one (see the module doc): adopted when
    /// the history has none, else the history restarts for it; logged
    /// before the change (the writer applies ops in order).
    pub(super) fn follow_source(
        &mut self,
        source: &str,
        id: EventId,
        stats: &FanoutStats,
    ) -> Result<(), DeliverError> {
        match self.buffer.source() {
            None => {
                info!(source, "following the stream's source");
                self.buffer.adopt_source(source);
                if let Some(log) = &mut self.log {
                    log.send(Op::AdoptSource(source.to_owned()));
                }
            }
            Some(old) => {
                warn!(
                    old_source = old,
                    new_source = source,
                    first_id = %id,
                    "the stream's source changed (a restored or migrated database, or another slot); restarting the replay history, clients get resync (source_changed)"
                );
                stats.record_source_change();
                self.buffer.restart_for_source(source);
                if let Some(log) = &mut self.log {
                    log.send(Op::RestartForSource(source.to_owned()));
                }
                stats.set_buffer(0, 0);
                for client in self.clients.values_mut() {
                    send_resync(&*client.socket, ResyncReason::SourceChanged, None, stats);
                    // One still catching up has its `ready` to come.
                    if let Phase::CatchingUp { cursor } = &mut client.phase {
                        *cursor = None;
                    }
                    client.floor = None;
                    client.snapshot = None;
                }
            }
        }
        Ok(())
    }
}
