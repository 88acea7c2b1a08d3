//! amqps:// against a RabbitMQ node of the test's own with a TLS listener
//! that requires a client certificate, with certificates the test makes
//! (openssl CLI): a psql INSERT travels capture → RabbitMQ (TLS) → gateway
//! → a Socket.IO client, and every way TLS can fail is named: unknown CA,
//! host name mismatch, a plain server on an amqps URL, no client
//! certificate, unreadable files, TLS files with an amqp:// URL.
//!
//! One node for all of it: starting a RabbitMQ node takes seconds.

use std::time::Duration;

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use walcast::config::RabbitConfig;
use walcast::publisher::{PublishError, Publisher};

use crate::support::certs::TestPki;
use crate::support::pgtest::TestDb;
use crate::support::rabbit_node::{RabbitNode, TlsListener};
use crate::support::sio::NodeClient;
use crate::support::stack;
use crate::support::stack::{unique, RunSpec, Walcast};

const TIMEOUT: Duration = Duration::from_secs(60);

/// `Publisher::connect` with these settings; fails the test if it neither
/// connects nor gives up within 20 s (a TLS failure must not be retried
/// forever).
async fn connect(config: &RabbitConfig) -> Result<Publisher, PublishError> {
    let shutdown = CancellationToken::new();
    let guard = shutdown.clone().drop_guard();
    let result = tokio::time::timeout(
        Duration::from_secs(20),
        Publisher::connect(config, shutdown),
    )
    .await;
    drop(guard);
    match result {
        Ok(result) => result,
        Err(_) => panic!("connect kept retrying with {config:?}"),
    }
}

fn tls_config(pki: &TestPki, url: String) -> RabbitConfig {
    RabbitConfig {
        url,
        exchange: unique("exchange"),
        max_backoff_ms: 200,
        tls_ca_file: pki.file("ca.pem"),
        tls_cert_file: pki.file("client.pem"),
        tls_key_file: pki.file("client.key"),
        ..RabbitConfig::default()
    }
}

fn expect_error(result: Result<Publisher, PublishError>, needles: &[&str]) {
    let error = match result {
        Ok(_) => panic!("connected, expected an error with {needles:?}"),
        Err(e) => e.to_string(),
    };
    for needle in needles {
        assert!(error.contains(needle), "{needle:?} missing in: {error}");
    }
    assert!(!error.contains("guest:guest"), "password shown: {error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn amqps_end_to_end_and_every_tls_failure_is_named() {
    let pki = TestPki::create("amqp-tls");
    let node = RabbitNode::start_with_tls(
        "tls",
        &TlsListener {
            ca_file: pki.path("ca.pem"),
            cert_file: pki.path("server.pem"),
            key_file: pki.path("server.key"),
            require_client_certificate: true,
        },
    );
    let tls_port = node.tls_port.unwrap();
    let amqps = format!("amqps://guest:guest@localhost:{tls_port}/%2f");

    // The right CA, the right name, a client certificate: connected.
    let publisher = connect(&tls_config(&pki, amqps.clone()))
        .await
        .expect("amqps with the right CA and a client certificate");
    drop(publisher);

    // Another CA signed the server's certificate.
    let mut wrong_ca = tls_config(&pki, amqps.clone());
    wrong_ca.tls_ca_file = pki.file("other-ca.pem");
    expect_error(
        connect(&wrong_ca).await,
        &["not signed by a CA", "rabbitmq.tls_ca_file", "localhost"],
    );
    // No CA file: the public roots do not know the test CA either.
    let mut no_ca = tls_config(&pki, amqps.clone());
    no_ca.tls_ca_file = String::new();
    expect_error(connect(&no_ca).await, &["not signed by a CA"]);

    // The certificate names localhost, not 127.0.0.1.
    let by_ip = tls_config(
        &pki,
        format!("amqps://guest:guest@127.0.0.1:{tls_port}/%2f"),
    );
    expect_error(connect(&by_ip).await, &["not valid for the host name"]);

    // amqps:// to the plain AMQP port.
    let plain = tls_config(
        &pki,
        format!("amqps://guest:guest@localhost:{}/%2f", node.port),
    );
    expect_error(connect(&plain).await, &["did not answer with TLS", "5671"]);

    // The broker requires a client certificate.
    let mut anonymous = tls_config(&pki, amqps.clone());
    anonymous.tls_cert_file = String::new();
    anonymous.tls_key_file = String::new();
    expect_error(
        connect(&anonymous).await,
        &["client certificate", "rabbitmq.tls_cert_file"],
    );

    // An unreadable key file is named, before any connection.
    let mut missing = tls_config(&pki, amqps.clone());
    missing.tls_key_file = pki.file("nonexistent.key");
    expect_error(
        connect(&missing).await,
        &["rabbitmq.tls_key_file", "nonexistent.key"],
    );

    // End to end through the binary: psql → capture → amqps → gateway →
    // Socket.IO client, both stages on the TLS listener.
    let db = TestDb::create("amqp_tls").await;
    let spec = RunSpec {
        amqp_url: amqps.clone(),
        exchange: unique("exchange"),
        queue: unique("gateway"),
        roles: "capture,gateway,api",
        replay_dir: None,
    };
    let env = [
        ("WALCAST_RABBITMQ_TLS_CA_FILE", pki.file("ca.pem")),
        ("WALCAST_RABBITMQ_TLS_CERT_FILE", pki.file("client.pem")),
        ("WALCAST_RABBITMQ_TLS_KEY_FILE", pki.file("client.key")),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let walcast = Walcast::start_with_env(&db, &spec, &env).await;
    walcast.wait_ready().await;
    let mut client = NodeClient::connect(&walcast.url(), json!({})).await;
    db.psql("INSERT INTO orders (customer_name, product_name) VALUES ('tls', 'over amqps')")
        .await;
    let line = client
        .next_within(TIMEOUT)
        .await
        .unwrap_or_else(|| panic!("no change; log:\n{}", stack::log_tail(&walcast.log())));
    assert_eq!(line.kind(), "change", "{:?}", line.0);
    let event: Value = serde_json::from_str(line.raw()).unwrap();
    assert_eq!(event["op"], "insert", "{event}");
    assert_eq!(event["new"]["customer_name"], "tls", "{event}");
    // Both connections are TLS connections on the node.
    let connections = node.ctl(&[
        "list_connections",
        "-q",
        "ssl",
        "client_properties",
        "--formatter",
        "json",
    ]);
    let connections: Vec<Value> = serde_json::from_slice(&connections.stdout).unwrap();
    let names: Vec<String> = connections.iter().map(Value::to_string).collect();
    assert_eq!(connections.len(), 2, "{names:?}");
    assert!(
        connections.iter().all(|c| c["ssl"] == true),
        "a connection without TLS: {names:?}"
    );
    for name in ["walcast publisher", "walcast gateway"] {
        assert!(names.iter().any(|c| c.contains(name)), "{name}: {names:?}");
    }
    let log = walcast.stop().await;
    assert!(!log.contains("panicked"), "{log}");
}

/// TLS files with a plain amqp:// URL, or a certificate without its key,
/// are configuration errors that name the fields.
#[test]
fn tls_settings_without_amqps_or_half_a_client_certificate_are_refused() {
    let mut config = walcast::config::Config::default();
    config.rabbitmq.tls_ca_file = "/etc/ssl/ca.pem".into();
    config.rabbitmq.tls_cert_file = "/etc/ssl/client.pem".into();
    let problems = format!("{:?}", config.validate());
    assert!(problems.contains("use amqps://"), "{problems}");
    assert!(problems.contains("rabbitmq.tls_key_file"), "{problems}");
}
