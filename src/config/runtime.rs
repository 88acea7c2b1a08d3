//! `[runtime]`: how many threads run walcast's async tasks, and where the
//! allocator serves large allocations from.
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
//!
//! `mmap_threshold_bytes` (glibc's `M_MMAP_THRESHOLD`): allocations of at
//! least this size come from their own mappings, returned to the OS when
//! freed. hyper's 8 KiB per-connection read buffer, freed once a socket has
//! become a WebSocket, otherwise leaves a hole on the heap that glibc never
//! returns: 8192 saves about 4.6 KiB of RSS per idle socket. It is not the
//! default because every buffer between 8 and 32 KiB that grows and shrinks
//! then does so through `mremap`: rustls's read buffer on a TLS replication
//! connection did about 220 times a second at 5,000 changes/s, and the
//! latency at that rate rose (p50 5.0 → 6.7 ms, p99 93 → 112 ms, medians
//! of 6 rounds; BENCHMARKS.md). So: a setting for a gateway holding many
//! idle sockets. 0, the default, leaves glibc's own adaptive threshold;
//! `MALLOC_MMAP_THRESHOLD_` in the environment, glibc's own knob, wins over
//! this setting.

use std::num::NonZeroUsize;
use std::ops::RangeInclusive;

use serde::Deserialize;

use super::{check_ranges, Problem};

/// `worker_threads = 0`: one per available CPU.
pub const AUTO_WORKER_THREADS: usize = 0;

const WORKER_THREADS: RangeInclusive<u64> = 0..=1024;

/// The default `mmap_threshold_bytes`: glibc's own adaptive threshold.
pub const DEFAULT_MMAP_THRESHOLD_BYTES: usize = 0;

/// glibc refuses a threshold above 32 MiB (`HEAP_MAX_SIZE / 2` on 64-bit).
const MMAP_THRESHOLD_BYTES: RangeInclusive<u64> = 0..=32 * 1024 * 1024;

/// The derived default is [`AUTO_WORKER_THREADS`] and
/// [`DEFAULT_MMAP_THRESHOLD_BYTES`], both 0.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Threads of the async runtime; 0 (the default) is one per CPU the
    /// process may use.
    pub worker_threads: usize,
    /// Allocations of at least this many bytes get mappings of their own
    /// (glibc); 0 keeps glibc's adaptive threshold.
    pub mmap_threshold_bytes: usize,
}

impl RuntimeConfig {
    /// Adds every problem of `[runtime]` to `problems`.
    pub(super) fn validate(&self, problems: &mut Vec<Problem>) {
        check_ranges(
            problems,
            &[
                (
                    "runtime.worker_threads",
                    self.worker_threads as u64,
                    WORKER_THREADS,
                ),
                (
                    "runtime.mmap_threshold_bytes",
                    self.mmap_threshold_bytes as u64,
                    MMAP_THRESHOLD_BYTES,
                ),
            ],
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
        let set = RuntimeConfig {
            worker_threads: 3,
            ..RuntimeConfig::default()
        };
        assert_eq!(set.worker_threads(cpus(2)), 3);
        assert_eq!(set.worker_threads(cpus(64)), 3);
    }

    #[test]
    fn more_than_1024_is_refused() {
        let mut problems = Vec::new();
        RuntimeConfig {
            worker_threads: 1025,
            ..RuntimeConfig::default()
        }
        .validate(&mut problems);
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].field, "runtime.worker_threads");
    }

    #[test]
    fn the_mmap_threshold_is_glibcs_own_and_at_most_what_glibc_takes() {
        assert_eq!(RuntimeConfig::default().mmap_threshold_bytes, 0);
        for (bytes, problems_expected) in [(0, 0), (32 << 20, 0), ((32 << 20) + 1, 1)] {
            let mut problems = Vec::new();
            RuntimeConfig {
                mmap_threshold_bytes: bytes,
                ..RuntimeConfig::default()
            }
            .validate(&mut problems);
            assert_eq!(problems.len(), problems_expected, "{bytes}: {problems:?}");
        }
    }
}
