//! Auth on: writes need a valid bearer token (static or HS256 JWT), reads
//! stay open, refusals are 401 in the error shape with `WWW-Authenticate`.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::{header, Method, StatusCode};
use serde_json::{json, Value};

use crate::support::api_server::{assert_error_shape, read, TestApi};

const TOKEN: &str = "test-static-token-0123456789";
const SECRET: &str = "test-jwt-secret-0123456789-0123456789-xyz";

fn jwt(secret: &str, exp_offset: i64) -> String {
    let exp = jsonwebtoken::get_current_timestamp() as i64 + exp_offset;
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "test", "exp": exp}),
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

async fn start() -> TestApi {
    TestApi::start_with("auth", |config| {
        config.auth.enabled = true;
        config.auth.tokens = vec![TOKEN.into()];
        config.auth.jwt_secret = SECRET.into();
    })
    .await
}

/// A request with an optional `Authorization` header value.
async fn call(
    api: &TestApi,
    method: Method,
    path: &str,
    authorization: Option<&str>,
    body: Option<&Value>,
) -> (StatusCode, Value, Option<String>) {
    let mut request = api.http.request(method, api.url(path));
    if let Some(value) = authorization {
        request = request.header(header::AUTHORIZATION, value);
    }
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request.send().await.unwrap();
    let challenge = response
        .headers()
        .get(header::WWW_AUTHENTICATE)
        .map(|v| v.to_str().unwrap().to_owned());
    let (status, body) = read(response).await;
    (status, body, challenge)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_need_a_valid_token_and_reads_do_not() {
    let api = start().await;
    let bearer = format!("Bearer {TOKEN}");
    let body = json!({"customer_name": "c", "product_name": "p"});

    // A valid static token writes.
    let (status, order, _) = call(&api, Method::POST, "/orders", Some(&bearer), Some(&body)).await;
    assert_eq!(status, StatusCode::CREATED, "{order}");
    let one = format!("/orders/{}", order["id"]);

    // Refusals: no header, wrong token, expired JWT, JWT with another
    // secret, other schemes, a bare token.
    let expired = format!("Bearer {}", jwt(SECRET, -3600));
    let foreign = format!(
        "Bearer {}",
        jwt("another-secret-0123456789-0123456789-xyz", 600)
    );
    let refusals: Vec<(Option<&str>, &str)> = vec![
        (None, "Bearer"),
        (
            Some("Bearer wrong-token-0123456789"),
            "Bearer error=\"invalid_token\"",
        ),
        (Some(expired.as_str()), "Bearer error=\"invalid_token\""),
        (Some(foreign.as_str()), "Bearer error=\"invalid_token\""),
        (Some("Basic dXNlcjpwYXNz"), "Bearer error=\"invalid_token\""),
        (Some(TOKEN), "Bearer error=\"invalid_token\""),
        (Some("Bearer"), "Bearer error=\"invalid_token\""),
    ];
    for (authorization, expected_challenge) in &refusals {
        for (method, path, body) in [
            (Method::POST, "/orders", Some(&body)),
            (Method::PUT, one.as_str(), Some(&body)),
            (
                Method::PATCH,
                one.as_str(),
                Some(&json!({"status": "shipped"})),
            ),
            (Method::DELETE, one.as_str(), None),
        ] {
            let (status, response, challenge) =
                call(&api, method.clone(), path, *authorization, body).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{method} {authorization:?}: {response}"
            );
            assert_eq!(assert_error_shape(&response), "unauthorized");
            assert_eq!(
                challenge.as_deref(),
                Some(*expected_challenge),
                "{authorization:?}"
            );
            let text = response.to_string();
            assert!(!text.contains(TOKEN) && !text.contains(SECRET), "{text}");
        }
    }
    let (_, response, _) = call(&api, Method::POST, "/orders", Some(&expired), Some(&body)).await;
    assert!(
        response["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expired"),
        "{response}"
    );
    // Refused before the body is looked at.
    let (status, _, _) = call(
        &api,
        Method::POST,
        "/orders",
        None,
        Some(&json!({"colour": 1})),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Nothing was changed by the refused writes.
    let (_, order_now, _) = call(&api, Method::GET, &one, None, None).await;
    assert_eq!(order_now, order);

    // Valid tokens: static for every write, a JWT too.
    let (status, _, _) = call(&api, Method::PUT, &one, Some(&bearer), Some(&body)).await;
    assert_eq!(status, StatusCode::OK);
    let token = jwt(SECRET, 600);
    let (status, patched, _) = call(
        &api,
        Method::PATCH,
        &one,
        Some(&format!("bearer {token}")),
        Some(&json!({"status": "shipped"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(patched["status"], "shipped");
    let (status, _, _) = call(
        &api,
        Method::POST,
        "/orders",
        Some(&format!("Bearer {token}")),
        Some(&body),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _, _) = call(&api, Method::DELETE, &one, Some(&bearer), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    // Reads stay open.
    for path in [
        "/orders",
        "/orders?status=pending",
        "/healthz",
        "/readyz",
        "/openapi.json",
    ] {
        let (status, response, _) = call(&api, Method::GET, path, None, None).await;
        assert_eq!(status, StatusCode::OK, "{path}: {response}");
    }
    let (status, _, _) = call(&api, Method::GET, &one, None, None).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "deleted, and a read needs no token"
    );
    // An unknown route is a 404 for everyone, token or not.
    let (status, response, _) = call(&api, Method::POST, "/nope", None, Some(&body)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(assert_error_shape(&response), "not_found");

    // Every refusal was counted as a 401 on its route.
    let refused = api.state.stats().count(&Method::POST, "/orders", 401);
    assert_eq!(refused, refusals.len() as u64 + 2);
    api.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_authenticator_is_shared_with_other_stages() {
    let api = start().await;
    let auth = api.state.authenticator().expect("auth is on");
    assert!(auth.verify(TOKEN).is_ok());
    assert!(auth.verify(&jwt(SECRET, 600)).is_ok());
    assert_eq!(
        auth.verify(&jwt(SECRET, -600)),
        Err(walcast::api::AuthError::Expired)
    );
    assert!(!format!("{auth:?}").contains(TOKEN));
    api.finish().await;

    // Off by default: no authenticator, writes need nothing.
    let api = TestApi::start("noauth").await;
    assert!(api.state.authenticator().is_none());
    let (status, _) = api
        .call(
            Method::POST,
            "/orders",
            Some(&json!({"customer_name": "c", "product_name": "p"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    api.finish().await;
}
