//! Header hygiene: the request's host, hop-by-hop headers stripped both ways,
//! `X-Forwarded-*` and `Forwarded` added, and the request id.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Mutex;

use bytes::Bytes;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::request::Parts;
use rand::Rng;

/// The request id header.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1):
/// the one list both paths strip (the lane's table of request headers is
/// built from it, `express::Line`).
pub(crate) const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
];

/// Whether the header `name` (in any case) is hop-by-hop.
pub fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
}

/// Removes hop-by-hop headers, and those the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages have none: one look at each of their few names costs
    // less than nine removals, each a hash and a probe.
    if !headers.keys().any(|name| is_hop_by_hop(name.as_str())) {
        return;
    }
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
}

/// The host a request is for: the URI's authority (HTTP/2, absolute form) or
/// the `Host` header, without port, lower case (copied only when it was not).
pub fn request_host(parts: &Parts) -> Option<Cow<'_, str>> {
    let raw = match parts.uri.authority() {
        Some(a) => a.host(),
        None => parts.headers.get(header::HOST)?.to_str().ok()?,
    };
    host_name(raw)
}

/// The host name of a `Host` value: without port, lower case (copied only
/// when it was not).
pub fn host_name(raw: &str) -> Option<Cow<'_, str>> {
    let host = strip_port(raw.trim());
    if host.is_empty() {
        return None;
    }
    Some(if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    })
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
        && sane_request_id(v.as_bytes())
    {
        return v.clone();
    }
    HeaderValue::from_bytes(&new_request_id()).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// Whether a client's request id may be passed on: 1 to 128 visible ASCII characters.
pub fn sane_request_id(id: &[u8]) -> bool {
    !id.is_empty() && id.len() <= 128 && id.iter().all(|b| b.is_ascii_graphic())
}

/// A new random request id: 32 hex digits.
pub fn new_request_id() -> [u8; 32] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let n: u128 = rand::rng().random();
    let mut id = [0u8; 32];
    for (i, b) in id.iter_mut().enumerate() {
        *b = HEX[((n >> (4 * i)) & 0xf) as usize];
    }
    id
}

/// Who asked and how, formatted once per client connection: the values the
/// forwarding headers of each of its requests are made of.
pub struct ForwardedFor {
    /// `http` or `https`.
    proto: &'static str,
    /// The client's address as `X-Forwarded-For` lists it.
    ip: HeaderValue,
    /// The client's address as a `Forwarded` node (IPv6 quoted, in brackets).
    node: String,
    /// The `Forwarded` element for the last host asked for on this
    /// connection (usually its only one), so it is formatted once.
    last: Mutex<Option<(Vec<u8>, HeaderValue)>>,
}

impl ForwardedFor {
    /// For a connection from `client`, over TLS or not.
    pub fn new(client: IpAddr, tls: bool) -> Self {
        let ip = client.to_string();
        let node = match client {
            IpAddr::V4(_) => ip.clone(),
            IpAddr::V6(_) => format!("\"[{ip}]\""),
        };
        ForwardedFor {
            proto: if tls { "https" } else { "http" },
            ip: HeaderValue::from_maybe_shared(Bytes::from(ip))
                .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
            node,
            last: Mutex::new(None),
        }
    }

    /// `http` or `https`.
    pub fn proto(&self) -> &'static str {
        self.proto
    }

    /// The client's address as `X-Forwarded-For` lists it.
    pub fn ip(&self) -> &[u8] {
        self.ip.as_bytes()
    }

    /// This connection's `Forwarded` element for a request to `host`.
    pub fn element(&self, host: &[u8]) -> Option<HeaderValue> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((h, e)) = &*last
            && h.as_slice() == host
        {
            return Some(e.clone());
        }
        let (node, proto) = (&self.node, self.proto);
        let element = match std::str::from_utf8(host) {
            Ok(name)
                if name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.:".contains(&b)) =>
            {
                format!("for={node};host={name};proto={proto}")
            }
            _ => format!("for={node};proto={proto}"),
        };
        let element = HeaderValue::from_maybe_shared(Bytes::from(element)).ok()?;
        *last = Some((host.to_vec(), element.clone()));
        Some(element)
    }
}

/// `prior, next` when `prior` is a non-blank list, else `next` alone.
fn appended(prior: Option<&HeaderValue>, next: HeaderValue) -> Option<HeaderValue> {
    match prior.and_then(|v| v.to_str().ok()) {
        Some(prior) if !prior.trim().is_empty() => {
            let mut v = Vec::with_capacity(prior.len() + 2 + next.len());
            v.extend_from_slice(prior.as_bytes());
            v.extend_from_slice(b", ");
            v.extend_from_slice(next.as_bytes());
            HeaderValue::from_maybe_shared(Bytes::from(v)).ok()
        }
        _ => Some(next),
    }
}

/// Prepares the headers of the request to a worker: hop-by-hop stripped,
/// `Host` kept (or set to `host`, the one the client asked for, as it sent
/// it), forwarding headers and the id set. Formats nothing that the
/// connection's [`ForwardedFor`] already holds.
pub fn to_upstream(
    headers: &mut HeaderMap,
    fwd: &ForwardedFor,
    host: &HeaderValue,
    id: &HeaderValue,
) {
    strip_hop_by_hop(headers);
    if !headers.contains_key(header::HOST) {
        headers.insert(header::HOST, host.clone());
    }
    if let Some(v) = appended(headers.get(&X_FORWARDED_FOR), fwd.ip.clone()) {
        headers.insert(&X_FORWARDED_FOR, v);
    }
    headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(fwd.proto));
    headers.insert(&X_FORWARDED_HOST, host.clone());
    if let Some(element) = fwd.element(host.as_bytes())
        && let Some(v) = appended(headers.get(&FORWARDED), element)
    {
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
        let fwd = ForwardedFor::new("127.0.0.1".parse().unwrap(), true);
        let clean = h.clone();
        to_upstream(&mut h, &fwd, &host, &HeaderValue::from_static("rid"));
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

        // The next request on the connection gets the same values (the
        // element is formatted once), and another host its own element.
        let mut again = clean.clone();
        to_upstream(&mut again, &fwd, &host, &HeaderValue::from_static("rid"));
        assert_eq!(again, h);
        let mut fresh = HeaderMap::new();
        let other = HeaderValue::from_static("billing.fabric.localhost");
        to_upstream(&mut fresh, &fwd, &other, &HeaderValue::from_static("r2"));
        assert_eq!(fresh["host"], "billing.fabric.localhost");
        assert_eq!(fresh["x-forwarded-for"], "127.0.0.1");
        assert_eq!(
            fresh["forwarded"],
            "for=127.0.0.1;host=billing.fabric.localhost;proto=https"
        );
        let v6 = ForwardedFor::new("::1".parse().unwrap(), false);
        let mut h6 = HeaderMap::new();
        to_upstream(&mut h6, &v6, &other, &HeaderValue::from_static("r3"));
        assert_eq!(h6["x-forwarded-for"], "::1");
        assert_eq!(
            h6["forwarded"],
            "for=\"[::1]\";host=billing.fabric.localhost;proto=http"
        );
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
