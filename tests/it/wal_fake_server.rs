//! The ends of a replication stream that a shared test cluster cannot be
//! made to produce on demand (the server sending CopyDone, a walsender
//! leaving COPY mode because the server shuts down, the connection dropping),
//! played by a scripted fake server on a loopback port.
//!
//! The fake speaks just enough protocol: 'N' to SSLRequest, trust
//! authentication, a CopyBoth
//! reply to the first query, then its script. It records the frames the
//! client sends so tests can check the final status update, CopyDone and
//! Terminate.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_postgres::Config;
use walcast::event::Lsn;
use walcast::wal::{
    ReplicationClient, ReplicationMessage, ReplicationStream, StartOptions, WalError,
};

const PATIENCE: Duration = Duration::from_secs(10);

/// How the fake server ends the stream after one XLogData message.
#[derive(Clone, Copy)]
enum Ending {
    /// CopyDone, wait for the client's CopyDone, CommandComplete, ReadyForQuery.
    CopyDone,
    /// CommandComplete "COPY 0" and close, as PostgreSQL's WalSndDone does.
    CommandComplete,
    /// Close the socket.
    Eof,
}

fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Reads one frontend message: (tag, body).
async fn read_frame(socket: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let tag = socket.read_u8().await.ok()?;
    let len = socket.read_i32().await.ok()? as usize;
    let mut body = vec![0; len - 4];
    socket.read_exact(&mut body).await.ok()?;
    Some((tag, body))
}

/// Runs the fake server for one connection; returns the frames the client
/// sent after START_REPLICATION.
async fn serve(listener: TcpListener, ending: Ending) -> Vec<(u8, Vec<u8>)> {
    let (mut socket, _) = listener.accept().await.unwrap();
    // Startup message: Int32 length, then the rest. Under the default
    // sslmode=prefer an SSLRequest comes first; like a server without SSL,
    // the fake answers 'N' and reads the startup message after it.
    let mut len = socket.read_i32().await.unwrap() as usize;
    let mut startup = vec![0; len - 4];
    socket.read_exact(&mut startup).await.unwrap();
    if len == 8 && startup == 80877103i32.to_be_bytes() {
        socket.write_all(b"N").await.unwrap();
        len = socket.read_i32().await.unwrap() as usize;
        startup = vec![0; len - 4];
        socket.read_exact(&mut startup).await.unwrap();
    }
    let mut hello = frame(b'R', &0i32.to_be_bytes());
    hello.extend(frame(b'S', b"server_version\x0015.0\x00"));
    hello.extend(frame(b'Z', b"I"));
    socket.write_all(&hello).await.unwrap();

    let (tag, query) = read_frame(&mut socket).await.unwrap();
    assert_eq!(tag, b'Q');
    assert!(query.starts_with(b"START_REPLICATION SLOT \"s\" LOGICAL 0/0"));
    let mut xlogdata = vec![b'w'];
    xlogdata.extend_from_slice(&0x100u64.to_be_bytes());
    xlogdata.extend_from_slice(&0x200u64.to_be_bytes());
    xlogdata.extend_from_slice(&0i64.to_be_bytes());
    xlogdata.extend_from_slice(b"B...");
    let mut reply = frame(b'W', &[0, 0, 0]);
    reply.extend(frame(b'd', &xlogdata));
    socket.write_all(&reply).await.unwrap();

    let mut received = Vec::new();
    match ending {
        Ending::CopyDone => {
            socket.write_all(&frame(b'c', b"")).await.unwrap();
            while let Some((tag, body)) = read_frame(&mut socket).await {
                received.push((tag, body));
                if tag == b'c' {
                    break;
                }
            }
            let mut end = frame(b'C', b"START_REPLICATION\x00");
            end.extend(frame(b'Z', b"I"));
            socket.write_all(&end).await.unwrap();
        }
        Ending::CommandComplete => {
            socket.write_all(&frame(b'C', b"COPY 0\x00")).await.unwrap();
            return received;
        }
        Ending::Eof => return received,
    }
    while let Some(message) = read_frame(&mut socket).await {
        received.push(message);
    }
    received
}

async fn start(
    ending: Ending,
) -> (
    ReplicationStream,
    tokio::task::JoinHandle<Vec<(u8, Vec<u8>)>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(serve(listener, ending));
    let mut config = Config::new();
    config
        .user("walcast")
        .dbname("db")
        .host("127.0.0.1")
        .port(port);
    let client = timeout(
        PATIENCE,
        ReplicationClient::connect(&config, "walcast-test"),
    )
    .await
    .unwrap()
    .unwrap();
    let stream = timeout(
        PATIENCE,
        client.start_replication(StartOptions {
            slot: "s".into(),
            start: Lsn::ZERO,
            publications: vec!["p".into()],
            status_interval: Duration::from_secs(60),
            feedback_interval: Duration::from_secs(60),
        }),
    )
    .await
    .unwrap()
    .unwrap();
    (stream, server)
}

async fn next(stream: &mut ReplicationStream) -> Result<Option<ReplicationMessage>, WalError> {
    timeout(PATIENCE, stream.next())
        .await
        .expect("next() in time")
}

/// The flush position of a standby status update ('r' inside CopyData).
fn status_flush(body: &[u8]) -> Lsn {
    assert_eq!(body[0], b'r');
    Lsn(u64::from_be_bytes(body[9..17].try_into().unwrap()))
}

#[tokio::test]
async fn server_copy_done_ends_the_stream_after_our_final_status_and_copy_done() {
    let (mut stream, server) = start(Ending::CopyDone).await;
    let Some(ReplicationMessage::XLogData {
        wal_start, data, ..
    }) = next(&mut stream).await.unwrap()
    else {
        panic!("expected XLogData");
    };
    assert_eq!(wal_start, Lsn(0x100));
    assert_eq!(&data[..], b"B...");
    stream.set_durable(Lsn(0x180));
    assert!(next(&mut stream).await.unwrap().is_none());
    assert!(next(&mut stream).await.unwrap().is_none());
    let reported = timeout(PATIENCE, stream.shutdown()).await.unwrap().unwrap();
    assert_eq!(reported, Lsn(0x180));

    let received = timeout(PATIENCE, server).await.unwrap().unwrap();
    let tags: Vec<u8> = received.iter().map(|(tag, _)| *tag).collect();
    assert_eq!(tags.last(), Some(&b'X'), "Terminate last: {tags:?}");
    let copy_done = tags.iter().position(|t| *t == b'c').expect("CopyDone sent");
    let (_, last_status) = &received[copy_done - 1];
    assert_eq!(status_flush(last_status), Lsn(0x180));
}

#[tokio::test]
async fn command_complete_mid_stream_ends_it_like_a_server_shutdown() {
    let (mut stream, server) = start(Ending::CommandComplete).await;
    assert!(matches!(
        next(&mut stream).await.unwrap(),
        Some(ReplicationMessage::XLogData { .. })
    ));
    assert!(next(&mut stream).await.unwrap().is_none());
    let reported = timeout(PATIENCE, stream.shutdown()).await.unwrap().unwrap();
    assert_eq!(reported, Lsn::ZERO);
    timeout(PATIENCE, server).await.unwrap().unwrap();
}

#[tokio::test]
async fn a_dropped_connection_is_a_retryable_io_error() {
    let (mut stream, server) = start(Ending::Eof).await;
    assert!(matches!(
        next(&mut stream).await.unwrap(),
        Some(ReplicationMessage::XLogData { .. })
    ));
    timeout(PATIENCE, server).await.unwrap().unwrap();
    let err = next(&mut stream).await.unwrap_err();
    assert!(matches!(err, WalError::Io(_)), "{err}");
    assert!(err.is_retryable());
    // The stream stays failed rather than pretending to continue.
    assert!(next(&mut stream).await.is_err());
}
