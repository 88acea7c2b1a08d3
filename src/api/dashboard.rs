//! The browser dashboard: static files from `dashboard/`, compiled into the
//! binary so that a single `walcast` serves everything (no CDN, no files to
//! deploy next to it).
//!
//! `/` is the page; `/dashboard/{*path}` its scripts, styles, the
//! vendored socket.io-client and walcast-client (`clients/js`, the library
//! the page is built on, served as it is published). Every response carries a strong `ETag` (a hash
//! of the bytes) and `Cache-Control: no-cache`: a browser revalidates on each
//! load and gets a 304 until a new binary ships different files, so an
//! upgrade never runs a stale script against a new server. The page gets a
//! Content-Security-Policy that allows only same-origin scripts, styles and
//! connections, a second fence behind the scripts' rule of writing event
//! data with `textContent` only.
//!
//! This module serves bytes; the dashboard's logic (listing, snapshot
//! hand-off, reconnects) lives in `clients/js/walcast-client.js`, its
//! rendering in `dashboard/*.js`.

use std::sync::OnceLock;

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::ApiError;

/// One embedded file.
struct Asset {
    /// Path under `/dashboard/` (the page itself is `/`).
    path: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

/// The page (first, served at `/`), then everything under `/dashboard/`.
const FILES: [Asset; 7] = [
    Asset {
        path: "index.html",
        content_type: "text/html; charset=utf-8",
        bytes: include_bytes!("../../dashboard/index.html"),
    },
    Asset {
        path: "app.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../dashboard/app.js"),
    },
    Asset {
        path: "pipeline.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../dashboard/pipeline.js"),
    },
    Asset {
        path: "walcast-client.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../clients/js/walcast-client.js"),
    },
    Asset {
        path: "style.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("../../dashboard/style.css"),
    },
    Asset {
        path: "favicon.svg",
        content_type: "image/svg+xml",
        bytes: include_bytes!("../../dashboard/favicon.svg"),
    },
    Asset {
        path: "vendor/socket.io.min.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../dashboard/vendor/socket.io.min.js"),
    },
];

/// Same-origin only. `connect-src 'self'` covers the Socket.IO websocket
/// (ws:/wss: to the page's own host) in current browsers; inline scripts
/// and styles are refused, so injected markup could not run even if some
/// code wrote event data as HTML.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// `GET /`: the dashboard page.
pub async fn index(headers: HeaderMap) -> Response {
    serve(0, &headers)
}

/// `GET /dashboard/{*path}`: a script, stylesheet or image of the page.
pub async fn asset(Path(path): Path<String>, headers: HeaderMap) -> Response {
    // Index 0 is the page, reachable at `/` only.
    match FILES.iter().skip(1).position(|file| file.path == path) {
        Some(i) => serve(i + 1, &headers),
        None => ApiError::not_found("no such dashboard file").into_response(),
    }
}

/// `FILES[file]` with caching headers, or 304 when the client's copy is
/// current.
fn serve(file: usize, request: &HeaderMap) -> Response {
    let asset = &FILES[file];
    let etag = etag(file);
    let mut headers = HeaderMap::new();
    headers.insert(header::ETAG, etag.clone());
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if asset.content_type.starts_with("text/html") {
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        );
        headers.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
    }
    if if_none_match(request, &etag) {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    (StatusCode::OK, headers, asset.bytes).into_response()
}

/// A strong validator: the first 128 bits of the file's SHA-256, computed
/// once per file.
fn etag(file: usize) -> HeaderValue {
    static TAGS: OnceLock<Vec<HeaderValue>> = OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        FILES
            .iter()
            .map(|asset| {
                let digest = Sha256::digest(asset.bytes);
                let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
                HeaderValue::from_str(&format!("\"{hex}\"")).expect("hex is a valid header")
            })
            .collect()
    });
    tags[file].clone()
}

/// Whether `If-None-Match` names `etag` (or is `*`). Weak comparison, as
/// RFC 9110 prescribes for this header.
fn if_none_match(request: &HeaderMap, etag: &HeaderValue) -> bool {
    let wanted = etag.to_str().unwrap_or_default();
    request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|tag| tag.trim())
        .any(|tag| tag == "*" || tag.trim_start_matches("W/") == wanted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_has_a_distinct_etag() {
        let mut tags: Vec<_> = (0..FILES.len()).map(etag).collect();
        tags.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        tags.dedup();
        assert_eq!(tags.len(), FILES.len());
    }

    #[test]
    fn if_none_match_accepts_lists_weak_tags_and_star() {
        let tag = HeaderValue::from_static("\"abc\"");
        let with = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::IF_NONE_MATCH, HeaderValue::from_static(value));
            if_none_match(&headers, &tag)
        };
        assert!(with("\"abc\""));
        assert!(with("\"x\", W/\"abc\""));
        assert!(with("*"));
        assert!(!with("\"abcd\""));
        assert!(!if_none_match(&HeaderMap::new(), &tag));
    }

    #[test]
    fn the_page_loads_only_embedded_same_origin_scripts() {
        let html = std::str::from_utf8(FILES[0].bytes).unwrap();
        for script in html.split("<script").skip(1) {
            let src = script
                .split("src=\"")
                .nth(1)
                .and_then(|s| s.split('"').next())
                .expect("every script has a src (no inline scripts: the CSP refuses them)");
            let path = src
                .strip_prefix("/dashboard/")
                .unwrap_or_else(|| panic!("script {src} is not served by walcast"));
            assert!(
                FILES[1..].iter().any(|a| a.path == path),
                "{path} not embedded"
            );
        }
    }
}
