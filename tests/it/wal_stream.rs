//! Integration tests of the replication connection against real PostgreSQL.
//!
//! Needs the `wal_level=logical` cluster of `scripts/ensure-services.sh`
//! (`WALCAST_TEST_PG_URL`, default port 5433, with the walcast_scram /
//! walcast_md5 / walcast_clear roles) and a `wal_level=replica` cluster
//! (`WALCAST_TEST_PG_REPLICA_URL`, default port 5435). Every test works in
//! its own database with its own slot and publication names, so the tests
//! run in parallel; the database and its slots are dropped even when a test
//! fails.

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::timeout;
use tokio_postgres::{Config, NoTls};
use walcast::event::Lsn;
use walcast::wal::{ReplicationClient, ReplicationMessage, ReplicationStream, StartOptions};

use crate::support;

/// Upper bound for anything a test waits for.
const PATIENCE: Duration = Duration::from_secs(30);

fn pg_url() -> String {
    std::env::var("WALCAST_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5433/postgres".into())
}

fn replica_url() -> String {
    std::env::var("WALCAST_TEST_PG_REPLICA_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5435/postgres".into())
}

fn base_config() -> Config {
    pg_url()
        .parse()
        .expect("WALCAST_TEST_PG_URL is a valid URL")
}

/// A name no other test (or earlier run) uses.
fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{prefix}_{}_{}_{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

async fn within<F: Future>(what: &str, future: F) -> F::Output {
    timeout(PATIENCE, future)
        .await
        .unwrap_or_else(|_| panic!("timed out after {PATIENCE:?} {what}"))
}

/// Polls `check` until it returns `Some`, within [`PATIENCE`].
async fn wait_for<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    support::poll(PATIENCE, check)
        .await
        .unwrap_or_else(|_| panic!("timed out after {PATIENCE:?} waiting for {what}"))
}

async fn sql_client(config: &Config) -> tokio_postgres::Client {
    let (client, connection) = within("connecting with tokio-postgres", config.connect(NoTls))
        .await
        .expect("tokio-postgres connects");
    tokio::spawn(connection);
    client
}

/// A database of one test, dropped (with its slots) when the test ends.
struct TestDb {
    name: String,
}

impl TestDb {
    async fn create() -> TestDb {
        let name = unique("walcast_wal");
        let admin = sql_client(&base_config()).await;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create test database");
        TestDb { name }
    }

    fn config(&self) -> Config {
        let mut config = base_config();
        config.dbname(&self.name);
        config
    }

    async fn sql(&self) -> tokio_postgres::Client {
        sql_client(&self.config()).await
    }

    async fn replication(&self) -> ReplicationClient {
        within(
            "connecting in replication mode",
            ReplicationClient::connect(&self.config(), "walcast-test"),
        )
        .await
        .expect("replication connection")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop cannot await; clean up on a thread with its own runtime.
        let cleanup = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async { timeout(PATIENCE, drop_database(name)).await })
        });
        let _ = cleanup.join();
    }
}

async fn drop_database(name: String) {
    let Ok((admin, connection)) = base_config().connect(NoTls).await else {
        return;
    };
    tokio::spawn(connection);
    // A database with replication slots cannot be dropped; a slot cannot be
    // dropped while a walsender holds it.
    for _ in 0..200 {
        let _ = admin
            .execute(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
                 WHERE database = $1 AND active_pid IS NOT NULL",
                &[&name],
            )
            .await;
        let _ = admin
            .execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                 WHERE database = $1 AND NOT active",
                &[&name],
            )
            .await;
        match admin
            .query_one(
                "SELECT count(*) FROM pg_replication_slots WHERE database = $1",
                &[&name],
            )
            .await
        {
            Ok(row) if row.get::<_, i64>(0) == 0 => break,
            Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(_) => return,
        }
    }
    let _ = admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await;
}

/// A table `items` in a publication whose name needs quoting (upper case,
/// a comma, a space and a single quote) to exercise `publication_names`.
const PUBLICATION: &str = "Walcast's, Pub";

async fn create_table_and_publication(db: &TestDb) -> tokio_postgres::Client {
    let sql = db.sql().await;
    sql.batch_execute(
        "CREATE TABLE items (id int PRIMARY KEY, name text);
         CREATE PUBLICATION \"Walcast's, Pub\" FOR TABLE items;",
    )
    .await
    .expect("create table and publication");
    sql
}

fn start_options(slot: &str, status_interval: Duration) -> StartOptions {
    StartOptions {
        slot: slot.into(),
        start: Lsn::ZERO,
        publications: vec![PUBLICATION.into()],
        status_interval,
        // Only the status clock, as the tests of it expect; the feedback
        // clock has its own test.
        feedback_interval: status_interval,
    }
}

/// The pgoutput messages of the next transaction, 'B' through 'C'.
async fn next_transaction(stream: &mut ReplicationStream) -> Vec<Bytes> {
    within("receiving a transaction", async {
        let mut messages = Vec::new();
        loop {
            match stream.next().await.expect("stream message") {
                Some(ReplicationMessage::XLogData { data, .. }) => {
                    let is_commit = data.first() == Some(&b'C');
                    messages.push(data);
                    if is_commit {
                        return messages;
                    }
                }
                Some(ReplicationMessage::Keepalive { .. }) => {}
                None => panic!("server ended the stream"),
            }
        }
    })
    .await
}

fn tags(messages: &[Bytes]) -> String {
    messages.iter().map(|m| m[0] as char).collect()
}

/// The end LSN of a pgoutput Commit message: 'C', flags, commit LSN, end LSN.
fn commit_end_lsn(commit: &Bytes) -> Lsn {
    assert_eq!(commit[0], b'C');
    Lsn(u64::from_be_bytes(commit[10..18].try_into().unwrap()))
}

struct SlotState {
    active: bool,
    confirmed_flush: Lsn,
}

async fn slot_state(sql: &tokio_postgres::Client, slot: &str) -> Option<SlotState> {
    let row = sql
        .query_opt(
            "SELECT active, confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .expect("query pg_replication_slots")?;
    Some(SlotState {
        active: row.get(0),
        confirmed_flush: row.get::<_, String>(1).parse().unwrap(),
    })
}

async fn identify_as(user: &str, password: Option<&str>) -> Result<(), walcast::wal::WalError> {
    let mut config = base_config();
    config.user(user);
    if let Some(password) = password {
        config.password(password);
    }
    let mut client = within(
        "connecting",
        ReplicationClient::connect(&config, "walcast-test-auth"),
    )
    .await?;
    let system = within("IDENTIFY_SYSTEM", client.identify_system()).await?;
    assert!(!system.system_id.is_empty());
    assert!(system.timeline >= 1);
    assert!(system.xlog_pos > Lsn::ZERO);
    assert_eq!(system.dbname.as_deref(), config.get_dbname());
    Ok(())
}

#[tokio::test]
async fn identify_system_with_trust() {
    identify_as(base_config().get_user().unwrap(), None)
        .await
        .expect("trust authentication");
}

#[tokio::test]
async fn identify_system_with_scram_sha_256() {
    identify_as("walcast_scram", Some("scram-secret"))
        .await
        .expect("scram authentication");
}

#[tokio::test]
async fn identify_system_with_md5() {
    identify_as("walcast_md5", Some("md5-secret"))
        .await
        .expect("md5 authentication");
}

#[tokio::test]
async fn identify_system_with_cleartext_password() {
    identify_as("walcast_clear", Some("clear-secret"))
        .await
        .expect("cleartext authentication");
}

#[tokio::test]
async fn wrong_password_is_28p01_and_not_retryable() {
    for user in ["walcast_scram", "walcast_md5", "walcast_clear"] {
        let err = identify_as(user, Some("wrong-secret"))
            .await
            .expect_err("wrong password must fail");
        assert_eq!(err.code(), Some("28P01"), "{user}: {err}");
        assert!(!err.is_retryable(), "{user}: {err}");
        assert!(!err.to_string().contains("wrong-secret"));
    }
}

#[tokio::test]
async fn missing_password_is_an_auth_error() {
    let err = identify_as("walcast_scram", None)
        .await
        .expect_err("no password must fail");
    assert!(matches!(err, walcast::wal::WalError::Auth(_)), "{err}");
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn closed_port_is_retryable() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    // Config::host and ::port append, so start from an empty config.
    let mut config = Config::new();
    config
        .user("postgres")
        .dbname("postgres")
        .host("127.0.0.1")
        .port(port);
    let err = within(
        "connecting to a closed port",
        ReplicationClient::connect(&config, "walcast-test"),
    )
    .await
    .err()
    .expect("closed port must fail");
    assert!(
        matches!(err, walcast::wal::WalError::Connect { .. }),
        "{err}"
    );
    assert!(err.is_retryable());
}

#[tokio::test]
async fn session_settings_make_output_predictable() {
    let mut client = within(
        "connecting",
        ReplicationClient::connect(&base_config(), "walcast-test"),
    )
    .await
    .unwrap();
    assert_eq!(client.parameter("TimeZone"), Some("UTC"));
    assert!(client.backend_pid().is_some());
    for (setting, expected) in [
        ("TimeZone", "UTC"),
        ("DateStyle", "ISO, MDY"),
        ("IntervalStyle", "postgres"),
        ("extra_float_digits", "3"),
        ("bytea_output", "hex"),
        ("client_encoding", "UTF8"),
    ] {
        let rows = within("SHOW", client.simple_query(&format!("SHOW {setting}")))
            .await
            .unwrap();
        assert_eq!(rows, vec![vec![Some(expected.to_owned())]], "{setting}");
    }
    // A failed command leaves the connection usable.
    let err = client
        .simple_query("SHOW no_such_setting")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("42704"));
    let rows = client.simple_query("SELECT 1, NULL").await.unwrap();
    assert_eq!(rows, vec![vec![Some("1".to_owned()), None]]);
}

#[tokio::test]
async fn streams_a_transaction_and_moves_the_slot_exactly_to_the_durable_position() {
    let db = TestDb::create().await;
    let sql = create_table_and_publication(&db).await;
    let slot = unique("slot");
    let mut client = db.replication().await;
    let created = within("creating a slot", client.create_slot(&slot, false))
        .await
        .unwrap();
    assert_eq!(created.slot_name, slot);
    assert_eq!(created.output_plugin.as_deref(), Some("pgoutput"));
    assert_eq!(created.snapshot_name, None);
    let mut stream = within(
        "starting replication",
        client.start_replication(start_options(&slot, Duration::from_millis(100))),
    )
    .await
    .unwrap();

    sql.batch_execute(
        "BEGIN; INSERT INTO items VALUES (1, 'a'), (2, 'b'); INSERT INTO items VALUES (3, 'c'); COMMIT;",
    )
    .await
    .unwrap();
    let transaction = next_transaction(&mut stream).await;
    assert_eq!(tags(&transaction), "BRIIIC");
    let end_lsn = commit_end_lsn(transaction.last().unwrap());
    assert_eq!(stream.durable(), Lsn::ZERO);

    stream.set_durable(end_lsn);
    // A lower position never moves the slot back.
    stream.set_durable(Lsn(end_lsn.0 - 1));
    assert_eq!(stream.durable(), end_lsn);
    wait_for(
        "confirmed_flush_lsn to reach the durable position",
        || async {
            let state = slot_state(&sql, &slot).await.unwrap();
            (state.confirmed_flush == end_lsn).then_some(())
        },
    )
    .await;

    let reported = within("shutting down", stream.shutdown()).await.unwrap();
    assert_eq!(reported, end_lsn);
    wait_for("the slot to become inactive", || async {
        let state = slot_state(&sql, &slot).await.unwrap();
        (!state.active).then_some(())
    })
    .await;
    assert_eq!(
        slot_state(&sql, &slot).await.unwrap().confirmed_flush,
        end_lsn
    );
}

/// The feedback clock: a durable position that moved reaches the slot in
/// about `feedback_interval`, although the status clock (an hour here)
/// would not send anything before the test ends. What Postgres has been
/// told is what it resends after a crash, so this bounds duplicates.
#[tokio::test]
async fn a_moved_durable_position_is_reported_within_the_feedback_interval() {
    let db = TestDb::create().await;
    let sql = create_table_and_publication(&db).await;
    let slot = unique("slot");
    let mut client = db.replication().await;
    client.create_slot(&slot, false).await.unwrap();
    let options = StartOptions {
        feedback_interval: Duration::from_millis(200),
        ..start_options(&slot, Duration::from_secs(3600))
    };
    let mut stream = within("starting replication", client.start_replication(options))
        .await
        .unwrap();
    // Well inside the server's keepalive clock (wal_sender_timeout / 2, 30 s
    // by default), whose replies would also carry the position; ten times
    // the feedback interval for a loaded machine.
    const REPORTED_WITHIN: Duration = Duration::from_secs(10);
    for round in 0..3 {
        sql.batch_execute(&format!("INSERT INTO items VALUES ({round}, 'x')"))
            .await
            .unwrap();
        let transaction = next_transaction(&mut stream).await;
        let end_lsn = commit_end_lsn(transaction.last().unwrap());
        stream.set_durable(end_lsn);
        let reached = support::poll(REPORTED_WITHIN, || async {
            let state = slot_state(&sql, &slot).await.unwrap();
            (state.confirmed_flush >= end_lsn).then_some(state.confirmed_flush)
        })
        .await;
        assert_eq!(
            reached.ok(),
            Some(end_lsn),
            "round {round}: the slot did not reach the durable position within {REPORTED_WITHIN:?}"
        );
    }
    within("shutting down", stream.shutdown()).await.unwrap();
}

#[tokio::test]
async fn slot_stays_put_while_nothing_is_declared_durable() {
    let db = TestDb::create().await;
    let sql = create_table_and_publication(&db).await;
    let slot = unique("slot");
    let mut client = db.replication().await;
    let created = client.create_slot(&slot, false).await.unwrap();
    let application_name = "walcast-test";
    let mut stream = within(
        "starting replication",
        client.start_replication(start_options(&slot, Duration::from_millis(100))),
    )
    .await
    .unwrap();

    sql.batch_execute("INSERT INTO items VALUES (1, 'a')")
        .await
        .unwrap();
    assert_eq!(tags(&next_transaction(&mut stream).await), "BRIC");

    // Idle for several status intervals: wait until the server has seen
    // two more status updates from us (reply_time moves with each).
    let reply_time = || async {
        sql.query_opt(
            "SELECT reply_time::text FROM pg_stat_replication \
             WHERE application_name = $1 AND pid = (SELECT active_pid FROM pg_replication_slots WHERE slot_name = $2)",
            &[&application_name, &slot],
        )
        .await
        .unwrap()
        .and_then(|row| row.get::<_, Option<String>>(0))
    };
    let mut seen = reply_time().await;
    for _ in 0..2 {
        let previous = seen.clone();
        seen = Some(
            wait_for("another status update", || async {
                reply_time()
                    .await
                    .filter(|now| Some(now) != previous.as_ref())
            })
            .await,
        );
    }
    let state = slot_state(&sql, &slot).await.unwrap();
    assert!(state.active);
    assert_eq!(state.confirmed_flush, created.consistent_point);

    // The idle stream still delivers.
    sql.batch_execute("INSERT INTO items VALUES (2, 'b')")
        .await
        .unwrap();
    assert_eq!(tags(&next_transaction(&mut stream).await), "BIC");

    let reported = within("shutting down", stream.shutdown()).await.unwrap();
    assert_eq!(reported, Lsn::ZERO);
    wait_for("the slot to become inactive", || async {
        (!slot_state(&sql, &slot).await.unwrap().active).then_some(())
    })
    .await;
    assert_eq!(
        slot_state(&sql, &slot).await.unwrap().confirmed_flush,
        created.consistent_point
    );
}

#[tokio::test]
async fn keepalive_replies_keep_the_stream_alive_past_wal_sender_timeout() {
    let db = TestDb::create().await;
    let sql = create_table_and_publication(&db).await;
    let slot = unique("slot");
    // The server asks for a reply after half of wal_sender_timeout and
    // drops us after all of it; our own status interval is far longer, so
    // only the replies to keepalives keep the connection up.
    let mut config = db.config();
    config.options("-c wal_sender_timeout=1s");
    let mut client = within(
        "connecting",
        ReplicationClient::connect(&config, "walcast-test"),
    )
    .await
    .unwrap();
    let rows = client
        .simple_query("SHOW wal_sender_timeout")
        .await
        .unwrap();
    assert_eq!(rows, vec![vec![Some("1s".to_owned())]]);
    client.create_slot(&slot, true).await.unwrap();
    let mut stream = within(
        "starting replication",
        client.start_replication(start_options(&slot, Duration::from_secs(120))),
    )
    .await
    .unwrap();

    let mut replies_requested = 0;
    within("four keepalives that request a reply", async {
        while replies_requested < 4 {
            match stream.next().await.expect("stream stays alive") {
                Some(ReplicationMessage::Keepalive {
                    reply_requested: true,
                    ..
                }) => replies_requested += 1,
                Some(_) => {}
                None => panic!("server ended the stream"),
            }
        }
    })
    .await;

    sql.batch_execute("INSERT INTO items VALUES (1, 'a')")
        .await
        .unwrap();
    assert_eq!(tags(&next_transaction(&mut stream).await), "BRIC");
    within("shutting down", stream.shutdown()).await.unwrap();
}

#[tokio::test]
async fn next_is_cancel_safe() {
    let db = TestDb::create().await;
    let sql = create_table_and_publication(&db).await;
    let slot = unique("slot");
    let mut client = db.replication().await;
    client.create_slot(&slot, true).await.unwrap();
    let mut stream = client
        .start_replication(start_options(&slot, Duration::from_millis(100)))
        .await
        .unwrap();
    // Insert concurrently, so next() has to wait for the socket.
    let insert = tokio::spawn(async move {
        sql.batch_execute(
            "INSERT INTO items SELECT g, repeat('x', 500) FROM generate_series(1, 500) g",
        )
        .await
        .unwrap();
    });

    // Cancel next() whenever it would wait for even one scheduler round, as a
    // biased select! beside a busy branch would.
    let mut messages = Vec::new();
    let mut cancelled = 0;
    within("receiving the transaction through cancelled calls", async {
        loop {
            let message = tokio::select! {
                biased;
                message = stream.next() => message.unwrap(),
                _ = tokio::task::yield_now() => {
                    cancelled += 1;
                    continue;
                }
            };
            if let Some(ReplicationMessage::XLogData { data, .. }) = message {
                let is_commit = data[0] == b'C';
                messages.push(data);
                if is_commit {
                    break;
                }
            }
        }
    })
    .await;
    within("the insert", insert).await.unwrap();
    assert!(
        cancelled > 0,
        "no call was cancelled; the test proves nothing"
    );
    assert_eq!(messages.len(), 503);
    assert_eq!(tags(&messages), format!("BR{}C", "I".repeat(500)));
    within("shutting down", stream.shutdown()).await.unwrap();
}

#[tokio::test]
async fn start_on_a_missing_slot_is_42704() {
    let db = TestDb::create().await;
    let client = db.replication().await;
    let slot = unique("missing");
    let err = within(
        "starting replication",
        client.start_replication(start_options(&slot, Duration::from_secs(10))),
    )
    .await
    .err()
    .expect("missing slot must fail");
    assert_eq!(err.code(), Some("42704"), "{err}");
    assert!(!err.is_retryable());
    let text = err.to_string();
    assert!(text.contains("42704") && text.contains(&slot), "{text}");
}

#[tokio::test]
async fn start_on_a_slot_active_elsewhere_is_55006_and_retryable() {
    let db = TestDb::create().await;
    let _sql = create_table_and_publication(&db).await;
    let slot = unique("slot");
    let mut first = db.replication().await;
    first.create_slot(&slot, false).await.unwrap();
    let stream = first
        .start_replication(start_options(&slot, Duration::from_secs(10)))
        .await
        .unwrap();

    let second = db.replication().await;
    let err = within(
        "starting a second stream",
        second.start_replication(start_options(&slot, Duration::from_secs(10))),
    )
    .await
    .err()
    .expect("an active slot must be refused");
    assert_eq!(err.code(), Some("55006"), "{err}");
    assert!(err.is_retryable());
    within("shutting down", stream.shutdown()).await.unwrap();
}

#[tokio::test]
async fn creating_a_slot_without_wal_level_logical_is_55000() {
    let config: Config = replica_url().parse().unwrap();
    let mut client = within(
        "connecting to the wal_level=replica cluster",
        ReplicationClient::connect(&config, "walcast-test"),
    )
    .await
    .expect("the wal_level=replica cluster is reachable");
    let err = within("creating a slot", client.create_slot(&unique("slot"), true))
        .await
        .expect_err("logical slots need wal_level=logical");
    assert_eq!(err.code(), Some("55000"), "{err}");
    assert!(!err.is_retryable());
    assert!(err.to_string().contains("wal_level = logical"), "{err}");
}

#[tokio::test]
async fn temporary_slot_disappears_with_its_connection() {
    let db = TestDb::create().await;
    let sql = db.sql().await;
    let slot = unique("temp");
    let mut client = db.replication().await;
    client.create_slot(&slot, true).await.unwrap();
    assert!(slot_state(&sql, &slot).await.is_some());
    drop(client);
    wait_for("the temporary slot to be dropped", || async {
        slot_state(&sql, &slot).await.is_none().then_some(())
    })
    .await;
}

#[tokio::test]
async fn drop_slot_removes_it() {
    let db = TestDb::create().await;
    let sql = db.sql().await;
    let slot = unique("doomed");
    let mut client = db.replication().await;
    client.create_slot(&slot, false).await.unwrap();
    assert!(slot_state(&sql, &slot).await.is_some());
    within("dropping the slot", client.drop_slot(&slot, true))
        .await
        .unwrap();
    assert!(slot_state(&sql, &slot).await.is_none());
    let err = client.drop_slot(&slot, false).await.unwrap_err();
    assert_eq!(err.code(), Some("42704"));
}
