//! The dashboard in a real browser: the `walcast` binary (`run`, all roles)
//! over a database of the test's own, and the system's headless Chromium
//! driven by `tests/e2e/dashboard.mjs` (playwright-core).
//!
//! The Node script drives the page and waits on the DOM; this side owns
//! walcast and psql. They talk in JSON lines (Node prints
//! `{"step": …}`, this side answers `{"go": …}`), every wait bounded.
//! Steps: (a) a psql UPDATE shows in its row; (b) an order created with the
//! form arrives through the WAL, its status is changed with the row's
//! select, another order is deleted, and an API error is shown; (c) walcast
//! (its gateway's history on disk, `fanout.replay_dir`) is stopped with
//! SIGTERM, an order is changed with psql while it is down, walcast starts
//! again on the same port, slot, queue and replay dir, and the page gets
//! the change replayed with `since`: it shows in the row and in the event
//! log, and the page never resyncs; (d) walcast restarts once more without
//! the replay dir, so the page's cursor is unknown and it resyncs: the
//! listing it reloads is held in the browser until a psql change has
//! arrived, which the page queues and then applies, and which shows in the
//! event log; (e) while psql runs a load, the pipeline panel's changes/s
//! shows a rate and its sparkline moves, and the panel lists every /readyz
//! component; one more psql change proves it is live again. At the end the
//! table must hold exactly the database's rows, the page must have shown
//! "Live" only when its current connection had received `ready` (checked in
//! the page on every change of the badge), and it must not have logged an
//! unexpected error. The page is built on walcast-client (clients/js). The
//! screenshot goes to `tests/artifacts/dashboard.png`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::types::ShortString;
use lapin::{Connection, ConnectionProperties};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

use crate::support::pgtest::{self, TestDb};
use crate::support::{self, stack};

/// Bound on each step of the page (the script has its own, shorter ones).
const STEP: Duration = Duration::from_secs(60);
const CHROMIUM: &str = "/usr/bin/chromium";

fn amqp_url() -> String {
    std::env::var("WALCAST_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

fn e2e_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e")
}

fn artifacts_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/artifacts");
    std::fs::create_dir_all(&dir).expect("create tests/artifacts");
    dir
}

/// Installs what the browser test needs once, when missing: Debian's
/// Chromium (never a downloaded browser) and playwright-core.
fn ensure_browser_tooling() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        if !Path::new(CHROMIUM).exists() {
            let status = std::process::Command::new("apt-get")
                .args(["install", "-y", "-qq", "chromium"])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status()
                .expect("run apt-get");
            assert!(
                status.success() && Path::new(CHROMIUM).exists(),
                "cannot install chromium (apt-get install -y chromium; scripts/test.sh does it)"
            );
        }
        if !e2e_dir().join("node_modules/playwright-core").exists() {
            let status = std::process::Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
                .current_dir(e2e_dir())
                .status()
                .expect("npm is installed");
            assert!(status.success(), "npm ci in tests/e2e failed");
        }
    });
}

/// One `walcast run` process, its log appended to a file.
struct Walcast {
    child: Child,
}

/// What a walcast instance runs with; the same for the restarted one.
struct Setup<'a> {
    db: &'a TestDb,
    /// 0 until the first start, then the port walcast reported: a restart
    /// listens on the same one, for the page to reconnect to.
    port: u16,
    exchange: String,
    queue: String,
    log: PathBuf,
    env: Vec<(&'static str, String)>,
}

impl Setup<'_> {
    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn start(&mut self) -> Walcast {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open the walcast log");
        // Where this start's lines begin in the log.
        let offset = log.metadata().expect("the walcast log's size").len() as usize;
        let listen = format!("127.0.0.1:{}", self.port);
        let child = self
            .db
            .walcast(&[
                "run",
                "--listen",
                &listen,
                "--exchange",
                &self.exchange,
                "--rabbitmq-url",
                &amqp_url(),
                "--log-level",
                "info",
            ])
            .env("WALCAST_RABBITMQ_QUEUE", &self.queue)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn walcast run");
        let walcast = Walcast { child };
        let address = support::poll(STEP, || async {
            let log = std::fs::read(&self.log).unwrap_or_default();
            String::from_utf8_lossy(log.get(offset..).unwrap_or_default())
                .lines()
                .find_map(stack::listen_address)
        })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "walcast did not report its address; log:\n{}",
                self.log_tail()
            )
        });
        self.port = address.port();
        self.wait_ready().await;
        walcast
    }

    /// Polls `/readyz` until 200 (capture, gateway and Postgres all up).
    async fn wait_ready(&self) {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        let readyz = format!("{}/readyz", self.base());
        support::poll(STEP, || async {
            match http.get(&readyz).send().await {
                Ok(response) if response.status().is_success() => Ok(()),
                Ok(response) => Err(format!("status {}", response.status())),
                Err(e) => Err(e.to_string()),
            }
        })
        .await
        .unwrap_or_else(|last| {
            panic!(
                "walcast not ready within {STEP:?} ({last}); log:\n{}",
                self.log_tail()
            )
        });
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// SIGTERM, then waits for a clean exit.
    async fn stop(&self, walcast: &mut Walcast) {
        let pid = walcast.child.id().expect("walcast is running");
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let status = tokio::time::timeout(Duration::from_secs(30), walcast.child.wait())
            .await
            .unwrap_or_else(|_| {
                panic!("walcast did not stop on SIGTERM; log:\n{}", self.log_tail())
            })
            .expect("wait for walcast");
        assert!(
            status.success(),
            "walcast exited with {status}; log:\n{}",
            self.log_tail()
        );
    }

    /// Removes the queue and exchange when dropped, also when the test
    /// fails; the walcast log stays then, for the post-mortem.
    fn broker_cleanup(&self) -> BrokerCleanup {
        BrokerCleanup {
            exchange: self.exchange.clone(),
            queue: self.queue.clone(),
        }
    }
}

struct BrokerCleanup {
    exchange: String,
    queue: String,
}

impl Drop for BrokerCleanup {
    fn drop(&mut self) {
        let (exchange, queue) = (self.exchange.clone(), self.queue.clone());
        // Drop cannot await, and may run on a runtime thread: a thread with
        // its own runtime, bounded.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let delete = async {
                    let conn =
                        Connection::connect(&amqp_url(), ConnectionProperties::default()).await?;
                    let channel = conn.create_channel().await?;
                    channel
                        .queue_delete(
                            ShortString::from(queue.as_str()),
                            QueueDeleteOptions::default(),
                        )
                        .await?;
                    channel
                        .exchange_delete(
                            ShortString::from(exchange.as_str()),
                            ExchangeDeleteOptions::default(),
                        )
                        .await?;
                    conn.close(0, "done".into()).await
                };
                let _ = tokio::time::timeout(Duration::from_secs(10), delete).await;
            });
        });
        let _ = cleanup.join();
    }
}

/// The Node script, spoken to over stdin/stdout.
struct Browser {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::UnboundedReceiver<Value>,
}

impl Browser {
    fn spawn(options: Value) -> Browser {
        let mut child = Command::new("node")
            .arg(e2e_dir().join("dashboard.mjs"))
            .arg(options.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("node is installed");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                let value: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("dashboard.mjs printed {line:?}: {e}"));
                if tx.send(value).is_err() {
                    break;
                }
            }
        });
        Browser {
            child,
            stdin,
            lines,
        }
    }

    /// The next line, which must be `step`.
    async fn expect(&mut self, step: &str, setup: &Setup<'_>) -> Value {
        let line = match tokio::time::timeout(STEP, self.lines.recv()).await {
            Ok(Some(line)) => line,
            Ok(None) => panic!(
                "dashboard.mjs exited while the test waited for {step:?}; walcast log:\n{}",
                setup.log_tail()
            ),
            Err(_) => panic!("no {step:?} from dashboard.mjs within {STEP:?}"),
        };
        assert_eq!(
            line["step"],
            step,
            "dashboard.mjs: {line}\nwalcast log:\n{}",
            setup.log_tail()
        );
        eprintln!("[dashboard_e2e] {line}");
        line
    }

    async fn send(&mut self, command: Value) {
        let mut line = command.to_string();
        line.push('\n');
        self.stdin.write_all(line.as_bytes()).await.unwrap();
        self.stdin.flush().await.unwrap();
    }
}

fn ids(value: &Value) -> Vec<i64> {
    value
        .as_array()
        .expect("an array of ids")
        .iter()
        .map(|id| id.as_i64().expect("an integer id"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_follows_psql_form_writes_and_a_walcast_restart_in_chromium() {
    ensure_browser_tooling();
    let started = Instant::now();
    let db = TestDb::create_empty("dashboard").await;
    let out = db
        .walcast(&["setup", "--sample-data"])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "walcast setup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sample: Vec<i64> = db
        .psql("SELECT id FROM orders ORDER BY id")
        .await
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert!(sample.len() >= 3, "sample data has at least 3 orders");

    let artifacts = artifacts_dir();
    let unique = stack::unique("dashboard");
    let replay_dir = tempfile::tempdir().expect("a replay dir");
    let replay_env = "WALCAST_FANOUT_REPLAY_DIR";
    let mut setup = Setup {
        db: &db,
        port: 0,
        exchange: unique.clone(),
        queue: format!("{unique}.gateway"),
        log: artifacts.join(format!("{unique}.log")),
        env: vec![(replay_env, replay_dir.path().display().to_string())],
    };
    let _broker = setup.broker_cleanup();
    let mut walcast = setup.start().await;
    let screenshot = artifacts.join("dashboard.png");
    let _ = std::fs::remove_file(&screenshot);
    let mut browser = Browser::spawn(json!({
        "url": format!("{}/", setup.base()),
        "screenshot": screenshot,
    }));

    // The page lists every order, newest first.
    let loaded = browser.expect("loaded", &setup).await;
    let mut expected = sample.clone();
    expected.reverse();
    assert_eq!(ids(&loaded["ids"]), expected);

    // (a) psql → WAL → RabbitMQ → Socket.IO → the row.
    browser.expect("ready-for-psql-update", &setup).await;
    let first = sample[0];
    let status = db
        .psql(&format!(
            "UPDATE orders SET status = CASE WHEN status = 'delivered' THEN 'cancelled' ELSE 'delivered' END \
             WHERE id = {first} RETURNING status"
        ))
        .await;
    browser
        .send(json!({"go": true, "id": first, "status": status}))
        .await;
    browser.expect("saw-psql-update", &setup).await;

    // (b) The form's order is in the database, and came back through the WAL.
    let created = browser.expect("created", &setup).await;
    let created_id = created["id"].as_i64().unwrap();
    // (The page goes on to change its status meanwhile.)
    assert_eq!(
        db.psql(&format!(
            "SELECT customer_name FROM orders WHERE id = {created_id}"
        ))
        .await,
        created["customer"].as_str().unwrap()
    );
    browser.expect("status-changed", &setup).await;
    assert_eq!(
        db.psql(&format!(
            "SELECT status FROM orders WHERE id = {created_id}"
        ))
        .await,
        "shipped"
    );
    let deleted = browser.expect("deleted", &setup).await;
    assert_eq!(
        db.psql(&format!(
            "SELECT count(*) FROM orders WHERE id = {}",
            deleted["id"]
        ))
        .await,
        "0"
    );
    browser.expect("api-error-shown", &setup).await;

    // (c) Restart walcast under the open page; change an order meanwhile.
    browser.expect("ready-for-restart", &setup).await;
    setup.stop(&mut walcast).await;
    browser.send(json!({"go": "down"})).await;
    browser.expect("saw-disconnect", &setup).await;
    // Not the order the page deleted (the newest one).
    let away = sample[1];
    let away_customer = "Changed While Away";
    db.psql(&format!(
        "UPDATE orders SET status = 'cancelled', customer_name = '{away_customer}' WHERE id = {away}"
    ))
    .await;
    let mut walcast = setup.start().await;
    browser
        .send(json!({"go": true, "id": away, "status": "cancelled", "customer": away_customer}))
        .await;
    let replayed = browser.expect("saw-change-after-restart", &setup).await;
    // Replayed from the gateway's log with `since`: an event in the log,
    // not a reload after a resync.
    assert_eq!(replayed["awayLogged"], true, "{replayed}");
    assert!(
        !replayed["states"]
            .as_array()
            .unwrap()
            .contains(&json!("resyncing")),
        "{replayed}"
    );

    // (d) Restart without the replay dir: the page resyncs, and a change
    // that arrives while it reloads is queued, applied and logged.
    browser.expect("ready-for-resync-restart", &setup).await;
    setup.stop(&mut walcast).await;
    setup.env.retain(|(key, _)| *key != replay_env);
    browser.send(json!({"go": "down"})).await;
    browser.expect("saw-disconnect-again", &setup).await;
    let mut walcast = setup.start().await;
    browser.expect("listing-held", &setup).await;
    let queued = first;
    db.psql(&format!(
        "UPDATE orders SET status = 'pending' WHERE id = {queued}"
    ))
    .await;
    browser
        .send(json!({"go": true, "id": queued, "status": "pending"}))
        .await;
    let resynced = browser.expect("saw-queued-change-logged", &setup).await;
    assert!(
        resynced["states"]
            .as_array()
            .unwrap()
            .contains(&json!("resyncing")),
        "{resynced}"
    );

    // The pipeline panel's changes/s moves while a load runs: 40
    // transactions of 5 rows, a few a second.
    browser.expect("ready-for-load", &setup).await;
    let load = {
        let url = db.url.clone();
        tokio::spawn(async move {
            for n in 0..40 {
                pgtest::psql(
                    &url,
                    &format!(
                        "INSERT INTO orders (customer_name, product_name) \
                         SELECT 'load ' || g, 'batch {n}' FROM generate_series(1, 5) g"
                    ),
                )
                .await;
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        })
    };
    browser.send(json!({"go": "load"})).await;
    let panel = browser.expect("saw-load", &setup).await;
    assert!(panel["rate"].as_f64().unwrap() > 0.0, "{panel}");
    // Every /readyz component, each with its state (all ready here).
    let components = panel["components"].as_array().unwrap();
    assert!(
        components.len() >= 3 && components.iter().any(|c| c["name"] == "api_postgres"),
        "{panel}"
    );
    assert!(components.iter().all(|c| c["state"] == "ready"), "{panel}");
    load.await.unwrap();
    browser.send(json!({"go": "load-done"})).await;

    browser.expect("ready-for-live-check", &setup).await;
    db.psql(&format!(
        "UPDATE orders SET status = 'processing' WHERE id = {created_id}"
    ))
    .await;
    browser
        .send(json!({"go": true, "id": created_id, "status": "processing"}))
        .await;
    let done = browser.expect("done", &setup).await;

    // Exactly the database's rows: nothing lost, nothing doubled.
    let in_db: Vec<i64> = db
        .psql("SELECT id FROM orders ORDER BY id DESC")
        .await
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(ids(&done["ids"]), in_db);
    assert_eq!(done["state"], "live");
    // "Live" was shown only once the current connection had its `ready`:
    // at the start, after the restart and after the resync.
    assert_eq!(done["live"]["beforeReady"], json!([]), "{}", done["live"]);
    assert!(
        done["live"]["shown"].as_u64().unwrap() >= 3,
        "{}",
        done["live"]
    );
    assert_eq!(done["pageErrors"], json!([]), "errors thrown in the page");
    // The browser logs failed requests as errors: expected for the 422 and
    // while walcast is down, a bug anywhere else (a CSP violation, a 404).
    let unexpected: Vec<&Value> = done["consoleErrors"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["phase"] != "restart" && e["phase"] != "api-error")
        .collect();
    assert!(unexpected.is_empty(), "console errors: {unexpected:?}");

    let status = tokio::time::timeout(Duration::from_secs(30), browser.child.wait())
        .await
        .expect("dashboard.mjs exits after done")
        .unwrap();
    assert!(status.success(), "dashboard.mjs exited with {status}");
    assert!(
        screenshot.exists(),
        "no screenshot at {}",
        screenshot.display()
    );
    setup.stop(&mut walcast).await;
    let _ = std::fs::remove_file(&setup.log);
    eprintln!(
        "[dashboard_e2e] passed in {:.1} s; screenshot: {}",
        started.elapsed().as_secs_f64(),
        screenshot.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_with_auth_on_asks_for_a_token_and_uses_it_for_writes_and_live() {
    ensure_browser_tooling();
    let db = TestDb::create_empty("dashboard_auth").await;
    let out = db
        .walcast(&["setup", "--sample-data"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    let artifacts = artifacts_dir();
    let unique = stack::unique("dashboard-auth");
    let token = "dashboard-e2e-token-0123456789";
    let mut setup = Setup {
        db: &db,
        port: 0,
        exchange: unique.clone(),
        queue: format!("{unique}.gateway"),
        log: artifacts.join(format!("{unique}.log")),
        env: vec![
            ("WALCAST_AUTH_ENABLED", "true".into()),
            ("WALCAST_AUTH_TOKENS", token.into()),
        ],
    };
    let _broker = setup.broker_cleanup();
    let mut walcast = setup.start().await;
    let mut browser = Browser::spawn(json!({
        "mode": "auth",
        "url": format!("{}/", setup.base()),
        "token": token,
        "screenshot": artifacts.join("dashboard-auth.png"),
    }));
    browser.expect("asked-for-token", &setup).await;
    let created = browser.expect("created-with-token", &setup).await;
    let message = created["unauthorized"].as_str().unwrap();
    assert!(message.contains("token"), "401 message shown: {message:?}");
    let id = created["id"].as_i64().unwrap();
    assert_eq!(
        db.psql(&format!("SELECT customer_name FROM orders WHERE id = {id}"))
            .await,
        "Grace"
    );
    let done = browser.expect("done", &setup).await;
    assert!(ids(&done["ids"]).contains(&id));
    assert_eq!(done["live"]["beforeReady"], json!([]), "{}", done["live"]);
    assert_eq!(done["pageErrors"], json!([]));
    // The refused handshake is not a console error; the 401 is expected.
    let unexpected: Vec<&Value> = done["consoleErrors"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["phase"] != "api-error")
        .collect();
    assert!(unexpected.is_empty(), "console errors: {unexpected:?}");
    let status = tokio::time::timeout(Duration::from_secs(30), browser.child.wait())
        .await
        .expect("dashboard.mjs exits after done")
        .unwrap();
    assert!(status.success(), "dashboard.mjs exited with {status}");
    setup.stop(&mut walcast).await;
    let _ = std::fs::remove_file(&setup.log);
}
