//! The console's static files, built into the binary: htmx and its SSE
//! extension and uPlot (vendored from npm at pinned versions by
//! `control-plane/console/vendor`), and the console's own stylesheet,
//! script and icon. Each is served with a strong ETag; its URL carries a
//! hash of its bytes, so a page always loads the files of its own build and
//! a browser may keep them for good. A browser that accepts gzip gets them
//! gzipped (each compressed once, when first asked for).

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

/// Each asset gzipped, made when first asked for.
static GZIPPED: LazyLock<Vec<Vec<u8>>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|a| {
            use std::io::Write as _;
            let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            // Writing to a Vec cannot fail.
            let _ = z.write_all(a.bytes);
            z.finish().unwrap_or_default()
        })
        .collect()
});

/// Whether `headers` accept a gzipped answer.
fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| {
            let mut parts = coding.split(';').map(str::trim);
            parts.next() == Some("gzip") && !parts.any(|p| p.replace(' ', "") == "q=0")
        })
}

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
    let vary = (header::VARY, "accept-encoding");
    let kind = (header::CONTENT_TYPE, asset.kind.to_string());
    let gzipped = &GZIPPED[i];
    if accepts_gzip(&headers) && !gzipped.is_empty() {
        return (
            [kind, (header::ETAG, tag)],
            [cache, vary, (header::CONTENT_ENCODING, "gzip")],
            gzipped.clone(),
        )
            .into_response();
    }
    ([kind, (header::ETAG, tag)], [cache, vary], asset.bytes).into_response()
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

    #[test]
    fn gzip_is_given_only_to_who_accepts_it() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::ACCEPT_ENCODING, v.parse().unwrap());
            accepts_gzip(&h)
        };
        assert!(with("gzip, deflate, br"));
        assert!(with("br;q=1.0, gzip;q=0.8"));
        assert!(!with("gzip;q=0"));
        assert!(!with("br"));
        assert!(!accepts_gzip(&HeaderMap::new()));
        for (i, a) in ASSETS.iter().enumerate() {
            let mut plain = Vec::new();
            use std::io::Read as _;
            flate2::read::GzDecoder::new(&GZIPPED[i][..])
                .read_to_end(&mut plain)
                .unwrap();
            assert_eq!(plain, a.bytes, "{}", a.name);
        }
    }
}
