//! The admin port: the ops endpoints, open, and the route table (`GET` and
//! `PUT /routes`), only for the fabric's own components.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use common::http::{ApiError, Readiness, bearer_token};
use common::token::{TokenError, TokenKey};
use prometheus_client::registry::Registry;

use crate::routes::{RouteTable, Routes};

/// `/healthz`, `/readyz`, `/metrics`, and `/routes` behind an internal
/// token of this fabric (`Authorization: Bearer`), verified with `key`: a
/// tenant who reaches the admin port must not be able to take over other
/// tenants' host names.
pub fn router(
    readiness: Readiness,
    registry: Arc<Registry>,
    routes: Arc<Routes>,
    key: TokenKey,
) -> Router {
    let table = Router::new()
        .route("/routes", get(show).put(replace))
        .with_state(routes)
        .layer(middleware::from_fn_with_state(Arc::new(key), internal_only));
    common::http::ops_router(readiness, registry).merge(table)
}

/// 401 (no token, or not a valid one) or 403 (an app's token) with the JSON
/// error body, before the request is read any further.
async fn internal_only(State(key): State<Arc<TokenKey>>, req: Request, next: Next) -> Response {
    let checked = bearer_token(req.headers())
        .ok_or(TokenError::Missing)
        .and_then(|token| key.verify_internal(token));
    match checked {
        Ok(_) => next.run(req).await,
        Err(e) => ApiError::from(e).into_response(),
    }
}

async fn show(State(routes): State<Arc<Routes>>) -> Response {
    axum::Json(routes.load().spec.clone()).into_response()
}

async fn replace(State(routes): State<Arc<Routes>>, body: Bytes) -> Response {
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, "VALIDATION", m).into_response();
    let table: RouteTable = match serde_json::from_slice(&body) {
        Ok(t) => t,
        Err(e) => return bad(format!("route table: {e}")),
    };
    match routes.replace(table) {
        Ok(()) => axum::Json(routes.load().spec.clone()).into_response(),
        Err(e) => bad(e.to_string()),
    }
}
