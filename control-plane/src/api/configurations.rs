//! An app's configurations: every deploy, property change, resize, restart
//! and rollback is one, numbered and kept (the last ten); properties are
//! set and unset as a new one, deployed side by side; any kept one can be
//! deployed again.

use super::*;
use crate::model::{Configuration, Outcome, Properties, PropertiesRequest, RollbackRequest};

impl Api {
    /// Deploys `record` side by side as a new configuration made by
    /// `tenant` through `change`, and records how it ended.
    pub(super) async fn deploy_configuration(
        &self,
        tenant: &str,
        record: AppRecord,
        change: &str,
    ) -> ApiResult<AppRecord> {
        let result = self.supervisor.deploy(record.clone()).await;
        let (shown, outcome) = match &result {
            Ok(deployed) => (deployed, Outcome::Deployed),
            Err(e) => (
                &record,
                Outcome::Failed {
                    reason: e.to_string(),
                },
            ),
        };
        self.remember(tenant, shown, change, outcome).await;
        Ok(result?)
    }

    /// Records `record` as the app's next configuration, made by `tenant`
    /// through `change`, ended as `outcome`.
    pub(super) async fn remember(
        &self,
        tenant: &str,
        record: &AppRecord,
        change: &str,
        outcome: Outcome,
    ) {
        let name = &record.name;
        let number = self
            .registry
            .history(name)
            .last()
            .map_or(1, |c| c.number + 1);
        let config = Configuration::of(record, number, change, tenant, outcome);
        if let Err(e) = self.registry.add_configuration(name, config).await {
            tracing::warn!(app = %name, error = %e, "could not record a configuration");
        }
    }
}

/// `record` with `req`'s properties set over its own, checked.
pub(super) fn with_properties(
    mut record: AppRecord,
    set: Properties,
    set_secure: Properties,
    unset: &[String],
) -> ApiResult<AppRecord> {
    for name in unset {
        record.properties.remove(name);
        record.secure_properties.remove(name);
    }
    // A name set one way stops being the other.
    for name in set.keys() {
        record.secure_properties.remove(name);
    }
    for name in set_secure.keys() {
        record.properties.remove(name);
    }
    record.properties.extend(set);
    record.secure_properties.extend(set_secure);
    crate::model::check_properties(&record.properties, &record.secure_properties).map_err(bad)?;
    Ok(record)
}

pub(super) async fn set_properties(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Result<Json<PropertiesRequest>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Json<AppStatus>> {
    let tenant = api.tenant(&headers)?;
    let Json(req) = body.map_err(|e| bad(e.body_text()))?;
    if req.set.is_empty() && req.set_secure.is_empty() && req.unset.is_empty() {
        return Err(bad("nothing to set or unset"));
    }
    let (app, _held) = api.owned_locked(&tenant, &name).await?;
    api.no_canary(&name)?;
    if let Some(missing) = req
        .unset
        .iter()
        .find(|k| !app.properties.contains_key(*k) && !app.secure_properties.contains_key(*k))
    {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            format!("app {name} has no property {missing:?}"),
        ));
    }
    let change = if req.set.is_empty() && req.set_secure.is_empty() {
        "unset"
    } else {
        "set"
    };
    let record = with_properties(app, req.set, req.set_secure, &req.unset)?;
    let record = api.deploy_configuration(&tenant, record, change).await?;
    Ok(Json(api.status(record)))
}

pub(super) async fn history(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Json<Vec<Configuration>>> {
    let tenant = api.tenant(&headers)?;
    api.owned(&tenant, &name)?;
    let mut kept = api.registry.history(&name);
    kept.reverse();
    Ok(Json(kept.into_iter().map(Configuration::masked).collect()))
}

pub(super) async fn rollback(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Result<Json<RollbackRequest>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Json<AppStatus>> {
    let tenant = api.tenant(&headers)?;
    let Json(req) = body.map_err(|e| bad(e.body_text()))?;
    let (app, _held) = api.owned_locked(&tenant, &name).await?;
    api.no_canary(&name)?;
    let kept = api.registry.history(&name);
    let serving = kept
        .iter()
        .rev()
        .find(|c| c.version == Some(app.version))
        .map(|c| c.number);
    let target = match req.to {
        Some(n) => kept.iter().find(|c| c.number == n).ok_or_else(|| {
            let numbers: Vec<String> = kept.iter().map(|c| c.number.to_string()).collect();
            ApiError::new(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                format!(
                    "app {name} keeps no configuration {n} (it keeps {})",
                    numbers.join(", ")
                ),
            )
        })?,
        // The last one that served before the serving one.
        None => kept
            .iter()
            .rev()
            .filter(|c| matches!(c.outcome, Outcome::Deployed))
            .find(|c| Some(c.number) != serving && c.version < Some(app.version))
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::CONFLICT,
                    "CONFLICT",
                    format!("app {name} has no earlier configuration that served"),
                )
            })?,
    };
    let _claim = api.claim_quota(&app.tenant, &name, (target.workers, target.size))?;
    let change = format!("rollback to {}", target.number);
    let record = target.applied_to(app);
    let record = api.deploy_configuration(&tenant, record, &change).await?;
    Ok(Json(api.status(record)))
}
