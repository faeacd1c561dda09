//! Who is asking (API keys, their expiry, each key's request rate), and a
//! tenant's own keys: create, list, revoke.

use super::*;
use crate::access::{self, CreatedKey, KeyInfo, NewKey};
use crate::registry::{self, KeyRecord, Revoked};

/// Who a request comes from: its tenant, and the id of the key it carries.
pub(super) struct Caller {
    pub tenant: String,
    pub key_id: String,
}

fn unauthorized(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", message)
}

impl Api {
    /// The caller, from its API key: refused (401) when the key is missing,
    /// unknown (never made, or revoked) or expired; a tenant key is held to
    /// its request rate.
    pub(super) fn caller(&self, headers: &HeaderMap) -> ApiResult<Caller> {
        let key = bearer_token(headers).ok_or_else(|| unauthorized("no API key presented"))?;
        let (key_id, record) = self
            .registry
            .key(key)
            .ok_or_else(|| unauthorized("unknown API key"))?;
        let now = crate::access::now_ms();
        if record.expired(now) {
            return Err(unauthorized(format!(
                "this API key expired at {}; make a new one with `fabric keys create`",
                access::rfc3339(record.expires_ms.unwrap_or_default())
            )));
        }
        if record.tenant != ADMIN {
            self.limiter.check(key)?;
        }
        self.last_used
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key_id.clone(), now);
        Ok(Caller {
            tenant: record.tenant,
            key_id,
        })
    }

    pub(super) fn tenant(&self, headers: &HeaderMap) -> ApiResult<String> {
        self.caller(headers).map(|c| c.tenant)
    }

    pub(super) fn admin(&self, headers: &HeaderMap) -> ApiResult<()> {
        match self.tenant(headers)?.as_str() {
            ADMIN => Ok(()),
            _ => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "FORBIDDEN",
                "only the admin key may do this",
            )),
        }
    }

    /// What `GET /v1/keys` shows of key `id` (never the key).
    pub(super) fn key_info(&self, id: &str, k: &KeyRecord, current: &str) -> KeyInfo {
        let last_used = self.last_used.lock().unwrap_or_else(|p| p.into_inner());
        KeyInfo {
            id: id.to_string(),
            tenant: k.tenant.clone(),
            name: k.name.clone(),
            prefix: k.prefix.clone(),
            created_ms: k.created_ms,
            expires_ms: k.expires_ms,
            expired: k.expired(crate::access::now_ms()),
            last_used_ms: last_used.get(id).copied(),
            current: id == current,
        }
    }

    /// Makes and registers a key for `tenant`; the answer holds the key,
    /// which is shown this once.
    pub(super) async fn make_key(
        &self,
        tenant: &str,
        name: Option<String>,
        lifetime: Option<Duration>,
    ) -> ApiResult<CreatedKey> {
        let api_key = crate::new_api_key();
        let record = KeyRecord {
            name,
            ..KeyRecord::new(&api_key, tenant)
        };
        let record = KeyRecord {
            expires_ms: lifetime
                .map(|l| record.created_ms.unwrap_or_default() + l.as_millis() as u64),
            ..record
        };
        let id = self
            .registry
            .add_key(&api_key, record.clone())
            .await
            .map_err(internal)?;
        Ok(CreatedKey {
            info: self.key_info(&id, &record, ""),
            api_key,
        })
    }
}

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

    pub(super) fn check(&self, key: &str) -> ApiResult<()> {
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

/// The most keys a tenant may hold at once: enough to rotate through, not
/// enough to fill the registry.
pub const MAX_KEYS_PER_TENANT: usize = 100;

/// `POST /v1/keys`: a new key for the caller's own tenant.
pub(super) async fn create_key(
    State(api): State<Api>,
    headers: HeaderMap,
    body: Result<Json<NewKey>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Response> {
    let caller = api.caller(&headers)?;
    let Json(req) = body.map_err(|e| bad(e.body_text()))?;
    if let Some(name) = &req.name {
        access::check_key_name(name).map_err(bad)?;
    }
    let lifetime = req
        .expires
        .as_deref()
        .map(access::parse_expiry)
        .transpose()
        .map_err(bad)?;
    let held = api
        .registry
        .keys()
        .iter()
        .filter(|(_, k)| k.tenant == caller.tenant)
        .count();
    if held >= MAX_KEYS_PER_TENANT {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "CONFLICT",
            format!(
                "tenant {} holds {held} keys, the most it may; revoke one first",
                caller.tenant
            ),
        ));
    }
    let created = api.make_key(&caller.tenant, req.name, lifetime).await?;
    tracing::info!(tenant = %caller.tenant, key = %created.info.id, "API key created");
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

/// `GET /v1/keys`: the caller's own tenant's keys, never the keys themselves.
pub(super) async fn list_keys(
    State(api): State<Api>,
    headers: HeaderMap,
) -> ApiResult<Json<Vec<KeyInfo>>> {
    let caller = api.caller(&headers)?;
    Ok(Json(
        api.registry
            .keys()
            .iter()
            .filter(|(_, k)| k.tenant == caller.tenant)
            .map(|(id, k)| api.key_info(id, k, &caller.key_id))
            .collect(),
    ))
}

/// `DELETE /v1/keys/{id}`: revokes one of the caller's own tenant's keys; it
/// is refused from the next request on. Another tenant's key, like one that
/// never was, is not found.
pub(super) async fn revoke_key(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let caller = api.caller(&headers)?;
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            // A malformed id is not echoed back.
            if registry::key_id(&id) == id && id.len() == 16 {
                format!("tenant {} holds no key {id}", caller.tenant)
            } else {
                "no such key: a key id is 16 hex digits, as `fabric keys list` shows".to_string()
            },
        )
    };
    if id.len() != 16
        || !id
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        return Err(not_found());
    }
    let conflict = |m: String| ApiError::new(StatusCode::CONFLICT, "CONFLICT", m);
    match api
        .registry
        .revoke_key(&caller.tenant, &id, &caller.key_id)
        .await
        .map_err(internal)?
    {
        Revoked::Revoked(_) => {
            api.last_used
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            tracing::info!(tenant = %caller.tenant, key = %id, "API key revoked");
            Ok(StatusCode::NO_CONTENT)
        }
        Revoked::NotFound => Err(not_found()),
        Revoked::LastKeyInUse => Err(conflict(format!(
            "key {id} is the one this request came with and tenant {}'s last: revoking it would lock the tenant out; create another key first (`fabric keys create`)",
            caller.tenant
        ))),
        Revoked::Pinned => Err(conflict(format!(
            "key {id} is the admin key kept in the control plane's data directory, registered again at every start: it cannot be revoked"
        ))),
    }
}
