//! The HTTP API: routes, token and tombstone checks, parameters, and errors through `ApiError`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use common::http::{ApiError, authorize_internal};
use common::shutdown::Shutdown;
use common::token::{Scope, TokenKey};
use common::tombstone::{Admitted, Tombstones};
use serde::Deserialize;

use crate::api::{
    AckRequest, LeaseResponse, MAX_BATCH, MAX_LOCK_SECS, MAX_WAIT_SECS, PublishRequest,
    PublishResponse, QueueList, QueueSpec, RedriveResponse, RollbackRequest,
};
use crate::backend::{Part, QueueId};
use crate::error::QueueError;
use crate::service::{LeaseParams, Queues};

/// The largest request body: a full batch of the largest bodies, JSON-escaped.
const MAX_REQUEST_BYTES: usize = 16 * 1024 * 1024;

#[derive(Clone)]
pub(crate) struct Api {
    pub queues: Arc<Queues>,
    pub tokens: TokenKey,
    pub tombstones: Tombstones,
    pub shutdown: Shutdown,
}

impl Api {
    /// The app's queue a request names, once its token may act on it with `scope`.
    fn queue(
        &self,
        headers: &HeaderMap,
        app: &str,
        queue: &str,
        scope: Scope,
    ) -> Result<(QueueId, Admitted), ApiError> {
        let admitted = self
            .tombstones
            .authorize(&self.tokens, headers, app, scope)?;
        Ok((Queues::queue_id(app, queue)?, admitted))
    }
}

/// The API's routes.
pub(crate) fn router(api: Api) -> Router {
    Router::new()
        .route("/v1/apps/{app}", delete(forget))
        .route("/v1/apps/{app}/queues", get(list))
        .route("/v1/apps/{app}/queues/{queue}", put(declare).get(stats))
        .route(
            "/v1/apps/{app}/queues/{queue}/messages",
            post(publish).delete(purge),
        )
        .route("/v1/apps/{app}/queues/{queue}/leases", post(lease))
        .route("/v1/apps/{app}/queues/{queue}/dlq/redrive", post(redrive))
        .route("/v1/apps/{app}/leases/{lease}", delete(ack))
        .route("/v1/apps/{app}/leases/{lease}/rollback", post(rollback))
        .route("/v1/apps/{app}/leases/{lease}/extend", post(extend))
        .route("/v1/apps/{app}/acks", post(ack_batch))
        .layer(DefaultBodyLimit::max(MAX_REQUEST_BYTES))
        .with_state(api)
}

/// Answers `result`, errors as the fabric's JSON with the request's correlation id.
fn respond<T: IntoResponse>(headers: &HeaderMap, result: Result<T, ApiError>) -> Response {
    match result {
        Ok(ok) => ok.into_response(),
        Err(e) => {
            let id = headers
                .get("x-correlation-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
            e.with_correlation_id(id).into_response()
        }
    }
}

fn body<T>(json: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    match json {
        Ok(Json(t)) => Ok(t),
        Err(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            Err(QueueError::TooLarge(format!("request body over {MAX_REQUEST_BYTES} bytes")).into())
        }
        Err(r) => Err(QueueError::Invalid(r.body_text()).into()),
    }
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(t)| t)
        .map_err(|r| QueueError::Invalid(r.body_text()).into())
}

fn duration(name: &str, text: Option<&str>, default: Duration) -> Result<Duration, QueueError> {
    match text {
        None => Ok(default),
        Some(t) => humantime_serde::re::humantime::parse_duration(t)
            .map_err(|e| QueueError::Invalid(format!("{name}={t:?}: {e}"))),
    }
}

fn lock_of(text: Option<&str>) -> Result<Duration, QueueError> {
    let lock = duration("lock", text, Duration::from_secs(30))?;
    if lock < Duration::from_secs(1) || lock > Duration::from_secs(MAX_LOCK_SECS) {
        return Err(QueueError::Invalid(format!(
            "lock must be between 1s and 12h, not {lock:?}"
        )));
    }
    Ok(lock)
}

async fn list(State(api): State<Api>, Path(app): Path<String>, headers: HeaderMap) -> Response {
    let result = async {
        let _admitted = api
            .tombstones
            .authorize(&api.tokens, &headers, &app, Scope::Read)?;
        let queues = api.queues.list(&app).await?;
        Ok(Json(QueueList { queues }))
    };
    respond(&headers, result.await)
}

async fn declare(
    State(api): State<Api>,
    Path((app, queue)): Path<(String, String)>,
    headers: HeaderMap,
    spec: Result<Json<QueueSpec>, JsonRejection>,
) -> Response {
    let result = async {
        let (q, _admitted) = api.queue(&headers, &app, &queue, Scope::Worker)?;
        let spec = body(spec)?;
        Ok(Json(api.queues.declare(&q, spec).await?))
    };
    respond(&headers, result.await)
}

async fn stats(
    State(api): State<Api>,
    Path((app, queue)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let result = async {
        let (q, _admitted) = api.queue(&headers, &app, &queue, Scope::Read)?;
        Ok(Json(api.queues.stats(&q).await?))
    };
    respond(&headers, result.await)
}

async fn publish(
    State(api): State<Api>,
    Path((app, queue)): Path<(String, String)>,
    headers: HeaderMap,
    request: Result<Json<PublishRequest>, JsonRejection>,
) -> Response {
    let result = async {
        let (q, _admitted) = api.queue(&headers, &app, &queue, Scope::Worker)?;
        let request = body(request)?;
        let ids = api.queues.publish(&q, request.messages).await?;
        Ok((StatusCode::CREATED, Json(PublishResponse { ids })))
    };
    respond(&headers, result.await)
}

async fn purge(
    State(api): State<Api>,
    Path((app, queue)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let result = async {
        let (q, _admitted) = api.queue(&headers, &app, &queue, Scope::Worker)?;
        api.queues.purge(&q).await?;
        Ok(StatusCode::NO_CONTENT)
    };
    respond(&headers, result.await)
}

/// `?max=10&wait=20s&lock=30s&dlq=false`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LeaseQuery {
    max: Option<usize>,
    wait: Option<String>,
    lock: Option<String>,
    dlq: Option<bool>,
}

fn lease_params(q: LeaseQuery) -> Result<LeaseParams, QueueError> {
    let max = q.max.unwrap_or(MAX_BATCH);
    if !(1..=MAX_BATCH).contains(&max) {
        return Err(QueueError::Invalid(format!(
            "max must be between 1 and {MAX_BATCH}, not {max}"
        )));
    }
    let wait = duration("wait", q.wait.as_deref(), Duration::ZERO)?;
    if wait > Duration::from_secs(MAX_WAIT_SECS) {
        return Err(QueueError::Invalid(format!(
            "wait must be at most {MAX_WAIT_SECS}s, not {wait:?}"
        )));
    }
    Ok(LeaseParams {
        max,
        wait,
        lock: lock_of(q.lock.as_deref())?,
        part: if q.dlq.unwrap_or(false) {
            Part::Dead
        } else {
            Part::Main
        },
    })
}

async fn lease(
    State(api): State<Api>,
    Path((app, queue)): Path<(String, String)>,
    headers: HeaderMap,
    params: Result<Query<LeaseQuery>, QueryRejection>,
) -> Response {
    let result = async {
        let (q, admitted) = api.queue(&headers, &app, &queue, Scope::Worker)?;
        let params = lease_params(query(params)?)?;
        // A long poll ends early on shutdown; anything it leased is
        // redelivered after its lock. It ends too when its app is deleted,
        // so as not to hold up the purge.
        let messages = tokio::select! {
            r = api.queues.lease(&q, params) => r?,
            () = api.shutdown.triggered() => Vec::new(),
            () = admitted.deleted() => Vec::new(),
        };
        Ok(Json(LeaseResponse { messages }))
    };
    respond(&headers, result.await)
}

async fn redrive(
    State(api): State<Api>,
    Path((app, queue)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let result = async {
        let (q, _admitted) = api.queue(&headers, &app, &queue, Scope::Worker)?;
        let moved = api.queues.redrive(&q).await?;
        Ok(Json(RedriveResponse { moved }))
    };
    respond(&headers, result.await)
}

async fn ack(
    State(api): State<Api>,
    Path((app, lease)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let result = async {
        let _admitted = api
            .tombstones
            .authorize(&api.tokens, &headers, &app, Scope::Worker)?;
        api.queues.ack_one(&app, lease).await?;
        Ok(StatusCode::NO_CONTENT)
    };
    respond(&headers, result.await)
}

async fn ack_batch(
    State(api): State<Api>,
    Path(app): Path<String>,
    headers: HeaderMap,
    request: Result<Json<AckRequest>, JsonRejection>,
) -> Response {
    let result = async {
        let _admitted = api
            .tombstones
            .authorize(&api.tokens, &headers, &app, Scope::Worker)?;
        let request = body(request)?;
        Ok(Json(api.queues.ack(&app, request.leases).await?))
    };
    respond(&headers, result.await)
}

async fn rollback(
    State(api): State<Api>,
    Path((app, lease)): Path<(String, String)>,
    headers: HeaderMap,
    request: Option<Json<RollbackRequest>>,
) -> Response {
    let result = async {
        let _admitted = api
            .tombstones
            .authorize(&api.tokens, &headers, &app, Scope::Worker)?;
        let error = request.and_then(|Json(r)| r.error);
        api.queues.rollback(&app, &lease, error).await?;
        Ok(StatusCode::NO_CONTENT)
    };
    respond(&headers, result.await)
}

/// `?lock=30s`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExtendQuery {
    lock: Option<String>,
}

async fn extend(
    State(api): State<Api>,
    Path((app, lease)): Path<(String, String)>,
    headers: HeaderMap,
    params: Result<Query<ExtendQuery>, QueryRejection>,
) -> Response {
    let result = async {
        let _admitted = api
            .tombstones
            .authorize(&api.tokens, &headers, &app, Scope::Worker)?;
        let lock = lock_of(query(params)?.lock.as_deref())?;
        api.queues.extend(&app, &lease, lock).await?;
        Ok(StatusCode::NO_CONTENT)
    };
    respond(&headers, result.await)
}

/// `DELETE /v1/apps/{app}`: the fabric forgets a deleted app. Only an
/// internal token may ask; 204 once every queue of the app is gone.
async fn forget(State(api): State<Api>, Path(app): Path<String>, headers: HeaderMap) -> Response {
    let result = async {
        authorize_internal(&api.tokens, &headers)?;
        api.queues.forget(&app).await?;
        Ok(StatusCode::NO_CONTENT)
    };
    respond(&headers, result.await)
}
