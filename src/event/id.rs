//! The positions and ids an event carries: [`Lsn`] (a WAL position, text
//! form `X/X`) and [`EventId`] (commit LSN and ordinal, text form
//! `<16 hex digits>-<10 digits>`), with their parsing, `Display` and serde
//! forms.
//!
//! It does not decide which LSN is acknowledged when (that is `capture` and
//! `publisher`); it only names and formats positions.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize, Serializer};

use super::ascii::{hex16, Ascii};

/// A PostgreSQL write-ahead-log position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    pub const ZERO: Lsn = Lsn(0);

    /// The 16-digit upper-case hex form used inside event ids.
    pub fn to_hex16(self) -> String {
        Ascii::<16>::from(hex16(self.0)).as_str().to_owned()
    }

    /// Postgres's own `X/X` text form, e.g. `0/16B3748`: each half in
    /// upper-case hex without leading zeros.
    pub(super) fn text(self) -> Ascii<17> {
        let mut text = Ascii::default();
        let (high, low) = ((self.0 >> 32) as u32, self.0 as u32);
        text.push_hex(high);
        text.push(b"/");
        text.push_hex(low);
        text
    }
}

impl fmt::Display for Lsn {
    /// Postgres's own `X/X` text form, e.g. `0/16B3748`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text().as_str())
    }
}

/// Why a string is not an LSN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid LSN {input:?}: expected the form X/X with hex digits, e.g. 0/16B3748")]
pub struct ParseLsnError {
    input: String,
}

impl FromStr for Lsn {
    type Err = ParseLsnError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseLsnError {
            input: s.to_owned(),
        };
        let (hi, lo) = s.split_once('/').ok_or_else(err)?;
        let valid = |part: &str| {
            !part.is_empty() && part.len() <= 8 && part.bytes().all(|b| b.is_ascii_hexdigit())
        };
        if !valid(hi) || !valid(lo) {
            return Err(err());
        }
        let hi = u64::from_str_radix(hi, 16).map_err(|_| err())?;
        let lo = u64::from_str_radix(lo, 16).map_err(|_| err())?;
        Ok(Lsn((hi << 32) | lo))
    }
}

impl Serialize for Lsn {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Lsn {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The deterministic id of a change: the commit LSN of its transaction and
/// its ordinal inside that transaction. The text form
/// `<16 hex digits>-<10 digits>` sorts as a string in commit order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventId {
    pub commit_lsn: Lsn,
    pub ordinal: u32,
}

impl EventId {
    /// `<16 upper-case hex digits>-<10 decimal digits>`.
    pub(super) fn text(self) -> Ascii<27> {
        let mut text = Ascii::from(hex16(self.commit_lsn.0));
        text.push(b"-");
        let mut digits = [b'0'; 10];
        let mut ordinal = self.ordinal;
        for digit in digits.iter_mut().rev() {
            *digit = b'0' + (ordinal % 10) as u8;
            ordinal /= 10;
        }
        text.push(&digits);
        text
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text().as_str())
    }
}

/// Why a string is not an event id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid event id {input:?}: expected <16 hex digits>-<10 digits>, e.g. 00000000016B3800-0000000003")]
pub struct ParseEventIdError {
    input: String,
}

impl FromStr for EventId {
    type Err = ParseEventIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseEventIdError {
            input: s.chars().take(64).collect(),
        };
        let (lsn, ordinal) = s.split_once('-').ok_or_else(err)?;
        if lsn.len() != 16
            || !lsn.bytes().all(|b| b.is_ascii_hexdigit())
            || ordinal.len() != 10
            || !ordinal.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(err());
        }
        Ok(EventId {
            commit_lsn: Lsn(u64::from_str_radix(lsn, 16).map_err(|_| err())?),
            ordinal: ordinal.parse().map_err(|_| err())?,
        })
    }
}

impl Serialize for EventId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for EventId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::tests::random_u64s;

    #[test]
    fn lsn_round_trips_through_text() {
        let lsn: Lsn = "0/16B3748".parse().unwrap();
        assert_eq!(lsn, Lsn(0x16B3748));
        assert_eq!(lsn.to_string(), "0/16B3748");
        let high: Lsn = "1A/FF".parse().unwrap();
        assert_eq!(high.0, (0x1A << 32) | 0xFF);
        assert_eq!(high.to_string(), "1A/FF");
    }

    #[test]
    fn malformed_lsns_are_rejected() {
        for bad in [
            "",
            "16B3748",
            "0/",
            "/1",
            "0/xyz",
            "123456789/0",
            "0/1/2",
            " 0/1",
        ] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn event_id_format_matches_the_contract() {
        let id = EventId {
            commit_lsn: Lsn(0x16B3800),
            ordinal: 3,
        };
        assert_eq!(id.to_string(), "00000000016B3800-0000000003");
        assert_eq!(id.to_string().parse::<EventId>().unwrap(), id);
        assert!("00000000016B3800-3".parse::<EventId>().is_err());
        assert!("garbage".parse::<EventId>().is_err());
    }

    #[test]
    fn event_ids_sort_as_strings_in_commit_order() {
        let ids = [
            EventId {
                commit_lsn: Lsn(0xF),
                ordinal: 10,
            },
            EventId {
                commit_lsn: Lsn(0x10),
                ordinal: 0,
            },
            EventId {
                commit_lsn: Lsn(0x1_0000_0000),
                ordinal: 2,
            },
        ];
        let mut texts: Vec<String> = ids.iter().map(ToString::to_string).collect();
        texts.sort();
        let parsed: Vec<EventId> = texts.iter().map(|t| t.parse().unwrap()).collect();
        let mut sorted = ids.to_vec();
        sorted.sort();
        assert_eq!(parsed, sorted);
    }

    #[test]
    fn hand_formatting_matches_core_fmt() {
        for (i, r) in random_u64s(100_000).enumerate() {
            let value = r >> (i % 64);
            let lsn = Lsn(value);
            assert_eq!(
                lsn.to_string(),
                format!("{:X}/{:X}", value >> 32, value & 0xFFFF_FFFF)
            );
            assert_eq!(lsn.to_hex16(), format!("{value:016X}"));
            let id = EventId {
                commit_lsn: lsn,
                ordinal: (r as u32) >> (i % 32),
            };
            assert_eq!(
                id.to_string(),
                format!("{:016X}-{:010}", id.commit_lsn.0, id.ordinal)
            );
        }
    }
}
