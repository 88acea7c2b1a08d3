//! TLS to PostgreSQL as libpq users expect it, against real servers:
//! `walcast_tls` (scripts/ensure-services.sh: ssl=on, a hostssl-only
//! pg_hba, a server certificate for DNS:localhost only, the role
//! walcast_cert that must present a client certificate) and
//! `walcast_replica` (ssl=off). Every sslmode is tried on both kinds of
//! connection walcast makes (a tokio-postgres one and the replication
//! one), then end to end: `walcast setup` and `tail`, and the API's pool.

use std::time::Duration;

use walcast::catalog::Catalog;
use walcast::pg::{PgConfig, TlsSettings};
use walcast::wal::ReplicationClient;

use crate::support::pgtest;
use crate::support::pgtest::{replica_url, TestDb};

const WAIT: Duration = Duration::from_secs(30);

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn tls_port() -> String {
    env("WALCAST_PG_TLS_PORT", "5436")
}

fn ca() -> String {
    env("WALCAST_TEST_TLS_CA", "/var/lib/walcast-test/tls/ca.crt")
}

fn other_ca() -> String {
    env(
        "WALCAST_TEST_TLS_OTHER_CA",
        "/var/lib/walcast-test/tls/other-ca.crt",
    )
}

fn client_cert() -> String {
    env(
        "WALCAST_TEST_TLS_CLIENT_CERT",
        "/var/lib/walcast-test/tls/client.crt",
    )
}

fn client_key() -> String {
    env(
        "WALCAST_TEST_TLS_CLIENT_KEY",
        "/var/lib/walcast-test/tls/client.key",
    )
}

/// A URL of the TLS cluster as `user`, to `host`, with a query.
fn tls_url(user: &str, host: &str, query: &str) -> String {
    format!("postgres://{user}@{host}:{}/postgres?{query}", tls_port())
}

/// What each kind of connection made of `url`: `Ok(ssl in use)` or the
/// error's text with whether it would be retried.
#[derive(Debug)]
struct Outcome {
    catalog: Result<bool, (String, bool)>,
    replication: Result<(), (String, bool)>,
}

async fn connect_both(url: &str) -> Outcome {
    let config = PgConfig::parse(url, &TlsSettings::default()).expect("valid URL");
    let catalog = match tokio::time::timeout(WAIT, Catalog::connect(&config))
        .await
        .expect("catalog connect in time")
    {
        Ok(catalog) => {
            let row = catalog
                .client()
                .query_one(
                    "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                    &[],
                )
                .await
                .expect("pg_stat_ssl");
            Ok(row.get::<_, bool>(0))
        }
        Err(e) => Err((e.to_string(), e.is_retryable())),
    };
    let replication = match tokio::time::timeout(
        WAIT,
        ReplicationClient::connect(&config, "walcast-tls-test"),
    )
    .await
    .expect("replication connect in time")
    {
        Ok(mut client) => {
            client.identify_system().await.expect("IDENTIFY_SYSTEM");
            Ok(())
        }
        Err(e) => Err((e.to_string(), e.is_retryable())),
    };
    Outcome {
        catalog,
        replication,
    }
}

/// Both connections worked, over TLS.
fn assert_encrypted(outcome: &Outcome, case: &str) {
    assert_eq!(outcome.catalog, Ok(true), "{case}: {outcome:?}");
    assert!(outcome.replication.is_ok(), "{case}: {outcome:?}");
}

/// Both connections failed with `text` in the message, and neither would
/// be retried.
fn assert_refused(outcome: &Outcome, text: &str, case: &str) {
    for error in [
        outcome.catalog.as_ref().err(),
        outcome.replication.as_ref().err(),
    ] {
        let (message, retryable) =
            error.unwrap_or_else(|| panic!("{case}: connected: {outcome:?}"));
        assert!(message.contains(text), "{case}: {message:?} lacks {text:?}");
        assert!(!retryable, "{case}: {message:?} would be retried forever");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sslmode_behaves_as_in_libpq_on_a_tls_only_server() {
    // disable: the hostssl-only server refuses, in its own words.
    let outcome = connect_both(&tls_url("postgres", "127.0.0.1", "sslmode=disable")).await;
    assert_refused(&outcome, "no pg_hba.conf entry", "disable");
    assert_refused(&outcome, "no encryption", "disable");

    for mode in ["prefer", "require"] {
        let outcome = connect_both(&tls_url(
            "postgres",
            "127.0.0.1",
            &format!("sslmode={mode}"),
        ))
        .await;
        assert_encrypted(&outcome, mode);
    }

    // verify-ca checks the chain, not the name (127.0.0.1 is not in the
    // certificate).
    let outcome = connect_both(&tls_url(
        "postgres",
        "127.0.0.1",
        &format!("sslmode=verify-ca&sslrootcert={}", ca()),
    ))
    .await;
    assert_encrypted(&outcome, "verify-ca, right CA");
    let outcome = connect_both(&tls_url(
        "postgres",
        "127.0.0.1",
        &format!("sslmode=verify-ca&sslrootcert={}", other_ca()),
    ))
    .await;
    assert_refused(
        &outcome,
        &format!(
            "the server's certificate is not signed by the CA in sslrootcert={}",
            other_ca()
        ),
        "verify-ca, wrong CA",
    );
    // libpq's rule: require with a root certificate verifies the chain.
    let outcome = connect_both(&tls_url(
        "postgres",
        "127.0.0.1",
        &format!("sslmode=require&sslrootcert={}", other_ca()),
    ))
    .await;
    assert_refused(&outcome, "is not signed by the CA", "require + wrong CA");

    // verify-full: chain and name.
    let outcome = connect_both(&tls_url(
        "postgres",
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={}", ca()),
    ))
    .await;
    assert_encrypted(&outcome, "verify-full to localhost");
    let outcome = connect_both(&tls_url(
        "postgres",
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={}", ca()),
    ))
    .await;
    assert_refused(
        &outcome,
        "host name mismatch: certificate is for localhost, connected to 127.0.0.1",
        "verify-full to 127.0.0.1",
    );
    let outcome = connect_both(&tls_url(
        "postgres",
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={}", other_ca()),
    ))
    .await;
    assert_refused(&outcome, "is not signed by the CA", "verify-full, wrong CA");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_ssl_is_refused_under_require_and_used_plain_under_prefer() {
    let plain = replica_url();
    let separator = if plain.contains('?') { '&' } else { '?' };
    let outcome = connect_both(&format!("{plain}{separator}sslmode=require")).await;
    assert_refused(&outcome, "server does not support SSL", "require, no SSL");
    let outcome = connect_both(&format!("{plain}{separator}sslmode=prefer")).await;
    assert_eq!(outcome.catalog, Ok(false), "prefer, no SSL: {outcome:?}");
    assert!(outcome.replication.is_ok(), "prefer, no SSL: {outcome:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_certificate_role_needs_its_certificate() {
    let with_cert = format!(
        "sslmode=verify-full&sslrootcert={}&sslcert={}&sslkey={}",
        ca(),
        client_cert(),
        client_key()
    );
    let outcome = connect_both(&tls_url("walcast_cert", "localhost", &with_cert)).await;
    assert_encrypted(&outcome, "walcast_cert with its certificate");

    let outcome = connect_both(&tls_url(
        "walcast_cert",
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={}", ca()),
    ))
    .await;
    assert_refused(
        &outcome,
        "connection requires a valid client certificate",
        "walcast_cert without a certificate",
    );

    // A key file that is not there is named, and is not retried.
    let outcome = connect_both(&tls_url(
        "walcast_cert",
        "localhost",
        &format!(
            "sslmode=require&sslcert={}&sslkey=/nonexistent/walcast.key",
            client_cert()
        ),
    ))
    .await;
    assert_refused(
        &outcome,
        "cannot read sslkey=/nonexistent/walcast.key",
        "missing key file",
    );
}

/// The replication stream end to end over verify-full: `walcast setup`
/// (catalog and slot creation) and `walcast tail` through the binary, an
/// INSERT arriving as an event, and the walsender's connection encrypted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_streams_changes_over_verify_full() {
    let admin = tls_url(
        "postgres",
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={}", ca()),
    );
    let db = TestDb::create_on(&admin, "tls_tail").await;
    // The slot exists since `walcast setup`: the INSERT waits in it for tail.
    let mut tail = db.tail(&[]);
    db.psql("INSERT INTO orders (customer_name, product_name) VALUES ('Tess', 'Laptop')")
        .await;
    let event = tail.next_event(WAIT).await;
    assert_eq!(event["op"], "insert", "{event}");
    assert_eq!(event["new"]["customer_name"], "Tess", "{event}");
    let ssl = db
        .psql(&format!(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_replication r USING (pid) \
             WHERE r.application_name = 'walcast' AND EXISTS \
             (SELECT 1 FROM pg_replication_slots WHERE slot_name = '{}' AND active_pid = s.pid)",
            db.slot
        ))
        .await;
    assert_eq!(ssl, "t", "the walsender's connection is encrypted");

    // `walcast check` over the same settings passes without a warning
    // about encryption; to 127.0.0.1 verify-full stops with the name error.
    let out = db
        .walcast(&["check"])
        .output()
        .await
        .expect("walcast check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "check failed: {stdout}");
    assert!(!stdout.contains("not encrypted"), "{stdout}");
    assert!(
        stdout.contains("ok   connection is encrypted (sslmode=verify-full)"),
        "{stdout}"
    );
    let wrong_name = db.url.replace("localhost", "127.0.0.1");
    let out = pgtest::walcast_command()
        .args(["slot", "list", "--database-url", &wrong_name])
        .output()
        .await
        .expect("walcast slot list");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("host name mismatch: certificate is for localhost, connected to 127.0.0.1"),
        "{stderr}"
    );
}

/// The API's pool over TLS, with the TLS settings from the config's
/// `postgres.ssl*` fields (the URL names none): GET /orders answers, and a
/// wrong CA stops the API's first connection with the CA's file named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_pool_connects_over_verify_full() {
    let admin = tls_url(
        "postgres",
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={}", ca()),
    );
    let db = TestDb::create_on(&admin, "tls_api").await;
    db.psql("INSERT INTO orders (customer_name, product_name) VALUES ('Una', 'Phone')")
        .await;
    let url_without_tls = db.url.split_once('?').expect("query").0.to_owned();

    let mut config = walcast::config::Config::default();
    config.postgres.url = url_without_tls;
    config.postgres.sslmode = "verify-full".into();
    config.postgres.sslrootcert = ca();
    assert_eq!(config.validate(), vec![], "config is valid");
    let health = walcast::api::Health::new();
    let state = walcast::api::ApiState::connect(&config, health.clone())
        .await
        .expect("the API connects over TLS");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        axum::serve(listener, walcast::api::router(state))
            .await
            .expect("serve");
    });
    let response = reqwest::Client::new()
        .get(format!("http://{addr}/orders"))
        .timeout(WAIT)
        .send()
        .await
        .expect("GET /orders");
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    let body: serde_json::Value = response.json().await.expect("JSON body");
    assert_eq!(body["orders"][0]["customer_name"], "Una", "{body}");
    server.abort();

    config.postgres.sslrootcert = other_ca();
    let error = walcast::api::ApiState::connect(&config, walcast::api::Health::new())
        .await
        .expect_err("wrong CA");
    assert!(
        error.to_string().contains(&format!(
            "is not signed by the CA in sslrootcert={}",
            other_ca()
        )),
        "{error}"
    );
    assert!(!error.is_retryable(), "{error}");
}

/// `sslrootcert=system` (libpq 16): the system's roots, here the test CA
/// given through SSL_CERT_FILE as an operator would for a private store.
/// Through the binary, so the variable reaches only that process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_roots_are_used_for_sslrootcert_system() {
    let url = tls_url(
        "postgres",
        "localhost",
        "sslmode=verify-full&sslrootcert=system",
    );
    let run = |cert_file: String| {
        let url = url.clone();
        async move {
            pgtest::walcast_command()
                .args(["slot", "list", "--database-url", &url])
                .env("SSL_CERT_FILE", cert_file)
                .output()
                .await
                .expect("walcast slot list")
        }
    };
    let out = run(ca()).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(other_ca()).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("not signed by the CA in sslrootcert=system"),
        "{stderr}"
    );
    // A public CA vouches for anyone: only verify-full may use it.
    let weak = tls_url(
        "postgres",
        "localhost",
        "sslmode=require&sslrootcert=system",
    );
    let out = pgtest::walcast_command()
        .args(["slot", "list", "--database-url", &weak])
        .output()
        .await
        .expect("walcast slot list");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("sslrootcert=system needs sslmode=verify-full"),
        "{stderr}"
    );
}
