//! Authentication of the replication connection: trust, cleartext
//! password, md5 and SCRAM-SHA-256 (without channel binding).
//!
//! It runs between the startup message and AuthenticationOk, on whatever
//! transport `transport` opened (plain or TLS); it knows nothing about
//! sockets or TLS. Passwords are never logged.

use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tracing::debug;

use super::codec::ServerReport;
use super::connection::ReplicationClient;
use super::WalError;

impl ReplicationClient {
    /// Answers the server's authentication requests until AuthenticationOk
    /// (or the server's error).
    pub(super) async fn authenticate(
        &mut self,
        user: &str,
        password: Option<&[u8]>,
    ) -> Result<(), WalError> {
        let password = || {
            password.ok_or_else(|| {
                WalError::Auth(
                    "the server asked for a password, but the database URL has none".into(),
                )
            })
        };
        loop {
            match self.reader.recv_message().await? {
                Message::AuthenticationOk => {
                    debug!("authenticated");
                    return Ok(());
                }
                Message::AuthenticationCleartextPassword => {
                    debug!(method = "password", "authenticating");
                    frontend::password_message(password()?, &mut self.write_buf)
                        .map_err(|err| WalError::Auth(err.to_string()))?;
                    self.send().await?;
                }
                Message::AuthenticationMd5Password(body) => {
                    debug!(method = "md5", "authenticating");
                    let hash = md5_hash(user.as_bytes(), password()?, body.salt());
                    frontend::password_message(hash.as_bytes(), &mut self.write_buf)
                        .map_err(|err| WalError::Auth(err.to_string()))?;
                    self.send().await?;
                }
                Message::AuthenticationSasl(body) => {
                    let mechanisms: Vec<String> = body
                        .mechanisms()
                        .map(|m| Ok(m.to_owned()))
                        .collect()
                        .map_err(|err| {
                            WalError::Protocol(format!("malformed SASL mechanisms: {err}"))
                        })?;
                    if !mechanisms.iter().any(|m| m == SCRAM_SHA_256) {
                        return Err(WalError::Auth(format!(
                            "the server offers SASL mechanisms {mechanisms:?}; walcast supports only \
                             {SCRAM_SHA_256} without channel binding"
                        )));
                    }
                    debug!(method = SCRAM_SHA_256, "authenticating");
                    self.scram(password()?).await?;
                }
                Message::ErrorResponse(body) => {
                    return Err(ServerReport::parse(body.fields())?.into_error());
                }
                Message::AuthenticationKerberosV5
                | Message::AuthenticationScmCredential
                | Message::AuthenticationGss
                | Message::AuthenticationSspi => {
                    return Err(WalError::Auth(
                        "the server asks for an authentication method walcast does not support \
                         (use scram-sha-256, md5, password or trust)"
                            .into(),
                    ));
                }
                _ => {
                    return Err(WalError::Protocol(
                        "unexpected message during authentication".into(),
                    ))
                }
            }
        }
    }

    /// SCRAM-SHA-256 without channel binding (tls-server-end-point is not
    /// implemented, so even over TLS the client says it does not bind).
    async fn scram(&mut self, password: &[u8]) -> Result<(), WalError> {
        let scram_error = |err: std::io::Error| WalError::Auth(format!("SCRAM: {err}"));
        let mut scram = ScramSha256::new(password, ChannelBinding::unsupported());
        frontend::sasl_initial_response(SCRAM_SHA_256, scram.message(), &mut self.write_buf)
            .map_err(scram_error)?;
        self.send().await?;
        match self.reader.recv_message().await? {
            Message::AuthenticationSaslContinue(body) => {
                scram.update(body.data()).map_err(scram_error)?
            }
            Message::ErrorResponse(body) => {
                return Err(ServerReport::parse(body.fields())?.into_error())
            }
            _ => {
                return Err(WalError::Protocol(
                    "expected AuthenticationSASLContinue".into(),
                ))
            }
        }
        frontend::sasl_response(scram.message(), &mut self.write_buf).map_err(scram_error)?;
        self.send().await?;
        match self.reader.recv_message().await? {
            // Verifies the server's signature: a server that does not know
            // the password cannot impersonate the real one.
            Message::AuthenticationSaslFinal(body) => {
                scram.finish(body.data()).map_err(scram_error)
            }
            Message::ErrorResponse(body) => Err(ServerReport::parse(body.fields())?.into_error()),
            _ => Err(WalError::Protocol(
                "expected AuthenticationSASLFinal".into(),
            )),
        }
    }
}
