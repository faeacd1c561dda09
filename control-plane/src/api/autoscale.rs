//! An app's scaling policy: set (`PUT`) and turned off (`DELETE`). The
//! autoscaler ([`crate::autoscale`]) follows it from its next period.

use super::*;
use crate::model::ScalePolicy;

/// `PUT /v1/apps/{name}/autoscale`: the app scales by itself under `policy`.
pub(super) async fn set(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Result<Json<ScalePolicy>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Json<AppStatus>> {
    let tenant = api.tenant(&headers)?;
    let Json(policy) = body.map_err(|e| bad(e.body_text()))?;
    policy.check().map_err(bad)?;
    let (app, _held) = api.owned_locked(&tenant, &name).await?;
    if policy.queue_backlog.is_some() && !app.persistent_queues {
        return Err(bad(format!(
            "{name} has transient queues, which live in each worker: a queue backlog target needs persistent queues"
        )));
    }
    let record = api
        .supervisor
        .set_autoscale(&name, Some(policy.clone()))
        .await?;
    api.supervisor.events().emit(
        Some(&name),
        "autoscale.set",
        format!(
            "{name} scales by itself: {}",
            crate::model::describe_policy(&policy)
        ),
    );
    Ok(Json(api.status(record)))
}

/// `DELETE /v1/apps/{name}/autoscale`: the app keeps the workers it runs.
pub(super) async fn off(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Json<AppStatus>> {
    let tenant = api.tenant(&headers)?;
    let (app, _held) = api.owned_locked(&tenant, &name).await?;
    let record = api.supervisor.set_autoscale(&name, None).await?;
    if app.autoscale.is_some() {
        api.supervisor.events().emit(
            Some(&name),
            "autoscale.off",
            format!(
                "{name} no longer scales by itself; it keeps {} workers",
                record.workers
            ),
        );
    }
    Ok(Json(api.status(record)))
}
