//! Bodies streamed through the proxy, never buffered whole: the request body
//! (with its size limit, idle timeout, and a record of whether any byte has
//! left for a worker, so a retry knows whether it may resend), and the type
//! every response body has. A worker's response body, which gives its
//! connection back when it ends, is the upstream pool's (`upstream.rs`).

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::Sleep;

use crate::error::BoxError;

/// The body every response of the proxy has.
pub type ResponseBody = UnsyncBoxBody<Bytes, BoxError>;

/// A fixed response body.
pub fn full(bytes: impl Into<Bytes>) -> ResponseBody {
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Why the client's request body stopped.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// It grew over the limit.
    #[error("request body over {limit} bytes")]
    TooLarge {
        /// The limit, in bytes.
        limit: u64,
    },
    /// The client sent nothing for too long.
    #[error("client sent no body data for {after:?}")]
    Idle {
        /// The idle timeout.
        after: Duration,
    },
    /// The client's bytes could not be read as a body.
    #[error("client body: {0}")]
    Client(#[source] hyper::Error),
    /// A later attempt took the body over.
    #[error("request body handed to another attempt")]
    Superseded,
}

/// What the attempts of one request share.
pub struct Shared {
    incoming: Mutex<Incoming>,
    attempt: AtomicU64,
    sent: AtomicBool,
    received: AtomicU64,
    limit: u64,
    idle: Duration,
}

/// The client's request body, shareable across attempts until its first
/// byte leaves; nothing to share when the request has no body.
#[derive(Clone)]
pub struct Replayable(Option<Arc<Shared>>);

impl Replayable {
    /// Wraps `incoming` with a `limit` in bytes and an `idle` timeout.
    pub fn new(incoming: Incoming, limit: u64, idle: Duration) -> Self {
        if incoming.is_end_stream() {
            return Replayable(None);
        }
        Replayable(Some(Arc::new(Shared {
            incoming: Mutex::new(incoming),
            attempt: AtomicU64::new(0),
            sent: AtomicBool::new(false),
            received: AtomicU64::new(0),
            limit,
            idle,
        })))
    }

    /// Whether any body byte has been handed to a worker's connection.
    pub fn sent(&self) -> bool {
        self.0
            .as_ref()
            .is_some_and(|s| s.sent.load(Ordering::Acquire))
    }

    /// A body for the next attempt; earlier attempts' bodies stop yielding.
    pub fn attempt(&self) -> RequestBody {
        let Some(shared) = &self.0 else {
            return RequestBody::Empty;
        };
        let attempt = shared.attempt.fetch_add(1, Ordering::AcqRel) + 1;
        RequestBody::Streamed {
            shared: shared.clone(),
            attempt,
            idle: None,
        }
    }
}

/// One attempt's view of the client's body.
pub enum RequestBody {
    /// The request has no body.
    Empty,
    /// The client's body, streamed.
    Streamed {
        /// Shared by every attempt.
        shared: Arc<Shared>,
        /// This attempt's number.
        attempt: u64,
        /// The idle timer, from the first wait on.
        idle: Option<Pin<Box<Sleep>>>,
    },
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let RequestBody::Streamed {
            shared,
            attempt,
            idle,
        } = self.get_mut()
        else {
            return Poll::Ready(None);
        };
        if shared.attempt.load(Ordering::Acquire) != *attempt {
            return Poll::Ready(Some(Err(BodyError::Superseded)));
        }
        let polled = {
            let mut incoming = shared.incoming.lock().unwrap_or_else(|p| p.into_inner());
            Pin::new(&mut *incoming).poll_frame(cx)
        };
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let total = shared
                        .received
                        .fetch_add(data.len() as u64, Ordering::AcqRel)
                        + data.len() as u64;
                    if total > shared.limit {
                        return Poll::Ready(Some(Err(BodyError::TooLarge {
                            limit: shared.limit,
                        })));
                    }
                    if !data.is_empty() {
                        shared.sent.store(true, Ordering::Release);
                    }
                }
                if let Some(idle) = idle.as_mut() {
                    let at = tokio::time::Instant::now() + shared.idle;
                    idle.as_mut().reset(at);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(BodyError::Client(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let after = shared.idle;
                let idle = idle.get_or_insert_with(|| Box::pin(tokio::time::sleep(after)));
                ready!(idle.as_mut().poll(cx));
                Poll::Ready(Some(Err(BodyError::Idle { after })))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::Streamed { shared, .. } => shared
                .incoming
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::Streamed { shared, .. } => shared
                .incoming
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .size_hint(),
        }
    }
}
