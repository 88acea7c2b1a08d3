//! Backfill watermarks in the stream: the capture's half of `walcast
//! backfill` (the DBLog method, contract section 1 "Backfill").
//!
//! `walcast backfill` (`cli/backfill.rs`) writes, per primary-key chunk, a
//! low watermark, then in one transaction reads the chunk under row locks
//! and writes a high watermark carrying the rows (as text, with their
//! column types). Both are transactional logical messages with the prefix
//! [`WATERMARK_PREFIX`], so they arrive in commit order among the changes.
//!
//! [`Backfill`] watches the stream: a low watermark opens a window for its
//! table; every change of that table inside the window records its key; the
//! high watermark closes the window and its rows become `read` events at
//! its position, except those whose key changed inside the window (their
//! change, already in the stream, is as new as the read or newer). It is
//! sans-io: messages and events in, events out; the capture loop sends
//! them.
//!
//! Why the row locks: Postgres can write a transaction's commit record
//! before that transaction becomes visible to new snapshots, so a change
//! committed just before the low watermark might be missed by the chunk's
//! read and never enter the window. The CLI reads with `FOR SHARE` in READ
//! COMMITTED, which waits for such a writer and returns the newest committed
//! version, and keeps every row it read from changing until the high
//! watermark commits. So a chunk whose window was lost (the capture
//! reconnected between the two watermarks) or grew past
//! [`MAX_WINDOW_KEYS`] is still emitted whole: its rows are still exact at
//! the high watermark.
//!
//! It does not read tables, write watermarks or track progress (the CLI
//! does), and it keeps one window at a time: the CLI writes them one after
//! another.

use std::collections::HashSet;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::config::TableName;
use crate::decoder::{Decoder, ReadColumn, WalMessage};
use crate::event::{ChangeEvent, Lsn, Op};

/// The prefix of backfill watermark messages (`pg_logical_emit_message`).
pub const WATERMARK_PREFIX: &str = "walcast.backfill";

/// Keys remembered in one window at most. A window lives for one chunk's
/// read (milliseconds); one that grows this large has lost its CLI, and its
/// keys are forgotten (see the module doc for why that is safe).
pub const MAX_WINDOW_KEYS: usize = 100_000;

/// The content of a watermark message: JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Watermark {
    Low(LowWatermark),
    High(HighWatermark),
}

/// Opens the window of one chunk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LowWatermark {
    /// The backfill run (random, from the CLI).
    pub backfill: String,
    pub schema: String,
    pub table: String,
    /// The chunk's number inside the run, from 0.
    pub chunk: u64,
}

/// Closes the window and carries the chunk's rows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HighWatermark {
    pub backfill: String,
    pub schema: String,
    pub table: String,
    pub chunk: u64,
    /// The table's columns in table order.
    pub columns: Vec<WatermarkColumn>,
    /// The rows in key order, values as the types' text output, `null` for
    /// NULL.
    pub rows: Vec<Vec<Option<String>>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatermarkColumn {
    pub name: String,
    pub type_oid: u32,
    pub type_name: String,
    /// Part of the primary key.
    pub key: bool,
}

impl Watermark {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a watermark serializes")
    }
}

/// One closed chunk, ready to send.
#[derive(Debug)]
pub struct Chunk {
    pub events: Vec<ChangeEvent>,
    /// Rows left out because their key changed inside the window.
    pub dropped: usize,
}

/// The open window, if any: see the module doc.
#[derive(Debug)]
pub struct Backfill {
    tables: HashSet<TableName>,
    window: Option<Window>,
}

#[derive(Debug)]
struct Window {
    backfill: String,
    chunk: u64,
    schema: Arc<str>,
    table: Arc<str>,
    /// The `key` JSON of every change of the table inside the window.
    changed: HashSet<Box<str>>,
    /// The table was truncated inside the window: every row read is older.
    truncated: bool,
    /// More than [`MAX_WINDOW_KEYS`] changes: keys forgotten.
    overflowed: bool,
}

/// Which rows of a closing chunk survive.
#[derive(Debug, PartialEq, Eq)]
enum Filter {
    /// Drop the rows whose key is in the set.
    Changed(HashSet<Box<str>>),
    /// Drop every row.
    All,
    /// No window to filter by: keep every row.
    None(&'static str),
}

impl Backfill {
    /// Watermarks of tables outside `tables` (`postgres.tables`) are
    /// refused.
    pub fn new(tables: &[TableName]) -> Backfill {
        Backfill {
            tables: tables.iter().cloned().collect(),
            window: None,
        }
    }

    /// A change went by: remembered when it touches the open window's
    /// table.
    pub fn observe(&mut self, event: &ChangeEvent) {
        let Some(window) = self.window.as_mut() else {
            return;
        };
        if event.schema != window.schema || event.table != window.table {
            return;
        }
        if event.op == Op::Truncate {
            window.truncated = true;
            return;
        }
        if window.overflowed {
            return;
        }
        if let Some(key) = &event.key {
            window.changed.insert(key.as_json().into());
        }
        if window.changed.len() > MAX_WINDOW_KEYS {
            warn!(
                backfill = %window.backfill,
                chunk = window.chunk,
                "a backfill window saw more than {MAX_WINDOW_KEYS} changes; its keys are forgotten \
                 and its chunk is emitted whole (it was read under row locks)"
            );
            window.overflowed = true;
            window.changed = HashSet::new();
        }
    }

    /// A logical message: a watermark opens or closes a window; a closing
    /// one gives the chunk's events. Anything else is ignored; a watermark
    /// that cannot be used is logged and ignored (the stream goes on).
    pub fn on_message(&mut self, decoder: &mut Decoder, message: &WalMessage) -> Option<Chunk> {
        if message.prefix != WATERMARK_PREFIX {
            debug!(prefix = %message.prefix, lsn = %message.lsn, "logical message ignored");
            return None;
        }
        match self.accept(message) {
            Ok(Watermark::Low(low)) => {
                self.open(low);
                None
            }
            Ok(Watermark::High(high)) => {
                let filter = self.close(&high);
                match emit(decoder, message.lsn, &high, &filter) {
                    Ok(chunk) => Some(chunk),
                    Err(e) => {
                        warn!(lsn = %message.lsn, error = %e, "backfill high watermark not usable; chunk ignored");
                        None
                    }
                }
            }
            Err(e) => {
                warn!(lsn = %message.lsn, error = %e, "backfill watermark ignored");
                None
            }
        }
    }

    /// Parses and checks a watermark message.
    fn accept(&self, message: &WalMessage) -> Result<Watermark, String> {
        if !message.transactional {
            return Err(
                "it is not transactional (walcast backfill writes transactional ones)".into(),
            );
        }
        let watermark: Watermark = serde_json::from_slice(&message.content)
            .map_err(|e| format!("malformed content: {e}"))?;
        let (schema, table) = match &watermark {
            Watermark::Low(low) => (&low.schema, &low.table),
            Watermark::High(high) => (&high.schema, &high.table),
        };
        let name = TableName {
            schema: schema.clone(),
            table: table.clone(),
        };
        if !self.tables.contains(&name) {
            return Err(format!("{name} is not in postgres.tables"));
        }
        if let Watermark::High(high) = &watermark {
            if !high.columns.iter().any(|column| column.key) {
                return Err(format!("high watermark of {name} names no key column"));
            }
            let width = high.columns.len();
            if let Some(row) = high.rows.iter().find(|row| row.len() != width) {
                return Err(format!(
                    "high watermark of {name}: a row has {} values for {width} columns",
                    row.len()
                ));
            }
        }
        Ok(watermark)
    }

    fn open(&mut self, low: LowWatermark) {
        if let Some(old) = &self.window {
            // Its CLI died before the high watermark; a resumed run starts
            // over with a new low watermark.
            info!(backfill = %old.backfill, chunk = old.chunk, "backfill window abandoned (no high watermark)");
        }
        debug!(backfill = %low.backfill, chunk = low.chunk, table = %format!("{}.{}", low.schema, low.table), "backfill window opened");
        self.window = Some(Window {
            backfill: low.backfill,
            chunk: low.chunk,
            schema: low.schema.into(),
            table: low.table.into(),
            changed: HashSet::new(),
            truncated: false,
            overflowed: false,
        });
    }

    /// Closes the window of `high`'s chunk and says which rows survive.
    fn close(&mut self, high: &HighWatermark) -> Filter {
        let matches = self.window.as_ref().is_some_and(|window| {
            window.backfill == high.backfill
                && window.chunk == high.chunk
                && *window.schema == high.schema
                && *window.table == high.table
        });
        if !matches {
            // Another run's window stays open for its own high watermark.
            return Filter::None(
                "no low watermark seen for it (the capture reconnected inside the window)",
            );
        }
        let window = self.window.take().expect("checked above");
        if window.truncated {
            Filter::All
        } else if window.overflowed {
            Filter::None("its window overflowed")
        } else {
            Filter::Changed(window.changed)
        }
    }
}

/// The chunk's `read` events that `filter` keeps. Every row takes its
/// ordinal, kept or not, so the ids do not depend on the filter.
fn emit(
    decoder: &mut Decoder,
    lsn: Lsn,
    high: &HighWatermark,
    filter: &Filter,
) -> Result<Chunk, crate::decoder::DecodeError> {
    if let Filter::None(why) = filter {
        info!(backfill = %high.backfill, chunk = high.chunk, why, "backfill chunk emitted without a window");
    }
    let columns: Vec<ReadColumn<'_>> = high
        .columns
        .iter()
        .map(|column| ReadColumn {
            name: &column.name,
            type_oid: column.type_oid,
            type_name: &column.type_name,
            is_key: column.key,
        })
        .collect();
    let table = decoder.read_table(&high.schema, &high.table, &columns);
    let mut events = Vec::with_capacity(high.rows.len());
    let mut dropped = 0;
    let mut values: Vec<Option<&str>> = Vec::with_capacity(columns.len());
    for row in &high.rows {
        values.clear();
        values.extend(row.iter().map(Option::as_deref));
        let event = decoder.read_event(&table, lsn, &values)?;
        let keep = match filter {
            Filter::All => false,
            Filter::None(_) => true,
            Filter::Changed(changed) => event
                .key
                .as_ref()
                .is_none_or(|key| !changed.contains(key.as_json())),
        };
        if keep {
            events.push(event);
        } else {
            dropped += 1;
        }
    }
    Ok(Chunk { events, dropped })
}

#[cfg(test)]
#[path = "backfill_tests.rs"]
mod tests;
