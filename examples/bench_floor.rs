//! The floor under a socket delivery on this machine: the CPU one
//! pre-framed WebSocket message costs to reach one of many sockets when
//! nothing else stands in its way.
//!
//! - `--mode tasks`: what engineioxide's architecture cannot go under. Each
//!   socket has a bounded channel and a writer task of its own; one
//!   broadcaster hands the same `Bytes` (no copy) to every socket's channel,
//!   and the writer writes whatever is queued in one system call.
//! - `--mode direct`: the kernel's share alone. One task writes the frame to
//!   every socket with `try_write`; no channel, no task per socket.
//!
//! walcast's own figure (`scripts/bench/fanout.sh`) adds the hub,
//! socketioxide and engineioxide on top of `tasks`. The sockets are read
//! by a child process (this binary again, `--client PORT`), so the CPU
//! figure (getrusage, user + system, from the first event until the client
//! has every byte) is the server's alone. On loopback it includes the
//! receiving side's TCP work, which the kernel does inside the sender's
//! system call. The client also reads, from one socket in 100, the time
//! from an event's send to its frame's last byte. Prints one JSON line.
//!
//!   cargo run --release --example bench_floor -- --mode tasks --sockets 10000 --rate 20 --seconds 10
//!
//! - `--peer sio`: the same `tasks` floor for walcast's own benchmark
//!   client (`examples/bench_sio.rs`), so that latency is compared with the
//!   same client process on the machine. The server answers the WebSocket
//!   and Engine.IO/Socket.IO handshake (open packet, namespace `/`), then
//!   only writes pre-framed `42["change",{"commit_time":…}]` messages. It
//!   prints `{"port":…,"trigger":…}` and serves until killed; bench_sio's
//!   `load` is `bench_floor --trigger PORT`, which starts one broadcast of
//!   `--rate` × `--seconds` events to every socket connected by then and
//!   prints `{"committed":…,"rate":…,"full":…,"sockets":…}` when it has
//!   been sent. bench_sio reports the server's CPU (`serverPid`), latency
//!   and deliveries as it does for walcast.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Mode {
    /// A bounded channel and a writer task per socket.
    Tasks,
    /// One task writes every socket.
    Direct,
}

/// Who reads the sockets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Peer {
    /// A plain TCP reader in a child process of this binary.
    Own,
    /// walcast's benchmark client, `bench_sio`, started by the caller.
    Sio,
}

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, value_enum, default_value = "tasks")]
    mode: Mode,
    #[arg(long, default_value_t = 10_000)]
    sockets: usize,
    /// Events per second, each to every socket.
    #[arg(long, default_value_t = 20)]
    rate: u32,
    #[arg(long, default_value_t = 10)]
    seconds: u32,
    /// Bytes of the WebSocket payload (walcast's `change` events on the
    /// bench's `orders` updates are about this size).
    #[arg(long, default_value_t = 400, value_parser = clap::value_parser!(u16).range(64..))]
    payload_bytes: u16,
    /// The server's runtime worker threads (default: one per CPU, as
    /// walcast's).
    #[arg(long)]
    workers: Option<usize>,
    /// A socket's channel capacity in `tasks` mode (engineioxide's default
    /// `max_buffer_size` is 128).
    #[arg(long, default_value_t = 128)]
    queue: usize,
    /// Who reads the sockets (`sio`: only with `--mode tasks`).
    #[arg(long, value_enum, default_value = "own")]
    peer: Peer,
    /// Internal: read `--sockets` sockets from this port (the child).
    #[arg(long, hide = true)]
    client: Option<u16>,
    /// Start a broadcast of a `--peer sio` server listening for triggers on
    /// this port, and print its summary (bench_sio's `load`).
    #[arg(long)]
    trigger: Option<u16>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    raise_fd_limit();
    if let Some(port) = args.client.or(args.trigger) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        return match args.trigger {
            Some(_) => runtime.block_on(trigger(port)),
            None => runtime.block_on(client(port, &args)),
        };
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(workers) = args.workers {
        builder.worker_threads(workers);
    }
    let runtime = builder.enable_all().build()?;
    match (args.peer, args.mode) {
        (Peer::Own, _) => runtime.block_on(server(args)),
        (Peer::Sio, Mode::Tasks) => runtime.block_on(sio_server(args)),
        (Peer::Sio, Mode::Direct) => bail!("--peer sio takes --mode tasks"),
    }
}

/// A server-to-client WebSocket text frame (unmasked) of `payload` bytes
/// (at least 64), a Socket.IO `change` event's shape, carrying the time it
/// was sent (microseconds since the epoch) for the client's latency.
fn frame(payload: usize, sent: SystemTime) -> Bytes {
    let micros = sent
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros();
    padded_frame(
        payload,
        &format!("42[\"change\",{{\"t\":{micros:016},\"x\":\""),
    )
}

/// The same frame for bench_sio, which reads a change's `commit_time`.
fn sio_frame(payload: usize, sent: SystemTime) -> Bytes {
    let time = chrono::DateTime::<chrono::Utc>::from(sent)
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    padded_frame(
        payload,
        &format!("42[\"change\",{{\"commit_time\":\"{time}\",\"x\":\""),
    )
}

/// A text frame of `payload` bytes: `head`, `x`s, and `"}]`.
fn padded_frame(payload: usize, head: &str) -> Bytes {
    let mut out = Vec::with_capacity(payload + 4);
    out.push(0x81);
    if payload <= 125 {
        out.push(payload as u8);
    } else {
        out.push(126);
        out.extend_from_slice(&(payload as u16).to_be_bytes());
    }
    out.extend_from_slice(head.as_bytes());
    out.resize(out.len() + payload - head.len() - 3, b'x');
    out.extend_from_slice(b"\"}]");
    Bytes::from(out)
}

/// Where a frame's send time is: its 16 digits follow `42["change",{"t":`.
fn stamp_offset(payload: usize) -> usize {
    header_len(payload) + "42[\"change\",{\"t\":".len()
}

/// Bytes of a frame's WebSocket header: 2, or 4 with a 16-bit length.
fn header_len(payload: usize) -> usize {
    if payload <= 125 {
        2
    } else {
        4
    }
}

/// Microseconds since the epoch.
fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as u64
}

async fn server(args: Args) -> Result<()> {
    let payload = usize::from(args.payload_bytes);
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let child = Command::new(std::env::current_exe()?)
        .args(["--client", &port.to_string()])
        .args(["--sockets", &args.sockets.to_string()])
        .args(["--rate", &args.rate.to_string()])
        .args(["--seconds", &args.seconds.to_string()])
        .args(["--payload-bytes", &args.payload_bytes.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the client process")?;
    let mut streams = Vec::with_capacity(args.sockets);
    while streams.len() < args.sockets {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        streams.push(stream);
    }
    let events = args.rate * args.seconds;
    let period = Duration::from_secs_f64(1.0 / f64::from(args.rate));
    let mut full = 0usize;
    let before = rusage();
    let started = Instant::now();
    match args.mode {
        Mode::Tasks => {
            let closed = Arc::new(AtomicUsize::new(0));
            let senders: Vec<_> = streams
                .into_iter()
                .map(|mut stream| {
                    let (tx, rx) = mpsc::channel(args.queue);
                    let closed = closed.clone();
                    tokio::spawn(async move { writer(&mut stream, rx, closed).await });
                    tx
                })
                .collect();
            full = broadcast(&senders, events, period, |sent| frame(payload, sent)).await;
            if closed.load(Ordering::Relaxed) > 0 {
                bail!("a writer failed");
            }
        }
        Mode::Direct => {
            let mut tick = tokio::time::interval(period);
            for _ in 0..events {
                tick.tick().await;
                let frame = frame(payload, SystemTime::now());
                for stream in &streams {
                    match stream.try_write(&frame) {
                        Ok(n) if n == frame.len() => {}
                        _ => full += 1,
                    }
                }
            }
        }
    }
    let broadcast = started.elapsed();
    let output = tokio::task::spawn_blocking(move || child.wait_with_output()).await??;
    let after = rusage();
    let wall = started.elapsed();
    let client: serde_json::Value = serde_json::from_slice(&output.stdout).with_context(|| {
        format!(
            "client printed {:?}",
            String::from_utf8_lossy(&output.stdout)
        )
    })?;
    let deliveries = args.sockets * events as usize - full;
    let frame_len = header_len(payload) + payload;
    let user = after.0 - before.0;
    let system = after.1 - before.1;
    let per = |d: Duration| d.as_secs_f64() * 1e6 / deliveries as f64;
    println!(
        "{}",
        json!({
            "mode": format!("{:?}", args.mode).to_lowercase(),
            "sockets": args.sockets,
            "events": events,
            "frameBytes": frame_len,
            "deliveries": deliveries,
            "full": full,
            "clientBytes": client["bytes"],
            "expectedBytes": frame_len * events as usize * args.sockets,
            "latencyMs": client["latencyMs"],
            "deliveriesPerSec": client["spanSec"].as_f64().filter(|s| *s > 0.0)
                .map(|s| (deliveries as f64 / s).round()),
            "broadcastSec": (broadcast.as_secs_f64() * 100.0).round() / 100.0,
            "wallSec": (wall.as_secs_f64() * 100.0).round() / 100.0,
            "serverCpuSec": ((user + system).as_secs_f64() * 1000.0).round() / 1000.0,
            "usPerDelivery": (per(user + system) * 100.0).round() / 100.0,
            "userUs": (per(user) * 100.0).round() / 100.0,
            "systemUs": (per(system) * 100.0).round() / 100.0,
        })
    );
    Ok(())
}

/// Hands `events` frames, one every `period`, to every socket's channel;
/// returns how many a full channel refused.
async fn broadcast(
    senders: &[mpsc::Sender<Bytes>],
    events: u32,
    period: Duration,
    frame: impl Fn(SystemTime) -> Bytes,
) -> usize {
    let mut full = 0;
    let mut tick = tokio::time::interval(period);
    for _ in 0..events {
        tick.tick().await;
        let frame = frame(SystemTime::now());
        for tx in senders {
            if tx.try_send(frame.clone()).is_err() {
                full += 1;
            }
        }
    }
    full
}

/// A socket's writer: waits for a frame, then writes it and whatever else
/// is queued by then in one system call.
async fn writer<S: AsyncWrite + Unpin>(
    stream: &mut S,
    mut rx: mpsc::Receiver<Bytes>,
    closed: Arc<AtomicUsize>,
) {
    let mut batch = Vec::new();
    while let Some(first) = rx.recv().await {
        let result = match rx.try_recv() {
            Err(_) => stream.write_all(&first).await,
            Ok(second) => {
                batch.clear();
                batch.extend_from_slice(&first);
                batch.extend_from_slice(&second);
                while let Ok(more) = rx.try_recv() {
                    batch.extend_from_slice(&more);
                }
                stream.write_all(&batch).await
            }
        };
        if result.is_err() {
            closed.fetch_add(1, Ordering::Relaxed);
            return;
        }
    }
}

/// `--peer sio`: accepts Socket.IO sockets until killed and broadcasts to
/// those connected whenever a trigger connects.
async fn sio_server(args: Args) -> Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let triggers = TcpListener::bind("127.0.0.1:0").await?;
    println!(
        "{}",
        json!({"port": listener.local_addr()?.port(), "trigger": triggers.local_addr()?.port()})
    );
    let senders = Arc::new(Mutex::new(Vec::new()));
    let closed = Arc::new(AtomicUsize::new(0));
    let (queue, accepted) = (args.queue, senders.clone());
    let acceptor = closed.clone();
    tokio::spawn(async move {
        let mut sid = 0u64;
        while let Ok((stream, _)) = listener.accept().await {
            sid += 1;
            let (accepted, closed) = (accepted.clone(), acceptor.clone());
            tokio::spawn(async move {
                if let Ok(mut ws) = sio_handshake(stream, sid).await {
                    let (tx, rx) = mpsc::channel(queue);
                    accepted.lock().unwrap().push(tx);
                    writer(ws.get_mut(), rx, closed).await;
                }
            });
        }
    });
    let payload = usize::from(args.payload_bytes);
    let events = args.rate * args.seconds;
    let period = Duration::from_secs_f64(1.0 / f64::from(args.rate));
    loop {
        let (mut control, _) = triggers.accept().await?;
        let targets = senders.lock().unwrap().clone();
        let started = Instant::now();
        let full = broadcast(&targets, events, period, |sent| sio_frame(payload, sent)).await;
        let summary = json!({
            "committed": events,
            "rate": f64::from(events) / started.elapsed().as_secs_f64(),
            "full": full,
            "sockets": targets.len(),
            "writersFailed": closed.load(Ordering::Relaxed),
        });
        control.write_all(format!("{summary}\n").as_bytes()).await?;
    }
}

/// The WebSocket upgrade, Engine.IO's open packet and Socket.IO's connect
/// to namespace `/`: what bench_sio waits for before a socket is ready.
async fn sio_handshake(
    stream: TcpStream,
    sid: u64,
) -> Result<tokio_tungstenite::WebSocketStream<TcpStream>> {
    stream.set_nodelay(true)?;
    let mut ws = tokio_tungstenite::accept_async(stream).await?;
    let open = json!({"sid": format!("{sid:016}"), "upgrades": [], "pingInterval": 300_000,
        "pingTimeout": 20_000, "maxPayload": 1_000_000});
    ws.send(Message::text(format!("0{open}"))).await?;
    loop {
        match ws.next().await.context("closed before connecting")?? {
            Message::Text(text) if text.as_str().starts_with("40") => break,
            Message::Close(_) => bail!("closed before connecting"),
            _ => {}
        }
    }
    let connected = json!({"sid": format!("s{sid:015}")});
    ws.send(Message::text(format!("40{connected}"))).await?;
    Ok(ws)
}

/// `--trigger PORT`: one broadcast of a `--peer sio` server; prints its
/// summary.
async fn trigger(port: u16) -> Result<()> {
    let mut control = TcpStream::connect(("127.0.0.1", port)).await?;
    let mut summary = String::new();
    control.read_to_string(&mut summary).await?;
    print!("{summary}");
    Ok(())
}

/// The child: connects `sockets` sockets and reads until each has every
/// event, or nothing arrived for 30 s; prints the bytes read and, from one
/// socket in 100, the latency from send to the frame's last byte read.
async fn client(port: u16, args: &Args) -> Result<()> {
    let payload = usize::from(args.payload_bytes);
    let frame_len = header_len(payload) + payload;
    let events = (args.rate * args.seconds) as usize;
    let stamp = stamp_offset(payload);
    let total = Arc::new(AtomicUsize::new(0));
    let span = Arc::new((AtomicU64::new(u64::MAX), AtomicU64::new(0)));
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let mut readers = Vec::with_capacity(args.sockets);
    for i in 0..args.sockets {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
        let total = total.clone();
        let span = span.clone();
        let latencies = latencies.clone();
        let sampled = i % 100 == 0;
        readers.push(tokio::spawn(async move {
            let read = async {
                let mut got = 0;
                if sampled {
                    let mut frame = vec![0u8; frame_len];
                    for _ in 0..events {
                        stream.read_exact(&mut frame).await?;
                        got += frame_len;
                        span.seen(frame_len);
                        let sent: u64 = std::str::from_utf8(&frame[stamp..stamp + 16])
                            .ok()
                            .and_then(|t| t.parse().ok())
                            .context("a frame without its send time")?;
                        let latency = now_micros().saturating_sub(sent);
                        latencies.lock().unwrap().push(latency);
                    }
                } else {
                    let mut buf = vec![0u8; 4096];
                    while got < frame_len * events {
                        match stream.read(&mut buf).await? {
                            0 => break,
                            n => {
                                got += n;
                                span.seen(n);
                            }
                        }
                    }
                }
                anyhow::Ok(got)
            };
            let got = tokio::time::timeout(Duration::from_secs(120), read).await;
            if let Ok(Ok(got)) = got {
                total.fetch_add(got, Ordering::Relaxed);
            }
        }));
    }
    for reader in readers {
        reader.await?;
    }
    let mut latencies = std::mem::take(&mut *latencies.lock().unwrap());
    latencies.sort_unstable();
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |&us| (us as f64 / 100.0).round() / 10.0)
    };
    println!(
        "{}",
        json!({
            "bytes": total.load(Ordering::Relaxed),
            "spanSec": span.1.load(Ordering::Relaxed).saturating_sub(span.0.load(Ordering::Relaxed)) as f64 / 1e6,
            "latencyMs": {"p50": at(0.5), "p99": at(0.99), "max": at(1.0)},
        })
    );
    Ok(())
}

/// The first and the last time any socket read bytes, in microseconds
/// since the epoch.
trait Span {
    fn seen(&self, bytes: usize);
}

impl Span for (AtomicU64, AtomicU64) {
    fn seen(&self, bytes: usize) {
        if bytes > 0 {
            let now = now_micros();
            self.0.fetch_min(now, Ordering::Relaxed);
            self.1.fetch_max(now, Ordering::Relaxed);
        }
    }
}

/// User and system CPU time of this process so far.
fn rusage() -> (Duration, Duration) {
    // SAFETY: getrusage writes the struct it is given and nothing else.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let time = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    (time(usage.ru_utime), time(usage.ru_stime))
}

/// Ten thousand sockets need more descriptors than the usual soft limit.
fn raise_fd_limit() {
    // SAFETY: get/setrlimit read and write the struct they are given.
    unsafe {
        let mut limit = std::mem::zeroed::<libc::rlimit>();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}
