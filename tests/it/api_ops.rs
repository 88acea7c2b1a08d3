//! Operations endpoints: `/healthz`, `/readyz` following the health
//! registry and the API's own pool, `/openapi.json` agreeing with the
//! routes, and the request counters.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use walcast::api::ComponentState;

use crate::support::api_server::TestApi;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_and_readyz_follow_the_registry() {
    let api = TestApi::start("ready").await;

    let (status, body) = api.call(Method::GET, "/healthz", None).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"status": "ok"})));

    // Nothing registered yet: ready when the pool answers.
    let (status, body) = api.call(Method::GET, "/readyz", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"status": "ready", "components": [
            {"name": "api_postgres", "healthy": true, "state": "ready"}
        ]})
    );

    // Another stage reports trouble: 503, naming it and its state; the
    // reason (which may hold URLs and server messages) stays in the log.
    let stage = api.state.health().clone();
    stage.set(
        "postgres",
        ComponentState::Ready,
        "streaming from slot walcast",
    );
    stage.set(
        "rabbitmq",
        ComponentState::Reconnecting,
        "connection to amqp://walcast:s3cret@10.0.0.7:5672 refused; retrying in 2s",
    );
    let (status, body) = api.call(Method::GET, "/readyz", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["status"], "not_ready");
    assert_eq!(body["error"]["code"], "not_ready");
    assert_eq!(
        body["error"]["message"],
        "not ready: rabbitmq (reconnecting)"
    );
    assert_eq!(
        body["components"][2],
        json!({"name": "rabbitmq", "healthy": false, "state": "reconnecting"})
    );
    for secret in ["s3cret", "10.0.0.7", "refused"] {
        assert!(!body.to_string().contains(secret), "{body}");
    }
    let names: Vec<&str> = body["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["api_postgres", "postgres", "rabbitmq"]);
    // Liveness does not care.
    let (status, _) = api.call(Method::GET, "/healthz", None).await;
    assert_eq!(status, StatusCode::OK);

    // Recovered: ready again.
    stage.set("rabbitmq", ComponentState::Ready, "connected");
    let (status, body) = api.call(Method::GET, "/readyz", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.get("error").is_none());
    api.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_checks_the_api_pool_live() {
    let mut config = walcast::config::Config::default();
    config.postgres.url = "postgres://walcast:s3cret@127.0.0.1:1/nowhere".into();
    config.http.pool_timeout_ms = 500;
    let health = walcast::api::Health::new();
    let state = walcast::api::ApiState::new(&config, health.clone()).unwrap();
    let api = TestApi::serve(state, health, String::new(), String::new()).await;

    let (status, body) = api.call(Method::GET, "/readyz", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["components"][0]["name"], "api_postgres");
    assert_eq!(body["components"][0]["healthy"], false);
    assert_eq!(body["components"][0]["state"], "unavailable");
    assert_eq!(
        body["error"]["message"],
        "not ready: api_postgres (unavailable)"
    );
    assert!(!body.to_string().contains("s3cret"));
    let (status, _) = api.call(Method::GET, "/healthz", None).await;
    assert_eq!(status, StatusCode::OK);
}

/// The (path, method) pairs the router serves.
const ROUTES: [(&str, &str); 10] = [
    ("/orders", "get"),
    ("/orders", "post"),
    ("/orders/{id}", "get"),
    ("/orders/{id}", "put"),
    ("/orders/{id}", "patch"),
    ("/orders/{id}", "delete"),
    ("/healthz", "get"),
    ("/readyz", "get"),
    ("/metrics", "get"),
    ("/openapi.json", "get"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_describes_every_route_body_and_error() {
    let api = TestApi::start("openapi").await;
    let response = api.send(Method::GET, "/openapi.json", None).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/json");
    let doc: Value = response.json().await.expect("openapi.json parses");
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));

    // Exactly the served routes, each method.
    let paths = doc["paths"].as_object().unwrap();
    let mut documented: Vec<(String, String)> = paths
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .filter(|k| matches!(k.as_str(), "get" | "post" | "put" | "patch" | "delete"))
                .map(move |method| (path.clone(), method.clone()))
        })
        .collect();
    documented.sort();
    let mut served: Vec<(String, String)> = ROUTES
        .iter()
        .map(|(p, m)| (p.to_string(), m.to_string()))
        .collect();
    served.sort();
    assert_eq!(documented, served);

    // Every documented route really answers (not the 404 fallback).
    for (path, method) in ROUTES {
        let path = path.replace("{id}", "1");
        let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        // Not every route answers JSON (/metrics): the body as text.
        let response = api.send(method.clone(), &path, Some(&json!({}))).await;
        let status = response.status();
        let body = response.text().await.unwrap();
        assert!(
            !(status == StatusCode::NOT_FOUND && body.contains("no such route"))
                && status != StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}: {status} {body}"
        );
    }

    let error_ref = json!({"$ref": "#/components/schemas/ErrorBody"});
    for (path, method) in ROUTES.iter().filter(|(p, _)| p.starts_with("/orders")) {
        let operation = &doc["paths"][path][method];
        let responses = operation["responses"].as_object().unwrap();
        // Errors are described with the error body.
        for (code, response) in responses {
            if code.starts_with('4') || code.starts_with('5') {
                assert_eq!(
                    response["content"]["application/json"]["schema"], error_ref,
                    "{method} {path} {code}"
                );
            }
        }
        for code in ["400", "500", "503"] {
            assert!(responses.contains_key(code), "{method} {path} lacks {code}");
        }
        let writes = *method != "get";
        if writes {
            assert_eq!(
                operation["security"],
                json!([{"bearer": []}]),
                "{method} {path}"
            );
            assert!(responses.contains_key("401"), "{method} {path}");
        }
        if matches!(*method, "post" | "put" | "patch") {
            for code in ["413", "415", "422"] {
                assert!(responses.contains_key(code), "{method} {path} lacks {code}");
            }
            assert!(
                operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
                    .is_string()
            );
        }
        if path.contains("{id}") {
            assert!(responses.contains_key("404"), "{method} {path}");
            assert_eq!(operation["parameters"][0]["name"], "id");
        }
    }
    assert_eq!(
        doc["paths"]["/orders"]["post"]["responses"]["201"]["headers"]["Location"]["schema"]
            ["type"],
        "string"
    );
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    // /metrics is Prometheus text, open to every scraper.
    let metrics = &doc["paths"]["/metrics"]["get"];
    let content = metrics["responses"]["200"]["content"].as_object().unwrap();
    assert_eq!(
        content.keys().collect::<Vec<_>>(),
        ["text/plain; version=0.0.4; charset=utf-8"],
        "{metrics}"
    );
    assert!(metrics.get("security").is_none(), "{metrics}");
    let response = api.send(Method::GET, "/metrics", None).await;
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    assert!(response
        .text()
        .await
        .unwrap()
        .contains("# TYPE walcast_http_requests_total counter"));

    // The documented bodies are the ones the validator accepts.
    let schemas = &doc["components"]["schemas"];
    let property_names = |schema: &Value| -> Vec<String> {
        let mut names: Vec<String> = schema["properties"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        names.sort();
        names
    };
    for name in ["OrderInput", "OrderPatch"] {
        assert_eq!(
            property_names(&schemas[name]),
            vec!["customer_name", "product_name", "status"],
            "{name}"
        );
        assert_eq!(schemas[name]["additionalProperties"], false, "{name}");
        assert_eq!(
            schemas[name]["properties"]["customer_name"]["maxLength"],
            200
        );
    }
    assert_eq!(
        schemas["OrderInput"]["required"],
        json!(["customer_name", "product_name"])
    );
    assert!(schemas["OrderPatch"].get("required").is_none());
    assert_eq!(
        schemas["OrderStatus"]["enum"],
        json!(["pending", "processing", "shipped", "delivered", "cancelled"])
    );
    let order_fields = property_names(&schemas["Order"]);
    let (_, created) = api
        .call(
            Method::POST,
            "/orders",
            Some(&json!({"customer_name": "c", "product_name": "p"})),
        )
        .await;
    let mut returned: Vec<String> = created.as_object().unwrap().keys().cloned().collect();
    returned.sort();
    assert_eq!(order_fields, returned);
    assert_eq!(
        property_names(&schemas["OrderList"]),
        vec!["next_after", "orders", "snapshot", "snapshot_lsn"]
    );
    api.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_counted_by_route_and_status() {
    let api = TestApi::start("stats").await;
    for _ in 0..3 {
        api.call(Method::GET, "/orders", None).await;
    }
    api.call(Method::GET, "/orders/7", None).await;
    api.call(Method::GET, "/orders/8", None).await;
    api.call(Method::GET, "/no/such/thing", None).await;
    let stats = api.state.stats();
    assert_eq!(stats.count(&Method::GET, "/orders", 200), 3);
    // By route template, never by raw path.
    assert_eq!(stats.count(&Method::GET, "/orders/{id}", 404), 2);
    assert_eq!(stats.count(&Method::GET, "unmatched", 404), 1);
    assert!(stats
        .snapshot()
        .iter()
        .all(|(key, _)| !key.route.contains("/7") && !key.route.contains("no/such")));
    api.finish().await;
}
