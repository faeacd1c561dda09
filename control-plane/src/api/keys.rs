//! Who is asking: API keys, tenants and each key's request rate.

use super::*;

impl Api {
    pub(super) fn tenant(&self, headers: &HeaderMap) -> ApiResult<String> {
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

pub(super) async fn create_tenant(
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
pub(super) struct NewTenant {
    name: String,
}
