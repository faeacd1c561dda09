//! The upstream side of one data thread: HTTP/1.1 keep-alive connections to
//! workers, over hyper's client connection, pooled here.
//!
//! A connection is lent to one request and comes back when that request's
//! response has been read to its end (a response cut short takes its
//! connection with it). Nothing is spawned per request, and the pool is the
//! data thread's own, so no other thread ever waits on its lock.
//!
//! A pooled connection can close just as it is reused (the worker's idle
//! timeout, a worker stopping). hyper then hands the request back unsent, and
//! it goes out on another connection: that is no failure of the worker.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::body::{RequestBody, ResponseBody};
use crate::error::BoxError;
use crate::share::Held;

/// One data thread's hyper connections to workers, by worker address.
pub struct Upstream {
    pool: Arc<Pool<SendRequest<RequestBody>>>,
    connect_timeout: Duration,
}

/// Idle connections of one kind, by worker address, aged by a sweep.
pub struct Pool<C> {
    idle: Mutex<HashMap<Arc<str>, Vec<Idle<C>>>>,
    /// Sweeps so far; each idle connection notes the count it went idle at.
    sweeps: AtomicU64,
    max_idle: usize,
}

/// A connection the pool can tell is closed without reading it.
pub trait Reusable: Send + 'static {
    /// Whether the connection is known to be closed.
    fn is_closed(&self) -> bool;
}

impl Reusable for SendRequest<RequestBody> {
    fn is_closed(&self) -> bool {
        SendRequest::is_closed(self)
    }
}

impl Reusable for TcpStream {
    /// Closed, or no longer fit for a request: the worker closed it, or
    /// sent bytes no request asked for (a late body, a `408` before its
    /// idle close), which would be read as the next request's answer. A
    /// non-blocking read, which tokio answers from its readiness without a
    /// system call when nothing has arrived; a connection that closes just
    /// after it fails its next request before any answer byte, which its
    /// user retries once on a new connection.
    fn is_closed(&self) -> bool {
        let mut byte = [0u8; 1];
        !matches!(self.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }
}

/// An idle connection lives until the `SWEEPS_IDLE`th sweep after it went
/// idle, one sweep every `idle_timeout / (SWEEPS_IDLE - 1)`: between its
/// idle timeout and a quarter more, with no clock read on a request's way.
const SWEEPS_IDLE: u64 = 5;

struct Idle<C> {
    conn: C,
    /// The sweep count when it went idle.
    since: u64,
}

/// Why a request got no response.
#[derive(Debug)]
pub enum SendError {
    /// Nothing reached the worker: no connection (refused, unreachable, or
    /// not within the connect timeout), or one that closed before the
    /// request was written.
    Connect {
        /// Whether the connect timeout ran out.
        timed_out: bool,
        /// The cause.
        source: crate::error::BoxError,
    },
    /// The connection failed once the request was under way.
    Request(hyper::Error),
}

/// A connection lent to one request.
pub struct Lent {
    sender: Option<SendRequest<RequestBody>>,
    address: Arc<str>,
    pool: Arc<Pool<SendRequest<RequestBody>>>,
}

impl Lent {
    /// The response was read to its end: the connection may serve another
    /// request. A `Lent` dropped without this closes its connection.
    pub fn give_back(&mut self) {
        if let Some(sender) = self.sender.take() {
            self.pool.put(&self.address, sender);
        }
    }

    /// The response broke off: the connection closes now, never to be reused.
    pub fn close(&mut self) {
        self.sender = None;
    }
}

/// A worker's response body, counted in flight (for its worker and its app)
/// until it ends or is dropped;
/// its connection goes back to the pool when it ends, not before.
pub struct Tracked {
    inner: Incoming,
    lent: Lent,
    _held: Held,
}

impl Tracked {
    /// Streams `inner`, which came on `lent`, holding `held` (the request's
    /// place in its app's share, the worker's in-flight count) meanwhile.
    pub fn boxed(inner: Incoming, lent: Lent, held: Held) -> ResponseBody {
        let mut tracked = Tracked {
            inner,
            lent,
            _held: held,
        };
        // No body (HEAD, 204, 304, a length of 0): nothing more to read.
        tracked.give_back_at_end();
        tracked.map_err(BoxError::from).boxed_unsync()
    }

    fn give_back_at_end(&mut self) {
        if self.inner.is_end_stream() {
            self.lent.give_back();
        }
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.lent.give_back(),
            Poll::Ready(Some(Ok(_))) => self.give_back_at_end(),
            // The connection goes with its broken response.
            Poll::Ready(Some(Err(_))) => self.lent.close(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Upstream {
    /// A pool keeping at most `max_idle` idle connections a worker, each for
    /// `idle_timeout` (up to a quarter more); new connections get `connect_timeout`.
    ///
    /// Called inside the data thread's runtime (see [`Pool::new`]).
    pub fn new(connect_timeout: Duration, idle_timeout: Duration, max_idle: usize) -> Arc<Self> {
        Arc::new(Upstream {
            pool: Pool::new(idle_timeout, max_idle),
            connect_timeout,
        })
    }

    /// Sends `req` to the worker at `address` on a pooled connection, or a
    /// new one when none is idle.
    pub async fn send(
        self: &Arc<Self>,
        address: &Arc<str>,
        mut req: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, Lent), SendError> {
        loop {
            let (mut sender, pooled) = match self.pool.take(address) {
                Some(sender) => (sender, true),
                None => (self.handshake(address).await?, false),
            };
            if let Err(e) = sender.ready().await {
                if pooled {
                    continue;
                }
                return Err(SendError::Connect {
                    timed_out: false,
                    source: e.into(),
                });
            }
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    let lent = Lent {
                        sender: Some(sender),
                        address: address.clone(),
                        pool: self.pool.clone(),
                    };
                    return Ok((resp, lent));
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) if pooled => req = unsent,
                    Some(_) => {
                        return Err(SendError::Connect {
                            timed_out: false,
                            source: e.into_error().into(),
                        });
                    }
                    None => return Err(SendError::Request(e.into_error())),
                },
            }
        }
    }

    async fn handshake(&self, address: &str) -> Result<SendRequest<RequestBody>, SendError> {
        let stream = connect(address, self.connect_timeout).await?;
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| SendError::Connect {
                timed_out: false,
                source: e.into(),
            })?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }
}

impl<C: Reusable> Pool<C> {
    /// A pool keeping at most `max_idle` idle connections a worker, each for
    /// `idle_timeout` (up to a quarter more).
    ///
    /// Called inside the data thread's runtime: a task there closes idle
    /// connections past their time (so that connections to workers no longer
    /// routed to do not stay open), until the pool is dropped.
    pub fn new(idle_timeout: Duration, max_idle: usize) -> Arc<Self> {
        let pool = Arc::new(Pool {
            idle: Mutex::new(HashMap::new()),
            sweeps: AtomicU64::new(0),
            max_idle,
        });
        let weak = Arc::downgrade(&pool);
        let every = (idle_timeout / (SWEEPS_IDLE - 1) as u32).max(Duration::from_millis(250));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                match weak.upgrade() {
                    Some(pool) => pool.sweep(),
                    None => return,
                }
            }
        });
        pool
    }

    fn idle(&self) -> MutexGuard<'_, HashMap<Arc<str>, Vec<Idle<C>>>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The most recently used idle connection still open (closed ones met
    /// on the way are dropped; expired ones are the sweep's).
    pub fn take(&self, address: &str) -> Option<C> {
        let mut idle = self.idle();
        let list = idle.get_mut(address)?;
        let mut found = None;
        while let Some(entry) = list.pop() {
            if !entry.conn.is_closed() {
                found = Some(entry.conn);
                break;
            }
        }
        if list.is_empty() {
            idle.remove(address);
        }
        found
    }

    pub fn put(&self, address: &Arc<str>, conn: C) {
        if conn.is_closed() {
            return;
        }
        let since = self.sweeps.load(Ordering::Relaxed);
        let mut idle = self.idle();
        let list = idle.entry(address.clone()).or_default();
        if list.len() < self.max_idle {
            list.push(Idle { conn, since });
        }
    }

    /// Drops idle connections past their idle timeout, and those their worker closed.
    fn sweep(&self) {
        let now = self.sweeps.fetch_add(1, Ordering::Relaxed) + 1;
        self.idle().retain(|_, list| {
            list.retain(|e| !e.conn.is_closed() && now - e.since < SWEEPS_IDLE);
            !list.is_empty()
        });
    }
}

/// Why no TCP connection to a worker was made.
#[derive(Debug)]
pub struct ConnectFailed {
    /// Whether the connect timeout ran out.
    pub timed_out: bool,
    /// The cause.
    pub source: crate::error::BoxError,
}

impl From<ConnectFailed> for SendError {
    fn from(e: ConnectFailed) -> Self {
        SendError::Connect {
            timed_out: e.timed_out,
            source: e.source,
        }
    }
}

/// A TCP connection to the worker at `address`, with no delay, within `timeout`.
pub async fn connect(address: &str, timeout: Duration) -> Result<TcpStream, ConnectFailed> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(address)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            return Err(ConnectFailed {
                timed_out: false,
                source: e.into(),
            });
        }
        Err(_) => {
            let e = std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no connection within {timeout:?}"),
            );
            return Err(ConnectFailed {
                timed_out: true,
                source: e.into(),
            });
        }
    };
    let _ = stream.set_nodelay(true);
    Ok(stream)
}
