//! TLS to PostgreSQL the way libpq users know it: `sslmode` (disable,
//! prefer, require, verify-ca, verify-full), `sslrootcert`, and a client
//! certificate (`sslcert`/`sslkey`), on rustls with the aws-lc-rs provider.
//!
//! [`TlsSettings`] turns those settings into a rustls `ClientConfig`, read
//! from the files on every new connection (so a renewed certificate is
//! picked up by the next reconnect). Its errors say what failed in the
//! operator's words ("not signed by the CA in sslrootcert=…", "host name
//! mismatch: …") and are definite: retrying cannot fix a certificate.
//! [`MakeRustlsConnect`] plugs the same configuration into tokio-postgres
//! (catalog, CLI, the API's pool, the gateway's history start); the
//! replication connection runs the SSLRequest itself (`wal::transport`) and
//! calls [`TlsSettings::handshake`].
//!
//! This module does not parse URLs (`pg`'s parent module does) and does not
//! do SCRAM channel binding (tls-server-end-point); SCRAM runs without it,
//! as over a plain connection.

use std::fmt;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

/// libpq's `sslmode`. `allow` is not offered: it would try plain first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// TLS if the server accepts SSLRequest, else plain; no certificate check.
    #[default]
    Prefer,
    /// TLS or fail; no certificate check (but see [`TlsSettings::effective_mode`]).
    Require,
    /// TLS, and the server's certificate chain must lead to `sslrootcert`.
    VerifyCa,
    /// As verify-ca, and the certificate must name the host connected to.
    VerifyFull,
}

impl SslMode {
    pub const NAMES: &'static str = "disable, prefer, require, verify-ca, verify-full";

    pub fn parse(text: &str) -> Result<SslMode, String> {
        Ok(match text {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            "allow" => {
                return Err(
                    "sslmode=allow is not supported (it tries a plain connection first); \
                     use prefer or require"
                        .into(),
                )
            }
            other => return Err(format!("{other:?} is not one of: {}", SslMode::NAMES)),
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Whether a server without SSL is refused.
    pub fn requires_tls(self) -> bool {
        !matches!(self, SslMode::Disable | SslMode::Prefer)
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `sslrootcert=system` (libpq 16): the operating system's trusted roots
/// (`SSL_CERT_FILE`/`SSL_CERT_DIR` when set), for servers with a publicly
/// trusted certificate. As in libpq it needs `sslmode=verify-full`: with a
/// public CA anyone can get a certificate, only the name makes it the server's.
pub const SYSTEM_ROOTS: &str = "system";

/// The TLS settings of one Postgres connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    pub mode: SslMode,
    /// PEM file of the CA certificate(s) the server's chain must lead to,
    /// or `system` ([`SYSTEM_ROOTS`]) for the operating system's roots.
    pub root_cert: Option<PathBuf>,
    /// PEM file of the client certificate (chain), sent when the server asks.
    pub cert: Option<PathBuf>,
    /// PEM file of the client certificate's private key.
    pub key: Option<PathBuf>,
}

/// Why a TLS connection could not be made. Everything but
/// [`TlsError::Handshake`] comes from the settings or the certificates and
/// is definite.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {setting}={}: {source}", .path.display())]
    Read {
        setting: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{setting}={} is not usable: {message}", .path.display())]
    Invalid {
        setting: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error("{0}")]
    Settings(String),
    #[error("server does not support SSL, but sslmode={mode}; turn ssl on in the server, or use sslmode=prefer")]
    NotSupported { mode: SslMode },
    #[error("the server's certificate is not signed by the CA in sslrootcert={}", .root_cert.display())]
    UnknownCa { root_cert: PathBuf },
    #[error("host name mismatch: certificate is for {presented}, connected to {host}; connect by a name the certificate lists, or use sslmode=verify-ca")]
    HostMismatch { presented: String, host: String },
    #[error("the server's certificate was rejected: {0}")]
    BadCertificate(String),
    #[error("the server ended the TLS handshake: {0} (does it accept this client certificate?)")]
    Refused(String),
    #[error("TLS handshake failed: {0}")]
    Protocol(String),
    /// The connection broke during the handshake; a reconnect may work.
    #[error("TLS handshake failed: {0}")]
    Handshake(#[source] io::Error),
}

impl TlsError {
    pub fn is_definite(&self) -> bool {
        !matches!(self, TlsError::Handshake(_))
    }
}

impl TlsSettings {
    /// The mode in force: libpq verifies the chain under `require` when a
    /// root certificate is given.
    pub fn effective_mode(&self) -> SslMode {
        match (self.mode, &self.root_cert) {
            (SslMode::Require, Some(_)) => SslMode::VerifyCa,
            (mode, _) => mode,
        }
    }

    /// What tokio-postgres is told: it knows only disable, prefer, require;
    /// the certificate checks are ours.
    pub fn tokio_postgres_mode(&self) -> tokio_postgres::config::SslMode {
        match self.mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        }
    }

    /// Every problem with these settings (unreadable files included), for
    /// `Config::validate`.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if matches!(self.mode, SslMode::VerifyCa | SslMode::VerifyFull) && self.root_cert.is_none()
        {
            problems.push(format!(
                "sslmode={} needs sslrootcert=<file of the CA that signed the server's \
                 certificate> (walcast does not fall back to ~/.postgresql/root.crt)",
                self.mode
            ));
        }
        if self.uses_system_roots() && self.mode != SslMode::VerifyFull {
            problems.push(format!(
                "sslrootcert=system needs sslmode=verify-full, not {} (a public CA vouches \
                 for anyone's certificate; only the host name check makes it the server's)",
                self.mode
            ));
        }
        match (&self.cert, &self.key) {
            (Some(_), None) => problems.push("sslcert is set but sslkey is not".into()),
            (None, Some(_)) => problems.push("sslkey is set but sslcert is not".into()),
            _ => {}
        }
        // The files, once the settings themselves make sense.
        if problems.is_empty() && self.mode != SslMode::Disable {
            if let Err(e) = self.client_config() {
                problems.push(e.to_string());
            }
        }
        problems
    }

    fn uses_system_roots(&self) -> bool {
        self.root_cert
            .as_deref()
            .is_some_and(|path| path == Path::new(SYSTEM_ROOTS))
    }

    /// The rustls configuration for these settings, from the files as they
    /// are now.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, TlsError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Settings(e.to_string()))?;
        let roots = match &self.root_cert {
            Some(_) if self.uses_system_roots() => Some(Arc::new(system_roots()?)),
            Some(path) => Some(Arc::new(load_roots(path)?)),
            None => None,
        };
        let verifier: Arc<dyn ServerCertVerifier> = match (self.effective_mode(), roots) {
            (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
                return Err(TlsError::Settings(format!(
                    "sslmode={} needs sslrootcert",
                    self.mode
                )))
            }
            (SslMode::VerifyFull, Some(roots)) => {
                WebPkiServerVerifier::builder_with_provider(roots, Arc::clone(&provider))
                    .build()
                    .map_err(|e| TlsError::Settings(e.to_string()))?
            }
            (SslMode::VerifyCa, Some(roots)) => Arc::new(ChainOnly(
                WebPkiServerVerifier::builder_with_provider(roots, Arc::clone(&provider))
                    .build()
                    .map_err(|e| TlsError::Settings(e.to_string()))?,
            )),
            // prefer and require: encrypted, but anyone's certificate will
            // do (libpq's rule; a root certificate turns require into
            // verify-ca above).
            _ => Arc::new(EncryptionOnly(provider)),
        };
        let builder = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                let chain = load_certs("sslcert", cert)?;
                let key_der = load_key(key)?;
                builder
                    .with_client_auth_cert(chain, key_der)
                    .map_err(|e| TlsError::Invalid {
                        setting: "sslkey",
                        path: key.clone(),
                        message: format!("{e} (does it belong to sslcert={}?)", cert.display()),
                    })?
            }
            _ => builder.with_no_client_auth(),
        };
        Ok(Arc::new(config))
    }

    /// The TLS handshake over an established stream (after the server said
    /// 'S' to SSLRequest), checking the certificate as the mode says.
    pub async fn handshake<S>(
        &self,
        host: &str,
        stream: S,
    ) -> Result<tokio_rustls::client::TlsStream<S>, TlsError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let config = self.client_config()?;
        let name = ServerName::try_from(host.to_owned()).map_err(|_| {
            TlsError::Settings(format!("{host:?} is not a host name or IP address for TLS"))
        })?;
        tokio_rustls::TlsConnector::from(config)
            .connect(name, stream)
            .await
            .map_err(|e| self.explain(e, host))
    }

    /// An I/O error of the handshake in the operator's words.
    fn explain(&self, error: io::Error, host: &str) -> TlsError {
        let Some(tls) = error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        else {
            return TlsError::Handshake(error);
        };
        match tls {
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
                TlsError::UnknownCa {
                    root_cert: self.root_cert.clone().unwrap_or_default(),
                }
            }
            rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
                presented,
                ..
            }) => TlsError::HostMismatch {
                presented: presented
                    .iter()
                    .map(|name| presented_name(name))
                    .collect::<Vec<_>>()
                    .join(", "),
                host: host.to_owned(),
            },
            rustls::Error::InvalidCertificate(CertificateError::NotValidForName) => {
                TlsError::HostMismatch {
                    presented: "other names".into(),
                    host: host.to_owned(),
                }
            }
            rustls::Error::InvalidCertificate(other) => TlsError::BadCertificate(
                rustls::Error::InvalidCertificate(other.clone()).to_string(),
            ),
            rustls::Error::AlertReceived(alert) => TlsError::Refused(format!("{alert:?}")),
            other => TlsError::Protocol(other.to_string()),
        }
    }
}

/// rustls lists a certificate's names in their Debug form
/// (`DnsName("localhost")`); the operator wants `localhost`.
fn presented_name(name: &str) -> &str {
    match (name.find("(\""), name.rfind("\")")) {
        (Some(start), Some(end)) if start + 2 <= end => &name[start + 2..end],
        _ => name,
    }
}

fn read_file(setting: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        setting,
        path: path.to_owned(),
        source,
    })
}

fn load_certs(
    setting: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read_file(setting, path)?;
    let invalid = |message: String| TlsError::Invalid {
        setting,
        path: path.to_owned(),
        message,
    };
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(invalid("holds no PEM certificate".into()));
    }
    Ok(certs)
}

fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs("sslrootcert", path)? {
        roots.add(cert).map_err(|e| TlsError::Invalid {
            setting: "sslrootcert",
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    }
    Ok(roots)
}

fn system_roots() -> Result<RootCertStore, TlsError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let errors: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
        return Err(TlsError::Settings(format!(
            "sslrootcert=system: no trusted root certificate found on this system{}; install \
             the ca-certificates package, set SSL_CERT_FILE, or name a CA file",
            if errors.is_empty() {
                String::new()
            } else {
                format!(" ({})", errors.join("; "))
            }
        )));
    }
    Ok(roots)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read_file("sslkey", path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TlsError::Invalid {
        setting: "sslkey",
        path: path.to_owned(),
        message: format!("no PEM private key: {e}"),
    })
}

/// verify-ca: the chain must lead to a trusted root; the name is not
/// checked. WebPKI checks the chain before the name, so a name error means
/// the chain passed.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// prefer and require: any certificate is accepted (libpq does the same),
/// but the handshake's signatures are still checked, so the session is
/// encrypted to whoever holds that certificate's key.
#[derive(Debug)]
struct EncryptionOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for EncryptionOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// [`TlsSettings`] as tokio-postgres's TLS connector.
#[derive(Debug, Clone)]
pub struct MakeRustlsConnect {
    settings: Arc<TlsSettings>,
}

impl MakeRustlsConnect {
    pub fn new(settings: TlsSettings) -> MakeRustlsConnect {
        MakeRustlsConnect {
            settings: Arc::new(settings),
        }
    }
}

impl<S> MakeTlsConnect<S> for MakeRustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = TlsError;

    fn make_tls_connect(&mut self, host: &str) -> Result<RustlsConnect, TlsError> {
        Ok(RustlsConnect {
            settings: Arc::clone(&self.settings),
            host: host.to_owned(),
        })
    }
}

/// One connection's TLS handshake for tokio-postgres.
pub struct RustlsConnect {
    settings: Arc<TlsSettings>,
    host: String,
}

impl<S> TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = TlsError;
    type Future = Pin<Box<dyn Future<Output = Result<RustlsStream<S>, TlsError>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let stream = self.settings.handshake(&self.host, stream).await?;
            Ok(RustlsStream(stream))
        })
    }
}

/// An established TLS stream under tokio-postgres.
pub struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        // tls-server-end-point needs the certificate's signature hash; not
        // done, so SCRAM runs without channel binding.
        ChannelBinding::none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_names_are_libpqs() {
        for name in ["disable", "prefer", "require", "verify-ca", "verify-full"] {
            assert_eq!(SslMode::parse(name).unwrap().as_str(), name);
        }
        assert!(SslMode::parse("allow")
            .unwrap_err()
            .contains("not supported"));
        assert!(SslMode::parse("verify_full")
            .unwrap_err()
            .contains("is not one of: disable, prefer"));
    }

    #[test]
    fn require_with_a_root_certificate_verifies_the_chain() {
        let mut settings = TlsSettings {
            mode: SslMode::Require,
            ..TlsSettings::default()
        };
        assert_eq!(settings.effective_mode(), SslMode::Require);
        settings.root_cert = Some("/ca.pem".into());
        assert_eq!(settings.effective_mode(), SslMode::VerifyCa);
    }

    #[test]
    fn problems_name_the_setting_and_the_file() {
        let settings = TlsSettings {
            mode: SslMode::VerifyFull,
            root_cert: None,
            cert: Some("/nonexistent/client.crt".into()),
            key: None,
        };
        let problems = settings.problems().join("\n");
        assert!(
            problems.contains("sslmode=verify-full needs sslrootcert"),
            "{problems}"
        );
        assert!(
            problems.contains("sslcert is set but sslkey is not"),
            "{problems}"
        );
        let settings = TlsSettings {
            mode: SslMode::VerifyCa,
            root_cert: Some("/nonexistent/root.crt".into()),
            ..TlsSettings::default()
        };
        let problems = settings.problems().join("\n");
        assert!(
            problems.contains("cannot read sslrootcert=/nonexistent/root.crt"),
            "{problems}"
        );
        assert!(TlsSettings::default().problems().is_empty());
    }

    #[test]
    fn presented_names_read_plainly() {
        assert_eq!(presented_name("DnsName(\"localhost\")"), "localhost");
        assert_eq!(presented_name("*.example.com"), "*.example.com");
    }

    #[test]
    fn certificate_errors_are_definite_a_broken_handshake_is_not() {
        assert!(TlsError::UnknownCa {
            root_cert: "/ca".into()
        }
        .is_definite());
        assert!(!TlsError::Handshake(io::ErrorKind::ConnectionReset.into()).is_definite());
    }
}
