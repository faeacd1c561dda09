//! The HTTP API: routes, header parsing and responses; the rules live in [`crate::store`].

use std::future::Future;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Json, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use common::http::{ApiError, authorize_internal};
use common::token::{Scope, TokenKey};
use common::tombstone::Tombstones;
use serde::Deserialize;

use crate::api::{
    CORRELATION_HEADER, EXPIRES_AT_HEADER, ErrorBody, LeaseRequest, MAX_PAGE, MAX_VALUE_BYTES,
    MAX_WRITES, MAX_WRITES_BYTES, Write, WriteOutcome, WriteOutcomes, Writes,
};
use crate::error::{bad_request, from_bytes, from_json, from_path, from_query, no_route};
use crate::metrics::Metrics;
use crate::store::{ObjectStore, Precondition};

/// What every handler shares.
#[derive(Clone)]
pub struct ApiState {
    /// The stores.
    pub store: ObjectStore,
    /// Verifies app tokens.
    pub tokens: TokenKey,
    /// The deleted apps, whose tokens are refused.
    pub tombstones: Tombstones,
    /// Request metrics.
    pub metrics: Metrics,
}

impl ApiState {}

/// The API's routes (without the operational endpoints).
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/v1/apps/{app}", delete(forget))
        .route("/v1/apps/{app}/stores/{store}", get(stats))
        .route("/v1/apps/{app}/stores/{store}/keys", get(list))
        .route(
            "/v1/apps/{app}/stores/{store}/keys/",
            get(empty_key).put(empty_key).delete(empty_key),
        )
        .route(
            "/v1/apps/{app}/stores/{store}/keys/{*key}",
            get(get_key).put(put_key).delete(delete_key),
        )
        .route(
            "/v1/apps/{app}/writes",
            post(write_all).layer(DefaultBodyLimit::max(MAX_WRITES_BYTES)),
        )
        .route(
            "/v1/apps/{app}/leases/{name}",
            post(acquire).put(renew).delete(release),
        )
        .fallback(|| async { no_route() })
        // One byte over the limit, so that an oversized value is told apart from a full one.
        .layer(DefaultBodyLimit::max(MAX_VALUE_BYTES + 1))
        .with_state(state)
}

type Handled = Result<Response, ApiError>;

/// Runs one operation: records its metrics and attaches the correlation id to an error.
async fn op(
    state: &ApiState,
    name: &'static str,
    headers: &HeaderMap,
    f: impl Future<Output = Handled>,
) -> Response {
    let started = Instant::now();
    let response = match f.await {
        Ok(r) => r,
        Err(e) => {
            let id = headers
                .get(CORRELATION_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
            e.with_correlation_id(id).into_response()
        }
    };
    state
        .metrics
        .record(name, response.status().as_u16(), started.elapsed());
    response
}

/// The path of a key's routes.
type KeyPath = Result<Path<(String, String, String)>, PathRejection>;
type StorePath = Result<Path<(String, String)>, PathRejection>;

fn quoted(etag: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{etag}\""))
        .unwrap_or_else(|_| HeaderValue::from_static("\"\""))
}

/// Reads one ETag (`"abc"`, or bare `abc`) from a condition header.
fn etag_of(name: &str, value: &HeaderValue) -> Result<String, ApiError> {
    let text = value
        .to_str()
        .map_err(|_| bad_request(format!("{name} is not ASCII")))?;
    etag_in(name, text)
}

/// One ETag (`"abc"`, or bare `abc`) from a condition's text.
fn etag_in(name: &str, text: &str) -> Result<String, ApiError> {
    let text = text.trim();
    let bare = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(text);
    if bare.is_empty() || !bare.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(bad_request(format!(
            "{name} must be one ETag as returned by the store, got {text:?}"
        )));
    }
    Ok(bare.to_string())
}

/// `If-None-Match: *` and `If-Match: "etag"`, at most one of them.
fn precondition(headers: &HeaderMap) -> Result<Precondition, ApiError> {
    let none_match = headers.get(header::IF_NONE_MATCH);
    let if_match = headers.get(header::IF_MATCH);
    match (none_match, if_match) {
        (Some(_), Some(_)) => Err(bad_request("send If-Match or If-None-Match, not both")),
        (Some(v), None) if v.as_bytes() == b"*" => Ok(Precondition::IfAbsent),
        (Some(_), None) => Err(bad_request("If-None-Match takes only *")),
        (None, Some(v)) => Ok(Precondition::IfMatch(etag_of("If-Match", v)?)),
        (None, None) => Ok(Precondition::None),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutQuery {
    #[serde(default, with = "humantime_serde")]
    ttl: Option<Duration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    #[serde(default)]
    prefix: String,
    cursor: Option<String>,
    limit: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReleaseQuery {
    holder: String,
    token: u64,
}

async fn empty_key(State(s): State<ApiState>, headers: HeaderMap) -> Response {
    op(&s, "invalid", &headers, async {
        Err(bad_request("key is empty"))
    })
    .await
}

async fn get_key(State(s): State<ApiState>, headers: HeaderMap, path: KeyPath) -> Response {
    op(&s, "get", &headers, async {
        let Path((app, store, key)) = path.map_err(from_path)?;
        let _admitted = s
            .tombstones
            .authorize(&s.tokens, &headers, &app, Scope::Read)?;
        let object = s.store.get(&app, &store, &key).await?;
        let mut response = (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                ),
                (header::ETAG, quoted(&object.etag)),
            ],
            object.value,
        )
            .into_response();
        if let Some(at) = object.expires_at {
            response
                .headers_mut()
                .insert(EXPIRES_AT_HEADER, HeaderValue::from(at));
        }
        Ok(response)
    })
    .await
}

async fn put_key(
    State(s): State<ApiState>,
    headers: HeaderMap,
    path: KeyPath,
    query: Result<Query<PutQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    op(&s, "put", &headers, async {
        let Path((app, store, key)) = path.map_err(from_path)?;
        let _admitted = s
            .tombstones
            .authorize(&s.tokens, &headers, &app, Scope::Worker)?;
        let Query(query) = query.map_err(from_query)?;
        let pre = precondition(&headers)?;
        let body = body.map_err(from_bytes)?;
        let written = s
            .store
            .put(&app, &store, &key, &body, query.ttl, pre)
            .await?;
        let status = if written.created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        Ok((
            status,
            [(header::ETAG, quoted(&written.etag))],
            Json(written),
        )
            .into_response())
    })
    .await
}

/// Several puts in one call, each done and answered as if it came alone;
/// they share the backend's next durable commit.
async fn write_all(
    State(s): State<ApiState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    body: Result<Json<Writes>, JsonRejection>,
) -> Response {
    op(&s, "writes", &headers, async {
        let Path(app) = path.map_err(from_path)?;
        let _admitted = s
            .tombstones
            .authorize(&s.tokens, &headers, &app, Scope::Worker)?;
        let Json(Writes { writes }) = body.map_err(from_json)?;
        if writes.is_empty() || writes.len() > MAX_WRITES {
            return Err(bad_request(format!(
                "send 1 to {MAX_WRITES} writes, not {}",
                writes.len()
            )));
        }
        let outcomes =
            futures::future::join_all(writes.iter().map(|w| write_one(&s, &app, w))).await;
        Ok(Json(WriteOutcomes { outcomes }).into_response())
    })
    .await
}

async fn write_one(s: &ApiState, app: &str, w: &Write) -> WriteOutcome {
    let pre = match (w.if_absent, &w.if_match) {
        (true, Some(_)) => Err(bad_request("send ifMatch or ifAbsent, not both")),
        (true, None) => Ok(Precondition::IfAbsent),
        (false, Some(etag)) => etag_in("ifMatch", etag).map(Precondition::IfMatch),
        (false, None) => Ok(Precondition::None),
    };
    let written = match pre {
        Ok(pre) => s
            .store
            .put(app, &w.store, &w.key, w.value.as_bytes(), w.ttl, pre)
            .await
            .map_err(ApiError::from),
        Err(e) => Err(e),
    };
    match written {
        Ok(written) => WriteOutcome {
            status: if written.created { 201 } else { 200 },
            written: Some(written),
            error: None,
        },
        Err(e) => WriteOutcome {
            status: e.status.as_u16(),
            written: None,
            error: Some(ErrorBody {
                error: e.kind.to_string(),
                message: e.message,
                correlation_id: None,
            }),
        },
    }
}

async fn delete_key(State(s): State<ApiState>, headers: HeaderMap, path: KeyPath) -> Response {
    op(&s, "delete", &headers, async {
        let Path((app, store, key)) = path.map_err(from_path)?;
        let _admitted = s
            .tombstones
            .authorize(&s.tokens, &headers, &app, Scope::Worker)?;
        let pre = precondition(&headers)?;
        s.store.delete(&app, &store, &key, pre).await?;
        Ok(StatusCode::NO_CONTENT.into_response())
    })
    .await
}

async fn list(
    State(s): State<ApiState>,
    headers: HeaderMap,
    path: StorePath,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Response {
    op(&s, "list", &headers, async {
        let Path((app, store)) = path.map_err(from_path)?;
        let _admitted = s
            .tombstones
            .authorize(&s.tokens, &headers, &app, Scope::Read)?;
        let Query(q) = query.map_err(from_query)?;
        let page = s
            .store
            .list(
                &app,
                &store,
                &q.prefix,
                q.cursor.as_deref(),
                q.limit.unwrap_or(MAX_PAGE),
            )
            .await?;
        Ok(Json(page).into_response())
    })
    .await
}

async fn stats(State(s): State<ApiState>, headers: HeaderMap, path: StorePath) -> Response {
    op(&s, "stats", &headers, async {
        let Path((app, store)) = path.map_err(from_path)?;
        let _admitted = s
            .tombstones
            .authorize(&s.tokens, &headers, &app, Scope::Read)?;
        Ok(Json(s.store.stats(&app, &store).await?).into_response())
    })
    .await
}

type LeasePath = Result<Path<(String, String)>, PathRejection>;
type LeaseBody = Result<Json<LeaseRequest>, JsonRejection>;

async fn acquire(
    State(s): State<ApiState>,
    headers: HeaderMap,
    path: LeasePath,
    body: LeaseBody,
) -> Response {
    op(&s, "lease_acquire", &headers, async {
        let Path((app, name)) = path.map_err(from_path)?;
        let _admitted = s
            .tombstones
            .authorize(&s.tokens, &headers, &app, Scope::Worker)?;
        let Json(req) = body.map_err(from_json)?;
        let lease = s.store.acquire(&app, &name, &req.holder, req.ttl).await?;
        Ok(Json(lease).into_response())
    })
    .await
}

async fn renew(
    State(s): State<ApiState>,
    headers: HeaderMap,
    path: LeasePath,
    body: LeaseBody,
) -> Response {
    op(&s, "lease_renew", &headers, async {
        let Path((app, name)) = path.map_err(from_path)?;
        let _admitted = s
            .tombstones
            .authorize(&s.tokens, &headers, &app, Scope::Worker)?;
        let Json(req) = body.map_err(from_json)?;
        let token = req
            .token
            .ok_or_else(|| bad_request("a renewal needs the token of the acquisition"))?;
        let lease = s
            .store
            .renew(&app, &name, &req.holder, token, req.ttl)
            .await?;
        Ok(Json(lease).into_response())
    })
    .await
}

async fn release(
    State(s): State<ApiState>,
    headers: HeaderMap,
    path: LeasePath,
    query: Result<Query<ReleaseQuery>, QueryRejection>,
) -> Response {
    op(&s, "lease_release", &headers, async {
        let Path((app, name)) = path.map_err(from_path)?;
        let _admitted = s
            .tombstones
            .authorize(&s.tokens, &headers, &app, Scope::Worker)?;
        let Query(q) = query.map_err(from_query)?;
        s.store.release(&app, &name, &q.holder, q.token).await?;
        Ok(StatusCode::NO_CONTENT.into_response())
    })
    .await
}

/// `DELETE /v1/apps/{app}`: the fabric forgets a deleted app. Only an
/// internal token may ask; 204 once everything the app stored is gone.
async fn forget(
    State(s): State<ApiState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    op(&s, "forget", &headers, async {
        let Path(app) = path.map_err(from_path)?;
        authorize_internal(&s.tokens, &headers)?;
        s.store.forget(&app, &s.tombstones).await?;
        Ok(StatusCode::NO_CONTENT.into_response())
    })
    .await
}
