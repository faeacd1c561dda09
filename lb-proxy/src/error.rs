//! Proxy errors: each says where it came from, whether a retry is safe, and
//! which status and JSON body the client gets. Retry decisions read these
//! fields, never message text.

use std::time::Duration;

use axum::http::StatusCode;
use common::http::ApiError;

/// A boxed error from the HTTP stack.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Where an error came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The client: its request or its connection.
    Downstream,
    /// A worker: connecting to it, or its answer.
    Upstream,
    /// The proxy's own state: routing, configuration.
    Internal,
}

/// Whether the request may be sent to another worker after this error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetrySafety {
    /// Nothing reached the worker: any method may go elsewhere.
    Any,
    /// The worker got the request but no body bytes: idempotent methods may go elsewhere.
    Idempotent,
    /// Never: the worker may have acted on it, or the fault is the client's.
    Never,
}

/// Why a request could not be proxied.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The request names no host.
    #[error("the request has no Host")]
    NoHost,
    /// No app answers at this host.
    #[error("no app answers at {host:?}")]
    UnknownHost {
        /// The host asked for.
        host: String,
    },
    /// The TLS server name and the Host header disagree.
    #[error("TLS server name {sni:?} does not match Host {host:?}")]
    Misdirected {
        /// The SNI of the connection.
        sni: String,
        /// The Host of the request.
        host: String,
    },
    /// The app (or the direct worker) has no worker able to take the request.
    #[error("{what} has no ready worker")]
    NoReadyWorker {
        /// The app, or `app worker n`.
        what: String,
    },
    /// The app has its share of requests in flight through the proxy.
    #[error("app {app} has {limit} requests in flight, its share of the load balancer")]
    OverShare {
        /// The app.
        app: String,
        /// Its bound.
        limit: usize,
    },
    /// A request shape that could be read two ways by two servers.
    #[error("refused ambiguous request: {reason}")]
    Smuggling {
        /// Which shape.
        reason: &'static str,
    },
    /// The body is over the limit.
    #[error("request body over {limit} bytes")]
    BodyTooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// The client stopped sending its body.
    #[error("client sent no body data for {after:?}")]
    ClientIdle {
        /// The idle timeout.
        after: Duration,
    },
    /// The client's body could not be read (a malformed chunk, a reset).
    #[error("client body: {reason}")]
    ClientBody {
        /// What the HTTP parser said.
        reason: String,
    },
    /// No TCP connection to the worker.
    #[error("worker {addr}: connect: {source}")]
    Connect {
        /// The worker's address.
        addr: String,
        /// Whether it was the connect timeout.
        timed_out: bool,
        /// The cause.
        #[source]
        source: BoxError,
    },
    /// The worker did not answer in time.
    #[error("worker {addr}: no response headers within {after:?}")]
    FirstByteTimeout {
        /// The worker's address.
        addr: String,
        /// The timeout.
        after: Duration,
    },
    /// The connection to the worker failed after the request went out.
    #[error("worker {addr}: {source}")]
    Upstream {
        /// The worker's address.
        addr: String,
        /// Whether any body bytes had gone to the worker.
        body_sent: bool,
        /// The cause.
        #[source]
        source: BoxError,
    },
}

impl ProxyError {
    /// Where it came from.
    pub fn origin(&self) -> Origin {
        match self {
            ProxyError::NoHost
            | ProxyError::Misdirected { .. }
            | ProxyError::Smuggling { .. }
            | ProxyError::BodyTooLarge { .. }
            | ProxyError::ClientIdle { .. }
            | ProxyError::ClientBody { .. } => Origin::Downstream,
            ProxyError::UnknownHost { .. }
            | ProxyError::NoReadyWorker { .. }
            | ProxyError::OverShare { .. } => Origin::Internal,
            ProxyError::Connect { .. }
            | ProxyError::FirstByteTimeout { .. }
            | ProxyError::Upstream { .. } => Origin::Upstream,
        }
    }

    /// Whether another worker may get the request.
    pub fn retry(&self) -> RetrySafety {
        match self {
            ProxyError::Connect { .. } => RetrySafety::Any,
            ProxyError::Upstream {
                body_sent: false, ..
            } => RetrySafety::Idempotent,
            _ => RetrySafety::Never,
        }
    }

    /// Whether the worker should be ejected (it refused or dropped a connection).
    pub fn ejects(&self) -> bool {
        matches!(
            self,
            ProxyError::Connect { .. } | ProxyError::Upstream { .. }
        )
    }

    /// The answer the client gets.
    pub fn to_api(&self) -> ApiError {
        let (status, kind) = match self {
            ProxyError::NoHost | ProxyError::ClientBody { .. } => {
                (StatusCode::BAD_REQUEST, "BAD_REQUEST")
            }
            ProxyError::Smuggling { .. } => (StatusCode::BAD_REQUEST, "AMBIGUOUS_REQUEST"),
            ProxyError::UnknownHost { .. } => (StatusCode::NOT_FOUND, "NOT_FOUND"),
            ProxyError::Misdirected { .. } => (StatusCode::MISDIRECTED_REQUEST, "MISDIRECTED"),
            ProxyError::NoReadyWorker { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, "NO_READY_WORKER")
            }
            ProxyError::OverShare { .. } => (StatusCode::SERVICE_UNAVAILABLE, "APP_BUSY"),
            ProxyError::BodyTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE"),
            ProxyError::ClientIdle { .. } => (StatusCode::REQUEST_TIMEOUT, "CLIENT_TIMEOUT"),
            ProxyError::Connect {
                timed_out: true, ..
            }
            | ProxyError::FirstByteTimeout { .. } => {
                (StatusCode::GATEWAY_TIMEOUT, "UPSTREAM_TIMEOUT")
            }
            ProxyError::Connect { .. } | ProxyError::Upstream { .. } => {
                (StatusCode::BAD_GATEWAY, "BAD_GATEWAY")
            }
        };
        ApiError::new(status, kind, self.to_string())
    }
}

/// The first cause of type `T` in `e`'s chain.
pub fn find_cause<'a, T: std::error::Error + 'static>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<T>() {
            return Some(t);
        }
        cur = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_safety_follows_what_reached_the_worker() {
        let connect = ProxyError::Connect {
            addr: "w".into(),
            timed_out: false,
            source: "refused".into(),
        };
        assert_eq!(connect.retry(), RetrySafety::Any);
        assert_eq!(connect.origin(), Origin::Upstream);
        assert_eq!(connect.to_api().status, StatusCode::BAD_GATEWAY);
        let reset = |body_sent| ProxyError::Upstream {
            addr: "w".into(),
            body_sent,
            source: "reset".into(),
        };
        assert_eq!(reset(false).retry(), RetrySafety::Idempotent);
        assert_eq!(reset(true).retry(), RetrySafety::Never);
        let slow = ProxyError::FirstByteTimeout {
            addr: "w".into(),
            after: Duration::from_secs(1),
        };
        assert_eq!(slow.retry(), RetrySafety::Never);
        assert_eq!(slow.to_api().status, StatusCode::GATEWAY_TIMEOUT);
        let big = ProxyError::BodyTooLarge { limit: 1 };
        assert_eq!(big.origin(), Origin::Downstream);
        assert_eq!(big.to_api().status, StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[test]
    fn causes_are_found_by_type() {
        let io = std::io::Error::new(std::io::ErrorKind::TimedOut, "t");
        let outer = ProxyError::Connect {
            addr: "w".into(),
            timed_out: false,
            source: Box::new(io),
        };
        let found = find_cause::<std::io::Error>(&outer).expect("the I/O error");
        assert_eq!(found.kind(), std::io::ErrorKind::TimedOut);
        assert!(find_cause::<std::io::Error>(&ProxyError::NoHost).is_none());
    }
}
