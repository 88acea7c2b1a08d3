//! The replay log's record format: frames (`[len][crc][kind][payload]`),
//! and the payloads of its header, horizons, change and oversize records.
//! Pure byte encoding and parsing; the file, its locking, compaction and
//! loading are `replay_log`.

use crate::event::{EventId, Lsn};

use super::change::Change;
use super::replay::Horizons;
use super::replay_log::*;

pub(super) struct Header {
    pub(super) fsync: bool,
    pub(super) boot_id: String,
}

pub(super) fn next_frame(bytes: &[u8], pos: usize) -> Option<(u8, &[u8], usize)> {
    let rest = &bytes[pos..];
    if rest.len() < FRAME_HEADER {
        return None;
    }
    let len = u32::from_le_bytes(rest[0..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(rest[4..8].try_into().ok()?);
    if len == 0 || len > MAX_RECORD || rest.len() - FRAME_HEADER < len {
        return None;
    }
    let body = &rest[FRAME_HEADER..FRAME_HEADER + len];
    if crc32fast::hash(body) != crc {
        return None;
    }
    Some((body[0], &body[1..], pos + FRAME_HEADER + len))
}

pub(super) fn encode_frame(out: &mut Vec<u8>, kind: u8, payload: &[u8]) {
    let start = out.len();
    out.extend_from_slice(&((payload.len() + 1) as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.push(kind);
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out[start + FRAME_HEADER..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Appends `change`'s record, or its oversize marker when the record would
/// exceed [`MAX_RECORD`]; returns whether the whole change was written.
pub(super) fn encode_change(out: &mut Vec<u8>, change: &Change) -> bool {
    let body = change.raw().as_bytes();
    let start = out.len();
    let whole = CHANGE_PREFIX + body.len() <= MAX_RECORD;
    let len = if whole {
        CHANGE_PREFIX + body.len()
    } else {
        CHANGE_PREFIX + 4
    };
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.push(if whole { KIND_CHANGE } else { KIND_OVERSIZE });
    out.extend_from_slice(&change.id.commit_lsn.0.to_le_bytes());
    out.extend_from_slice(&change.id.ordinal.to_le_bytes());
    if whole {
        out.extend_from_slice(body);
    } else {
        out.extend_from_slice(&change.xid.to_le_bytes());
    }
    let crc = crc32fast::hash(&out[start + FRAME_HEADER..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    whole
}

pub(super) fn parse_oversize(payload: &[u8]) -> Option<(EventId, u32)> {
    let bytes: &[u8; 16] = payload.try_into().ok()?;
    let id = EventId {
        commit_lsn: Lsn(u64::from_le_bytes(bytes[0..8].try_into().ok()?)),
        ordinal: u32::from_le_bytes(bytes[8..12].try_into().ok()?),
    };
    Some((id, u32::from_le_bytes(bytes[12..16].try_into().ok()?)))
}

pub(super) fn parse_change(payload: &[u8]) -> Option<Change> {
    if payload.len() < 12 {
        return None;
    }
    let id = EventId {
        commit_lsn: Lsn(u64::from_le_bytes(payload[0..8].try_into().ok()?)),
        ordinal: u32::from_le_bytes(payload[8..12].try_into().ok()?),
    };
    let change = Change::parse(payload[12..].to_vec()).ok()?;
    (change.id == id).then_some(change)
}

pub(super) fn parse_header(payload: &[u8]) -> Option<Header> {
    let rest = payload.strip_prefix(MAGIC.as_slice())?;
    let (&[version, fsync, boot_len], rest) = rest.split_first_chunk::<3>()?;
    if version != VERSION || rest.len() != usize::from(boot_len) {
        return None;
    }
    Some(Header {
        fsync: fsync == 1,
        boot_id: String::from_utf8(rest.to_vec()).ok()?,
    })
}

pub(super) const HAS_FIRST: u8 = 1;
pub(super) const HAS_EVICTED: u8 = 2;
pub(super) const HAS_XID_HORIZON: u8 = 4;
pub(super) const HAS_START: u8 = 8;
pub(super) const HAS_SOURCE_CHANGED: u8 = 16;
/// Followed by `[len: u16 LE][source, UTF-8]`, after every other field.
pub(super) const HAS_SOURCE: u8 = 32;

pub(super) fn encode_horizons(h: Horizons, source: Option<&str>) -> Vec<u8> {
    let mut out = vec![0u8];
    let id = |out: &mut Vec<u8>, id: EventId| {
        out.extend_from_slice(&id.commit_lsn.0.to_le_bytes());
        out.extend_from_slice(&id.ordinal.to_le_bytes());
    };
    if let Some(first) = h.first_received {
        out[0] |= HAS_FIRST;
        id(&mut out, first);
    }
    if let Some(evicted) = h.max_evicted {
        out[0] |= HAS_EVICTED;
        id(&mut out, evicted);
    }
    if let Some(xid) = h.xid_horizon {
        out[0] |= HAS_XID_HORIZON;
        out.extend_from_slice(&xid.to_le_bytes());
    }
    if let Some(xmax) = h.history_start {
        out[0] |= HAS_START;
        out.extend_from_slice(&xmax.to_le_bytes());
    }
    if h.source_changed {
        out[0] |= HAS_SOURCE_CHANGED;
    }
    // A source is `<u64>/<database>/<slot>`: far below 64 KiB; a longer one
    // (never produced by walcast) is not persisted rather than cut.
    if let Some(source) = source.filter(|s| s.len() <= usize::from(u16::MAX)) {
        out[0] |= HAS_SOURCE;
        out.extend_from_slice(&(source.len() as u16).to_le_bytes());
        out.extend_from_slice(source.as_bytes());
    }
    out
}

pub(super) fn parse_horizons(payload: &[u8]) -> Option<(Horizons, Option<String>)> {
    let (&flags, mut rest) = payload.split_first()?;
    let mut take = |n: usize| -> Option<&[u8]> {
        let (head, tail) = rest.split_at_checked(n)?;
        rest = tail;
        Some(head)
    };
    let mut id = |present: bool| -> Option<Option<EventId>> {
        if !present {
            return Some(None);
        }
        let bytes = take(12)?;
        Some(Some(EventId {
            commit_lsn: Lsn(u64::from_le_bytes(bytes[0..8].try_into().ok()?)),
            ordinal: u32::from_le_bytes(bytes[8..12].try_into().ok()?),
        }))
    };
    let first_received = id(flags & HAS_FIRST != 0)?;
    let max_evicted = id(flags & HAS_EVICTED != 0)?;
    let mut xid = |present: bool| -> Option<Option<u32>> {
        if !present {
            return Some(None);
        }
        Some(Some(u32::from_le_bytes(take(4)?.try_into().ok()?)))
    };
    let xid_horizon = xid(flags & HAS_XID_HORIZON != 0)?;
    let history_start = xid(flags & HAS_START != 0)?;
    let source = if flags & HAS_SOURCE != 0 {
        let len = u16::from_le_bytes(take(2)?.try_into().ok()?);
        Some(String::from_utf8(take(usize::from(len))?.to_vec()).ok()?)
    } else {
        None
    };
    let horizons = Horizons {
        first_received,
        max_evicted,
        xid_horizon,
        history_start,
        source_changed: flags & HAS_SOURCE_CHANGED != 0,
    };
    Some((horizons, source))
}
