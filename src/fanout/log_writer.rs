//! The replay log's writer thread: file I/O off the hub's lock and off
//! tokio's worker threads.
//!
//! The hub keeps deciding everything under its lock (what is a duplicate,
//! what is evicted, when the history or its source changes) and only
//! *describes* each step to the writer as an [`Op`], numbered in the order
//! the hub took them. The writer owns the [`ReplayLog`] and its own copy of
//! the [`ReplayBuffer`] (sharing the held changes' bodies through `Arc`),
//! applies every op to that copy exactly as the hub did, and does the
//! append, the `fdatasync`, the compaction or the rewrite from it. The hub's
//! lock is therefore never held during a write, a sync or a compaction, and
//! a compaction copies nothing under it.
//!
//! Results come back through a [`watch`] of [`Progress`]: `written` is the
//! number of the last op whose effect is in the file. Because a failed
//! write marks the log stale and the next op first rewrites the whole file
//! from the writer's copy (which has the failed change), `written >= n`
//! means op `n` and everything before it is on disk. The consumer acks a
//! delivery only after [`LogWriter::wait`] for the ops issued so far, so a
//! change the log cannot hold is never acked (the broker delivers it again;
//! the redelivery is a duplicate for the hub, which then issues a
//! [`Op::Sync`] to repair the file before that ack).
//!
//! The writer does not decide anything and knows nothing of sockets.

use std::io;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::watch;
use tracing::{debug, warn};

use super::change::Change;
use super::replay::ReplayBuffer;
use super::replay_log::ReplayLog;
use super::stats::FanoutStats;

/// One step of the hub's history, for the writer to apply and log.
pub(crate) enum Op {
    /// A new change was held (after the duplicate test).
    Append(Arc<Change>),
    /// The history adopted its first source.
    AdoptSource(String),
    /// The history restarted for another source.
    RestartForSource(String),
    /// The gateway queue was recreated.
    RestartHistory,
    /// A history start was offered (adopted or not, the copy decides the
    /// same way the hub's buffer did).
    OfferHistoryStart { xmax: u32, generation: u64 },
    /// Repair the file if a write failed; nothing otherwise.
    Sync,
    #[cfg(test)]
    /// Blocks the writer until the sender is dropped (tests of threading).
    Pause(std::sync::mpsc::Receiver<()>),
}

/// What the writer has done.
#[derive(Debug, Clone, Default)]
pub(crate) struct Progress {
    /// The last op whose effect is in the file (with all before it).
    pub written: u64,
    /// The last failure: its op and error.
    pub failed: Option<(u64, Arc<io::Error>)>,
    /// Bytes in the file after the last op.
    pub file_len: u64,
    /// Changes logged as oversize markers.
    pub oversize: u64,
}

/// The hub's handle on the writer thread.
pub(crate) struct LogWriter {
    dir: PathBuf,
    ops: Option<mpsc::Sender<(u64, Op)>>,
    /// The number of the last op sent (under the hub's lock).
    issued: u64,
    progress: watch::Receiver<Progress>,
    thread: Option<JoinHandle<()>>,
}

impl LogWriter {
    /// Starts the writer thread with `log` and a copy of the hub's buffer.
    pub fn spawn(
        log: ReplayLog,
        buffer: ReplayBuffer,
        stats: FanoutStats,
    ) -> io::Result<LogWriter> {
        let dir = log.dir().to_path_buf();
        let (ops, incoming) = mpsc::channel();
        let (progress_tx, progress) = watch::channel(Progress {
            file_len: log.file_len().unwrap_or(0),
            ..Progress::default()
        });
        let thread = std::thread::Builder::new()
            .name("walcast-replay-log".into())
            .spawn(move || run(log, buffer, incoming, progress_tx, stats))?;
        Ok(LogWriter {
            dir,
            ops: Some(ops),
            issued: 0,
            progress,
            thread: Some(thread),
        })
    }

    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Sends an op; returns its number. Never blocks.
    pub fn send(&mut self, op: Op) -> u64 {
        self.issued += 1;
        if let Some(ops) = &self.ops {
            // A writer that is gone (it panicked) never reports the op as
            // written: waiting for it fails with `WriterGone`.
            let _ = ops.send((self.issued, op));
        }
        self.issued
    }

    /// The number of the last op sent.
    pub fn issued(&self) -> u64 {
        self.issued
    }

    /// Whether the last op reported failed and no later one succeeded: the
    /// file may lack changes the hub holds.
    pub fn stale(&self) -> bool {
        let progress = self.progress.borrow();
        progress
            .failed
            .as_ref()
            .is_some_and(|(op, _)| *op > progress.written)
    }

    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.clone()
    }
}

impl Drop for LogWriter {
    /// Closes the channel and waits for the thread, which closes the log
    /// cleanly (its `closed` record) and releases its lock.
    fn drop(&mut self) {
        self.ops.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Waits until op `n` is in the file. Errors with the failure of an op at
/// or after `n` that no later op repaired, or when the writer is gone.
pub(crate) async fn wait_written(
    mut progress: watch::Receiver<Progress>,
    n: u64,
) -> Result<(), Arc<io::Error>> {
    loop {
        {
            let p = progress.borrow_and_update();
            if p.written >= n {
                return Ok(());
            }
            if let Some((op, error)) = &p.failed {
                if *op >= n {
                    return Err(Arc::clone(error));
                }
            }
        }
        if progress.changed().await.is_err() {
            return Err(Arc::new(io::Error::other(
                "the replay log writer thread stopped",
            )));
        }
    }
}

fn run(
    mut log: ReplayLog,
    mut buffer: ReplayBuffer,
    incoming: mpsc::Receiver<(u64, Op)>,
    progress: watch::Sender<Progress>,
    stats: FanoutStats,
) {
    while let Ok((n, op)) = incoming.recv() {
        let result = apply(&mut log, &mut buffer, op, &stats);
        if result.is_err() {
            stats.record_replay_log_error();
        }
        progress.send_modify(|p| {
            match result {
                Ok(()) => p.written = n,
                Err(e) => {
                    warn!(dir = %log.dir().display(), op = n, error = %e, "cannot write the replay log; the delivery is not acked, the next write rewrites the file");
                    p.failed = Some((n, Arc::new(e)));
                }
            }
            p.file_len = log.file_len().unwrap_or(p.file_len);
            p.oversize = log.oversize();
        });
    }
    debug!(dir = %log.dir().display(), "replay log writer stopping");
}

fn apply(
    log: &mut ReplayLog,
    buffer: &mut ReplayBuffer,
    op: Op,
    stats: &FanoutStats,
) -> io::Result<()> {
    match op {
        Op::Append(change) => {
            let written = log.append(&change, buffer);
            // Held even when the write failed: the rewrite that repairs the
            // file must include it (see the module doc).
            buffer.push_shared(change);
            written?;
            match log.maybe_compact(buffer) {
                Ok(false) => {}
                Ok(true) => debug!("replay log compacted"),
                // The file is complete, only longer; retried later.
                Err(e) => {
                    stats.record_replay_log_error();
                    warn!(error = %e, dir = %log.dir().display(), "cannot compact the replay log; it keeps growing until a retry succeeds")
                }
            }
            Ok(())
        }
        Op::AdoptSource(source) => {
            buffer.adopt_source(&source);
            rewrite(log, buffer)
        }
        Op::RestartForSource(source) => {
            buffer.restart_for_source(&source);
            rewrite(log, buffer)
        }
        Op::RestartHistory => {
            buffer.restart_history();
            rewrite(log, buffer)
        }
        Op::OfferHistoryStart { xmax, generation } => {
            if buffer.offer_history_start(xmax, generation) {
                rewrite(log, buffer)
            } else {
                Ok(())
            }
        }
        Op::Sync => log.repair(buffer),
        #[cfg(test)]
        Op::Pause(until) => {
            let _ = until.recv();
            Ok(())
        }
    }
}

/// A rewrite that failed leaves the old file, which lacks this step of the
/// history: the next append must rewrite first.
fn rewrite(log: &mut ReplayLog, buffer: &ReplayBuffer) -> io::Result<()> {
    log.rewrite(buffer).inspect_err(|_| log.mark_stale())
}
