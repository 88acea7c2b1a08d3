//! Helpers shared by the integration tests (`use crate::support::...`).
//!
//! - `pgtest`: a database of the test's own, psql, `walcast` child
//!   processes (`tail`, `setup`), the fault cluster;
//! - `stack`: `walcast run` child processes, an audit queue, a writer;
//! - `sio`: an in-process gateway, a test publisher, Node Socket.IO clients;
//! - `api_server`: the HTTP API over a fresh database;
//! - `publisher_fixtures`: events, configs and a read-back queue for the
//!   publisher;
//! - `rabbit_node`, `rabbit_cluster`: private RabbitMQ nodes;
//! - `tcp_proxy`: a network outage on demand; `certs`: a test PKI.
//!
//! And here: [`eventually`] (wait for a condition), [`heavy`] (one load
//! test at a time), [`in_own_process`] (a test alone in a process).

pub mod api_server;
pub mod certs;
pub mod pgtest;
pub mod publisher_fixtures;
pub mod rabbit_cluster;
pub mod rabbit_node;
pub mod sio;
pub mod stack;
pub mod tcp_proxy;

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// What a check of [`eventually`] returns: done (with a value), or not yet
/// (with what it saw, for the failure message).
pub trait Check {
    type Value;
    fn done(self) -> Result<Self::Value, String>;
}

impl Check for bool {
    type Value = ();
    fn done(self) -> Result<(), String> {
        if self {
            Ok(())
        } else {
            Err("the condition is false".into())
        }
    }
}

impl<T> Check for Option<T> {
    type Value = T;
    fn done(self) -> Result<T, String> {
        self.ok_or_else(|| "nothing yet".into())
    }
}

impl<T, E: Display> Check for Result<T, E> {
    type Value = T;
    fn done(self) -> Result<T, String> {
        self.map_err(|e| e.to_string())
    }
}

/// Runs `check` until it is done, and returns its value; fails the test
/// with the last thing the check saw if `timeout` passes first (a check
/// that hangs counts against the timeout too).
///
/// ```ignore
/// let body = eventually(TIMEOUT, || async {
///     let (status, body) = walcast.readyz().await;
///     if status == 200 { Ok(body) } else { Err(format!("/readyz {status}: {body}")) }
/// })
/// .await;
/// ```
pub async fn eventually<C, F, Fut>(timeout: Duration, check: F) -> C::Value
where
    C: Check,
    F: FnMut() -> Fut,
    Fut: Future<Output = C>,
{
    poll(timeout, check)
        .await
        .unwrap_or_else(|last| panic!("not within {timeout:?}: {last}"))
}

/// [`eventually`] that hands the timeout back, as `Err` with the last
/// thing the check saw, for a failure message with more context (a log).
pub async fn poll<C, F, Fut>(timeout: Duration, mut check: F) -> Result<C::Value, String>
where
    C: Check,
    F: FnMut() -> Fut,
    Fut: Future<Output = C>,
{
    let deadline = Instant::now() + timeout;
    // Quick to notice a fast condition, without hammering a slow one.
    let mut pause = Duration::from_millis(10);
    let mut last = "never checked".to_owned();
    loop {
        match tokio::time::timeout_at(deadline, check()).await {
            Ok(outcome) => match outcome.done() {
                Ok(value) => return Ok(value),
                Err(seen) => last = seen,
            },
            Err(_) => return Err(format!("the check itself hung; before that: {last}")),
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(last);
        }
        // The last check at the deadline itself.
        tokio::time::sleep(pause.min(deadline - now)).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// Tests that load the machine (thousands of changes, connect storms, a
/// broker restart under traffic) take this, so that only one of them runs
/// at a time in the whole test binary.
pub async fn heavy() -> tokio::sync::MutexGuard<'static, ()> {
    static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    HEAVY.lock().await
}

/// Set in the process [`in_own_process`] starts: the test it runs.
const OWN_PROCESS: &str = "WALCAST_TEST_OWN_PROCESS";

/// The path libtest knows a test by, from the `module_path!()` of its
/// module and its function name: `it::fanout_storm` and `storm` give
/// `fanout_storm::storm`.
pub fn test_path(module_path: &str, name: &str) -> String {
    match module_path.split_once("::") {
        Some((_crate, module)) => format!("{module}::{name}"),
        None => name.to_owned(),
    }
}

/// For a test that measures its own process (RSS): whether to run the
/// test's body here. In the test binary's ordinary run it starts the binary
/// again for this one test alone, waits for it, fails if it failed, and
/// returns false; in that process it returns true.
///
/// ```ignore
/// if !support::in_own_process(module_path!(), "my_test") {
///     return;
/// }
/// ```
pub fn in_own_process(module_path: &str, name: &str) -> bool {
    let path = test_path(module_path, name);
    if std::env::var(OWN_PROCESS).is_ok_and(|running| running == path) {
        return true;
    }
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", &path, "--nocapture", "--test-threads=1"])
        .env(OWN_PROCESS, &path)
        .output()
        .expect("start the test binary again");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{path} failed in its own process ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(
        stdout.contains("1 passed"),
        "{path} did not run in its own process:\n{stdout}\n{stderr}"
    );
    // What it printed (numbers), shown with --nocapture.
    eprint!("{stderr}");
    false
}
