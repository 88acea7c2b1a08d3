//! The Socket.IO handshake `auth` payload: `{token?, since?}` or
//! `{token?, snapshot?}`.
//!
//! [`Handshake::parse`] validates it before the socket is admitted. A
//! `since` that is not an event id, a `snapshot` that is not a
//! `pg_current_snapshot()` text, both at once, or a non-object payload refuse
//! the connection with a `connect_error` whose message says what is wrong
//! (chosen over a `resync`: a malformed cursor is a client bug, and a resync
//! would hide it behind a reload loop). Unknown fields are ignored so
//! clients can send more than walcast reads.
//!
//! It does not check the token; that is the [`super::Authorizer`]'s job.

use serde_json::Value;

use crate::event::EventId;

use super::snapshot::Snapshot;

/// Where a new socket's stream starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartAt {
    /// Live changes from now on.
    Live,
    /// Every held change after this id, then live.
    Since(EventId),
    /// Every held or later change the snapshot does not see.
    Snapshot(Snapshot),
}

/// A validated handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handshake {
    pub token: Option<String>,
    pub start: StartAt,
}

/// Why a handshake is refused; the text is the client's `connect_error`
/// message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("auth must be an object like {{\"token\": \"...\", \"since\": \"<event id>\"}}")]
    NotAnObject,
    #[error("auth.{0} must be a string")]
    NotAString(&'static str),
    #[error("auth.since: {0}")]
    Since(#[from] crate::event::ParseEventIdError),
    #[error("auth.snapshot: {0}")]
    Snapshot(#[from] super::snapshot::ParseSnapshotError),
    #[error("auth.since and auth.snapshot exclude each other; send one")]
    Both,
    #[error("unauthorized: {0}")]
    Unauthorized(String),
}

impl Handshake {
    /// Validates the handshake `auth` (`None` or `{}` when the client sent
    /// none).
    pub fn parse(auth: Option<&Value>) -> Result<Handshake, HandshakeError> {
        let map = match auth {
            None | Some(Value::Null) => return Ok(Handshake::live(None)),
            Some(Value::Object(map)) => map,
            Some(_) => return Err(HandshakeError::NotAnObject),
        };
        let string = |field: &'static str| -> Result<Option<&str>, HandshakeError> {
            match map.get(field) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s)),
                Some(_) => Err(HandshakeError::NotAString(field)),
            }
        };
        let token = string("token")?.map(str::to_owned);
        let start = match (string("since")?, string("snapshot")?) {
            (Some(_), Some(_)) => return Err(HandshakeError::Both),
            (Some(since), None) => StartAt::Since(since.parse()?),
            (None, Some(snapshot)) => StartAt::Snapshot(snapshot.parse()?),
            (None, None) => StartAt::Live,
        };
        Ok(Handshake { token, start })
    }

    fn live(token: Option<String>) -> Handshake {
        Handshake {
            token,
            start: StartAt::Live,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn accepts_the_contract_forms() {
        assert_eq!(Handshake::parse(None).unwrap().start, StartAt::Live);
        assert_eq!(
            Handshake::parse(Some(&json!({}))).unwrap(),
            Handshake::live(None)
        );
        let h = Handshake::parse(Some(
            &json!({"token": "t", "since": "00000000016B3800-0000000003", "extra": 1}),
        ))
        .unwrap();
        assert_eq!(h.token.as_deref(), Some("t"));
        assert_eq!(
            h.start,
            StartAt::Since("00000000016B3800-0000000003".parse().unwrap())
        );
        let h = Handshake::parse(Some(&json!({"snapshot": "740:745:741"}))).unwrap();
        assert!(matches!(h.start, StartAt::Snapshot(s) if s.xip == vec![741]));
    }

    #[test]
    fn refuses_garbage_with_a_clear_message() {
        let err = Handshake::parse(Some(&json!({"since": "garbage"}))).unwrap_err();
        assert!(err
            .to_string()
            .starts_with("auth.since: invalid event id \"garbage\""));
        let err = Handshake::parse(Some(&json!({"snapshot": "x"}))).unwrap_err();
        assert!(err
            .to_string()
            .starts_with("auth.snapshot: invalid snapshot"));
        let err = Handshake::parse(Some(&json!({"since": 5}))).unwrap_err();
        assert_eq!(err, HandshakeError::NotAString("since"));
        let err = Handshake::parse(Some(&json!("token"))).unwrap_err();
        assert_eq!(err, HandshakeError::NotAnObject);
        let err = Handshake::parse(Some(
            &json!({"since": "00000000016B3800-0000000003", "snapshot": "1:2:"}),
        ))
        .unwrap_err();
        assert_eq!(err, HandshakeError::Both);
    }
}
