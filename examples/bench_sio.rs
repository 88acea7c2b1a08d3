//! Benchmark helper (not part of walcast): a Socket.IO load client that
//! holds many sockets in one process cheaply, for `scripts/bench/fanout.sh`
//! and `scripts/bench/latency.sh`.
//!
//!   cargo run --release --example bench_sio -- '<json options>'
//!
//! It is a drop-in for `scripts/bench/sio-bench.mjs`: the same options, the
//! same summary on stdout, plus the CPU time the client and walcast used
//! while the load ran. Every socket is a real Socket.IO v5 client over an
//! Engine.IO v4 WebSocket (`/socket.io/?EIO=4&transport=websocket`): it
//! waits for the open packet (`0{…}`), connects to namespace `/` (`40`, with
//! the group's `auth` object if any), answers every ping (`2`) with a pong
//! (`3`), sends `subscribe` with an ack id and checks the ack (`43<id>[…]`),
//! and reads `42["change",{…}]` events; a server disconnect (`41`), an
//! Engine.IO close (`1`) or a closed connection counts as a disconnect.
//! Sockets are plain tokio tasks over tokio-tungstenite with a 4 KiB read
//! buffer, on `threads` worker threads (default 1), so 10,000 of them cost
//! tens of MiB and one core goes a long way.
//!
//! options (JSON):
//!   url          walcast's http://host:port
//!   groups       [{name, count, subscribe?: "key", sampleEvery?: n, auth?: {…}}]
//!                "key": socket i of the group subscribes to
//!                {table: "public.orders", key: {id: i + 1}}; otherwise it
//!                receives everything. Only every sampleEvery-th socket
//!                (default 1: all) records latencies.
//!   concurrency  sockets connecting at once (default 200)
//!   load         [program, ...args]: run once every socket is ready; its
//!                last stdout line is JSON with `committed` (bench_load)
//!   drainMs      after the load ends, wait until every expected change
//!                arrived or this long (default 5000)
//!   holdMs       with no load: keep the sockets this long, then report
//!   serverPid    walcast's pid: its RSS before the sockets connect, once
//!                they are connected (after settleMs, default 2000), its peak
//!                (VmHWM) at the end, and its CPU time during the load
//!   threads      client worker threads (default 1)
//!
//! Latency of a change = receipt time − its `commit_time` (same machine
//! clock). The summary has, per group: sockets connected, failed, changes
//! received, expected, latency p50/p99/max in ms, disconnects, the span of
//! receipts (first to last, ms); and `cpu`: user+system seconds of this
//! client and of walcast from the start of the load to the end of the drain,
//! with the wall time in between.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, Semaphore};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Options {
    url: String,
    #[serde(default)]
    groups: Vec<GroupOptions>,
    #[serde(default = "default_concurrency")]
    concurrency: usize,
    load: Option<Vec<String>>,
    #[serde(default = "default_drain_ms")]
    drain_ms: u64,
    #[serde(default = "default_hold_ms")]
    hold_ms: u64,
    server_pid: Option<u32>,
    #[serde(default = "default_settle_ms")]
    settle_ms: u64,
    #[serde(default = "default_threads")]
    threads: usize,
}

fn default_concurrency() -> usize {
    200
}
fn default_drain_ms() -> u64 {
    5000
}
fn default_hold_ms() -> u64 {
    1000
}
fn default_settle_ms() -> u64 {
    2000
}
fn default_threads() -> usize {
    1
}

#[derive(Deserialize, Clone)]
#[serde(rename_all = "camelCase")]
struct GroupOptions {
    name: String,
    count: usize,
    subscribe: Option<String>,
    #[serde(default = "one")]
    sample_every: usize,
    auth: Option<Value>,
}

fn one() -> usize {
    1
}

/// Counters of one group, shared by its sockets.
struct Group {
    options: GroupOptions,
    connected: AtomicU64,
    failed: AtomicU64,
    disconnects: AtomicU64,
    received: AtomicU64,
    /// Receipt times (ns since the epoch) of the first and last counted change.
    first_ns: AtomicU64,
    last_ns: AtomicU64,
    latencies_ms: Mutex<Vec<f64>>,
}

struct Shared {
    host: String,
    path: String,
    groups: Vec<Group>,
    /// Changes are counted only while the load runs and drains.
    counting: AtomicBool,
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos() as u64
}

fn main() -> Result<()> {
    let arg = std::env::args()
        .nth(1)
        .context("usage: bench_sio '<json options>'")?;
    let options: Options = serde_json::from_str(&arg).context("options are not valid JSON")?;
    raise_nofile_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(options.threads.max(1))
        .enable_all()
        .build()?;
    let summary = runtime.block_on(run(options))?;
    println!("{summary}");
    // The sockets are not closed one by one: exiting closes them all.
    std::process::exit(0);
}

/// 10,000 sockets need more descriptors than the usual soft limit of 1,024.
fn raise_nofile_limit() {
    // SAFETY: plain libc calls on a stack value.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

async fn run(options: Options) -> Result<Value> {
    let base = options
        .url
        .strip_prefix("http://")
        .context("url must be http://host:port")?
        .trim_end_matches('/');
    let groups = if options.groups.is_empty() {
        vec![GroupOptions {
            name: "all".into(),
            count: 1,
            subscribe: None,
            sample_every: 1,
            auth: None,
        }]
    } else {
        options.groups.clone()
    };
    let shared = Arc::new(Shared {
        host: base.to_owned(),
        path: "/socket.io/?EIO=4&transport=websocket".to_owned(),
        groups: groups
            .into_iter()
            .map(|options| Group {
                options,
                connected: AtomicU64::new(0),
                failed: AtomicU64::new(0),
                disconnects: AtomicU64::new(0),
                received: AtomicU64::new(0),
                first_ns: AtomicU64::new(u64::MAX),
                last_ns: AtomicU64::new(0),
                latencies_ms: Mutex::new(Vec::new()),
            })
            .collect(),
        counting: AtomicBool::new(false),
    });

    let server_before = options.server_pid.and_then(|pid| status_kib(pid, "VmRSS"));
    let started = Instant::now();
    let permits = Arc::new(Semaphore::new(options.concurrency.max(1)));
    let mut ready = Vec::new();
    for (g, group) in shared.groups.iter().enumerate() {
        for index in 0..group.options.count {
            let permit = permits.clone().acquire_owned().await?;
            let (tx, rx) = oneshot::channel();
            ready.push(rx);
            let shared = shared.clone();
            tokio::spawn(async move {
                let mut ready = Some((tx, permit));
                let connected = run_socket(&shared, g, index, &mut ready).await;
                let group = &shared.groups[g];
                match connected {
                    Ok(()) => {}
                    Err(_) if ready.is_some() => {
                        group.failed.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        group.disconnects.fetch_add(1, Ordering::Relaxed);
                    }
                }
                // A socket that failed before it was ready is done too.
                drop(ready);
            });
        }
    }
    for rx in ready {
        rx.await.ok();
    }
    let connect_ms = started.elapsed().as_millis() as u64;
    let counts: Vec<String> = shared
        .groups
        .iter()
        .map(|g| {
            format!(
                "{}: {}/{}",
                g.options.name,
                g.connected.load(Ordering::Relaxed),
                g.options.count
            )
        })
        .collect();
    eprintln!(
        "[bench_sio] connected {} in {connect_ms} ms",
        counts.join(", ")
    );
    let client_rss = status_kib(std::process::id(), "VmRSS").unwrap_or(0);
    let mut server_connected = None;
    if let Some(pid) = options.server_pid {
        tokio::time::sleep(Duration::from_millis(options.settle_ms)).await;
        server_connected = status_kib(pid, "VmRSS");
    }

    let cpu_start = (
        cpu_seconds(std::process::id()),
        options.server_pid.and_then(cpu_seconds),
        Instant::now(),
    );
    shared.counting.store(true, Ordering::SeqCst);
    let mut load = Value::Null;
    let mut expected = vec![None; shared.groups.len()];
    if let Some(argv) = &options.load {
        load = run_load(argv).await?;
        let committed = load["committed"].as_u64().unwrap_or(0);
        for (g, group) in shared.groups.iter().enumerate() {
            expected[g] = Some(if group.options.subscribe.as_deref() == Some("key") {
                committed
            } else {
                committed * group.connected.load(Ordering::Relaxed)
            });
        }
        let deadline = Instant::now() + Duration::from_millis(options.drain_ms);
        while Instant::now() < deadline
            && shared
                .groups
                .iter()
                .zip(&expected)
                .any(|(g, e)| g.received.load(Ordering::Relaxed) < e.unwrap_or(0))
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    } else {
        tokio::time::sleep(Duration::from_millis(options.hold_ms)).await;
    }
    shared.counting.store(false, Ordering::SeqCst);
    let wall = cpu_start.2.elapsed().as_secs_f64();
    let client_cpu = cpu_seconds(std::process::id()).unwrap_or(0.0) - cpu_start.0.unwrap_or(0.0);
    let server_cpu = match (options.server_pid.and_then(cpu_seconds), cpu_start.1) {
        (Some(end), Some(start)) => Some(end - start),
        _ => None,
    };

    let groups: Vec<Value> = shared
        .groups
        .iter()
        .zip(&expected)
        .map(|(g, expected)| {
            let first = g.first_ns.load(Ordering::Relaxed);
            let last = g.last_ns.load(Ordering::Relaxed);
            let span_ms = if first == u64::MAX {
                0.0
            } else {
                (last - first) as f64 / 1e6
            };
            let mut latencies = std::mem::take(&mut *g.latencies_ms.lock().unwrap());
            latencies.sort_by(f64::total_cmp);
            let n = latencies.len();
            let q = |p: f64| (n > 0).then(|| latencies[((p * n as f64) as usize).min(n - 1)]);
            json!({
                "name": g.options.name,
                "sockets": g.options.count,
                "connected": g.connected.load(Ordering::Relaxed),
                "failed": g.failed.load(Ordering::Relaxed),
                "disconnects": g.disconnects.load(Ordering::Relaxed),
                "received": g.received.load(Ordering::Relaxed),
                "expected": expected,
                "spanMs": span_ms,
                "latencyMs": {"samples": n, "p50": q(0.5), "p99": q(0.99), "max": latencies.last()},
            })
        })
        .collect();
    Ok(json!({
        "client": "bench_sio",
        "connectMs": connect_ms,
        "clientRssMiB": (client_rss as f64 / 1024.0).round(),
        "serverKiB": {
            "before": server_before,
            "connected": server_connected,
            "peak": options.server_pid.and_then(|pid| status_kib(pid, "VmHWM")),
        },
        "cpu": {"wallSec": wall, "clientSec": client_cpu, "serverSec": server_cpu, "clientThreads": options.threads.max(1)},
        "load": load,
        "groups": groups,
    }))
}

type Ready = Option<(oneshot::Sender<()>, tokio::sync::OwnedSemaphorePermit)>;

/// One socket from connect to close. Takes `ready` once the socket is
/// connected (and subscribed); an error with `ready` still set is a failed
/// connection, without it a disconnect.
async fn run_socket(shared: &Shared, g: usize, index: usize, ready: &mut Ready) -> Result<()> {
    let group = &shared.groups[g];
    let sample = index % group.options.sample_every.max(1) == 0;
    let subscribe = group.options.subscribe.as_deref() == Some("key");
    let stream = TcpStream::connect(&shared.host).await?;
    stream.set_nodelay(true)?;
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let url = format!("ws://{}{}", shared.host, shared.path);
    let (mut ws, _) = tokio::time::timeout(
        Duration::from_secs(30),
        tokio_tungstenite::client_async_with_config(url, stream, Some(config)),
    )
    .await
    .context("websocket handshake timed out")??;

    // 0 = open, 40 = connected to "/", 430 = our subscribe ack.
    let mut opened = false;
    let mut connected = false;
    while let Some(message) = ws.next().await {
        let text = match message? {
            Message::Text(text) => text,
            Message::Close(_) => break,
            _ => continue,
        };
        let text = text.as_str();
        match text.as_bytes().first() {
            Some(b'0') if !opened => {
                opened = true;
                let connect = match &group.options.auth {
                    Some(auth) => format!("40{auth}"),
                    None => "40".to_owned(),
                };
                ws.send(Message::text(connect)).await?;
            }
            Some(b'2') => ws.send(Message::text("3")).await?,
            Some(b'1') => break,
            Some(b'4') => match text.as_bytes().get(1) {
                Some(b'2') if connected => on_event(shared, group, sample, &text[2..]),
                Some(b'0') if !connected => {
                    connected = true;
                    group.connected.fetch_add(1, Ordering::Relaxed);
                    if subscribe {
                        let payload = json!(["subscribe", {"table": "public.orders", "key": {"id": index + 1}}]);
                        ws.send(Message::text(format!("420{payload}"))).await?;
                    } else {
                        ready.take();
                    }
                }
                Some(b'3') if text[2..].starts_with("0[") => {
                    let ack: Value = serde_json::from_str(&text[3..])?;
                    if ack[0]["ok"] != json!(true) {
                        bail!("subscribe refused: {text}");
                    }
                    ready.take();
                }
                Some(b'4') => bail!("connect_error: {text}"),
                Some(b'1') => break,
                _ => {}
            },
            _ => {}
        }
    }
    if connected && ready.is_none() {
        group.disconnects.fetch_add(1, Ordering::Relaxed);
        Ok(())
    } else {
        bail!("closed before it was ready")
    }
}

/// `["change",{…}]` (the text after `42`).
fn on_event(shared: &Shared, group: &Group, sample: bool, packet: &str) {
    if !packet.starts_with("[\"change\",") || !shared.counting.load(Ordering::Relaxed) {
        return;
    }
    let t = now_ns();
    group.received.fetch_add(1, Ordering::Relaxed);
    group.first_ns.fetch_min(t, Ordering::Relaxed);
    group.last_ns.fetch_max(t, Ordering::Relaxed);
    if sample {
        if let Some(commit) = commit_time_ns(packet) {
            let latency = (t as f64 - commit as f64) / 1e6;
            group.latencies_ms.lock().unwrap().push(latency);
        }
    }
}

/// `"commit_time":"2026-11-22T05:04:10.580065Z"` → ns since the epoch.
fn commit_time_ns(packet: &str) -> Option<u64> {
    const FIELD: &str = "\"commit_time\":\"";
    let start = packet.find(FIELD)? + FIELD.len();
    let end = start + packet[start..].find('"')?;
    let time = chrono::DateTime::parse_from_rfc3339(&packet[start..end]).ok()?;
    u64::try_from(time.timestamp_nanos_opt()?).ok()
}

async fn run_load(argv: &[String]) -> Result<Value> {
    let (program, args) = argv.split_first().context("load is empty")?;
    let output = tokio::process::Command::new(program)
        .args(args)
        .stderr(std::process::Stdio::inherit())
        .output()
        .await
        .with_context(|| format!("cannot run {program}"))?;
    if !output.status.success() {
        bail!("load exited with {}", output.status);
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout.trim().lines().last().unwrap_or("null");
    serde_json::from_str(last).context("load's last line is not JSON")
}

/// A `Vm…:` field of /proc/PID/status, in KiB.
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let fields: HashMap<&str, &str> = status.lines().filter_map(|l| l.split_once(':')).collect();
    fields.get(field)?.split_whitespace().next()?.parse().ok()
}

/// User + system CPU seconds of a process so far.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((utime + stime) / ticks)
}
