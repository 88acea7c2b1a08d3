//! A private RabbitMQ node for tests that break things (restarts, alarms),
//! so the shared broker on 5672 is never disturbed.
//!
//! [`RabbitNode::start`] launches `rabbitmq-server -detached` under its own
//! node name, AMQP port, distribution port, data and log directories, with
//! an empty plugin list (no management listener to clash on) and its own
//! `rabbitmq.conf` (the machine's one pins the listener to 5672). Dropping
//! the node stops it (`rabbitmqctl stop`) and deletes its directory.
//!
//! Recipe notes (Debian/Ubuntu packaging, RabbitMQ 3.10, tests run as root):
//! `/usr/sbin/rabbitmq-server` and `rabbitmqctl` are wrappers that re-run
//! themselves as user `rabbitmq` through `su` (non-login): the `RABBITMQ_*`
//! variables pass through, and `HOME` becomes `/var/lib/rabbitmq` for both
//! the node and the CLI, so both use `/var/lib/rabbitmq/.erlang.cookie` and
//! agree without any cookie handling. The directories must belong to
//! `rabbitmq`. `rabbitmqctl await_startup` fails at once while the node has
//! not registered with epmd yet, hence the retry loop.
//!
//! It does not manage the shared broker, and it needs no network access.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A RabbitMQ node of the test's own; stopped and removed on drop.
pub struct RabbitNode {
    /// Erlang node name, e.g. `walcast-pub-1234-0@localhost`.
    pub name: String,
    pub port: u16,
    /// The TLS listener's port, when started with one.
    pub tls_port: Option<u16>,
    dist_port: u16,
    dir: PathBuf,
}

/// A TLS listener (`listeners.ssl.default`) for [`RabbitNode::start_with_tls`].
pub struct TlsListener {
    /// PEM files, readable by user rabbitmq.
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// `verify_peer` + `fail_if_no_peer_cert`: clients must present a
    /// certificate signed by `ca_file`.
    pub require_client_certificate: bool,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Settings a test gives its node.
#[derive(Debug, Clone, Default)]
pub struct NodeOptions {
    /// `max_message_size`, in bytes: the broker closes the channel with
    /// 406 PRECONDITION_FAILED on a larger message.
    pub max_message_size: Option<usize>,
}

impl NodeOptions {
    fn conf_lines(&self) -> String {
        let mut lines = String::new();
        if let Some(size) = self.max_message_size {
            lines.push_str(&format!("max_message_size = {size}\n"));
        }
        lines
    }
}

impl RabbitNode {
    /// Starts a fresh node and waits until it accepts AMQP connections.
    /// Panics (with the node's log tail) if it does not start in 90 s.
    pub fn start(tag: &str) -> RabbitNode {
        Self::start_inner(tag, &NodeOptions::default(), None)
    }

    /// [`RabbitNode::start`] with settings of its own in `rabbitmq.conf`.
    pub fn start_with(tag: &str, options: &NodeOptions) -> RabbitNode {
        Self::start_inner(tag, options, None)
    }

    /// [`RabbitNode::start`] with a TLS listener besides the plain one.
    pub fn start_with_tls(tag: &str, tls: &TlsListener) -> RabbitNode {
        Self::start_inner(tag, &NodeOptions::default(), Some(tls))
    }

    fn start_inner(tag: &str, options: &NodeOptions, tls: Option<&TlsListener>) -> RabbitNode {
        let (port, dist_port) = free_port_pair();
        let tls_port = tls.map(|_| free_port_pair().0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("walcast-{tag}-{}-{n}@localhost", std::process::id());
        let dir = std::env::temp_dir().join(format!("walcast-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("mnesia")).unwrap();
        std::fs::create_dir_all(dir.join("log")).unwrap();
        std::fs::write(dir.join("enabled_plugins"), "").unwrap();
        // guest may connect from localhost only by default, which is what we
        // do; the listener must be this node's port, not the shared one's.
        let mut conf = format!(
            "listeners.tcp.default = 127.0.0.1:{port}\n\
             log.console = false\n\
             log.file.level = info\n"
        );
        if let (Some(tls), Some(tls_port)) = (tls, tls_port) {
            conf.push_str(&format!(
                "listeners.ssl.default = 127.0.0.1:{tls_port}\n\
                 ssl_options.cacertfile = {}\n\
                 ssl_options.certfile = {}\n\
                 ssl_options.keyfile = {}\n",
                tls.ca_file.display(),
                tls.cert_file.display(),
                tls.key_file.display()
            ));
            if tls.require_client_certificate {
                conf.push_str(
                    "ssl_options.verify = verify_peer\n\
                     ssl_options.fail_if_no_peer_cert = true\n",
                );
            }
        }
        conf.push_str(&options.conf_lines());
        std::fs::write(dir.join("rabbitmq.conf"), conf).unwrap();
        chown_rabbitmq(&dir);

        let node = RabbitNode {
            name,
            port,
            tls_port,
            dist_port,
            dir: dir.clone(),
        };
        node.launch();
        node
    }

    fn launch(&self) {
        let status = Command::new("rabbitmq-server")
            .arg("-detached")
            .envs(self.env(self.dist_port))
            .status()
            .expect("run rabbitmq-server (is RabbitMQ installed?)");
        assert!(
            status.success(),
            "rabbitmq-server -detached failed: {status}"
        );
        self.wait_started(Duration::from_secs(90));
    }

    /// Crashes the node: SIGKILL to its Erlang VM (no clean shutdown, no
    /// flush of anything the broker had not written), then waits until the
    /// AMQP port is closed.
    pub fn kill(&self) {
        let pid = std::fs::read_to_string(self.dir.join("pid"))
            .expect("the node's pid file")
            .trim()
            .to_string();
        let status = Command::new("kill")
            .args(["-KILL", &pid])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -KILL {pid} failed");
        let deadline = Instant::now() + Duration::from_secs(30);
        while port_open(self.port) {
            assert!(
                Instant::now() < deadline,
                "node {} still listening",
                self.name
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts the node again on the same name, ports and data directory
    /// (after [`RabbitNode::kill`]); durable queues and persistent messages
    /// come back from disk.
    pub fn restart(&self) {
        self.launch();
    }

    fn env(&self, dist_port: u16) -> Vec<(&'static str, String)> {
        let d = |sub: &str| self.dir.join(sub).display().to_string();
        vec![
            ("RABBITMQ_NODENAME", self.name.clone()),
            ("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1".into()),
            ("RABBITMQ_NODE_PORT", self.port.to_string()),
            ("RABBITMQ_DIST_PORT", dist_port.to_string()),
            ("RABBITMQ_MNESIA_BASE", d("mnesia")),
            ("RABBITMQ_LOG_BASE", d("log")),
            ("RABBITMQ_ENABLED_PLUGINS_FILE", d("enabled_plugins")),
            // Replaces /etc/rabbitmq/rabbitmq.conf, which pins port 5672.
            ("RABBITMQ_CONFIG_FILE", d("rabbitmq.conf")),
            ("RABBITMQ_PID_FILE", d("pid")),
        ]
    }

    /// `amqp://guest:guest@127.0.0.1:<port>/%2f`.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Runs `rabbitmqctl -n <node> <args>`; panics if it fails.
    pub fn ctl(&self, args: &[&str]) -> Output {
        let output = self.try_ctl(args);
        assert!(
            output.status.success(),
            "rabbitmqctl {args:?} on {} failed: {}{}",
            self.name,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    pub fn try_ctl(&self, args: &[&str]) -> Output {
        Command::new("rabbitmqctl")
            .arg("-n")
            .arg(&self.name)
            .args(args)
            .output()
            .expect("run rabbitmqctl")
    }

    /// Stops the RabbitMQ application (clients are disconnected, the port
    /// closes); the Erlang node stays up.
    pub fn stop_app(&self) {
        self.ctl(&["stop_app"]);
    }

    /// Starts the application again and waits until it accepts connections.
    pub fn start_app(&self) {
        self.ctl(&["start_app"]);
        self.wait_started(Duration::from_secs(60));
    }

    /// Raises (0.0) or clears (e.g. 0.4) a memory alarm: at 0 the broker
    /// blocks every publishing connection.
    pub fn set_memory_watermark(&self, fraction: f64) {
        self.ctl(&["set_vm_memory_high_watermark", &fraction.to_string()]);
    }

    fn wait_started(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let output = self.try_ctl(&["await_startup", "--timeout", "30"]);
            if output.status.success() && port_open(self.port) {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "rabbitmq node {} did not start: {}\nlog tail:\n{}",
                    self.name,
                    String::from_utf8_lossy(&output.stderr),
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The last lines of the node's log, for panic messages.
    pub fn log_tail(&self) -> String {
        let log = self.dir.join("log").join(format!("{}.log", self.name));
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for RabbitNode {
    fn drop(&mut self) {
        let _ = self.try_ctl(&["stop"]);
        // `stop` waits for the node to halt; its files can go.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Two free ports, `p` and `p + 20000` (AMQP and Erlang distribution),
/// below the kernel's ephemeral range so that nothing grabs them meanwhile.
fn free_port_pair() -> (u16, u16) {
    let seed = std::process::id() as u64 * 7919
        + std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos() as u64;
    for i in 0..2000u64 {
        let port = 21000 + ((seed + i * 104_729) % 10_000) as u16;
        let dist = port + 20000;
        if let (Ok(a), Ok(b)) = (
            TcpListener::bind(("127.0.0.1", port)),
            TcpListener::bind(("127.0.0.1", dist)),
        ) {
            drop((a, b));
            return (port, dist);
        }
    }
    panic!("no free port pair for a rabbitmq node");
}

fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500))
        .is_ok()
}

fn chown_rabbitmq(dir: &Path) {
    let status = Command::new("chown")
        .args(["-R", "rabbitmq:rabbitmq"])
        .arg(dir)
        .status()
        .expect("run chown");
    assert!(status.success(), "chown rabbitmq {} failed", dir.display());
}
