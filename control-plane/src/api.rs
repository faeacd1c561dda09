//! The control plane's HTTP API (axum): apps, workers, events, AZs, tenants, routes.
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
    /// Requests per API key.
    pub limiter: Arc<RateLimiter>,
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
        .route("/v1/apps/{name}/workers", get(workers))
        .route("/v1/apps/{name}/queues", get(queues))
        .route("/v1/events", get(events))
        .route("/v1/azs", get(azs))
        .route("/v1/azs/{az}/{action}", post(az_action))
        .route("/v1/tenants", post(create_tenant))
        .route("/v1/routes", get(routes))
        .with_state(api)
}

/// How long a delete waits for its purge before answering 202 (the purge
/// goes on in the background).
const PURGE_WAIT: Duration = Duration::from_secs(20);

/// Each API key's request rate (a keyed GCRA limiter); the admin key is
/// not bounded.
pub(crate) struct RateLimiter(Option<governor::DefaultKeyedRateLimiter<String>>);

impl RateLimiter {
    /// `per_second` requests a second per key, in bursts of up to ten
    /// seconds' worth; 0 for no bound.
    pub fn new(per_second: u32) -> Self {
        RateLimiter(std::num::NonZeroU32::new(per_second).map(|rate| {
            let burst = rate.saturating_mul(std::num::NonZeroU32::new(10).unwrap_or(rate));
            governor::RateLimiter::keyed(governor::Quota::per_second(rate).allow_burst(burst))
        }))
    }

    fn check(&self, key: &str) -> ApiResult<()> {
        let Some(limiter) = &self.0 else {
            return Ok(());
        };
        limiter.check_key(&key.to_string()).map_err(|not_until| {
            use governor::clock::Clock as _;
            let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "RATE_LIMITED",
                "too many requests for this API key; slow down",
            )
            .with_retry_after(wait.as_secs().max(1))
        })
    }
}

impl Api {
    fn tenant(&self, headers: &HeaderMap) -> ApiResult<String> {
        let key = bearer_token(headers).ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "UNAUTHORIZED",
                "no API key presented",
            )
        })?;
        let tenant = self.registry.tenant_of(key).ok_or_else(|| {
            ApiError::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", "unknown API key")
        })?;
        if tenant != ADMIN {
            self.limiter.check(key)?;
        }
        Ok(tenant)
    }

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

    /// Checks that `tenant` may run `wanted` (workers, size) as app `name`
    /// beside its other apps, within its quota, and claims it while the
    /// change is in flight (see [`crate::quota`]). The admin has no quota.
    fn claim_quota(
        &self,
        tenant: &str,
        name: &str,
        wanted: (u32, f64),
    ) -> ApiResult<Option<crate::quota::Claim>> {
        if tenant == ADMIN {
            return Ok(None);
        }
        let (apps, purges) = (self.registry.apps(), self.registry.purges());
        self.claims
            .claim(self.quota, (tenant, name), wanted, &apps, &purges)
            .map(Some)
            .map_err(|what| {
                ApiError::new(
                    StatusCode::FORBIDDEN,
                    "QUOTA",
                    format!("tenant {tenant} would run {what}"),
                )
            })
    }

    /// The record to deploy as `name` for `tenant`: the app's own (same
    /// instance) on a redeploy, or a new instance, recorded before any
    /// worker starts so that its name is taken and its data can be purged
    /// if the deploy fails. Returns whether it is the app's first deploy,
    /// and the quota it claims until the deploy ends.
    async fn reserve(
        &self,
        tenant: &str,
        name: &str,
        req: DeployRequest,
    ) -> ApiResult<(AppRecord, bool, Option<crate::quota::Claim>)> {
        let _names = self.names.lock().await;
        let conflict = |m: String| ApiError::new(StatusCode::CONFLICT, "CONFLICT", m);
        if self.registry.purge(name).is_some() {
            return Err(conflict(format!(
                "app {name} is being deleted; its name is free once its data is purged"
            )));
        }
        let existing = self.registry.app(name);
        if let Some(existing) = &existing
            && existing.tenant != tenant
            && tenant != ADMIN
        {
            return Err(conflict(format!("app name {name} is taken")));
        }
        let owner = existing
            .as_ref()
            .map_or(tenant, |a| a.tenant.as_str())
            .to_string();
        let claim = self.claim_quota(&owner, name, (req.workers, req.size))?;
        let (instance, version) = match &existing {
            Some(a) => (a.instance.clone(), a.version),
            None => {
                let taken = self.registry.apps().into_iter().map(|a| a.name);
                let deleting = self.registry.purges().into_iter().map(|p| p.name);
                if let Some(other) = taken
                    .chain(deleting)
                    .find(|other| common::app::shadows(name, other))
                {
                    return Err(conflict(format!(
                        "app name {name} would share a host with app {other} \
                         (worker n of an app answers at {{app}}-{{n}}.{{domain}}); choose another name"
                    )));
                }
                (common::app::new_instance(), 0)
            }
        };
        let record = AppRecord {
            name: name.to_string(),
            tenant: owner,
            instance,
            version,
            manifest: req.manifest,
            workers: req.workers,
            size: req.size,
            persistent_queues: req.persistent_queues,
            encrypt_queues: req.encrypt_queues,
        };
        let first = existing.is_none();
        if first {
            self.registry.put_app(&record).await.map_err(internal)?;
        }
        Ok((record, first, claim))
    }

    /// Deletes `record` and purges its data, waiting at most [`PURGE_WAIT`]
    /// for the purge (which goes on in the background past it). Returns
    /// whether the purge finished.
    async fn delete_and_purge(&self, record: &AppRecord) -> ApiResult<bool> {
        let purge = self.supervisor.delete(record).await?;
        match tokio::time::timeout(PURGE_WAIT, self.purger.purge(&purge)).await {
            Ok(Ok(())) => Ok(true),
            Ok(Err(e)) => {
                tracing::warn!(app = %record.name, error = %e, "purge not finished; it goes on in the background");
                Ok(false)
            }
            Err(_) => Ok(false),
        }
    }

    fn admin(&self, headers: &HeaderMap) -> ApiResult<()> {
        match self.tenant(headers)?.as_str() {
            ADMIN => Ok(()),
            _ => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "FORBIDDEN",
                "only the admin key may do this",
            )),
        }
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

    fn status(&self, app: AppRecord) -> AppStatus {
        let ready = self.supervisor.app(&app.name).map_or(0, |(_, r)| r);
        AppStatus {
            url: self.supervisor.url(&app.name),
            ready,
            app,
        }
    }

    /// Restarts `apps` side by side, one at a time, each under its lock as a
    /// tenant's restart is: their workers were started by an earlier version
    /// of the fabric ([`Supervisor::recover`]). An app deleted or redeployed
    /// meanwhile needs nothing.
    pub async fn renew(&self, apps: Vec<String>) {
        for name in apps {
            let lock = self.app_lock(&name);
            let _held = lock.lock().await;
            let Some(record) = self.registry.app(&name) else {
                continue;
            };
            if !self.supervisor.runs_an_earlier_fabrics_workers(&name) {
                continue;
            }
            tracing::info!(app = %name, "restarting workers an earlier version of the fabric started");
            if let Err(e) = self.supervisor.deploy(record).await {
                tracing::warn!(app = %name, error = %e, "could not restart workers an earlier version of the fabric started");
            }
        }
    }

    fn app_lock(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
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

async fn deploy(
    State(api): State<Api>,
    headers: HeaderMap,
    body: Result<Json<DeployRequest>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Json<AppStatus>> {
    let tenant = api.tenant(&headers)?;
    let Json(req) = body.map_err(|e| bad(e.body_text()))?;
    check_workers(req.workers)?;
    check_size(req.size)?;
    let app = api.load_manifest(&req.manifest).await?.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "MANIFEST",
            format!("manifest refused: {e}"),
        )
    })?;
    let name = req
        .name
        .clone()
        .or(app.name.clone())
        .ok_or_else(|| bad("the app needs a name: give --name or put name: in the manifest"))?;
    common::app::validate_app_name(&name).map_err(|e| bad(e.to_string()))?;
    // Refused here, before any worker starts, rather than by workers that never turn ready.
    if req.persistent_queues && api.queues.is_none() {
        return Err(bad(
            "persistent queues need queue-svc, and this control plane has no queue_url",
        ));
    }
    if app.uses_store() && !api.has_store {
        return Err(bad(
            "the app uses the object store (a store processor or a schedule), and this control plane has no objectstore_url",
        ));
    }
    let lock = api.app_lock(&name);
    let _held = lock.lock().await;
    let (record, first, _claim) = api.reserve(&tenant, &name, req).await?;
    match api.supervisor.deploy(record.clone()).await {
        Ok(record) => Ok(Json(api.status(record))),
        Err(e) => {
            // A first deploy that failed leaves nothing behind: what its
            // workers wrote is purged and the name is free again.
            if first && let Err(undo) = api.delete_and_purge(&record).await {
                tracing::error!(app = %name, error = %undo, "could not undo a failed first deploy");
            }
            Err(e.into())
        }
    }
}

async fn list_apps(State(api): State<Api>, headers: HeaderMap) -> ApiResult<Json<Vec<AppStatus>>> {
    let tenant = api.tenant(&headers)?;
    let apps = api.registry.apps();
    Ok(Json(
        apps.into_iter()
            .filter(|a| tenant == ADMIN || a.tenant == tenant)
            .map(|a| api.status(a))
            .collect(),
    ))
}

async fn show_app(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Json<AppStatus>> {
    let tenant = api.tenant(&headers)?;
    Ok(Json(api.status(api.owned(&tenant, &name)?)))
}

async fn delete_app(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    let tenant = api.tenant(&headers)?;
    // Read under the app's lock: a deploy that was in flight has landed.
    let lock = api.app_lock(&name);
    let _held = lock.lock().await;
    let record = api.owned(&tenant, &name)?;
    if api.delete_and_purge(&record).await? {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({
            "app": name,
            "status": "purging",
            "message": "the app is deleted; its data is being purged, and its name is free once that is done",
        })),
    )
        .into_response())
}

async fn scale_app(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Json(req): Json<ScaleRequest>,
) -> ApiResult<Json<AppStatus>> {
    let tenant = api.tenant(&headers)?;
    check_workers(req.workers)?;
    let lock = api.app_lock(&name);
    let _held = lock.lock().await;
    let app = api.owned(&tenant, &name)?;
    let _claim = api.claim_quota(
        &app.tenant,
        &name,
        (req.workers, req.size.unwrap_or(app.size)),
    )?;
    let record = match req.size {
        // A new size is a new version, deployed side by side.
        Some(size) if size != app.size => {
            check_size(size)?;
            api.supervisor
                .deploy(AppRecord {
                    size,
                    workers: req.workers,
                    ..app
                })
                .await?
        }
        _ => api.supervisor.scale(&name, req.workers).await?,
    };
    Ok(Json(api.status(record)))
}

/// A rolling restart: the same manifest and settings as a new version, side
/// by side, so no request fails (and a version that no longer starts is
/// rolled back, leaving the running one alone).
async fn restart_app(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Json<AppStatus>> {
    let tenant = api.tenant(&headers)?;
    let lock = api.app_lock(&name);
    let _held = lock.lock().await;
    let app = api.owned(&tenant, &name)?;
    let record = api.supervisor.deploy(app).await?;
    Ok(Json(api.status(record)))
}

async fn workers(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    let tenant = api.tenant(&headers)?;
    api.owned(&tenant, &name)?;
    Ok(Json(api.supervisor.workers(&name)).into_response())
}

async fn queues(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Json<AppQueues>> {
    let tenant = api.tenant(&headers)?;
    api.owned(&tenant, &name)?;
    let record = api.registry.app(&name).ok_or_else(|| {
        ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", format!("no app {name}"))
    })?;
    let (Some((url, key)), true) = (&api.queues, record.persistent_queues) else {
        // Transient queues live in the workers: only their names are known here.
        let manifest = api
            .load_manifest(&record.manifest)
            .await?
            .map_err(internal)?;
        return Ok(Json(AppQueues {
            app: name,
            mode: "transient".into(),
            queues: manifest
                .queues()
                .map(|(q, _)| QueueInfo {
                    name: q.to_string(),
                    depth: None,
                    in_flight: None,
                    dlq_depth: None,
                    oldest_age_ms: None,
                    encrypted: false,
                })
                .collect(),
        }));
    };
    // A short-lived read-only token: enough to count, not to take or publish.
    let app_id = record.app_id();
    let token = key.issue(&app_id, common::token::Scope::Read, Duration::from_secs(60));
    let client = queue_svc::client::Client::new(url, &app_id, &token);
    let stats = client.list().await.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "QUEUE_SVC",
            format!("queue-svc did not answer: {e}"),
        )
    })?;
    let queues = stats
        .into_iter()
        .map(|s| QueueInfo {
            name: s.name,
            depth: Some(s.depth),
            in_flight: Some(s.in_flight),
            dlq_depth: Some(s.dlq_depth),
            oldest_age_ms: s.oldest_age_ms,
            encrypted: s.encrypted,
        })
        .collect();
    Ok(Json(AppQueues {
        app: name,
        mode: "persistent".into(),
        queues,
    }))
}

#[derive(Deserialize)]
struct EventsQuery {
    #[serde(default)]
    follow: bool,
}

async fn events(
    State(api): State<Api>,
    headers: HeaderMap,
    Query(q): Query<EventsQuery>,
) -> ApiResult<Response> {
    let tenant = api.tenant(&headers)?;
    // An app's events are its instance's: those of an earlier app of the
    // same name (another tenant's, perhaps) are not shown.
    let visible = {
        let api = api.clone();
        move |e: &crate::model::Event| -> bool {
            tenant == ADMIN
                || match &e.app {
                    None => true,
                    Some(name) => api.registry.app(name).is_some_and(|a| {
                        a.tenant == tenant && e.app_id.as_deref() == Some(a.app_id().as_str())
                    }),
                }
        }
    };
    if !q.follow {
        let events: Vec<_> = api
            .supervisor
            .events()
            .recent()
            .into_iter()
            .filter(|e| visible(e))
            .collect();
        return Ok(Json(events).into_response());
    }
    let backlog: Vec<_> = api.supervisor.events().recent();
    let live = BroadcastStream::new(api.supervisor.events().subscribe()).filter_map(Result::ok);
    let stream = tokio_stream::iter(backlog)
        .chain(live)
        .filter(move |e| visible(e))
        .map(|e| Ok::<_, Infallible>(SseEvent::default().json_data(&e).unwrap_or_default()));
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

async fn azs(State(api): State<Api>, headers: HeaderMap) -> ApiResult<Response> {
    api.tenant(&headers)?;
    Ok(Json(api.supervisor.azs()).into_response())
}

async fn az_action(
    State(api): State<Api>,
    headers: HeaderMap,
    Path((az, action)): Path<(String, String)>,
) -> ApiResult<Response> {
    api.admin(&headers)?;
    let known = match action.as_str() {
        "fail" => api.supervisor.fail_az(&az),
        "restore" => api.supervisor.restore_az(&az).await,
        other => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                format!("no AZ action {other}"),
            ));
        }
    };
    if !known {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            format!("no AZ named {az}"),
        ));
    }
    Ok(Json(api.supervisor.azs()).into_response())
}

#[derive(Deserialize)]
struct NewTenant {
    name: String,
}

async fn create_tenant(
    State(api): State<Api>,
    headers: HeaderMap,
    Json(req): Json<NewTenant>,
) -> ApiResult<Response> {
    api.admin(&headers)?;
    common::app::validate_app_name(&req.name)
        .map_err(|e| bad(e.to_string().replace("app name", "tenant name")))?;
    if req.name == ADMIN {
        return Err(bad("the admin tenant exists already"));
    }
    let key = crate::new_api_key();
    api.registry
        .add_api_key(&key, &req.name)
        .await
        .map_err(internal)?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "tenant": req.name, "apiKey": key })),
    )
        .into_response())
}

#[derive(Deserialize)]
struct RoutesQuery {
    /// Answer once the table's version is above this (long poll, up to 30 s).
    after: Option<u64>,
}

async fn routes(
    State(api): State<Api>,
    headers: HeaderMap,
    Query(q): Query<RoutesQuery>,
) -> ApiResult<Response> {
    api.admin(&headers)?;
    let mut rx = api.supervisor.routes();
    if let Some(after) = q.after {
        let _ =
            tokio::time::timeout(Duration::from_secs(30), rx.wait_for(|t| t.version > after)).await;
    }
    let table = rx.borrow().clone();
    Ok(Json(table).into_response())
}
