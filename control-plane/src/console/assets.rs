//! The console's static files, built into the binary: htmx and its SSE
//! extension and uPlot (vendored from npm at pinned versions by
//! `control-plane/console/vendor`), and the console's own stylesheet,
//! script and icon. Each is served with a strong ETag; its URL carries a
//! hash of its bytes, so a page always loads the files of its own build and
//! a browser may keep them for good.

use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::Digest as _;

struct Asset {
    name: &'static str,
    kind: &'static str,
    bytes: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $kind:expr) => {
        Asset {
            name: $name,
            kind: $kind,
            bytes: include_bytes!(concat!("../../console/assets/", $name)),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

static ASSETS: &[Asset] = &[
    asset!("htmx.min.js", JS),
    asset!("htmx-sse.js", JS),
    asset!("uPlot.iife.min.js", JS),
    asset!("uPlot.min.css", CSS),
    asset!("console.css", CSS),
    asset!("console.js", JS),
    asset!("favicon.svg", "image/svg+xml"),
];

/// Each asset's ETag: the first 16 hex digits of its SHA-256.
static TAGS: LazyLock<Vec<String>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|a| {
            sha2::Sha256::digest(a.bytes)
                .iter()
                .take(8)
                .map(|b| format!("{b:02x}"))
                .collect()
        })
        .collect()
});

fn find(name: &str) -> Option<(usize, &'static Asset)> {
    ASSETS.iter().enumerate().find(|(_, a)| a.name == name)
}

/// The URL of asset `name`, with its hash.
pub fn url(name: &str) -> String {
    match find(name) {
        Some((i, _)) => format!("/console/assets/{name}?v={}", TAGS[i]),
        None => format!("/console/assets/{name}"),
    }
}

/// `GET /console/assets/{name}`.
pub async fn serve(Path(name): Path<String>, headers: HeaderMap) -> Response {
    let Some((i, asset)) = find(&name) else {
        return (StatusCode::NOT_FOUND, "no such file").into_response();
    };
    let tag = format!("\"{}\"", TAGS[i]);
    let cache = (header::CACHE_CONTROL, "public, max-age=31536000, immutable");
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag))
    {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, tag)], [cache]).into_response();
    }
    (
        [
            (header::CONTENT_TYPE, asset.kind.to_string()),
            (header::ETAG, tag),
        ],
        [cache],
        asset.bytes,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_there_and_typed() {
        for a in ASSETS {
            assert!(!a.bytes.is_empty(), "{} is empty", a.name);
            let want = if a.name.ends_with(".js") {
                JS
            } else if a.name.ends_with(".css") {
                CSS
            } else {
                "image/svg+xml"
            };
            assert_eq!(a.kind, want, "{}", a.name);
        }
        assert!(url("console.css").contains("?v="));
    }
}
