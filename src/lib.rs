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
//! `config` loads and validates settings, `pg` holds what every Postgres
//! connection shares (settings with TLS, the one connect, the
//! transient/definite error classification), `cli` holds the command-line
//! commands (slot management, preflight checks, `tail`), `capture` drives
//! wal → decoder → a sink and moves the slot only past what the sink made
//! durable, `retry` is the one reconnect backoff policy, `amqp` connects to RabbitMQ
//! (amqps, several nodes) and declares the exchange and queues for the
//! publisher and the consumer, `metrics` renders every stage's counters for `GET /metrics`, and
//! `app` wires the stages of `walcast run` together.

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
