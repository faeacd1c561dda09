//! The control plane's HTTP API (axum): apps, workers, events, AZs, tenants, keys, routes.
//!
//! Every call carries a tenant's API key as `Authorization: Bearer`; a tenant
//! sees and changes only its own apps (another tenant's app is "not found"),
//! and the admin tenant sees all of them.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use common::http::{ApiError, bearer_token};
use serde::Deserialize;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;

use crate::model::{
    AppQueues, AppRecord, AppStatus, DeployRequest, QueueInfo, Quota, ScaleRequest,
};
use crate::purge::Purger;
use crate::registry::Registry;
use crate::supervisor::{DeployError, Supervisor};

mod apps;
mod autoscale;
mod canary;
mod configurations;
mod fabric;
mod keys;
mod queues;
mod tenants;

use apps::{delete_app, deploy, list_apps, restart_app, scale_app, show_app, workers};
use configurations::{history, rollback, set_properties};
use fabric::{az_action, azs, events, routes};
pub(crate) use keys::RateLimiter;
use keys::{create_key, list_keys, revoke_key};
use queues::{dead_letters, queues, redrive};
use tenants::{create_tenant, delete_tenant, list_tenants};

/// The tenant that sees every app and manages AZs and tenants.
pub const ADMIN: &str = "admin";

/// Manifests checked at once (see `Api::load_manifest`).
pub const MANIFEST_CHECKS: usize = 2;

#[derive(Clone)]
pub(crate) struct Api {
    pub supervisor: Supervisor,
    pub registry: Registry,
    pub deploying: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    /// Held while a name is checked and reserved, so that two deploys of
    /// names that would shadow each other cannot both pass.
    pub names: Arc<tokio::sync::Mutex<()>>,
    /// Purges deleted apps' data.
    pub purger: Purger,
    /// What each tenant may run.
    pub quota: Quota,
    /// What deploys and scales in flight ask for, counted by quota checks.
    pub claims: crate::quota::Claims,
    /// Manifests checked at once, each on a blocking thread.
    pub checking: Arc<tokio::sync::Semaphore>,
    /// Where the local scheduler writes workers' logs.
    pub logs: std::path::PathBuf,
    /// Requests per API key.
    pub limiter: Arc<RateLimiter>,
    /// When each key (by id) was last used, since this control plane started.
    pub last_used: Arc<Mutex<HashMap<String, u64>>>,
    /// queue-svc's URL and the key to mint read tokens for it, when configured
    /// (persistent queues can be asked for).
    pub queues: Option<(String, common::token::TokenKey)>,
    /// Whether objectstore-svc is configured (apps with store processors or schedules can run).
    pub has_store: bool,
}

type ApiResult<T> = Result<T, ApiError>;

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", e.to_string())
}

impl From<DeployError> for ApiError {
    fn from(e: DeployError) -> Self {
        match e {
            DeployError::NotReady(m) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "NOT_READY", m)
            }
            other => internal(other),
        }
    }
}

pub(crate) fn router(api: Api) -> Router {
    Router::new()
        .route("/v1/apps", get(list_apps).post(deploy))
        .route("/v1/apps/{name}", get(show_app).delete(delete_app))
        .route("/v1/apps/{name}/scale", post(scale_app))
        .route("/v1/apps/{name}/restart", post(restart_app))
        .route("/v1/apps/{name}/promote", post(canary::promote))
        .route("/v1/apps/{name}/abort", post(canary::abort))
        .route("/v1/apps/{name}/workers", get(workers))
        .route("/v1/apps/{name}/queues", get(queues))
        .route("/v1/apps/{name}/queues/{queue}/dlq", get(dead_letters))
        .route("/v1/apps/{name}/queues/{queue}/dlq/redrive", post(redrive))
        .route(
            "/v1/apps/{name}/properties",
            axum::routing::patch(set_properties),
        )
        .route(
            "/v1/apps/{name}/autoscale",
            axum::routing::put(autoscale::set).delete(autoscale::off),
        )
        .route("/v1/apps/{name}/history", get(history))
        .route("/v1/apps/{name}/logs", get(apps::logs))
        .route("/v1/apps/{name}/rollback", post(rollback))
        .route("/v1/events", get(events))
        .route("/v1/azs", get(azs))
        .route("/v1/azs/{az}/{action}", post(az_action))
        .route("/v1/tenants", get(list_tenants).post(create_tenant))
        .route("/v1/tenants/{tenant}", axum::routing::delete(delete_tenant))
        .route("/v1/keys", get(list_keys).post(create_key))
        .route("/v1/keys/{id}", axum::routing::delete(revoke_key))
        .route("/v1/routes", get(routes))
        .with_state(api)
}

impl Api {
    /// Checks a manifest off the async runtime: checking compiles every
    /// expression and may take a while on a hostile one, and a few of them
    /// at once must not stall every other request. At most
    /// [`MANIFEST_CHECKS`] run at once; the rest wait their turn.
    async fn load_manifest(
        &self,
        text: &str,
    ) -> ApiResult<Result<workers::manifest::App, workers::manifest::ManifestError>> {
        let _turn = self.checking.acquire().await.map_err(internal)?;
        let text = text.to_string();
        tokio::task::spawn_blocking(move || workers::manifest::load(&text))
            .await
            .map_err(internal)
    }

    /// The app, if the tenant may see it; another tenant's app is not found.
    fn owned(&self, tenant: &str, name: &str) -> ApiResult<AppRecord> {
        match self.registry.app(name) {
            Some(app) if tenant == ADMIN || app.tenant == tenant => Ok(app),
            _ => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                format!("no app named {name}"),
            )),
        }
    }

    /// The app, if the tenant may see it, read under the app's lock, which
    /// the returned guard holds: a change in flight has landed, and no
    /// other starts until the guard is dropped.
    async fn owned_locked(
        &self,
        tenant: &str,
        name: &str,
    ) -> ApiResult<(AppRecord, tokio::sync::OwnedMutexGuard<()>)> {
        // Checked first, so that no lock is made for a name the caller may
        // not touch; checked again under the lock, for what landed meanwhile.
        self.owned(tenant, name)?;
        let held = self.app_lock(name).lock_owned().await;
        Ok((self.owned(tenant, name)?, held))
    }

    fn status(&self, app: AppRecord) -> AppStatus {
        let ready = self.supervisor.app(&app.name).map_or(0, |(_, r)| r);
        AppStatus {
            url: self.supervisor.url(&app.name),
            ready,
            canary: self.canary_status(&app.name),
            app: app.masked(),
        }
    }

    pub(crate) fn app_lock(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.deploying
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name.to_string())
            .or_default()
            .clone()
    }
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "VALIDATION", message)
}

fn check_workers(n: u32) -> ApiResult<()> {
    if (1..=8).contains(&n) {
        Ok(())
    } else {
        Err(bad(format!("workers must be 1 to 8, not {n}")))
    }
}

fn check_size(size: f64) -> ApiResult<()> {
    size.to_string()
        .parse::<workers::size::WorkerSize>()
        .map(|_| ())
        .map_err(|e| bad(e.to_string()))
}
