//! The data path for one request: check, route, pick a worker, forward,
//! retry when that is safe, answer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::http::uri::PathAndQuery;
use hyper::{Method, Request, Response, StatusCode, Uri, Version};

use crate::balance::{self, Tried};
use crate::body::{BodyError, Replayable, ResponseBody, full};
use crate::endpoint::Endpoint;
use crate::error::{ProxyError, RetrySafety, find_cause};
use crate::headers::{self, ForwardedFor, X_REQUEST_ID};
use crate::metrics::{AppMetrics, Metrics, NO_APP};
use crate::routes::{AppRoute, Routes, Target};
use crate::settings::Settings;
use crate::share::{self, Held};
use crate::smuggle::Verdict;
use crate::upstream::{Pool, SendError, Tracked, Upstream};
use tokio::net::TcpStream;

/// What the proxy knows of one client connection.
pub struct Conn {
    /// The client's address.
    pub peer: SocketAddr,
    /// The TLS server name, lower case, when the connection is TLS.
    pub sni: Option<String>,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// The forwarding headers' values for its requests, formatted once.
    pub forwarded: ForwardedFor,
    /// The smuggling checks' findings for this connection.
    pub verdict: Arc<Verdict>,
    /// Requests seen so far on it.
    pub served: AtomicU64,
}

/// One data thread's proxy: settings, the live route table, the upstream pool.
pub struct Proxy {
    pub(crate) settings: Settings,
    pub(crate) routes: Arc<Routes>,
    upstream: Arc<Upstream>,
    /// The pass-through lane's connections to workers.
    pub(crate) raw: Arc<Pool<TcpStream>>,
    pub(crate) unrouted: AppMetrics,
}

fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

impl Proxy {
    /// A proxy over `routes`, made inside the runtime that serves it (its
    /// upstream pool is that runtime's).
    pub fn new(settings: Settings, routes: Arc<Routes>, metrics: &Metrics) -> Self {
        Proxy {
            upstream: Upstream::new(
                settings.connect_timeout,
                settings.pool_idle_timeout,
                settings.pool_max_idle_per_worker,
            ),
            raw: Pool::new(
                settings.pool_idle_timeout,
                settings.pool_max_idle_per_worker,
            ),
            settings,
            routes,
            unrouted: metrics.app(NO_APP),
        }
    }

    /// Answers one client request; never fails (errors become JSON answers).
    pub async fn handle(&self, req: Request<Incoming>, conn: &Conn) -> Response<ResponseBody> {
        let id = headers::request_id(req.headers());
        // The head stays here, for the log line; the request to a worker
        // takes its headers (and copies them only when it may be retried).
        let (mut parts, body) = req.into_parts();
        let n = conn.served.fetch_add(1, Ordering::Relaxed) + 1;
        let mut app = None;
        let result = self.route(&mut parts, body, conn, n, &id, &mut app).await;
        let metrics = app.as_ref().map_or(&self.unrouted, |a| &a.metrics);
        let (method, path) = (&parts.method, parts.uri.path());
        let mut resp = match result {
            Ok(resp) => resp,
            Err(e) => {
                tracing::warn!(
                    request_id = ?id, %method, path, peer = %conn.peer,
                    origin = ?e.origin(), error = %e, "request failed"
                );
                error_response(&e, &id)
            }
        };
        let status = resp.status();
        if status == StatusCode::SWITCHING_PROTOCOLS
            || (*method == Method::CONNECT && status.is_success())
        {
            // hyper reads what follows as the new protocol's bytes, not as
            // requests (the only answers after which it does): so do the checks.
            conn.verdict.switched(n);
        }
        metrics.answered(status.as_u16());
        tracing::debug!(request_id = ?id, %method, path, status = status.as_u16(), "answered");
        resp.headers_mut().insert(&X_REQUEST_ID, id);
        resp
    }

    async fn route(
        &self,
        parts: &mut hyper::http::request::Parts,
        body: Incoming,
        conn: &Conn,
        n: u64,
        id: &HeaderValue,
        app_out: &mut Option<Arc<AppRoute>>,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        if let Some(reason) = conn.verdict.refuses(n) {
            return Err(ProxyError::Smuggling { reason });
        }
        let (target, host_value) = {
            if parts.headers.get_all(header::HOST).iter().nth(1).is_some() {
                return Err(ProxyError::Smuggling {
                    reason: "more than one Host",
                });
            }
            let host = headers::request_host(parts).ok_or(ProxyError::NoHost)?;
            if let Some(sni) = &conn.sni
                && *sni != host
            {
                return Err(ProxyError::Misdirected {
                    sni: sni.clone(),
                    host: host.into_owned(),
                });
            }
            let target = self
                .routes
                .load()
                .resolve(&host, &self.settings.domain)
                .ok_or_else(|| ProxyError::UnknownHost {
                    host: host.clone().into_owned(),
                })?;
            let host_value = match parts.headers.get(header::HOST) {
                Some(h) => h.clone(),
                None => HeaderValue::from_str(&host).map_err(|_| ProxyError::NoHost)?,
            };
            (target, host_value)
        };
        let app = match &target {
            Target::App(a) | Target::Worker(a, _) => a.clone(),
        };
        *app_out = Some(app.clone());

        let limit = self.settings.max_body_bytes;
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|len| len > limit) {
            return Err(ProxyError::BodyTooLarge { limit });
        }

        headers::to_upstream(&mut parts.headers, &conn.forwarded, &host_value, id);
        let body = Replayable::new(body, limit, self.settings.idle_timeout);
        self.forward(parts, &target, &app, body).await
    }

    async fn forward(
        &self,
        parts: &mut hyper::http::request::Parts,
        target: &Target,
        app: &Arc<AppRoute>,
        body: Replayable,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let method = parts.method.clone();
        let headers = &mut parts.headers;
        let may_repeat = || idempotent(&method) && !body.sent();
        let upstream = &self.upstream;
        let send = |ep: &Arc<Endpoint>, last: bool| {
            let mut req = Request::new(body.attempt());
            *req.method_mut() = method.clone();
            *req.version_mut() = Version::HTTP_11;
            // Copied while another attempt may follow, even when no other
            // worker is listed now: the table may change before this one fails.
            *req.headers_mut() = if last {
                std::mem::take(headers)
            } else {
                headers.clone()
            };
            // Origin form: the worker is named by the connection and `Host`.
            *req.uri_mut() = Uri::from(path.clone());
            let (address, body) = (ep.address.clone(), body.clone());
            async move {
                let (mut resp, lent) = upstream
                    .send(&address, req)
                    .await
                    .map_err(|e| classify(e, &address, body.sent()))?;
                one_length(resp.headers_mut()).map_err(|reason| ProxyError::Upstream {
                    addr: address.to_string(),
                    body_sent: body.sent(),
                    source: reason.into(),
                })?;
                Ok((resp, lent))
            }
        };
        let ((resp, lent), held) = self.attempts(target, app, may_repeat, send).await?;
        let (mut rparts, rbody) = resp.into_parts();
        // A length beside chunked framing is not the body's: hyper reads
        // the chunks, so the length goes (RFC 9112 §6.3), and the answer is
        // framed afresh to the client.
        if rparts
            .headers
            .contains_key(hyper::header::TRANSFER_ENCODING)
        {
            rparts.headers.remove(hyper::header::CONTENT_LENGTH);
        }
        headers::strip_hop_by_hop(&mut rparts.headers);
        Ok(Response::from_parts(
            rparts,
            Tracked::boxed(rbody, lent, held),
        ))
    }

    /// Sends a request to the workers `target` allows, one after another
    /// while another attempt is safe, at most `max_attempts`; `send` makes
    /// one attempt (`last` when no other may follow), within the first-byte
    /// timeout. A worker whose connection failed is ejected, unless it is
    /// the app's last usable one. `may_repeat` says whether a request that
    /// may have reached a worker can be sent again.
    ///
    /// First of all, the request takes a place in its app's share (503 at
    /// once at the bound): every request of both paths comes through here,
    /// and holds it while it waits for a connection, for an answer, and
    /// until the answer has been passed on. The answer comes with that place
    /// and the worker's in-flight count, both held until the caller drops
    /// them.
    pub(crate) async fn attempts<T, F, A>(
        &self,
        target: &Target,
        app: &Arc<AppRoute>,
        may_repeat: impl Fn() -> bool,
        mut send: F,
    ) -> Result<(T, Held), ProxyError>
    where
        F: FnMut(&Arc<Endpoint>, bool) -> A,
        A: Future<Output = Result<T, ProxyError>>,
    {
        let limit = share::limit(self.settings.app_max_in_flight_per_worker, app.ready);
        let Some(slot) = app.share.take(limit) else {
            app.metrics.shed.inc();
            return Err(ProxyError::OverShare {
                app: app.name.clone(),
                limit,
            });
        };
        let mut tried = Tried::default();
        let mut last = None;
        let attempts = self.settings.max_attempts.clamp(1, Tried::CAP);
        let mut current = app.clone();
        for attempt in 0..attempts {
            if attempt > 0 {
                // A retry reads the live table: while this request was under
                // way its route may have switched to new workers, and the old
                // ones may be stopping.
                if let Some(live) = self.routes.load().apps.get(&app.name) {
                    current = live.clone();
                }
            }
            let picked = match target {
                Target::App(_) => balance::pick(&current, self.settings.balance, &tried),
                Target::Worker(_, n) => current
                    .workers
                    .iter()
                    .find(|w| w.index == *n && w.health.usable() && !tried.has(w))
                    .cloned(),
            };
            let Some(ep) = picked else { break };
            tried.add(&ep);
            if attempt > 0 {
                app.metrics.retries.inc();
            }
            let in_flight = ep.health.start();
            let started = tokio::time::Instant::now();
            let sent = send(&ep, attempt + 1 == attempts);
            let by = started + self.settings.first_byte_timeout;
            let err = match tokio::time::timeout_at(by, sent).await {
                Ok(Ok(answer)) => {
                    app.metrics.latency.observe(started.elapsed().as_secs_f64());
                    return Ok((answer, Held::new(slot, in_flight)));
                }
                Ok(Err(e)) => e,
                Err(_) => ProxyError::FirstByteTimeout {
                    addr: ep.address.to_string(),
                    after: self.settings.first_byte_timeout,
                },
            };
            // Never the app's last usable worker: a single worker hit by a
            // benign race (a pooled connection closing) must not turn into
            // 503s for `eject_for`; a truly dead one still fails its probes.
            let others = current
                .endpoints()
                .any(|w| !Arc::ptr_eq(w, &ep) && w.available());
            if err.ejects() && others && ep.health.eject(self.settings.eject_for) {
                app.metrics.ejections.inc();
                tracing::warn!(app = %ep.app, worker = ep.index, addr = %ep.address, error = %err, "worker ejected");
            }
            let again = match err.retry() {
                RetrySafety::Any => true,
                RetrySafety::Idempotent => may_repeat(),
                RetrySafety::Never => false,
            };
            if !again {
                return Err(err);
            }
            tracing::debug!(app = %ep.app, worker = ep.index, error = %err, "trying another worker");
            last = Some(err);
        }
        Err(last.unwrap_or_else(|| ProxyError::NoReadyWorker {
            what: match target {
                Target::App(a) => format!("app {}", a.name),
                Target::Worker(a, n) => format!("app {} worker {n}", a.name),
            },
        }))
    }
}

/// Turns an upstream error into a typed one, by the error's types.
fn classify(e: SendError, addr: &str, body_sent: bool) -> ProxyError {
    let e = match e {
        SendError::Connect { timed_out, source } => {
            return ProxyError::Connect {
                addr: addr.into(),
                timed_out,
                source,
            };
        }
        SendError::Request(e) => e,
    };
    if let Some(b) = find_cause::<BodyError>(&e) {
        return match b {
            BodyError::TooLarge { limit } => ProxyError::BodyTooLarge { limit: *limit },
            BodyError::Idle { after } => ProxyError::ClientIdle { after: *after },
            BodyError::Client(h) => ProxyError::ClientBody {
                reason: h.to_string(),
            },
            BodyError::Superseded => ProxyError::Upstream {
                addr: addr.into(),
                body_sent: true,
                source: e.into(),
            },
        };
    }
    ProxyError::Upstream {
        addr: addr.into(),
        body_sent,
        source: e.into(),
    }
}

/// The JSON answer for `e`.
pub fn error_response(e: &ProxyError, id: &HeaderValue) -> Response<ResponseBody> {
    error_answer(e, id).map(full)
}

/// The JSON answer for `e`, its body whole.
pub fn error_answer(e: &ProxyError, id: &HeaderValue) -> Response<Bytes> {
    let mut api = e.to_api();
    if let Ok(id) = id.to_str() {
        api = api.with_correlation_id(id);
    }
    let mut resp = Response::new(Bytes::from(api.body()));
    *resp.status_mut() = api.status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if matches!(
        e,
        ProxyError::NoReadyWorker { .. } | ProxyError::OverShare { .. }
    ) {
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    if e.origin() == crate::error::Origin::Downstream {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// A worker's answer repeating its `Content-Length`: one value kept when
/// they agree (hyper's server would otherwise close a `HEAD`'s connection
/// unanswered); an error when they differ, which no reader can settle. The
/// lane does the same (`express.rs`).
fn one_length(headers: &mut hyper::HeaderMap) -> Result<(), &'static str> {
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    let Some(first) = values.next().cloned() else {
        return Ok(());
    };
    let mut repeated = false;
    for other in values {
        if *other != first {
            return Err("differing content-lengths");
        }
        repeated = true;
    }
    if repeated {
        headers.insert(header::CONTENT_LENGTH, first);
    }
    Ok(())
}
