//! Transaction-snapshot visibility for the snapshot hand-off.
//!
//! A client that loaded a listing over HTTP got that listing's
//! `pg_current_snapshot()` text (`xmin:xmax:xip1,xip2,...`). [`Snapshot`]
//! parses it and answers, for an event's `xid`, whether the listing already
//! contains that transaction's effects ([`Snapshot::sees`]). Transaction ids
//! are compared as PostgreSQL compares 32-bit xids: modulo 2^32, `a` precedes
//! `b` when `(a - b) as i32 < 0` ([`xid_precedes`]). The snapshot's values are
//! 64-bit (`xid8`, epoch in the high half); only their low 32 bits are used,
//! because events carry 32-bit xids.
//!
//! This module is pure: it does not decide what to send or when to resync
//! (that is the hub's job, with the replay buffer's xid horizon).

use std::fmt;
use std::str::FromStr;

/// Whether transaction id `a` precedes `b`, with 32-bit wraparound.
pub fn xid_precedes(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

/// The later of two transaction ids, with 32-bit wraparound.
pub fn xid_max(a: u32, b: u32) -> u32 {
    if xid_precedes(a, b) {
        b
    } else {
        a
    }
}

/// A parsed `pg_current_snapshot()` text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Every xid that precedes this one is finished: visible if committed.
    pub xmin: u32,
    /// Every xid at or after this one had not started: invisible.
    pub xmax: u32,
    /// Transactions in progress when the snapshot was taken: invisible.
    /// Sorted, so membership is a binary search.
    pub xip: Vec<u32>,
}

/// Why a `snapshot` handshake value is not a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid snapshot {input:?}: {reason}; expected xmin:xmax:xip,... as returned by pg_current_snapshot(), e.g. 740:745:741,743")]
pub struct ParseSnapshotError {
    input: String,
    reason: &'static str,
}

/// Longest snapshot text accepted; a listing's snapshot has at most
/// `max_connections` in-progress xids, so this is generous.
const MAX_SNAPSHOT_LEN: usize = 64 * 1024;

impl FromStr for Snapshot {
    type Err = ParseSnapshotError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| ParseSnapshotError {
            input: s.chars().take(64).collect(),
            reason,
        };
        if s.len() > MAX_SNAPSHOT_LEN {
            return Err(err("too long"));
        }
        let mut parts = s.split(':');
        let (Some(xmin), Some(xmax), Some(xip), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(err("it must have exactly three ':'-separated parts"));
        };
        let number = |text: &str| -> Result<u64, ParseSnapshotError> {
            if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
                return Err(err("xids must be decimal numbers"));
            }
            text.parse::<u64>().map_err(|_| err("xid out of range"))
        };
        let xmin64 = number(xmin)?;
        let xmax64 = number(xmax)?;
        if xmin64 > xmax64 {
            return Err(err("xmin is greater than xmax"));
        }
        let mut in_progress = Vec::new();
        if !xip.is_empty() {
            for text in xip.split(',') {
                let xid = number(text)?;
                if xid < xmin64 || xid >= xmax64 {
                    return Err(err("an in-progress xid lies outside xmin..xmax"));
                }
                in_progress.push(xid as u32);
            }
        }
        in_progress.sort_unstable();
        in_progress.dedup();
        Ok(Snapshot {
            xmin: xmin64 as u32,
            xmax: xmax64 as u32,
            xip: in_progress,
        })
    }
}

impl Snapshot {
    /// Whether the snapshot sees (the listing contains) transaction `xid`.
    ///
    /// `xid < xmin` → seen; `xid >= xmax` → not seen; in between, seen
    /// unless it is in the in-progress list.
    pub fn sees(&self, xid: u32) -> bool {
        if xid_precedes(xid, self.xmin) {
            return true;
        }
        if !xid_precedes(xid, self.xmax) {
            return false;
        }
        self.xip.binary_search(&xid).is_err()
    }

    /// Whether `xid` started after the snapshot was taken (`xid >= xmax`).
    /// Once such a transaction's change has gone by in commit order, every
    /// later change is invisible to the snapshot too.
    pub fn is_after(&self, xid: u32) -> bool {
        !xid_precedes(xid, self.xmax)
    }
}

impl fmt::Display for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:", self.xmin, self.xmax)?;
        for (i, xid) in self.xip.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{xid}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pg_current_snapshot_text() {
        let s: Snapshot = "740:745:741,743".parse().unwrap();
        assert_eq!(
            s,
            Snapshot {
                xmin: 740,
                xmax: 745,
                xip: vec![741, 743]
            }
        );
        let empty: Snapshot = "10:10:".parse().unwrap();
        assert!(empty.xip.is_empty());
        assert_eq!(empty.to_string(), "10:10:");
    }

    #[test]
    fn rejects_malformed_snapshots() {
        for bad in [
            "",
            "garbage",
            "1:2",
            "1:2:3:4",
            "a:2:",
            "5:2:",
            "1:5:7",
            "1:5:0",
            "1:5:2,,3",
            "-1:5:",
            " 1:5:",
            "1:99999999999999999999999:",
        ] {
            let err = bad.parse::<Snapshot>().unwrap_err();
            assert!(err.to_string().contains("pg_current_snapshot"), "{bad:?}");
        }
    }

    #[test]
    fn visibility_follows_xmin_xmax_and_the_in_progress_list() {
        let s: Snapshot = "100:105:102,104".parse().unwrap();
        assert!(s.sees(99));
        assert!(s.sees(100));
        assert!(s.sees(101));
        assert!(!s.sees(102));
        assert!(s.sees(103));
        assert!(!s.sees(104));
        assert!(!s.sees(105));
        assert!(!s.sees(1_000_000));
        assert!(s.is_after(105) && !s.is_after(104));
    }

    #[test]
    fn sixty_four_bit_values_use_their_low_half() {
        let epoch = 3u64 << 32;
        let text = format!("{}:{}:{}", epoch + 100, epoch + 105, epoch + 102);
        let s: Snapshot = text.parse().unwrap();
        assert_eq!((s.xmin, s.xmax, s.xip.clone()), (100, 105, vec![102]));
    }

    #[test]
    fn comparisons_wrap_around() {
        assert!(xid_precedes(u32::MAX, 3));
        assert!(!xid_precedes(3, u32::MAX));
        assert!(xid_precedes(1, 2));
        assert!(!xid_precedes(2, 2));
        assert_eq!(xid_max(u32::MAX - 1, 5), 5);
        assert_eq!(xid_max(5, 7), 7);

        // xmin just before the wrap, xmax just after it (epoch 0 → 1).
        let xmin = u64::from(u32::MAX) - 5;
        let xmax = (1u64 << 32) + 4;
        let xip = u64::from(u32::MAX);
        let s: Snapshot = format!("{xmin}:{xmax}:{xip}").parse().unwrap();
        assert_eq!((s.xmin, s.xmax), (u32::MAX - 5, 4));
        assert!(s.sees(u32::MAX - 6), "before xmin");
        assert!(s.sees(u32::MAX - 5), "xmin, not in progress");
        assert!(!s.sees(u32::MAX), "in progress across the wrap");
        assert!(s.sees(0) && s.sees(3), "after the wrap, before xmax");
        assert!(!s.sees(4) && !s.sees(100), "at or after xmax");
        assert!(s.is_after(4) && !s.is_after(3));
    }
}
