//! Every error class of the API over real HTTP: status, error body shape,
//! `code` and `field`, and no SQL or internals in any of them.

use reqwest::{header, Method, StatusCode};
use serde_json::{json, Value};

use crate::support::api_server::{assert_error_shape, connect, read, TestApi};

/// Asserts status, code and field of an error response.
async fn expect_error(
    api: &TestApi,
    method: Method,
    path: &str,
    body: Option<&Value>,
    status: StatusCode,
    code: &str,
    field: Option<&str>,
) {
    let (actual, response) = api.call(method.clone(), path, body).await;
    assert_eq!(actual, status, "{method} {path} {body:?}: {response}");
    assert_eq!(
        assert_error_shape(&response),
        code,
        "{method} {path}: {response}"
    );
    assert_eq!(
        response["error"]["field"].as_str(),
        field,
        "{method} {path} {body:?}: {response}"
    );
}

/// A body sent as-is with a content type.
async fn raw(
    api: &TestApi,
    method: Method,
    path: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> (StatusCode, Value) {
    let mut request = api.http.request(method, api.url(path)).body(body);
    if let Some(content_type) = content_type {
        request = request.header(header::CONTENT_TYPE, content_type);
    }
    read(request.send().await.unwrap()).await
}

async fn create(api: &TestApi) -> i64 {
    let (status, order) = api
        .call(
            Method::POST,
            "/orders",
            Some(&json!({"customer_name": "c", "product_name": "p"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    order["id"].as_i64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_400() {
    let api = TestApi::start("e400").await;
    let id = create(&api).await;
    let one = format!("/orders/{id}");

    for (method, path) in [
        (Method::POST, "/orders"),
        (Method::PUT, one.as_str()),
        (Method::PATCH, one.as_str()),
    ] {
        for body in [
            &b"{\"customer_name\": "[..],
            b"",
            b"{'a': 1}",
            b"[1,",
            b"\"\\ud800\"",
        ] {
            let (status, response) = raw(
                &api,
                method.clone(),
                path,
                Some("application/json"),
                body.to_vec(),
            )
            .await;
            assert_eq!(
                status,
                StatusCode::BAD_REQUEST,
                "{method} {path} {body:?}: {response}"
            );
            assert_eq!(assert_error_shape(&response), "malformed_json");
        }
    }

    // Ids that are not 64-bit integers.
    for path in [
        "/orders/abc",
        "/orders/1.5",
        "/orders/99999999999999999999",
        "/orders/%20",
    ] {
        for method in [Method::GET, Method::DELETE] {
            expect_error(
                &api,
                method,
                path,
                None,
                StatusCode::BAD_REQUEST,
                "invalid_path",
                Some("id"),
            )
            .await;
        }
        for method in [Method::PUT, Method::PATCH] {
            let body = json!({"customer_name": "c", "product_name": "p"});
            expect_error(
                &api,
                method,
                path,
                Some(&body),
                StatusCode::BAD_REQUEST,
                "invalid_path",
                Some("id"),
            )
            .await;
        }
    }

    // Query parameters of the listing.
    for (query, field) in [
        ("limit=abc", Some("limit")),
        ("limit=0", Some("limit")),
        ("limit=501", Some("limit")),
        ("limit=-1", Some("limit")),
        ("after=x", Some("after")),
        ("status=lost", Some("status")),
        ("status=PENDING", Some("status")),
        ("colour=red", None),
        ("limit=1&limit=2", None),
    ] {
        expect_error(
            &api,
            Method::GET,
            &format!("/orders?{query}"),
            None,
            StatusCode::BAD_REQUEST,
            "invalid_query",
            field,
        )
        .await;
    }
    // An empty value is an absent parameter (what a form's "any" sends),
    // not a bad one.
    let (status, everything) = api.call(Method::GET, "/orders", None).await;
    assert_eq!(status, StatusCode::OK, "{everything}");
    let (status, empty) = api
        .call(Method::GET, "/orders?status=&limit=&after=", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{empty}");
    assert_eq!(empty["orders"], everything["orders"]);
    api.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_things_are_404_and_wrong_methods_405() {
    let api = TestApi::start("e404").await;
    let body = json!({"customer_name": "c", "product_name": "p"});
    for id in ["999999", "0", "-5"] {
        let path = format!("/orders/{id}");
        expect_error(
            &api,
            Method::GET,
            &path,
            None,
            StatusCode::NOT_FOUND,
            "not_found",
            None,
        )
        .await;
        expect_error(
            &api,
            Method::PUT,
            &path,
            Some(&body),
            StatusCode::NOT_FOUND,
            "not_found",
            None,
        )
        .await;
        expect_error(
            &api,
            Method::PATCH,
            &path,
            Some(&json!({"status": "shipped"})),
            StatusCode::NOT_FOUND,
            "not_found",
            None,
        )
        .await;
        expect_error(
            &api,
            Method::PATCH,
            &path,
            Some(&json!({})),
            StatusCode::NOT_FOUND,
            "not_found",
            None,
        )
        .await;
        expect_error(
            &api,
            Method::DELETE,
            &path,
            None,
            StatusCode::NOT_FOUND,
            "not_found",
            None,
        )
        .await;
    }
    // `/` is the dashboard (dashboard_assets.rs).
    for path in ["/nope", "/orders/", "/orders/1/items", "/index.html"] {
        expect_error(
            &api,
            Method::GET,
            path,
            None,
            StatusCode::NOT_FOUND,
            "not_found",
            None,
        )
        .await;
    }
    expect_error(
        &api,
        Method::POST,
        "/orders/1",
        Some(&body),
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        None,
    )
    .await;
    expect_error(
        &api,
        Method::DELETE,
        "/orders",
        None,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        None,
    )
    .await;
    expect_error(
        &api,
        Method::POST,
        "/healthz",
        None,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        None,
    )
    .await;
    api.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_limit_are_413() {
    let api = TestApi::start("e413").await;
    let id = create(&api).await;
    let one = format!("/orders/{id}");
    // Just over the default 64 KiB, as valid JSON, so only the size is wrong.
    let big = json!({"customer_name": "x".repeat(64 * 1024), "product_name": "p"});
    for (method, path) in [
        (Method::POST, "/orders"),
        (Method::PUT, one.as_str()),
        (Method::PATCH, one.as_str()),
    ] {
        expect_error(
            &api,
            method,
            path,
            Some(&big),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            None,
        )
        .await;
    }
    // At the limit it is read, and then refused for its content instead.
    let padding = 64 * 1024 - r#"{"customer_name":"","product_name":"p"}"#.len();
    let at_limit = json!({"customer_name": "x".repeat(padding), "product_name": "p"});
    assert_eq!(serde_json::to_vec(&at_limit).unwrap().len(), 64 * 1024);
    expect_error(
        &api,
        Method::POST,
        "/orders",
        Some(&at_limit),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
        Some("customer_name"),
    )
    .await;
    api.finish().await;

    // The limit is the configured one.
    let api = TestApi::start_with("e413b", |c| c.http.body_limit_bytes = 1024).await;
    let body = json!({"customer_name": "x".repeat(1100), "product_name": "p"});
    expect_error(
        &api,
        Method::POST,
        "/orders",
        Some(&body),
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        None,
    )
    .await;
    api.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_not_declared_as_json_are_415() {
    let api = TestApi::start("e415").await;
    let id = create(&api).await;
    let one = format!("/orders/{id}");
    let body = br#"{"customer_name": "c", "product_name": "p"}"#.to_vec();
    for (method, path) in [
        (Method::POST, "/orders"),
        (Method::PUT, one.as_str()),
        (Method::PATCH, one.as_str()),
    ] {
        for content_type in [
            None,
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
            Some("multipart/form-data; boundary=x"),
        ] {
            let (status, response) =
                raw(&api, method.clone(), path, content_type, body.clone()).await;
            assert_eq!(
                status,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "{content_type:?}: {response}"
            );
            assert_eq!(assert_error_shape(&response), "unsupported_media_type");
        }
    }
    // Parameters and +json types are JSON.
    let (status, _) = raw(
        &api,
        Method::POST,
        "/orders",
        Some("application/json; charset=utf-8"),
        body,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    api.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_validation_rule_is_422_with_its_field() {
    let api = TestApi::start("e422").await;
    let id = create(&api).await;
    let one = format!("/orders/{id}");
    let long = "é".repeat(201);

    // (body, code, field) for POST, which needs both names; PUT takes any
    // subset (contract section 4), so it gets every case but the missing
    // names.
    let full_cases: Vec<(Value, &str, Option<&str>)> = vec![
        (
            json!({"product_name": "p"}),
            "missing_field",
            Some("customer_name"),
        ),
        (
            json!({"customer_name": "c"}),
            "missing_field",
            Some("product_name"),
        ),
        (json!({}), "missing_field", Some("customer_name")),
        (
            json!({"customer_name": "", "product_name": "p"}),
            "invalid_field",
            Some("customer_name"),
        ),
        (
            json!({"customer_name": "  \t\n ", "product_name": "p"}),
            "invalid_field",
            Some("customer_name"),
        ),
        (
            json!({"customer_name": "c", "product_name": "   "}),
            "invalid_field",
            Some("product_name"),
        ),
        (
            json!({"customer_name": long, "product_name": "p"}),
            "invalid_field",
            Some("customer_name"),
        ),
        (
            json!({"customer_name": "c", "product_name": long}),
            "invalid_field",
            Some("product_name"),
        ),
        (
            json!({"customer_name": "c", "product_name": "p", "status": "lost"}),
            "invalid_field",
            Some("status"),
        ),
        (
            json!({"customer_name": "c", "product_name": "p", "status": "Shipped"}),
            "invalid_field",
            Some("status"),
        ),
        (
            json!({"customer_name": 42, "product_name": "p"}),
            "invalid_type",
            Some("customer_name"),
        ),
        (
            json!({"customer_name": null, "product_name": "p"}),
            "invalid_type",
            Some("customer_name"),
        ),
        (
            json!({"customer_name": "c", "product_name": ["p"]}),
            "invalid_type",
            Some("product_name"),
        ),
        (
            json!({"customer_name": "c", "product_name": {"name": "p"}}),
            "invalid_type",
            Some("product_name"),
        ),
        (
            json!({"customer_name": "c", "product_name": "p", "status": true}),
            "invalid_type",
            Some("status"),
        ),
        (
            json!({"customer_name": "c", "product_name": "p", "status": null}),
            "invalid_type",
            Some("status"),
        ),
        (
            json!({"customer_name": "c", "product_name": "p", "colour": "red"}),
            "unknown_field",
            Some("colour"),
        ),
        (
            json!({"customer_name": "c", "product_name": "p", "id": 7}),
            "read_only_field",
            Some("id"),
        ),
        (
            json!({"customer_name": "c", "product_name": "p", "updated_at": "2026-01-01T00:00:00"}),
            "read_only_field",
            Some("updated_at"),
        ),
        (
            json!({"customer_name": "nul\u{0}", "product_name": "p"}),
            "invalid_field",
            Some("customer_name"),
        ),
        (
            json!([{"customer_name": "c", "product_name": "p"}]),
            "invalid_body",
            None,
        ),
        (json!("c"), "invalid_body", None),
        (json!(null), "invalid_body", None),
        (json!(17), "invalid_body", None),
    ];
    for (body, code, field) in &full_cases {
        expect_error(
            &api,
            Method::POST,
            "/orders",
            Some(body),
            StatusCode::UNPROCESSABLE_ENTITY,
            code,
            *field,
        )
        .await;
        if *code == "missing_field" {
            continue;
        }
        expect_error(
            &api,
            Method::PUT,
            &one,
            Some(body),
            StatusCode::UNPROCESSABLE_ENTITY,
            code,
            *field,
        )
        .await;
    }
    // PATCH and PUT need no field, but whatever they name must be valid.
    let patch_cases: Vec<(Value, &str, Option<&str>)> = vec![
        (
            json!({"customer_name": ""}),
            "invalid_field",
            Some("customer_name"),
        ),
        (
            json!({"product_name": long}),
            "invalid_field",
            Some("product_name"),
        ),
        (json!({"status": "lost"}), "invalid_field", Some("status")),
        (json!({"status": 3}), "invalid_type", Some("status")),
        (
            json!({"customer_name": null}),
            "invalid_type",
            Some("customer_name"),
        ),
        (json!({"staus": "shipped"}), "unknown_field", Some("staus")),
        (
            json!({"created_at": "x"}),
            "read_only_field",
            Some("created_at"),
        ),
        (json!([]), "invalid_body", None),
    ];
    for (body, code, field) in &patch_cases {
        for method in [Method::PATCH, Method::PUT] {
            expect_error(
                &api,
                method,
                &one,
                Some(body),
                StatusCode::UNPROCESSABLE_ENTITY,
                code,
                *field,
            )
            .await;
        }
    }
    // Exactly 200 characters (after trimming) is fine.
    let (status, order) = api
        .call(
            Method::POST,
            "/orders",
            Some(
                &json!({"customer_name": format!("  {}  ", "é".repeat(200)), "product_name": "p"}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{order}");
    assert_eq!(
        order["customer_name"].as_str().unwrap().chars().count(),
        200
    );

    // Nothing invalid was written.
    let db = connect(&api.db_url).await;
    let count: i64 = db
        .query_one("SELECT count(*) FROM orders", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 2);
    let (_, order) = api.call(Method::GET, &one, None).await;
    assert_eq!(
        (order["customer_name"].as_str(), order["status"].as_str()),
        (Some("c"), Some("pending"))
    );
    api.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unique_conflicts_are_409() {
    let api = TestApi::start("e409").await;
    // psql users may insert explicit ids; the identity sequence does not
    // know, and the API's next insert collides.
    let db = connect(&api.db_url).await;
    db.batch_execute(
        "INSERT INTO orders (id, customer_name, product_name) VALUES (1, 'psql', 'psql')",
    )
    .await
    .unwrap();
    let body = json!({"customer_name": "api", "product_name": "api"});
    expect_error(
        &api,
        Method::POST,
        "/orders",
        Some(&body),
        StatusCode::CONFLICT,
        "conflict",
        None,
    )
    .await;
    // The sequence moved on: the next one works.
    let (status, order) = api.call(Method::POST, "/orders", Some(&body)).await;
    assert_eq!(status, StatusCode::CREATED, "{order}");
    assert_eq!(order["id"], 2);
    api.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_is_503_without_internals() {
    let mut config = walcast::config::Config::default();
    // Nothing listens on port 1; the password must never show.
    config.postgres.url = "postgres://walcast:s3cret@127.0.0.1:1/nowhere".into();
    config.http.pool_timeout_ms = 1000;
    let health = walcast::api::Health::new();
    let state = walcast::api::ApiState::new(&config, health.clone()).unwrap();
    assert!(walcast::api::ApiState::connect(&config, health.clone())
        .await
        .is_err());
    let api = TestApi::serve(state, health, String::new(), String::new()).await;

    let body = json!({"customer_name": "c", "product_name": "p"});
    for (method, path, body) in [
        (Method::GET, "/orders", None),
        (Method::GET, "/orders/1", None),
        (Method::POST, "/orders", Some(&body)),
        (Method::PUT, "/orders/1", Some(&body)),
        (Method::PATCH, "/orders/1", Some(&body)),
        (Method::DELETE, "/orders/1", None),
    ] {
        let response = api.send(method.clone(), path, body).await;
        assert_eq!(
            response.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "{method} {path}"
        );
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        let (_, response) = read(response).await;
        assert_eq!(assert_error_shape(&response), "unavailable");
        let text = response.to_string();
        assert!(
            !text.contains("s3cret") && !text.contains("127.0.0.1") && !text.contains("refused"),
            "{text}"
        );
    }
    // Requests are validated before the database is needed.
    expect_error(
        &api,
        Method::POST,
        "/orders",
        Some(&json!({})),
        StatusCode::UNPROCESSABLE_ENTITY,
        "missing_field",
        Some("customer_name"),
    )
    .await;
    // The API still answers liveness.
    let (status, _) = api.call(Method::GET, "/healthz", None).await;
    assert_eq!(status, StatusCode::OK);
}
