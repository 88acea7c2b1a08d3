//! The streaming (CopyBoth) phase of a replication connection.
//!
//! The socket is split in two. The caller's task reads: [`ReplicationStream::next`]
//! frames XLogData and keepalives off the read half and is cancel-safe, so
//! it can sit in a `tokio::select!` beside a shutdown branch. A writer task
//! owns the write half and sends standby status updates: every
//! `status_interval`, at once when a keepalive asks for a reply, within
//! `feedback_interval` of the durable position moving, and a last one at
//! shutdown. Keeping writes out of `next()` means a cancelled `next()` can
//! never leave half a message on the wire.
//!
//! The feedback clock is what bounds duplicates: after a crash Postgres
//! resends everything after the last position it was told, so reporting a
//! moved position within about a second (rather than on the 10 s status
//! clock) keeps a crash from re-sending more than about a second of
//! changes. It is rate-limited, so a busy stream costs at most one status
//! update per `feedback_interval`.
//!
//! Status updates report only what the caller declared with
//! [`ReplicationStream::set_durable`] (write = flush = apply); before any
//! declaration they carry 0/0, which Postgres ignores. So the slot never moves
//! past data the next hop has not confirmed.
//!
//! Not here: decoding the pgoutput payload (that is `decoder`), and deciding
//! what is durable (that is `capture`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tokio::io::AsyncWriteExt;
use tokio::sync::{oneshot, Notify};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::task::{AbortOnDropHandle, TaskTracker};
use tracing::{debug, info, trace, warn, Instrument, Span};

use super::codec::{self, Backend, ServerReport};
use super::connection::{with_timeout, BackendReader, Liveness};
use super::transport::WriteHalf;
use super::{ReplicationMessage, StartOptions, WalError};
use crate::event::{Lsn, PgTimestamp};

/// The server is declared gone when it has sent nothing for this many
/// status intervals (and at least [`MIN_SERVER_SILENCE`]). The writer asks
/// for a reply after one quiet interval, so a live server answers well
/// before this; without it a half-open TCP connection would hang `next()`
/// until the kernel's keepalive gives up, hours later.
const SERVER_SILENCE_INTERVALS: u32 = 4;
const MIN_SERVER_SILENCE: Duration = Duration::from_secs(30);

/// Bound on each step of `shutdown()`: handing the last status update and
/// CopyDone to the socket, and draining the server's reply.
const SHUTDOWN_STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// State shared between the stream and its writer task.
struct Shared {
    /// The position declared durable; only moves forward.
    durable: AtomicU64,
    /// The position of the last status update the writer sent.
    reported: AtomicU64,
    /// Wakes the writer to answer a keepalive that requested a reply.
    reply_wanted: Notify,
    /// Wakes the writer when `durable` moved forward.
    durable_moved: Notify,
}

/// What the writer hands back when it stops cleanly: the write half (for
/// Terminate) and the position of its last status update.
struct WriterExit {
    io: WriteHalf,
    reported: Lsn,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Streaming,
    /// The server sent CopyDone; we asked the writer to answer it.
    ServerDone,
    /// The server left COPY mode with CommandComplete, which a walsender
    /// does when the server shuts down; it exits right after.
    ServerClosed,
    /// An error ended the stream; the connection is not usable.
    Failed,
}

/// The streaming (CopyBoth) phase.
///
/// Dropping it aborts the writer task and closes the connection without a
/// final status update; call [`ReplicationStream::shutdown`] to leave cleanly.
pub struct ReplicationStream {
    reader: BackendReader,
    liveness: Arc<Liveness>,
    shared: Arc<Shared>,
    writer: Option<AbortOnDropHandle<Result<WriterExit, WalError>>>,
    stop_writer: Option<oneshot::Sender<()>>,
    writer_exit: Option<WriterExit>,
    state: State,
    server_silence_limit: Duration,
    span: Span,
}

impl ReplicationStream {
    pub(crate) fn new(
        reader: BackendReader,
        writer: WriteHalf,
        options: &StartOptions,
        tasks: &TaskTracker,
        span: Span,
    ) -> Self {
        let liveness = reader.liveness();
        let shared = Arc::new(Shared {
            durable: AtomicU64::new(Lsn::ZERO.0),
            reported: AtomicU64::new(Lsn::ZERO.0),
            reply_wanted: Notify::new(),
            durable_moved: Notify::new(),
        });
        let (stop_writer, stop) = oneshot::channel();
        let task = tasks.spawn(
            run_writer(
                writer,
                Arc::clone(&shared),
                Arc::clone(&liveness),
                Clocks {
                    status: options.status_interval,
                    feedback: options.feedback_interval,
                },
                stop,
            )
            .instrument(span.clone()),
        );
        ReplicationStream {
            reader,
            liveness,
            shared,
            writer: Some(AbortOnDropHandle::new(task)),
            stop_writer: Some(stop_writer),
            writer_exit: None,
            state: State::Streaming,
            server_silence_limit: (options.status_interval * SERVER_SILENCE_INTERVALS)
                .max(MIN_SERVER_SILENCE),
            span,
        }
    }

    /// Next message; `Ok(None)` when the server ended the stream. Cancel-safe.
    ///
    /// Errors end the stream: an ErrorResponse becomes [`WalError::Server`],
    /// a lost connection or a server silent for too long a retryable
    /// [`WalError::Io`] / [`WalError::Timeout`].
    pub async fn next(&mut self) -> Result<Option<ReplicationMessage>, WalError> {
        let span = self.span.clone();
        let result = self.next_inner().instrument(span).await;
        if result.is_err() {
            self.state = State::Failed;
        }
        result
    }

    async fn next_inner(&mut self) -> Result<Option<ReplicationMessage>, WalError> {
        match self.state {
            State::Streaming => {}
            State::ServerDone | State::ServerClosed => return Ok(None),
            State::Failed => {
                return Err(WalError::Protocol(
                    "the replication stream already failed; reconnect".into(),
                ))
            }
        }
        loop {
            let deadline = self.liveness.last_heard() + self.server_silence_limit;
            let frame = tokio::select! {
                biased;
                exit = async { self.writer.as_mut().expect("guarded").await },
                    if self.writer.is_some() =>
                {
                    // The writer only stops on its own when it failed.
                    self.writer = None;
                    return Err(match exit {
                        Ok(Err(err)) => err,
                        Ok(Ok(_)) => WalError::Protocol("status writer stopped unexpectedly".into()),
                        Err(join) => WalError::Protocol(format!("status writer failed: {join}")),
                    });
                }
                frame = self.reader.recv() => frame?,
                _ = tokio::time::sleep_until(deadline.into()) => {
                    // Bytes may have arrived since the deadline was computed.
                    if self.liveness.silent_for() >= self.server_silence_limit {
                        return Err(WalError::Timeout {
                            operation: "waiting for the server on the replication stream".into(),
                            after: self.server_silence_limit,
                        });
                    }
                    continue;
                }
            };
            match frame {
                Backend::CopyData(payload) => {
                    let message = codec::parse_replication_message(payload)?;
                    if let ReplicationMessage::Keepalive {
                        wal_end,
                        reply_requested,
                        ..
                    } = &message
                    {
                        trace!(wal_end = %wal_end, reply_requested, "keepalive");
                        if *reply_requested {
                            self.shared.reply_wanted.notify_one();
                        }
                    }
                    return Ok(Some(message));
                }
                Backend::Message(Message::CopyDone) => {
                    info!("server ended the replication stream");
                    self.state = State::ServerDone;
                    // The writer answers with a last status update and our
                    // CopyDone. Waiting on the handle by reference keeps this
                    // cancel-safe: if we are dropped here, shutdown() joins it.
                    self.finish_writer().await?;
                    return Ok(None);
                }
                Backend::Message(Message::CommandComplete(_)) => {
                    info!("server ended the replication stream without CopyDone (server shutting down)");
                    self.state = State::ServerClosed;
                    // The server is exiting; a last status update may still
                    // reach it, but failing to send one is expected.
                    let finished = with_timeout(
                        SHUTDOWN_STEP_TIMEOUT,
                        "sending the final status update",
                        self.finish_writer(),
                    )
                    .await;
                    if let Err(err) = finished {
                        debug!(error = %err, "could not send the final status update");
                    }
                    return Ok(None);
                }
                Backend::Message(Message::ErrorResponse(body)) => {
                    let err = ServerReport::parse(body.fields())?.into_error();
                    debug!(error = %err, "server error on the replication stream");
                    return Err(err);
                }
                Backend::CopyBothResponse => {
                    return Err(WalError::Protocol(
                        "CopyBothResponse while already streaming".into(),
                    ))
                }
                Backend::Message(_) => {
                    return Err(WalError::Protocol(
                        "unexpected message on the replication stream".into(),
                    ))
                }
            }
        }
    }

    /// Stops the writer (last status update + CopyDone) and keeps its exit
    /// for `shutdown()`.
    async fn finish_writer(&mut self) -> Result<(), WalError> {
        if let Some(stop) = self.stop_writer.take() {
            let _ = stop.send(());
        }
        let Some(writer) = self.writer.as_mut() else {
            return Ok(());
        };
        let exit = writer.await;
        self.writer = None;
        match exit {
            Ok(Ok(exit)) => {
                self.writer_exit = Some(exit);
                Ok(())
            }
            Ok(Err(err)) => Err(err),
            Err(join) => Err(WalError::Protocol(format!("status writer failed: {join}"))),
        }
    }

    /// Declares everything up to `lsn` durable: later status updates report it flushed.
    ///
    /// The position only moves forward; a lower `lsn` is ignored, because
    /// some Postgres versions would move the slot's `confirmed_flush_lsn`
    /// backwards.
    pub fn set_durable(&self, lsn: Lsn) {
        let previous = self.shared.durable.fetch_max(lsn.0, Ordering::AcqRel);
        if lsn.0 > previous {
            self.shared.durable_moved.notify_one();
        } else if lsn.0 < previous {
            self.span.in_scope(|| {
                debug!(lsn = %lsn, durable = %Lsn(previous), "ignoring durable position behind the current one")
            });
        }
    }

    /// The position last declared durable.
    pub fn durable(&self) -> Lsn {
        Lsn(self.shared.durable.load(Ordering::Acquire))
    }

    /// Sends a final status update, ends the stream, closes the connection.
    ///
    /// Returns the position that last status update reported (the durable
    /// one, or 0/0 if nothing was declared). Each step is bounded: a server
    /// that does not answer CopyDone in time is left behind with a warning,
    /// since the status update has been sent either way.
    pub async fn shutdown(mut self) -> Result<Lsn, WalError> {
        let span = self.span.clone();
        async move {
            if self.state == State::ServerClosed && self.writer_exit.is_none() {
                // The server is gone; nothing left to send or drain.
                let reported = Lsn(self.shared.reported.load(Ordering::Acquire));
                info!(durable = %reported, "replication stream shut down by the server");
                return Ok(reported);
            }
            let WriterExit { mut io, reported } = self.stop_writer().await?;
            if matches!(self.state, State::Streaming | State::ServerDone) {
                let drained = with_timeout(
                    SHUTDOWN_STEP_TIMEOUT,
                    "draining the replication stream",
                    async { drain_until_ready(&mut self.reader).await },
                )
                .await;
                if let Err(err) = drained {
                    warn!(error = %err, "server did not end the replication stream cleanly");
                }
            }
            let mut terminate = BytesMut::with_capacity(5);
            frontend::terminate(&mut terminate);
            // Best effort: the server may already have closed the connection.
            let _ = with_timeout(SHUTDOWN_STEP_TIMEOUT, "sending Terminate", async {
                io.write_all(&terminate).await?;
                io.shutdown().await?;
                Ok(())
            })
            .await;
            info!(durable = %reported, "replication stream shut down");
            Ok(reported)
        }
        .instrument(span)
        .await
    }

    /// Stops the writer (last status update + CopyDone) and takes back the
    /// write half.
    async fn stop_writer(&mut self) -> Result<WriterExit, WalError> {
        if let Some(exit) = self.writer_exit.take() {
            return Ok(exit);
        }
        if let Some(stop) = self.stop_writer.take() {
            let _ = stop.send(());
        }
        let Some(writer) = self.writer.take() else {
            return Err(WalError::Protocol(
                "the status writer already failed; the final status update was not sent".into(),
            ));
        };
        match with_timeout(
            SHUTDOWN_STEP_TIMEOUT,
            "sending the final status update",
            async {
                writer
                    .await
                    .map_err(|join| WalError::Protocol(format!("status writer failed: {join}")))
            },
        )
        .await
        {
            Ok(Ok(exit)) => Ok(exit),
            Ok(Err(err)) | Err(err) => Err(err),
        }
    }
}

/// Reads until the server's ReadyForQuery after the CopyDone exchange,
/// discarding WAL it sent before it saw our CopyDone (it was not declared
/// durable, so it will be sent again). A server that simply closes the
/// connection has ended the stream too.
async fn drain_until_ready(reader: &mut BackendReader) -> Result<(), WalError> {
    loop {
        let frame = match reader.recv().await {
            Ok(frame) => frame,
            Err(WalError::Io(err)) if err.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Ok(())
            }
            Err(err) => return Err(err),
        };
        match frame {
            Backend::Message(Message::ReadyForQuery(_)) => return Ok(()),
            Backend::Message(Message::ErrorResponse(body)) => {
                let err = ServerReport::parse(body.fields())?.into_error();
                warn!(error = %err, "server error while ending the replication stream");
            }
            _ => {}
        }
    }
}

/// The writer's two clocks.
struct Clocks {
    /// Every this long, a status update whatever moved (it doubles as a
    /// liveness probe).
    status: Duration,
    /// A moved durable position is reported at most this long after the
    /// previous status update.
    feedback: Duration,
}

/// The writer task: sends standby status updates until told to stop, then a
/// last one and CopyDone.
async fn run_writer(
    mut io: WriteHalf,
    shared: Arc<Shared>,
    liveness: Arc<Liveness>,
    clocks: Clocks,
    mut stop: oneshot::Receiver<()>,
) -> Result<WriterExit, WalError> {
    let mut ticker = tokio::time::interval(clocks.status);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut buf = BytesMut::with_capacity(64);
    let mut last_sent: Option<Instant> = None;
    // When the durable position moved since the last update: when to report it.
    let mut feedback_due: Option<Instant> = None;
    loop {
        let reply_requested = tokio::select! {
            biased;
            stopped = &mut stop => {
                if stopped.is_err() {
                    // The stream was dropped; the task is being aborted anyway.
                    return Err(WalError::Protocol("replication stream dropped".into()));
                }
                break;
            }
            _ = shared.reply_wanted.notified() => false,
            // A quiet server is asked to answer, so a dead connection shows
            // up as silence that `next()` turns into an error.
            _ = ticker.tick() => liveness.silent_for() >= clocks.status,
            _ = shared.durable_moved.notified(), if feedback_due.is_none() => {
                // At once after a quiet spell, else one feedback interval
                // after the last update: at most one per interval.
                let now = Instant::now();
                feedback_due = Some(last_sent.map_or(now, |sent| (sent + clocks.feedback).max(now)));
                continue;
            }
            _ = tokio::time::sleep_until(feedback_due.unwrap_or_else(Instant::now)),
                if feedback_due.is_some() =>
            {
                feedback_due = None;
                if shared.durable.load(Ordering::Acquire) == shared.reported.load(Ordering::Acquire) {
                    continue;
                }
                false
            }
        };
        send_status(&mut io, &mut buf, &shared, reply_requested).await?;
        last_sent = Some(Instant::now());
        // That update carried the durable position as of now.
        feedback_due = None;
    }
    let reported = send_status(&mut io, &mut buf, &shared, false).await?;
    buf.clear();
    frontend::copy_done(&mut buf);
    io.write_all(&buf).await?;
    io.flush().await?;
    debug!(durable = %reported, "sent final status update and CopyDone");
    Ok(WriterExit { io, reported })
}

async fn send_status(
    io: &mut WriteHalf,
    buf: &mut BytesMut,
    shared: &Shared,
    reply_requested: bool,
) -> Result<Lsn, WalError> {
    let durable = Lsn(shared.durable.load(Ordering::Acquire));
    buf.clear();
    codec::standby_status_update(durable, PgTimestamp::now(), reply_requested, buf);
    io.write_all(buf).await?;
    io.flush().await?;
    shared.reported.store(durable.0, Ordering::Release);
    trace!(durable = %durable, reply_requested, "sent standby status update");
    Ok(durable)
}
