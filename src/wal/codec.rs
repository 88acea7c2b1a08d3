//! Wire framing and message encoding for the replication connection, without I/O.
//!
//! postgres-protocol parses most backend messages, but not CopyBothResponse
//! ('W'), which only walsenders send, and its CopyData body is not split
//! out of the read buffer the way we want. So this module frames messages
//! itself (tag byte + big-endian i32 length), handles 'W' and 'd' here and
//! hands every other complete frame to [`Message::parse`]. CopyData payloads
//! are split off the read buffer as [`Bytes`], so an XLogData payload reaches
//! the decoder without being copied.
//!
//! It also builds the replication commands (quoting identifiers and
//! literals) and the standby status update, and turns ErrorResponse fields
//! into [`WalError::Server`]. Nothing here awaits or touches a socket; see
//! `connection.rs` and `stream.rs` for that.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::{ErrorFields, Message};
use postgres_protocol::message::frontend;

use super::{ReplicationMessage, StartOptions, WalError};
use crate::event::{Lsn, PgTimestamp};

/// The largest frame we accept. Postgres never allocates more than 1 GB for
/// one value; anything bigger means the stream is out of sync, and
/// reserving for it would only exhaust memory.
const MAX_FRAME_LEN: usize = (1 << 30) + (1 << 20);

/// One framed backend message.
pub(crate) enum Backend {
    /// CopyData: the payload only (tag and length stripped).
    CopyData(Bytes),
    /// CopyBothResponse: the server entered the streaming phase.
    CopyBothResponse,
    /// Everything postgres-protocol knows how to parse.
    Message(Message),
}

/// Takes one complete frame off the front of `buf`, or returns `Ok(None)`
/// (after reserving room for the rest of the frame) when more bytes are needed.
pub(crate) fn decode(buf: &mut BytesMut) -> Result<Option<Backend>, WalError> {
    if buf.len() < 5 {
        buf.reserve(5 - buf.len());
        return Ok(None);
    }
    let tag = buf[0];
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if !(4..=MAX_FRAME_LEN).contains(&len) {
        return Err(WalError::Protocol(format!(
            "invalid length {len} of message {:?} from server",
            tag as char
        )));
    }
    let frame_len = len + 1;
    if buf.len() < frame_len {
        buf.reserve(frame_len - buf.len());
        return Ok(None);
    }
    match tag {
        b'd' => {
            let mut frame = buf.split_to(frame_len).freeze();
            frame.advance(5);
            Ok(Some(Backend::CopyData(frame)))
        }
        b'W' => {
            // Byte1 overall format, Int16 column count, Int16 per column;
            // walsenders always send binary with zero columns, and we need
            // none of it.
            buf.advance(frame_len);
            Ok(Some(Backend::CopyBothResponse))
        }
        _ => match Message::parse(buf) {
            Ok(Some(message)) => Ok(Some(Backend::Message(message))),
            // Cannot happen: the whole frame is in `buf`.
            Ok(None) => Err(WalError::Protocol(
                "incomplete message after framing".into(),
            )),
            Err(err) => Err(WalError::Protocol(format!(
                "malformed message {:?} from server: {err}",
                tag as char
            ))),
        },
    }
}

/// Parses the payload of a CopyData message of the streaming phase.
pub(crate) fn parse_replication_message(
    mut payload: Bytes,
) -> Result<ReplicationMessage, WalError> {
    let Some(&kind) = payload.first() else {
        return Err(WalError::Protocol(
            "empty CopyData message in replication stream".into(),
        ));
    };
    match kind {
        // XLogData: Byte1('w') Int64 walStart Int64 walEnd Int64 sendTime Byte(n) data
        b'w' => {
            if payload.len() < 25 {
                return Err(short_message("XLogData", payload.len()));
            }
            payload.advance(1);
            let wal_start = Lsn(payload.get_u64());
            let wal_end = Lsn(payload.get_u64());
            let server_time = PgTimestamp(payload.get_i64());
            Ok(ReplicationMessage::XLogData {
                wal_start,
                wal_end,
                server_time,
                data: payload,
            })
        }
        // Primary keepalive: Byte1('k') Int64 walEnd Int64 sendTime Byte1 replyRequested
        b'k' => {
            if payload.len() < 18 {
                return Err(short_message("primary keepalive", payload.len()));
            }
            payload.advance(1);
            Ok(ReplicationMessage::Keepalive {
                wal_end: Lsn(payload.get_u64()),
                server_time: PgTimestamp(payload.get_i64()),
                reply_requested: payload.get_u8() != 0,
            })
        }
        other => Err(WalError::Protocol(format!(
            "unknown replication message {:?} in CopyData",
            other as char
        ))),
    }
}

fn short_message(what: &str, len: usize) -> WalError {
    WalError::Protocol(format!("{what} message too short ({len} bytes)"))
}

/// Appends a CopyData frame holding a standby status update ('r').
///
/// Write, flush and apply all carry `durable`: walcast has no notion of
/// "written but not flushed", and for a logical slot Postgres moves
/// `confirmed_flush_lsn` to the flush position. `Lsn::ZERO` (invalid) is
/// ignored by the server, which is what we send before anything is durable.
pub(crate) fn standby_status_update(
    durable: Lsn,
    now: PgTimestamp,
    reply_requested: bool,
    out: &mut BytesMut,
) {
    out.reserve(5 + 34);
    out.put_u8(b'd');
    out.put_i32(4 + 34);
    out.put_u8(b'r');
    out.put_u64(durable.0);
    out.put_u64(durable.0);
    out.put_u64(durable.0);
    out.put_i64(now.0);
    out.put_u8(u8::from(reply_requested));
}

/// Appends a simple-protocol Query message.
pub(crate) fn query(sql: &str, out: &mut BytesMut) -> Result<(), WalError> {
    frontend::query(sql, out).map_err(|err| WalError::Protocol(format!("cannot send query: {err}")))
}

/// `"name"`, with embedded double quotes doubled.
pub(crate) fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `'text'`, with embedded single quotes doubled. The replication command
/// grammar knows no backslash escapes, so this is the only escaping needed.
pub(crate) fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// `CREATE_REPLICATION_SLOT` for a pgoutput slot that exports no snapshot.
///
/// walcast streams from the slot's consistent point and does no initial
/// table copy, so a snapshot is of no use; exporting one would also keep a
/// transaction open on this connection until the next command. PostgreSQL
/// 15 introduced the parenthesized option syntax; older servers only know
/// the (still accepted) `NOEXPORT_SNAPSHOT` keyword.
pub(crate) fn create_slot_command(slot: &str, temporary: bool, server_major: u32) -> String {
    let temporary = if temporary { " TEMPORARY" } else { "" };
    let snapshot = if server_major >= 15 {
        "(SNAPSHOT 'nothing')"
    } else {
        "NOEXPORT_SNAPSHOT"
    };
    format!(
        "CREATE_REPLICATION_SLOT {}{temporary} LOGICAL pgoutput {snapshot}",
        quote_identifier(slot)
    )
}

pub(crate) fn drop_slot_command(slot: &str, wait: bool) -> String {
    let wait = if wait { " WAIT" } else { "" };
    format!("DROP_REPLICATION_SLOT {}{wait}", quote_identifier(slot))
}

/// `START_REPLICATION SLOT "s" LOGICAL X/X (proto_version '1', publication_names '...', messages 'true')`.
///
/// `messages 'true'` makes pgoutput send logical decoding messages
/// (`pg_logical_emit_message`): backfill watermarks arrive that way. Servers
/// before 14 do not know the option (and cannot backfill), so it is left out
/// for them.
///
/// pgoutput reads `publication_names` with SplitIdentifierString: a
/// comma-separated list of identifiers, each unquoted (and then folded to
/// lower case) or double-quoted. Quoting every name keeps names with upper
/// case, commas or quotes intact; the list is then one string literal.
pub(crate) fn start_replication_command(options: &StartOptions, server_major: u32) -> String {
    let publications = options
        .publications
        .iter()
        .map(|name| quote_identifier(name))
        .collect::<Vec<_>>()
        .join(",");
    format!(
        "START_REPLICATION SLOT {} LOGICAL {} (proto_version '1', publication_names {}{})",
        quote_identifier(&options.slot),
        options.start,
        quote_literal(&publications),
        if server_major >= 14 {
            ", messages 'true'"
        } else {
            ""
        }
    )
}

/// The fields of an ErrorResponse or NoticeResponse we care about.
#[derive(Debug, Default)]
pub(crate) struct ServerReport {
    pub severity: String,
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl ServerReport {
    pub(crate) fn parse(mut fields: ErrorFields<'_>) -> Result<ServerReport, WalError> {
        let mut report = ServerReport::default();
        let mut localized_severity = None;
        while let Some(field) = fields
            .next()
            .map_err(|err| WalError::Protocol(format!("malformed error fields: {err}")))?
        {
            let value = String::from_utf8_lossy(field.value_bytes()).into_owned();
            match field.type_() {
                // 'V' is never localized; 'S' is the fallback for servers < 9.6.
                b'V' => report.severity = value,
                b'S' => localized_severity = Some(value),
                b'C' => report.code = value,
                b'M' => report.message = value,
                b'D' => report.detail = Some(value),
                b'H' => report.hint = Some(value),
                _ => {}
            }
        }
        if report.severity.is_empty() {
            report.severity = localized_severity.unwrap_or_else(|| "ERROR".into());
        }
        Ok(report)
    }

    pub(crate) fn into_error(self) -> WalError {
        WalError::Server {
            severity: self.severity,
            code: self.code,
            message: self.message,
            detail: self.detail,
            hint: self.hint,
        }
    }
}

/// The major version from the `server_version` parameter ("15.4 (Debian ...)").
pub(crate) fn server_major_version(server_version: &str) -> Option<u32> {
    let digits: String = server_version
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        out.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    fn xlogdata(start: u64, end: u64, time: i64, data: &[u8]) -> Vec<u8> {
        let mut body = vec![b'w'];
        body.extend_from_slice(&start.to_be_bytes());
        body.extend_from_slice(&end.to_be_bytes());
        body.extend_from_slice(&time.to_be_bytes());
        body.extend_from_slice(data);
        frame(b'd', &body)
    }

    #[test]
    fn xlogdata_payload_is_split_off_the_read_buffer() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&xlogdata(0x10, 0x20, 7, b"B\x00\x01"));
        buf.extend_from_slice(&frame(b'Z', b"I"));
        let Some(Backend::CopyData(payload)) = decode(&mut buf).unwrap() else {
            panic!("expected CopyData");
        };
        let message = parse_replication_message(payload).unwrap();
        let ReplicationMessage::XLogData {
            wal_start,
            wal_end,
            server_time,
            data,
        } = message
        else {
            panic!("expected XLogData");
        };
        assert_eq!(
            (wal_start, wal_end, server_time),
            (Lsn(0x10), Lsn(0x20), PgTimestamp(7))
        );
        assert_eq!(&data[..], b"B\x00\x01");
        assert!(matches!(
            decode(&mut buf).unwrap(),
            Some(Backend::Message(Message::ReadyForQuery(_)))
        ));
        assert!(buf.is_empty());
    }

    #[test]
    fn partial_frames_wait_for_more_bytes() {
        let whole = xlogdata(1, 2, 3, b"payload");
        let mut buf = BytesMut::new();
        for (i, byte) in whole.iter().enumerate() {
            assert!(
                decode(&mut buf).unwrap().is_none(),
                "decoded early at byte {i}"
            );
            buf.put_u8(*byte);
        }
        assert!(matches!(
            decode(&mut buf).unwrap(),
            Some(Backend::CopyData(_))
        ));
    }

    #[test]
    fn copy_both_response_is_recognized() {
        let mut buf = BytesMut::from(&frame(b'W', &[0, 0, 0])[..]);
        assert!(matches!(
            decode(&mut buf).unwrap(),
            Some(Backend::CopyBothResponse)
        ));
        assert!(buf.is_empty());
    }

    #[test]
    fn absurd_lengths_are_protocol_errors() {
        let mut buf = BytesMut::from(&[b'd', 0x7f, 0xff, 0xff, 0xff][..]);
        assert!(matches!(decode(&mut buf), Err(WalError::Protocol(_))));
        let mut buf = BytesMut::from(&[b'd', 0, 0, 0, 3][..]);
        assert!(matches!(decode(&mut buf), Err(WalError::Protocol(_))));
    }

    #[test]
    fn keepalive_is_parsed() {
        let mut body = vec![b'k'];
        body.extend_from_slice(&0x1234u64.to_be_bytes());
        body.extend_from_slice(&99i64.to_be_bytes());
        body.push(1);
        let message = parse_replication_message(Bytes::from(body)).unwrap();
        assert!(matches!(
            message,
            ReplicationMessage::Keepalive {
                wal_end: Lsn(0x1234),
                server_time: PgTimestamp(99),
                reply_requested: true
            }
        ));
        assert!(parse_replication_message(Bytes::from_static(b"k\x00")).is_err());
        assert!(parse_replication_message(Bytes::from_static(b"x")).is_err());
    }

    #[test]
    fn status_update_reports_durable_position_three_times() {
        let mut out = BytesMut::new();
        standby_status_update(Lsn(0xAB), PgTimestamp(5), true, &mut out);
        assert_eq!(out.len(), 1 + 4 + 34);
        assert_eq!(&out[..6], &[b'd', 0, 0, 0, 38, b'r']);
        for field in 0..3 {
            let at = 6 + field * 8;
            assert_eq!(
                u64::from_be_bytes(out[at..at + 8].try_into().unwrap()),
                0xAB
            );
        }
        assert_eq!(i64::from_be_bytes(out[30..38].try_into().unwrap()), 5);
        assert_eq!(out[38], 1);
    }

    #[test]
    fn commands_quote_names() {
        assert_eq!(quote_identifier("a\"b"), "\"a\"\"b\"");
        assert_eq!(
            create_slot_command("s1", true, 15),
            "CREATE_REPLICATION_SLOT \"s1\" TEMPORARY LOGICAL pgoutput (SNAPSHOT 'nothing')"
        );
        assert_eq!(
            create_slot_command("s1", false, 14),
            "CREATE_REPLICATION_SLOT \"s1\" LOGICAL pgoutput NOEXPORT_SNAPSHOT"
        );
        assert_eq!(
            drop_slot_command("s1", true),
            "DROP_REPLICATION_SLOT \"s1\" WAIT"
        );
        let options = StartOptions {
            slot: "s1".into(),
            start: Lsn(0x1_0000_00AB),
            publications: vec!["plain".into(), "It's, \"odd\"".into()],
            status_interval: Duration::from_secs(10),
            feedback_interval: Duration::from_secs(1),
        };
        assert_eq!(
            start_replication_command(&options, 15),
            "START_REPLICATION SLOT \"s1\" LOGICAL 1/AB (proto_version '1', \
             publication_names '\"plain\",\"It''s, \"\"odd\"\"\"', messages 'true')"
        );
        assert_eq!(
            start_replication_command(&options, 13),
            "START_REPLICATION SLOT \"s1\" LOGICAL 1/AB (proto_version '1', \
             publication_names '\"plain\",\"It''s, \"\"odd\"\"\"')"
        );
    }

    #[test]
    fn server_major_version_reads_leading_number() {
        assert_eq!(
            server_major_version("15.20 (Debian 15.20-0+deb12u1)"),
            Some(15)
        );
        assert_eq!(server_major_version("17beta1"), Some(17));
        assert_eq!(server_major_version("x"), None);
    }
}
