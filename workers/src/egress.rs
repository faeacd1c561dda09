//! Where a flow's `http-request` may go, checked on the address actually
//! connected to, and the client that sends it.
//!
//! By default a flow reaches public addresses only: loopback, private
//! (RFC 1918), link-local (the cloud metadata address among them), CGNAT,
//! unique-local IPv6 and the other special ranges are refused, as are the
//! fabric's own service addresses whatever an operator widens (the port of
//! one on this host at every address of this host). The check runs in the
//! connector, on each address a name resolves to, right before connecting
//! to it: a name that resolves to a public address when asked and to
//! loopback when connecting (DNS rebinding) is refused at the second
//! resolution, the one used. Redirects are followed through the same
//! connector, so each hop is checked, and one to another origin carries
//! none of the flow's credentials. Every failure to connect reads the
//! same, so a flow cannot use the errors to map a network.

use std::future::Future;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::http::{HeaderName, HeaderValue, Method, Request, StatusCode, Uri, header};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::{TokioExecutor, TokioIo};
use ipnet::IpNet;
use tokio::net::TcpStream;

/// Ranges no flow reaches unless an operator allows them: everything that
/// is not the public internet. IPv4-mapped IPv6 (`::ffff:0:0/96`) is not
/// listed: [`canonical`] turns it into IPv4 before the check, so the IPv4
/// ranges judge it.
const DENIED: [&str; 29] = [
    "0.0.0.0/8",        // "this network"
    "10.0.0.0/8",       // RFC 1918
    "100.64.0.0/10",    // CGNAT
    "127.0.0.0/8",      // loopback: the fabric's own ports on one machine
    "168.63.129.16/32", // Azure's platform address: metadata, DNS, health probes
    "169.254.0.0/16",   // link-local, the instance metadata service among them
    "172.16.0.0/12",    // RFC 1918
    "192.0.0.0/24",     // IETF protocol assignments
    "192.0.2.0/24",     // documentation
    "192.88.99.0/24",   // 6to4 relay
    "192.168.0.0/16",   // RFC 1918
    "198.18.0.0/15",    // benchmarking
    "198.51.100.0/24",  // documentation
    "203.0.113.0/24",   // documentation
    "224.0.0.0/4",      // multicast
    "240.0.0.0/4",      // reserved, and broadcast
    "::/128",           // unspecified
    "::1/128",          // loopback
    "::/96",            // IPv4-compatible (deprecated): `::127.0.0.1` is loopback in disguise
    "64:ff9b::/96",     // NAT64: an IPv4 address in disguise
    "64:ff9b:1::/48",   // local-use NAT64: the same, translated inside the network
    "100::/64",         // discard
    "2001::/32",        // Teredo: embeds an IPv4 address; denied whole, not judged by it
    "2001:db8::/32",    // documentation
    "2002::/16",        // 6to4: embeds an IPv4 address; denied whole, not judged by it
    "fc00::/7",         // unique-local (the IPv6 metadata address among them)
    "fe80::/10",        // link-local
    "fec0::/10",        // site-local (deprecated), still private where used
    "ff00::/8",         // multicast
];

static DENIED_NETS: LazyLock<Vec<IpNet>> = LazyLock::new(|| {
    DENIED
        .iter()
        .map(|n| n.parse().expect("the denied ranges are valid CIDR"))
        .collect()
});

/// Headers a flow sets for the origin it names, dropped when a redirect
/// leads to another (scheme, host or port): its credentials, and the `Host`
/// that would address the other server as the first.
const ORIGIN_BOUND: [HeaderName; 4] = [
    header::AUTHORIZATION,
    header::COOKIE,
    header::PROXY_AUTHORIZATION,
    header::HOST,
];

/// How many redirects a request follows.
const MAX_REDIRECTS: usize = 5;
/// The longest wait for one connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where flows may connect.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Policy {
    /// Ranges allowed although denied by default (an operator's choice).
    allow_nets: Vec<IpNet>,
    /// Single addresses allowed (the load balancer's public data port).
    allow_addrs: Vec<SocketAddr>,
    /// The fabric's own services on other hosts: never reached there,
    /// whatever is allowed.
    deny_addrs: Vec<SocketAddr>,
    /// The ports of the fabric's own services on this host: refused on
    /// every address of this host (see [`Policy::is_own`]).
    deny_local_ports: Vec<u16>,
}

/// An egress setting that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("egress entry {entry:?}: {reason}")]
pub struct PolicyError {
    /// The entry.
    pub entry: String,
    /// Why.
    pub reason: String,
}

impl Policy {
    /// A policy from the operator's `allow` entries (CIDR ranges such as
    /// `10.1.0.0/16`, or `host:port` addresses) and the fabric's own
    /// service addresses to `deny` (`host:port`, names resolved now).
    pub fn new(allow: &[String], deny: &[String]) -> Result<Self, PolicyError> {
        let mut policy = Policy::default();
        for entry in allow.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
            if let Ok(net) = entry.parse::<IpNet>() {
                policy.allow_nets.push(net);
            } else if let Ok(ip) = entry.parse::<IpAddr>() {
                policy.allow_nets.push(IpNet::from(ip));
            } else {
                policy.allow_addrs.extend(addresses(entry)?);
            }
        }
        for entry in deny.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
            for own in addresses(entry)? {
                if on_this_host(own.ip()) {
                    policy.deny_local_ports.push(own.port());
                } else {
                    policy.deny_addrs.push(own);
                }
            }
        }
        Ok(policy)
    }

    /// Whether a flow may connect to `addr`.
    pub fn allows(&self, addr: SocketAddr) -> bool {
        let ip = canonical(addr.ip());
        let addr = SocketAddr::new(ip, addr.port());
        if self.is_own(addr) {
            return false;
        }
        self.allow_addrs.contains(&addr)
            || self.allow_nets.iter().any(|n| n.contains(&ip))
            || !DENIED_NETS.iter().any(|n| n.contains(&ip))
    }

    /// Whether `addr` is one of the fabric's own services. A service on this
    /// host listening on `0.0.0.0` or `[::]` also answers on every other
    /// address of this host, so the port of an own address on this host is
    /// refused on all of them, not only on the address it was named by.
    /// Ports of services on other hosts are refused on those addresses only.
    fn is_own(&self, addr: SocketAddr) -> bool {
        self.deny_addrs.contains(&addr)
            || (self.deny_local_ports.contains(&addr.port()) && on_this_host(addr.ip()))
    }
}

/// Whether a connection to `ip` reaches this host: loopback, unspecified
/// (which Linux and the BSDs connect to this host), or an address of one of
/// its interfaces, known by being bindable. Asked of a target when
/// connecting, so an address the host gains later counts (of the fabric's
/// own addresses, once, when the policy is made); with `ip_nonlocal_bind`
/// every address binds and so counts, which refuses too much, never too
/// little.
fn on_this_host(ip: IpAddr) -> bool {
    ip.is_loopback() || ip.is_unspecified() || std::net::UdpSocket::bind((ip, 0)).is_ok()
}

/// An IPv4 address carried in IPv6 (`::ffff:a.b.c.d`) is judged as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

fn addresses(entry: &str) -> Result<Vec<SocketAddr>, PolicyError> {
    let fail = |reason: String| PolicyError {
        entry: entry.to_string(),
        reason,
    };
    let found: Vec<SocketAddr> = entry
        .to_socket_addrs()
        .map_err(|e| fail(format!("not a CIDR range or host:port ({e})")))?
        .map(|a| SocketAddr::new(canonical(a.ip()), a.port()))
        .collect();
    if found.is_empty() {
        return Err(fail("resolves to no address".into()));
    }
    Ok(found)
}

/// Why an outbound request failed. The texts name no address and no
/// reason beyond these, so they say nothing about what is listening where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EgressError {
    /// The URL cannot be used.
    #[error("the URL is not an http:// URL with a host")]
    Url,
    /// The policy refuses every address the host has.
    #[error("refused by the fabric's egress policy")]
    Denied,
    /// No connection could be made (refused, unreachable, no such host, timed out).
    #[error("could not connect")]
    Connect,
    /// A header the flow gave is not valid.
    #[error("header {0:?} is not valid")]
    Header(String),
    /// The response did not come, or not whole, in time.
    #[error("no complete response within {0:?}")]
    Timeout(Duration),
    /// The response body is larger than the worker accepts.
    #[error("the response body is larger than {0} bytes")]
    TooLarge(usize),
    /// Too many redirects.
    #[error("more than {MAX_REDIRECTS} redirects")]
    Redirects,
    /// The connection failed after it was made.
    #[error("the response could not be read")]
    Broken,
}

/// What a flow's `http-request` sends.
pub struct Outbound {
    /// The method.
    pub method: Method,
    /// The URL.
    pub url: String,
    /// Headers, as the flow named them.
    pub headers: Vec<(String, String)>,
    /// The body and its content type, if any.
    pub body: Option<(Bytes, &'static str)>,
    /// How long the whole exchange may take.
    pub timeout: Duration,
}

/// The connector: resolves, checks each address against the policy, connects.
#[derive(Clone)]
struct Guarded {
    policy: Arc<Policy>,
}

/// The connector's failure, read back by [`Client::send`] to tell a
/// refusal from a failure to connect.
#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error("denied")]
    Denied,
    #[error("connect failed")]
    Failed,
}

impl tower::Service<Uri> for Guarded {
    type Response = TokioIo<TcpStream>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = uri.host().ok_or(ConnectError::Failed)?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let port = uri.port_u16().unwrap_or(80);
            let found: Vec<SocketAddr> = match host.parse::<IpAddr>() {
                Ok(ip) => vec![SocketAddr::new(ip, port)],
                Err(_) => tokio::net::lookup_host((host, port))
                    .await
                    .map_err(|_| ConnectError::Failed)?
                    .collect(),
            };
            let allowed: Vec<SocketAddr> =
                found.into_iter().filter(|a| policy.allows(*a)).collect();
            if allowed.is_empty() {
                return Err(ConnectError::Denied);
            }
            for addr in allowed {
                if let Ok(Ok(stream)) =
                    tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await
                {
                    let _ = stream.set_nodelay(true);
                    return Ok(TokioIo::new(stream));
                }
            }
            Err(ConnectError::Failed)
        })
    }
}

/// Sends flows' outbound requests under the policy, reading at most
/// `max_body` bytes of each response.
#[derive(Clone)]
pub struct Client {
    http: HyperClient<Guarded, Full<Bytes>>,
    max_body: usize,
}

impl Client {
    /// A client for `policy`.
    pub fn new(policy: Policy, max_body: usize) -> Self {
        let http = HyperClient::builder(TokioExecutor::new()).build(Guarded {
            policy: Arc::new(policy),
        });
        Client { http, max_body }
    }

    /// Sends `out`, following redirects through the policy, and returns the
    /// final status and body.
    pub async fn send(&self, out: Outbound) -> Result<(StatusCode, Bytes), EgressError> {
        let timeout = out.timeout;
        tokio::time::timeout(timeout, self.exchange(out))
            .await
            .map_err(|_| EgressError::Timeout(timeout))?
    }

    async fn exchange(&self, mut out: Outbound) -> Result<(StatusCode, Bytes), EgressError> {
        let mut url = reqwest::Url::parse(&out.url).map_err(|_| EgressError::Url)?;
        for _ in 0..=MAX_REDIRECTS {
            if url.scheme() != "http" || url.host_str().is_none() {
                return Err(EgressError::Url);
            }
            let uri: Uri = url.as_str().parse().map_err(|_| EgressError::Url)?;
            let mut req = Request::builder().method(out.method.clone()).uri(uri);
            for (name, value) in &out.headers {
                let n = HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| EgressError::Header(name.clone()))?;
                let v =
                    HeaderValue::from_str(value).map_err(|_| EgressError::Header(name.clone()))?;
                req = req.header(n, v);
            }
            let body = match &out.body {
                Some((bytes, content_type)) => {
                    req = req.header(header::CONTENT_TYPE, *content_type);
                    Full::new(bytes.clone())
                }
                None => Full::new(Bytes::new()),
            };
            let req = req.body(body).map_err(|_| EgressError::Url)?;
            let response = self.http.request(req).await.map_err(|e| {
                let denied = std::error::Error::source(&e)
                    .and_then(|s| s.downcast_ref::<ConnectError>())
                    .is_some_and(|c| matches!(c, ConnectError::Denied));
                if denied {
                    EgressError::Denied
                } else if e.is_connect() {
                    EgressError::Connect
                } else {
                    EgressError::Broken
                }
            })?;
            let status = response.status();
            if status.is_redirection()
                && let Some(next) = response
                    .headers()
                    .get(header::LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .and_then(|l| url.join(l).ok())
            {
                // A 303, and a 301 or 302 after anything but GET or HEAD,
                // continue as a GET without a body (as browsers do after a
                // POST; here after PUT and the rest too, so a body is only
                // sent again where a 307 or 308 asks for it).
                if status == StatusCode::SEE_OTHER
                    || (matches!(status, StatusCode::MOVED_PERMANENTLY | StatusCode::FOUND)
                        && out.method != Method::HEAD)
                {
                    out.method = Method::GET;
                    out.body = None;
                }
                if next.origin() != url.origin() {
                    // Meant for the origin the flow named: never handed to
                    // one a redirect chose (as browsers and curl do). Dropped
                    // for the rest of the chain, even one that comes back.
                    out.headers.retain(|(name, _)| {
                        !ORIGIN_BOUND
                            .iter()
                            .any(|h| name.eq_ignore_ascii_case(h.as_str()))
                    });
                }
                url = next;
                continue;
            }
            let body = Limited::new(response.into_body(), self.max_body)
                .collect()
                .await
                .map_err(|e| {
                    if e.downcast_ref::<http_body_util::LengthLimitError>()
                        .is_some()
                    {
                        EgressError::TooLarge(self.max_body)
                    } else {
                        EgressError::Broken
                    }
                })?
                .to_bytes();
            return Ok((status, body));
        }
        Err(EgressError::Redirects)
    }
}

/// Where an outbound request went, for messages: scheme, host and port,
/// never the path or query (which may hold a credential).
pub fn origin(url: &str) -> String {
    reqwest::Url::parse(url)
        .ok()
        .map(|u| u.origin().ascii_serialization())
        .filter(|o| o != "null")
        .unwrap_or_else(|| "an invalid URL".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn by_default_only_public_addresses_are_reached() {
        let p = Policy::default();
        for denied in [
            "127.0.0.1:80",
            "127.9.9.9:8080",
            "10.1.2.3:80",
            "172.20.0.1:80",
            "192.168.1.1:80",
            "169.254.169.254:80",
            "100.100.1.1:80",
            "0.0.0.0:80",
            "[::1]:80",
            "[::]:80",
            "[fd00:ec2::254]:80",
            "[fe80::1]:80",
            "[::ffff:127.0.0.1]:80",
            "[::ffff:169.254.169.254]:80",
            "[64:ff9b::7f00:1]:80",
            "224.0.0.1:80",
            "255.255.255.255:80",
            "168.63.129.16:80",
            "[::7f00:1]:80",
            "[::a9fe:a9fe]:80",
            "[2002:7f00:1::1]:80",
            "[2001:0:4136:e378:8000:63bf:3fff:fdd2]:80",
            "[64:ff9b:1::a00:1]:80",
            "[fec0::1]:80",
            "[2001:db8::1]:80",
        ] {
            assert!(!p.allows(addr(denied)), "{denied}");
        }
        for public in [
            "1.1.1.1:443",
            "93.184.216.34:80",
            "168.63.129.17:80",
            "[2606:4700::1111]:80",
            "[2003::1]:80",
            "[2001:4860:4860::8888]:80",
        ] {
            assert!(p.allows(addr(public)), "{public}");
        }
    }

    #[test]
    fn an_operator_widens_by_range_or_address_and_never_past_the_fabrics_own() {
        let p = Policy::new(
            &["10.1.0.0/16".into(), "127.0.0.1:8080".into()],
            &["10.1.0.5:7000".into(), "127.0.0.1:8081".into()],
        )
        .unwrap();
        assert!(p.allows(addr("10.1.2.3:443")));
        assert!(!p.allows(addr("10.2.0.1:443")), "outside the range");
        assert!(
            p.allows(addr("127.0.0.1:8080")),
            "the load balancer's data port"
        );
        assert!(!p.allows(addr("127.0.0.1:8081")), "another loopback port");
        assert!(
            !p.allows(addr("10.1.0.5:7000")),
            "a service inside an allowed range"
        );
        assert!(Policy::new(&["not an address".into()], &[]).is_err());
    }

    #[test]
    fn the_fabrics_own_ports_are_refused_on_every_address_of_this_host() {
        // An operator opened everything; the services bound to loopback and
        // to every address still cannot be reached by another local address.
        let p = Policy::new(
            &["0.0.0.0/0".into(), "::/0".into()],
            &[
                "127.0.0.1:7000".into(),
                "0.0.0.0:7001".into(),
                "[::]:7002".into(),
                "198.51.100.7:7003".into(),
            ],
        )
        .unwrap();
        for port in [7000, 7001, 7002] {
            for ip in [
                "127.0.0.1",
                "127.0.0.2",
                "127.255.0.9",
                "0.0.0.0",
                "::1",
                "::",
                "::ffff:127.0.0.3",
            ] {
                let own = SocketAddr::new(ip.parse().unwrap(), port);
                assert!(!p.allows(own), "{own}");
            }
        }
        assert!(
            !p.allows(addr("198.51.100.7:7003")),
            "a service on another host"
        );
        assert!(
            p.allows(addr("127.0.0.1:7003")),
            "its port is not this host's"
        );
        assert!(p.allows(addr("127.0.0.1:7004")), "not a fabric port");
        assert!(p.allows(addr("1.1.1.1:7000")), "a fabric port, elsewhere");
        // The address this host sends from, when it has a route: a service
        // on 0.0.0.0 answers there too. (Connecting UDP sends nothing.)
        let routed = std::net::UdpSocket::bind("0.0.0.0:0")
            .and_then(|s| s.connect("1.1.1.1:53").and_then(|()| s.local_addr()))
            .map(|a| a.ip())
            .ok()
            .filter(|ip| !ip.is_loopback() && !ip.is_unspecified());
        if let Some(ip) = routed {
            assert!(!p.allows(SocketAddr::new(ip, 7001)), "{ip}: a fabric port");
            assert!(p.allows(SocketAddr::new(ip, 7004)), "{ip}: another port");
        }
    }

    #[test]
    fn origins_drop_path_and_query() {
        assert_eq!(
            origin("http://api.example:8080/v1/x?key=secret"),
            "http://api.example:8080"
        );
        assert_eq!(origin("nonsense"), "an invalid URL");
    }
}
