//! Apps: deploy (names, quotas, the first deploy's reservation), list,
//! show, scale, restart, delete with its purge, workers and queues.

use super::*;

impl Api {
    /// Checks that `tenant` may run `wanted` (workers, size) as app `name`
    /// beside its other apps, within its quota, and claims it while the
    /// change is in flight (see [`crate::quota`]). The admin has no quota.
    pub(crate) fn claim_quota(
        &self,
        tenant: &str,
        name: &str,
        wanted: (u32, f64),
    ) -> ApiResult<Option<crate::quota::Claim>> {
        if tenant == ADMIN {
            return Ok(None);
        }
        let apps: Vec<AppRecord> = self
            .registry
            .apps()
            .into_iter()
            .map(|a| self.counting_canary(a))
            .collect();
        let purges = self.registry.purges();
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

    /// `app` as the quota counts it: with a running canary, its workers and
    /// vCores on top of the app's own, for as long as it runs.
    fn counting_canary(&self, app: AppRecord) -> AppRecord {
        match self.supervisor.canary(&app.name) {
            Some((canary, _)) => AppRecord {
                workers: app.workers + canary.workers,
                size: combined_size(&app, canary.workers, canary.size),
                ..app
            },
            None => app,
        }
    }

    /// The record to deploy as `name` for `tenant`: the app's own (same
    /// instance) on a redeploy, or a new instance, recorded before any
    /// worker starts so that its name is taken and its data can be purged
    /// if the deploy fails. Returns whether it is the app's first deploy,
    /// and the quota it claims until the deploy ends.
    pub(super) async fn reserve(
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
        // A canary runs beside the app's serving workers: both are counted.
        let wanted = match (&existing, req.canary) {
            (Some(serving), Some(_)) => (
                serving.workers + req.workers,
                combined_size(serving, req.workers, req.size),
            ),
            _ => (req.workers, req.size),
        };
        let claim = self.claim_quota(&owner, name, wanted)?;
        let (instance, version, kept) = match &existing {
            Some(a) => (a.instance.clone(), a.version, Some(a.clone())),
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
                (common::app::new_instance(), 0, None)
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
            // A redeploy keeps the app's properties; those given are set over them.
            properties: kept
                .as_ref()
                .map(|a| a.properties.clone())
                .unwrap_or_default(),
            // And its scaling policy.
            autoscale: kept.as_ref().and_then(|a| a.autoscale.clone()),
            secure_properties: kept.map(|a| a.secure_properties).unwrap_or_default(),
        };
        let record = super::configurations::with_properties(
            record,
            req.properties,
            req.secure_properties,
            &[],
        )?;
        let first = existing.is_none();
        if first {
            self.registry.put_app(&record).await.map_err(internal)?;
        }
        Ok((record, first, claim))
    }

    /// Deletes `record` and purges its data, waiting at most [`PURGE_WAIT`]
    /// for the purge (which goes on in the background past it). Returns
    /// whether the purge finished.
    pub(super) async fn delete_and_purge(&self, record: &AppRecord) -> ApiResult<bool> {
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
}

/// The size that makes `app`'s workers plus `workers` more of `size` count
/// their vCores exactly: the quota counts workers × size.
fn combined_size(app: &AppRecord, workers: u32, size: f64) -> f64 {
    let all = app.workers + workers;
    if all == 0 {
        return size;
    }
    (f64::from(app.workers) * app.size + f64::from(workers) * size) / f64::from(all)
}

/// How long a delete waits for its purge before answering 202 (the purge
/// goes on in the background).
const PURGE_WAIT: Duration = Duration::from_secs(20);

pub(super) async fn deploy(
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
    // Another tenant's app is neither described nor changed here: the
    // reservation below refuses its name.
    if api
        .registry
        .app(&name)
        .is_none_or(|a| a.tenant == tenant || tenant == ADMIN)
    {
        api.no_canary(&name)?;
    }
    let canary = req.canary;
    if let Some(weight) = canary {
        // Checked before anything is reserved: a canary needs a serving version.
        if !(1..=99).contains(&weight) {
            return Err(bad(format!(
                "a canary takes 1 to 99 percent of the requests, not {weight}"
            )));
        }
        let serving = api.registry.app(&name);
        if serving
            .as_ref()
            .is_some_and(|a| a.tenant != tenant && tenant != ADMIN)
        {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "CONFLICT",
                format!("app name {name} is taken"),
            ));
        }
        if serving.is_none_or(|a| a.version == 0) {
            return Err(bad(format!(
                "a canary runs beside a serving version, and {name} has none yet: deploy it first"
            )));
        }
        let (record, _, _claim) = api.reserve(&tenant, &name, req).await?;
        return api.deploy_canary(record, weight).await.map(Json);
    }
    let (record, first, _claim) = api.reserve(&tenant, &name, req).await?;
    match api
        .deploy_configuration(&tenant, record.clone(), "deploy")
        .await
    {
        Ok(record) => Ok(Json(api.status(record))),
        Err(e) => {
            // A first deploy that failed leaves nothing behind: what its
            // workers wrote is purged and the name is free again.
            if first && let Err(undo) = api.delete_and_purge(&record).await {
                tracing::error!(app = %name, error = %undo, "could not undo a failed first deploy");
            }
            Err(e)
        }
    }
}

pub(super) async fn list_apps(
    State(api): State<Api>,
    headers: HeaderMap,
) -> ApiResult<Json<Vec<AppStatus>>> {
    let tenant = api.tenant(&headers)?;
    let apps = api.registry.apps();
    Ok(Json(
        apps.into_iter()
            .filter(|a| tenant == ADMIN || a.tenant == tenant)
            .map(|a| api.status(a))
            .collect(),
    ))
}

pub(super) async fn show_app(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Json<AppStatus>> {
    let tenant = api.tenant(&headers)?;
    Ok(Json(api.status(api.owned(&tenant, &name)?)))
}

pub(super) async fn delete_app(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    let tenant = api.tenant(&headers)?;
    let (record, _held) = api.owned_locked(&tenant, &name).await?;
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

pub(super) async fn scale_app(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Json(req): Json<ScaleRequest>,
) -> ApiResult<Json<AppStatus>> {
    let tenant = api.tenant(&headers)?;
    check_workers(req.workers)?;
    let (app, _held) = api.owned_locked(&tenant, &name).await?;
    api.no_canary(&name)?;
    if let Some(p) = &app.autoscale
        && !(p.min..=p.max).contains(&req.workers)
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "CONFLICT",
            format!(
                "{name} scales by itself between {} and {} workers; change those bounds with \
                 `fabric apps autoscale` or turn autoscaling off first",
                p.min, p.max
            ),
        ));
    }
    let _claim = api.claim_quota(
        &app.tenant,
        &name,
        (req.workers, req.size.unwrap_or(app.size)),
    )?;
    let record = match req.size {
        // A new size is a new version, deployed side by side.
        Some(size) if size != app.size => {
            check_size(size)?;
            let resized = AppRecord {
                size,
                workers: req.workers,
                ..app
            };
            api.deploy_configuration(&tenant, resized, "scale").await?
        }
        _ => api.supervisor.scale(&name, req.workers).await?,
    };
    Ok(Json(api.status(record)))
}

/// A rolling restart: the same manifest and settings as a new version, side
/// by side, so no request fails (and a version that no longer starts is
/// rolled back, leaving the running one alone).
pub(super) async fn restart_app(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Json<AppStatus>> {
    let tenant = api.tenant(&headers)?;
    let (app, _held) = api.owned_locked(&tenant, &name).await?;
    api.no_canary(&name)?;
    let record = api.deploy_configuration(&tenant, app, "restart").await?;
    Ok(Json(api.status(record)))
}

pub(super) async fn logs(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(name): Path<String>,
    query: Result<Query<crate::logs::LogQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Vec<crate::logs::LogLine>>> {
    let tenant = api.tenant(&headers)?;
    let Query(query) = query.map_err(|e| bad(e.body_text()))?;
    let app = api.owned(&tenant, &name)?;
    let dir = api.logs.clone();
    let read = tokio::task::spawn_blocking(move || {
        crate::logs::read(&dir, &app.name, &app.app_id(), &query)
    })
    .await
    .map_err(internal)?;
    Ok(Json(read.map_err(bad)?))
}

pub(super) async fn workers(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    let tenant = api.tenant(&headers)?;
    api.owned(&tenant, &name)?;
    Ok(Json(api.supervisor.workers(&name)).into_response())
}
