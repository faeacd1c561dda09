//! App tokens: HMAC-SHA256 over app, issue time, expiry and scope, keyed by the fabric secret.
//!
//! Wire form: `wft1.<app, base64url>.<issued unix s>.<expires unix s>.<scope>.<mac, base64url>`,
//! where the MAC covers everything before its own dot. A worker holds a token
//! for its own app; the queue and object store services refuse it for any other.
//! The fabric's own components hold internal tokens ([`TokenKey::issue_internal`]),
//! for a subject no app can be named, which open no app.

use std::fmt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

const PREFIX: &str = "wft1";
/// The subject of internal tokens: not a valid app name (it starts with `_`),
/// so no app's token is one and no internal token opens an app.
pub const INTERNAL_SUBJECT: &str = "_fabric";
/// How far in the future an issue time may be, to allow for clock skew.
const MAX_SKEW_SECS: u64 = 60;

/// What a token lets its holder do within its app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// A worker: publish, lease and ack messages; read and write stores.
    Worker,
    /// Read-only: stats and reads (the control plane's view of an app).
    Read,
    /// The fabric's components talking to each other (the control plane
    /// publishing routes to the load balancer); never given to an app.
    Internal,
}

impl Scope {
    /// The scope's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Worker => "worker",
            Scope::Read => "read",
            Scope::Internal => "internal",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "worker" => Some(Scope::Worker),
            "read" => Some(Scope::Read),
            "internal" => Some(Scope::Internal),
            _ => None,
        }
    }

    /// Whether a token of this scope may do what `needed` asks: a worker
    /// may read, and internal stands apart (neither includes the other).
    pub fn allows(self, needed: Scope) -> bool {
        match self {
            Scope::Worker => matches!(needed, Scope::Worker | Scope::Read),
            Scope::Read => needed == Scope::Read,
            Scope::Internal => needed == Scope::Internal,
        }
    }
}

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The app the token opens.
    pub app: String,
    /// Unix seconds when it was issued.
    pub issued_at: u64,
    /// Unix seconds after which it is refused.
    pub expires_at: u64,
    /// What it allows.
    pub scope: Scope,
}

/// Why a token was refused. Each maps to one HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// No token was presented.
    #[error("no app token presented")]
    Missing,
    /// Not in the token format.
    #[error("app token is malformed")]
    Malformed,
    /// The MAC does not verify: altered, or issued by another fabric.
    #[error("app token signature is invalid")]
    BadSignature,
    /// Past its expiry.
    #[error("app token expired at {expired_at} (unix seconds)")]
    Expired {
        /// When it expired.
        expired_at: u64,
    },
    /// Issued further in the future than clock skew explains.
    #[error("app token is not valid yet")]
    NotYetValid,
    /// A valid token for another app.
    #[error("app token for app {token_app:?} cannot open app {wanted:?}")]
    WrongApp {
        /// The app the token is for.
        token_app: String,
        /// The app that was asked for.
        wanted: String,
    },
    /// A valid token whose scope does not allow the operation.
    #[error("app token scope {have} does not allow {need}")]
    Scope {
        /// The token's scope.
        have: &'static str,
        /// The scope needed.
        need: &'static str,
    },
}

impl TokenError {
    /// 401 when the caller is not authenticated, 403 when it is but may not do this.
    pub fn status(&self) -> u16 {
        match self {
            TokenError::WrongApp { .. } | TokenError::Scope { .. } => 403,
            _ => 401,
        }
    }
}

/// The fabric secret that signs and verifies app tokens.
#[derive(Clone)]
pub struct TokenKey(Zeroizing<Vec<u8>>);

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenKey(<redacted>)")
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl TokenKey {
    /// Wraps a secret; it must be at least 32 bytes.
    pub fn new(secret: Vec<u8>) -> Result<Self, crate::envelope::KeyError> {
        if secret.len() < 32 {
            return Err(crate::envelope::KeyError::Malformed {
                origin: "fabric secret".into(),
                reason: format!("{} bytes, at least 32 needed", secret.len()),
            });
        }
        Ok(TokenKey(Zeroizing::new(secret)))
    }

    /// A fresh random 32-byte secret.
    pub fn generate() -> Self {
        let mut secret = Zeroizing::new(vec![0u8; 32]);
        crate::random::fill(&mut secret);
        TokenKey(secret)
    }

    /// Parses the base64 text form (as in a file or `FABRIC_SECRET`).
    pub fn parse(text: &str, origin: &str) -> Result<Self, crate::envelope::KeyError> {
        let raw = B64
            .decode(text.trim())
            .map_err(|e| crate::envelope::KeyError::Malformed {
                origin: origin.to_string(),
                reason: format!("not valid base64 ({e})"),
            })?;
        Self::new(raw).map_err(|e| match e {
            crate::envelope::KeyError::Malformed { reason, .. } => {
                crate::envelope::KeyError::Malformed {
                    origin: origin.to_string(),
                    reason,
                }
            }
            other => other,
        })
    }

    /// Loads the secret file at `path`, creating it (mode 0600) when missing.
    pub fn load_or_generate(path: &Path) -> Result<Self, crate::envelope::KeyError> {
        let io = |source| crate::envelope::KeyError::Io {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let fresh = Self::generate();
        let text = Zeroizing::new(format!("{}\n", B64.encode(&*fresh.0)));
        match crate::secret_file::create_new(path, text.as_bytes()) {
            Ok(()) => Ok(fresh),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let text = Zeroizing::new(std::fs::read_to_string(path).map_err(io)?);
                Self::parse(&text, &path.display().to_string())
            }
            Err(e) => Err(io(e)),
        }
    }

    fn mac(&self, body: &str) -> Hmac<Sha256> {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC accepts keys of any length");
        mac.update(body.as_bytes());
        mac
    }

    /// Issues a token for `app` with `scope`, valid for `ttl` from now.
    pub fn issue(&self, app: &str, scope: Scope, ttl: Duration) -> String {
        let iat = now_secs();
        self.issue_at(app, scope, iat, iat.saturating_add(ttl.as_secs()))
    }

    /// Issues a token with explicit times (unix seconds).
    pub fn issue_at(&self, app: &str, scope: Scope, issued_at: u64, expires_at: u64) -> String {
        let body = format!(
            "{PREFIX}.{}.{issued_at}.{expires_at}.{}",
            B64URL.encode(app),
            scope.as_str()
        );
        let tag = self.mac(&body).finalize().into_bytes();
        format!("{body}.{}", B64URL.encode(tag))
    }

    /// Verifies the signature and times of `token` and returns its claims.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        self.verify_at(token, now_secs())
    }

    /// [`TokenKey::verify`] at a given time (unix seconds).
    pub fn verify_at(&self, token: &str, now: u64) -> Result<Claims, TokenError> {
        let (body, tag) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let tag = B64URL.decode(tag).map_err(|_| TokenError::Malformed)?;
        // Constant-time comparison, before any field is trusted.
        self.mac(body)
            .verify_slice(&tag)
            .map_err(|_| TokenError::BadSignature)?;
        let mut parts = body.split('.');
        let (Some(PREFIX), Some(app), Some(iat), Some(exp), Some(scope), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(TokenError::Malformed);
        };
        let app = B64URL
            .decode(app)
            .ok()
            .and_then(|a| String::from_utf8(a).ok())
            .ok_or(TokenError::Malformed)?;
        let issued_at: u64 = iat.parse().map_err(|_| TokenError::Malformed)?;
        let expires_at: u64 = exp.parse().map_err(|_| TokenError::Malformed)?;
        let scope = Scope::parse(scope).ok_or(TokenError::Malformed)?;
        if now >= expires_at {
            return Err(TokenError::Expired {
                expired_at: expires_at,
            });
        }
        if issued_at > now.saturating_add(MAX_SKEW_SECS) {
            return Err(TokenError::NotYetValid);
        }
        Ok(Claims {
            app,
            issued_at,
            expires_at,
            scope,
        })
    }

    /// Verifies `token` (if any) and checks it opens `app` with `needed` scope.
    pub fn authorize(
        &self,
        token: Option<&str>,
        app: &str,
        needed: Scope,
    ) -> Result<Claims, TokenError> {
        let claims = self.verify(token.ok_or(TokenError::Missing)?)?;
        if claims.app != app {
            return Err(TokenError::WrongApp {
                token_app: claims.app,
                wanted: app.to_string(),
            });
        }
        if !claims.scope.allows(needed) {
            return Err(TokenError::Scope {
                have: claims.scope.as_str(),
                need: needed.as_str(),
            });
        }
        Ok(claims)
    }

    /// Issues an internal token, for one of the fabric's components to
    /// present to another, valid for `ttl` from now.
    pub fn issue_internal(&self, ttl: Duration) -> String {
        self.issue(INTERNAL_SUBJECT, Scope::Internal, ttl)
    }

    /// Verifies that `token` is an unexpired internal token of this fabric;
    /// an app's token, whatever its scope, is refused.
    pub fn verify_internal(&self, token: &str) -> Result<Claims, TokenError> {
        self.verify_internal_at(token, now_secs())
    }

    /// [`TokenKey::verify_internal`] at a given time (unix seconds).
    pub fn verify_internal_at(&self, token: &str, now: u64) -> Result<Claims, TokenError> {
        let claims = self.verify_at(token, now)?;
        if claims.scope != Scope::Internal {
            return Err(TokenError::Scope {
                have: claims.scope.as_str(),
                need: Scope::Internal.as_str(),
            });
        }
        if claims.app != INTERNAL_SUBJECT {
            return Err(TokenError::WrongApp {
                token_app: claims.app,
                wanted: INTERNAL_SUBJECT.into(),
            });
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn issues_and_verifies() {
        let key = TokenKey::generate();
        let token = key.issue("orders", Scope::Worker, HOUR);
        let claims = key
            .authorize(Some(&token), "orders", Scope::Worker)
            .unwrap();
        assert_eq!(claims.app, "orders");
        assert_eq!(claims.scope, Scope::Worker);
        assert_eq!(claims.expires_at - claims.issued_at, 3600);
    }

    #[test]
    fn refusals_are_distinct() {
        let key = TokenKey::generate();
        let orders = key.issue("orders", Scope::Worker, HOUR);
        assert_eq!(
            key.authorize(None, "orders", Scope::Read),
            Err(TokenError::Missing)
        );
        assert!(matches!(
            key.authorize(Some(&orders), "billing", Scope::Read),
            Err(TokenError::WrongApp { .. })
        ));
        let other_fabric = TokenKey::generate().issue("orders", Scope::Worker, HOUR);
        assert_eq!(
            key.authorize(Some(&other_fabric), "orders", Scope::Read),
            Err(TokenError::BadSignature)
        );
        let expired = key.issue_at("orders", Scope::Worker, 100, 200);
        assert_eq!(
            key.verify_at(&expired, 200),
            Err(TokenError::Expired { expired_at: 200 })
        );
        assert!(key.verify_at(&expired, 199).is_ok());
        let future = key.issue_at("orders", Scope::Worker, 10_000, 20_000);
        assert_eq!(key.verify_at(&future, 1_000), Err(TokenError::NotYetValid));
        let read = key.issue("orders", Scope::Read, HOUR);
        assert!(matches!(
            key.authorize(Some(&read), "orders", Scope::Worker),
            Err(TokenError::Scope { .. })
        ));
        assert!(key.authorize(Some(&read), "orders", Scope::Read).is_ok());
        for garbage in [
            "",
            "wft1",
            "a.b",
            "wft1.x.y.z.w.v",
            &format!("{orders}x"),
            ".....",
        ] {
            let err = key.verify(garbage).unwrap_err();
            assert!(
                matches!(err, TokenError::Malformed | TokenError::BadSignature),
                "{garbage:?}: {err:?}"
            );
        }
    }

    #[test]
    fn scopes_allow_themselves_and_internal_stands_apart() {
        use Scope::*;
        let allowed = |have: Scope, need: Scope| have.allows(need);
        assert!(allowed(Worker, Worker) && allowed(Worker, Read));
        assert!(allowed(Read, Read) && !allowed(Read, Worker));
        assert!(allowed(Internal, Internal));
        assert!(!allowed(Internal, Worker) && !allowed(Internal, Read));
        assert!(!allowed(Worker, Internal) && !allowed(Read, Internal));
        for scope in [Worker, Read, Internal] {
            assert_eq!(Scope::parse(scope.as_str()), Some(scope));
        }
        assert_eq!(Internal.as_str(), "internal");
    }

    #[test]
    fn internal_tokens_open_no_app_and_no_app_token_is_internal() {
        let key = TokenKey::generate();
        let internal = key.issue_internal(HOUR);
        let claims = key.verify_internal(&internal).unwrap();
        assert_eq!(
            (claims.app.as_str(), claims.scope),
            (INTERNAL_SUBJECT, Scope::Internal)
        );
        assert!(crate::app::validate_app_name(INTERNAL_SUBJECT).is_err());
        // An app's tokens are refused as internal, whatever their scope.
        for scope in [Scope::Worker, Scope::Read] {
            let app = key.issue("orders", scope, HOUR);
            assert!(
                matches!(key.verify_internal(&app), Err(TokenError::Scope { .. })),
                "{scope:?}"
            );
        }
        // An internal scope for another subject is not internal either.
        let forged_subject = key.issue("orders", Scope::Internal, HOUR);
        assert!(matches!(
            key.verify_internal(&forged_subject),
            Err(TokenError::WrongApp { .. })
        ));
        // The internal token opens no app, with any scope.
        for (app, scope) in [
            ("orders", Scope::Worker),
            ("orders", Scope::Read),
            ("orders", Scope::Internal),
            (INTERNAL_SUBJECT, Scope::Worker),
            (INTERNAL_SUBJECT, Scope::Read),
        ] {
            assert!(
                key.authorize(Some(&internal), app, scope).is_err(),
                "{app} {scope:?}"
            );
        }
        // Expired, another fabric's, or no token: refused, 401.
        let expired = key.issue_at(INTERNAL_SUBJECT, Scope::Internal, 100, 200);
        assert_eq!(
            key.verify_internal_at(&expired, 200),
            Err(TokenError::Expired { expired_at: 200 })
        );
        assert!(key.verify_internal_at(&expired, 199).is_ok());
        let other = TokenKey::generate().issue_internal(HOUR);
        assert_eq!(key.verify_internal(&other), Err(TokenError::BadSignature));
        assert_eq!(key.verify_internal(""), Err(TokenError::Malformed));
    }

    #[test]
    fn statuses() {
        assert_eq!(TokenError::Missing.status(), 401);
        assert_eq!(TokenError::Expired { expired_at: 0 }.status(), 401);
        assert_eq!(TokenError::BadSignature.status(), 401);
        let wrong = TokenError::WrongApp {
            token_app: "a".into(),
            wanted: "b".into(),
        };
        assert_eq!(wrong.status(), 403);
    }

    #[test]
    fn altering_any_field_breaks_the_signature() {
        let key = TokenKey::generate();
        let token = key.issue_at("orders", Scope::Read, 1_000, 2_000);
        let forged = [
            token.replace(&B64URL.encode("orders"), &B64URL.encode("billing")),
            token.replace(".2000.", ".9999."),
            token.replace(".read.", ".worker."),
        ];
        for f in forged {
            assert_ne!(f, token);
            assert_eq!(key.verify_at(&f, 1_500), Err(TokenError::BadSignature));
        }
    }

    #[test]
    fn secret_is_generated_privately_and_reloaded() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fabric.secret");
        let a = TokenKey::load_or_generate(&path).unwrap();
        let b = TokenKey::load_or_generate(&path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let token = a.issue("orders", Scope::Worker, HOUR);
        assert!(b.verify(&token).is_ok());
        assert!(TokenKey::parse("c2hvcnQ=", "FABRIC_SECRET").is_err());
        assert_eq!(format!("{a:?}"), "TokenKey(<redacted>)");
    }
}
