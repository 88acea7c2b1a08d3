//! The replay log: the replay buffer's history on disk, so a gateway that
//! crashed (SIGKILL, panic, OOM kill) comes back with it.
//!
//! # Files (in `fanout.replay_dir`)
//!
//! - `LOCK`: held with an exclusive `flock` for the life of the log; a
//!   second gateway on the same directory fails at startup
//!   ([`ReplayLogError::Locked`]).
//! - `replay.log`: a sequence of records, each
//!   `[len: u32 LE][crc32: u32 LE][kind: u8][payload]`, `len` counting kind
//!   and payload and the CRC covering both. The file starts with a header
//!   (format version, the kernel boot id, whether records are fsynced) and
//!   the horizons ([`Horizons`], and since sources exist the history's source:
//!   optional fields behind flag bits, so a log written before has none and
//!   loads as "source unknown"), followed by change records
//!   (`[commit_lsn: u64 LE][ordinal: u32 LE][body]`; everything else, such as
//!   the xid, is re-parsed from the body) and, after a clean close, a
//!   `closed` record.
//! - One size limit for writing and loading ([`MAX_RECORD`]): a change whose
//!   record would be larger is never written. It is delivered live and held
//!   in memory as usual, but the log gets an *oversize marker* instead
//!   (`[commit_lsn][ordinal][xid]`, counted and logged at warn). Loading
//!   treats the marker as an eviction of everything up to it: a cursor from
//!   before it gets `resync` rather than a replay with a hole, and the
//!   records after it load as usual.
//!
//! # Writing
//!
//! [`ReplayLog::append`] writes a change's record with one `write(2)` before
//! the hub emits the change and before the consumer acks its delivery. Once
//! the bytes are in the page cache a crash of the process cannot lose them;
//! with `fanout.replay_fsync` each record is also `fdatasync`ed. When a
//! write fails the delivery fails (the consumer does not ack, the broker
//! redelivers), and the next append first rewrites the whole file from
//! memory, so a half-written record never sits in front of good ones.
//!
//! Compaction: when the file holds more than twice the buffer's capacity of
//! change records, the buffer and its horizons are written to
//! `replay.log.tmp`, which is renamed over `replay.log` (fsyncing both, and
//! the directory, when `replay_fsync` is on). The same rewrite starts every
//! process's file and records a new history start or restart.
//!
//! # Loading
//!
//! [`ReplayLog::open`] reads the records in order through a fresh
//! [`ReplayBuffer`] with the stored horizons, so eviction replays exactly as
//! it happened and the newest `replay_buffer` changes end up held. Reading
//! stops at the first record that is short, fails its checksum or does not
//! parse: that is a torn last write, and it and anything after it are
//! dropped (the change was not acked, so the broker delivers it again).
//!
//! A machine crash can lose page-cache writes that were never synced, and
//! those changes were acked, so no one delivers them again: a client whose
//! cursor falls in the lost tail would get a silent gap. So when the boot id
//! differs from the header's, the log was not closed cleanly and its
//! records were not fsynced, the history is **discarded**: the gateway
//! starts a new one and every `since`/`snapshot` from before gets `resync`.
//! Without a boot id (not Linux) the log is trusted.
//!
//! Synchronous file I/O, run on the writer thread (`log_writer`), never
//! under the hub's lock. It does not decide what is a duplicate or what to evict (the
//! buffer does) and knows nothing of sockets or the broker.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use tracing::{info, warn};

use super::change::Change;
use super::replay::ReplayBuffer;

use super::replay_record::*;

pub const LOG_FILE: &str = "replay.log";
pub(super) const TMP_FILE: &str = "replay.log.tmp";
pub const LOCK_FILE: &str = "LOCK";

pub(super) const MAGIC: &[u8; 18] = b"walcast-replay-log";
pub(super) const VERSION: u8 = 1;
/// The largest record written, and read: a length above it is garbage, not
/// a record. A change whose record would exceed it is logged as an oversize
/// marker (module doc).
pub const MAX_RECORD: usize = 64 << 20;
/// Kind, commit LSN and ordinal in front of a change's body.
pub(super) const CHANGE_PREFIX: usize = 1 + 12;
pub(super) const FRAME_HEADER: usize = 8;

pub(super) const KIND_HEADER: u8 = 1;
pub(super) const KIND_HORIZONS: u8 = 2;
pub(super) const KIND_CHANGE: u8 = 3;
pub(super) const KIND_CLOSED: u8 = 4;
pub(super) const KIND_OVERSIZE: u8 = 5;

/// Why the replay log cannot be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum ReplayLogError {
    #[error("fanout.replay_dir {dir} is in use by another walcast process (it holds the lock on {lock}); give each gateway its own replay_dir, or stop the other process")]
    Locked { dir: PathBuf, lock: PathBuf },
    #[error("replay log: cannot {action} {path}: {source}; fanout.replay_dir must be a writable directory on a local filesystem")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

impl ReplayLogError {
    fn io<'a>(
        action: &'static str,
        path: &'a Path,
    ) -> impl FnOnce(io::Error) -> ReplayLogError + 'a {
        move |source| ReplayLogError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// What [`ReplayLog::open`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Change records read (before eviction to the buffer's capacity).
    pub records: usize,
    /// Bytes dropped at the end: a torn or corrupt tail.
    pub dropped_bytes: u64,
    /// Oversize markers read: changes the log could not hold (module doc).
    pub oversize: usize,
    /// Why the whole history was thrown away, if it was.
    pub discarded: Option<&'static str>,
}

/// An open replay log; see the module doc.
pub struct ReplayLog {
    dir: PathBuf,
    file: File,
    _lock: File,
    fsync: bool,
    boot_id: Option<String>,
    /// Change records in the current file.
    records: usize,
    /// Compact once `records` exceeds this.
    compact_above: usize,
    /// After a failed compaction, the next attempt waits for this many.
    retry_compaction_at: usize,
    /// A write failed: the file may end in a partial record.
    broken: bool,
    scratch: Vec<u8>,
    /// Changes written as oversize markers, since open.
    oversize: u64,
}

impl ReplayLog {
    /// Locks `dir`, loads its history into a buffer of `capacity` and starts
    /// a fresh file with it.
    pub fn open(
        dir: &Path,
        capacity: usize,
        fsync: bool,
    ) -> Result<(ReplayLog, ReplayBuffer, LoadReport), ReplayLogError> {
        fs::create_dir_all(dir).map_err(ReplayLogError::io("create directory", dir))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(ReplayLogError::io("open", &lock_path))?;
        match fs4::FileExt::try_lock(&lock) {
            Ok(()) => {}
            Err(fs4::TryLockError::WouldBlock) => {
                return Err(ReplayLogError::Locked {
                    dir: dir.to_path_buf(),
                    lock: lock_path,
                })
            }
            Err(fs4::TryLockError::Error(source)) => {
                return Err(ReplayLogError::Io {
                    action: "lock",
                    path: lock_path,
                    source,
                })
            }
        }

        let boot_id = current_boot_id();
        let path = dir.join(LOG_FILE);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(ReplayLogError::io("read", &path)(e)),
        };
        let (buffer, report) = load(&bytes, capacity, boot_id.as_deref());
        if let Some(reason) = report.discarded {
            warn!(path = %path.display(), reason, "discarding the replay history; clients with older cursors get resync");
        } else if !bytes.is_empty() {
            info!(
                path = %path.display(),
                records = report.records,
                held = buffer.len(),
                dropped_bytes = report.dropped_bytes,
                latest_id = ?buffer.latest_id().map(|id| id.to_string()),
                "replay history loaded"
            );
        }
        if report.dropped_bytes > 0 {
            warn!(path = %path.display(), dropped_bytes = report.dropped_bytes, "replay log ended in a torn or corrupt record; dropped it");
        }

        let file = rewrite(dir, &buffer, fsync, boot_id.as_deref())
            .map_err(ReplayLogError::io("write", &dir.join(TMP_FILE)))?;
        let log = ReplayLog {
            dir: dir.to_path_buf(),
            file,
            _lock: lock,
            fsync,
            boot_id,
            records: buffer.len(),
            compact_above: 2 * capacity.max(1),
            retry_compaction_at: 0,
            broken: false,
            scratch: Vec::new(),
            oversize: 0,
        };
        Ok((log, buffer, report))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes `change` (new, about to be pushed into `buffer`). `buffer` is
    /// what the file is rebuilt from if an earlier write failed.
    pub fn append(&mut self, change: &Change, buffer: &ReplayBuffer) -> io::Result<()> {
        if self.broken {
            self.rewrite(buffer)?;
        }
        self.scratch.clear();
        if !encode_change(&mut self.scratch, change) {
            self.oversize += 1;
            warn!(
                id = %change.id,
                bytes = change.raw().len(),
                max_record = MAX_RECORD,
                "change too large for the replay log; delivered live, logged as a marker (after a restart, cursors before it get resync)"
            );
        }
        let result = self.file.write_all(&self.scratch).and_then(|()| {
            if self.fsync {
                self.file.sync_data()
            } else {
                Ok(())
            }
        });
        if let Err(e) = result {
            self.broken = true;
            return Err(e);
        }
        self.records += 1;
        Ok(())
    }

    /// Compacts if the file has grown past twice the capacity. A failure
    /// leaves the current file in use (it is complete, only longer) and
    /// retries after another half capacity of records.
    pub fn maybe_compact(&mut self, buffer: &ReplayBuffer) -> io::Result<bool> {
        if self.records <= self.compact_above || self.records < self.retry_compaction_at {
            return Ok(false);
        }
        if let Err(e) = self.rewrite(buffer) {
            self.retry_compaction_at = self.records + self.compact_above / 4 + 1;
            return Err(e);
        }
        Ok(true)
    }

    /// Rewrites the file from `buffer`: after the history start or the
    /// history itself changed (those live in the horizons record).
    pub fn rewrite(&mut self, buffer: &ReplayBuffer) -> io::Result<()> {
        self.file = rewrite(&self.dir, buffer, self.fsync, self.boot_id.as_deref())?;
        self.records = buffer.len();
        self.broken = false;
        Ok(())
    }

    /// Rewrites the file if a write failed since the last rewrite.
    pub fn repair(&mut self, buffer: &ReplayBuffer) -> io::Result<()> {
        if self.broken {
            self.rewrite(buffer)?;
        }
        Ok(())
    }

    /// The file no longer matches the history in memory (a rewrite that
    /// recorded a change of it failed): the next append rewrites it first.
    pub fn mark_stale(&mut self) {
        self.broken = true;
    }

    /// Changes written as oversize markers since open.
    pub fn oversize(&self) -> u64 {
        self.oversize
    }

    /// Bytes in the current file (for tests and metrics).
    pub fn file_len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }
}

impl Drop for ReplayLog {
    /// A clean close: everything synced, then a `closed` record, so the
    /// history is trusted even after a reboot.
    fn drop(&mut self) {
        if self.broken {
            return;
        }
        let mut closed = Vec::new();
        encode_frame(&mut closed, KIND_CLOSED, &[]);
        let result = self
            .file
            .sync_all()
            .and_then(|()| self.file.write_all(&closed))
            .and_then(|()| self.file.sync_all());
        if let Err(e) = result {
            warn!(dir = %self.dir.display(), error = %e, "cannot close the replay log cleanly; after a reboot its history is discarded");
        }
    }
}

/// Writes `buffer` and its horizons to a new file, renames it over the log
/// and returns it, positioned at its end.
fn rewrite(
    dir: &Path,
    buffer: &ReplayBuffer,
    fsync: bool,
    boot_id: Option<&str>,
) -> io::Result<File> {
    let tmp = dir.join(TMP_FILE);
    let mut out = Vec::with_capacity(256 + buffer.bytes() + 24 * buffer.len());
    let mut header = Vec::with_capacity(64);
    header.extend_from_slice(MAGIC);
    header.push(VERSION);
    header.push(u8::from(fsync));
    let boot = boot_id.unwrap_or("").as_bytes();
    header.push(boot.len().min(255) as u8);
    header.extend_from_slice(&boot[..boot.len().min(255)]);
    encode_frame(&mut out, KIND_HEADER, &header);
    encode_frame(
        &mut out,
        KIND_HORIZONS,
        &encode_horizons(buffer.horizons(), buffer.source()),
    );
    for change in buffer.after(None) {
        encode_change(&mut out, change);
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)?;
    file.write_all(&out)?;
    if fsync {
        file.sync_all()?;
    }
    fs::rename(&tmp, dir.join(LOG_FILE))?;
    if fsync {
        // The rename is in place either way; only its durability is at stake.
        if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
            warn!(dir = %dir.display(), error = %e, "cannot fsync the replay directory");
        }
    }
    Ok(file)
}

/// Reads a log's bytes into a buffer of `capacity`; pure.
pub fn load(bytes: &[u8], capacity: usize, boot_id: Option<&str>) -> (ReplayBuffer, LoadReport) {
    let mut report = LoadReport::default();
    let mut buffer = ReplayBuffer::new(capacity);
    if bytes.is_empty() {
        return (buffer, report);
    }
    let mut pos = 0;
    let mut header: Option<Header> = None;
    let mut clean = false;
    let mut index = 0usize;
    while pos < bytes.len() {
        let Some((kind, payload, next)) = next_frame(bytes, pos) else {
            break;
        };
        let ok = match (index, kind) {
            (0, KIND_HEADER) => match parse_header(payload) {
                Some(h) => {
                    header = Some(h);
                    true
                }
                None => false,
            },
            (0, _) => false,
            (1, KIND_HORIZONS) => match parse_horizons(payload) {
                Some((h, source)) => {
                    buffer = ReplayBuffer::with_horizons(capacity, h);
                    if let Some(source) = source {
                        buffer.adopt_source(&source);
                    }
                    true
                }
                None => false,
            },
            (1, _) => false,
            (_, KIND_CHANGE) => match parse_change(payload) {
                Some(change) => {
                    report.records += 1;
                    if !buffer.is_duplicate(&change.id) {
                        buffer.push(change);
                    }
                    true
                }
                None => false,
            },
            (_, KIND_OVERSIZE) => match parse_oversize(payload) {
                Some((id, xid)) => {
                    report.oversize += 1;
                    buffer.evict_through(id, xid);
                    true
                }
                None => false,
            },
            (_, KIND_CLOSED) => true,
            _ => false,
        };
        if !ok {
            break;
        }
        clean = kind == KIND_CLOSED;
        index += 1;
        pos = next;
    }
    report.dropped_bytes = (bytes.len() - pos) as u64;
    let Some(header) = header else {
        report.discarded = Some("the file is not a walcast replay log of a known version");
        report.records = 0;
        return (ReplayBuffer::new(capacity), report);
    };
    if index < 2 {
        report.discarded = Some("the file ends before its horizons record");
        return (ReplayBuffer::new(capacity), report);
    }
    let same_boot = match (boot_id, header.boot_id.as_str()) {
        (Some(now), then) => now == then,
        (None, _) => true,
    };
    if !same_boot && !clean && !header.fsync {
        report.discarded = Some(
            "the machine restarted since the log was last written, it was not closed cleanly and its records were not fsynced, so acked changes may be missing from its end",
        );
        return (ReplayBuffer::new(capacity), report);
    }
    (buffer, report)
}

/// The kernel's id for this boot (Linux); a different one means the
/// machine restarted.
fn current_boot_id() -> Option<String> {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EventId, Lsn};
    use crate::fanout::replay::Horizons;

    fn id(n: u64) -> EventId {
        EventId {
            commit_lsn: Lsn(n),
            ordinal: 0,
        }
    }

    fn change(n: u64) -> Change {
        let body = format!(
            r#"{{"id":"{}","op":"insert","schema":"public","table":"t","key":{{"id":{n}}},"xid":{}}}"#,
            id(n),
            1000 + n
        );
        Change::parse(body.into_bytes()).unwrap()
    }

    /// What the hub does with a new change.
    fn deliver(log: &mut ReplayLog, buffer: &mut ReplayBuffer, n: u64) {
        let c = change(n);
        assert!(!buffer.is_duplicate(&c.id));
        log.append(&c, buffer).unwrap();
        buffer.push(c);
        log.maybe_compact(buffer).unwrap();
    }

    fn held(buffer: &ReplayBuffer) -> Vec<u64> {
        buffer.after(None).map(|c| c.id.commit_lsn.0).collect()
    }

    /// Drops the log as a crash would: no `closed` record.
    fn crash(mut log: ReplayLog) {
        log.broken = true;
    }

    #[test]
    fn history_survives_a_crash_and_a_clean_close() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, mut buffer, report) = ReplayLog::open(dir.path(), 5, false).unwrap();
        assert_eq!(report, LoadReport::default());
        assert!(buffer.offer_history_start(900, buffer.generation()));
        log.rewrite(&buffer).unwrap();
        for n in 1..=8 {
            deliver(&mut log, &mut buffer, n);
        }
        crash(log);

        let (log, loaded, report) = ReplayLog::open(dir.path(), 5, false).unwrap();
        assert_eq!(report.dropped_bytes, 0);
        assert_eq!(report.discarded, None);
        assert_eq!(held(&loaded), vec![4, 5, 6, 7, 8]);
        assert_eq!(loaded.horizons(), buffer.horizons());
        assert_eq!(loaded.horizons().history_start, Some(900));
        assert!(loaded.is_duplicate(&id(3)) && loaded.is_duplicate(&id(8)));
        drop(log); // clean close

        let bytes = fs::read(dir.path().join(LOG_FILE)).unwrap();
        let (after_reboot, report) = load(&bytes, 5, Some("another boot"));
        assert_eq!(report.discarded, None, "a clean close is trusted");
        assert_eq!(held(&after_reboot), vec![4, 5, 6, 7, 8]);
    }

    #[test]
    fn a_torn_or_corrupt_last_record_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, mut buffer, _) = ReplayLog::open(dir.path(), 100, false).unwrap();
        for n in 1..=10 {
            deliver(&mut log, &mut buffer, n);
        }
        crash(log);
        let path = dir.path().join(LOG_FILE);
        let bytes = fs::read(&path).unwrap();

        // Cut short inside the last record.
        let (loaded, report) = load(&bytes[..bytes.len() - 7], 100, None);
        assert_eq!(held(&loaded), (1..=9).collect::<Vec<_>>());
        assert!(report.dropped_bytes > 0);
        assert_eq!(report.records, 9);

        // A flipped byte in the last body fails its checksum.
        let mut flipped = bytes.clone();
        let at = flipped.len() - 3;
        flipped[at] ^= 0x20;
        let (loaded, report) = load(&flipped, 100, None);
        assert_eq!(loaded.latest_id(), Some(id(9)));
        assert!(report.dropped_bytes > 0);

        // Through open: the file is rewritten without the torn record.
        fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        let (log, loaded, report) = ReplayLog::open(dir.path(), 100, false).unwrap();
        assert_eq!(loaded.latest_id(), Some(id(9)));
        assert!(report.dropped_bytes > 0);
        crash(log);
        let (_log, loaded, report) = ReplayLog::open(dir.path(), 100, false).unwrap();
        assert_eq!((loaded.latest_id(), report.dropped_bytes), (Some(id(9)), 0));
    }

    #[test]
    fn after_a_reboot_an_unsynced_unclosed_log_is_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, mut buffer, _) = ReplayLog::open(dir.path(), 100, false).unwrap();
        deliver(&mut log, &mut buffer, 1);
        crash(log);
        let bytes = fs::read(dir.path().join(LOG_FILE)).unwrap();
        let (loaded, report) = load(&bytes, 100, Some("another boot"));
        assert!(report.discarded.is_some());
        assert!(loaded.is_empty());
        assert_eq!(loaded.horizons(), Horizons::default());

        // fsynced records are trusted after a reboot.
        let dir = tempfile::tempdir().unwrap();
        let (mut log, mut buffer, _) = ReplayLog::open(dir.path(), 100, true).unwrap();
        deliver(&mut log, &mut buffer, 1);
        crash(log);
        let bytes = fs::read(dir.path().join(LOG_FILE)).unwrap();
        let (loaded, report) = load(&bytes, 100, Some("another boot"));
        assert_eq!((report.discarded, held(&loaded)), (None, vec![1]));
    }

    #[test]
    fn garbage_is_not_a_history() {
        for bytes in [&b"hello world, not a log"[..], &[0u8; 64][..]] {
            let (loaded, report) = load(bytes, 10, None);
            assert!(loaded.is_empty() && report.discarded.is_some());
        }
    }

    #[test]
    fn compaction_keeps_the_file_bounded_and_the_history_intact() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, mut buffer, _) = ReplayLog::open(dir.path(), 10, false).unwrap();
        let one_record = {
            let c = change(1);
            (FRAME_HEADER + CHANGE_PREFIX + c.raw().len()) as u64
        };
        let mut largest = 0;
        for n in 1..=100 {
            deliver(&mut log, &mut buffer, n);
            largest = largest.max(log.file_len().unwrap());
        }
        assert!(log.records <= 21, "{}", log.records);
        assert!(largest <= 21 * (one_record + 2) + 256, "{largest}");
        crash(log);
        let (_log, loaded, _) = ReplayLog::open(dir.path(), 10, false).unwrap();
        assert_eq!(held(&loaded), (91..=100).collect::<Vec<_>>());
        assert_eq!(loaded.horizons().max_evicted, Some(id(90)));
        assert_eq!(loaded.check_since(id(90)), Ok(()));
        assert!(loaded.check_since(id(89)).is_err());
    }

    #[test]
    fn a_second_opener_is_refused_with_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _, _) = ReplayLog::open(dir.path(), 10, false).unwrap();
        let Err(err) = ReplayLog::open(dir.path(), 10, false) else {
            panic!("a second open succeeded");
        };
        assert!(matches!(err, ReplayLogError::Locked { .. }));
        assert!(err
            .to_string()
            .contains("in use by another walcast process"));
        drop(log);
        assert!(ReplayLog::open(dir.path(), 10, false).is_ok());
    }

    #[test]
    fn a_failed_write_is_repaired_before_the_next_one() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, mut buffer, _) = ReplayLog::open(dir.path(), 10, false).unwrap();
        deliver(&mut log, &mut buffer, 1);
        // Simulate a partial write: garbage at the end, marked broken.
        log.file.write_all(&[1, 2, 3]).unwrap();
        log.broken = true;
        deliver(&mut log, &mut buffer, 2);
        crash(log);
        let (_log, loaded, report) = ReplayLog::open(dir.path(), 10, false).unwrap();
        assert_eq!((held(&loaded), report.dropped_bytes), (vec![1, 2], 0));
    }

    /// A change too large for a record used to be written anyway, then read
    /// back as a torn write: it and every change after it were lost.
    #[test]
    fn a_change_too_large_for_a_record_leaves_a_marker_and_loading_continues() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, mut buffer, _) = ReplayLog::open(dir.path(), 100, false).unwrap();
        buffer.adopt_source("7/db/slot");
        log.rewrite(&buffer).unwrap();
        deliver(&mut log, &mut buffer, 1);
        let big = {
            let body = format!(
                r#"{{"id":"{}","op":"insert","schema":"public","table":"t","key":{{"id":2}},"xid":1002,"new":{{"blob":"{}"}}}}"#,
                id(2),
                "x".repeat(MAX_RECORD)
            );
            Change::parse(body.into_bytes()).unwrap()
        };
        log.append(&big, &buffer).unwrap();
        buffer.push(big);
        assert_eq!(log.oversize(), 1);
        deliver(&mut log, &mut buffer, 3);
        assert!(
            log.file_len().unwrap() < MAX_RECORD as u64,
            "no oversized record written"
        );
        crash(log);

        let (_log, loaded, report) = ReplayLog::open(dir.path(), 100, false).unwrap();
        assert_eq!(report.dropped_bytes, 0, "nothing is torn");
        assert_eq!(report.oversize, 1);
        assert_eq!(held(&loaded), vec![3], "the change after the marker loads");
        assert_eq!(loaded.source(), Some("7/db/slot"));
        // A cursor before the missing body cannot be served without a gap.
        assert_eq!(
            loaded.check_since(id(1)),
            Err(super::super::replay::ResyncReason::SinceTooOld)
        );
        assert_eq!(loaded.check_since(id(2)), Ok(()));
        assert!(loaded.is_duplicate(&id(2)));
        assert_eq!(loaded.horizons().xid_horizon, Some(1002));
    }

    #[test]
    fn the_source_is_persisted_and_a_log_without_one_still_loads() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, mut buffer, _) = ReplayLog::open(dir.path(), 10, false).unwrap();
        deliver(&mut log, &mut buffer, 1);
        crash(log);
        // Written without a source, as every log before sources was.
        let (log, loaded, _) = ReplayLog::open(dir.path(), 10, false).unwrap();
        assert_eq!((loaded.source(), held(&loaded)), (None, vec![1]));
        drop(log);

        let (mut log, mut buffer, _) = ReplayLog::open(dir.path(), 10, false).unwrap();
        buffer.restart_for_source("2/db/slot");
        log.rewrite(&buffer).unwrap();
        deliver(&mut log, &mut buffer, 1);
        crash(log);
        let (_log, loaded, _) = ReplayLog::open(dir.path(), 10, false).unwrap();
        assert_eq!(loaded.source(), Some("2/db/slot"));
        assert!(loaded.horizons().source_changed);
        assert_eq!(held(&loaded), vec![1]);
    }
}
