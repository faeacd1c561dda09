//! Who is signed in to the console: sessions held in memory, named by a
//! random cookie, each with the API key it signed in with (never written
//! anywhere), its tenant, its CSRF token and a one-shot message for the
//! next page.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use axum::http::header::{COOKIE, SET_COOKIE};
use base64::Engine as _;

/// The session cookie's name.
pub const COOKIE_NAME: &str = "fabric_console";
/// The cookie that carries the sign-in form's CSRF token before a session exists.
pub const SIGN_IN_COOKIE: &str = "fabric_console_sign_in";

/// How long sessions last.
#[derive(Debug, Clone, Copy)]
pub struct Lifetimes {
    /// From sign-in, whatever happens.
    pub absolute: Duration,
    /// Since the last page a session asked for.
    pub idle: Duration,
}

impl Default for Lifetimes {
    fn default() -> Self {
        Lifetimes {
            absolute: Duration::from_secs(8 * 3600),
            idle: Duration::from_secs(3600),
        }
    }
}

/// The most sessions held at once; a sign-in beyond it ends the oldest.
pub const MAX_SESSIONS: usize = 10_000;
/// The most sessions one tenant holds at once; its sign-in beyond it ends
/// its own least recently used one (never another tenant's).
pub const MAX_SESSIONS_PER_TENANT: usize = 50;
/// The longest one-shot message kept, in characters.
pub const MAX_FLASH: usize = 300;

/// A message shown once, on the next page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flash {
    /// Something was done.
    Done(String),
    /// Something was refused, and why.
    Refused(String),
}

/// A signed-in person, as a handler sees them.
#[derive(Clone)]
pub struct Session {
    /// The session's id (the cookie's value).
    pub id: String,
    /// The API key every call is made with: revoking it ends the session.
    pub key: String,
    /// The key's tenant.
    pub tenant: String,
    /// What every state-changing form must send back.
    pub csrf: String,
    created: Instant,
    seen: Instant,
    flash: Option<Flash>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("tenant", &self.tenant)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// Whether the session is the admin's.
    pub fn admin(&self) -> bool {
        self.tenant == crate::api::ADMIN
    }
}

/// The sessions of one console.
pub struct Sessions {
    all: Mutex<HashMap<String, Session>>,
    lifetimes: Lifetimes,
}

/// 256 random bits, base64url.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the system's random source");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Whether `a` and `b` are equal, in time that does not depend on where they differ.
pub fn same(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq as _;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// The value of cookie `name` in `headers`.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A `Set-Cookie` value: `HttpOnly`, `SameSite=Strict`, scoped to the
/// console, `Secure` when `secure`; `max_age` 0 removes it.
pub fn set_cookie(
    name: &str,
    value: &str,
    max_age: Duration,
    secure: bool,
) -> (axum::http::HeaderName, String) {
    (
        SET_COOKIE,
        format!(
            "{name}={value}; Path=/console; Max-Age={}; HttpOnly; SameSite=Strict{}",
            max_age.as_secs(),
            if secure { "; Secure" } else { "" }
        ),
    )
}

impl Sessions {
    /// No sessions yet.
    pub fn new(lifetimes: Lifetimes) -> Self {
        Sessions {
            all: Mutex::default(),
            lifetimes,
        }
    }

    /// How long a session lasts at most.
    pub fn lifetimes(&self) -> Lifetimes {
        self.lifetimes
    }

    fn live(&self, s: &Session, now: Instant) -> bool {
        now.duration_since(s.created) < self.lifetimes.absolute
            && now.duration_since(s.seen) < self.lifetimes.idle
    }

    /// A new session for `key` of `tenant`.
    pub fn start(&self, key: String, tenant: String) -> Session {
        let now = Instant::now();
        let session = Session {
            id: random_token(),
            key,
            tenant,
            csrf: random_token(),
            created: now,
            seen: now,
            flash: None,
        };
        let mut all = self.all.lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|_, s| self.live(s, now));
        let own = all.values().filter(|s| s.tenant == session.tenant).count();
        if own >= MAX_SESSIONS_PER_TENANT
            && let Some(oldest) = all
                .values()
                .filter(|s| s.tenant == session.tenant)
                .min_by_key(|s| s.seen)
                .map(|s| s.id.clone())
        {
            all.remove(&oldest);
        }
        if all.len() >= MAX_SESSIONS
            && let Some(oldest) = all.values().min_by_key(|s| s.seen).map(|s| s.id.clone())
        {
            all.remove(&oldest);
        }
        all.insert(session.id.clone(), session.clone());
        session
    }

    /// The live session the request's cookie names, marked as seen, with
    /// its one-shot message taken out of it.
    pub fn find(&self, headers: &HeaderMap) -> Option<(Session, Option<Flash>)> {
        let id = cookie(headers, COOKIE_NAME)?;
        let now = Instant::now();
        let mut all = self.all.lock().unwrap_or_else(|p| p.into_inner());
        let live = all.get(id).is_some_and(|s| self.live(s, now));
        if !live {
            all.remove(id);
            return None;
        }
        let s = all.get_mut(id)?;
        s.seen = now;
        let flash = s.flash.take();
        Some((s.clone(), flash))
    }

    /// Whether session `id` is still live, marking it seen: a page left
    /// open, its live updates flowing, keeps its session from going idle.
    pub fn touch(&self, id: &str) -> bool {
        let now = Instant::now();
        let mut all = self.all.lock().unwrap_or_else(|p| p.into_inner());
        match all.get_mut(id) {
            Some(s) if self.live(s, now) => {
                s.seen = now;
                true
            }
            _ => {
                all.remove(id);
                false
            }
        }
    }

    /// Leaves `flash` for session `id`'s next page, cut to [`MAX_FLASH`]
    /// characters (it may quote what a form sent).
    pub fn flash(&self, id: &str, flash: Flash) {
        let cut = |m: String| match m.char_indices().nth(MAX_FLASH) {
            Some((at, _)) => format!("{}…", &m[..at]),
            None => m,
        };
        let flash = match flash {
            Flash::Done(m) => Flash::Done(cut(m)),
            Flash::Refused(m) => Flash::Refused(cut(m)),
        };
        if let Some(s) = self
            .all
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(id)
        {
            s.flash = Some(flash);
        }
    }

    /// Ends session `id`.
    pub fn end(&self, id: &str) {
        self.all
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }
}
