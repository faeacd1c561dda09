//! The pass-through lane against hyper's general path: the same requests,
//! answered by a worker from a corpus of raw answers, through a proxy with
//! the lane and one without (`pass_through = false`), must reach a raw
//! client the same, or differ only where the lane is meant to.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::{Proxy, settings, table};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const HOST: &str = "orders.fabric.localhost";

/// The worker's answers, by path: the bytes it writes, and whether it
/// closes the connection after them. A `HEAD` gets the same head, no body.
fn corpus(path: &str) -> Option<(&'static str, bool)> {
    Some(match path {
        "/length" => (
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-App: 1\r\nContent-Length: 5\r\n\r\nhello",
            false,
        ),
        "/length-zero" => ("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", false),
        "/same-lengths" => (
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
            false,
        ),
        "/reason" => (
            "HTTP/1.1 299 Quite Fine\r\nContent-Length: 2\r\n\r\nok",
            false,
        ),
        "/chunked" => (
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
             5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
            false,
        ),
        "/chunked-ext-trailers" => (
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\n\r\n\
             5;name=value\r\nhello\r\n6;a;b=\"q\"\r\n world\r\n0;last\r\nx-sum: 11\r\n\r\n",
            false,
        ),
        "/chunked-empty" => (
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            false,
        ),
        "/continue" => (
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            false,
        ),
        "/early-hints" => (
            "HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n\
             HTTP/1.1 100 Continue\r\n\r\n\
             HTTP/1.1 200 OK\r\nLink: </style.css>; rel=preload\r\nContent-Length: 2\r\n\r\nok",
            false,
        ),
        "/no-content" => ("HTTP/1.1 204 No Content\r\nX-App: 1\r\n\r\n", false),
        "/not-modified" => ("HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\n\r\n", false),
        "/hop-by-hop" => (
            "HTTP/1.1 200 OK\r\nConnection: x-internal\r\nX-Internal: 1\r\nKeep-Alive: timeout=5\r\n\
             Proxy-Authenticate: Basic\r\nX-Kept: 1\r\nContent-Length: 2\r\n\r\nok",
            false,
        ),
        "/until-close" => (
            "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the worker closes",
            true,
        ),
        "/until-close-unsaid" => ("HTTP/1.1 200 OK\r\n\r\nno length, no word", true),
        "/length-and-chunked" => (
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n\
             5\r\nhello\r\n0\r\n\r\n",
            true,
        ),
        "/differing-lengths" => (
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
            true,
        ),
        "/bad-chunk-size" => (
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nabc\r\n0\r\n\r\n",
            true,
        ),
        "/short" => ("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello", true),
        "/short-chunked" => (
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
            true,
        ),
        _ => return None,
    })
}

/// A worker answering from [`corpus`] (and `/ping` with `pong`).
async fn worker() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut pending = Vec::new();
                loop {
                    let head = loop {
                        if let Some(end) = find(&pending, b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&pending[..end]).into_owned();
                            pending.drain(..end + 4);
                            break head;
                        }
                        let mut buf = [0u8; 4096];
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => pending.extend_from_slice(&buf[..n]),
                        }
                    };
                    let mut words = head.split(' ');
                    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
                    let (answer, close) = corpus(path)
                        .unwrap_or(("HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\npong", false));
                    let answer = match method {
                        // The final head and the informational ones, no body.
                        "HEAD" => &answer[..answer.rfind("\r\n\r\n").map_or(0, |e| e + 4)],
                        _ => answer,
                    };
                    if conn.write_all(answer.as_bytes()).await.is_err() || close {
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// How the client's connection ended the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The answer was whole by its framing.
    Whole,
    /// The connection closed (or was reset) before the answer was whole.
    Cut,
}

/// What a raw client saw of one answer.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    /// The status (and reason) of the final answer; none when the
    /// connection closed before one.
    status: Option<(u16, String)>,
    /// Informational answers passed on (neither path passes any).
    informational: Vec<u16>,
    /// Header lines, names lower case, sorted; without `date` (see
    /// `dated`) and the per-hop `connection` and `keep-alive` (see `kept`).
    headers: Vec<(String, String)>,
    /// Whether the answer had a `Date`: hyper adds one, the lane does not.
    dated: bool,
    /// How the body was framed on the client's connection.
    framing: Framing,
    /// The body, decoded (chunks joined, extensions dropped).
    body: Vec<u8>,
    /// Trailer lines after a chunked body.
    trailers: Vec<String>,
    end: End,
    /// Whether the connection served another request afterwards.
    kept: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length,
    Chunked,
    UntilClose,
}

/// A client connection with the bytes read past its last answer.
struct Client {
    stream: TcpStream,
    pending: Vec<u8>,
    eof: bool,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        Client {
            stream: TcpStream::connect(addr).await.unwrap(),
            pending: Vec::new(),
            eof: false,
        }
    }

    /// Reads more; false at the end of the stream, a reset, or after 10 s.
    async fn more(&mut self) -> bool {
        if self.eof {
            return false;
        }
        let mut buf = [0u8; 8192];
        let read = tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut buf));
        match read.await {
            Ok(Ok(n)) if n > 0 => {
                self.pending.extend_from_slice(&buf[..n]);
                true
            }
            Ok(_) => {
                self.eof = true;
                false
            }
            Err(_) => panic!("no answer in 10 s, after {:?}", self.text()),
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.pending).into_owned()
    }

    /// A line ended by CRLF, without it.
    async fn line(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(end) = find(&self.pending, b"\r\n") {
                let line = self.pending[..end].to_vec();
                self.pending.drain(..end + 2);
                return Some(line);
            }
            if !self.more().await {
                return None;
            }
        }
    }

    async fn bytes(&mut self, n: usize, into: &mut Vec<u8>) -> bool {
        while self.pending.len() < n {
            if !self.more().await {
                into.append(&mut self.pending);
                return false;
            }
        }
        into.extend(self.pending.drain(..n));
        true
    }

    /// Sends `method path` for the app, and reads what comes back.
    async fn ask(&mut self, method: &str, path: &str) -> Seen {
        let wire = format!(
            "{method} {path} HTTP/1.1\r\nHost: {HOST}\r\nX-Request-Id: diff{}\r\n\r\n",
            path.replace('/', "-")
        );
        let sent = self.stream.write_all(wire.as_bytes()).await.is_ok();
        let mut seen = Seen {
            status: None,
            informational: Vec::new(),
            headers: Vec::new(),
            dated: false,
            framing: Framing::None,
            body: Vec::new(),
            trailers: Vec::new(),
            end: End::Cut,
            kept: false,
        };
        if !sent {
            return seen;
        }
        // The heads, informational ones first.
        let (status, reason, lines) = loop {
            let head = loop {
                if let Some(end) = find(&self.pending, b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&self.pending[..end]).into_owned();
                    self.pending.drain(..end + 4);
                    break head;
                }
                if !self.more().await {
                    return seen;
                }
            };
            let mut lines = head.split("\r\n");
            let status_line = lines.next().unwrap_or_default();
            let mut parts = status_line.splitn(3, ' ');
            assert_eq!(parts.next(), Some("HTTP/1.1"), "{head}");
            let status: u16 = parts.next().unwrap_or_default().parse().unwrap();
            let reason = parts.next().unwrap_or_default().to_string();
            if (100..200).contains(&status) {
                seen.informational.push(status);
                continue;
            }
            let lines: Vec<(String, String)> = lines
                .map(|l| {
                    let (n, v) = l.split_once(':').expect("a header line");
                    (n.trim().to_ascii_lowercase(), v.trim().to_string())
                })
                .collect();
            break (status, reason, lines);
        };
        seen.status = Some((status, reason));
        let value = |name: &str| {
            lines
                .iter()
                .filter(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
                .collect::<Vec<_>>()
        };
        let chunked = value("transfer-encoding")
            .last()
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
        let length = value("content-length")
            .first()
            .map(|v| v.parse::<usize>().unwrap());
        let closes = value("connection")
            .iter()
            .any(|v| v.eq_ignore_ascii_case("close"));
        seen.dated = !value("date").is_empty();
        seen.headers = lines
            .iter()
            .filter(|(n, _)| !["date", "connection", "keep-alive"].contains(&n.as_str()))
            .cloned()
            .collect();
        seen.headers.sort();
        let bodiless = method == "HEAD" || status == 204 || status == 304;
        seen.framing = match (bodiless, chunked, length) {
            (true, ..) => Framing::None,
            (_, true, _) => Framing::Chunked,
            (_, _, Some(_)) => Framing::Length,
            _ => Framing::UntilClose,
        };
        let whole = match seen.framing {
            Framing::None => true,
            Framing::Length => self.bytes(length.unwrap_or(0), &mut seen.body).await,
            Framing::UntilClose => {
                while self.more().await {}
                seen.body.append(&mut self.pending);
                true
            }
            Framing::Chunked => self.chunks(&mut seen).await,
        };
        seen.end = if whole { End::Whole } else { End::Cut };
        // Whether the connection goes on: another request on it.
        if whole && seen.framing != Framing::UntilClose {
            let ping = format!("GET /ping HTTP/1.1\r\nHost: {HOST}\r\n\r\n");
            if self.stream.write_all(ping.as_bytes()).await.is_ok() {
                let mut pong = Vec::new();
                while find(&self.pending, b"pong").is_none() && self.more().await {}
                pong.append(&mut self.pending);
                seen.kept = find(&pong, b"pong").is_some();
            }
            assert!(!(seen.kept && closes), "a connection said to close went on");
        }
        seen
    }

    /// A chunked body into `seen`; false when it was cut.
    async fn chunks(&mut self, seen: &mut Seen) -> bool {
        loop {
            let Some(size) = self.line().await else {
                return false;
            };
            let size = String::from_utf8_lossy(&size).into_owned();
            let digits = size.split(';').next().unwrap_or_default().trim();
            let Ok(n) = usize::from_str_radix(digits, 16) else {
                // A chunk size a client cannot read: as good as cut.
                return false;
            };
            if n == 0 {
                break;
            }
            if !self.bytes(n, &mut seen.body).await {
                return false;
            }
            let mut crlf = Vec::new();
            if !self.bytes(2, &mut crlf).await || crlf != b"\r\n" {
                return false;
            }
        }
        loop {
            match self.line().await {
                None => return false,
                Some(l) if l.is_empty() => return true,
                Some(l) => seen.trailers.push(String::from_utf8_lossy(&l).into_owned()),
            }
        }
    }
}

/// What one request gets on a fresh connection to `proxy`.
async fn seen(proxy: SocketAddr, method: &str, path: &str) -> Seen {
    Client::connect(proxy).await.ask(method, path).await
}

/// The worker, a proxy with the lane and one without, both routing to it.
async fn started() -> (Proxy, Proxy) {
    let worker = worker().await;
    let lane = Proxy::start(settings()).await;
    let hyper = Proxy::start(lb_proxy::Settings {
        pass_through: false,
        ..settings()
    })
    .await;
    for p in [&lane, &hyper] {
        p.put_routes(table("orders", &[(0, worker, "ready")])).await;
    }
    (lane, hyper)
}

/// Every path of the corpus.
const PATHS: [&str; 19] = [
    "/length",
    "/length-zero",
    "/same-lengths",
    "/reason",
    "/chunked",
    "/chunked-ext-trailers",
    "/chunked-empty",
    "/continue",
    "/early-hints",
    "/no-content",
    "/not-modified",
    "/hop-by-hop",
    "/until-close",
    "/until-close-unsaid",
    "/length-and-chunked",
    "/differing-lengths",
    "/bad-chunk-size",
    "/short",
    "/short-chunked",
];

/// `seen` with an error answer's JSON body cut to its kind and correlation
/// id (the message quotes each parser's own words), and without its length.
fn comparable(mut seen: Seen) -> Seen {
    let json = seen
        .headers
        .iter()
        .any(|(n, v)| n == "content-type" && v == "application/json");
    if json {
        seen.headers.retain(|(n, _)| n != "content-length");
        if !seen.body.is_empty() {
            let v: serde_json::Value = serde_json::from_slice(&seen.body).unwrap();
            seen.body = format!("{} {}", v["error"], v["correlationId"]).into_bytes();
        }
    }
    seen
}

/// What the lane must show for `method path`, given what hyper's path
/// showed: the same, but where the lane differs on purpose.
fn lane_should_show(method: &str, path: &str, hyper: &Seen) -> Seen {
    let mut want = hyper.clone();
    // hyper's server adds a `Date`; the lane adds none (the fabric's
    // workers send it). This is also how each answer shows its path.
    want.dated = false;
    let chunked = ("transfer-encoding".to_string(), "chunked".to_string());
    match (method, path) {
        // Trailers: the lane passes a chunked body's bytes unchanged, its
        // trailers with them; hyper's path drops them (its client was not
        // asked for `TE: trailers`).
        ("GET", "/chunked-ext-trailers") => want.trailers = vec!["x-sum: 11".into()],
        // A body ended by the worker's close: the lane passes it the same
        // way and then closes the client's connection (it frames nothing
        // itself); hyper's server chunks it and keeps the connection.
        ("GET", "/until-close" | "/until-close-unsaid") => {
            want.headers.retain(|h| *h != chunked);
            want.framing = Framing::UntilClose;
            want.kept = false;
        }
        _ => {}
    }
    want
}

#[tokio::test]
async fn every_answer_reaches_a_client_of_the_lane_as_hyper_passes_it_or_as_documented() {
    let (lane, hyper) = started().await;
    let mut wrong = Vec::new();
    for method in ["GET", "HEAD"] {
        for path in PATHS {
            let l = comparable(seen(lane.http, method, path).await);
            let h = comparable(seen(hyper.http, method, path).await);
            assert!(h.dated, "{method} {path}: hyper's path answered: {h:?}");
            let want = lane_should_show(method, path, &h);
            if l != want {
                wrong.push(format!(
                    "{method} {path}\n  lane   {l:?}\n  wanted {want:?}\n  hyper  {h:?}"
                ));
            }
            if (method, path) == ("GET", "/length-and-chunked") {
                // Content-Length beside chunked: both paths read the chunks
                // and drop the length (RFC 9112 §6.3: a proxy must).
                assert_eq!(
                    (h.body.as_slice(), h.framing),
                    (&b"hello"[..], Framing::Chunked)
                );
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[tokio::test]
async fn a_malformed_chunk_cuts_both_paths_after_the_chunks_before_it() {
    let (lane, hyper) = started().await;
    for proxy in [&lane, &hyper] {
        let mut c = Client::connect(proxy.http).await;
        let seen = c.ask("GET", "/bad-chunk-size").await;
        assert_eq!(seen.status.map(|s| s.0), Some(200));
        assert_eq!((seen.body.as_slice(), seen.end), (&b"hello"[..], End::Cut));
        // Nothing of the malformed piece or past it reached the client.
        assert!(find(&c.pending, b"zz").is_none() && find(&c.pending, b"abc").is_none());
    }
}
