//! Benchmark helper (not part of walcast): single-row transactions against
//! `orders` at a steady rate.
//!
//!   cargo run --release --example bench_load -- --url postgres://… \
//!       --rate 1000 --seconds 30 --keys 1000 --connections 16
//!
//! Statement `i` (from 0) is due at `start + i / rate` and updates order
//! `i % keys + 1` (ids 1..=keys must exist), cycling its status so every
//! update changes the row. Statements are spread round-robin over
//! `connections` connections (autocommit: one transaction each, with the
//! server's `synchronous_commit`), so commits can overlap and Postgres can
//! group them. A connection that falls behind runs its next statements at
//! once rather than skipping them, and every connection stops issuing
//! statements at `start + seconds`, so a machine that cannot keep the rate
//! shows as `rate` below what was asked, never as a longer run. Prints one
//! JSON line when done:
//! `{"committed":…,"errors":…,"seconds":…,"rate":…,"max_late_ms":…,"start_ms":…}`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::Parser;
use tokio::time::Instant;
use tokio_postgres::NoTls;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    url: String,
    /// Transactions per second.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    #[arg(long, default_value_t = 30.0)]
    seconds: f64,
    /// Orders 1..=keys are updated round-robin.
    #[arg(long, default_value_t = 1000)]
    keys: u64,
    #[arg(long, default_value_t = 16)]
    connections: u64,
}

const STATUSES: [&str; 4] = ["pending", "processing", "shipped", "delivered"];

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let total = (args.rate * args.seconds).round() as u64;
    let connections = args.connections.max(1);
    let mut clients = Vec::new();
    for _ in 0..connections {
        let (client, connection) = tokio_postgres::connect(&args.url, NoTls)
            .await
            .context("connect to postgres")?;
        tokio::spawn(connection);
        let statement = client
            .prepare("UPDATE orders SET status = $1 WHERE id = $2")
            .await?;
        clients.push((client, statement));
    }

    let committed = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let max_late_us = Arc::new(AtomicU64::new(0));
    let start_ms = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs_f64() * 1000.0;
    let start = Instant::now() + Duration::from_millis(10);
    let end = start + Duration::from_secs_f64(args.seconds);
    let mut tasks = Vec::new();
    for (lane, (client, statement)) in clients.into_iter().enumerate() {
        let (committed, errors, max_late_us) =
            (committed.clone(), errors.clone(), max_late_us.clone());
        let (rate, keys) = (args.rate, args.keys.max(1));
        tasks.push(tokio::spawn(async move {
            let mut i = lane as u64;
            while i < total {
                let due = start + Duration::from_secs_f64(i as f64 / rate);
                let now = Instant::now();
                if now >= end {
                    break;
                }
                if now < due {
                    tokio::time::sleep_until(due).await;
                } else {
                    let late = (now - due).as_micros() as u64;
                    max_late_us.fetch_max(late, Ordering::Relaxed);
                }
                let id = (i % keys + 1) as i64;
                let status = STATUSES[((i / keys) % STATUSES.len() as u64) as usize];
                match client.execute(&statement, &[&status, &id]).await {
                    Ok(_) => committed.fetch_add(1, Ordering::Relaxed),
                    Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                };
                i += connections;
            }
        }));
    }
    for task in tasks {
        task.await?;
    }
    let seconds = (Instant::now() - start).as_secs_f64().max(args.seconds);
    let committed = committed.load(Ordering::Relaxed);
    println!(
        "{{\"committed\":{committed},\"errors\":{},\"seconds\":{seconds:.3},\"rate\":{:.1},\"max_late_ms\":{:.1},\"start_ms\":{start_ms:.1}}}",
        errors.load(Ordering::Relaxed),
        committed as f64 / seconds,
        max_late_us.load(Ordering::Relaxed) as f64 / 1000.0,
    );
    Ok(())
}
