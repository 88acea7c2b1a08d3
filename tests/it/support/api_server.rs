//! Test support for the HTTP API tests: a database of the test's own in the
//! logical cluster with walcast's schema, and `walcast::api::router` served
//! on a loopback port, spoken to over real HTTP.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use reqwest::{Client, Method, Response, StatusCode};
use serde_json::Value;
use tokio_postgres::NoTls;
use walcast::api::{router, ApiState, Health};
use walcast::config::Config;

/// Every request of these tests is bounded by this.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

use super::pgtest::{pg_url, with_db};

/// A connection to `url`, driven in the background.
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| {
            panic!("connect to {url}: {e} (is the test cluster up? scripts/ensure-services.sh)")
        });
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A running API over a fresh database. Call [`TestApi::finish`] at the
/// end to drop the database.
pub struct TestApi {
    pub base: String,
    pub http: Client,
    pub db_name: String,
    pub db_url: String,
    pub state: ApiState,
    server: tokio::task::JoinHandle<()>,
}

impl TestApi {
    /// Auth off, default limits.
    pub async fn start(prefix: &str) -> TestApi {
        Self::start_with(prefix, |_| {}).await
    }

    /// With the config adjusted by `adjust` (auth, limits) before starting.
    pub async fn start_with(prefix: &str, adjust: impl FnOnce(&mut Config)) -> TestApi {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let db_name = format!("walcast_api_{prefix}_{}_{n}", std::process::id());
        let admin = connect(&pg_url()).await;
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {db_name} WITH (FORCE)"))
            .await
            .unwrap();
        admin
            .batch_execute(&format!("CREATE DATABASE {db_name}"))
            .await
            .unwrap();
        let db_url = with_db(&pg_url(), &db_name);
        connect(&db_url)
            .await
            .batch_execute(walcast::catalog::SCHEMA_SQL)
            .await
            .expect("apply schema.sql");

        let mut config = Config::default();
        config.postgres.url = db_url.clone();
        config.http.pool_size = 4;
        adjust(&mut config);
        assert_eq!(config.validate(), vec![], "test config is valid");
        let health = Health::new();
        let state = ApiState::connect(&config, health.clone())
            .await
            .expect("api state");
        Self::serve(state, health, db_name, db_url).await
    }

    /// Serves an already built state (e.g. one whose database is down).
    pub async fn serve(
        state: ApiState,
        health: Health,
        db_name: String,
        db_url: String,
    ) -> TestApi {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // /metrics as `walcast run` mounts it: after the API's layers.
        let metrics = walcast::metrics::Metrics::new(health.clone());
        metrics.watch_requests(state.stats().clone());
        let app = router(state.clone()).route(
            "/metrics",
            axum::routing::get(walcast::metrics::serve).with_state(metrics),
        );
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("serve");
        });
        TestApi {
            base: format!("http://{addr}"),
            http: Client::builder().timeout(REQUEST_TIMEOUT).build().unwrap(),
            db_name,
            db_url,
            state,
            server,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// A request with a JSON body (or none).
    pub async fn send(&self, method: Method, path: &str, body: Option<&Value>) -> Response {
        let mut request = self.http.request(method, self.url(path));
        if let Some(body) = body {
            request = request.json(body);
        }
        request.send().await.expect("send request")
    }

    /// Status and JSON body (`Null` for an empty body).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> (StatusCode, Value) {
        read(self.send(method, path, body).await).await
    }

    /// Drops the database (best effort) and stops the server.
    pub async fn finish(mut self) {
        self.server.abort();
        let db_name = std::mem::take(&mut self.db_name);
        drop_database(&db_name).await;
    }
}

/// A test that panicked never reaches `finish`: drop its database here,
/// on a thread of its own since `Drop` cannot await.
impl Drop for TestApi {
    fn drop(&mut self) {
        self.server.abort();
        let db_name = std::mem::take(&mut self.db_name);
        if db_name.is_empty() {
            return;
        }
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(drop_database(&db_name));
        })
        .join();
    }
}

async fn drop_database(db_name: &str) {
    if db_name.is_empty() {
        return;
    }
    let Ok((admin, connection)) = tokio_postgres::connect(&pg_url(), NoTls).await else {
        return;
    };
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let _ = admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {db_name} WITH (FORCE)"))
        .await;
}

/// Status and JSON body of a response (`Null` for an empty body).
pub async fn read(response: Response) -> (StatusCode, Value) {
    let status = response.status();
    let bytes = response.bytes().await.expect("read body");
    if bytes.is_empty() {
        return (status, Value::Null);
    }
    let body = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "status {status}: body is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&bytes)
        )
    });
    (status, body)
}

/// Asserts the error shape: `{"error": {"code", "message", "field"?}}`
/// and nothing else, and returns the code.
pub fn assert_error_shape(body: &Value) -> String {
    let object = body
        .as_object()
        .unwrap_or_else(|| panic!("error body is an object: {body}"));
    assert_eq!(object.len(), 1, "only `error`: {body}");
    let error = body["error"]
        .as_object()
        .unwrap_or_else(|| panic!("`error` is an object: {body}"));
    assert!(error["code"].is_string(), "{body}");
    assert!(error["message"].is_string(), "{body}");
    for key in error.keys() {
        assert!(
            matches!(key.as_str(), "code" | "message" | "field"),
            "unexpected key {key}: {body}"
        );
    }
    if let Some(field) = error.get("field") {
        assert!(field.is_string(), "{body}");
    }
    assert_no_sql(body);
    error["code"].as_str().unwrap().to_owned()
}

/// No SQL text, SQLSTATE wording or server internals in a response body.
pub fn assert_no_sql(body: &Value) {
    let text = body.to_string().to_ascii_lowercase();
    for needle in [
        "select ",
        "insert ",
        "update ",
        "delete from",
        "violates",
        "constraint",
        "relation ",
        "sqlstate",
        "db error",
        "postgres://",
        "orders_",
        "tokio",
        "panicked",
    ] {
        assert!(!text.contains(needle), "{needle:?} in {body}");
    }
}

/// Asserts an order's shape and returns its id.
pub fn assert_order_shape(order: &Value) -> i64 {
    let object = order
        .as_object()
        .unwrap_or_else(|| panic!("order is an object: {order}"));
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        vec![
            "created_at",
            "customer_name",
            "id",
            "product_name",
            "status",
            "updated_at"
        ],
        "{order}"
    );
    for field in ["created_at", "updated_at"] {
        let text = order[field].as_str().unwrap();
        assert!(is_event_timestamp(text), "{field} {text:?}");
    }
    assert!(order["customer_name"].is_string() && order["product_name"].is_string());
    assert!(matches!(
        order["status"].as_str().unwrap(),
        "pending" | "processing" | "shipped" | "delivered" | "cancelled"
    ));
    order["id"].as_i64().expect("id is a JSON integer")
}

/// `2026-11-22T05:04:10.580065`: always six fraction digits (contract §1).
pub fn is_event_timestamp(text: &str) -> bool {
    let bytes = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| bytes[range].iter().all(u8::is_ascii_digit);
    bytes.len() == 26
        && digits(0..4)
        && bytes[4] == b'-'
        && digits(5..7)
        && bytes[7] == b'-'
        && digits(8..10)
        && bytes[10] == b'T'
        && digits(11..13)
        && bytes[13] == b':'
        && digits(14..16)
        && bytes[16] == b':'
        && digits(17..19)
        && bytes[19] == b'.'
        && digits(20..26)
}
