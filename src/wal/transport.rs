//! The byte transport of the replication connection: a TCP stream, TLS
//! over TCP, or a Unix-socket stream, boxed so that the protocol code above
//! it does not care which.
//!
//! On TCP it negotiates TLS as libpq does: unless sslmode is `disable` it
//! sends SSLRequest; on 'S' it runs the TLS handshake (certificate checks
//! per sslmode, `crate::pg`), on 'N' it goes on in plain text under
//! `prefer` and stops under the stronger modes. Like libpq, it never uses
//! TLS on a Unix socket.
//!
//! It also reads where and as whom to connect ([`Target`]) from the
//! settings. This module opens sockets; it does not speak the replication
//! protocol (`connection`) or authenticate (`auth`).

use std::time::Duration;

use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_postgres::config::Host;
use tracing::{debug, trace};

use super::WalError;
use crate::pg::{PgConfig, SslMode, TlsError, TlsSettings};

/// Anything a replication connection can run over (TCP, TLS, Unix socket).
pub(crate) trait Transport: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Transport for T {}

pub(crate) type ReadHalf = tokio::io::ReadHalf<Box<dyn Transport>>;
pub(crate) type WriteHalf = tokio::io::WriteHalf<Box<dyn Transport>>;

/// How long one connection attempt (connect, startup, authentication) may
/// take when the config sets no `connect_timeout`. libpq waits forever; a
/// daemon that reconnects in a loop should not.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

const DEFAULT_PORT: u16 = 5432;

/// Where and as whom to connect, taken from a [`PgConfig`].
pub(super) struct Target<'a> {
    pub(super) endpoints: Vec<Endpoint>,
    pub(super) tls: &'a TlsSettings,
    pub(super) user: &'a str,
    pub(super) password: Option<&'a [u8]>,
    pub(super) dbname: Option<&'a str>,
    pub(super) options: Option<&'a str>,
    pub(super) attempt_timeout: Duration,
    pub(super) keepalive: Option<socket2::TcpKeepalive>,
}

impl<'a> Target<'a> {
    pub(super) fn from_config(pg: &'a PgConfig) -> Result<Self, WalError> {
        let config: &tokio_postgres::Config = pg;
        if config.get_channel_binding() == tokio_postgres::config::ChannelBinding::Require {
            return Err(WalError::Config(
                "channel_binding=require, but the replication connection does not do SCRAM \
                 channel binding; use channel_binding=prefer"
                    .into(),
            ));
        }
        let user = config
            .get_user()
            .ok_or_else(|| WalError::Config("the database URL names no user".into()))?;

        // hostaddr, when given, is what we connect to (libpq semantics).
        let hostaddrs = config.get_hostaddrs();
        let hosts: Vec<Endpoint> = if !hostaddrs.is_empty() {
            // TLS checks the certificate against `host`, not the address.
            let names = config.get_hosts();
            hostaddrs
                .iter()
                .enumerate()
                .map(|(i, addr)| Endpoint::Tcp {
                    host: addr.to_string(),
                    port: 0,
                    tls_name: match names.get(i) {
                        Some(Host::Tcp(name)) => name.clone(),
                        _ => addr.to_string(),
                    },
                })
                .collect()
        } else {
            config
                .get_hosts()
                .iter()
                .map(|host| match host {
                    Host::Tcp(name) => Endpoint::Tcp {
                        host: name.clone(),
                        port: 0,
                        tls_name: name.clone(),
                    },
                    #[cfg(unix)]
                    Host::Unix(dir) => Endpoint::Unix {
                        dir: dir.clone(),
                        port: 0,
                    },
                })
                .collect()
        };
        if hosts.is_empty() {
            return Err(WalError::Config("the database URL names no host".into()));
        }
        let ports = config.get_ports();
        if ports.len() > 1 && ports.len() != hosts.len() {
            return Err(WalError::Config(format!(
                "{} ports given for {} hosts",
                ports.len(),
                hosts.len()
            )));
        }
        let endpoints = hosts
            .into_iter()
            .enumerate()
            .map(|(i, endpoint)| {
                let port = ports
                    .get(i)
                    .or(ports.first())
                    .copied()
                    .unwrap_or(DEFAULT_PORT);
                match endpoint {
                    Endpoint::Tcp { host, tls_name, .. } => Endpoint::Tcp {
                        host,
                        port,
                        tls_name,
                    },
                    #[cfg(unix)]
                    Endpoint::Unix { dir, .. } => Endpoint::Unix { dir, port },
                }
            })
            .collect();

        let keepalive = config.get_keepalives().then(|| {
            let mut keepalive =
                socket2::TcpKeepalive::new().with_time(config.get_keepalives_idle());
            if let Some(interval) = config.get_keepalives_interval() {
                keepalive = keepalive.with_interval(interval);
            }
            if let Some(retries) = config.get_keepalives_retries() {
                keepalive = keepalive.with_retries(retries);
            }
            keepalive
        });

        Ok(Target {
            endpoints,
            tls: pg.tls(),
            user,
            password: config.get_password(),
            dbname: config.get_dbname(),
            options: config.get_options(),
            attempt_timeout: config
                .get_connect_timeout()
                .copied()
                .unwrap_or(DEFAULT_CONNECT_TIMEOUT),
            keepalive,
        })
    }
}

/// One place to connect to.
#[derive(Clone)]
pub(super) enum Endpoint {
    Tcp {
        host: String,
        port: u16,
        /// The name the server's certificate must carry (the host, also
        /// when `hostaddr` says where to connect).
        tls_name: String,
    },
    #[cfg(unix)]
    Unix { dir: std::path::PathBuf, port: u16 },
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Tcp { host, port, .. } => write!(f, "{host}:{port}"),
            #[cfg(unix)]
            Endpoint::Unix { dir, port } => write!(f, "{}/.s.PGSQL.{port}", dir.display()),
        }
    }
}

/// Opens a TCP connection (every address the host name resolves to, in
/// order, until one answers) with TLS as `tls` says, or a Unix-socket
/// connection.
pub(super) async fn open(
    endpoint: &Endpoint,
    keepalive: Option<&socket2::TcpKeepalive>,
    tls: &TlsSettings,
) -> Result<Box<dyn Transport>, WalError> {
    match endpoint {
        Endpoint::Tcp { tls_name, .. } => {
            let stream = open_socket(endpoint, keepalive).await?;
            negotiate_tls(stream, tls, tls_name).await
        }
        #[cfg(unix)]
        Endpoint::Unix { .. } => open_socket(endpoint, keepalive).await,
    }
}

/// SSLRequest, then TLS or plain as the server's answer and sslmode say.
async fn negotiate_tls(
    mut stream: Box<dyn Transport>,
    tls: &TlsSettings,
    host: &str,
) -> Result<Box<dyn Transport>, WalError> {
    if tls.mode == SslMode::Disable {
        return Ok(stream);
    }
    let mut request = bytes::BytesMut::new();
    frontend::ssl_request(&mut request);
    stream.write_all(&request).await?;
    stream.flush().await?;
    // One byte, read unbuffered: anything the server sent after 'S' and
    // before the handshake would be unauthenticated (CVE-2021-23222).
    let answer = stream.read_u8().await?;
    match answer {
        b'S' => {
            let stream = tls.handshake(host, stream).await?;
            debug!(sslmode = %tls.effective_mode(), "tls established");
            Ok(Box::new(stream))
        }
        b'N' if tls.mode.requires_tls() => Err(TlsError::NotSupported { mode: tls.mode }.into()),
        b'N' => {
            debug!("server does not support ssl; sslmode=prefer goes on without it");
            Ok(stream)
        }
        other => Err(WalError::Protocol(format!(
            "unexpected answer {other:#04x} to SSLRequest"
        ))),
    }
}

async fn open_socket(
    endpoint: &Endpoint,
    keepalive: Option<&socket2::TcpKeepalive>,
) -> Result<Box<dyn Transport>, WalError> {
    let connect_error = |source| WalError::Connect {
        address: endpoint.to_string(),
        source,
    };
    match endpoint {
        Endpoint::Tcp { host, port, .. } => {
            let addrs = tokio::net::lookup_host((host.as_str(), *port))
                .await
                .map_err(connect_error)?;
            let mut last_error = None;
            for addr in addrs {
                trace!(%addr, "connecting");
                match tokio::net::TcpStream::connect(addr).await {
                    Ok(stream) => {
                        // Status updates are tiny and must not wait for Nagle.
                        stream.set_nodelay(true).map_err(connect_error)?;
                        if let Some(keepalive) = keepalive {
                            socket2::SockRef::from(&stream)
                                .set_tcp_keepalive(keepalive)
                                .map_err(connect_error)?;
                        }
                        return Ok(Box::new(stream));
                    }
                    Err(err) => last_error = Some(err),
                }
            }
            Err(connect_error(last_error.unwrap_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "host name resolved to no address",
                )
            })))
        }
        #[cfg(unix)]
        Endpoint::Unix { dir, port } => {
            let path = dir.join(format!(".s.PGSQL.{port}"));
            let stream = tokio::net::UnixStream::connect(path)
                .await
                .map_err(connect_error)?;
            Ok(Box::new(stream))
        }
    }
}
