//! [`PgTimestamp`], Postgres's microseconds since 2000-01-01 UTC, and its
//! RFC 3339 text form (`2026-11-22T05:04:10.580065Z`), formatted by hand on
//! the stack for the years 0 to 9999 and by chrono beyond them.
//!
//! It does not read clocks for any stage other than `now()`. It parses a
//! timestamp only to measure how old a change is ([`PgTimestamp::parse`],
//! for the fan-out's lag), never to rebuild an event.

use std::fmt;

use serde::{Serialize, Serializer};

use super::ascii::Ascii;

/// A Postgres timestamp: microseconds since 2000-01-01 00:00:00 UTC, the
/// unit pgoutput and the replication protocol use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PgTimestamp(pub i64);

/// Seconds between the Unix epoch and the Postgres epoch (2000-01-01).
const PG_EPOCH_UNIX_SECS: i64 = 946_684_800;

impl PgTimestamp {
    pub fn now() -> Self {
        let micros = chrono::Utc::now().timestamp_micros();
        PgTimestamp(micros - PG_EPOCH_UNIX_SECS * 1_000_000)
    }

    /// Microseconds from `self` to `now`, zero if `now` is earlier: a
    /// timestamp from another host's clock "in the future" counts as no
    /// time at all.
    pub fn micros_until(self, now: PgTimestamp) -> u64 {
        u64::try_from(now.0.saturating_sub(self.0)).unwrap_or(0)
    }

    /// Microseconds since the Unix epoch.
    pub fn unix_micros(self) -> i64 {
        self.0.saturating_add(PG_EPOCH_UNIX_SECS * 1_000_000)
    }

    /// An RFC 3339 timestamp (`commit_time` as the contract writes it, or
    /// with any offset); `None` for any other text or one out of range.
    pub fn parse(text: &str) -> Option<Self> {
        let unix = chrono::DateTime::parse_from_rfc3339(text)
            .ok()?
            .timestamp_micros();
        Some(PgTimestamp(
            unix.checked_sub(PG_EPOCH_UNIX_SECS * 1_000_000)?,
        ))
    }

    pub fn to_chrono(self) -> Option<chrono::DateTime<chrono::Utc>> {
        chrono::DateTime::from_timestamp_micros(self.unix_micros())
    }

    /// `YYYY-MM-DDTHH:MM:SS.ffffffZ` for the years 0 to 9999, the ones
    /// written with exactly four digits; `None` for the others.
    pub(super) fn rfc3339(self) -> Option<Ascii<27>> {
        let micros = self.unix_micros();
        let seconds = micros.div_euclid(1_000_000);
        let fraction = micros.rem_euclid(1_000_000) as u32;
        let (year, month, day) = civil_from_days(seconds.div_euclid(86_400));
        let second_of_day = seconds.rem_euclid(86_400) as u32;
        let year = u32::try_from(year).ok().filter(|&year| year <= 9999)?;
        let mut text = Ascii::default();
        text.push_digits(year, 4);
        text.push(b"-");
        text.push_digits(month, 2);
        text.push(b"-");
        text.push_digits(day, 2);
        text.push(b"T");
        text.push_digits(second_of_day / 3600, 2);
        text.push(b":");
        text.push_digits(second_of_day / 60 % 60, 2);
        text.push(b":");
        text.push_digits(second_of_day % 60, 2);
        text.push(b".");
        text.push_digits(fraction, 6);
        text.push(b"Z");
        Some(text)
    }
}

/// The proleptic Gregorian (year, month, day) of a day count since
/// 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_from_march + 2) / 5 + 1) as u32;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

impl fmt::Display for PgTimestamp {
    /// RFC 3339 in UTC with microseconds, e.g. `2026-11-22T05:04:10.580065Z`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(text) = self.rfc3339() {
            return f.write_str(text.as_str());
        }
        // Beyond four-digit years: chrono's signed form (`+12345-…`).
        match self.to_chrono() {
            Some(t) => write!(f, "{}", t.format("%Y-%m-%dT%H:%M:%S%.6fZ")),
            None => write!(f, "{}", self.0),
        }
    }
}

impl Serialize for PgTimestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::tests::random_u64s;

    #[test]
    fn commit_time_is_rfc3339_utc_with_microseconds() {
        // 2026-11-22T05:04:10.580065Z
        let unix = chrono::DateTime::parse_from_rfc3339("2026-11-22T05:04:10.580065Z")
            .unwrap()
            .timestamp_micros();
        let ts = PgTimestamp(unix - PG_EPOCH_UNIX_SECS * 1_000_000);
        assert_eq!(ts.to_string(), "2026-11-22T05:04:10.580065Z");
        assert_eq!(PgTimestamp(0).to_string(), "2000-01-01T00:00:00.000000Z");
    }

    #[test]
    fn micros_until_a_later_time_and_never_below_zero() {
        assert_eq!(
            PgTimestamp(10).micros_until(PgTimestamp(2_000_010)),
            2_000_000
        );
        assert_eq!(PgTimestamp(10).micros_until(PgTimestamp(10)), 0);
        assert_eq!(PgTimestamp(10).micros_until(PgTimestamp(-5)), 0);
        assert_eq!(
            PgTimestamp(i64::MIN).micros_until(PgTimestamp(i64::MAX)),
            i64::MAX as u64
        );
    }

    #[test]
    fn parses_what_it_writes() {
        for micros in [
            0,
            1,
            -1,
            848_639_050_580_065,
            253_402_300_799_999_999 - 946_684_800_000_000,
        ] {
            let ts = PgTimestamp(micros);
            assert_eq!(PgTimestamp::parse(&ts.to_string()), Some(ts), "{ts}");
        }
        assert_eq!(
            PgTimestamp::parse("2000-01-01T01:00:00+01:00"),
            Some(PgTimestamp(0))
        );
        for text in ["", "2026-11-22", "yesterday", "2026-13-01T00:00:00Z"] {
            assert_eq!(PgTimestamp::parse(text), None, "{text:?}");
        }
    }

    #[test]
    fn hand_formatting_matches_chrono() {
        let chrono_text = |ts: PgTimestamp| match ts.to_chrono() {
            Some(t) => t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
            None => ts.0.to_string(),
        };
        let edges = [
            0,
            -1,
            1,
            i64::MIN,
            i64::MAX,
            // 0000-01-01T00:00:00Z and a microsecond before it.
            -63_082_281_600_000_000,
            -63_082_281_600_000_001,
            // 9999-12-31T23:59:59.999999Z and a microsecond after it.
            252_455_615_999_999_999,
            252_455_616_000_000_000,
            // Around leap days.
            (10_286 * 86_400 - 1) * 1_000_000,
            (10_287 * 86_400) * 1_000_000,
        ];
        let randoms = random_u64s(100_000).enumerate().map(|(i, r)| {
            // Spread the magnitudes: whole range, ±300k years, ±9k years.
            (r as i64) >> [0, 8, 14, 20, 30][i % 5]
        });
        for micros in edges.into_iter().chain(randoms) {
            let ts = PgTimestamp(micros);
            assert_eq!(ts.to_string(), chrono_text(ts), "{micros}");
        }
    }
}
