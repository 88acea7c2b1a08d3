//! What an idle Socket.IO socket costs a real `walcast run` in RSS, with
//! `runtime.mmap_threshold_bytes` at 8 KiB and at 0 (the default: glibc's
//! adaptive threshold): the 8 KiB read buffer hyper holds for each HTTP
//! connection is freed once the connection becomes a WebSocket, and with
//! the adaptive threshold that leaves a hole on the heap glibc never
//! returns. Real sockets (WebSocket + Socket.IO handshake) over real TCP;
//! the gateway's RabbitMQ is the shared one.

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::support;
use crate::support::pgtest::TestDb;
use crate::support::stack::{self, unique, RunSpec, Walcast};

/// Enough sockets that a few KiB each stand well above the noise of a
/// process's RSS.
const SOCKETS: usize = 1000;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A Socket.IO client that has connected to the default namespace and
/// then stays idle.
async fn idle_socket(addr: std::net::SocketAddr) -> Ws {
    let url = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket");
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let open = ws.next().await.unwrap().unwrap();
    assert!(open.to_text().unwrap().starts_with('0'), "{open:?}");
    ws.send(Message::text("40")).await.unwrap();
    loop {
        let message = ws.next().await.unwrap().unwrap();
        let text = message.to_text().unwrap();
        if text.starts_with("40") {
            return ws;
        }
        assert!(
            text.starts_with('2'),
            "expected the connect ack, got {text}"
        );
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Sockets can need more descriptors than a default soft limit of 1024
/// leaves to a test binary that runs many tests at once; the child
/// inherits the raised limit.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// RSS per idle socket (KiB) of a gateway started with `threshold` as
/// `WALCAST_RUNTIME_MMAP_THRESHOLD_BYTES`.
async fn kib_per_idle_socket(db: &TestDb, threshold: &str) -> f64 {
    let spec = RunSpec {
        amqp_url: stack::shared_amqp_url(),
        exchange: unique("memory"),
        queue: unique("memory"),
        roles: "gateway",
        replay_dir: None,
    };
    let walcast = Walcast::start_with_env(
        db,
        &spec,
        &[("WALCAST_RUNTIME_MMAP_THRESHOLD_BYTES", threshold)],
    )
    .await;
    walcast.wait_ready().await;
    let pid = walcast.child.id().unwrap();
    // One socket first, so that what every process allocates once (the
    // engine, the first task and buffer pools) is not counted per socket.
    let warm = idle_socket(walcast.address).await;
    let before = rss_kib(pid);
    let mut sockets = Vec::with_capacity(SOCKETS);
    for _ in 0..SOCKETS {
        sockets.push(idle_socket(walcast.address).await);
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let after = rss_kib(pid);
    drop((warm, sockets));
    let log = walcast.stop().await;
    assert!(!log.contains("panicked"), "{log}");
    (after - before) as f64 / SOCKETS as f64
}

/// An 8 KiB threshold saves the freed read buffer's hole: measured at 4.6
/// KiB per idle socket with 10,000 sockets (BENCHMARKS.md); at least 2 KiB
/// here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_8_kib_mmap_threshold_makes_an_idle_socket_cheaper() {
    let _heavy = support::heavy().await;
    raise_open_files_limit();
    let db = TestDb::create("fanout_memory").await;
    let adaptive = kib_per_idle_socket(&db, "0").await;
    let mapped = kib_per_idle_socket(&db, "8192").await;
    eprintln!("RSS per idle socket: {mapped:.1} KiB (8 KiB threshold), {adaptive:.1} KiB (glibc's adaptive one)");
    assert!(
        mapped + 2.0 <= adaptive,
        "8 KiB threshold: {mapped:.1} KiB per idle socket, adaptive: {adaptive:.1} KiB"
    );
}
