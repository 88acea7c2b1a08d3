//! Establishing a replication connection and running commands on it.
//!
//! [`ReplicationClient::connect`] takes a `tokio_postgres::Config`, opens a
//! transport to each host in turn (`transport`), sends the startup message
//! with `replication=database` and the session settings that make
//! pgoutput's text output predictable, authenticates (`auth`), and then
//! runs replication commands over the simple query protocol until
//! [`ReplicationClient::start_replication`] turns it into a
//! [`ReplicationStream`].
//!
//! Sockets and authentication live in their own modules; this one is the
//! replication protocol. Passwords are never logged.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::{DataRowBody, Message};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument, Span};

use super::codec::{self, Backend, ServerReport};
use super::stream::ReplicationStream;
use super::transport::{self, Endpoint, ReadHalf, Target, WriteHalf};
use super::{SlotCreated, StartOptions, SystemInfo, WalError};
use crate::event::Lsn;
use crate::pg::PgConfig;

/// Session settings sent in the startup message. pgoutput renders values
/// with the output functions of the walsender's session, so these fix the
/// text form of timestamps, intervals, floats and bytea for the decoder.
/// Startup parameters override anything in the URL's `options`.
const SESSION_SETTINGS: &[(&str, &str)] = &[
    ("client_encoding", "UTF8"),
    ("DateStyle", "ISO"),
    ("TimeZone", "UTC"),
    ("IntervalStyle", "postgres"),
    ("extra_float_digits", "3"),
    ("bytea_output", "hex"),
];

/// When the server was last heard from, shared between the reading side and
/// the status-update writer (which asks for a reply when the server is quiet).
pub(crate) struct Liveness {
    epoch: Instant,
    last_heard_ms: AtomicU64,
}

impl Liveness {
    fn new() -> Self {
        Liveness {
            epoch: Instant::now(),
            last_heard_ms: AtomicU64::new(0),
        }
    }

    fn heard(&self) {
        let now = self.epoch.elapsed().as_millis() as u64;
        self.last_heard_ms.store(now, Ordering::Relaxed);
    }

    pub(crate) fn last_heard(&self) -> Instant {
        self.epoch + Duration::from_millis(self.last_heard_ms.load(Ordering::Relaxed))
    }

    pub(crate) fn silent_for(&self) -> Duration {
        self.last_heard().elapsed()
    }
}

/// The reading side of the wire: frames backend messages and deals with the
/// ones the server may send at any time (ParameterStatus, NoticeResponse,
/// BackendKeyData), so callers only see the messages they asked for.
pub(crate) struct BackendReader {
    io: ReadHalf,
    buf: BytesMut,
    liveness: Arc<Liveness>,
    parameters: HashMap<String, String>,
    backend_pid: Option<i32>,
}

impl BackendReader {
    fn new(io: ReadHalf) -> Self {
        BackendReader {
            io,
            buf: BytesMut::with_capacity(16 * 1024),
            liveness: Arc::new(Liveness::new()),
            parameters: HashMap::new(),
            backend_pid: None,
        }
    }

    pub(crate) fn liveness(&self) -> Arc<Liveness> {
        Arc::clone(&self.liveness)
    }

    /// The next message that is not asynchronous.
    ///
    /// Cancel-safe: the only await is `read_buf` into `self.buf`, which
    /// either reads nothing or keeps what it read for the next call.
    pub(crate) async fn recv(&mut self) -> Result<Backend, WalError> {
        loop {
            while let Some(frame) = codec::decode(&mut self.buf)? {
                match frame {
                    Backend::Message(Message::ParameterStatus(body)) => {
                        let (Ok(name), Ok(value)) = (body.name(), body.value()) else {
                            return Err(WalError::Protocol("malformed ParameterStatus".into()));
                        };
                        debug!(name, value, "server parameter");
                        self.parameters.insert(name.to_owned(), value.to_owned());
                    }
                    Backend::Message(Message::NoticeResponse(body)) => {
                        log_notice(ServerReport::parse(body.fields())?);
                    }
                    Backend::Message(Message::BackendKeyData(body)) => {
                        self.backend_pid = Some(body.process_id());
                        // The secret key would allow cancel requests; we do
                        // not send any, and it must not end up in logs.
                    }
                    other => return Ok(other),
                }
            }
            if self.buf.capacity() - self.buf.len() < 4096 {
                self.buf.reserve(16 * 1024);
            }
            let read = self.io.read_buf(&mut self.buf).await?;
            if read == 0 {
                return Err(WalError::closed_by_server());
            }
            self.liveness.heard();
        }
    }

    /// The next message, which must be a non-COPY one.
    pub(super) async fn recv_message(&mut self) -> Result<Message, WalError> {
        match self.recv().await? {
            Backend::Message(message) => Ok(message),
            Backend::CopyData(_) => Err(WalError::Protocol("unexpected CopyData".into())),
            Backend::CopyBothResponse => {
                Err(WalError::Protocol("unexpected CopyBothResponse".into()))
            }
        }
    }
}

fn log_notice(notice: ServerReport) {
    let ServerReport {
        severity,
        code,
        message,
        detail,
        hint,
    } = notice;
    match severity.as_str() {
        "WARNING" => warn!(%code, %message, ?detail, ?hint, "postgres warning"),
        s if s.starts_with("DEBUG") => debug!(%code, %message, ?detail, ?hint, "postgres notice"),
        _ => info!(%severity, %code, %message, ?detail, ?hint, "postgres notice"),
    }
}

/// A replication-mode connection (`replication=database`) before streaming.
pub struct ReplicationClient {
    pub(super) reader: BackendReader,
    writer: WriteHalf,
    pub(super) write_buf: BytesMut,
    /// Set while a command is in flight. If a command's future is dropped
    /// midway the connection is in an unknown state, and the next command
    /// must not read the previous one's leftovers as its own reply.
    in_command: bool,
    span: Span,
    /// Where the stream's writer task runs (see [`ReplicationClient::set_tasks`]).
    tasks: TaskTracker,
}

impl ReplicationClient {
    /// Runs the replication stream's writer task on `tasks` (the
    /// process's tracker) instead of a tracker of its own. The stream owns
    /// the task either way: its `shutdown` joins it, dropping it aborts it.
    pub fn set_tasks(&mut self, tasks: &TaskTracker) {
        self.tasks = tasks.clone();
    }

    /// Connects and authenticates, trying the config's hosts in order.
    ///
    /// A host that cannot be reached (or times out) makes us try the next
    /// one; an error that another host would repeat (authentication, a
    /// missing database) is returned at once.
    ///
    /// TLS follows the config's sslmode (a bare `tokio_postgres::Config`
    /// brings only disable, prefer or require).
    pub async fn connect(
        config: impl Into<PgConfig>,
        application_name: &str,
    ) -> Result<Self, WalError> {
        let config = config.into();
        let target = Target::from_config(&config)?;
        let mut last_error = None;
        for endpoint in &target.endpoints {
            let span = tracing::info_span!(
                "wal_connection",
                endpoint = %endpoint,
                user = target.user,
                dbname = target.dbname,
                application_name,
                backend_pid = tracing::field::Empty,
            );
            let attempt = connect_endpoint(endpoint, &target, application_name, span.clone());
            let result = match tokio::time::timeout(target.attempt_timeout, attempt)
                .instrument(span.clone())
                .await
            {
                Ok(result) => result,
                Err(_) => Err(WalError::Timeout {
                    operation: format!("connecting to postgres at {endpoint}"),
                    after: target.attempt_timeout,
                }),
            };
            match result {
                Ok(client) => return Ok(client),
                Err(err) if err.is_retryable() => {
                    span.in_scope(|| warn!(error = %err, "connection attempt failed"));
                    last_error = Some(err);
                }
                Err(err) => return Err(err),
            }
        }
        Err(last_error.expect("at least one endpoint was tried"))
    }

    /// The value of a server parameter reported at startup or since
    /// (`server_version`, `TimeZone`, ...).
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.reader.parameters.get(name).map(String::as_str)
    }

    /// The process id of the walsender serving this connection.
    pub fn backend_pid(&self) -> Option<i32> {
        self.reader.backend_pid
    }

    /// IDENTIFY_SYSTEM: the cluster's system id, timeline, current WAL
    /// position and the connection's database.
    pub async fn identify_system(&mut self) -> Result<SystemInfo, WalError> {
        let rows = self.simple_query("IDENTIFY_SYSTEM").await?;
        let row = single_row(&rows, "IDENTIFY_SYSTEM", 4)?;
        Ok(SystemInfo {
            system_id: required(row, 0, "systemid")?.to_owned(),
            timeline: required(row, 1, "timeline")?
                .parse()
                .map_err(|_| WalError::Protocol("IDENTIFY_SYSTEM: invalid timeline".into()))?,
            xlog_pos: parse_lsn(required(row, 2, "xlogpos")?)?,
            dbname: row[3].clone(),
        })
    }

    /// CREATE_REPLICATION_SLOT for pgoutput, without exporting a snapshot
    /// (see `codec::create_slot_command` for why), so `snapshot_name` is
    /// `None`. A temporary slot is dropped by the server when this
    /// connection ends.
    pub async fn create_slot(
        &mut self,
        slot: &str,
        temporary: bool,
    ) -> Result<SlotCreated, WalError> {
        let server_major = self
            .parameter("server_version")
            .and_then(codec::server_major_version)
            .unwrap_or(0);
        let command = codec::create_slot_command(slot, temporary, server_major);
        let rows = self.simple_query(&command).await?;
        let row = single_row(&rows, "CREATE_REPLICATION_SLOT", 4)?;
        let created = SlotCreated {
            slot_name: required(row, 0, "slot_name")?.to_owned(),
            consistent_point: parse_lsn(required(row, 1, "consistent_point")?)?,
            snapshot_name: row[2].clone(),
            output_plugin: row[3].clone(),
        };
        self.span.in_scope(|| {
            info!(slot, temporary, consistent_point = %created.consistent_point, "created replication slot")
        });
        Ok(created)
    }

    /// DROP_REPLICATION_SLOT; with `wait`, waits for an active slot to be
    /// released instead of failing with 55006.
    pub async fn drop_slot(&mut self, slot: &str, wait: bool) -> Result<(), WalError> {
        self.simple_query(&codec::drop_slot_command(slot, wait))
            .await?;
        self.span
            .in_scope(|| info!(slot, "dropped replication slot"));
        Ok(())
    }

    /// Runs `sql` with the simple query protocol and returns every row of
    /// every result set as text. On a walsender this accepts replication
    /// commands and, with `replication=database`, plain SQL such as `SHOW`.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, WalError> {
        let span = self.span.clone();
        self.simple_query_inner(sql).instrument(span).await
    }

    async fn simple_query_inner(
        &mut self,
        sql: &str,
    ) -> Result<Vec<Vec<Option<String>>>, WalError> {
        self.begin_command(sql).await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            match self.reader.recv_message().await? {
                Message::RowDescription(_)
                | Message::CommandComplete(_)
                | Message::EmptyQueryResponse => {}
                Message::DataRow(body) => rows.push(text_row(&body)?),
                // The server still sends ReadyForQuery; keep reading so the
                // connection stays usable after a failed command.
                Message::ErrorResponse(body) => {
                    error = Some(ServerReport::parse(body.fields())?.into_error());
                }
                Message::ReadyForQuery(_) => {
                    self.in_command = false;
                    break;
                }
                Message::CopyInResponse(_) | Message::CopyOutResponse(_) => {
                    return Err(WalError::Protocol(
                        "simple_query cannot run COPY; the connection is unusable now".into(),
                    ));
                }
                _ => {
                    return Err(WalError::Protocol(
                        "unexpected message in reply to a query".into(),
                    ))
                }
            }
        }
        match error {
            Some(err) => {
                debug!(error = %err, "command failed");
                Err(err)
            }
            None => Ok(rows),
        }
    }

    async fn begin_command(&mut self, sql: &str) -> Result<(), WalError> {
        if self.in_command {
            return Err(WalError::Protocol(
                "an earlier command was interrupted; the connection is in an unknown state, reconnect"
                    .into(),
            ));
        }
        debug!(command = sql, "sending command");
        self.write_buf.clear();
        codec::query(sql, &mut self.write_buf)?;
        self.in_command = true;
        self.writer.write_all(&self.write_buf).await?;
        self.writer.flush().await?;
        Ok(())
    }

    /// START_REPLICATION from `options.start` (Postgres starts at the slot's
    /// confirmed position if that is later) with pgoutput protocol version 1.
    pub async fn start_replication(
        mut self,
        options: StartOptions,
    ) -> Result<ReplicationStream, WalError> {
        if options.publications.is_empty() {
            return Err(WalError::Config(
                "START_REPLICATION needs at least one publication".into(),
            ));
        }
        if options.status_interval.is_zero() {
            return Err(WalError::Config("status_interval must be positive".into()));
        }
        let span = self.span.clone();
        async move {
            self.begin_command(&codec::start_replication_command(&options))
                .await?;
            match self.reader.recv().await? {
                Backend::CopyBothResponse => {}
                Backend::Message(Message::ErrorResponse(body)) => {
                    // The connection is consumed; no need to wait for
                    // ReadyForQuery.
                    return Err(ServerReport::parse(body.fields())?.into_error());
                }
                _ => {
                    return Err(WalError::Protocol(
                        "unexpected reply to START_REPLICATION".into(),
                    ))
                }
            }
            info!(slot = %options.slot, start = %options.start, publications = ?options.publications,
                "replication started");
            Ok(ReplicationStream::new(
                self.reader,
                self.writer,
                &options,
                &self.tasks,
                self.span,
            ))
        }
        .instrument(span)
        .await
    }
}

async fn connect_endpoint(
    endpoint: &Endpoint,
    target: &Target<'_>,
    application_name: &str,
    span: Span,
) -> Result<ReplicationClient, WalError> {
    let transport = transport::open(endpoint, target.keepalive.as_ref(), target.tls).await?;
    let (read, write) = tokio::io::split(transport);
    let mut client = ReplicationClient {
        reader: BackendReader::new(read),
        writer: write,
        write_buf: BytesMut::with_capacity(1024),
        in_command: true,
        span,
        tasks: TaskTracker::new(),
    };
    client.startup(target, application_name).await?;
    client.authenticate(target.user, target.password).await?;
    client.await_ready().await?;
    client.in_command = false;
    if let Some(pid) = client.reader.backend_pid {
        client.span.record("backend_pid", pid);
    }
    debug!(
        server_version = client.parameter("server_version"),
        "connected to postgres in replication mode"
    );
    Ok(client)
}

impl ReplicationClient {
    pub(super) async fn send(&mut self) -> Result<(), WalError> {
        self.writer.write_all(&self.write_buf).await?;
        self.writer.flush().await?;
        self.write_buf.clear();
        Ok(())
    }

    async fn startup(
        &mut self,
        target: &Target<'_>,
        application_name: &str,
    ) -> Result<(), WalError> {
        let mut params: Vec<(&str, &str)> = vec![
            ("user", target.user),
            ("replication", "database"),
            ("application_name", application_name),
        ];
        if let Some(dbname) = target.dbname {
            params.push(("database", dbname));
        }
        if let Some(options) = target.options {
            params.push(("options", options));
        }
        params.extend_from_slice(SESSION_SETTINGS);
        self.write_buf.clear();
        frontend::startup_message(params.iter().copied(), &mut self.write_buf)
            .map_err(|err| WalError::Config(format!("invalid startup parameter: {err}")))?;
        self.send().await
    }

    /// After AuthenticationOk: parameters and key data arrive, then
    /// ReadyForQuery (or an error, e.g. too many connections).
    async fn await_ready(&mut self) -> Result<(), WalError> {
        match self.reader.recv_message().await? {
            Message::ReadyForQuery(_) => Ok(()),
            Message::ErrorResponse(body) => Err(ServerReport::parse(body.fields())?.into_error()),
            _ => Err(WalError::Protocol(
                "unexpected message during startup".into(),
            )),
        }
    }
}

/// Runs `future` with a deadline, naming what timed out.
pub(crate) async fn with_timeout<T>(
    after: Duration,
    operation: &str,
    future: impl Future<Output = Result<T, WalError>>,
) -> Result<T, WalError> {
    tokio::time::timeout(after, future)
        .await
        .unwrap_or_else(|_| {
            Err(WalError::Timeout {
                operation: operation.to_owned(),
                after,
            })
        })
}

fn text_row(body: &DataRowBody) -> Result<Vec<Option<String>>, WalError> {
    let buffer = body.buffer();
    body.ranges()
        .map(|range| {
            Ok(range.map(|range| {
                // client_encoding is UTF8, so the server sends valid UTF-8.
                String::from_utf8_lossy(&buffer[range]).into_owned()
            }))
        })
        .collect()
        .map_err(|err| WalError::Protocol(format!("malformed DataRow: {err}")))
}

fn single_row<'r>(
    rows: &'r [Vec<Option<String>>],
    command: &str,
    columns: usize,
) -> Result<&'r [Option<String>], WalError> {
    match rows {
        [row] if row.len() >= columns => Ok(row),
        _ => Err(WalError::Protocol(format!(
            "{command} returned {} rows, expected one with {columns} columns",
            rows.len()
        ))),
    }
}

fn required<'r>(row: &'r [Option<String>], index: usize, name: &str) -> Result<&'r str, WalError> {
    row[index]
        .as_deref()
        .ok_or_else(|| WalError::Protocol(format!("column {name} is NULL")))
}

fn parse_lsn(text: &str) -> Result<Lsn, WalError> {
    text.parse()
        .map_err(|err| WalError::Protocol(format!("server sent an invalid LSN: {err}")))
}
