//! Encoding a change event as an AMQP message: routing key, body, properties.
//!
//! A pure function (no I/O, no clock): the same event always encodes to the
//! same message, which is what makes republishing after a reconnect safe
//! (consumers dedupe by `message_id`). The body is serialized exactly once,
//! with [`ChangeEvent::write_json`], so it is byte for byte the contract's
//! event (`docs/protocol.md` section 2). An event whose encoding
//! exceeds `rabbitmq.max_event_bytes` is encoded as its `oversize` stub
//! instead ([`encode_within`]), which is still the contract's event.
//!
//! It does not know about connections, channels or confirms.

use lapin::types::{AMQPValue, LongString, ShortString};
use lapin::BasicProperties;

use crate::event::ChangeEvent;

/// `content_type` of every message.
pub const CONTENT_TYPE: &str = "application/json";
/// `app_id` of every message.
pub const APP_ID: &str = "walcast";
/// `delivery_mode` 2: the broker writes the message to disk before it
/// confirms it (on a durable queue).
pub const PERSISTENT: u8 = 2;

/// Header naming the stream an event belongs to (contract section 2):
/// `<system identifier>/<database>/<slot>`.
pub const SOURCE_HEADER: &str = "x-walcast-source";

/// One change event, ready to publish (and to republish, unchanged).
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    /// `<schema>.<table>.<op>`.
    pub routing_key: ShortString,
    /// The event's JSON, [`ChangeEvent::to_json`].
    pub body: Vec<u8>,
    pub properties: BasicProperties,
}

/// Encodes `event`; serializes it once.
pub fn encode(event: &ChangeEvent) -> Encoded {
    let mut body = Vec::with_capacity(event.json_size_hint());
    event.write_json(&mut body);
    message(event, body)
}

/// Encodes `event` as the contract's `oversize` stub
/// ([`ChangeEvent::write_oversize_json`]): same routing key and properties
/// (so the same `message_id`), `new` and `old` null.
pub fn encode_oversize(event: &ChangeEvent) -> Encoded {
    let mut body = Vec::new();
    event.write_oversize_json(&mut body);
    message(event, body)
}

/// Bodies at or below this size keep no stub beside them: a broker whose
/// `max_message_size` is this small refuses ordinary events anyway.
pub const STUB_KEPT_ABOVE: usize = 1024;

/// An event ready for the publisher: the message to publish and, for a
/// large one, its stub in reserve.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    pub message: Encoded,
    /// The `oversize` stub, kept for a body over [`STUB_KEPT_ABOVE`] bytes
    /// in case the broker refuses the message as too large (406); `None`
    /// when `message` already is the stub.
    pub stub: Option<Encoded>,
    /// The size of the full encoding when it exceeded `max_event_bytes`
    /// and `message` is therefore the stub.
    pub oversize: Option<usize>,
}

/// Encodes `event` within `max_event_bytes`: the event itself when its
/// encoding fits, else its `oversize` stub. Pure, like [`encode`].
pub fn encode_within(event: &ChangeEvent, max_event_bytes: usize) -> Prepared {
    let full = encode(event);
    let size = full.body.len();
    if size > max_event_bytes {
        return Prepared {
            message: encode_oversize(event),
            stub: None,
            oversize: Some(size),
        };
    }
    let stub = (size > STUB_KEPT_ABOVE).then(|| encode_oversize(event));
    Prepared {
        message: full,
        stub,
        oversize: None,
    }
}

/// The message for `body`: routing key and properties from `event`.
fn message(event: &ChangeEvent, body: Vec<u8>) -> Encoded {
    // Postgres identifiers are at most 63 bytes, so `<schema>.<table>.<op>`
    // always fits a 255-byte short string.
    let routing_key = ShortString::from(event.routing_key());
    let properties = BasicProperties::default()
        .with_content_type(ShortString::from(CONTENT_TYPE))
        .with_delivery_mode(PERSISTENT)
        .with_message_id(ShortString::from(event.id.to_string()))
        .with_timestamp(amqp_timestamp(event))
        .with_app_id(ShortString::from(APP_ID));
    Encoded {
        routing_key,
        body,
        properties,
    }
}

/// `properties` with the [`SOURCE_HEADER`] set to `source` (computed once
/// per capture session, see `capture::Sink::set_source`); other headers kept.
pub fn with_source(properties: BasicProperties, source: &str) -> BasicProperties {
    let mut headers = properties.headers().clone().unwrap_or_default();
    headers.insert(
        ShortString::from(SOURCE_HEADER),
        AMQPValue::LongString(LongString::from(source)),
    );
    properties.with_headers(headers)
}

/// The AMQP timestamp: whole seconds since the Unix epoch (rounded down),
/// 0 for a commit time before 1970 (which Postgres cannot produce anyway).
fn amqp_timestamp(event: &ChangeEvent) -> u64 {
    let seconds = event.commit_time.unix_micros().div_euclid(1_000_000);
    u64::try_from(seconds).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::event::{Datum, EventId, Lsn, Op, PgTimestamp, Row};

    fn event() -> ChangeEvent {
        let unix_micros = chrono::DateTime::parse_from_rfc3339("2026-11-22T05:04:10.580065Z")
            .unwrap()
            .timestamp_micros();
        ChangeEvent {
            id: EventId {
                commit_lsn: Lsn(0x16B3800),
                ordinal: 3,
            },
            op: Op::Insert,
            schema: Arc::from("public"),
            table: Arc::from("orders"),
            key: Some(Row::new(vec![(Arc::from("id"), Datum::Int(42))])),
            new: Some(Row::new(vec![
                (Arc::from("id"), Datum::Int(42)),
                (Arc::from("status"), Datum::Text("pending".into())),
            ])),
            old: None,
            changed: None,
            unchanged_toast: vec![],
            lsn: Lsn(0x16B3748),
            commit_lsn: Lsn(0x16B3800),
            xid: 1234,
            commit_time: PgTimestamp(unix_micros - 946_684_800 * 1_000_000),
        }
    }

    #[test]
    fn message_carries_the_contract_properties() {
        let event = event();
        let encoded = encode(&event);
        assert_eq!(encoded.routing_key.as_str(), "public.orders.insert");
        assert_eq!(encoded.body, event.to_json());
        let p = &encoded.properties;
        assert_eq!(
            p.content_type().as_ref().unwrap().as_str(),
            "application/json"
        );
        assert_eq!(*p.delivery_mode(), Some(2));
        assert_eq!(
            p.message_id().as_ref().unwrap().as_str(),
            "00000000016B3800-0000000003"
        );
        // 2026-11-22T05:04:10Z
        assert_eq!(*p.timestamp(), Some(1_795_323_850));
        assert_eq!(p.app_id().as_ref().unwrap().as_str(), "walcast");
    }

    #[test]
    fn an_event_over_the_limit_becomes_its_stub_with_the_same_properties() {
        let mut event = event();
        event.new = Some(Row::new(vec![
            (Arc::from("id"), Datum::Int(42)),
            (Arc::from("status"), Datum::Text("y".repeat(5000))),
        ]));
        let full = encode(&event);
        let sized = encode_within(&event, 4096);
        assert_eq!(sized.oversize, Some(full.body.len()));
        assert!(sized.stub.is_none());
        let mut stub_body = Vec::new();
        event.write_oversize_json(&mut stub_body);
        assert_eq!(sized.message.body, stub_body);
        assert_eq!(
            String::from_utf8(sized.message.body.clone()).unwrap(),
            r#"{"id":"00000000016B3800-0000000003","op":"insert","schema":"public","table":"orders","key":{"id":42},"new":null,"old":null,"unchanged_toast":[],"lsn":"0/16B3748","commit_lsn":"0/16B3800","xid":1234,"commit_time":"2026-11-22T05:04:10.580065Z","oversize":true}"#
        );
        assert_eq!(sized.message.routing_key, full.routing_key);
        assert_eq!(sized.message.properties, full.properties);

        // Within the limit: the event itself, its stub kept in reserve.
        let sized = encode_within(&event, full.body.len());
        assert_eq!(sized.message, full);
        assert_eq!(sized.oversize, None);
        assert_eq!(sized.stub.unwrap().body, stub_body);
        // A small event keeps no stub.
        let small = encode_within(&super::tests::event(), 4096);
        assert!(small.stub.is_none() && small.oversize.is_none());
    }

    #[test]
    fn the_source_header_names_the_stream() {
        let p = with_source(encode(&event()).properties, "7412/shop/walcast");
        let headers = p.headers().as_ref().unwrap();
        let value = headers.inner().get(SOURCE_HEADER).unwrap();
        assert_eq!(
            value,
            &AMQPValue::LongString(LongString::from("7412/shop/walcast"))
        );
        assert_eq!(p.app_id().as_ref().unwrap().as_str(), "walcast");
    }

    #[test]
    fn encoding_is_deterministic() {
        assert_eq!(encode(&event()), encode(&event()));
    }

    #[test]
    fn timestamp_rounds_down_and_never_goes_negative() {
        let mut e = event();
        e.commit_time = PgTimestamp(-946_684_800 * 1_000_000 + 1_999_999);
        assert_eq!(amqp_timestamp(&e), 1);
        e.commit_time = PgTimestamp(-946_684_800 * 1_000_000 - 1);
        assert_eq!(amqp_timestamp(&e), 0);
    }
}
