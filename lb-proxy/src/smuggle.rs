//! Request-smuggling checks on the raw HTTP/1 bytes of a client connection.
//!
//! hyper already refuses differing duplicate `Content-Length`, obs-fold and
//! malformed chunk sizes, but it quietly accepts `Content-Length` together
//! with `Transfer-Encoding` (dropping the length), which a server behind
//! another proxy could read the other way. This reader follows the message
//! framing of the bytes the client sends and records the first request whose
//! head is ambiguous; the proxy answers that request 400 and closes.
//!
//! A request asking for an upgrade (`Upgrade:`, or `CONNECT`) is followed
//! like any other: only the answer says whether the bytes after it are still
//! HTTP. The proxy records a switch ([`Verdict::switched`]) when it answers
//! `101` (or a `2xx` to `CONNECT`), and only then do the checks stop.
//!
//! A chunked request body is followed by the parser the lane uses for
//! workers' chunked answers (`chunked.rs`), by the checks' own rules
//! (`CHUNK_RULES`).

use std::io;
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::chunked;

/// The first ambiguous request of a connection (its number, from 1, and
/// why), and the request after which it stopped speaking HTTP, if it did.
#[derive(Debug, Default)]
pub struct Verdict {
    flagged: Mutex<Option<(u64, &'static str)>>,
    /// The request answered with a switch of protocols; 0 for none.
    switched: AtomicU64,
}

impl Verdict {
    /// Why request number `n` (from 1) must be refused, if it must.
    pub fn refuses(&self, n: u64) -> Option<&'static str> {
        let flagged = *self.flagged.lock().unwrap_or_else(|p| p.into_inner());
        match flagged {
            // Bytes after a switch were never requests, whatever they looked like.
            Some((bad, _)) if self.switched_at().is_some_and(|at| bad > at) => None,
            Some((bad, reason)) if bad <= n => Some(reason),
            _ => None,
        }
    }

    /// Records that request `n` (from 1) was answered with a switch of
    /// protocols (`101`, or a `2xx` to `CONNECT`): what follows it on the
    /// connection is no longer HTTP, and is no longer checked.
    pub fn switched(&self, n: u64) {
        let _ = self
            .switched
            .compare_exchange(0, n.max(1), Ordering::Relaxed, Ordering::Relaxed);
    }

    fn switched_at(&self) -> Option<u64> {
        Some(self.switched.load(Ordering::Relaxed)).filter(|&n| n > 0)
    }

    fn flag(&self, n: u64, reason: &'static str) {
        let mut v = self.flagged.lock().unwrap_or_else(|p| p.into_inner());
        if v.is_none() {
            *v = Some((n.max(1), reason));
        }
    }
}

/// Largest head line followed; beyond it hyper's own limit answers 431.
const MAX_LINE: usize = 64 * 1024;

/// How a client's chunked body is followed. Looser than the lane's rules
/// (`express::CHUNK_RULES`): the checks watch the bytes ahead of hyper's own
/// decoder, which refuses malformed framing itself, so they need only find
/// where the body ends and flag a size or a chunk that a worker could read
/// another way; what they do not follow they leave to hyper.
pub(crate) const CHUNK_RULES: chunked::Rules = chunked::Rules {
    // Not flagged: hyper's decoder refuses a bare LF in a chunked body itself.
    bare_lf: true,
    // As long as a head line may be: `MAX_LINE` bytes before the LF.
    max_line: MAX_LINE + 1,
    // Not counted: hyper's decoder bounds the trailers it reads.
    max_trailers: usize::MAX,
    // 1 to 15 digits (60 bits); a longer size, even of leading zeros, is
    // flagged.
    min_digits: 1,
    max_digits: 15,
    size_space: chunked::SizeSpace::Around,
    // Flagged once the line after a chunk's data is whole.
    data_end: chunked::DataEnd::Line,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before a request line.
    Start,
    /// Header lines.
    Head,
    /// A body of known length.
    Fixed(u64),
    /// A chunked body, followed by the tracker's `chunks`.
    Chunked,
    /// No longer following (HTTP/2, a switch of protocols, or bytes hyper
    /// will refuse anyway).
    Off,
}

/// Follows HTTP/1 framing over the bytes of one connection.
#[derive(Debug)]
pub struct Tracker {
    state: State,
    line: Vec<u8>,
    requests: u64,
    lengths: Vec<Vec<u8>>,
    chunked: bool,
    obs_fold: bool,
    /// The framing of the current chunked body.
    chunks: chunked::Parser,
}

impl Default for Tracker {
    fn default() -> Self {
        Tracker {
            state: State::Start,
            line: Vec::new(),
            requests: 0,
            lengths: Vec::new(),
            chunked: false,
            obs_fold: false,
            chunks: chunked::Parser::new(CHUNK_RULES),
        }
    }
}

impl Tracker {
    /// Feeds bytes read from the client.
    pub fn feed(&mut self, mut bytes: &[u8], verdict: &Verdict) {
        while !bytes.is_empty() {
            match self.state {
                State::Off => return,
                State::Fixed(n) => {
                    let take = (bytes.len() as u64).min(n);
                    bytes = &bytes[take as usize..];
                    self.state = match n - take {
                        0 => State::Start,
                        left => State::Fixed(left),
                    };
                }
                State::Chunked => {
                    let fed = self.chunks.feed(bytes);
                    match fed.progress {
                        chunked::Progress::Going => return,
                        chunked::Progress::Ended => {
                            bytes = &bytes[fed.body..];
                            self.state = State::Start;
                        }
                        chunked::Progress::Malformed(why) => {
                            if let Some(reason) = refusal(why) {
                                verdict.flag(self.requests, reason);
                            }
                            self.state = State::Off;
                            return;
                        }
                    }
                }
                _ => {
                    let (part, rest, complete) = match bytes.iter().position(|&b| b == b'\n') {
                        Some(i) => (&bytes[..i], &bytes[i + 1..], true),
                        None => (bytes, &[][..], false),
                    };
                    bytes = rest;
                    if self.line.len() + part.len() > MAX_LINE {
                        self.state = State::Off;
                        return;
                    }
                    if !complete {
                        self.line.extend_from_slice(part);
                    } else if self.line.is_empty() {
                        // The whole line came in this read: follow it in
                        // place, no copy and no allocation per line.
                        self.on_line(part.strip_suffix(b"\r").unwrap_or(part), verdict);
                    } else {
                        self.line.extend_from_slice(part);
                        let mut line = std::mem::take(&mut self.line);
                        self.on_line(line.strip_suffix(b"\r").unwrap_or(&line), verdict);
                        // Keep the buffer's capacity for the next split line.
                        line.clear();
                        self.line = line;
                    }
                }
            }
        }
    }

    fn on_line(&mut self, line: &[u8], verdict: &Verdict) {
        match self.state {
            State::Start if line.is_empty() => {}
            State::Start => {
                if line.starts_with(b"PRI * HTTP/2") {
                    self.state = State::Off;
                    return;
                }
                self.requests += 1;
                self.lengths.clear();
                self.chunked = false;
                self.obs_fold = false;
                self.state = State::Head;
            }
            State::Head if line.is_empty() => self.end_of_head(verdict),
            State::Head => {
                if line[0] == b' ' || line[0] == b'\t' {
                    self.obs_fold = true;
                    return;
                }
                let Some(colon) = line.iter().position(|&b| b == b':') else {
                    return;
                };
                let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
                if name.eq_ignore_ascii_case(b"content-length") {
                    self.lengths
                        .extend(value.split(|&b| b == b',').map(|v| v.trim_ascii().to_vec()));
                } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                    self.chunked = true;
                }
            }
            State::Fixed(_) | State::Chunked | State::Off => {}
        }
    }

    fn end_of_head(&mut self, verdict: &Verdict) {
        let n = self.requests;
        if self.obs_fold {
            verdict.flag(n, "obs-fold (a header line continued on the next line)");
        }
        if self.chunked && !self.lengths.is_empty() {
            verdict.flag(n, "Content-Length together with Transfer-Encoding");
        }
        if self.lengths.windows(2).any(|w| w[0] != w[1]) {
            verdict.flag(n, "differing Content-Length headers");
        }
        // An upgrade request is followed on: until its answer says
        // otherwise, what comes next is the connection's next request.
        self.state = if self.chunked {
            self.chunks.restart();
            State::Chunked
        } else {
            match self.lengths.first() {
                None => State::Start,
                Some(v) => match std::str::from_utf8(v)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                {
                    Some(0) => State::Start,
                    Some(len) => State::Fixed(len),
                    None => State::Off,
                },
            }
        };
    }
}

/// Why a request whose chunked body broke its framing is refused; `None`
/// for a line longer than the checks follow, which they stop at and leave
/// to hyper's own limits.
fn refusal(why: chunked::Malformed) -> Option<&'static str> {
    match why {
        chunked::Malformed::Size => Some("malformed chunk size"),
        chunked::Malformed::DataOverrun => Some("chunk data longer than its size"),
        // Neither happens under `CHUNK_RULES`; refused should they tighten.
        chunked::Malformed::BareLf => Some("a chunked body line ended by a bare LF"),
        chunked::Malformed::TooManyTrailers => Some("too many trailer lines"),
        chunked::Malformed::LineTooLong => None,
    }
}

/// A client connection whose incoming bytes pass through a [`Tracker`].
pub struct Inspected<S> {
    inner: S,
    tracker: Tracker,
    verdict: std::sync::Arc<Verdict>,
}

impl<S> Inspected<S> {
    /// Follows `inner`'s bytes, recording into `verdict`; `off` for HTTP/2 connections.
    pub fn new(inner: S, verdict: std::sync::Arc<Verdict>, off: bool) -> Self {
        let mut tracker = Tracker::default();
        if off {
            tracker.state = State::Off;
        }
        Inspected {
            inner,
            tracker,
            verdict,
        }
    }

    /// Follows `inner`'s bytes from a request boundary, after the
    /// connection's first `served` requests (served without these checks).
    pub fn resumed(inner: S, verdict: std::sync::Arc<Verdict>, served: u64) -> Self {
        let mut inspected = Inspected::new(inner, verdict, false);
        inspected.tracker.requests = served;
        inspected
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Inspected<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        if this.tracker.state != State::Off && this.verdict.switched_at().is_some() {
            this.tracker.state = State::Off;
        }
        if this.tracker.state != State::Off {
            this.tracker.feed(&buf.filled()[before..], &this.verdict);
        }
        res
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Inspected<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict_of(chunks: &[&[u8]]) -> Verdict {
        let (mut t, v) = (Tracker::default(), Verdict::default());
        for c in chunks {
            t.feed(c, &v);
        }
        v
    }

    #[test]
    fn clean_pipelines_pass_in_any_split() {
        let wire: &[u8] = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
GET /b HTTP/1.1\r\nHost: x\r\n\r\n\
POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n11;ext=1\r\nContent-Length: 9\r\n0\r\nX-T: 1\r\n\r\n\
GET /d HTTP/1.1\r\nHost: x\r\n\r\n";
        for split in 1..wire.len() {
            let v = verdict_of(&[&wire[..split], &wire[split..]]);
            assert_eq!(v.refuses(u64::MAX), None, "split at {split}");
        }
    }

    #[test]
    fn each_ambiguous_shape_is_flagged_on_its_request() {
        let cases: [(&[u8], &str); 5] = [
            (
                b"GET / HTTP/1.1\r\nHost: x\r\n\r\nPOST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                "Content-Length together with Transfer-Encoding",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: x\r\n\r\nPOST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
                "Content-Length together with Transfer-Encoding",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: x\r\n\r\nPOST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcd",
                "differing Content-Length headers",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n  continued\r\n\r\n",
                "obs-fold (a header line continued on the next line)",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: x\r\n\r\nPOST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
                "malformed chunk size",
            ),
        ];
        for (wire, reason) in cases {
            let v = verdict_of(&[wire]);
            assert_eq!(v.refuses(1), None, "the first request is clean: {reason}");
            assert_eq!(v.refuses(2), Some(reason));
        }
    }

    #[test]
    fn http2_is_not_followed() {
        let v = verdict_of(&[b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00Content-Length: 1\r\n"]);
        assert_eq!(v.refuses(u64::MAX), None);
    }

    /// An upgrade request, then a smuggling attempt on the same connection.
    const UPGRADE_THEN_SMUGGLE: &[u8] =
        b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\
POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";

    #[test]
    fn asking_for_an_upgrade_does_not_stop_the_checks() {
        for start in [
            &b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n"[..],
            b"CONNECT h:443 HTTP/1.1\r\n",
        ] {
            let mut wire = start.to_vec();
            wire.extend_from_slice(b"\r\nPOST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
            let v = verdict_of(&[&wire]);
            assert_eq!(v.refuses(1), None);
            assert_eq!(
                v.refuses(2),
                Some("Content-Length together with Transfer-Encoding"),
                "{}",
                String::from_utf8_lossy(start)
            );
        }
    }

    #[test]
    fn the_checks_stop_once_an_upgrade_is_answered_with_a_switch() {
        // The switch recorded after the tracker read on: what it took for a
        // second request was the new protocol's bytes, and is not refused.
        let v = verdict_of(&[UPGRADE_THEN_SMUGGLE]);
        v.switched(1);
        assert_eq!(v.refuses(u64::MAX), None);
        // Recorded before the bytes arrive: they are not followed at all.
        let verdict = std::sync::Arc::new(Verdict::default());
        let mut io = Inspected::new(UPGRADE_THEN_SMUGGLE, verdict.clone(), false);
        verdict.switched(1);
        let mut buf = [0u8; 512];
        let mut read = ReadBuf::new(&mut buf);
        let waker = futures::task::noop_waker();
        let polled = Pin::new(&mut io).poll_read(&mut Context::from_waker(&waker), &mut read);
        assert!(matches!(polled, Poll::Ready(Ok(()))));
        assert_eq!(io.tracker.state, State::Off);
        assert_eq!(verdict.refuses(u64::MAX), None);
        // A switch only covers what follows it: an earlier ambiguity stands.
        let v = verdict_of(&[b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nx"]);
        v.switched(1);
        assert!(v.refuses(1).is_some());
    }
}
