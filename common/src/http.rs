//! What every component's HTTP server shares: `/healthz`, `/readyz`, `/metrics`,
//! the JSON error body, and serving with a graceful drain.

use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::net::TcpListener;

use crate::shutdown::Shutdown;
use crate::telemetry::EventKind;

/// An error answered to an HTTP client: a status and the fabric's JSON body
/// `{"error": TYPE, "message": ..., "correlationId": ...}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The error type, upper case (`VALIDATION`, `NOT_FOUND`, ...).
    pub kind: &'static str,
    /// What went wrong, for a person.
    pub message: String,
    /// The request's correlation id, when there is one.
    pub correlation_id: Option<String>,
    /// Seconds the client should wait before trying again (`Retry-After`).
    pub retry_after: Option<u64>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: &'a str,
    #[serde(rename = "correlationId", skip_serializing_if = "Option::is_none")]
    correlation_id: Option<&'a str>,
}

impl ApiError {
    /// An error of `kind` with `status`.
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            kind,
            message: message.into(),
            correlation_id: None,
            retry_after: None,
        }
    }

    /// Asks the client to wait `secs` seconds before trying again.
    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    /// Attaches the request's correlation id.
    pub fn with_correlation_id(mut self, id: impl Into<String>) -> Self {
        self.correlation_id = Some(id.into());
        self
    }

    /// The JSON body.
    pub fn body(&self) -> String {
        serde_json::to_string(&ErrorBody {
            error: self.kind,
            message: &self.message,
            correlation_id: self.correlation_id.as_deref(),
        })
        .unwrap_or_else(|_| r#"{"error":"INTERNAL","message":"unprintable error"}"#.into())
    }
}

impl From<crate::token::TokenError> for ApiError {
    fn from(e: crate::token::TokenError) -> Self {
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::UNAUTHORIZED);
        let kind = if status == StatusCode::FORBIDDEN {
            "FORBIDDEN"
        } else {
            "UNAUTHORIZED"
        };
        ApiError::new(status, kind, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            self.body(),
        )
            .into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, secs.into());
        }
        response
    }
}

/// The app token a request presents as `Authorization: Bearer <token>`, if any.
pub fn bearer_token(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Checks that the request's app token opens `app` with `needed` scope:
/// 401 without a valid token, 403 for another app's or too narrow a scope.
pub fn authorize(
    key: &crate::token::TokenKey,
    headers: &axum::http::HeaderMap,
    app: &str,
    needed: crate::token::Scope,
) -> Result<crate::token::Claims, ApiError> {
    key.authorize(bearer_token(headers), app, needed)
        .map_err(ApiError::from)
}

/// Checks that the request carries an internal token of this fabric (one
/// component calling another): 401 without a valid token, 403 for an app's.
pub fn authorize_internal(
    key: &crate::token::TokenKey,
    headers: &axum::http::HeaderMap,
) -> Result<crate::token::Claims, ApiError> {
    let token = bearer_token(headers).ok_or(crate::token::TokenError::Missing)?;
    key.verify_internal(token).map_err(ApiError::from)
}

/// Whether a component can take work, and if not, why. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Readiness(Arc<RwLock<Result<(), String>>>);

impl Readiness {
    /// Starts not ready, with `reason`.
    pub fn new(reason: impl Into<String>) -> Self {
        Readiness(Arc::new(RwLock::new(Err(reason.into()))))
    }

    /// Marks the component ready.
    pub fn set_ready(&self) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Ok(());
    }

    /// Marks the component not ready, with `reason`.
    pub fn set_unready(&self, reason: impl Into<String>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Err(reason.into());
    }

    /// The current state.
    pub fn get(&self) -> Result<(), String> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A Prometheus registry under the `fabric` prefix, with a build-info gauge.
pub fn registry(component: &str) -> Registry {
    let mut registry = Registry::with_prefix("fabric");
    let info =
        prometheus_client::metrics::family::Family::<Vec<(String, String)>, Gauge>::default();
    info.get_or_create(&vec![
        ("component".to_string(), component.to_string()),
        ("version".to_string(), env!("CARGO_PKG_VERSION").to_string()),
    ])
    .set(1);
    registry.register("build_info", "Component and version of this process", info);
    registry
}

#[derive(Clone)]
struct OpsState {
    readiness: Readiness,
    metrics: Arc<Registry>,
}

/// `/healthz` (alive), `/readyz` (ready to take work) and `/metrics` (Prometheus text).
pub fn ops_router(readiness: Readiness, metrics: Arc<Registry>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(OpsState { readiness, metrics })
}

async fn readyz(State(s): State<OpsState>) -> Response {
    match s.readiness.get() {
        Ok(()) => "ready\n".into_response(),
        Err(reason) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "NOT_READY", reason).into_response()
        }
    }
}

async fn metrics_text(State(s): State<OpsState>) -> Response {
    let mut out = String::new();
    match encode(&mut out, &s.metrics) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            out,
        )
            .into_response(),
        Err(e) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", e.to_string())
            .into_response(),
    }
}

/// Serves `router` on `listener` until shutdown, then stops accepting, turns
/// `readiness` to draining, and lets open requests finish within the grace period.
pub async fn serve(
    name: &'static str,
    listener: TcpListener,
    router: Router,
    readiness: Readiness,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    tracing::info!(component = name, %addr, "listening");
    let draining = {
        let (sd, readiness) = (shutdown.clone(), readiness.clone());
        async move {
            sd.triggered().await;
            readiness.set_unready("shutting down");
        }
    };
    let server = axum::serve(listener, router).with_graceful_shutdown(draining);
    let grace = shutdown.grace();
    let deadline = async {
        shutdown.triggered().await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        result = server => result?,
        () = deadline => tracing::warn!(kind = EventKind::GraceExpired.as_str(), component = name, ?grace, "grace period expired; closing open connections"),
    }
    tracing::info!(component = name, %addr, "stopped");
    Ok(())
}

/// Serves only the operational endpoints, ready at once: for a component
/// whose API is still to come, and for the ops port of one that has a data port.
pub async fn serve_ops_only(
    name: &'static str,
    listener: TcpListener,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    let readiness = Readiness::new("starting");
    readiness.set_ready();
    let router = ops_router(readiness.clone(), Arc::new(registry(name)));
    serve(name, listener, router, readiness, shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn error_body_is_the_fabric_shape() {
        let e = ApiError::new(StatusCode::BAD_REQUEST, "VALIDATION", "orderId missing")
            .with_correlation_id("c-1");
        let v: serde_json::Value = serde_json::from_str(&e.body()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"error": "VALIDATION", "message": "orderId missing", "correlationId": "c-1"})
        );
        let wrong = crate::token::TokenError::WrongApp {
            token_app: "a".into(),
            wanted: "b".into(),
        };
        assert_eq!(ApiError::from(wrong).status, StatusCode::FORBIDDEN);
        assert_eq!(
            ApiError::from(crate::token::TokenError::Missing).status,
            StatusCode::UNAUTHORIZED
        );
    }

    #[test]
    fn bearer_tokens_are_authorized_per_app() {
        use crate::token::{Scope, TokenKey};
        use axum::http::{HeaderMap, HeaderValue};
        let key = TokenKey::generate();
        let mut headers = HeaderMap::new();
        assert_eq!(
            authorize(&key, &headers, "orders", Scope::Read)
                .unwrap_err()
                .status,
            StatusCode::UNAUTHORIZED
        );
        let token = key.issue("orders", Scope::Worker, Duration::from_secs(60));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
        assert_eq!(
            authorize(&key, &headers, "orders", Scope::Worker)
                .unwrap()
                .app,
            "orders"
        );
        assert_eq!(
            authorize(&key, &headers, "billing", Scope::Read)
                .unwrap_err()
                .status,
            StatusCode::FORBIDDEN
        );
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {token}")).unwrap(),
        );
        assert_eq!(
            authorize(&key, &headers, "orders", Scope::Read)
                .unwrap_err()
                .status,
            StatusCode::UNAUTHORIZED
        );
    }

    #[test]
    fn only_internal_tokens_pass_the_internal_check() {
        use crate::token::{Scope, TokenKey};
        use axum::http::{HeaderMap, HeaderValue};
        let key = TokenKey::generate();
        let with = |token: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(
                header::AUTHORIZATION,
                HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
            );
            headers
        };
        let status = |headers: &HeaderMap| authorize_internal(&key, headers).map_err(|e| e.status);
        assert_eq!(
            status(&HeaderMap::new()).unwrap_err(),
            StatusCode::UNAUTHORIZED
        );
        assert!(status(&with(&key.issue_internal(Duration::from_secs(60)))).is_ok());
        for scope in [Scope::Worker, Scope::Read] {
            let app = key.issue("orders", scope, Duration::from_secs(60));
            assert_eq!(status(&with(&app)).unwrap_err(), StatusCode::FORBIDDEN);
        }
        let other = TokenKey::generate().issue_internal(Duration::from_secs(60));
        assert_eq!(status(&with(&other)).unwrap_err(), StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn ops_endpoints_answer_and_drain() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let readiness = Readiness::new("starting");
        let sd = Shutdown::new(Duration::from_secs(5));
        let router = ops_router(readiness.clone(), Arc::new(registry("test")));
        let server = tokio::spawn(serve(
            "test",
            listener,
            router,
            readiness.clone(),
            sd.clone(),
        ));
        let client = reqwest::Client::new();

        let r = client.get(format!("{base}/healthz")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let r = client.get(format!("{base}/readyz")).send().await.unwrap();
        assert_eq!(r.status(), 503);
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"], "NOT_READY");
        assert_eq!(body["message"], "starting");
        readiness.set_ready();
        assert_eq!(
            client
                .get(format!("{base}/readyz"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
        let text = client
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            text.contains("fabric_build_info{component=\"test\""),
            "{text}"
        );

        sd.trigger();
        server.await.unwrap().unwrap();
        assert!(readiness.get().is_err());
        assert!(client.get(format!("{base}/healthz")).send().await.is_err());
    }
}
