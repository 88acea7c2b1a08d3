//! `[runtime]`: how many threads run walcast's async tasks.
//!
//! By default one per CPU the process may use (tokio's own default). One
//! thread keeps every hand-off between capture, publisher, consumer and
//! hub on one thread: on a 2-core host that measured 13 % less walcast CPU
//! per change draining a backlog and 25 % less per socket delivery, but a
//! latency tail two to four times longer for 100 browsers fed by the API
//! on a busy host (one thread descheduled stalls every role), and a
//! fan-out ceiling of one core (BENCHMARKS.md). So it is a setting for a
//! host that mostly drains (a capture-only sidecar, a backlog catch-up),
//! not the default.
//!
//! lapin's I/O threads, the replay log's writer thread and the blocking
//! pool are not counted here. Building the runtime is `main`'s job.

use std::num::NonZeroUsize;
use std::ops::RangeInclusive;

use serde::Deserialize;

use super::{check_ranges, Problem};

/// `worker_threads = 0`: one per available CPU.
pub const AUTO_WORKER_THREADS: usize = 0;

const WORKER_THREADS: RangeInclusive<u64> = 0..=1024;

#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Threads of the async runtime; 0 (the default) is one per CPU the
    /// process may use.
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
            AUTO_WORKER_THREADS => cpus.get(),
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
    fn automatic_is_one_per_cpu() {
        let auto = RuntimeConfig::default();
        assert_eq!(auto.worker_threads, AUTO_WORKER_THREADS);
        assert_eq!(auto.worker_threads(cpus(1)), 1);
        assert_eq!(auto.worker_threads(cpus(2)), 2);
        assert_eq!(auto.worker_threads(cpus(8)), 8);
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
