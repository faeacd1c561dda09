//! The pass-through lane for the common HTTP/1.1 request.
//!
//! Most requests a fabric serves are a `GET` or `HEAD` with no body, or a
//! `POST`, `PUT`, `PATCH` or `DELETE` with a small body framed by
//! `Content-Length`, with a clean head and a routable host, answered with a
//! length-framed or chunked response. This lane serves them with each head parsed once (by httparse,
//! the parser hyper itself uses) and passed on as bytes, on the client
//! connection's own task, over raw pooled TCP connections to workers. The
//! rebuilt header maps, the task and channels per upstream connection and
//! the body wrappers of the general path are what it saves (docs/lb-proxy.md,
//! "The pass-through lane").
//!
//! Anything else—another method, a chunked or larger body, `Expect`, `Upgrade`, forwarding
//! headers from another proxy, HTTP/1.0, HTTP/2, a head too large or
//! malformed—is handed, with the bytes already read, to hyper, which serves
//! that request and the rest of the connection behind the smuggling checks.
//! The lane takes only what it fully understands: every refusal of a
//! client's request comes from the general path, and a worker's failure is
//! answered with the general path's JSON error.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use common::shutdown::Shutdown;
use hyper::header::HeaderValue;
use hyper::http::uri::PathAndQuery;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::chunked;
use crate::endpoint::Endpoint;
use crate::error::ProxyError;
use crate::headers;
use crate::proxy::{Conn, Proxy, error_answer};
use crate::routes::{AppRoute, Target};
use crate::upstream;

/// Most header lines of a request head the lane parses; more go to hyper.
const MAX_HEADERS: usize = 64;
/// Most header lines of a response head: hyper's own limit, so that both
/// paths pass the same responses.
const MAX_RESPONSE_HEADERS: usize = 100;
/// Largest response head a worker may send: hyper's default read buffer limit.
const MAX_RESPONSE_HEAD: usize = 8192 + 4096 * 100;
/// How a worker's chunked answer may be written for the lane to relay it.
/// Stricter than the smuggling checks' rules (`smuggle::CHUNK_RULES`): the
/// lane passes each byte on as it reads it, so it refuses what hyper's path
/// or a client could read another way, at the first byte that breaks the
/// framing.
pub(crate) const CHUNK_RULES: chunked::Rules = chunked::Rules {
    // A bare LF is where readers disagree.
    bare_lf: false,
    // Longest chunk-size or trailer line a worker may send, with its CRLF.
    max_line: 4096,
    max_trailers: 64,
    // The size as httparse, the parser hyper uses for heads, reads it: up
    // to 16 digits (a u64), and none at all read as 0.
    min_digits: 0,
    max_digits: 16,
    size_space: chunked::SizeSpace::AfterOnly,
    // What went to the client stops at the first byte past a chunk's size.
    data_end: chunked::DataEnd::Bytes,
};
/// Largest request body the lane takes: it reads the body whole before a
/// worker is chosen and sends head and body in one write. Larger bodies
/// stream through hyper's path.
pub(crate) const LANE_BODY: usize = 64 * 1024;
/// Room made for each read of a response body.
const BODY_READ: usize = 16 * 1024;

/// How a connection left the lane.
pub enum Served {
    /// It is closed (or the client went away).
    Closed,
    /// The lane does not serve its next request: hyper takes the connection
    /// over, these bytes (already read from it) first.
    HandOff(BytesMut),
}

/// A request the lane serves: where it goes and how to answer.
struct Prepared {
    target: Target,
    app: Arc<AppRoute>,
    head: bool,
    close: bool,
    id: HeaderValue,
    /// The head's length in the client's bytes.
    len: usize,
    /// The body's length (its `Content-Length`; 0 without one).
    body: usize,
    /// Whether the method may be sent again once it may have reached a
    /// worker (as hyper's path decides: `GET`, `HEAD`, `PUT`, `DELETE`).
    repeatable: bool,
}

/// Serves `io`'s requests while the lane can; `conn` is what the proxy
/// knows of the connection.
pub async fn serve<I>(proxy: &Proxy, io: &mut I, conn: &Conn, shutdown: &Shutdown) -> Served
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(4096);
    // The request head for the worker, and the response head for the client.
    let mut to_worker = Vec::with_capacity(1024);
    let mut to_client = Vec::with_capacity(1024);
    let mut from_worker = BytesMut::with_capacity(8192);
    let stopping = shutdown.triggered();
    // One timer for the connection, moved on for each head: a head must be
    // whole within the idle timeout of the first wait for it.
    let idle = tokio::time::sleep(proxy.settings.idle_timeout);
    tokio::pin!(stopping, idle);
    loop {
        // A whole request head, or the reason to stop.
        let mut waiting = false;
        let req = loop {
            let parsed = {
                let mut lines = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let mut req = httparse::Request::new(&mut lines);
                match req.parse(&buf) {
                    Ok(httparse::Status::Complete(len)) => {
                        Some(prepare(proxy, conn, &req, len, &mut to_worker))
                    }
                    Ok(httparse::Status::Partial)
                        if buf.len() < proxy.settings.max_header_bytes =>
                    {
                        None
                    }
                    _ => return Served::HandOff(buf),
                }
            };
            match parsed {
                Some(Ok(req)) => break req,
                Some(Err(ToHyper)) => return Served::HandOff(buf),
                None => {}
            }
            if !waiting {
                waiting = true;
                let at = tokio::time::Instant::now() + proxy.settings.idle_timeout;
                idle.as_mut().reset(at);
            }
            // The client's bytes first: the other two are rarely ready.
            let read = tokio::select! {
                biased;
                r = io.read_buf(&mut buf) => r,
                // No whole head in time.
                () = &mut idle => return Served::Closed,
                () = &mut stopping, if buf.is_empty() => return Served::Closed,
            };
            match read {
                Ok(n) if n > 0 => {}
                // The client closed, or failed.
                _ => return Served::Closed,
            }
        };
        conn.served.fetch_add(1, Ordering::Relaxed);
        buf.advance(req.len);
        if req.body > 0 {
            // The whole body, within the idle timeout, goes after the head.
            if buf.len() < req.body {
                let at = tokio::time::Instant::now() + proxy.settings.idle_timeout;
                idle.as_mut().reset(at);
            }
            while buf.len() < req.body {
                buf.reserve(req.body - buf.len());
                let read = tokio::select! {
                    biased;
                    r = io.read_buf(&mut buf) => r,
                    // The body stalled: 408, as hyper's path answers it.
                    () = &mut idle => {
                        let stalled = ProxyError::ClientIdle {
                            after: proxy.settings.idle_timeout,
                        };
                        refuse(io, &req, &stalled, true).await;
                        let _ = io.shutdown().await;
                        return Served::Closed;
                    }
                };
                match read {
                    Ok(n) if n > 0 => {}
                    _ => return Served::Closed,
                }
            }
            to_worker.extend_from_slice(&buf[..req.body]);
            buf.advance(req.body);
        }
        let close = req.close || shutdown.is_triggered();
        let answered = answer(
            proxy,
            io,
            &req,
            close,
            &to_worker,
            &mut to_client,
            &mut from_worker,
        )
        .await;
        if close || !answered {
            let _ = io.shutdown().await;
            return Served::Closed;
        }
    }
}

/// The lane does not serve this request.
struct ToHyper;

/// Checks a parsed request head and writes the head the worker gets into
/// `out`: hop-by-hop headers left out, forwarding headers and the request
/// id added.
fn prepare(
    proxy: &Proxy,
    conn: &Conn,
    req: &httparse::Request<'_, '_>,
    len: usize,
    out: &mut Vec<u8>,
) -> Result<Prepared, ToHyper> {
    let (Some(method), Some(path), Some(1)) = (req.method, req.path, req.version) else {
        return Err(ToHyper);
    };
    let (head, repeatable) = match method {
        "GET" | "PUT" | "DELETE" => (false, true),
        "HEAD" => (true, true),
        "POST" | "PATCH" => (false, false),
        _ => return Err(ToHyper),
    };
    // Origin form, and a target hyper would take as it is (no fragment to
    // strip, nothing its URI rules refuse): others get hyper's answer.
    if !path.starts_with('/') || path.contains('#') || path.parse::<PathAndQuery>().is_err() {
        return Err(ToHyper);
    }
    out.clear();
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let (mut host, mut close, mut id, mut length) = (None, false, None, None);
    for h in req.headers.iter() {
        match Line::of(h.name) {
            Line::Host if host.is_none() => host = Some(h.value),
            Line::Connection => {
                for token in h.value.split(|&b| b == b',') {
                    match token.trim_ascii() {
                        t if t.eq_ignore_ascii_case(b"close") => close = true,
                        t if t.eq_ignore_ascii_case(b"keep-alive") || t.is_empty() => {}
                        // It names headers to drop: hyper's path does that.
                        _ => return Err(ToHyper),
                    }
                }
                continue;
            }
            Line::Id => {
                if headers::sane_request_id(h.value) {
                    id = Some(h.value);
                }
                continue;
            }
            // One, all digits: anything else is for hyper's checks to refuse.
            Line::Length if length.is_none() => {
                length = Some(content_length(h.value).ok_or(ToHyper)?);
            }
            Line::Dropped => continue,
            Line::Other => {}
            // A second Host, a body, an expectation, an upgrade, or another
            // proxy's forwarding headers to add to.
            _ => return Err(ToHyper),
        }
        line(out, h.name.as_bytes(), h.value);
    }
    // A body over the lane's size (or the proxy's limit, which hyper's path
    // answers with 413) streams there; a HEAD with a body is odd enough too.
    let body = length.unwrap_or(0);
    if body > LANE_BODY as u64 || body > proxy.settings.max_body_bytes || (head && body > 0) {
        return Err(ToHyper);
    }
    let host_value = host.ok_or(ToHyper)?;
    let name = std::str::from_utf8(host_value).map_err(|_| ToHyper)?;
    let name = headers::host_name(name).ok_or(ToHyper)?;
    if conn.sni.as_deref().is_some_and(|sni| sni != name) {
        return Err(ToHyper);
    }
    let target = proxy
        .routes
        .load()
        .resolve(&name, &proxy.settings.domain)
        .ok_or(ToHyper)?;
    let app = match &target {
        Target::App(a) | Target::Worker(a, _) => a.clone(),
    };
    let id = match id {
        Some(id) => HeaderValue::from_bytes(id).map_err(|_| ToHyper)?,
        None => HeaderValue::from_bytes(&headers::new_request_id()).map_err(|_| ToHyper)?,
    };
    let fwd = &conn.forwarded;
    for (name, value) in [
        (&b"x-forwarded-for"[..], fwd.ip()),
        (b"x-forwarded-proto", fwd.proto().as_bytes()),
        (b"x-forwarded-host", host_value),
        (b"x-request-id", id.as_bytes()),
    ] {
        line(out, name, value);
    }
    if let Some(element) = fwd.element(host_value) {
        line(out, b"forwarded", element.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    Ok(Prepared {
        target,
        app,
        head,
        close,
        id,
        len,
        body: body as usize,
        repeatable,
    })
}

/// A `Content-Length` value the lane takes: 1 to 19 ASCII digits.
fn content_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// `HTTP/1.1 {status} {reason}` and its CRLF.
fn status_line(out: &mut Vec<u8>, status: u16, reason: Option<&str>) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa3(status).as_slice());
    out.push(b' ');
    out.extend_from_slice(reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// A status code's three digits (httparse reads only three).
fn itoa3(status: u16) -> [u8; 3] {
    let digit = |n: u16| b'0' + (n % 10) as u8;
    [digit(status / 100), digit(status / 10), digit(status)]
}

/// A header line, `name: value` and its CRLF.
fn line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// What the lane does with a request header, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    Host,
    Connection,
    Id,
    /// Hop-by-hop, or replaced by the proxy's own.
    Dropped,
    /// `Content-Length`: the body's length, passed on.
    Length,
    /// Other framing, expectations, upgrades, forwarding chains: hyper's path.
    NotHere,
    /// Passed on as it came.
    Other,
}

impl Line {
    /// The headers the lane treats in a way of its own; first, so they win
    /// over the hop-by-hop list (`connection`, `transfer-encoding` and
    /// `upgrade` are hop-by-hop, but not simply dropped here).
    const OWN: [(&'static str, Line); 11] = [
        ("host", Line::Host),
        ("connection", Line::Connection),
        ("x-request-id", Line::Id),
        ("x-forwarded-proto", Line::Dropped),
        ("x-forwarded-host", Line::Dropped),
        ("content-length", Line::Length),
        ("transfer-encoding", Line::NotHere),
        ("expect", Line::NotHere),
        ("upgrade", Line::NotHere),
        ("x-forwarded-for", Line::NotHere),
        ("forwarded", Line::NotHere),
    ];

    /// Every name the lane looks for: its own, then the rest of
    /// `headers::HOP_BY_HOP` (the one list, shared with hyper's path), dropped.
    /// Built at compile time, each name once, so a lookup scans no more
    /// than a hand-written table would.
    const NAMED: [(&'static str, Line); Line::OWN.len() + Line::hop_by_hop_only()] = {
        let mut table = [("", Line::Other); Line::OWN.len() + Line::hop_by_hop_only()];
        let mut n = 0;
        while n < Line::OWN.len() {
            table[n] = Line::OWN[n];
            n += 1;
        }
        let mut i = 0;
        while i < headers::HOP_BY_HOP.len() {
            if !Line::own(headers::HOP_BY_HOP[i]) {
                table[n] = (headers::HOP_BY_HOP[i], Line::Dropped);
                n += 1;
            }
            i += 1;
        }
        table
    };

    /// Whether `name` (in any case) is one of the lane's own.
    const fn own(name: &str) -> bool {
        let mut i = 0;
        while i < Line::OWN.len() {
            if Line::OWN[i].0.eq_ignore_ascii_case(name) {
                return true;
            }
            i += 1;
        }
        false
    }

    /// How many hop-by-hop names are not the lane's own.
    const fn hop_by_hop_only() -> usize {
        let (mut i, mut n) = (0, 0);
        while i < headers::HOP_BY_HOP.len() {
            if !Line::own(headers::HOP_BY_HOP[i]) {
                n += 1;
            }
            i += 1;
        }
        n
    }

    fn of(name: &str) -> Line {
        Line::NAMED
            .iter()
            .find(|(n, _)| n.len() == name.len() && n.eq_ignore_ascii_case(name))
            .map_or(Line::Other, |(_, r)| *r)
    }
}

/// How a response body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// It has none (a `HEAD`, 204, 304).
    Empty,
    /// After this many bytes.
    Length(u64),
    /// With its last chunk and trailers.
    Chunked,
    /// When the worker closes the connection.
    UntilClose,
}

/// A worker's response head, read.
struct Answer {
    stream: TcpStream,
    address: Arc<str>,
    status: u16,
    framing: Framing,
    /// Whether the connection may serve another request once the body is read.
    reusable: bool,
}

/// Sends the prepared request to a worker (retrying as the general path
/// does) and passes the response on; false when the client connection must
/// close (a body cut short, the client gone, or an error that closes it).
async fn answer<I>(
    proxy: &Proxy,
    io: &mut I,
    req: &Prepared,
    close: bool,
    to_worker: &[u8],
    to_client: &mut Vec<u8>,
    from_worker: &mut BytesMut,
) -> bool
where
    I: AsyncWrite + Unpin,
{
    let app = &req.app;
    let send = |ep: &Arc<Endpoint>, _last: bool| {
        // The buffers go with the attempt and come back with its answer
        // (an attempt that fails drops them, and the next one starts new).
        let mut head = std::mem::take(to_client);
        let mut body = std::mem::take(from_worker);
        let address = ep.address.clone();
        async move {
            let answer =
                exchange(proxy, address, to_worker, &mut head, &mut body, req, close).await;
            answer.map(|a| (a, head, body))
        }
    };
    let ((mut answer, head, body), held) = match proxy
        .attempts(&req.target, app, || req.repeatable, send)
        .await
    {
        Ok(answered) => answered,
        Err(e) => return refuse(io, req, &e, close).await,
    };
    *to_client = head;
    *from_worker = body;
    // Counted as its head goes out: a long stream counts from its start.
    app.metrics.answered(answer.status);
    tracing::debug!(request_id = ?req.id, status = answer.status, "answered");
    let complete = match pass_body(io, &mut answer, to_client, from_worker).await {
        // Whatever TLS still holds goes out before the next request is awaited.
        Ok(()) => io.flush().await,
        Err(e) => Err(e),
    };
    drop(held);
    match complete {
        Ok(()) => {
            if answer.reusable {
                proxy.raw.put(&answer.address, answer.stream);
            }
            answer.framing != Framing::UntilClose
        }
        Err(e) => {
            tracing::debug!(request_id = ?req.id, error = %e, "response body cut short");
            false
        }
    }
}

/// Answers a request no worker could take with the general path's JSON
/// error (the connection's last answer when `close`); false when that
/// answer closes the connection.
async fn refuse<I>(io: &mut I, req: &Prepared, e: &ProxyError, close: bool) -> bool
where
    I: AsyncWrite + Unpin,
{
    tracing::warn!(request_id = ?req.id, error = %e, origin = ?e.origin(), "request failed");
    let resp = error_answer(e, &req.id);
    let status = resp.status();
    req.app.metrics.answered(status.as_u16());
    let mut out = Vec::with_capacity(512);
    status_line(&mut out, status.as_u16(), status.canonical_reason());
    // Errors of the client's own close the connection themselves.
    let closes = resp.headers().contains_key(hyper::header::CONNECTION);
    for (name, value) in resp.headers() {
        line(&mut out, name.as_str().as_bytes(), value.as_bytes());
    }
    if close && !closes {
        line(&mut out, b"connection", b"close");
    }
    let body = resp.body();
    line(
        &mut out,
        b"content-length",
        body.len().to_string().as_bytes(),
    );
    line(&mut out, b"x-request-id", req.id.as_bytes());
    out.extend_from_slice(b"\r\n");
    if !req.head {
        out.extend_from_slice(body);
    }
    let written = io.write_all(&out).await.is_ok() && io.flush().await.is_ok();
    written && !close && !closes
}

/// One attempt: the request head to the worker at `address` (on a pooled
/// connection, or a new one when none is idle or the pooled one turns out
/// closed), its response head read and rewritten into `to_client`; the body
/// bytes read with it stay in `from_worker`.
async fn exchange(
    proxy: &Proxy,
    address: Arc<str>,
    to_worker: &[u8],
    to_client: &mut Vec<u8>,
    from_worker: &mut BytesMut,
    req: &Prepared,
    close: bool,
) -> Result<Answer, ProxyError> {
    let failed = |e: io::Error| ProxyError::Upstream {
        addr: address.to_string(),
        body_sent: req.body > 0,
        source: e.into(),
    };
    // A pooled connection may turn out closed once; then a new one.
    let mut pool = true;
    loop {
        let (mut stream, pooled) = match pool.then(|| proxy.raw.take(&address)).flatten() {
            Some(stream) => (stream, true),
            None => {
                let stream = upstream::connect(&address, proxy.settings.connect_timeout)
                    .await
                    .map_err(|e| ProxyError::Connect {
                        addr: address.to_string(),
                        timed_out: e.timed_out,
                        source: e.source,
                    })?;
                (stream, false)
            }
        };
        from_worker.clear();
        let sent = stream.write_all(to_worker).await;
        let read = match sent {
            Ok(()) => read_head(&mut stream, from_worker, to_client, req, close).await,
            Err(e) => Err(e),
        };
        match read {
            Ok((status, framing, reusable)) => {
                return Ok(Answer {
                    stream,
                    address,
                    status,
                    framing,
                    reusable,
                });
            }
            // A pooled connection the worker closed as it was taken: no
            // fault of the worker; the request goes out on a new one, if
            // it may go twice (hyper's path sends a POST once too).
            Err(_) if pooled && from_worker.is_empty() && req.repeatable => pool = false,
            Err(e) => return Err(failed(e)),
        }
    }
}

/// Reads a response head from `stream` into `buf` (1xx answers skipped) and
/// writes the client's version of it into `out`; `buf` keeps the body bytes
/// read with it.
async fn read_head(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    out: &mut Vec<u8>,
    req: &Prepared,
    close: bool,
) -> io::Result<(u16, Framing, bool)> {
    loop {
        if stream.read_buf(buf).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the worker closed the connection before its response",
            ));
        }
        loop {
            match rewrite_head(buf, out, req, close)? {
                Head::Partial if buf.len() > MAX_RESPONSE_HEAD => {
                    return Err(io::Error::other("response head too large"));
                }
                Head::Partial => break,
                Head::Informational(len) => buf.advance(len),
                Head::Complete(len, status, framing, reusable) => {
                    buf.advance(len);
                    return Ok((status, framing, reusable));
                }
            }
        }
    }
}

enum Head {
    Partial,
    /// A 1xx answer of this length, to skip.
    Informational(usize),
    /// A final answer's head length, status, framing, and whether the
    /// connection may be reused.
    Complete(usize, u16, Framing, bool),
}

/// Parses the response head at the start of `buf`, and writes the client's
/// head into `out`: hop-by-hop headers (and those `Connection` names) left
/// out, the request id set, `connection: close` when this is the
/// connection's last answer.
fn rewrite_head(buf: &[u8], out: &mut Vec<u8>, req: &Prepared, close: bool) -> io::Result<Head> {
    let bad = |why: &str| io::Error::new(io::ErrorKind::InvalidData, format!("response: {why}"));
    let mut lines = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let mut resp = httparse::Response::new(&mut lines);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(Head::Partial),
        Err(e) => return Err(bad(&e.to_string())),
    };
    let status = resp.code.unwrap_or(0);
    if status < 100 {
        return Err(bad("a status below 100"));
    }
    if status == 101 {
        return Err(bad("an upgrade that was not asked for"));
    }
    if (100..200).contains(&status) {
        return Ok(Head::Informational(len));
    }
    let mut reusable = resp.version == Some(1);
    let (mut length, mut chunked, mut named) = (None, false, Vec::new());
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| bad("a malformed content-length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(bad("differing content-lengths"));
            }
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            let last = h.value.rsplit(|&b| b == b',').next().unwrap_or_default();
            if !last.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return Err(bad("a transfer-encoding other than chunked"));
            }
            chunked = true;
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    reusable = false;
                } else if ![
                    &b"keep-alive"[..],
                    b"content-length",
                    b"transfer-encoding",
                    b"",
                ]
                .iter()
                .any(|kept| token.eq_ignore_ascii_case(kept))
                {
                    // Named headers go, but never the body's framing.
                    named.push(token);
                }
            }
        }
    }
    let framing = if req.head || status == 204 || status == 304 {
        Framing::Empty
    } else if chunked {
        Framing::Chunked
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        reusable = false;
        Framing::UntilClose
    };
    out.clear();
    status_line(out, status, resp.reason);
    // Repeats of one length (checked equal above) go out once, as hyper's
    // path sends them (tests/lane_vs_hyper.rs).
    let mut length_sent = false;
    for h in resp.headers.iter() {
        let name = h.name;
        let length = name.eq_ignore_ascii_case("content-length");
        let dropped = headers::is_hop_by_hop(name)
            || name.eq_ignore_ascii_case("x-request-id")
            || (length && (chunked || length_sent))
            || named
                .iter()
                .any(|n| name.as_bytes().eq_ignore_ascii_case(n));
        if !dropped {
            line(out, name.as_bytes(), h.value);
            length_sent |= length;
        }
    }
    // Not on a bodiless answer, whose framing says nothing: hyper's path
    // sends none there either (tests/lane_vs_hyper.rs).
    if framing == Framing::Chunked {
        line(out, b"transfer-encoding", b"chunked");
    }
    line(out, b"x-request-id", req.id.as_bytes());
    if close || framing == Framing::UntilClose {
        line(out, b"connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
    Ok(Head::Complete(len, status, framing, reusable))
}

/// Writes the response head in `head` and the body after it to the
/// client, reading the rest of the body from the worker; `buf` holds the
/// body bytes read so far. Clears `reusable` when the worker sent more than
/// its response.
async fn pass_body<I>(
    io: &mut I,
    answer: &mut Answer,
    head: &mut Vec<u8>,
    buf: &mut BytesMut,
) -> io::Result<()>
where
    I: AsyncWrite + Unpin,
{
    let cut = || {
        io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the worker closed the connection mid-body",
        )
    };
    match answer.framing {
        Framing::Empty => {
            answer.reusable &= buf.is_empty();
            io.write_all(head).await
        }
        Framing::Length(n) => {
            let mut left = n;
            let first = (buf.len() as u64).min(left) as usize;
            head.extend_from_slice(&buf[..first]);
            left -= first as u64;
            answer.reusable &= buf.len() == first;
            io.write_all(head).await?;
            while left > 0 {
                if refill(&mut answer.stream, buf).await? == 0 {
                    return Err(cut());
                }
                let take = (buf.len() as u64).min(left) as usize;
                answer.reusable &= buf.len() == take;
                left -= take as u64;
                io.write_all(&buf[..take]).await?;
            }
            Ok(())
        }
        Framing::Chunked => {
            let mut chunks = chunked::Parser::new(CHUNK_RULES);
            // A malformed piece still follows the head and the chunks
            // before it, as on hyper's path: the client sees the body break
            // off there. Its bytes, and those after it, never reach the client.
            let fed = chunks.feed(buf);
            head.extend_from_slice(&buf[..fed.body]);
            io.write_all(head).await?;
            let mut ended = body_ended(fed)?;
            answer.reusable &= !ended || fed.body == buf.len();
            while !ended {
                if refill(&mut answer.stream, buf).await? == 0 {
                    return Err(cut());
                }
                let fed = chunks.feed(buf);
                io.write_all(&buf[..fed.body]).await?;
                ended = body_ended(fed)?;
                answer.reusable &= !ended || fed.body == buf.len();
            }
            Ok(())
        }
        Framing::UntilClose => {
            head.extend_from_slice(buf);
            io.write_all(head).await?;
            loop {
                if refill(&mut answer.stream, buf).await? == 0 {
                    return Ok(());
                }
                io.write_all(buf).await?;
            }
        }
    }
}

/// Reads the next piece of a response body into `buf`, emptied first, with
/// room for `BODY_READ` bytes; 0 at the end of the stream.
async fn refill(stream: &mut TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    buf.clear();
    buf.reserve(BODY_READ);
    stream.read_buf(buf).await
}

/// Whether a chunked answer ended with the bytes just fed; an error when
/// its framing broke.
fn body_ended(fed: chunked::Fed) -> io::Result<bool> {
    match fed.progress {
        chunked::Progress::Going => Ok(false),
        chunked::Progress::Ended => Ok(true),
        chunked::Progress::Malformed(why) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("chunked body: {why}"),
        )),
    }
}

/// A connection with bytes already read from it: they come first, then the
/// connection's own. What hyper serves a connection handed off by the lane.
pub struct Prepended<I> {
    first: BytesMut,
    inner: I,
}

impl<I> Prepended<I> {
    /// `inner`, whose next bytes are `first`.
    pub fn new(first: BytesMut, inner: I) -> Self {
        Prepended { first, inner }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Prepended<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.first.is_empty() {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        let n = self.first.len().min(buf.remaining());
        buf.put_slice(&self.first[..n]);
        self.first.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Prepended<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_headers_are_sorted_by_what_the_lane_does_with_them() {
        assert!(Line::of("Host") == Line::Host);
        assert!(Line::of("CONTENT-LENGTH") == Line::Length);
        assert!(Line::of("transfer-encoding") == Line::NotHere);
        assert!(Line::of("x-forwarded-proto") == Line::Dropped);
        assert!(Line::of("x-forwarded-for") == Line::NotHere);
        assert!(Line::of("upgrade") == Line::NotHere);
        assert!(Line::of("trailer") == Line::Dropped);
        assert!(Line::of("proxy-authorization") == Line::Dropped);
        assert!(Line::of("x-app") == Line::Other);
    }

    #[test]
    fn every_hop_by_hop_header_stays_off_the_lane_s_requests() {
        // The one list: each of its names is dropped, or sends the request
        // to hyper, or (`connection`) is read and left out; never passed on.
        for name in headers::HOP_BY_HOP {
            assert_ne!(Line::of(name), Line::Other, "{name}");
            assert_ne!(Line::of(&name.to_ascii_uppercase()), Line::Other, "{name}");
        }
        for (i, (a, _)) in Line::NAMED.iter().enumerate() {
            assert!(
                Line::NAMED[i + 1..].iter().all(|(b, _)| a != b),
                "{a} twice"
            );
        }
    }
}
