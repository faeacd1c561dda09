//! Canary deploys: a new version beside the serving one, taking a share of
//! the app's requests, promoted or aborted by the tenant (or aborted by
//! [`crate::canary`] when it answers with errors).

use super::*;
use crate::model::{CanaryStatus, Outcome};

impl Api {
    /// Refuses a change to app `name` while a canary of it runs: the
    /// canary is promoted or aborted first.
    pub(super) fn no_canary(&self, name: &str) -> ApiResult<()> {
        match self.supervisor.canary(name) {
            Some((c, _)) => Err(ApiError::new(
                StatusCode::CONFLICT,
                "CONFLICT",
                format!(
                    "a canary of {name} (v{}) is running; promote it or abort it first",
                    c.version
                ),
            )),
            None => Ok(()),
        }
    }

    /// The canary of `name` as its status shows it.
    pub(super) fn canary_status(&self, name: &str) -> Option<CanaryStatus> {
        let (record, weight) = self.supervisor.canary(name)?;
        let ready = self
            .supervisor
            .workers(name)
            .iter()
            .filter(|w| w.version == record.version && w.state == crate::model::WorkerState::Ready)
            .count() as u32;
        Some(CanaryStatus {
            version: record.version,
            weight,
            ready,
        })
    }

    /// Deploys `record` as a canary taking `weight`% of the app's requests.
    pub(super) async fn deploy_canary(
        &self,
        record: AppRecord,
        weight: u8,
    ) -> ApiResult<AppStatus> {
        let name = record.name.clone();
        self.supervisor.deploy_canary(record, weight).await?;
        let app = self
            .registry
            .app(&name)
            .ok_or_else(|| internal("the app is gone"))?;
        Ok(self.status(app))
    }
}

/// `POST /v1/apps/{name}/promote`: the canary becomes the serving version.
pub(super) async fn promote(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Json<AppStatus>> {
    let tenant = api.tenant(&headers)?;
    let (_, _held) = api.owned_locked(&tenant, &name).await?;
    let record = api
        .supervisor
        .promote(&name)
        .await
        .map_err(conflict_without_canary)?;
    api.remember(&tenant, &record, "promote canary", Outcome::Deployed)
        .await;
    Ok(Json(api.status(record)))
}

/// `POST /v1/apps/{name}/abort`: the canary is retired.
pub(super) async fn abort(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Json<AppStatus>> {
    let tenant = api.tenant(&headers)?;
    let (_, _held) = api.owned_locked(&tenant, &name).await?;
    let record = api
        .supervisor
        .abort_canary(&name, &format!("aborted by {tenant}"))
        .await
        .map_err(conflict_without_canary)?;
    Ok(Json(api.status(record)))
}

/// A promote or abort of an app with no canary: 409.
fn conflict_without_canary(e: DeployError) -> ApiError {
    match e {
        DeployError::NotReady(m) => ApiError::new(StatusCode::CONFLICT, "CONFLICT", m),
        other => internal(other),
    }
}
