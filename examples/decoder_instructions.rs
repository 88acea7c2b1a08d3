//! The decoder benchmark's work, a fixed number of times, for counting
//! instructions with callgrind (stable on a loaded machine, unlike the wall
//! clock criterion measures):
//!
//!   cargo build --release --example decoder_instructions
//!   valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!       target/release/examples/decoder_instructions orders_update 20000
//!
//! Each change goes pgoutput bytes → `Decoder::decode` → `write_json` into a
//! reused buffer, as in `benches/decoder.rs` (same messages). Instructions
//! per change = the difference between two runs with different counts,
//! divided by the difference in counts (which cancels process start-up and
//! the decoder's setup). `scripts/decoder-instructions.sh` does that for
//! every case. Case names: those of the criterion benchmark, plus
//! `orders_mixed_txn10` (one count = one 10-change transaction).

use std::hint::black_box;

#[path = "../benches/support/pgoutput.rs"]
mod pgoutput;

use pgoutput::decode_encode;

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(name), Some(count)) = (args.next(), args.next()) else {
        eprintln!("usage: decoder_instructions <case> <count>");
        std::process::exit(2);
    };
    let count: u64 = count.parse().expect("count is a number");
    let mut out = Vec::with_capacity(4096);

    if name == "orders_mixed_txn10" {
        let txn = pgoutput::orders_transaction();
        let mut decoder = pgoutput::cases()[0].decoder();
        for _ in 0..count {
            for message in &txn {
                decode_encode(&mut decoder, black_box(message), &mut out);
            }
        }
    } else {
        let cases = pgoutput::cases();
        let Some(case) = cases.iter().find(|case| case.name == name) else {
            eprintln!("unknown case {name:?}");
            std::process::exit(2);
        };
        let mut decoder = case.decoder();
        for _ in 0..count {
            decode_encode(&mut decoder, black_box(&case.message), &mut out);
        }
    }
    black_box(out.len());
}
