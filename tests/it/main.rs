//! walcast's integration tests: one test crate, one binary (`it`), so
//! walcast and the dev-dependencies are linked once instead of once per
//! test file.
//!
//! Each former `tests/<name>.rs` is a module here, `tests/it/<name>.rs`;
//! shared helpers are in `support` (`tests/it/support/`).
//!
//! To add tests:
//! - a new file `tests/it/<name>.rs`, declared below as `mod <name>;`
//!   (tests/structure.rs fails on a file in `tests/it/` that is not
//!   declared, and on a test file directly under `tests/` other than
//!   `structure.rs`);
//! - helpers from `use crate::support::{pgtest, stack, ...};`, never
//!   `#[path]` includes; a helper needed by two modules goes into
//!   `support/`, a helper nobody uses is deleted (there is no blanket
//!   `allow(dead_code)`);
//! - waiting for a condition: `support::eventually(timeout, || async { ... })`,
//!   not a fixed sleep;
//! - servers listen on port 0 and report the bound address (an in-process
//!   listener's `local_addr`, `walcast run`'s "walcast is running" line:
//!   `stack::Walcast`);
//! - tests that need the `fault-injection` feature: `#[cfg(feature =
//!   "fault-injection")]` on the module (scripts/test.sh turns it on);
//! - tests run in parallel with every other module's: names of databases,
//!   exchanges and queues must be unique in the process (`stack::unique`,
//!   the `TestDb` counter); a test that restarts the fault cluster holds
//!   `pgtest::lock_fault_cluster()`; a test that loads the machine holds
//!   `support::heavy()`; a test that measures this process (RSS) runs in a
//!   process of its own (`support::in_own_process`).
//!
//! Run one module: `cargo test --features fault-injection --test it -- tail::`.

mod support;

mod amqp_tls;
mod api_auth;
mod api_errors;
mod api_fuzz;
mod api_ops;
mod api_orders;
mod backfill;
mod capture;
mod cli;
mod dashboard_assets;
mod dashboard_e2e;
mod delivery;
mod fanout_budget_rss;
#[cfg(feature = "fault-injection")]
mod fanout_e2e;
mod fanout_limits;
mod fanout_memory;
mod fanout_projection;
#[cfg(feature = "fault-injection")]
mod fanout_replay;
mod fanout_source;
mod fanout_storm;
mod js_client;
mod metrics_readyz;
mod pg_tls;
mod publisher_oversize;
mod publisher_rabbitmq;
mod queue_types;
mod rabbit_cluster;
mod run_e2e;
mod run_safety;
mod socket_auth;
mod source_switch;
mod tail;
mod wal_fake_server;
mod wal_stream;
