//! Tenants and their API keys as the API shows them, and the bounds on
//! what a caller may name or ask for (tenant and key names, key lifetimes).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The shortest lifetime a key may be given.
pub const MIN_EXPIRY: Duration = Duration::from_secs(24 * 3600);
/// The longest lifetime a key may be given: two years, of 365.25 days as
/// `2y` reads.
pub const MAX_EXPIRY: Duration = Duration::from_secs(2 * 31_557_600);
/// The longest key name.
pub const MAX_KEY_NAME: usize = 64;

/// `POST /v1/keys`: a new key for the caller's tenant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewKey {
    /// A name for people (letters, digits, `-`, `_`, `.`, spaces; at most 64).
    #[serde(default)]
    pub name: Option<String>,
    /// How long it is accepted (`90d`, `12h`, `1y`): 1 day to 2 years; never
    /// expires when absent.
    #[serde(default)]
    pub expires: Option<String>,
}

/// A key as `GET /v1/keys` lists it: never the key itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyInfo {
    /// Its id, for `keys revoke`.
    pub id: String,
    /// Its tenant.
    pub tenant: String,
    /// The name it was given.
    pub name: Option<String>,
    /// Its first 8 characters (`wfk_AbCd`); unknown for a key made before
    /// prefixes were kept.
    pub prefix: Option<String>,
    /// When it was made (Unix ms), when known.
    pub created_ms: Option<u64>,
    /// When it stops being accepted (Unix ms); never when absent.
    pub expires_ms: Option<u64>,
    /// Whether it is past its expiry.
    pub expired: bool,
    /// When it was last used (Unix ms) since the control plane started.
    pub last_used_ms: Option<u64>,
    /// Whether it is the key this request came with.
    pub current: bool,
}

/// A key just made: the key itself is in this answer and nowhere else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreatedKey {
    /// The API key; shown once.
    pub api_key: String,
    /// What is kept of it.
    #[serde(flatten)]
    pub info: KeyInfo,
}

/// A tenant as `GET /v1/tenants` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TenantInfo {
    /// Its name.
    pub name: String,
    /// When its oldest key was made (Unix ms), when known.
    pub created_ms: Option<u64>,
    /// Its apps.
    pub apps: usize,
    /// Its API keys (expired ones included, until revoked).
    pub keys: usize,
}

/// `POST /v1/tenants`'s answer: the tenant and a new key of its.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TenantKey {
    /// The tenant.
    pub tenant: String,
    /// Its new API key; shown once.
    pub api_key: String,
    /// The key's id.
    #[serde(default)]
    pub key_id: String,
    /// Whether the tenant was made now (else it existed and was given
    /// another key).
    #[serde(default)]
    pub created: bool,
}

/// `DELETE /v1/tenants/{t}`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TenantDeleted {
    /// The tenant.
    pub tenant: String,
    /// How many of its keys were revoked.
    pub keys_revoked: usize,
    /// Its apps, deleted.
    pub apps_deleted: Vec<String>,
    /// Those of them whose data is still being purged in the background.
    pub purging: Vec<String>,
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `ms` (Unix milliseconds) as an RFC 3339 time, to the second.
pub fn rfc3339(ms: u64) -> String {
    let at = std::time::UNIX_EPOCH + Duration::from_millis(ms);
    humantime_serde::re::humantime::format_rfc3339_seconds(at).to_string()
}

/// A tenant name: a DNS label, as an app name (it may name things a
/// cluster keeps, such as Pod labels).
pub fn check_tenant_name(name: &str) -> Result<(), String> {
    common::app::validate_app_name(name)
        .map_err(|e| e.to_string().replace("app name", "tenant name"))
}

/// A key name: 1 to 64 letters, digits, `-`, `_`, `.` or spaces.
pub fn check_key_name(name: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ' ');
    if name.trim().is_empty() || name.len() > MAX_KEY_NAME {
        return Err(format!(
            "a key name is 1 to {MAX_KEY_NAME} characters, not {}",
            name.len()
        ));
    }
    if !name.chars().all(allowed) {
        return Err("a key name holds only letters, digits, '-', '_', '.' and spaces".into());
    }
    Ok(())
}

/// A key's lifetime from its text (`90d`, `12h`, `1y`): 1 day to 2 years.
pub fn parse_expiry(text: &str) -> Result<Duration, String> {
    let bounds = "a key expires after 1 day to 2 years (e.g. 90d, 1y)";
    // Bounded before it is parsed.
    if text.len() > 32 {
        return Err(format!("--expires is too long; {bounds}"));
    }
    let lifetime = humantime_serde::re::humantime::parse_duration(text.trim())
        .map_err(|e| format!("--expires {text:?}: {e}; {bounds}"))?;
    if !(MIN_EXPIRY..=MAX_EXPIRY).contains(&lifetime) {
        return Err(format!("--expires {text}: {bounds}"));
    }
    Ok(lifetime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_are_one_day_to_two_years() {
        assert_eq!(parse_expiry("90d"), Ok(Duration::from_secs(90 * 86400)));
        assert!(parse_expiry("1d").is_ok());
        assert!(parse_expiry("2y").is_ok());
        for bad in [
            "23h",
            "3y",
            "0d",
            "",
            "-1d",
            "soon",
            "9999999999999999999d",
            &"1".repeat(40),
        ] {
            let e = parse_expiry(bad).expect_err(bad);
            assert!(e.contains("1 day to 2 years"), "{e}");
        }
    }

    #[test]
    fn key_names_are_short_and_plain() {
        assert!(check_key_name("ci deploy-2.0_x").is_ok());
        for bad in ["", "   ", "a\nb", "é", "<script>", &"k".repeat(65)] {
            assert!(check_key_name(bad).is_err(), "{bad:?}");
        }
    }
}
