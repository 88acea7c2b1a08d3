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

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Mode {
    /// A bounded channel and a writer task per socket.
    Tasks,
    /// One task writes every socket.
    Direct,
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
    /// Internal: read `--sockets` sockets from this port (the child).
    #[arg(long, hide = true)]
    client: Option<u16>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    raise_fd_limit();
    if let Some(port) = args.client {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        return runtime.block_on(client(port, &args));
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(workers) = args.workers {
        builder.worker_threads(workers);
    }
    let runtime = builder.enable_all().build()?;
    runtime.block_on(server(args))
}

/// A server-to-client WebSocket text frame (unmasked) of `payload` bytes
/// (at least 64), a Socket.IO `change` event's shape, carrying the time it
/// was sent (microseconds since the epoch) for the client's latency.
fn frame(payload: usize, sent: SystemTime) -> Bytes {
    let mut out = Vec::with_capacity(payload + 4);
    out.push(0x81);
    if payload <= 125 {
        out.push(payload as u8);
    } else {
        out.push(126);
        out.extend_from_slice(&(payload as u16).to_be_bytes());
    }
    let micros = sent
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros();
    let head = format!("42[\"change\",{{\"t\":{micros:016},\"x\":\"");
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
                .map(|stream| {
                    let (tx, rx) = mpsc::channel(args.queue);
                    tokio::spawn(writer(stream, rx, closed.clone()));
                    tx
                })
                .collect();
            let mut tick = tokio::time::interval(period);
            for _ in 0..events {
                tick.tick().await;
                let frame = frame(payload, SystemTime::now());
                for tx in &senders {
                    if tx.try_send(frame.clone()).is_err() {
                        full += 1;
                    }
                }
            }
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

/// A socket's writer: waits for a frame, then writes it and whatever else
/// is queued by then in one system call.
async fn writer(mut stream: TcpStream, mut rx: mpsc::Receiver<Bytes>, closed: Arc<AtomicUsize>) {
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
