//! What `walcast backfill` shows while it runs, and how it keeps to
//! `--rate`: a progress bar redrawn in place on a terminal, a plain line
//! every few seconds otherwise (logs, CI). Pure arithmetic and text; the
//! caller decides when to sleep and where to write.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// How often the plain (non-terminal) line is printed.
const PLAIN_EVERY: Duration = Duration::from_secs(2);
/// How often the bar is redrawn on a terminal.
const BAR_EVERY: Duration = Duration::from_millis(100);
const BAR_WIDTH: usize = 30;

/// Progress of one table's backfill, written to stderr.
pub struct Progress {
    table: String,
    /// Rows expected (counted at the start); the bar stops at 100 %.
    total: u64,
    /// Rows read so far, earlier (resumed) runs included.
    done: u64,
    /// Rows read by this run, for the rate.
    this_run: u64,
    started: Instant,
    terminal: bool,
    last_shown: Option<Instant>,
}

impl Progress {
    pub fn new(table: &str, total: u64, done_before: u64) -> Progress {
        Progress {
            table: table.to_owned(),
            total,
            done: done_before,
            this_run: 0,
            started: Instant::now(),
            terminal: std::io::stderr().is_terminal(),
            last_shown: None,
        }
    }

    pub fn advance(&mut self, rows: u64) {
        self.done += rows;
        self.this_run += rows;
        let now = Instant::now();
        let every = if self.terminal {
            BAR_EVERY
        } else {
            PLAIN_EVERY
        };
        if self.last_shown.is_none_or(|last| now - last >= every) {
            self.last_shown = Some(now);
            self.show(now);
        }
    }

    /// The last state, then a line break on a terminal.
    pub fn finish(&mut self) {
        self.show(Instant::now());
        if self.terminal {
            eprintln!();
        }
    }

    /// Rows read by this run (what `--rate` limits).
    pub fn rows_this_run(&self) -> u64 {
        self.this_run
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    fn show(&self, now: Instant) {
        let rate = rows_per_second(self.this_run, now - self.started);
        let line = if self.terminal {
            format!("\r{}", bar_line(&self.table, self.done, self.total, rate))
        } else {
            format!("{}\n", plain_line(&self.table, self.done, self.total, rate))
        };
        let mut stderr = std::io::stderr().lock();
        let _ = stderr.write_all(line.as_bytes());
        let _ = stderr.flush();
    }
}

fn rows_per_second(rows: u64, elapsed: Duration) -> u64 {
    let seconds = elapsed.as_secs_f64();
    if seconds <= 0.0 {
        return 0;
    }
    (rows as f64 / seconds) as u64
}

fn percent(done: u64, total: u64) -> u64 {
    if total == 0 {
        return 100;
    }
    (done.min(total) * 100) / total
}

/// `public.orders [#######.......] 45% 450000/1000000 rows, 12000 rows/s`
fn bar_line(table: &str, done: u64, total: u64, rate: u64) -> String {
    let filled = (percent(done, total) as usize * BAR_WIDTH) / 100;
    format!(
        "{table} [{}{}] {:>3}% {done}/{total} rows, {rate} rows/s ",
        "#".repeat(filled),
        ".".repeat(BAR_WIDTH - filled),
        percent(done, total),
    )
}

/// `backfill public.orders: 450000/1000000 rows (45%), 12000 rows/s`
fn plain_line(table: &str, done: u64, total: u64, rate: u64) -> String {
    format!(
        "backfill {table}: {done}/{total} rows ({}%), {rate} rows/s",
        percent(done, total)
    )
}

/// `--rate`: how long to wait before the next chunk so that the rows read
/// since `started` stay at or below `rate` per second.
pub fn rate_delay(rate: Option<u32>, rows: u64, elapsed: Duration) -> Duration {
    let Some(rate) = rate.filter(|rate| *rate > 0) else {
        return Duration::ZERO;
    };
    let due = Duration::from_secs_f64(rows as f64 / f64::from(rate));
    due.saturating_sub(elapsed)
}

/// `--rate` as written: `5000` or `5000/s`.
pub fn parse_rate(text: &str) -> Result<u32, String> {
    let number = text.strip_suffix("/s").unwrap_or(text);
    match number.trim().parse::<u32>() {
        Ok(rate) if rate > 0 => Ok(rate),
        _ => Err(format!(
            "{text:?} is not a rate: give rows per second, e.g. 5000 or 5000/s"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_show_rows_percent_and_rate() {
        assert_eq!(
            bar_line("public.orders", 450, 1000, 120),
            "public.orders [#############.................]  45% 450/1000 rows, 120 rows/s "
        );
        assert_eq!(
            plain_line("public.orders", 450, 1000, 120),
            "backfill public.orders: 450/1000 rows (45%), 120 rows/s"
        );
        // More rows than counted at the start (rows inserted since): 100 %.
        assert!(bar_line("t", 1200, 1000, 0).contains("100% 1200/1000"));
        assert!(plain_line("t", 0, 0, 0).contains("(100%)"));
    }

    #[test]
    fn the_rate_delays_the_next_chunk() {
        assert_eq!(rate_delay(None, 1_000_000, Duration::ZERO), Duration::ZERO);
        // 1000 rows at 500/s are due after 2 s; 0.5 s have passed.
        assert_eq!(
            rate_delay(Some(500), 1000, Duration::from_millis(500)),
            Duration::from_millis(1500)
        );
        assert_eq!(
            rate_delay(Some(500), 1000, Duration::from_secs(3)),
            Duration::ZERO
        );
    }

    #[test]
    fn rates_parse_with_or_without_per_second() {
        assert_eq!(parse_rate("5000"), Ok(5000));
        assert_eq!(parse_rate("5000/s"), Ok(5000));
        for bad in ["0", "-1", "fast", "5000/min", ""] {
            let error = parse_rate(bad).unwrap_err();
            assert!(error.contains("rows per second"), "{error}");
        }
    }
}
