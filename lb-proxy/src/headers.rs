//! Header hygiene: the request's host, hop-by-hop headers stripped both ways,
//! `X-Forwarded-*` and `Forwarded` added, and the request id.

use std::net::IpAddr;

use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::request::Parts;
use rand::Rng;

/// The request id header.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&header::HeaderName; 7] = [
    &header::CONNECTION,
    &header::TE,
    &header::TRAILER,
    &header::TRANSFER_ENCODING,
    &header::UPGRADE,
    &header::PROXY_AUTHENTICATE,
    &header::PROXY_AUTHORIZATION,
];

/// Removes hop-by-hop headers, and those the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(&KEEP_ALIVE);
    headers.remove(&PROXY_CONNECTION);
}

/// The host a request is for: the URI's authority (HTTP/2, absolute form) or
/// the `Host` header, without port, lower case.
pub fn request_host(parts: &Parts) -> Option<String> {
    let raw = match parts.uri.authority() {
        Some(a) => a.host(),
        None => parts.headers.get(header::HOST)?.to_str().ok()?,
    };
    let host = strip_port(raw.trim());
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// The client's request id when it sent a sane one, else a new random one.
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get(&X_REQUEST_ID)
        && !v.is_empty()
        && v.len() <= 128
        && v.as_bytes().iter().all(|b| b.is_ascii_graphic())
    {
        return v.clone();
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let n: u128 = rand::rng().random();
    let mut id = [0u8; 32];
    for (i, b) in id.iter_mut().enumerate() {
        *b = HEX[((n >> (4 * i)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&id).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// Who asked and how: added to the request sent to a worker.
pub struct ForwardedFor<'a> {
    /// The client's address.
    pub client: IpAddr,
    /// `http` or `https`.
    pub proto: &'static str,
    /// The host the client asked for, as it sent it.
    pub host: &'a HeaderValue,
}

/// Prepares the headers of the request to a worker: hop-by-hop stripped,
/// `Host` kept (or set from the authority), forwarding headers and the id set.
pub fn to_upstream(headers: &mut HeaderMap, fwd: &ForwardedFor<'_>, id: &HeaderValue) {
    strip_hop_by_hop(headers);
    if !headers.contains_key(header::HOST) {
        headers.insert(header::HOST, fwd.host.clone());
    }
    let ip = fwd.client.to_string();
    let xff = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prior) if !prior.trim().is_empty() => format!("{prior}, {ip}"),
        _ => ip.clone(),
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert(&X_FORWARDED_FOR, v);
    }
    headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(fwd.proto));
    headers.insert(&X_FORWARDED_HOST, fwd.host.clone());
    let node = match fwd.client {
        IpAddr::V4(_) => ip,
        IpAddr::V6(_) => format!("\"[{ip}]\""),
    };
    let host = fwd.host.to_str().unwrap_or_default();
    let element = if host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-.:".contains(&b))
    {
        format!("for={node};host={host};proto={}", fwd.proto)
    } else {
        format!("for={node};proto={}", fwd.proto)
    };
    let forwarded = match headers.get(&FORWARDED).and_then(|v| v.to_str().ok()) {
        Some(prior) if !prior.trim().is_empty() => format!("{prior}, {element}"),
        _ => element,
    };
    if let Ok(v) = HeaderValue::from_str(&forwarded) {
        headers.insert(&FORWARDED, v);
    }
    headers.insert(&X_REQUEST_ID, id.clone());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = hyper::Request::builder().uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn hosts_lose_their_port_and_case() {
        assert_eq!(
            request_host(&parts("/", &[("host", "Orders.Fabric.Localhost:8080")])).as_deref(),
            Some("orders.fabric.localhost")
        );
        assert_eq!(
            request_host(&parts("http://a.b:1/x", &[("host", "ignored")])).as_deref(),
            Some("a.b")
        );
        assert_eq!(
            request_host(&parts("/", &[("host", "[::1]:80")])).as_deref(),
            Some("::1")
        );
        assert_eq!(request_host(&parts("/", &[])), None);
    }

    #[test]
    fn upstream_headers_are_clean_and_say_who_asked() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("x-forwarded-for", "10.0.0.1"),
            ("forwarded", "for=10.0.0.1"),
            ("x-app", "kept"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        let host = HeaderValue::from_static("orders.fabric.localhost:8080");
        let fwd = ForwardedFor {
            client: "127.0.0.1".parse().unwrap(),
            proto: "https",
            host: &host,
        };
        to_upstream(&mut h, &fwd, &HeaderValue::from_static("rid"));
        for gone in [
            "connection",
            "x-secret",
            "keep-alive",
            "transfer-encoding",
            "upgrade",
        ] {
            assert!(!h.contains_key(gone), "{gone}");
        }
        assert_eq!(h["x-app"], "kept");
        assert_eq!(h["host"], "orders.fabric.localhost:8080");
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "orders.fabric.localhost:8080");
        assert_eq!(
            h["forwarded"],
            "for=10.0.0.1, for=127.0.0.1;host=orders.fabric.localhost:8080;proto=https"
        );
        assert_eq!(h["x-request-id"], "rid");
    }

    #[test]
    fn request_ids_are_kept_or_made() {
        let mut h = HeaderMap::new();
        let made = request_id(&h);
        assert_eq!(made.len(), 32);
        assert_ne!(made, request_id(&h));
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("abc-1"));
        assert_eq!(request_id(&h), "abc-1");
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("has space"));
        assert_eq!(request_id(&h).len(), 32);
    }
}
