//! Decoder throughput: pgoutput bytes → `ChangeEvent` → contract JSON, on
//! one core, for the `orders` row and a 30-column row of mixed types.
//!
//! Every benchmark feeds the bytes Postgres would send (protocol version 1,
//! text tuples, REPLICA IDENTITY FULL as `sql/schema.sql` sets it) to a
//! decoder that has seen the Relation message and is inside a transaction,
//! then serializes the event into a reused buffer, exactly the work the
//! capture loop and the publisher's encoder do per change. Throughput is in
//! changes ("elements") per second.
//!
//!   cargo bench --bench decoder
//!   cargo bench --bench decoder -- orders_update     # one benchmark
//!
//! `scripts/bench.sh` runs it and reads the medians from
//! `target/criterion/decoder/*/new/estimates.json`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use walcast::decoder::{Decoded, Decoder};
use walcast::event::ChangeEvent;

#[path = "support/pgoutput.rs"]
mod pgoutput;

use pgoutput::{decode_encode, Case, WAL_START};

fn decode_event(decoder: &mut Decoder, message: &[u8]) -> ChangeEvent {
    match decoder.decode(WAL_START, message) {
        Ok(Decoded::Change(event)) => event,
        other => panic!("expected a change, got {other:?}"),
    }
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("decoder");
    group.throughput(Throughput::Elements(1));

    let cases = pgoutput::cases();
    let case = |name: &str| -> &Case {
        cases
            .iter()
            .find(|case| case.name == name)
            .expect("a benchmark case")
    };

    let mut out = Vec::with_capacity(4096);
    for case in &cases {
        let mut decoder = case.decoder();
        group.bench_function(case.name, |b| {
            b.iter(|| decode_encode(&mut decoder, black_box(&case.message), &mut out))
        });
    }

    // Where the time goes for one update: decoding alone (the event is
    // dropped), and serializing an already decoded event.
    for (id, case) in [
        ("orders_update_decode_only", case("orders_update")),
        ("wide_update_decode_only", case("wide_update")),
    ] {
        let mut decoder = case.decoder();
        group.bench_function(id, |b| {
            b.iter(|| black_box(decoder.decode(WAL_START, black_box(&case.message)).is_ok()))
        });
    }
    for (id, case) in [
        ("orders_update_json_only", case("orders_update")),
        ("wide_update_json_only", case("wide_update")),
    ] {
        let event = decode_event(&mut case.decoder(), &case.message);
        group.bench_function(id, |b| {
            b.iter(|| {
                out.clear();
                black_box(&event).write_json(&mut out);
                black_box(out.len())
            })
        });
    }

    // The backlog-drain mix as whole transactions: Begin, 5 inserts,
    // 3 updates, 2 deletes, Commit; 10 changes per iteration.
    let txn = pgoutput::orders_transaction();
    let mut decoder = case("orders_insert").decoder();
    group.throughput(Throughput::Elements(10));
    group.bench_function("orders_mixed_txn10", |b| {
        b.iter(|| {
            for message in &txn {
                decode_encode(&mut decoder, black_box(message), &mut out);
            }
        })
    });
    group.finish();
}

fn config() -> Criterion {
    // Short by default so the suite fits a shared machine; criterion's
    // own flags (--measurement-time, --sample-size) override these.
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50)
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench
}
criterion_main!(benches);
