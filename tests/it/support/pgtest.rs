//! Test support for the replication tests: a database of the test's own in
//! the logical cluster, psql, and a `walcast` child process whose stdout is
//! read line by line.

use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// The superuser URL of the wal_level=logical cluster.
pub fn pg_url() -> String {
    std::env::var("WALCAST_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5433/postgres".into())
}

/// A cluster with wal_level=replica (scripts/ensure-services.sh: walcast_replica).
pub fn replica_url() -> String {
    std::env::var("WALCAST_TEST_PG_REPLICA_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5435/postgres".into())
}

/// walcast_fault (scripts/ensure-services.sh), the wal_level=logical
/// cluster the fault tests restart; never the shared one.
pub fn fault_cluster_url() -> String {
    std::env::var("WALCAST_TEST_PG_FAULT_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5434/postgres".into())
}

/// Held by every test that uses the fault cluster (restarting it, or
/// needing it up): one at a time in the whole test binary. A test that
/// also holds [`crate::support::heavy`] takes that first.
pub async fn lock_fault_cluster() -> tokio::sync::MutexGuard<'static, ()> {
    static FAULT_CLUSTER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    FAULT_CLUSTER.lock().await
}

/// Restarts the fault cluster (fast shutdown); hold [`lock_fault_cluster`].
pub async fn restart_fault_cluster() {
    let cluster =
        std::env::var("WALCAST_PG_FAULT_CLUSTER").unwrap_or_else(|_| "walcast_fault".into());
    let version = std::env::var("WALCAST_PG_VERSION").unwrap_or_else(|_| "15".into());
    let status = Command::new("pg_ctlcluster")
        .args([
            "--skip-systemctl-redirect",
            &version,
            &cluster,
            "restart",
            "-m",
            "fast",
        ])
        .status()
        .await
        .expect("run pg_ctlcluster");
    assert!(status.success(), "restarting {version}/{cluster} failed");
}

/// `url` with its database replaced.
pub fn with_db(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let path_start = base[scheme_end..]
        .find('/')
        .map(|i| i + scheme_end)
        .unwrap_or(base.len());
    let mut out = format!("{}/{}", &base[..path_start], db);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A database, slot and publication of this test's own, dropped at the end.
pub struct TestDb {
    /// The superuser URL of the cluster the database lives in.
    pub admin_url: String,
    pub name: String,
    pub url: String,
    pub slot: String,
    pub publication: String,
}

impl TestDb {
    /// Creates the database and applies walcast's schema, publication and
    /// slot with `walcast setup`.
    pub async fn create(prefix: &str) -> TestDb {
        Self::create_on(&pg_url(), prefix).await
    }

    /// Like [`TestDb::create`], in the cluster of `admin_url`.
    pub async fn create_on(admin_url: &str, prefix: &str) -> TestDb {
        let db = Self::create_empty_on(admin_url, prefix).await;
        let out = db
            .walcast(&["setup"])
            .output()
            .await
            .expect("run walcast setup");
        assert!(
            out.status.success(),
            "walcast setup failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        db
    }

    /// Creates the database only.
    pub async fn create_empty(prefix: &str) -> TestDb {
        Self::create_empty_on(&pg_url(), prefix).await
    }

    /// Creates the database only, in the cluster of `admin_url`.
    pub async fn create_empty_on(admin_url: &str, prefix: &str) -> TestDb {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("walcast_{prefix}_{}_{n}", std::process::id());
        psql(
            admin_url,
            &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        )
        .await;
        psql(admin_url, &format!("CREATE DATABASE {name}")).await;
        TestDb {
            admin_url: admin_url.to_owned(),
            url: with_db(admin_url, &name),
            slot: name.clone(),
            publication: format!("{name}_pub"),
            name,
        }
    }

    /// `walcast` with this database's URL, slot and publication.
    pub fn walcast(&self, args: &[&str]) -> Command {
        let mut cmd = walcast_command();
        cmd.args(args)
            .arg("--database-url")
            .arg(&self.url)
            .arg("--slot")
            .arg(&self.slot)
            .arg("--publication")
            .arg(&self.publication);
        cmd
    }

    pub async fn psql(&self, sql: &str) -> String {
        psql(&self.url, sql).await
    }

    /// Starts `walcast tail` with extra arguments.
    pub fn tail(&self, extra: &[&str]) -> Tail {
        let mut args = vec!["tail"];
        args.extend_from_slice(extra);
        Tail::spawn(self.walcast(&args))
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .expect("connect to the test database");
        tokio::spawn(connection);
        client
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Best effort and synchronous: Drop cannot await. One `-c` per
        // statement: DROP DATABASE cannot run inside the implicit
        // transaction of a multi-statement string.
        let statements = [
            format!(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
                 WHERE database = '{}' AND active_pid IS NOT NULL",
                self.name
            ),
            "SELECT pg_sleep(0.2)".to_owned(),
            format!(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                 WHERE database = '{}'",
                self.name
            ),
            format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        ];
        let mut cmd = std::process::Command::new("psql");
        cmd.arg(&self.admin_url).args(["-q", "-X"]);
        for statement in &statements {
            cmd.args(["-c", statement]);
        }
        let _ = cmd.stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}

/// The walcast binary, isolated from the developer's environment: no
/// WALCAST_* variables, no DATABASE_URL, and a working directory without a
/// config.toml.
pub fn walcast_command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_walcast"));
    for (key, _) in std::env::vars() {
        if key.starts_with("WALCAST_") || key == "DATABASE_URL" || key == "RABBITMQ_URL" {
            cmd.env_remove(key);
        }
    }
    cmd.env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .current_dir(std::env::temp_dir())
        .kill_on_drop(true);
    cmd
}

/// Runs SQL with psql, failing the test on error; returns unaligned output.
pub async fn psql(url: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .arg(url)
        .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .await
        .expect("run psql");
    assert!(
        out.status.success(),
        "psql failed for {sql:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A running `walcast tail`; stdout lines arrive on a channel.
pub struct Tail {
    pub child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
    /// Ends when tail's stderr closes.
    stderr_reader: tokio::task::JoinHandle<()>,
}

impl Tail {
    pub fn spawn(mut cmd: Command) -> Tail {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn walcast tail");
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = log.clone();
        let stderr_reader = tokio::spawn(async move {
            let mut reader = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        Tail {
            child,
            lines,
            stderr: log,
            stderr_reader,
        }
    }

    /// The next event, parsed; panics after `timeout`.
    pub async fn next_event(&mut self, timeout: Duration) -> serde_json::Value {
        match tokio::time::timeout(timeout, self.lines.recv()).await {
            Ok(Some(line)) => serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("tail printed a non-JSON line {line:?}: {e}")),
            Ok(None) => panic!("tail exited; stderr:\n{}", self.stderr()),
            Err(_) => panic!("no event within {timeout:?}; stderr:\n{}", self.stderr()),
        }
    }

    /// The next raw line, or None if tail's stdout closed or nothing came in `timeout`.
    pub async fn try_next_line(&mut self, timeout: Duration) -> Option<String> {
        tokio::time::timeout(timeout, self.lines.recv())
            .await
            .ok()
            .flatten()
    }

    /// `n` events, in order.
    pub async fn events(&mut self, n: usize, timeout: Duration) -> Vec<serde_json::Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            out.push(self.next_event(left).await);
        }
        out
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// SIGINT, as Ctrl-C would.
    pub fn interrupt(&self) {
        let pid = self.child.id().expect("tail is running") as i32;
        // kill(1) rather than a libc dependency for one signal.
        let _ = std::process::Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status();
    }

    /// Waits for exit; returns (success, stderr).
    pub async fn wait(&mut self, timeout: Duration) -> (bool, String) {
        let status = tokio::time::timeout(timeout, self.child.wait())
            .await
            .expect("tail did not exit in time")
            .expect("wait for tail");
        // The stderr reader has the last lines once stderr closes.
        let _ = tokio::time::timeout(timeout, &mut self.stderr_reader).await;
        (status.success(), self.stderr())
    }
}
