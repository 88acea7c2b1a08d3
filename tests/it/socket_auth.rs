//! Socket.IO handshake auth of the real `walcast run` binary (all roles,
//! auth on with a static token and an HS256 secret), spoken to by the real
//! socket.io-client in Node.
//!
//! Refused: no token, a wrong static token, an expired JWT, a JWT signed
//! with another secret, a wrong token in the `Authorization` header; each
//! gets a `connect_error` whose message starts with "unauthorized".
//! Accepted: the static token and a valid JWT in `auth.token`, and the
//! static token in an `Authorization` header whose scheme is not spelled
//! `Bearer`; each receives the change a psql INSERT makes. Finally, no
//! token used appears in walcast's log, which runs at debug level for
//! walcast itself so that the refusal paths log too.

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use crate::support::pgtest::TestDb;
use crate::support::sio;
use crate::support::sio::NodeClient;
use crate::support::stack::{log_tail, shared_amqp_url, unique, RunSpec, Walcast};

const TOKEN: &str = "socket-static-token-0123456789";
const WRONG_TOKEN: &str = "socket-wrong-token-9876543210";
const SECRET: &str = "socket-jwt-secret-0123456789-0123456789-xyz";
const OTHER_SECRET: &str = "another-secret-0123456789-0123456789-abcdef";

fn jwt(secret: &str, exp_offset: i64) -> String {
    let exp = jsonwebtoken::get_current_timestamp() as i64 + exp_offset;
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "socket-test", "exp": exp}),
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// Node client options for `url` with handshake `auth` and, optionally, an
/// `Authorization` header.
fn options(url: &str, auth: Value, authorization: Option<&str>) -> Value {
    let mut options = json!({"url": url, "auth": auth});
    if let Some(value) = authorization {
        options["extraHeaders"] = json!({"Authorization": value});
    }
    options
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_handshakes_need_a_valid_token_and_tokens_stay_out_of_the_log() {
    let db = TestDb::create("sockauth").await;
    let exchange = unique("sockauth");
    let spec = RunSpec {
        amqp_url: shared_amqp_url(),
        queue: format!("{exchange}.gateway"),
        exchange,
        roles: "capture,gateway,api",
        replay_dir: None,
    };
    let walcast = Walcast::start_with_env(
        &db,
        &spec,
        &[
            ("WALCAST_AUTH_ENABLED", "true"),
            ("WALCAST_AUTH_TOKENS", TOKEN),
            ("WALCAST_AUTH_JWT_SECRET", SECRET),
            ("RUST_LOG", "info,walcast=debug"),
        ],
    )
    .await;
    walcast.wait_ready().await;
    let url = walcast.url();

    let valid_jwt = jwt(SECRET, 600);
    let expired_jwt = jwt(SECRET, -3600);
    let foreign_jwt = jwt(OTHER_SECRET, 600);
    let wrong_header = format!("Bearer {WRONG_TOKEN}");

    // --- refused ----------------------------------------------------------
    let refusals: Vec<(&str, Value, Option<&str>)> = vec![
        ("no token", json!({}), None),
        ("wrong static token", json!({"token": WRONG_TOKEN}), None),
        ("expired jwt", json!({"token": expired_jwt}), None),
        ("jwt of another secret", json!({"token": foreign_jwt}), None),
        ("wrong token in the header", json!({}), Some(&wrong_header)),
    ];
    for (what, auth, authorization) in &refusals {
        let mut client = NodeClient::spawn_with(options(&url, auth.clone(), *authorization));
        let line = client.next().await;
        assert_eq!(line.kind(), "connect_error", "{what}: {line:?}");
        let message = line.0["message"].as_str().unwrap_or_default();
        assert!(
            message.starts_with("unauthorized"),
            "{what}: connect_error message {message:?}"
        );
        if *what == "expired jwt" {
            assert!(message.contains("expired"), "{what}: {message:?}");
        }
        for secret in [TOKEN, SECRET] {
            assert!(!message.contains(secret), "{what}: {message:?}");
        }
    }

    // --- accepted ---------------------------------------------------------
    let static_header = format!("bearer {TOKEN}");
    let accepted: Vec<(&str, Value, Option<&str>)> = vec![
        ("static token", json!({"token": TOKEN}), None),
        ("hs256 jwt", json!({"token": valid_jwt}), None),
        (
            "static token in a lower-case bearer header",
            json!({}),
            Some(&static_header),
        ),
    ];
    let mut clients = Vec::new();
    for (what, auth, authorization) in &accepted {
        let mut client = NodeClient::spawn_with(options(&url, auth.clone(), *authorization));
        let line = client.next().await;
        assert_eq!(line.kind(), "connect", "{what}: {line:?}");
        clients.push((*what, client));
    }
    db.psql("INSERT INTO orders (customer_name, product_name) VALUES ('Ada', 'lamp')")
        .await;
    for (what, client) in &mut clients {
        let change: Value = serde_json::from_str(&client.changes(1).await[0]).unwrap();
        assert_eq!(change["op"], "insert", "{what}: {change}");
        assert_eq!(change["new"]["customer_name"], "Ada", "{what}: {change}");
    }
    for (_, client) in clients {
        client.close().await;
    }

    // Every refusal was counted.
    let metrics = reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(&format!(
            "walcast_fanout_connects_refused_total {}\n",
            refusals.len()
        )),
        "{metrics}"
    );

    // --- nothing secret in the log -----------------------------------------
    let log = walcast.stop().await;
    assert!(
        log.contains("authorizer refused handshake"),
        "the refusals are logged (else this check proves nothing):\n{}",
        log_tail(&log)
    );
    for (what, secret) in [
        ("static token", TOKEN),
        ("wrong token", WRONG_TOKEN),
        ("jwt secret", SECRET),
        ("valid jwt", valid_jwt.as_str()),
        ("expired jwt", expired_jwt.as_str()),
        ("foreign jwt", foreign_jwt.as_str()),
    ] {
        assert!(!log.contains(secret), "the {what} is in walcast's log");
    }
    sio::Publisher::connect(&spec.exchange)
        .await
        .delete(&spec.queue)
        .await;
}

fn jwt_with(claims: Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// With `auth.jwt_audience` and `auth.jwt_issuer` set, a JWT naming
/// another audience or issuer is refused by the HTTP API (401) and the
/// Socket.IO handshake (`connect_error`) alike; a socket admitted with a
/// JWT is disconnected when the token expires (leeway 0 here), while one
/// admitted with a static token stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_audience_issuer_and_expiry_are_enforced() {
    let db = TestDb::create("sockjwt").await;
    let exchange = unique("sockjwt");
    let spec = RunSpec {
        amqp_url: shared_amqp_url(),
        queue: format!("{exchange}.gateway"),
        exchange,
        roles: "capture,gateway,api",
        replay_dir: None,
    };
    let walcast = Walcast::start_with_env(
        &db,
        &spec,
        &[
            ("WALCAST_AUTH_ENABLED", "true"),
            ("WALCAST_AUTH_TOKENS", TOKEN),
            ("WALCAST_AUTH_JWT_SECRET", SECRET),
            ("WALCAST_AUTH_JWT_AUDIENCE", "walcast-test"),
            ("WALCAST_AUTH_JWT_ISSUER", "https://id.example.test"),
            ("WALCAST_AUTH_JWT_LEEWAY_SECS", "0"),
        ],
    )
    .await;
    walcast.wait_ready().await;
    let url = walcast.url();
    let now = jsonwebtoken::get_current_timestamp();
    let (aud, iss) = ("walcast-test", "https://id.example.test");
    let good = jwt_with(json!({"exp": now + 600, "aud": aud, "iss": iss}));
    let wrong: Vec<(&str, String)> = vec![
        (
            "wrong audience",
            jwt_with(json!({"exp": now + 600, "aud": "other", "iss": iss})),
        ),
        (
            "no audience",
            jwt_with(json!({"exp": now + 600, "iss": iss})),
        ),
        (
            "wrong issuer",
            jwt_with(json!({"exp": now + 600, "aud": aud, "iss": "https://evil.test"})),
        ),
        ("no issuer", jwt_with(json!({"exp": now + 600, "aud": aud}))),
    ];

    // HTTP: a write with each token.
    let http = reqwest::Client::new();
    let create = |token: &str| {
        http.post(format!("{url}/orders"))
            .bearer_auth(token)
            .json(&json!({"customer_name": "Ada", "product_name": "lamp"}))
            .send()
    };
    assert_eq!(create(&good).await.unwrap().status(), 201);
    for (what, token) in &wrong {
        assert_eq!(create(token).await.unwrap().status(), 401, "{what}");
    }

    // Socket.IO: the same tokens in the handshake.
    for (what, token) in &wrong {
        let mut client = NodeClient::spawn_with(options(&url, json!({"token": token}), None));
        let line = client.next().await;
        assert_eq!(line.kind(), "connect_error", "{what}: {line:?}");
    }

    // Expiry: a JWT valid for 3 more seconds, beside a static token.
    let short =
        jwt_with(json!({"exp": jsonwebtoken::get_current_timestamp() + 3, "aud": aud, "iss": iss}));
    let mut expiring = NodeClient::spawn_with(options(&url, json!({"token": short}), None));
    assert_eq!(expiring.next().await.kind(), "connect");
    let mut lasting = NodeClient::spawn_with(options(&url, json!({"token": TOKEN}), None));
    assert_eq!(lasting.next().await.kind(), "connect");
    let mut expiring_changes = 0;
    let line = loop {
        let line = expiring
            .next_within(Duration::from_secs(15))
            .await
            .expect("the socket is disconnected within 15 s of its token's expiry");
        if line.kind() == "change" {
            expiring_changes += 1; // the insert above
            continue;
        }
        break line;
    };
    assert_eq!(line.kind(), "disconnect", "{line:?}");
    // A server-side disconnect, not a transport failure.
    assert_eq!(line.0["reason"], "io server disconnect", "{line:?}");
    assert!(expiring_changes <= 1);

    // The static-token socket is still served.
    db.psql("INSERT INTO orders (customer_name, product_name) VALUES ('Bo', 'desk')")
        .await;
    let change: Value = serde_json::from_str(&lasting.changes(1).await.pop().unwrap()).unwrap();
    assert_eq!(change["new"]["customer_name"], "Bo", "{change}");
    lasting.close().await;

    let metrics = reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("walcast_fanout_disconnects_total{reason=\"token_expired\"} 1\n"),
        "{metrics}"
    );
    walcast.stop().await;
    sio::Publisher::connect(&spec.exchange)
        .await
        .delete(&spec.queue)
        .await;
}
