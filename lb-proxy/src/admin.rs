//! The admin port: the ops endpoints plus the route table (`GET` and `PUT /routes`).

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use common::http::{ApiError, Readiness};
use prometheus_client::registry::Registry;

use crate::routes::{RouteTable, Routes};

/// `/healthz`, `/readyz`, `/metrics` and `/routes`.
pub fn router(readiness: Readiness, registry: Arc<Registry>, routes: Arc<Routes>) -> Router {
    common::http::ops_router(readiness, registry).merge(
        Router::new()
            .route("/routes", get(show).put(replace))
            .with_state(routes),
    )
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
