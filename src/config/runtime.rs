//! `[runtime]`: how many threads run walcast's async tasks.
//!
//! walcast is a sidecar: it shares its host with PostgreSQL (and often
//! RabbitMQ). By default it runs its tasks on half the CPUs the process
//! may use (at least one), so that it does not oversubscribe the host it
//! serves. On a 2-core machine that is one worker thread: every hand-off
//! between capture, publisher, consumer and hub then stays on one thread,
//! which measured 17 % less walcast CPU per change draining a backlog and
//! 25 % less per socket delivery, at the price of a fan-out ceiling of one
//! core's worth of deliveries (BENCHMARKS.md). A gateway with many
//! sockets on a host of its own raises `worker_threads`.
//!
//! lapin's I/O threads, the replay log's writer thread and the blocking
//! pool are not counted here. Building the runtime is `main`'s job.

use std::num::NonZeroUsize;
use std::ops::RangeInclusive;

use serde::Deserialize;

use super::{check_ranges, Problem};

/// `worker_threads = 0`: half the available CPUs, at least one.
pub const AUTO_WORKER_THREADS: usize = 0;

const WORKER_THREADS: RangeInclusive<u64> = 0..=1024;

#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Threads of the async runtime; 0 (the default) is half the CPUs the
    /// process may use, at least one.
    pub worker_threads: usize,
}

impl RuntimeConfig {
    /// Adds every problem of `[runtime]` to `problems`.
    pub(super) fn validate(&self, problems: &mut Vec<Problem>) {
        check_ranges(
            problems,
            &[(
                "runtime.worker_threads",
                self.worker_threads as u64,
                WORKER_THREADS,
            )],
        );
    }

    /// The worker threads to start, given the CPUs the process may use
    /// (`std::thread::available_parallelism`, which honours cgroup quotas
    /// and affinity).
    pub fn worker_threads(&self, cpus: NonZeroUsize) -> usize {
        match self.worker_threads {
            AUTO_WORKER_THREADS => (cpus.get() / 2).max(1),
            n => n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpus(n: usize) -> NonZeroUsize {
        NonZeroUsize::new(n).unwrap()
    }

    #[test]
    fn automatic_is_half_the_cpus_and_at_least_one() {
        let auto = RuntimeConfig::default();
        assert_eq!(auto.worker_threads, AUTO_WORKER_THREADS);
        assert_eq!(auto.worker_threads(cpus(1)), 1);
        assert_eq!(auto.worker_threads(cpus(2)), 1);
        assert_eq!(auto.worker_threads(cpus(3)), 1);
        assert_eq!(auto.worker_threads(cpus(8)), 4);
    }

    #[test]
    fn an_explicit_count_is_taken_as_is() {
        let set = RuntimeConfig { worker_threads: 3 };
        assert_eq!(set.worker_threads(cpus(2)), 3);
        assert_eq!(set.worker_threads(cpus(64)), 3);
    }

    #[test]
    fn more_than_1024_is_refused() {
        let mut problems = Vec::new();
        RuntimeConfig {
            worker_threads: 1025,
        }
        .validate(&mut problems);
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].field, "runtime.worker_threads");
    }
}
