//! Deleted apps: their ids are refused at once, and their requests drained before their data is purged.
//!
//! A service keeps its tombstones durably in its own backend and mirrors them
//! here, in memory, where every request is checked. A request admitted for an
//! app holds an [`Admitted`] until it ends, so that deleting the app can wait
//! for what was already let in before purging: nothing of the app's is written
//! after the purge by this replica. Other replicas learn of a deletion when
//! they next read the backend's tombstones ([`REFRESH_INTERVAL`]).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use tokio::sync::Notify;

use crate::http::ApiError;
use crate::shutdown::Shutdown;

/// How often a service re-reads its tombstones from its backend, so that an
/// app deleted through another replica is refused here too, within this long.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(30);

/// How long deleting an app waits for the app's requests already admitted
/// (a queue's long poll, at most 20 s, ends as soon as its app is deleted).
pub const DRAIN_LIMIT: Duration = Duration::from_secs(25);

/// A request for an app that was deleted: 403 `FORBIDDEN`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("app {0:?} was deleted; its tokens are no longer accepted")]
pub struct AppDeleted(pub String);

impl From<AppDeleted> for ApiError {
    fn from(e: AppDeleted) -> Self {
        ApiError::new(StatusCode::FORBIDDEN, "FORBIDDEN", e.to_string())
    }
}

/// The deleted apps a service knows of, and the requests in flight per app.
/// Cheap to clone; every clone shares the same set.
#[derive(Clone, Debug, Default)]
pub struct Tombstones(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    state: Mutex<State>,
    /// Woken when an app is deleted and when an app's last request ends.
    changed: Notify,
}

#[derive(Debug, Default)]
struct State {
    deleted: HashSet<String>,
    in_flight: HashMap<String, usize>,
}

impl Tombstones {
    /// The set loaded from a backend at start.
    pub fn new(deleted: impl IntoIterator<Item = String>) -> Self {
        let this = Tombstones::default();
        this.state().deleted.extend(deleted);
        this
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The one check of every request for an app at a service: its token
    /// opens `app` with `scope` under `key` (else 401 or 403), and the app
    /// was not deleted (else 403). The request counts as in flight for the
    /// app while the admission is held, so that deleting the app waits for it.
    pub fn authorize(
        &self,
        key: &crate::token::TokenKey,
        headers: &axum::http::HeaderMap,
        app: &str,
        scope: crate::token::Scope,
    ) -> Result<Admitted, ApiError> {
        crate::http::authorize(key, headers, app, scope)?;
        Ok(self.admit(app)?)
    }

    /// Lets a request for `app` in, unless the app was deleted. The request
    /// counts as in flight until the returned guard is dropped.
    pub fn admit(&self, app: &str) -> Result<Admitted, AppDeleted> {
        let mut state = self.state();
        if state.deleted.contains(app) {
            return Err(AppDeleted(app.to_string()));
        }
        *state.in_flight.entry(app.to_string()).or_default() += 1;
        Ok(Admitted {
            tombstones: self.clone(),
            app: app.to_string(),
        })
    }

    /// Refuses `app` from now on (its tombstone is already durable).
    pub fn bury(&self, app: &str) {
        let added = self.state().deleted.insert(app.to_string());
        if added {
            self.0.changed.notify_waiters();
        }
    }

    /// Whether `app` was deleted.
    pub fn contains(&self, app: &str) -> bool {
        self.state().deleted.contains(app)
    }

    /// Waits until no request admitted for `app` is in flight; false when
    /// some still are after `limit`.
    pub async fn drained(&self, app: &str, limit: Duration) -> bool {
        tokio::time::timeout(limit, async {
            loop {
                // Registered before looking, so a request ending in between is not missed.
                let changed = self.0.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if !self.state().in_flight.contains_key(app) {
                    return;
                }
                changed.await;
            }
        })
        .await
        .is_ok()
    }

    /// Re-reads the tombstones with `load` every `every` until `shutdown`,
    /// adding the apps deleted through other replicas. A failed read is
    /// logged and tried again at the next turn; tombstones are never removed.
    pub fn spawn_refresh<F, Fut, E>(&self, shutdown: &Shutdown, every: Duration, load: F)
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Vec<String>, E>> + Send,
        E: std::fmt::Display + Send + 'static,
    {
        let this = self.clone();
        let stop = shutdown.clone();
        shutdown.spawn("tombstone-refresh", async move {
            loop {
                tokio::select! {
                    () = stop.triggered() => return Ok::<_, E>(()),
                    () = tokio::time::sleep(every) => {}
                }
                match load().await {
                    Ok(apps) => {
                        for app in apps {
                            this.bury(&app);
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "could not refresh the deleted apps"),
                }
            }
        });
    }
}

/// A request admitted for an app: in flight until dropped.
#[derive(Debug)]
#[must_use = "the request counts as in flight only while this is held"]
pub struct Admitted {
    tombstones: Tombstones,
    app: String,
}

impl Admitted {
    /// Completes when the request's app is deleted: a long wait (a long
    /// poll) selects on it to end at once rather than hold up the purge.
    pub async fn deleted(&self) {
        loop {
            let changed = self.tombstones.0.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.tombstones.contains(&self.app) {
                return;
            }
            changed.await;
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut state = self.tombstones.state();
        let last = match state.in_flight.get_mut(&self.app) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            _ => true,
        };
        if last {
            state.in_flight.remove(&self.app);
            drop(state);
            self.tombstones.0.changed.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buried_app_is_refused_and_no_other_is() {
        let t = Tombstones::new(["shop--a1".to_string()]);
        assert_eq!(
            t.admit("shop--a1").unwrap_err(),
            AppDeleted("shop--a1".into())
        );
        for other in ["shop", "shop--a", "shop--a12", "shop-1"] {
            assert!(t.admit(other).is_ok(), "{other}");
        }
        t.bury("shop");
        assert!(t.admit("shop").is_err());
        assert!(t.admit("shop-1").is_ok());
        let e = ApiError::from(AppDeleted("shop".into()));
        assert_eq!((e.status, e.kind), (StatusCode::FORBIDDEN, "FORBIDDEN"));
        assert!(e.message.contains("deleted"), "{}", e.message);
    }

    #[tokio::test]
    async fn draining_waits_for_the_apps_requests_only() {
        let t = Tombstones::default();
        let ours = t.admit("shop").unwrap();
        let theirs = t.admit("billing").unwrap();
        t.bury("shop");
        assert!(!t.drained("shop", Duration::from_millis(20)).await);
        let waiting = {
            let t = t.clone();
            tokio::spawn(async move { t.drained("shop", Duration::from_secs(10)).await })
        };
        // The long wait of an admitted request ends once its app is buried.
        tokio::time::timeout(Duration::from_secs(10), ours.deleted())
            .await
            .expect("deleted() completes for a buried app");
        drop(ours);
        assert!(
            waiting.await.unwrap(),
            "drained once the last request ended"
        );
        assert!(t.drained("shop", Duration::ZERO).await);
        drop(theirs);
    }

    #[tokio::test]
    async fn refresh_adds_apps_deleted_elsewhere() {
        let t = Tombstones::default();
        let sd = Shutdown::new(Duration::from_secs(5));
        t.spawn_refresh(&sd, Duration::from_millis(10), || async {
            Ok::<_, std::io::Error>(vec!["gone".to_string()])
        });
        let admitted = t.admit("gone").unwrap();
        tokio::time::timeout(Duration::from_secs(10), admitted.deleted())
            .await
            .expect("the refresh buries the app");
        assert!(t.admit("gone").is_err());
        drop(admitted);
        assert!(sd.drain().await);
    }
}
