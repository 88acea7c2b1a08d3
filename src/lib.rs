//! walcast: change-data-capture from PostgreSQL to browsers.
//!
//! walcast tails a logical-replication slot (pgoutput), turns every committed
//! row change into a typed JSON [`event::ChangeEvent`], publishes it to
//! RabbitMQ with publisher confirms, and fans it out to browsers over
//! Socket.IO. The tree follows the pipeline:
//!
//! ```text
//! Postgres WAL ──▶ wal/ ──▶ decoder/ ──▶ event ──▶ publisher/ ──▶ RabbitMQ
//!                  (replication       (pgoutput, sans-io)       (confirms)
//!                   connection)                                     │
//! browser ◀── fanout/ (Socket.IO rooms, replay) ◀── consumer/ ◀─────┘
//! api/  (axum CRUD + dashboard, the side door: writes go to Postgres only)
//! ```
//!
//! Beside the stages: `capture` drives wal → decoder → a sink and moves the
//! slot only past what the sink made durable; `amqp` connects to RabbitMQ
//! (amqps, several nodes) and declares the exchange and queues for the
//! publisher and the consumer; `metrics` gathers every stage's counters for
//! `GET /metrics` and `histogram` is what stages observe latencies into;
//! `config` loads and validates settings; `catalog` asks the captured
//! database ordinary SQL questions; `retry` is the one reconnect backoff
//! policy; `pg` holds what every Postgres connection shares (settings with
//! TLS, the one connect, the transient/definite error classification);
//! `cli` holds the command-line commands; `app` wires the stages of
//! `walcast run` together; `health` is the readiness registry every role
//! reports to. The user-facing protocol is `docs/protocol.md`.

pub mod wal;

pub mod decoder;

pub mod event;

pub mod capture;

pub mod amqp;

pub mod publisher;

pub mod consumer;

pub mod fanout;

pub mod api;

pub mod metrics;

pub mod histogram;

pub mod config;

pub mod catalog;

pub mod retry;

pub mod pg;

pub mod cli;

pub mod app;
/// Component health every role reports to; served by `/readyz`.
pub mod health;
