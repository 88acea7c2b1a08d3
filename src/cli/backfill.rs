//! `walcast backfill`: publish a captured table's existing rows as `read`
//! events into the stream, through the running capture (contract section 1,
//! "Backfill"; the capture's half is `capture/backfill.rs`).
//!
//! The CLI only drives. Per primary-key chunk it
//! 1. writes a low watermark (a transactional `pg_logical_emit_message`);
//! 2. in one READ COMMITTED transaction, reads the next chunk `FOR SHARE`
//!    (each row's newest committed version, held until commit), writes a
//!    high watermark carrying the rows as text with their column types,
//!    and records the chunk's last key in `walcast.backfill`;
//! 3. moves on; it waits for the capture (the slot's confirmed position
//!    passing a high watermark) only when more than [`MAX_AHEAD_ROWS`] rows
//!    are unconfirmed, and at the end.
//!
//! The capture does the rest: it drops the rows changed inside the window
//! and publishes the others at the high watermark. Because the progress
//! commits with the high watermark, a run killed at any point (Ctrl-C, a
//! crash, `kill -9`) resumes after the last chunk in the WAL; a chunk
//! in flight is read again, and its ids are those of the new watermark.
//!
//! It does not decode, publish or touch RabbitMQ.

use std::collections::VecDeque;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, IsolationLevel, SimpleQueryMessage};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::backfill_plan::Plan;
use super::backfill_progress::{parse_rate, rate_delay, Progress};
use crate::capture::backfill::{HighWatermark, LowWatermark, Watermark, WATERMARK_PREFIX};
use crate::config::{Config, TableName};
use crate::event::Lsn;

/// Rows written into the WAL that the capture has not confirmed yet, at
/// most: keeps a backfill from running far ahead of a slow capture.
pub const MAX_AHEAD_ROWS: u64 = 100_000;
/// A chunk's rows are cut once their text passes this size (the next chunk
/// starts after the last row kept): the capture holds one chunk at a time.
pub const MAX_CHUNK_BYTES: usize = 4 << 20;
/// Attempts at one chunk that a deadlock or serialization failure ends.
const CHUNK_ATTEMPTS: u32 = 10;

#[derive(Debug, Args)]
pub struct BackfillArgs {
    /// The table to backfill, schema.table; one of postgres.tables
    /// [default: every captured table]
    #[arg(long, value_name = "TABLE")]
    table: Option<String>,
    /// Only the rows matching this SQL condition, e.g. "status = 'open'"
    #[arg(long = "where", value_name = "SQL")]
    filter: Option<String>,
    /// Rows per chunk (one pair of watermarks)
    #[arg(long, default_value_t = 1000, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    chunk: u32,
    /// At most this many rows per second, e.g. 5000/s
    #[arg(long, value_name = "N/s", value_parser = parse_rate)]
    rate: Option<u32>,
    /// Start over instead of resuming an unfinished backfill of the table
    #[arg(long)]
    restart: bool,
    /// Seconds to wait for the capture to publish a chunk before giving up
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    timeout: u64,
}

pub async fn run(
    config: &Config,
    args: BackfillArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<ExitCode> {
    let captured = config.tables();
    let tables = match &args.table {
        None => captured.clone(),
        Some(text) => {
            let table = TableName::parse(text).map_err(anyhow::Error::msg)?;
            if !captured.contains(&table) {
                bail!(
                    "{table} is not a captured table (postgres.tables: {}); only captured tables \
                     can be backfilled: their rows must reach the stream's consumers",
                    list(&captured)
                );
            }
            vec![table]
        }
    };
    let (mut client, connection) = config
        .pg_config()
        .connect()
        .await
        .context("cannot connect to Postgres (postgres.url)")?;
    // The connection's task ends when `client` is dropped; waited for at
    // the end, so the command returns with nothing left running.
    let tasks = TaskTracker::new();
    tasks.spawn(async move {
        if let Err(e) = connection.await {
            warn!(error = %e, "backfill connection closed");
        }
    });
    let slot = config.postgres.slot.clone();
    preflight(&client, &slot).await?;
    client
        .batch_execute(include_str!("../../sql/backfill.sql"))
        .await
        .context("cannot create the progress table walcast.backfill")?;
    for table in tables {
        let plan = Plan::load(&client, &table, args.filter.clone()).await?;
        let mut run = TableRun {
            client: &mut client,
            slot: &slot,
            plan,
            args: &args,
            shutdown: &shutdown,
        };
        if !run.execute().await? {
            eprintln!(
                "interrupted: progress of {table} is saved in walcast.backfill; \
                 run the same command again to resume"
            );
            return Ok(ExitCode::from(130));
        }
    }
    drop(client);
    tasks.close();
    tasks.wait().await;
    Ok(ExitCode::SUCCESS)
}

fn list(tables: &[TableName]) -> String {
    tables
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The server can send logical messages to walcast, and a capture holds
/// the slot.
async fn preflight(client: &Client, slot: &str) -> anyhow::Result<()> {
    let version: i32 = client
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await?
        .get(0);
    if version < 140_000 {
        bail!("backfill needs PostgreSQL 14 or later (pgoutput's messages option); this server is {version}");
    }
    let row = client
        .query_opt(
            "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await?;
    match row.map(|row| row.get::<_, bool>(0)) {
        None => bail!("slot {slot} does not exist: run `walcast setup`, then start `walcast run`"),
        Some(false) => bail!(
            "the capture is not running: nothing streams from slot {slot}; start `walcast run` \
             (capture role) first: it publishes the rows this command reads"
        ),
        Some(true) => Ok(()),
    }
}

/// Where a table's backfill stands (its row in `walcast.backfill`).
struct State {
    run_id: String,
    last_key: Option<Vec<String>>,
    chunks: u64,
    rows: u64,
}

/// One table's backfill, from its saved state to the end.
struct TableRun<'a> {
    client: &'a mut Client,
    slot: &'a str,
    plan: Plan,
    args: &'a BackfillArgs,
    shutdown: &'a CancellationToken,
}

/// One chunk in the WAL.
struct Written {
    high_watermark: Lsn,
    rows: u64,
    last: bool,
}

impl TableRun<'_> {
    /// Backfills the table; false when interrupted.
    async fn execute(&mut self) -> anyhow::Result<bool> {
        let table = self.plan.table.to_string();
        self.lock(&table).await?;
        let mut state = self.state(&table).await?;
        let total: i64 = self
            .client
            .query_one(&self.plan.count_sql(), &[])
            .await
            .context("cannot count the rows (check --where)")?
            .get(0);
        info!(table, run = %state.run_id, resumed_rows = state.rows, total, "backfill started");
        let mut progress = Progress::new(&table, total.max(0) as u64, state.rows);
        let limit = self.args.chunk.min(self.args.rate.unwrap_or(u32::MAX));
        let mut unconfirmed: VecDeque<(Lsn, u64, u64)> = VecDeque::new();
        loop {
            if self.shutdown.is_cancelled() {
                progress.finish();
                return Ok(false);
            }
            let written = self.chunk_with_retries(&table, &mut state, limit).await?;
            progress.advance(written.rows);
            unconfirmed.push_back((written.high_watermark, written.rows, state.chunks - 1));
            if written.last {
                break;
            }
            // Stay behind the capture and under --rate.
            while unconfirmed.iter().map(|(_, rows, _)| rows).sum::<u64>() > MAX_AHEAD_ROWS {
                let (lsn, _, chunk) = unconfirmed.pop_front().expect("not empty");
                if !self.wait_published(lsn, chunk).await? {
                    progress.finish();
                    return Ok(false);
                }
            }
            let delay = rate_delay(self.args.rate, progress.rows_this_run(), progress.elapsed());
            if !delay.is_zero() && !self.sleep(delay).await {
                progress.finish();
                return Ok(false);
            }
        }
        if let Some((lsn, _, chunk)) = unconfirmed.pop_back() {
            if !self.wait_published(lsn, chunk).await? {
                progress.finish();
                return Ok(false);
            }
        }
        self.client
            .execute(
                "UPDATE walcast.backfill SET finished_at = now(), updated_at = now() \
                 WHERE slot = $1 AND table_name = $2",
                &[&self.slot, &table],
            )
            .await?;
        progress.finish();
        let seconds = progress.elapsed().as_secs_f64();
        println!(
            "backfilled {table}: {} rows in {} chunks, {seconds:.1} s, published by the capture",
            state.rows, state.chunks
        );
        Ok(true)
    }

    /// One backfill per slot and table at a time (a session lock, gone with
    /// the connection).
    async fn lock(&self, table: &str) -> anyhow::Result<()> {
        let key = format!("walcast.backfill:{}:{table}", self.slot);
        let locked: bool = self
            .client
            .query_one("SELECT pg_try_advisory_lock(hashtext($1))", &[&key])
            .await?
            .get(0);
        if !locked {
            bail!(
                "another walcast backfill of {table} on slot {} is running",
                self.slot
            );
        }
        Ok(())
    }

    /// The saved state: resumed when unfinished (and the same --where),
    /// else a new run.
    async fn state(&self, table: &str) -> anyhow::Result<State> {
        let filter = self.plan.filter.clone().unwrap_or_default();
        let row = self
            .client
            .query_opt(
                "SELECT run_id, filter, last_key, chunks, rows_read, finished_at IS NOT NULL \
                 FROM walcast.backfill WHERE slot = $1 AND table_name = $2",
                &[&self.slot, &table],
            )
            .await?;
        if let Some(row) = &row {
            let finished: bool = row.get(5);
            let saved_filter: String = row.get(1);
            if !finished && !self.args.restart {
                if saved_filter != filter {
                    bail!(
                        "an unfinished backfill of {table} used --where {saved_filter:?}; run it \
                         with the same --where to resume, or add --restart to start over"
                    );
                }
                let state = State {
                    run_id: row.get(0),
                    last_key: row.get(2),
                    chunks: row.get::<_, i64>(3) as u64,
                    rows: row.get::<_, i64>(4) as u64,
                };
                eprintln!("resuming the backfill of {table} after {} rows", state.rows);
                return Ok(state);
            }
        }
        let run_id = format!("{:016x}", rand::random::<u64>());
        self.client
            .execute(
                "INSERT INTO walcast.backfill (slot, table_name, run_id, filter) \
                 VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (slot, table_name) DO UPDATE SET run_id = $3, filter = $4, \
                   last_key = NULL, chunks = 0, rows_read = 0, started_at = now(), \
                   updated_at = now(), finished_at = NULL",
                &[&self.slot, &table, &run_id, &filter],
            )
            .await?;
        Ok(State {
            run_id,
            last_key: None,
            chunks: 0,
            rows: 0,
        })
    }

    /// [`TableRun::chunk`], again after a deadlock or serialization
    /// failure (concurrent writers lock rows in another order).
    async fn chunk_with_retries(
        &mut self,
        table: &str,
        state: &mut State,
        limit: u32,
    ) -> anyhow::Result<Written> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.chunk(table, state, limit).await {
                Ok(written) => return Ok(written),
                Err(e) if attempt < CHUNK_ATTEMPTS && is_transient(&e) => {
                    warn!(table, chunk = state.chunks, error = %e, "backfill chunk failed; retrying");
                    tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
                }
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("backfill chunk {} of {table}", state.chunks))
                }
            }
        }
    }

    /// Low watermark; then read, high watermark and progress in one
    /// transaction.
    async fn chunk(
        &mut self,
        table: &str,
        state: &mut State,
        limit: u32,
    ) -> Result<Written, tokio_postgres::Error> {
        let (schema, name) = (&self.plan.table.schema, &self.plan.table.table);
        let low = Watermark::Low(LowWatermark {
            backfill: state.run_id.clone(),
            schema: schema.clone(),
            table: name.clone(),
            chunk: state.chunks,
        });
        emit(self.client, &low).await?;
        let sql = self.plan.chunk_sql(state.last_key.as_deref(), limit);
        let transaction = self
            .client
            .build_transaction()
            .isolation_level(IsolationLevel::ReadCommitted)
            .start()
            .await?;
        let mut rows = Vec::new();
        let mut bytes = 0;
        let mut read = 0;
        for message in transaction.simple_query(&sql).await? {
            let SimpleQueryMessage::Row(row) = message else {
                continue;
            };
            read += 1;
            if bytes >= MAX_CHUNK_BYTES {
                continue;
            }
            let values: Vec<Option<String>> = (0..row.len())
                .map(|i| row.get(i).map(str::to_owned))
                .collect();
            bytes += values.iter().flatten().map(String::len).sum::<usize>();
            rows.push(values);
        }
        let last = read < limit as usize;
        let cut = rows.len() < read;
        let last_key: Option<Vec<String>> = rows.last().map(|row| {
            self.plan
                .key
                .iter()
                .map(|(index, _)| row[*index].clone().unwrap_or_default())
                .collect()
        });
        let count = rows.len() as u64;
        let high = Watermark::High(HighWatermark {
            backfill: state.run_id.clone(),
            schema: schema.clone(),
            table: name.clone(),
            chunk: state.chunks,
            columns: self.plan.columns.clone(),
            rows,
        });
        let high_watermark = emit(&transaction, &high).await?;
        let last_key = last_key.or_else(|| state.last_key.clone());
        transaction
            .execute(
                "UPDATE walcast.backfill SET last_key = $3, chunks = chunks + 1, \
                   rows_read = rows_read + $4, updated_at = now() \
                 WHERE slot = $1 AND table_name = $2",
                &[&self.slot, &table, &last_key, &(count as i64)],
            )
            .await?;
        transaction.commit().await?;
        state.last_key = last_key;
        state.chunks += 1;
        state.rows += count;
        Ok(Written {
            high_watermark,
            rows: count,
            last: last && !cut,
        })
    }

    /// Waits until the capture confirmed the chunk whose high watermark is
    /// at `lsn` (the slot's confirmed position passed it); false when
    /// interrupted.
    async fn wait_published(&self, lsn: Lsn, chunk: u64) -> anyhow::Result<bool> {
        let timeout = Duration::from_secs(self.args.timeout);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let row = self
                .client
                .query_opt(
                    "SELECT coalesce(confirmed_flush_lsn, '0/0')::text FROM pg_replication_slots \
                     WHERE slot_name = $1",
                    &[&self.slot],
                )
                .await?;
            let Some(row) = row else {
                bail!("slot {} was dropped during the backfill", self.slot);
            };
            let confirmed: Lsn = row.get::<_, String>(0).parse()?;
            if confirmed > lsn {
                return Ok(true);
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "the capture did not publish backfill chunk {chunk} of {} (high watermark at \
                     {lsn}) within {} s: is `walcast run` (capture role, a version that reads \
                     backfill watermarks) streaming from slot {}? Progress is saved: run the \
                     command again to resume (--timeout waits longer)",
                    self.plan.table,
                    timeout.as_secs(),
                    self.slot
                );
            }
            if !self.sleep(Duration::from_millis(100)).await {
                return Ok(false);
            }
        }
    }

    /// Sleeps unless interrupted first; false when interrupted.
    async fn sleep(&self, delay: Duration) -> bool {
        tokio::select! {
            biased;
            _ = self.shutdown.cancelled() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }
}

/// Writes a watermark (transactional) and returns its LSN.
async fn emit(
    client: &impl tokio_postgres::GenericClient,
    watermark: &Watermark,
) -> Result<Lsn, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT pg_logical_emit_message(true, $1::text, $2::text)::text",
            &[&WATERMARK_PREFIX, &watermark.to_json()],
        )
        .await?;
    let text: String = row.get(0);
    Ok(text.parse().unwrap_or(Lsn::ZERO))
}

/// Deadlocks and serialization failures: the chunk can simply be read again.
fn is_transient(error: &tokio_postgres::Error) -> bool {
    error.code().is_some_and(|code| {
        *code == SqlState::T_R_DEADLOCK_DETECTED
            || *code == SqlState::T_R_SERIALIZATION_FAILURE
            || *code == SqlState::LOCK_NOT_AVAILABLE
    })
}
