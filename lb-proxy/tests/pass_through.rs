//! The pass-through lane (`GET` and `HEAD`, and small bodies framed by
//! `Content-Length`, over HTTP/1.1) against a worker written at the byte
//! level: response framings passed on whole, informational answers skipped,
//! hop-by-hop headers dropped both ways, pipelined requests answered in
//! order, bodies passed whole, a connection handed to hyper when a request
//! is not the lane's, and workers that close or frame badly.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use support::{Proxy, settings, table};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const HOST: &str = "orders.fabric.localhost";

/// A worker that answers by the request's path (see `script`), and counts
/// its connections.
struct Worker {
    addr: SocketAddr,
    connections: Arc<AtomicU64>,
}

/// The answer to `path` on connection `n`, given the request's head; and
/// whether the worker closes the connection after it.
fn script(path: &str, n: u64, head: &str, body: &[u8]) -> (String, bool) {
    let sized = |body: &str| {
        format!(
            "HTTP/1.1 200 OK\r\nx-conn: {n}\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    match path {
        "/chunked" => (
            format!(
                "HTTP/1.1 200 OK\r\nx-conn: {n}\r\ntransfer-encoding: chunked\r\n\r\n\
                 5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-trailer: 1\r\n\r\n"
            ),
            false,
        ),
        "/hints" => (
            format!(
                "HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n{}",
                sized("ok")
            ),
            false,
        ),
        "/close" => (
            format!(
                "HTTP/1.1 200 OK\r\nx-conn: {n}\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok"
            ),
            true,
        ),
        "/eof" => ("HTTP/1.1 200 OK\r\n\r\nuntil close".into(), true),
        "/bad-chunk" => (
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n".into(),
            true,
        ),
        "/two-lengths" => (
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok".into(),
            true,
        ),
        "/hop" => (
            format!(
                "HTTP/1.1 200 OK\r\nx-conn: {n}\r\nconnection: x-internal, content-length\r\nx-internal: 1\r\n\
                 keep-alive: timeout=5\r\nx-kept: 1\r\ncontent-length: 2\r\n\r\nok"
            ),
            false,
        ),
        "/echo" => (sized(head), false),
        "/echo-body" => (sized(&String::from_utf8_lossy(body)), false),
        other => (sized(&format!("connection {n} {other}")), false),
    }
}

impl Worker {
    async fn start() -> Worker {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicU64::new(0));
        let count = connections.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let n = count.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::spawn(async move {
                    let mut pending = Vec::new();
                    loop {
                        let Some((head, body)) = read_message(&mut conn, &mut pending, false).await
                        else {
                            return;
                        };
                        let path = head.split(' ').nth(1).unwrap_or("/").to_string();
                        let (mut answer, close) = script(&path, n, &head, &body);
                        if head.starts_with("HEAD ") {
                            let end = answer.find("\r\n\r\n").unwrap_or(answer.len());
                            answer.truncate(end + 4);
                        }
                        if conn.write_all(answer.as_bytes()).await.is_err() || close {
                            return;
                        }
                    }
                });
            }
        });
        Worker { addr, connections }
    }
}

/// Reads one message (head and `content-length` body, unless `bodiless`)
/// from `conn`, with `pending` holding bytes read past the last one; none at
/// the end of the stream.
async fn read_message<S: AsyncRead + Unpin>(
    conn: &mut S,
    pending: &mut Vec<u8>,
    bodiless: bool,
) -> Option<(String, Vec<u8>)> {
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end + 4]).into_owned();
            let length = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .filter(|_| !bodiless)
                .unwrap_or(0);
            if pending.len() >= end + 4 + length {
                let body = pending[end + 4..end + 4 + length].to_vec();
                pending.drain(..end + 4 + length);
                return Some((head, body));
            }
        }
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
        }
    }
}

/// A worker, and a proxy routing app `orders` to it, ready.
async fn started() -> (Worker, Proxy) {
    let worker = Worker::start().await;
    let proxy = Proxy::start(settings()).await;
    proxy
        .put_routes(table("orders", &[(0, worker.addr, "ready")]))
        .await;
    (worker, proxy)
}

/// A GET for the app through `client`, which keeps its connections.
async fn fetch(client: &reqwest::Client, proxy: &Proxy, path: &str) -> reqwest::Response {
    client
        .get(proxy.url(path))
        .header("host", HOST)
        .send()
        .await
        .unwrap()
}

/// A client connection to the proxy, with the bytes read past its last answer.
struct Client {
    stream: TcpStream,
    pending: Vec<u8>,
}

impl Client {
    async fn connect(proxy: &Proxy) -> Client {
        Client {
            stream: TcpStream::connect(proxy.http).await.unwrap(),
            pending: Vec::new(),
        }
    }

    async fn send(&mut self, wire: &str) {
        self.stream.write_all(wire.as_bytes()).await.unwrap();
    }

    /// The next answer's head and body (by `content-length`).
    async fn answer(&mut self) -> (String, String) {
        self.read(false).await
    }

    /// The next answer's head, to a `HEAD`.
    async fn head(&mut self) -> String {
        self.read(true).await.0
    }

    async fn read(&mut self, bodiless: bool) -> (String, String) {
        let read = read_message(&mut self.stream, &mut self.pending, bodiless);
        let (head, body) = tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .expect("an answer in time")
            .expect("an answer before the connection closed");
        (head, String::from_utf8(body).unwrap())
    }

    /// Whether the proxy closes the connection (with nothing more to read).
    async fn closed(&mut self) -> bool {
        let mut rest = Vec::new();
        let read = self.stream.read_to_end(&mut rest);
        matches!(
            tokio::time::timeout(Duration::from_secs(10), read).await,
            Ok(Ok(0))
        )
    }
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nhost: {HOST}\r\n\r\n")
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[tokio::test]
async fn chunked_and_informational_answers_pass_through_on_one_connection() {
    let (worker, proxy) = started().await;
    let client = reqwest::Client::new();
    let chunked = fetch(&client, &proxy, "/chunked").await;
    assert_eq!(chunked.headers()["x-conn"], "1");
    assert_eq!(chunked.text().await.unwrap(), "hello world");
    let hinted = fetch(&client, &proxy, "/hints").await;
    assert_eq!(hinted.status(), 200);
    assert_eq!(hinted.text().await.unwrap(), "ok");
    let plain = fetch(&client, &proxy, "/").await;
    assert_eq!(
        plain.headers()["x-conn"],
        "1",
        "the worker connection is reused"
    );
    assert_eq!(plain.text().await.unwrap(), "connection 1 /");
    assert_eq!(worker.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let (_worker, proxy) = started().await;
    let mut c = Client::connect(&proxy).await;
    c.send(&format!("{}{}{}", get("/a"), get("/chunked"), get("/b")))
        .await;
    assert_eq!(c.answer().await.1, "connection 1 /a");
    // The chunked answer, read by its framing.
    let (head, _) = c.answer().await;
    assert_eq!(header(&head, "transfer-encoding"), Some("chunked"));
    let mut rest = String::new();
    while !rest.ends_with("connection 1 /b") {
        let mut buf = [0u8; 1024];
        let n = c.stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "the connection closed after {rest:?}");
        rest.push_str(std::str::from_utf8(&buf[..n]).unwrap());
    }
    let chunks = String::from_utf8(std::mem::take(&mut c.pending)).unwrap() + &rest;
    assert!(
        chunks.starts_with(
            "5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-trailer: 1\r\n\r\nHTTP/1.1 200 OK"
        ),
        "{chunks}"
    );
}

#[tokio::test]
async fn a_request_the_lane_does_not_take_hands_the_connection_to_hyper() {
    let (_worker, proxy) = started().await;
    let mut c = Client::connect(&proxy).await;
    c.send(&get("/first")).await;
    assert_eq!(c.answer().await.1, "connection 1 /first");
    // An expectation: hyper's path serves it, and the rest of the connection.
    c.send(&format!(
        "POST /echo HTTP/1.1\r\nhost: {HOST}\r\nexpect: 100-continue\r\ncontent-length: 5\r\n\r\nhello"
    ))
    .await;
    let (head, _) = c.answer().await;
    assert!(head.starts_with("HTTP/1.1 100"), "{head}");
    let (head, echoed) = c.answer().await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(echoed.starts_with("POST /echo HTTP/1.1"), "{echoed}");
    c.send(&get("/after")).await;
    let (_, body) = c.answer().await;
    assert!(body.ends_with(" /after"), "{body}");
    // HTTP/1.0 and a second Host are hyper's too: answered, not dropped.
    let mut c = Client::connect(&proxy).await;
    c.send(&format!("GET /old HTTP/1.0\r\nhost: {HOST}\r\n\r\n"))
        .await;
    assert!(c.answer().await.1.ends_with(" /old"));
    let mut c = Client::connect(&proxy).await;
    c.send(&format!(
        "GET / HTTP/1.1\r\nhost: {HOST}\r\nhost: other\r\n\r\n"
    ))
    .await;
    let (head, _) = c.answer().await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
}

#[tokio::test]
async fn hop_by_hop_headers_are_dropped_both_ways_and_forwarding_ones_added() {
    let (_worker, proxy) = started().await;
    let mut c = Client::connect(&proxy).await;
    c.send(&format!(
        "GET /echo HTTP/1.1\r\nHost: {HOST}\r\nTE: trailers\r\nKeep-Alive: timeout=5\r\n\
         Proxy-Authorization: Basic eA==\r\nX-Forwarded-Proto: gopher\r\nX-App: kept\r\n\r\n"
    ))
    .await;
    let (head, echoed) = c.answer().await;
    let id = header(&head, "x-request-id").expect("a request id");
    assert_eq!(id.len(), 32);
    assert_eq!(header(&echoed, "x-request-id"), Some(id));
    assert_eq!(header(&echoed, "x-app"), Some("kept"));
    assert_eq!(header(&echoed, "host"), Some(HOST));
    assert_eq!(header(&echoed, "x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(header(&echoed, "x-forwarded-proto"), Some("http"));
    assert_eq!(header(&echoed, "x-forwarded-host"), Some(HOST));
    assert_eq!(
        header(&echoed, "forwarded"),
        Some("for=127.0.0.1;host=orders.fabric.localhost;proto=http")
    );
    for gone in ["te", "keep-alive", "proxy-authorization", "connection"] {
        assert_eq!(header(&echoed, gone), None, "{gone} reached the worker");
    }
    c.send(&get("/hop")).await;
    let (head, body) = c.answer().await;
    assert_eq!(body, "ok");
    assert_eq!(header(&head, "x-kept"), Some("1"));
    for gone in ["x-internal", "keep-alive", "connection"] {
        assert_eq!(header(&head, gone), None, "{gone} reached the client");
    }
    // `Connection` named the length too: the body's framing stays.
    assert_eq!(header(&head, "content-length"), Some("2"));
    // A HEAD: the length passes, no body follows, the connection goes on.
    c.send(&format!("HEAD /head HTTP/1.1\r\nhost: {HOST}\r\n\r\n"))
        .await;
    let head = c.head().await;
    assert_eq!(header(&head, "content-length"), Some("18"));
    c.send(&get("/next")).await;
    assert_eq!(c.answer().await.1, "connection 1 /next");
}

#[tokio::test]
async fn workers_that_close_or_frame_badly() {
    let (_worker, proxy) = started().await;
    let client = reqwest::Client::new();
    // `connection: close` from the worker: its connection is not reused.
    let closing = fetch(&client, &proxy, "/close").await;
    assert_eq!(closing.headers()["x-conn"], "1");
    assert_eq!(closing.text().await.unwrap(), "ok");
    assert_eq!(fetch(&client, &proxy, "/").await.headers()["x-conn"], "2");
    // A body ended by the worker's close reaches the client whole.
    let eof = fetch(&client, &proxy, "/eof").await;
    assert_eq!(eof.text().await.unwrap(), "until close");
    // A malformed chunk: the head goes out, then the body breaks off, and
    // the malformed bytes never reach the client.
    let broken = fetch(&client, &proxy, "/bad-chunk").await;
    assert_eq!(broken.status(), 200);
    assert!(broken.text().await.is_err());
    // Differing lengths: 502, never a guess.
    let ambiguous = fetch(&client, &proxy, "/two-lengths").await;
    assert_eq!(ambiguous.status(), 502);
    assert!(ambiguous.text().await.unwrap().contains("BAD_GATEWAY"));
    // The worker is still served after all of it.
    assert_eq!(fetch(&client, &proxy, "/").await.status(), 200);
}

#[tokio::test]
async fn a_client_asking_to_close_is_answered_then_closed() {
    let (_worker, proxy) = started().await;
    let mut c = Client::connect(&proxy).await;
    c.send(&format!(
        "GET /bye HTTP/1.1\r\nhost: {HOST}\r\nconnection: close\r\n\r\n"
    ))
    .await;
    let (head, body) = c.answer().await;
    assert_eq!(body, "connection 1 /bye");
    assert_eq!(header(&head, "connection"), Some("close"));
    assert!(c.closed().await);

    // The same when no worker answers: the error says so, and closes.
    let dead = support::dead_address().await;
    proxy
        .put_routes(table("orders", &[(0, dead, "ready")]))
        .await;
    let mut c = Client::connect(&proxy).await;
    c.send(&format!(
        "GET /bye HTTP/1.1\r\nhost: {HOST}\r\nconnection: close\r\n\r\n"
    ))
    .await;
    let (head, body) = c.answer().await;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    assert!(body.contains("BAD_GATEWAY"), "{body}");
    assert_eq!(header(&head, "connection"), Some("close"));
    assert!(c.closed().await);
}

/// A request with a body: `method` to `path` with a `content-length`.
fn with_body(method: &str, path: &str, body: &str) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\nhost: {HOST}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test]
async fn small_bodies_with_a_length_pass_through_the_lane_whole() {
    let (worker, proxy) = started().await;
    let mut c = Client::connect(&proxy).await;
    c.send(&get("/first")).await;
    assert_eq!(c.answer().await.1, "connection 1 /first");
    // Every method with a body, on the lane's one connection to the worker
    // (hyper's path would open one of its own).
    for method in ["POST", "PUT", "PATCH", "DELETE"] {
        let sent = format!("{method} order 42");
        c.send(&with_body(method, "/echo-body", &sent)).await;
        let (head, body) = c.answer().await;
        assert_eq!(header(&head, "x-conn"), Some("1"), "{head}");
        assert_eq!(body, sent);
    }
    // An empty body, and a body that comes in two writes.
    c.send(&with_body("POST", "/echo-body", "")).await;
    assert_eq!(c.answer().await.1, "");
    let whole = with_body("POST", "/echo-body", "first half, second half");
    let (part, rest) = whole.split_at(whole.len() - 11);
    c.send(part).await;
    c.send(rest).await;
    assert_eq!(c.answer().await.1, "first half, second half");
    // Pipelined behind a GET, and followed by one.
    c.send(&format!(
        "{}{}{}",
        get("/a"),
        with_body("POST", "/echo-body", "between"),
        get("/b")
    ))
    .await;
    assert_eq!(c.answer().await.1, "connection 1 /a");
    assert_eq!(c.answer().await.1, "between");
    assert_eq!(c.answer().await.1, "connection 1 /b");
    // The worker saw the body's length, once, and the forwarding headers.
    c.send(&with_body("POST", "/echo", "12345")).await;
    let (_, seen) = c.answer().await;
    assert_eq!(
        seen.to_ascii_lowercase()
            .matches("content-length: 5")
            .count(),
        1,
        "{seen}"
    );
    assert!(seen.contains("x-forwarded-for: 127.0.0.1"), "{seen}");
    assert_eq!(worker.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn larger_or_ambiguous_bodies_go_to_hyper_which_refuses_what_it_must() {
    let worker = Worker::start().await;
    let mut limited = settings();
    limited.max_body_bytes = 100 * 1024;
    let proxy = Proxy::start(limited).await;
    proxy
        .put_routes(table("orders", &[(0, worker.addr, "ready")]))
        .await;
    // Over the lane's 64 KiB but within the limit: streamed by hyper's path.
    let big = "x".repeat(70 * 1024);
    let mut c = Client::connect(&proxy).await;
    c.send(&with_body("POST", "/echo-body", &big)).await;
    let (head, body) = c.answer().await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body.len(), big.len());
    // Over the limit: 413, and the worker never sees it.
    let before = worker.connections.load(Ordering::SeqCst);
    let mut c = Client::connect(&proxy).await;
    c.send(&format!(
        "POST /echo-body HTTP/1.1\r\nhost: {HOST}\r\ncontent-length: {}\r\n\r\n",
        200 * 1024
    ))
    .await;
    let (head, _) = c.answer().await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    // Two lengths, a length beside chunked, a length that is not a number:
    // hyper's smuggling checks refuse each, and nothing reaches the worker.
    for framing in [
        "content-length: 5\r\ncontent-length: 6",
        "content-length: 5\r\ntransfer-encoding: chunked",
        "content-length: +5",
        "content-length: 5, 5",
    ] {
        let mut c = Client::connect(&proxy).await;
        c.send(&format!(
            "POST /echo-body HTTP/1.1\r\nhost: {HOST}\r\n{framing}\r\n\r\nhello"
        ))
        .await;
        let (head, _) = c.answer().await;
        assert!(head.starts_with("HTTP/1.1 400"), "{framing}: {head}");
    }
    assert_eq!(worker.connections.load(Ordering::SeqCst), before);
}
