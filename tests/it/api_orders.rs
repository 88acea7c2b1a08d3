//! The orders API against a real PostgreSQL: every route's success path
//! with its exact response shape, keyset pagination, the status filter, and
//! the snapshot hand-off values of the listing.

use std::collections::BTreeSet;

use reqwest::{header, Method, StatusCode};
use serde_json::{json, Value};

use crate::support::api_server;
use crate::support::api_server::{assert_order_shape, connect, TestApi};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_get_replace_patch_delete() {
    let api = TestApi::start("crud").await;
    let db = connect(&api.db_url).await;

    // POST: 201, Location, the stored order; names trimmed, status defaulted.
    let response = api
        .send(
            Method::POST,
            "/orders",
            Some(&json!({"customer_name": "  Harry ", "product_name": "iPhone 17"})),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let location = response.headers()[header::LOCATION]
        .to_str()
        .unwrap()
        .to_owned();
    let (_, created) = api_server::read(response).await;
    let id = assert_order_shape(&created);
    assert_eq!(location, format!("/orders/{id}"));
    assert_eq!(created["customer_name"], "Harry");
    assert_eq!(created["product_name"], "iPhone 17");
    assert_eq!(created["status"], "pending");
    assert_eq!(created["created_at"], created["updated_at"]);

    // The timestamps are in the events' form: six fraction digits always.
    let row = db
        .query_one(
            "SELECT customer_name, \
             to_char(created_at, 'YYYY-MM-DD\"T\"HH24:MI:SS.US') FROM orders WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "Harry");
    assert_eq!(created["created_at"], row.get::<_, String>(1));

    // POST with a status.
    let (status, other) = api
        .call(
            Method::POST,
            "/orders",
            Some(
                &json!({"customer_name": "Sally", "product_name": "Pixel", "status": "processing"}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(other["status"], "processing");

    // GET one.
    let (status, fetched) = api.call(Method::GET, &location, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fetched, created);

    // PATCH the status only.
    let (status, patched) = api
        .call(
            Method::PATCH,
            &location,
            Some(&json!({"status": "shipped"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_order_shape(&patched);
    assert_eq!(patched["status"], "shipped");
    assert_eq!(patched["customer_name"], "Harry");
    assert_eq!(patched["created_at"], created["created_at"]);
    assert_ne!(patched["updated_at"], created["updated_at"], "trigger ran");

    // PUT without status: names replaced, status left as it is.
    let (status, replaced) = api
        .call(
            Method::PUT,
            &location,
            Some(&json!({"customer_name": "Harriet", "product_name": "iPhone 17 Pro"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(replaced["customer_name"], "Harriet");
    assert_eq!(replaced["product_name"], "iPhone 17 Pro");
    assert_eq!(replaced["status"], "shipped");

    // PUT with the whole common shape.
    let (status, replaced) = api
        .call(
            Method::PUT,
            &location,
            Some(&json!({"customer_name": "Harry", "product_name": "iPhone 17", "status": "delivered"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(replaced["status"], "delivered");

    // PUT with one field, like PATCH (contract section 4: "any of those
    // fields"): the others are left as they are.
    let (status, renamed) = api
        .call(
            Method::PUT,
            &location,
            Some(&json!({"product_name": "iPhone 17e"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{renamed}");
    assert_eq!(renamed["product_name"], "iPhone 17e");
    assert_eq!(renamed["customer_name"], "Harry");
    assert_eq!(renamed["status"], "delivered");
    let (status, replaced) = api
        .call(
            Method::PUT,
            &location,
            Some(&json!({"product_name": "iPhone 17"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{replaced}");

    // PATCH {} and PUT {} write nothing: the order comes back as it is,
    // updated_at included (the trigger did not run).
    for method in [Method::PATCH, Method::PUT] {
        let (status, unchanged) = api.call(method.clone(), &location, Some(&json!({}))).await;
        assert_eq!(status, StatusCode::OK, "{method}");
        assert_eq!(unchanged, replaced, "{method}");
    }

    // The database holds what the API said.
    let row = db
        .query_one(
            "SELECT customer_name, product_name, status FROM orders WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    assert_eq!(
        (
            row.get::<_, String>(0),
            row.get::<_, String>(1),
            row.get::<_, String>(2)
        ),
        ("Harry".into(), "iPhone 17".into(), "delivered".into())
    );

    // DELETE: 204 with no body, then gone.
    let response = api.send(Method::DELETE, &location, None).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert!(response.bytes().await.unwrap().is_empty());
    let (status, body) = api.call(Method::GET, &location, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "not_found");
    let (status, _) = api.call(Method::DELETE, &location, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let count: i64 = db
        .query_one("SELECT count(*) FROM orders WHERE id = $1", &[&id])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 0);

    api.finish().await;
}

/// Reads every page of `query` (`?limit=…&status=…`) from `after` on,
/// returning the ids page by page.
async fn read_pages(api: &TestApi, query: &str, mut after: Option<i64>) -> Vec<Vec<i64>> {
    let mut pages = Vec::new();
    loop {
        let path = match after {
            Some(after) => format!("/orders?{query}&after={after}"),
            None => format!("/orders?{query}"),
        };
        let (status, body) = api.call(Method::GET, &path, None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_list_shape(&body);
        let ids: Vec<i64> = body["orders"]
            .as_array()
            .unwrap()
            .iter()
            .map(assert_order_shape)
            .collect();
        pages.push(ids.clone());
        match body["next_after"].as_i64() {
            Some(next) => {
                assert_eq!(Some(&next), ids.last(), "next_after is the page's last id");
                after = Some(next);
            }
            None => {
                assert!(body["next_after"].is_null());
                break;
            }
        }
        assert!(pages.len() < 100, "pagination does not end");
    }
    pages
}

fn assert_list_shape(body: &Value) {
    let mut keys: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        vec!["next_after", "orders", "snapshot", "snapshot_lsn"],
        "{body}"
    );
    assert!(is_snapshot(body["snapshot"].as_str().unwrap()), "{body}");
    assert!(is_lsn(body["snapshot_lsn"].as_str().unwrap()), "{body}");
}

/// `^\d+:\d+:(\d+(,\d+)*)?$`
fn is_snapshot(text: &str) -> bool {
    let parts: Vec<&str> = text.split(':').collect();
    let number = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    parts.len() == 3
        && number(parts[0])
        && number(parts[1])
        && (parts[2].is_empty() || parts[2].split(',').all(number))
}

/// `X/X` with upper-case hex digits.
fn is_lsn(text: &str) -> bool {
    let hex = |s: &str| {
        !s.is_empty()
            && s.len() <= 8
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
    };
    matches!(text.split_once('/'), Some((hi, lo)) if hex(hi) && hex(lo))
}

fn lsn_value(text: &str) -> u64 {
    let (hi, lo) = text.split_once('/').unwrap();
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

struct Snapshot {
    xmin: u64,
    xmax: u64,
    xip: Vec<u64>,
}

impl Snapshot {
    fn parse(text: &str) -> Snapshot {
        let mut parts = text.split(':');
        let xmin = parts.next().unwrap().parse().unwrap();
        let xmax = parts.next().unwrap().parse().unwrap();
        let xip = parts
            .next()
            .unwrap()
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().unwrap())
            .collect();
        Snapshot { xmin, xmax, xip }
    }

    /// Whether a transaction's effects are visible in this snapshot
    /// (committed ones; an aborted one is never visible anyway).
    fn sees(&self, xid: u64) -> bool {
        xid < self.xmax && !self.xip.contains(&xid)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyset_pagination_has_no_duplicate_and_no_gap() {
    let api = TestApi::start("pages").await;
    let db = connect(&api.db_url).await;
    db.batch_execute(
        "INSERT INTO orders (customer_name, product_name, status)
         SELECT 'customer ' || n, 'product ' || n,
                (ARRAY['pending','processing','shipped','delivered','cancelled'])[1 + n % 5]
         FROM generate_series(1, 120) AS n",
    )
    .await
    .unwrap();
    let all: Vec<i64> = db
        .query("SELECT id FROM orders ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(all.len(), 120);

    let pages = read_pages(&api, "limit=50", None).await;
    assert_eq!(
        pages.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![50, 50, 20]
    );
    let flat: Vec<i64> = pages.concat();
    assert_eq!(flat, all, "every order once, in id order");

    // Without `limit`, pages of 50; `limit=500` takes everything at once.
    let (_, body) = api.call(Method::GET, "/orders", None).await;
    assert_eq!(body["orders"].as_array().unwrap().len(), 50);
    assert_eq!(body["next_after"], json!(all[49]));
    let (_, body) = api.call(Method::GET, "/orders?limit=500", None).await;
    assert_eq!(body["orders"].as_array().unwrap().len(), 120);
    assert!(body["next_after"].is_null());
    // Exactly a page's worth left: no empty extra page.
    let (_, body) = api
        .call(
            Method::GET,
            &format!("/orders?limit=20&after={}", all[99]),
            None,
        )
        .await;
    assert_eq!(body["orders"].as_array().unwrap().len(), 20);
    assert!(body["next_after"].is_null());

    // An order added between pages, above the cursor, shows on a later page.
    let (_, body) = api.call(Method::GET, "/orders?limit=50", None).await;
    let (status, created) = api
        .call(
            Method::POST,
            "/orders",
            Some(&json!({"customer_name": "late", "product_name": "late"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let next = body["next_after"].as_i64().unwrap();
    let rest = read_pages(&api, "limit=50", Some(next)).await.concat();
    assert_eq!(rest.last(), created["id"].as_i64().as_ref());

    api.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_filter_pages_within_one_status() {
    let api = TestApi::start("status").await;
    let db = connect(&api.db_url).await;
    db.batch_execute(
        "INSERT INTO orders (customer_name, product_name, status)
         SELECT 'c' || n, 'p' || n, CASE WHEN n % 3 = 0 THEN 'shipped' ELSE 'pending' END
         FROM generate_series(1, 90) AS n",
    )
    .await
    .unwrap();
    let shipped: Vec<i64> = db
        .query(
            "SELECT id FROM orders WHERE status = 'shipped' ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(shipped.len(), 30);

    let pages = read_pages(&api, "status=shipped&limit=12", None).await;
    assert_eq!(
        pages.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![12, 12, 6]
    );
    assert_eq!(pages.concat(), shipped);
    let (_, body) = api
        .call(Method::GET, "/orders?status=shipped&limit=500", None)
        .await;
    for order in body["orders"].as_array().unwrap() {
        assert_eq!(order["status"], "shipped");
    }
    let (_, body) = api
        .call(Method::GET, "/orders?status=cancelled", None)
        .await;
    assert_eq!(body["orders"], json!([]));
    assert!(body["next_after"].is_null());

    api.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_snapshot_tells_what_the_page_saw() {
    let api = TestApi::start("snapshot").await;
    let writer = connect(&api.db_url).await;

    // A committed insert: the listing shows it and its snapshot sees it.
    writer.batch_execute("BEGIN").await.unwrap();
    let committed_xid: i64 = writer
        .query_one(
            "INSERT INTO orders (customer_name, product_name) VALUES ('a', 'b')
             RETURNING pg_current_xact_id()::text::bigint",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    writer.batch_execute("COMMIT").await.unwrap();
    let lsn_after_commit: String = writer
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);

    // A transaction still open while the page is read.
    let open = connect(&api.db_url).await;
    open.batch_execute("BEGIN").await.unwrap();
    let open_xid: i64 = open
        .query_one(
            "INSERT INTO orders (customer_name, product_name) VALUES ('open', 'open')
             RETURNING pg_current_xact_id()::text::bigint",
            &[],
        )
        .await
        .unwrap()
        .get(0);

    let (status, body) = api.call(Method::GET, "/orders", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_list_shape(&body);
    let snapshot = Snapshot::parse(body["snapshot"].as_str().unwrap());
    assert!(snapshot.xmin <= snapshot.xmax);
    assert!(
        snapshot.xmax > committed_xid as u64,
        "xmax {} above the committed xid {committed_xid}",
        snapshot.xmax
    );
    assert!(snapshot.sees(committed_xid as u64));
    assert!(
        !snapshot.sees(open_xid as u64),
        "snapshot {} must not see the open xid {open_xid}",
        body["snapshot"]
    );
    let names: BTreeSet<&str> = body["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["customer_name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        BTreeSet::from(["a"]),
        "the open insert is not listed"
    );
    // The LSN was read after that commit and before the listing began.
    let snapshot_lsn = lsn_value(body["snapshot_lsn"].as_str().unwrap());
    assert!(snapshot_lsn >= lsn_value(&lsn_after_commit));
    let current: String = writer
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    assert!(snapshot_lsn <= lsn_value(&current));

    // Once committed, the next listing's snapshot sees it.
    open.batch_execute("COMMIT").await.unwrap();
    let (_, body) = api.call(Method::GET, "/orders", None).await;
    let snapshot = Snapshot::parse(body["snapshot"].as_str().unwrap());
    assert!(snapshot.sees(open_xid as u64));
    assert_eq!(body["orders"].as_array().unwrap().len(), 2);

    api.finish().await;
}

#[test]
fn shape_helpers_accept_and_refuse() {
    assert!(is_snapshot("745:749:745,747"));
    assert!(is_snapshot("745:745:"));
    assert!(!is_snapshot("745:749"));
    assert!(!is_snapshot("745:749:a"));
    assert!(is_lsn("0/16B3748"));
    assert!(!is_lsn("0/16b3748"));
    assert!(api_server::is_event_timestamp("2026-11-22T05:04:10.580065"));
    assert!(api_server::is_event_timestamp("2026-11-22T05:04:10.000000"));
    assert!(!api_server::is_event_timestamp("2026-11-22T05:04:10"));
    assert!(!api_server::is_event_timestamp("2026-11-22T05:04:10.58"));
    assert!(!api_server::is_event_timestamp("2026-11-22 05:04:10"));
}
