//! The events webhook: which events it is sent (a tenant filter) and how a
//! receiver knows they came from this fabric (an HMAC-SHA256 signature over
//! a timestamp and the exact body, as Stripe and GitHub sign theirs).

use std::path::PathBuf;

use common::secrets::Secret;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Deserializer};
use sha2::Sha256;

use crate::model::Event;

/// The header carrying the signature: `sha256=<hex>`.
pub const SIGNATURE_HEADER: &str = "x-fabric-signature";
/// The header carrying the Unix seconds the signature was made at.
pub const TIMESTAMP_HEADER: &str = "x-fabric-timestamp";
/// How far a receiver should let a timestamp be from its own clock: a
/// signed body replayed later than this is refused.
pub const TOLERANCE_SECS: u64 = 300;

/// Where events go and how they are signed.
#[derive(Clone)]
pub struct Webhook {
    /// Where each event is `POST`ed.
    pub url: String,
    /// Only these tenants' apps' events (and fabric-wide ones); every event when empty.
    pub tenants: Vec<String>,
    /// The key events are signed with; unsigned when absent.
    pub secret: Option<Secret>,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("url", &self.url)
            .field("tenants", &self.tenants)
            .field("signed", &self.secret.is_some())
            .finish()
    }
}

impl Webhook {
    /// The webhook the settings ask for, if any: the secret from
    /// `events_webhook_secret` (`FABRIC_EVENTS_WEBHOOK_SECRET`) or the file
    /// `events_webhook_secret_file`; every tenant name checked.
    pub fn from_settings(s: &crate::Settings) -> Result<Option<Self>, String> {
        for t in &s.events_webhook_tenants {
            crate::access::check_tenant_name(t)
                .map_err(|e| format!("events_webhook_tenants: {e}"))?;
        }
        let secret = match (&s.events_webhook_secret, &s.events_webhook_secret_file) {
            (Some(_), Some(_)) => {
                return Err(
                    "events_webhook_secret and events_webhook_secret_file: set one, not both"
                        .into(),
                );
            }
            (Some(secret), None) => Some(secret.clone()),
            (None, Some(path)) => Some(read_secret(path)?),
            (None, None) => None,
        };
        if secret.as_ref().is_some_and(|s| s.expose().is_empty()) {
            return Err("events_webhook_secret: empty".into());
        }
        let Some(url) = &s.events_webhook else {
            return Ok(None);
        };
        if secret.is_none() {
            tracing::warn!(url = %url, "the events webhook is not signed: set events_webhook_secret so that its receiver can check the sender");
        }
        Ok(Some(Webhook {
            url: url.clone(),
            tenants: s.events_webhook_tenants.clone(),
            secret,
        }))
    }

    /// Whether `event` goes to this webhook: with a tenant filter, an app's
    /// event only when the app is one of those tenants', and every
    /// fabric-wide event (an AZ down), as a tenant's own view shows them.
    pub fn wants(&self, event: &Event) -> bool {
        if self.tenants.is_empty() {
            return true;
        }
        match (&event.app, &event.tenant) {
            (None, _) => true,
            (Some(_), Some(t)) => self.tenants.iter().any(|f| f == t),
            (Some(_), None) => false,
        }
    }

    /// The headers to send `body` with at `timestamp` (Unix seconds): the
    /// timestamp, and its signature when there is a secret.
    pub fn headers(&self, timestamp: u64, body: &[u8]) -> Vec<(&'static str, String)> {
        let mut headers = vec![(TIMESTAMP_HEADER, timestamp.to_string())];
        if let Some(secret) = &self.secret {
            headers.push((
                SIGNATURE_HEADER,
                sign(secret.expose().as_bytes(), timestamp, body),
            ));
        }
        headers
    }
}

fn read_secret(path: &PathBuf) -> Result<Secret, String> {
    std::fs::read_to_string(path)
        .map(|s| Secret::new(s.trim()))
        .map_err(|e| format!("events_webhook_secret_file: {}: {e}", path.display()))
}

/// The signature of `body` sent at `timestamp`: `sha256=` and the hex
/// HMAC-SHA256, keyed by `secret`, of `{timestamp}.{body}`.
pub fn sign(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

/// What a receiver does: whether `signature` is this fabric's for `body`
/// sent at `timestamp`, and the timestamp within [`TOLERANCE_SECS`] of
/// `now` (Unix seconds). Compared in constant time.
pub fn verify(secret: &[u8], timestamp: &str, signature: &str, body: &[u8], now: u64) -> bool {
    let Ok(at) = timestamp.parse::<u64>() else {
        return false;
    };
    if at.abs_diff(now) > TOLERANCE_SECS {
        return false;
    }
    let Some(hex) = signature.strip_prefix("sha256=") else {
        return false;
    };
    let Some(given) = from_hex(hex) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&given).is_ok()
}

fn from_hex(hex: &str) -> Option<Vec<u8>> {
    if hex.len() != 64 {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Reads a list setting given as a list (TOML) or as one comma-separated
/// string (`FABRIC_EVENTS_WEBHOOK_TENANTS=acme,globex`).
pub(crate) fn comma_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
        OneOrMany::Many(v) => v,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(app: Option<&str>, tenant: Option<&str>) -> Event {
        Event {
            seq: 1,
            at_ms: 1,
            app: app.map(String::from),
            app_id: None,
            tenant: tenant.map(String::from),
            kind: "worker.up".into(),
            message: "m".into(),
        }
    }

    #[test]
    fn a_signature_verifies_for_its_body_and_time_only() {
        let body = br#"{"seq":1}"#;
        let sig = sign(b"s3cret", 1_700_000_000, body);
        assert!(sig.starts_with("sha256=") && sig.len() == 7 + 64, "{sig}");
        assert!(verify(b"s3cret", "1700000000", &sig, body, 1_700_000_100));
        assert!(!verify(b"other", "1700000000", &sig, body, 1_700_000_100));
        assert!(!verify(
            b"s3cret",
            "1700000000",
            &sig,
            br#"{"seq":2}"#,
            1_700_000_100
        ));
        assert!(!verify(b"s3cret", "1700000001", &sig, body, 1_700_000_100));
        // Replayed past the tolerance.
        assert!(!verify(
            b"s3cret",
            "1700000000",
            &sig,
            body,
            1_700_000_000 + TOLERANCE_SECS + 1
        ));
        for bad in ["", "sha256=", "sha256=zz", "md5=00", &format!("{sig}00")] {
            assert!(
                !verify(b"s3cret", "1700000000", bad, body, 1_700_000_000),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_tenant_filter_passes_its_tenants_apps_and_fabric_wide_events() {
        let all = Webhook {
            url: String::new(),
            tenants: Vec::new(),
            secret: None,
        };
        assert!(all.wants(&event(Some("a"), Some("globex"))));
        let acme = Webhook {
            tenants: vec!["acme".into()],
            ..all
        };
        assert!(acme.wants(&event(Some("shop"), Some("acme"))));
        assert!(!acme.wants(&event(Some("shop"), Some("globex"))));
        assert!(!acme.wants(&event(Some("shop"), None)));
        assert!(acme.wants(&event(None, None)));
    }

    #[test]
    fn the_secret_comes_from_one_place_and_the_filter_names_tenants() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("webhook.secret");
        std::fs::write(&file, "from-a-file\n").unwrap();
        let settings = crate::Settings {
            events_webhook: Some("http://127.0.0.1:9/hook".into()),
            events_webhook_secret_file: Some(file.clone()),
            events_webhook_tenants: vec!["acme".into()],
            ..Default::default()
        };
        let hook = Webhook::from_settings(&settings).unwrap().unwrap();
        assert_eq!(
            hook.secret.as_ref().map(Secret::expose),
            Some("from-a-file")
        );
        let both = crate::Settings {
            events_webhook_secret: Some(Secret::new("inline")),
            ..settings.clone()
        };
        assert!(
            Webhook::from_settings(&both)
                .unwrap_err()
                .contains("not both")
        );
        let missing = crate::Settings {
            events_webhook_secret_file: Some(dir.path().join("absent")),
            ..settings.clone()
        };
        assert!(Webhook::from_settings(&missing).is_err());
        let bad = crate::Settings {
            events_webhook_tenants: vec!["Not A Tenant".into()],
            ..settings
        };
        assert!(
            Webhook::from_settings(&bad)
                .unwrap_err()
                .contains("events_webhook_tenants")
        );
    }

    #[test]
    fn the_secret_never_shows_in_debug() {
        let w = Webhook {
            url: "http://x".into(),
            tenants: Vec::new(),
            secret: Some(Secret::new("hunter2-marker")),
        };
        assert!(!format!("{w:?}").contains("hunter2-marker"));
    }
}
