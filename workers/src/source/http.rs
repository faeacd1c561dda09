//! The HTTP source: one route per flow with an `http` source, request-response.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::MethodFilter;
use serde_json::{Map, Value, json};
use tokio::sync::Semaphore;

use crate::engine::{Engine, Exec};
use crate::error::{ErrorType, FlowError};
use crate::event::{Event, payload_from_bytes};
use crate::manifest::{Flow, Source, Strategy};

/// The header that carries a correlation id in and out.
pub const CORRELATION_HEADER: &str = "x-correlation-id";
/// How long a request waits for a slot under the worker's ceiling before a 503.
const SLOT_WAIT: Duration = Duration::from_secs(1);
/// How long a request's whole body may take to arrive (then a 408).
pub const BODY_DEADLINE: Duration = Duration::from_secs(30);

/// Limits that apply to every HTTP flow of the worker.
#[derive(Clone)]
pub struct Limits {
    /// Events in flight across the worker (the size's concurrency ceiling).
    pub slots: Arc<Semaphore>,
    /// The largest request body accepted.
    pub max_body: usize,
    /// Bytes of request bodies held at once, one permit a byte (the size's
    /// payload budget): bodies are read before a slot is taken, so without
    /// it many clients each sending the largest body at once would hold
    /// their sum.
    pub body_bytes: Arc<Semaphore>,
}

impl Limits {
    /// Limits for a worker of `size`.
    pub fn of(size: &crate::size::WorkerSize) -> Self {
        Limits {
            slots: Arc::new(Semaphore::new(size.concurrency)),
            max_body: size.max_payload(),
            body_bytes: Arc::new(Semaphore::new(size.payload_budget)),
        }
    }
}

#[derive(Clone)]
struct Route {
    engine: Arc<Engine>,
    flow: Arc<Flow>,
    limits: Limits,
    own: Option<Arc<Semaphore>>,
}

/// Routes for every HTTP-sourced flow of the engine's app.
pub fn router(engine: Arc<Engine>, limits: Limits) -> Router {
    let mut by_path: BTreeMap<String, axum::routing::MethodRouter> = BTreeMap::new();
    for flow in engine.app().flows.clone() {
        let Some(Source::Http { method, path }) = &flow.source else {
            continue;
        };
        let filter =
            MethodFilter::try_from(Method::from_bytes(method.as_bytes()).unwrap_or(Method::GET))
                .unwrap_or(MethodFilter::GET);
        let own = match flow.strategy {
            Strategy::QueuedAsync { max_concurrency } => {
                Some(Arc::new(Semaphore::new(max_concurrency)))
            }
            Strategy::Synchronous => None,
        };
        let route = Route {
            engine: engine.clone(),
            flow: flow.clone(),
            limits: limits.clone(),
            own,
        };
        let handler = move |params: Option<Path<HashMap<String, String>>>, req: Request<Body>| {
            let route = route.clone();
            async move { handle(State(route), params.map(|p| p.0).unwrap_or_default(), req).await }
        };
        let entry = by_path.remove(path).unwrap_or_default();
        by_path.insert(path.clone(), entry.on(filter, handler));
    }
    by_path
        .into_iter()
        .fold(Router::new(), |r, (path, methods)| r.route(&path, methods))
}

fn correlation_id(headers: &HeaderMap) -> String {
    headers
        .get(CORRELATION_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_string)
}

fn attributes(req: &Request<Body>, params: HashMap<String, String>) -> Value {
    let query: Map<String, Value> = req
        .uri()
        .query()
        .map(|q| {
            url_pairs(q)
                .into_iter()
                .map(|(k, v)| (k, Value::String(v)))
                .collect()
        })
        .unwrap_or_default();
    let headers: Map<String, Value> = req
        .headers()
        .iter()
        .filter(|(name, _)| *name != header::AUTHORIZATION && *name != header::COOKIE)
        .map(|(n, v)| {
            (
                n.as_str().to_string(),
                Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()),
            )
        })
        .collect();
    json!({
        "method": req.method().as_str(),
        "path": req.uri().path(),
        "uri": params,
        "query": query,
        "headers": headers,
    })
}

/// Splits a query string into decoded pairs; a malformed one yields none.
fn url_pairs(query: &str) -> Vec<(String, String)> {
    serde_urlencoded::from_str(query).unwrap_or_default()
}

async fn handle(
    State(route): State<Route>,
    params: HashMap<String, String>,
    req: Request<Body>,
) -> Response {
    let cid = correlation_id(req.headers());
    let response = match serve(&route, params, req, &cid).await {
        Ok(exec) => reply(exec),
        Err(err) => error_response(&err, &cid),
    };
    route
        .engine
        .metrics()
        .request(&route.flow.name, response.status().as_u16());
    let mut response = response;
    if let Ok(v) = HeaderValue::from_str(&cid) {
        response.headers_mut().insert(CORRELATION_HEADER, v);
    }
    response
}

async fn serve(
    route: &Route,
    params: HashMap<String, String>,
    req: Request<Body>,
    cid: &str,
) -> Result<Exec, FlowError> {
    let overloaded = || {
        FlowError::new(
            ErrorType::Overloaded,
            "the worker is at its concurrency ceiling; retry",
        )
    };
    // The body is read whole, within a total deadline, before a slot is
    // taken: a client trickling its body holds a connection, never a slot,
    // and bytes of the worker's body budget as they arrive.
    let attributes = attributes(&req, params);
    let read = read_body(req.into_body(), &route.limits);
    let (body, _bytes) = tokio::time::timeout(BODY_DEADLINE, read)
        .await
        .map_err(|_| {
            let mut e = FlowError::new(
                ErrorType::Timeout,
                format!("the request body did not arrive within {BODY_DEADLINE:?}"),
            );
            e.status = Some(StatusCode::REQUEST_TIMEOUT);
            e
        })??;
    let _slot = tokio::time::timeout(SLOT_WAIT, route.limits.slots.acquire())
        .await
        .map_err(|_| overloaded())?
        .map_err(|_| overloaded())?;
    let _counted = route.engine.metrics().in_flight();
    let _own = match &route.own {
        // queued-async: wait for the flow's own bound; the wait is the back-pressure.
        Some(sem) => Some(sem.acquire().await.map_err(|_| overloaded())?),
        None => None,
    };
    let mut event = Event::new(payload_from_bytes(&body), attributes);
    event.correlation_id = cid.to_string();
    route.engine.run(&route.flow, event).await
}

/// Reads a body of at most `limits.max_body` bytes, holding a permit of the
/// body budget for each byte from the moment it arrives; the permits go
/// back when the request ends. A budget that stays spent for [`SLOT_WAIT`]
/// is a 503, as a full set of slots is.
async fn read_body(
    mut body: Body,
    limits: &Limits,
) -> Result<(bytes::Bytes, Option<tokio::sync::SemaphorePermit<'_>>), FlowError> {
    use http_body_util::BodyExt;
    let too_large = || {
        let mut e = FlowError::new(
            ErrorType::Validation,
            format!("request body larger than {} bytes", limits.max_body),
        );
        e.status = Some(StatusCode::PAYLOAD_TOO_LARGE);
        e
    };
    let bad = |e: axum::Error| {
        FlowError::new(
            ErrorType::Validation,
            format!("cannot read the request body: {e}"),
        )
    };
    let mut held: Option<tokio::sync::SemaphorePermit<'_>> = None;
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(bad)?.into_data() else {
            continue; // trailers
        };
        if buf.len() + data.len() > limits.max_body {
            return Err(too_large());
        }
        // max_body fits u32: it is a quarter of a budget of at most 2 GiB.
        let n = u32::try_from(data.len()).map_err(|_| too_large())?;
        let permit = tokio::time::timeout(SLOT_WAIT, limits.body_bytes.acquire_many(n))
            .await
            .ok()
            .and_then(Result::ok)
            .ok_or_else(|| {
                FlowError::new(
                    ErrorType::Overloaded,
                    "the worker holds as many request bytes as it may; retry",
                )
            })?;
        match &mut held {
            Some(h) => h.merge(permit),
            None => held = Some(permit),
        }
        buf.extend_from_slice(&data);
    }
    Ok((buf.freeze(), held))
}

fn body_of(value: Value) -> (Option<&'static str>, Vec<u8>) {
    match value {
        Value::Null => (None, Vec::new()),
        Value::String(s) => (Some("text/plain; charset=utf-8"), s.into_bytes()),
        other => (Some("application/json"), other.to_string().into_bytes()),
    }
}

fn reply(exec: Exec) -> Response {
    let (status, body, headers) = match exec.reply {
        Some(r) => (r.status, r.body.unwrap_or(exec.event.payload), r.headers),
        None => (200, exec.event.payload, Vec::new()),
    };
    let (content_type, bytes) = body_of(body);
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    if let Some(ct) = content_type {
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    }
    for (name, value) in headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            response.headers_mut().insert(n, v);
        }
    }
    response
}

/// The design's JSON error body for a flow error.
pub fn error_response(err: &FlowError, cid: &str) -> Response {
    let body = json!({ "error": err.kind.name(), "message": err.message, "correlationId": cid });
    let mut response = (
        err.status(),
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response();
    if err.kind == ErrorType::Overloaded {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_decode() {
        let pairs = url_pairs("a=1&b=hello+world&c=%2Fx&flag");
        assert_eq!(
            pairs,
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "hello world".into()),
                ("c".into(), "/x".into()),
                ("flag".into(), "".into())
            ]
        );
    }
}
