//! The dashboard's files as the API router serves them (no database needed:
//! the API connects lazily), and the unit tests of walcast-client's hand-off
//! rules, which the page is built on (`clients/js/test/rowbook.test.mjs`,
//! run with `node --test`).

use std::path::Path;
use std::time::Duration;

use reqwest::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, ETAG, IF_NONE_MATCH,
    X_CONTENT_TYPE_OPTIONS,
};
use reqwest::{Client, StatusCode};
use walcast::api::{router, ApiState, Health};
use walcast::config::Config;

struct Server {
    base: String,
    http: Client,
    task: tokio::task::JoinHandle<()>,
}

async fn serve() -> Server {
    let state = ApiState::new(&Config::default(), Health::new()).expect("API state");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        axum::serve(listener, router(state)).await.unwrap();
    });
    let http = Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    Server { base, http, task }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn header(response: &reqwest::Response, name: reqwest::header::HeaderName) -> &str {
    response
        .headers()
        .get(&name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .unwrap()
}

#[tokio::test]
async fn root_serves_the_page_with_only_same_origin_scripts() {
    let server = serve().await;
    let response = server
        .http
        .get(format!("{}/", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, CONTENT_TYPE), "text/html; charset=utf-8");
    assert_eq!(header(&response, CACHE_CONTROL), "no-cache");
    let csp = header(&response, CONTENT_SECURITY_POLICY).to_owned();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    let html = response.text().await.unwrap();
    assert!(html.starts_with("<!doctype html>"));
    assert!(html.contains(r#"<script src="/dashboard/vendor/socket.io.min.js"></script>"#));
    assert!(html.contains(r#"<script type="module" src="/dashboard/app.js"></script>"#));
    // Everything comes from walcast itself: no CDN, no absolute URL.
    for needle in ["http://", "https://", "//cdn", "unpkg", "jsdelivr", "cdnjs"] {
        assert!(!html.contains(needle), "the page references {needle}");
    }
}

#[tokio::test]
async fn the_vendored_socket_io_client_and_the_scripts_are_served() {
    let server = serve().await;
    let get = |path: &str| server.http.get(format!("{}{path}", server.base)).send();

    let response = get("/dashboard/vendor/socket.io.min.js").await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        header(&response, CONTENT_TYPE),
        "text/javascript; charset=utf-8"
    );
    assert_eq!(header(&response, X_CONTENT_TYPE_OPTIONS), "nosniff");
    let body = response.text().await.unwrap();
    assert!(body.starts_with("/*!\n * Socket.IO v4."), "{}", &body[..40]);
    assert!(body.len() > 40_000);

    // walcast-client is the library's own file, as published (clients/js).
    for (path, file, content_type) in [
        (
            "/dashboard/app.js",
            "dashboard/app.js",
            "text/javascript; charset=utf-8",
        ),
        (
            "/dashboard/pipeline.js",
            "dashboard/pipeline.js",
            "text/javascript; charset=utf-8",
        ),
        (
            "/dashboard/walcast-client.js",
            "clients/js/walcast-client.js",
            "text/javascript; charset=utf-8",
        ),
        (
            "/dashboard/style.css",
            "dashboard/style.css",
            "text/css; charset=utf-8",
        ),
        (
            "/dashboard/favicon.svg",
            "dashboard/favicon.svg",
            "image/svg+xml",
        ),
    ] {
        let response = get(path).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert_eq!(header(&response, CONTENT_TYPE), content_type, "{path}");
        let on_disk = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join(file)).unwrap();
        assert_eq!(response.bytes().await.unwrap(), on_disk, "{path}");
    }

    // HEAD works for the page, like GET without the body.
    let head = server
        .http
        .head(format!("{}/", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(header(&head, CONTENT_TYPE), "text/html; charset=utf-8");
}

#[tokio::test]
async fn revalidation_answers_304_and_unknown_files_are_api_404s() {
    let server = serve().await;
    let url = format!("{}/dashboard/app.js", server.base);
    let first = server.http.get(&url).send().await.unwrap();
    let etag = header(&first, ETAG).to_owned();
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");
    let again = server
        .http
        .get(&url)
        .header(IF_NONE_MATCH, &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(header(&again, ETAG), etag);
    assert!(again.bytes().await.unwrap().is_empty());
    let stale = server
        .http
        .get(&url)
        .header(IF_NONE_MATCH, "\"0000\"")
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), StatusCode::OK);

    for path in [
        "/dashboard/nope.js",
        "/dashboard/index.html",
        "/dashboard/../Cargo.toml",
        "/dashboard/vendor/",
    ] {
        let response = server
            .http
            .get(format!("{}{path}", server.base))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "not_found", "{path}");
    }
    // The dashboard is read-only.
    let post = server
        .http
        .post(format!("{}/", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
}

#[test]
fn walcast_client_passes_its_node_unit_tests() {
    let test = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/js/test/rowbook.test.mjs");
    let out = std::process::Command::new("node")
        .arg("--test")
        .arg(&test)
        .output()
        .expect("node is installed");
    assert!(
        out.status.success(),
        "node --test {}:\n{}\n{}",
        test.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
