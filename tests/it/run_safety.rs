//! `walcast run` guards an operator relies on: it refuses to serve
//! anonymous writes and change streams on a non-loopback address unless
//! told so explicitly (`auth.allow_anonymous`), and `/readyz` names each
//! component's state without ever showing an error's text (contract
//! section 4), which goes to the log instead.
//!
//! Shutdown leaves nothing running: when `app::run` returns, every task it
//! started has ended and the replay log is closed.
//!
//! The real binary, real PostgreSQL where one is needed.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::support::{self, pgtest, stack};

const TIMEOUT: Duration = Duration::from_secs(30);

/// A `walcast run` process; its stderr is collected.
struct Run {
    child: Child,
    log: Arc<Mutex<String>>,
    address: oneshot::Receiver<SocketAddr>,
    reader: JoinHandle<()>,
}

/// `walcast run` with `args`, stderr collected.
fn spawn(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut command: Command = pgtest::walcast_command();
    command
        .arg("run")
        .args(args)
        .env("RUST_LOG", "info")
        .env_remove("WALCAST_AUTH_ALLOW_ANONYMOUS")
        .env_remove("WALCAST_AUTH_ENABLED")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().expect("spawn walcast run");
    let stderr = child.stderr.take().unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let (address_tx, address) = oneshot::channel();
    let sink = log.clone();
    let reader = tokio::spawn(async move {
        let mut address_tx = Some(address_tx);
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(address) = stack::listen_address(&line) {
                if let Some(tx) = address_tx.take() {
                    let _ = tx.send(address);
                }
            }
            let mut log = sink.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
    });
    Run {
        child,
        log,
        address,
        reader,
    }
}

impl Run {
    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until walcast reports the address it listens on and `GET
    /// /healthz` there answers 200; returns its base URL.
    async fn serving(&mut self) -> String {
        let address = match tokio::time::timeout(TIMEOUT, &mut self.address).await {
            Ok(Ok(address)) => address,
            Ok(Err(_)) => panic!(
                "walcast exited ({:?}) instead of serving:\n{}",
                self.child.try_wait(),
                self.log()
            ),
            Err(_) => panic!("walcast did not report its address:\n{}", self.log()),
        };
        // On every interface (0.0.0.0): reach it over loopback.
        let base = format!("http://127.0.0.1:{}", address.port());
        let healthz = format!("{base}/healthz");
        support::poll(TIMEOUT, || async {
            match reqwest::get(&healthz).await {
                Ok(response) if response.status() == 200 => Ok(()),
                Ok(response) => Err(format!("status {}", response.status())),
                Err(e) => Err(e.to_string()),
            }
        })
        .await
        .unwrap_or_else(|last| panic!("walcast did not serve {healthz} ({last}):\n{}", self.log()));
        base
    }

    /// Waits for the exit and for the last line of stderr.
    async fn exited(mut self) -> (std::process::ExitStatus, String) {
        let status = tokio::time::timeout(TIMEOUT, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("walcast did not exit:\n{}", self.log()))
            .unwrap();
        tokio::time::timeout(TIMEOUT, &mut self.reader)
            .await
            .expect("stderr closes when walcast exits")
            .unwrap();
        (status, self.log())
    }

    /// SIGTERM, then waits for the exit.
    async fn stop(self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        let _ = self.exited().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_loopback_listener_with_auth_off_is_refused_unless_allowed_explicitly() {
    let pg = pgtest::pg_url();
    // Refused: exit status 1 and the fix in the message, before serving.
    let run = spawn(
        &[
            "--role",
            "api",
            "--database-url",
            &pg,
            "--listen",
            "0.0.0.0:0",
        ],
        &[],
    );
    let (status, text) = run.exited().await;
    assert_eq!(status.code(), Some(1), "{text}");
    assert!(
        text.contains("http.listen is 0.0.0.0:0")
            && text.contains("auth.allow_anonymous = true")
            && text.contains("WALCAST_AUTH_ALLOW_ANONYMOUS=true"),
        "{text}"
    );
    // One readable sentence: no runs of blanks from a broken line continuation.
    let refusal = text.lines().find(|l| l.contains("http.listen is")).unwrap();
    assert!(!refusal.contains("  "), "{refusal}");

    // Allowed explicitly: it serves, on every interface.
    let mut run = spawn(
        &[
            "--role",
            "api",
            "--database-url",
            &pg,
            "--listen",
            "0.0.0.0:0",
        ],
        &[("WALCAST_AUTH_ALLOW_ANONYMOUS", "true")],
    );
    run.serving().await;
    run.stop().await;

    // Loopback needs nothing.
    let mut run = spawn(
        &[
            "--role",
            "api",
            "--database-url",
            &pg,
            "--listen",
            "127.0.0.1:0",
        ],
        &[],
    );
    run.serving().await;
    run.stop().await;

    // Auth on is enough too.
    let mut run = spawn(
        &[
            "--role",
            "api",
            "--database-url",
            &pg,
            "--listen",
            "0.0.0.0:0",
        ],
        &[
            ("WALCAST_AUTH_ENABLED", "true"),
            ("WALCAST_AUTH_TOKENS", "a-token-of-sixteen-chars"),
        ],
    );
    run.serving().await;
    run.stop().await;
}

/// A capture-only `walcast run` whose Postgres is unreachable (nothing
/// listens on port 1): it serves health and metrics while it retries, which
/// is all a test of process-wide settings needs.
fn spawn_idle_capture(env: &[(&str, &str)]) -> Run {
    spawn(
        &[
            "--role",
            "capture",
            "--database-url",
            "postgres://walcast@127.0.0.1:1/nowhere",
            "--listen",
            "127.0.0.1:0",
        ],
        env,
    )
}

/// `runtime.worker_threads` decides how many worker threads the runtime
/// has (the "walcast is running" line reports the runtime's own count);
/// 0, the default, is one per CPU.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_worker_threads_sets_the_runtimes_workers() {
    let cpus = std::thread::available_parallelism().unwrap().get();
    for (setting, expected) in [("3", 3), ("1", 1), ("0", cpus)] {
        let mut run = spawn_idle_capture(&[("WALCAST_RUNTIME_WORKER_THREADS", setting)]);
        run.serving().await;
        let log = run.log();
        let running = log
            .lines()
            .find(|line| line.contains("walcast is running"))
            .unwrap_or_else(|| panic!("no running line:\n{log}"));
        assert!(
            running.contains(&format!("worker_threads={expected}")),
            "setting {setting}: {running}"
        );
        run.stop().await;
    }
}

/// glibc's own `MALLOC_MMAP_THRESHOLD_` wins over
/// `runtime.mmap_threshold_bytes`, and the log says so; without it, nothing
/// is said (the setting applies quietly).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mallocs_own_mmap_threshold_variable_wins_and_is_logged() {
    let notice = "MALLOC_MMAP_THRESHOLD_ is set";
    let setting = ("WALCAST_RUNTIME_MMAP_THRESHOLD_BYTES", "8192");
    for (env, expected) in [
        (vec![setting, ("MALLOC_MMAP_THRESHOLD_", "65536")], true),
        (vec![setting], false),
    ] {
        let mut run = spawn_idle_capture(&env);
        run.serving().await;
        let log = run.log();
        assert_eq!(log.contains(notice), expected, "{env:?}:\n{log}");
        run.stop().await;
    }
}

/// A capture whose Postgres is unreachable: `/readyz` says `reconnecting`
/// and nothing of the error (host, port, password, the OS's message); the
/// log has the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_names_states_and_never_an_error_text() {
    // Nothing listens on port 1.
    let database_url = "postgres://walcast:s3cret-pw@127.0.0.1:1/nowhere";
    let mut run = spawn(
        &[
            "--role",
            "capture",
            "--database-url",
            database_url,
            "--listen",
            "127.0.0.1:0",
        ],
        &[("WALCAST_POSTGRES_MAX_BACKOFF_MS", "1000")],
    );
    let readyz = format!("{}/readyz", run.serving().await);
    let body = support::poll(TIMEOUT, || async {
        let response = reqwest::get(&readyz).await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let body: Value = serde_json::from_str(&text).unwrap();
        if body["components"][0]["state"] == "reconnecting" {
            assert_eq!(status, 503, "{text}");
            Ok(text)
        } else {
            Err(text)
        }
    })
    .await
    .unwrap_or_else(|last| panic!("capture never reported reconnecting: {last}\n{}", run.log()));
    let parsed: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        parsed,
        serde_json::json!({
            "status": "not_ready",
            "components": [{"name": "capture", "healthy": false, "state": "reconnecting"}],
            "error": {"code": "not_ready", "message": "not ready: capture (reconnecting)"}
        })
    );
    for leak in [
        "s3cret",
        "127.0.0.1:1",
        "nowhere",
        "refused",
        "os error",
        "unreachable",
    ] {
        assert!(!body.contains(leak), "/readyz shows {leak:?}: {body}");
    }
    // The reason is in the log (written as the state changes: /readyz can
    // show the state a moment before the line reaches this side).
    support::poll(TIMEOUT, || async {
        let text = run.log();
        text.contains("postgres unreachable") && text.contains("reconnecting")
    })
    .await
    .unwrap_or_else(|_| panic!("the log does not give the reason:\n{}", run.log()));
    let text = run.log();
    assert!(!text.contains("s3cret"), "{text}");
    run.stop().await;
}

/// Every task `walcast run` starts runs on its tracker, which it waits for
/// before it returns: the slot lease's and the catalogs' Postgres
/// connections, the replication stream's writer, the publisher's engine,
/// the consumer's session tasks, the hub's tasks and the readiness mirrors.
/// So when `run` returns its replay log is closed (another hub may open it
/// at once) and nothing is left running on its runtime but lapin's
/// heartbeat tasks, which sleep out their interval (1 s here) after the
/// connection closed. In process, on a current-thread runtime of its own,
/// so the runtime's task count is the app's.
#[test]
fn when_run_returns_its_tasks_have_ended_and_the_replay_log_is_closed() {
    use walcast::app::{Role, Roles};
    use walcast::fanout::{Hub, HubOptions};

    let client = tokio::runtime::Runtime::new().unwrap();
    let db = client.block_on(pgtest::TestDb::create("shutdown"));
    let replay_dir = tempfile::tempdir().unwrap();
    // In process, run reports its address only in its log; a port the OS
    // just handed out is free enough for one test.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .unwrap()
        .port();
    let mut config = walcast::config::Config::default();
    config.postgres.url = db.url.clone();
    config.postgres.slot = db.slot.clone();
    config.postgres.publication = db.publication.clone();
    config.rabbitmq.url = format!("{}?heartbeat=1", stack::shared_amqp_url());
    config.rabbitmq.exchange = stack::unique("shutdown");
    config.rabbitmq.queue = stack::unique("shutdown");
    config.fanout.replay_dir = replay_dir.path().display().to_string();
    config.http.listen = format!("127.0.0.1:{port}");
    // The API role's pool is deadpool's, with connection tasks of its own.
    let roles = Roles([Role::Capture, Role::Gateway].into());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let stop = shutdown.clone();
    let app = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let result = walcast::app::run(config, roles, stop).await;
            let stopped_at = std::time::Instant::now();
            let alive = || {
                tokio::runtime::Handle::current()
                    .metrics()
                    .num_alive_tasks()
            };
            let at_return = alive();
            // A replay log still held by a writer thread cannot be opened.
            let reopened = Hub::open(
                HubOptions {
                    replay_dir: Some(std::path::PathBuf::from(
                        &replay_dir.path().display().to_string(),
                    )),
                    ..HubOptions::default()
                },
                tokio_util::sync::CancellationToken::new(),
            )
            .map(drop);
            while alive() > 0 && stopped_at.elapsed() < TIMEOUT {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (result, reopened, at_return, alive(), stopped_at.elapsed())
        })
    });

    client.block_on(async {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            let ready = reqwest::get(format!("http://127.0.0.1:{port}/readyz")).await;
            let body = match ready {
                Ok(response) if response.status() == 200 => break,
                Ok(response) => response.text().await.unwrap_or_default(),
                Err(e) => e.to_string(),
            };
            assert!(
                tokio::time::Instant::now() < deadline && !app.is_finished(),
                "walcast run never got ready: {body}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    shutdown.cancel();
    let (result, reopened, at_return, alive, waited) = app.join().expect("the app's thread");
    result.expect("walcast run stopped cleanly");
    reopened.expect("the replay log is closed when run returns");
    eprintln!("tasks alive when run returned: {at_return}; all gone after {waited:?}");
    assert_eq!(
        alive, 0,
        "tasks still running {waited:?} after run returned"
    );
}
