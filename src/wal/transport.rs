//! The byte transport of the replication connection: a TCP or Unix-socket
//! stream, boxed so that the protocol code above it does not care which.
//!
//! This module opens sockets; it does not speak the replication protocol
//! (`connection`) or authenticate (`auth`).

use tokio::io::{AsyncRead, AsyncWrite};
use tracing::trace;

use super::WalError;

/// Anything a replication connection can run over (TCP, Unix socket).
pub(crate) trait Transport: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Transport for T {}

pub(crate) type ReadHalf = tokio::io::ReadHalf<Box<dyn Transport>>;
pub(crate) type WriteHalf = tokio::io::WriteHalf<Box<dyn Transport>>;

/// One place to connect to.
#[derive(Clone)]
pub(super) enum Endpoint {
    Tcp {
        host: String,
        port: u16,
    },
    #[cfg(unix)]
    Unix {
        dir: std::path::PathBuf,
        port: u16,
    },
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Tcp { host, port } => write!(f, "{host}:{port}"),
            #[cfg(unix)]
            Endpoint::Unix { dir, port } => write!(f, "{}/.s.PGSQL.{port}", dir.display()),
        }
    }
}

/// Opens a TCP connection (every address the host name resolves to, in
/// order, until one answers) or a Unix-socket connection.
pub(super) async fn open(
    endpoint: &Endpoint,
    keepalive: Option<&socket2::TcpKeepalive>,
) -> Result<Box<dyn Transport>, WalError> {
    let connect_error = |source| WalError::Connect {
        address: endpoint.to_string(),
        source,
    };
    match endpoint {
        Endpoint::Tcp { host, port } => {
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
