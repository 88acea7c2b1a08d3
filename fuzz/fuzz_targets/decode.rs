//! Fuzz target: arbitrary bytes, split into a sequence of pgoutput messages,
//! fed to `Decoder::decode`. The decoder must return `Ok` or `Err` for every
//! message and never panic; every event it returns must serialize.
//!
//! Input framing: repeated `[len: u16 big-endian][len bytes]` (a short last
//! frame takes what is left). Before the fuzzed messages the decoder is
//! primed with two relations, a custom array type and an open transaction,
//! so mutations reach the change paths instead of stopping at "unknown
//! relation"; the fuzzer can still send its own Relation/Begin/Commit.
//!
//! This target checks robustness only, not that events are right: that is
//! what the unit tests in `src/decoder/tests.rs` do.
//!
//! Run from `fuzz/` (needs a nightly toolchain):
//! `cargo +nightly fuzz run decode corpus/decode seeds/decode -- -max_total_time=300`.
//! `seeds/decode` holds framed valid messages for the primed relations.

#![no_main]

use libfuzzer_sys::fuzz_target;

// The decoder and the event type are compiled in directly (see Cargo.toml).
// `event` re-exports types this target never names, hence `unused_imports`.
#[allow(dead_code, unused_imports)]
#[path = "../../src/event/mod.rs"]
mod event;

#[allow(dead_code)]
#[path = "../../src/decoder/mod.rs"]
mod decoder;

use decoder::{Decoded, Decoder};
use event::Lsn;

fuzz_target!(|data: &[u8]| {
    let mut decoder = Decoder::new();
    for message in PRIMING {
        let primed = decoder.decode(Lsn(0), message);
        assert!(primed.is_ok(), "priming failed: {primed:?}");
    }
    let mut rest = data;
    let mut wal_start = 1;
    while let [hi, lo, tail @ ..] = rest {
        let len = usize::from(u16::from_be_bytes([*hi, *lo])).min(tail.len());
        let (message, after) = tail.split_at(len);
        rest = after;
        match decoder.decode(Lsn(wal_start), message) {
            Ok(Decoded::Change(event)) => {
                event.to_json();
            }
            Ok(Decoded::Truncate { events, .. }) => {
                for event in events {
                    event.to_json();
                }
            }
            Ok(_) | Err(_) => {}
        }
        wal_start += 1;
    }
});

/// Type `_mood` (oid 70001); `public.orders` (oid 16384) under REPLICA
/// IDENTITY FULL: id int4, name text, tags _mood, at timestamptz, doc jsonb,
/// raw bytea, xs int4[]; `shop.items` (oid 16390): sku text (key), price
/// numeric; then Begin (final LSN 0/16B3800, xid 1234).
const PRIMING: &[&[u8]] = &[
    b"Y\x00\x01\x11\x71public\x00_mood\x00",
    b"R\x00\x00\x40\x00public\x00orders\x00f\x00\x07\
      \x01id\x00\x00\x00\x00\x17\xff\xff\xff\xff\
      \x01name\x00\x00\x00\x00\x19\xff\xff\xff\xff\
      \x01tags\x00\x00\x01\x11\x71\xff\xff\xff\xff\
      \x01at\x00\x00\x00\x04\xa0\xff\xff\xff\xff\
      \x01doc\x00\x00\x00\x0e\xda\xff\xff\xff\xff\
      \x01raw\x00\x00\x00\x00\x11\xff\xff\xff\xff\
      \x01xs\x00\x00\x00\x03\xef\xff\xff\xff\xff",
    b"R\x00\x00\x40\x06shop\x00items\x00d\x00\x02\
      \x01sku\x00\x00\x00\x00\x19\xff\xff\xff\xff\
      \x00price\x00\x00\x00\x06\xa4\xff\xff\xff\xff",
    b"B\x00\x00\x00\x00\x01\x6b\x38\x00\x00\x03\x0e\x6f\x2d\x4b\x90\x00\x00\x00\x04\xd2",
];
