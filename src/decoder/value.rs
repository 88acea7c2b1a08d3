//! Postgres text output → the value's JSON, per the contract's type table.
//!
//! The decoder resolves each column's type OID once, when its Relation
//! message arrives, into a [`ValueKind`]; converting a value is then a match
//! on that kind with no lookups, writing the JSON straight into the row
//! being built (no intermediate [`crate::event::Datum`]). The text is what
//! Postgres's output function produced on a connection with `DateStyle=ISO`
//! and `TimeZone=UTC`.
//!
//! Two kinds go beyond retyping that text. `timestamp` and `timestamptz`
//! always get six fraction digits (Postgres drops trailing zeros), and
//! `timestamptz` is written in UTC with `Z`, whatever offset was sent;
//! `infinity`, `-infinity` and BC dates stay as sent. `json` and `jsonb`
//! are embedded compact: whitespace between tokens is dropped (key order
//! and duplicate keys stay), so an event is always one line.
//!
//! A value that does not parse as its type (which Postgres should never
//! send, but a domain or an unexpected setting could) falls back to a JSON
//! string with the text as sent: the change is still delivered and nothing
//! is invented. The only hard error is text that is not UTF-8, because it
//! cannot be put into JSON at all.
//!
//! This module does not read the wire format (`message`) and parses array
//! literals only through `array`.

use base64::Engine as _;
use serde_json::value::RawValue;

use super::array;
use crate::event::json;

/// How to convert one scalar value (or each element of an array).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scalar {
    Bool,
    /// int2, int4, int8.
    Int,
    /// oid, xid, cid, xid8: unsigned.
    UInt,
    /// float4, float8.
    Float,
    /// Everything sent as a string unchanged: text types, numeric, uuid,
    /// date, enums, intervals, ranges, geometric and unknown types.
    Text,
    Json,
    Timestamp,
    TimestampTz,
    Bytea,
}

/// How to convert the values of one column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ValueKind {
    Scalar(Scalar),
    Array { element: Scalar, delimiter: u8 },
}

impl ValueKind {
    /// The kind of a built-in type OID; `None` for OIDs this table does not
    /// know (custom types, or built-ins that are plain text anyway).
    pub fn builtin(type_oid: u32) -> Option<ValueKind> {
        use Scalar::*;
        let scalar = |s| Some(ValueKind::Scalar(s));
        let array = |element| {
            Some(ValueKind::Array {
                element,
                delimiter: b',',
            })
        };
        match type_oid {
            16 => scalar(Bool),
            20 | 21 | 23 => scalar(Int),
            26 | 28 | 29 | 5069 => scalar(UInt),
            700 | 701 => scalar(Float),
            114 | 3802 => scalar(Json),
            1114 => scalar(Timestamp),
            1184 => scalar(TimestampTz),
            17 => scalar(Bytea),
            // text, varchar, bpchar, name, "char", numeric, uuid, date
            25 | 1043 | 1042 | 19 | 18 | 1700 | 2950 | 1082 => scalar(Text),

            1000 => array(Bool),
            1005 | 1007 | 1016 => array(Int),
            1028 | 1011 | 1012 | 271 => array(UInt),
            1021 | 1022 => array(Float),
            199 | 3807 => array(Json),
            1115 => array(Timestamp),
            1185 => array(TimestampTz),
            1001 => array(Bytea),
            // box is the one built-in type whose array delimiter is ';'.
            1020 => Some(ValueKind::Array {
                element: Text,
                delimiter: b';',
            }),
            // numeric, text, varchar, bpchar, name, "char", uuid, date, time,
            // timetz, interval, inet, cidr, macaddr, macaddr8, money, bit,
            // varbit, tid, xml, point, lseg, path, polygon, line, circle,
            // the built-in ranges.
            1231 | 1009 | 1015 | 1014 | 1003 | 1002 | 2951 | 1182 | 1183 | 1270 | 1187 | 1041
            | 651 | 1040 | 775 | 791 | 1561 | 1563 | 1010 | 143 | 1017 | 1018 | 1019 | 1027
            | 629 | 719 | 3905 | 3907 | 3909 | 3911 | 3913 | 3927 => array(Text),
            _ => None,
        }
    }

    /// The kind of a type known only by name from a Type message: custom
    /// array types (named `_<element>` by Postgres) become arrays of text,
    /// everything else (enums, composites, domains, extension types) text.
    pub fn custom(type_name: &str) -> ValueKind {
        if type_name.starts_with('_') {
            ValueKind::Array {
                element: Scalar::Text,
                delimiter: b',',
            }
        } else {
            ValueKind::Scalar(Scalar::Text)
        }
    }
}

/// Appends the JSON of one non-null value, given its text form.
pub(crate) fn write_json(
    kind: ValueKind,
    text: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), std::str::Utf8Error> {
    // A timestamp in the usual form is checked byte by byte, which proves it
    // ASCII; ASCII text is checked faster than UTF-8 validation would. Both
    // skip the separate UTF-8 check.
    let written = match kind {
        ValueKind::Scalar(Scalar::Timestamp) => write_timestamp(text, out),
        ValueKind::Scalar(Scalar::TimestampTz) => write_timestamptz(text, out),
        ValueKind::Scalar(Scalar::Text) if text.is_ascii() => {
            json::write_ascii_str(out, text);
            true
        }
        _ => false,
    };
    if written {
        return Ok(());
    }
    let text = std::str::from_utf8(text)?;
    match kind {
        ValueKind::Scalar(scalar) => write_scalar(scalar, text, out),
        ValueKind::Array { element, delimiter } => {
            let start = out.len();
            let written = array::write_json(text, delimiter, out, &mut |element_text, out| {
                write_scalar(element, element_text, out)
            });
            if written.is_none() {
                // Not an array literal after all: drop the partial output.
                out.truncate(start);
                json::write_str(out, text);
            }
        }
    }
    Ok(())
}

/// Appends the JSON of a scalar (or of one array element).
fn write_scalar(scalar: Scalar, text: &str, out: &mut Vec<u8>) {
    match scalar {
        Scalar::Text => json::write_str(out, text),
        Scalar::Bool => match text {
            "t" => json::write_bool(out, true),
            "f" => json::write_bool(out, false),
            _ => json::write_str(out, text),
        },
        Scalar::Int => match text.parse() {
            Ok(value) => json::write_i64(out, value),
            Err(_) => json::write_str(out, text),
        },
        Scalar::UInt => match text.parse() {
            Ok(value) => json::write_u64(out, value),
            Err(_) => json::write_str(out, text),
        },
        // NaN and the infinities have no JSON number, so they stay strings.
        Scalar::Float => match text.parse::<f64>() {
            Ok(value) if value.is_finite() => json::write_f64(out, value),
            _ => json::write_str(out, text),
        },
        // Parsing checks that the text is JSON; Postgres guarantees it for
        // json and jsonb, so the fallback only guards against a mistaken
        // type OID.
        Scalar::Json => match serde_json::from_str::<&RawValue>(text) {
            Ok(raw) => write_compact_json(raw.get().as_bytes(), out),
            Err(_) => json::write_str(out, text),
        },
        Scalar::Timestamp => {
            if !write_timestamp(text.as_bytes(), out) {
                json::write_str(out, text);
            }
        }
        Scalar::TimestampTz => {
            if !write_timestamptz(text.as_bytes(), out) {
                json::write_str(out, text);
            }
        }
        Scalar::Bytea => match bytea_base64(text) {
            Some(base64) => json::write_str(out, &base64),
            None => json::write_str(out, text),
        },
    }
}

/// Valid JSON text without the whitespace between tokens. A `json` column
/// keeps its input verbatim, newlines included, and one raw newline would
/// split the event's line in `walcast tail` and any line-based consumer;
/// `jsonb` text (`{"a": 1}`) is compacted the same way so both read alike.
/// Only whitespace goes: key order and duplicate keys, which `json` keeps,
/// stay as they are. Whitespace inside strings is always escaped in valid
/// JSON, so every raw whitespace byte outside a string is insignificant.
fn write_compact_json(text: &[u8], out: &mut Vec<u8>) {
    let is_space = |b: &u8| matches!(b, b' ' | b'\n' | b'\t' | b'\r');
    if !text.iter().any(is_space) {
        out.extend_from_slice(text);
        return;
    }
    out.reserve(text.len());
    let mut pos = 0;
    while pos < text.len() {
        let byte = text[pos];
        if byte == b'"' {
            // Copy the whole string, escapes and all, in one go.
            let start = pos;
            pos += 1;
            while pos < text.len() {
                match text[pos] {
                    b'\\' => pos += 2,
                    b'"' => {
                        pos += 1;
                        break;
                    }
                    _ => pos += 1,
                }
            }
            out.extend_from_slice(&text[start..pos.min(text.len())]);
        } else {
            if !is_space(&byte) {
                out.push(byte);
            }
            pos += 1;
        }
    }
}

/// `2026-11-22 05:04:10.58` → `"2026-11-22T05:04:10.580000"`: the contract
/// shows six fraction digits always, and Postgres drops trailing zeros (and
/// the whole fraction when it is zero), so the fraction is padded. Other
/// forms (`infinity`, BC dates) write nothing and return false, to be kept
/// as sent.
fn write_timestamp(text: &[u8], out: &mut Vec<u8>) -> bool {
    let Some(parts) = DateTimeParts::parse(text).filter(|parts| parts.rest.is_empty()) else {
        return false;
    };
    // Digits and separators only: nothing to escape.
    out.push(b'"');
    out.extend_from_slice(parts.date);
    out.push(b'T');
    write_time_micros(parts.time, out);
    out.push(b'"');
    true
}

/// `HH:MM:SS[.f…]` with the fraction padded to six digits.
fn write_time_micros(time: &[u8], out: &mut Vec<u8>) {
    // The seconds are 8 bytes, then the fraction, if any.
    let (whole, fraction) = time.split_at(8);
    out.extend_from_slice(whole);
    write_fraction_micros(fraction, out);
}

/// A fraction (`.58`, with its '.', or empty) padded with zeros to six
/// digits, the precision of every Postgres timestamp. A longer fraction
/// (which Postgres never sends) is kept whole rather than rounded.
fn write_fraction_micros(fraction: &[u8], out: &mut Vec<u8>) {
    const ZEROS: &[u8; 7] = b".000000";
    if fraction.is_empty() {
        out.extend_from_slice(ZEROS);
    } else {
        out.extend_from_slice(fraction);
        out.extend_from_slice(&ZEROS[fraction.len().min(ZEROS.len())..]);
    }
}

/// `2026-11-22 05:04:10.580065+00` → `"2026-11-22T05:04:10.580065Z"`,
/// converting any other offset (`+05:30`, `-08`, `+00:09:21`) to UTC and
/// padding the fraction to six digits like [`write_timestamp`] (and like
/// `commit_time`). Other forms write nothing and return false, to be kept
/// as sent.
fn write_timestamptz(text: &[u8], out: &mut Vec<u8>) -> bool {
    let Some(parts) = DateTimeParts::parse(text) else {
        return false;
    };
    let Some(offset_seconds) = parse_offset(parts.rest) else {
        return false;
    };
    // Digits and separators only: nothing to escape.
    if offset_seconds == 0 {
        out.push(b'"');
        out.extend_from_slice(parts.date);
        out.push(b'T');
        write_time_micros(parts.time, out);
    } else {
        // The seconds are 8 bytes, then the fraction, if any.
        let (whole, fraction) = parts.time.split_at(8);
        let Some(utc) = shift_to_utc(parts.date, whole, offset_seconds) else {
            return false;
        };
        out.push(b'"');
        out.extend_from_slice(utc.as_bytes());
        write_fraction_micros(fraction, out);
    }
    out.extend_from_slice(b"Z\"");
    true
}

/// `date` `whole` (to the second) at `offset_seconds` east of UTC, as UTC
/// `YYYY-MM-DDTHH:MM:SS`; `None` if it is not a valid date and time.
fn shift_to_utc(date: &[u8], whole: &[u8], offset_seconds: i64) -> Option<String> {
    let local = format!(
        "{} {}",
        std::str::from_utf8(date).ok()?,
        std::str::from_utf8(whole).ok()?
    );
    let local = chrono::NaiveDateTime::parse_from_str(&local, "%Y-%m-%d %H:%M:%S").ok()?;
    let utc = local.checked_sub_signed(chrono::TimeDelta::seconds(offset_seconds))?;
    // Year 0 and below would need Postgres's BC notation; keep as sent.
    if chrono::Datelike::year(&utc) < 1 {
        return None;
    }
    Some(utc.format("%Y-%m-%dT%H:%M:%S").to_string())
}

/// A `YYYY-MM-DD HH:MM:SS[.ffffff]` prefix and whatever follows it. The
/// date and time parts are checked byte by byte, so they are ASCII.
struct DateTimeParts<'a> {
    date: &'a [u8],
    time: &'a [u8],
    rest: &'a [u8],
}

impl<'a> DateTimeParts<'a> {
    fn parse(text: &'a [u8]) -> Option<Self> {
        let space = text.iter().position(|&b| b == b' ')?;
        let (date, after) = (&text[..space], &text[space + 1..]);
        // At least four digits of year, then -MM-DD; HH:MM:SS is 8 bytes.
        let year_len = date.len().checked_sub(6).filter(|&len| len >= 4)?;
        let (year, month_day) = date.split_at(year_len);
        let &[b'-', m1, m2, b'-', d1, d2] = month_day else {
            return None;
        };
        let &[h1, h2, b':', n1, n2, b':', s1, s2] = after.first_chunk::<8>()? else {
            return None;
        };
        let digits = [m1, m2, d1, d2, h1, h2, n1, n2, s1, s2];
        if !year.iter().all(u8::is_ascii_digit) || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        // Then an optional '.' and digits.
        let mut end = 8;
        if after.get(8) == Some(&b'.') {
            end = 9;
            while after.get(end).is_some_and(u8::is_ascii_digit) {
                end += 1;
            }
            if end == 9 {
                return None;
            }
        }
        let (time, rest) = after.split_at(end);
        Some(DateTimeParts { date, time, rest })
    }
}

/// `+HH`, `+HH:MM` or `+HH:MM:SS` (and `-`) → seconds east of UTC.
fn parse_offset(text: &[u8]) -> Option<i64> {
    let (sign, digits) = match text.split_first()? {
        (b'+', digits) => (1, digits),
        (b'-', digits) => (-1, digits),
        _ => return None,
    };
    let mut seconds = 0i64;
    let mut scale = 3600;
    for (count, field) in digits.split(|&b| b == b':').enumerate() {
        let &[tens, ones] = field else {
            return None;
        };
        if count >= 3 || !tens.is_ascii_digit() || !ones.is_ascii_digit() {
            return None;
        }
        seconds += i64::from((tens - b'0') * 10 + (ones - b'0')) * scale;
        scale /= 60;
    }
    Some(sign * seconds)
}

/// bytea's hex (`\x0102`) or escape (`\001\\a`) output → standard padded
/// base64 of the bytes.
fn bytea_base64(text: &str) -> Option<String> {
    let bytes = match text.strip_prefix("\\x") {
        Some(hex) => decode_hex(hex.as_bytes())?,
        None => decode_escape(text.as_bytes())?,
    };
    Some(base64::engine::general_purpose::STANDARD.encode(bytes))
}

fn decode_hex(hex: &[u8]) -> Option<Vec<u8>> {
    if hex.len() % 2 != 0 {
        return None;
    }
    let nibble = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    };
    let mut bytes = Vec::with_capacity(hex.len() / 2);
    for pair in hex.chunks_exact(2) {
        bytes.push(nibble(pair[0])? << 4 | nibble(pair[1])?);
    }
    Some(bytes)
}

/// The `bytea_output = escape` form: `\\` is a backslash, `\nnn` an octal
/// byte, anything else itself.
fn decode_escape(text: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len());
    let mut rest = text;
    while let Some((&b, tail)) = rest.split_first() {
        if b != b'\\' {
            out.push(b);
            rest = tail;
            continue;
        }
        match tail {
            [b'\\', after @ ..] => {
                out.push(b'\\');
                rest = after;
            }
            [a @ b'0'..=b'3', b @ b'0'..=b'7', c @ b'0'..=b'7', after @ ..] => {
                out.push((a - b'0') << 6 | (b - b'0') << 3 | (c - b'0'));
                rest = after;
            }
            _ => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The JSON of `text` as a value of kind `kind`.
    fn json_of(kind: ValueKind, text: &str) -> String {
        let mut out = Vec::new();
        write_json(kind, text.as_bytes(), &mut out).expect("valid UTF-8");
        String::from_utf8(out).unwrap()
    }

    /// Converts `text` as a value of built-in type `type_oid`, rendered as
    /// JSON so expectations read like the events clients see.
    fn json(type_oid: u32, text: &str) -> String {
        json_of(
            ValueKind::builtin(type_oid).unwrap_or(ValueKind::Scalar(Scalar::Text)),
            text,
        )
    }

    #[test]
    fn bool_and_integers() {
        assert_eq!(json(16, "t"), "true");
        assert_eq!(json(16, "f"), "false");
        assert_eq!(json(21, "-32768"), "-32768");
        assert_eq!(json(23, "42"), "42");
        assert_eq!(json(20, "9223372036854775807"), "9223372036854775807");
        assert_eq!(json(26, "4294967295"), "4294967295");
        assert_eq!(json(28, "1234"), "1234");
        assert_eq!(json(29, "0"), "0");
    }

    #[test]
    fn floats_with_specials_as_strings() {
        assert_eq!(json(701, "1.5"), "1.5");
        assert_eq!(json(700, "1.1"), "1.1");
        assert_eq!(json(701, "-2.5e-310"), "-2.5e-310");
        assert_eq!(json(701, "1e+308"), "1e+308");
        assert_eq!(json(701, "NaN"), r#""NaN""#);
        assert_eq!(json(700, "Infinity"), r#""Infinity""#);
        assert_eq!(json(701, "-Infinity"), r#""-Infinity""#);
    }

    #[test]
    fn text_like_types_are_strings_as_sent() {
        assert_eq!(json(1700, "12.50"), r#""12.50""#);
        assert_eq!(json(1700, "NaN"), r#""NaN""#);
        for oid in [25, 1043, 1042, 19, 18] {
            assert_eq!(json(oid, "a \"quoted\" ü"), r#""a \"quoted\" ü""#);
        }
        assert_eq!(
            json(2950, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
            r#""a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11""#
        );
        assert_eq!(json(1082, "2026-11-22"), r#""2026-11-22""#);
        assert_eq!(json(1082, "0044-03-15 BC"), r#""0044-03-15 BC""#);
        // interval, money, inet, an enum (unknown oid): text as sent.
        assert_eq!(json(1186, "1 day 02:00:00"), r#""1 day 02:00:00""#);
        assert_eq!(json(790, "$1,000.00"), r#""$1,000.00""#);
        assert_eq!(json(869, "10.0.0.1/8"), r#""10.0.0.1/8""#);
        assert_eq!(json(16_385, "happy"), r#""happy""#);
        assert_eq!(json(3904, "[1,5)"), r#""[1,5)""#);
    }

    #[test]
    fn json_is_embedded_compact() {
        assert_eq!(
            json(3802, r#"{"a": [1, 2.5, null], "b": {"c": "d"}}"#),
            r#"{"a":[1,2.5,null],"b":{"c":"d"}}"#
        );
        assert_eq!(json(114, " [1,2] "), "[1,2]");
        assert_eq!(json(114, "\"s\""), r#""s""#);
        // json keeps its input as typed: newlines, tabs, key order and
        // duplicate keys. Only the whitespace between tokens goes.
        assert_eq!(
            json(
                114,
                "{\"b\":\n 1,\r\n\t\"a\" : [ 2 , \"x y\" ],\n \"b\": 3}"
            ),
            r#"{"b":1,"a":[2,"x y"],"b":3}"#
        );
        // Whitespace, quotes and backslashes inside strings are content.
        assert_eq!(
            json(114, r#"{ "k \" : ": "v\\ \n \u0020 " }"#),
            r#"{"k \" : ":"v\\ \n \u0020 "}"#
        );
        assert_eq!(json(114, "\n\"a b\"\n"), r#""a b""#);
        assert_eq!(
            json(199, "{\"{\\\"a\\\":\n 1}\",NULL}"),
            r#"[{"a":1},null]"#
        );
    }

    #[test]
    fn timestamps_have_six_fraction_digits() {
        assert_eq!(
            json(1114, "2026-11-22 05:04:10.580065"),
            r#""2026-11-22T05:04:10.580065""#
        );
        // Postgres drops trailing zeros, and the fraction when it is zero.
        assert_eq!(
            json(1114, "2026-11-22 05:04:10.58"),
            r#""2026-11-22T05:04:10.580000""#
        );
        assert_eq!(
            json(1114, "2026-11-22 05:01:00"),
            r#""2026-11-22T05:01:00.000000""#
        );
        assert_eq!(
            json(1114, "2026-11-22 05:01:00.000001"),
            r#""2026-11-22T05:01:00.000001""#
        );
        // More digits than Postgres ever sends: kept, not rounded.
        assert_eq!(
            json(1114, "2026-11-22 05:01:00.1234567"),
            r#""2026-11-22T05:01:00.1234567""#
        );
        assert_eq!(json(1114, "infinity"), r#""infinity""#);
        assert_eq!(json(1114, "-infinity"), r#""-infinity""#);
        assert_eq!(
            json(1114, "0044-03-15 12:00:00 BC"),
            r#""0044-03-15 12:00:00 BC""#
        );
        assert_eq!(
            json(1114, "12345-01-01 00:00:00"),
            r#""12345-01-01T00:00:00.000000""#
        );
        assert_eq!(
            json(1114, "2026-11-22 05:01:00."),
            r#""2026-11-22 05:01:00.""#
        );
    }

    #[test]
    fn timestamptz_is_converted_to_utc_with_six_fraction_digits() {
        let cases = [
            (
                "2026-11-22 05:04:10.580065+00",
                "2026-11-22T05:04:10.580065Z",
            ),
            ("2026-11-22 05:04:10+00", "2026-11-22T05:04:10.000000Z"),
            ("2026-11-22 05:04:10.5+00", "2026-11-22T05:04:10.500000Z"),
            (
                "2026-11-22 10:34:10.580065+05:30",
                "2026-11-22T05:04:10.580065Z",
            ),
            ("2026-11-21 21:04:10.1-08", "2026-11-22T05:04:10.100000Z"),
            ("2026-12-31 23:30:00-01", "2027-01-01T00:30:00.000000Z"),
            (
                "1900-01-01 00:09:21+00:09:21",
                "1900-01-01T00:00:00.000000Z",
            ),
            ("2026-11-22 05:04:10-00:30", "2026-11-22T05:34:10.000000Z"),
        ];
        for (sent, expected) in cases {
            assert_eq!(json(1184, sent), format!("{expected:?}"), "{sent}");
        }
        // Kept as sent: infinities, BC, and anything that would need BC.
        for sent in [
            "infinity",
            "-infinity",
            "0044-03-15 12:00:00+00 BC",
            "0001-01-01 00:30:00+01",
            "2026-11-22 05:04:10",
            "2026-11-22 05:04:10+5",
            "2026-11-22T05:04:10Z",
        ] {
            assert_eq!(json(1184, sent), format!("{sent:?}"), "{sent}");
        }
    }

    #[test]
    fn time_types_stay_text() {
        // The contract's "everything else": Postgres's text form, as sent.
        assert_eq!(json(1083, "05:04:10.58"), r#""05:04:10.58""#);
        assert_eq!(json(1266, "05:04:10+05:30"), r#""05:04:10+05:30""#);
        assert_eq!(json(1183, "{05:04:10,NULL}"), r#"["05:04:10",null]"#);
    }

    #[test]
    fn bytea_is_base64() {
        assert_eq!(json(17, "\\x0102ff"), r#""AQL/""#);
        assert_eq!(json(17, "\\x"), r#""""#);
        assert_eq!(json(17, "\\xDEADBEEF"), r#""3q2+7w==""#);
        // bytea_output = escape
        assert_eq!(json(17, "ab\\\\\\001"), r#""YWJcAQ==""#);
        // Not bytea output: kept as sent rather than guessed at.
        assert_eq!(json(17, "\\x0"), r#""\\x0""#);
        assert_eq!(json(17, "\\9"), r#""\\9""#);
    }

    #[test]
    fn arrays_convert_elements_by_type() {
        assert_eq!(json(1007, "{1,NULL,3}"), "[1,null,3]");
        assert_eq!(json(1005, "{{1,2},{3,4}}"), "[[1,2],[3,4]]");
        assert_eq!(
            json(1016, "[0:1]={-9223372036854775808,7}"),
            "[-9223372036854775808,7]"
        );
        assert_eq!(json(1028, "{4294967295}"), "[4294967295]");
        assert_eq!(json(1000, "{t,f,NULL}"), "[true,false,null]");
        assert_eq!(
            json(1022, "{1.5,NaN,-Infinity}"),
            r#"[1.5,"NaN","-Infinity"]"#
        );
        assert_eq!(json(1231, "{12.50,NaN}"), r#"["12.50","NaN"]"#);
        assert_eq!(
            json(
                1009,
                r#"{plain,"with space","a,b","q\"uote","back\\slash",NULL,"NULL"}"#
            ),
            r#"["plain","with space","a,b","q\"uote","back\\slash",null,"NULL"]"#
        );
        assert_eq!(json(1015, "{}"), "[]");
        assert_eq!(
            json(3807, r#"{"{\"a\": 1}","[1, 2]",NULL}"#),
            r#"[{"a":1},[1,2],null]"#
        );
        assert_eq!(json(199, r#"{"\"s\"",3}"#), r#"["s",3]"#);
        assert_eq!(
            json(
                1185,
                r#"{"2026-11-22 05:04:10.5+00","2026-11-22 10:34:10+05:30"}"#
            ),
            r#"["2026-11-22T05:04:10.500000Z","2026-11-22T05:04:10.000000Z"]"#
        );
        assert_eq!(
            json(1115, r#"{"2026-11-22 05:04:10",infinity}"#),
            r#"["2026-11-22T05:04:10.000000","infinity"]"#
        );
        assert_eq!(json(1182, "{2026-11-22,NULL}"), r#"["2026-11-22",null]"#);
        assert_eq!(json(1001, r#"{"\\x0102",NULL}"#), r#"["AQI=",null]"#);
        assert_eq!(
            json(2951, "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}"),
            r#"["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"]"#
        );
        assert_eq!(
            json(1020, "{(1,1),(0,0);(2,2),(1,1)}"),
            r#"["(1,1),(0,0)","(2,2),(1,1)"]"#
        );
        assert_eq!(
            json(1187, r#"{"1 day","02:00:00"}"#),
            r#"["1 day","02:00:00"]"#
        );
    }

    #[test]
    fn custom_types_by_name() {
        let array = ValueKind::custom("_mood");
        assert_eq!(
            json_of(array, r#"{happy,"very sad",NULL}"#),
            r#"["happy","very sad",null]"#
        );
        let scalar = ValueKind::custom("mood");
        assert_eq!(json_of(scalar, "{not,an,array}"), r#""{not,an,array}""#);
    }

    #[test]
    fn unparsable_values_fall_back_to_text() {
        assert_eq!(json(23, "abc"), r#""abc""#);
        assert_eq!(
            json(21, "99999999999999999999"),
            r#""99999999999999999999""#
        );
        assert_eq!(json(26, "-1"), r#""-1""#);
        assert_eq!(json(16, "true"), r#""true""#);
        assert_eq!(json(701, "1,5"), r#""1,5""#);
        assert_eq!(json(3802, "{not json"), r#""{not json""#);
        assert_eq!(json(1007, "{1,2"), r#""{1,2""#);
        assert_eq!(json(1007, "{1,x}"), r#"[1,"x"]"#);
        assert_eq!(
            json(1114, "2026-13-xx 05:04:10"),
            r#""2026-13-xx 05:04:10""#
        );
        assert_eq!(
            json(1184, "2026-02-30 05:04:10+01"),
            r#""2026-02-30 05:04:10+01""#
        );
    }

    #[test]
    fn invalid_utf8_is_an_error() {
        let mut out = Vec::new();
        let kind = ValueKind::Scalar(Scalar::Text);
        assert!(write_json(kind, b"\xff\xfe", &mut out).is_err());
        assert!(out.is_empty());
    }
}
