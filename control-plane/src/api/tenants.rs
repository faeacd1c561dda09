//! Tenants, for the admin: create (with a first key), list, delete (with
//! their apps, purged as `apps delete` purges them, and their keys).

use super::*;
use crate::access::{self, TenantDeleted, TenantInfo, TenantKey};

impl Api {
    /// Every tenant: each one holding a key or an app.
    fn tenant_infos(&self) -> Vec<TenantInfo> {
        let mut tenants = std::collections::BTreeMap::<String, TenantInfo>::new();
        fn entry<'a>(
            tenants: &'a mut std::collections::BTreeMap<String, TenantInfo>,
            name: &str,
        ) -> &'a mut TenantInfo {
            tenants
                .entry(name.to_string())
                .or_insert_with(|| TenantInfo {
                    name: name.to_string(),
                    created_ms: None,
                    apps: 0,
                    keys: 0,
                })
        }
        for (_, k) in self.registry.keys() {
            let t = entry(&mut tenants, &k.tenant);
            t.keys += 1;
            t.created_ms = match (t.created_ms, k.created_ms) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        for app in self.registry.apps() {
            entry(&mut tenants, &app.tenant).apps += 1;
        }
        tenants.into_values().collect()
    }
}

/// `POST /v1/tenants {"name": T}` (admin): answers `{"tenant": T, "apiKey": K}`
/// with a new key for T. A tenant that exists already is given another key
/// (200, `created: false`), so a script that runs twice still gets a key.
pub(super) async fn create_tenant(
    State(api): State<Api>,
    headers: HeaderMap,
    body: Result<Json<NewTenant>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Response> {
    api.admin(&headers)?;
    let Json(req) = body.map_err(|e| bad(e.body_text()))?;
    access::check_tenant_name(&req.name).map_err(bad)?;
    if req.name == ADMIN {
        return Err(bad("the admin tenant exists already"));
    }
    let exists = api.tenant_infos().iter().any(|t| t.name == req.name);
    let name = if exists {
        "issued by the admin"
    } else {
        "made with the tenant"
    };
    let key = api.make_key(&req.name, Some(name.into()), None).await?;
    tracing::info!(tenant = %req.name, key = %key.info.id, created = !exists, "tenant key issued");
    Ok((
        if exists {
            StatusCode::OK
        } else {
            StatusCode::CREATED
        },
        Json(TenantKey {
            tenant: req.name,
            api_key: key.api_key,
            key_id: key.info.id,
            created: !exists,
        }),
    )
        .into_response())
}

#[derive(Deserialize)]
pub(super) struct NewTenant {
    name: String,
}

/// `GET /v1/tenants` (admin): name, created, apps, keys.
pub(super) async fn list_tenants(
    State(api): State<Api>,
    headers: HeaderMap,
) -> ApiResult<Json<Vec<TenantInfo>>> {
    api.admin(&headers)?;
    Ok(Json(api.tenant_infos()))
}

#[derive(Deserialize)]
pub(super) struct DeleteQuery {
    #[serde(default)]
    force: bool,
}

/// How many times a forced delete looks again for apps of the tenant: an
/// app whose deploy was in flight when the keys went may land after the
/// first look.
const FORCE_ROUNDS: usize = 3;

/// `DELETE /v1/tenants/{t}[?force=true]` (admin): refused (409, naming them)
/// while the tenant owns apps; with `force`, its keys are revoked first (so
/// no new change of its starts), then each app is deleted and purged as
/// `DELETE /v1/apps/{n}` does.
pub(super) async fn delete_tenant(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    Query(q): Query<DeleteQuery>,
) -> ApiResult<Json<TenantDeleted>> {
    api.admin(&headers)?;
    access::check_tenant_name(&tenant).map_err(bad)?;
    if tenant == ADMIN {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "FORBIDDEN",
            "the admin tenant cannot be deleted",
        ));
    }
    if !api.tenant_infos().iter().any(|t| t.name == tenant) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            format!("no tenant named {tenant}"),
        ));
    }
    let owned = |api: &Api| -> Vec<AppRecord> {
        api.registry
            .apps()
            .into_iter()
            .filter(|a| a.tenant == tenant)
            .collect()
    };
    let apps = owned(&api);
    if !apps.is_empty() && !q.force {
        let names: Vec<&str> = apps.iter().map(|a| a.name.as_str()).collect();
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "CONFLICT",
            format!(
                "tenant {tenant} owns {} app(s): {}; delete them first, or delete the tenant with --force (which deletes them and purges their data)",
                names.len(),
                names.join(", ")
            ),
        ));
    }
    let keys = api
        .registry
        .remove_tenant_keys(&tenant)
        .await
        .map_err(internal)?;
    let (mut deleted, mut purging) = (Vec::new(), Vec::new());
    for _ in 0..FORCE_ROUNDS {
        let apps = owned(&api);
        if apps.is_empty() {
            break;
        }
        for app in apps {
            // Read again under the app's lock: a change in flight has landed.
            let lock = api.app_lock(&app.name);
            let _held = lock.lock().await;
            let Some(record) = api.registry.app(&app.name).filter(|a| a.tenant == tenant) else {
                continue;
            };
            if !api.delete_and_purge(&record).await? {
                purging.push(record.name.clone());
            }
            deleted.push(record.name);
        }
    }
    tracing::info!(tenant = %tenant, keys, apps = deleted.len(), "tenant deleted");
    Ok(Json(TenantDeleted {
        tenant,
        keys_revoked: keys,
        apps_deleted: deleted,
        purging,
    }))
}
