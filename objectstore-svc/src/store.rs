//! The object store's rules over a backend: validation, sealing, ETags, TTLs and leases.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::app::{validate_app_id, validate_resource_name};
use common::envelope::{Aad, Keyring, OpenError, ResourceKind};
use common::tombstone::{DRAIN_LIMIT, Tombstones};

use crate::api::{KeyPage, Lease, MAX_KEY_BYTES, MAX_PAGE, MAX_TTL, MAX_VALUE_BYTES, ObjectInfo};
use crate::api::{PutResult, StoreStats};
use crate::backend::{
    Backend, BackendError, Condition, LeaseId, LeaseOutcome, LeaseState, Millis, ObjectId, Record,
    Removed, Written,
};

/// The longest lease holder name.
const MAX_HOLDER: usize = 256;

/// Why an operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Bad input; nothing was changed.
    #[error("{0}")]
    Invalid(String),
    /// The value is larger than [`MAX_VALUE_BYTES`].
    #[error("value of {size} bytes is over the limit of {MAX_VALUE_BYTES}")]
    TooLarge {
        /// The value's size.
        size: usize,
    },
    /// No live value under the key.
    #[error("no key {key:?} in store {store:?}")]
    NotFound {
        /// The store.
        store: String,
        /// The key.
        key: String,
    },
    /// An `If-Match` or `If-None-Match` condition did not hold.
    #[error("precondition failed for key {key:?}: {reason}")]
    PreconditionFailed {
        /// The key.
        key: String,
        /// Which condition.
        reason: &'static str,
    },
    /// Another holder has the lease.
    #[error("lease {:?} is held by {:?} until {}", .0.name, .0.holder, .0.expires_at)]
    LeaseHeld(Lease),
    /// The caller's acquisition is no longer the current one.
    #[error("lease {name:?} is not held by {holder:?} with token {token} (lapsed or taken over)")]
    LeaseLost {
        /// The lease.
        name: String,
        /// The caller.
        holder: String,
        /// The caller's token.
        token: u64,
    },
    /// The stored value does not open: tampered, or sealed under a key this node lacks.
    #[error("value of key {key:?} cannot be opened: {source}")]
    Unreadable {
        /// The key.
        key: String,
        /// Why.
        source: OpenError,
    },
    /// Requests of an app being forgotten, admitted before its tombstone,
    /// did not end in time; forgetting it again will wait for them again.
    #[error("requests of app {0:?} admitted before its deletion are still running; retry")]
    StillRunning(String),
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

type Result<T> = std::result::Result<T, StoreError>;

/// A value as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    /// The plaintext.
    pub value: Vec<u8>,
    /// Its ETag.
    pub etag: String,
    /// When it expires (Unix ms), if it does.
    pub expires_at: Option<u64>,
}

/// What a write or delete requires of the current value.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Precondition {
    /// Nothing.
    #[default]
    None,
    /// `If-None-Match: *`: no live value.
    IfAbsent,
    /// `If-Match: "etag"`: the live value has this ETag.
    IfMatch(String),
}

/// Per-app stores over one backend, sealing every value with the keyring.
#[derive(Clone, Debug)]
pub struct ObjectStore {
    backend: Backend,
    keyring: Keyring,
}

fn now_ms() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn invalid(e: impl ToString) -> StoreError {
    StoreError::Invalid(e.to_string())
}

fn check_store(app: &str, store: &str) -> Result<()> {
    validate_app_id(app).map_err(invalid)?;
    validate_resource_name("store name", store).map_err(invalid)
}

fn check_key(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(invalid("key is empty"));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(invalid(format!(
            "key of {} bytes is over the limit of {MAX_KEY_BYTES}",
            key.len()
        )));
    }
    Ok(())
}

/// Checks a TTL and turns it into milliseconds.
pub fn check_ttl(ttl: Duration) -> Result<u64> {
    if ttl.is_zero() || ttl > MAX_TTL {
        return Err(invalid(format!(
            "ttl {} is out of range: more than 0 and at most 30 days",
            humantime_serde::re::humantime::format_duration(ttl)
        )));
    }
    Ok(ttl.as_millis().max(1) as u64)
}

fn check_lease(app: &str, name: &str, holder: &str) -> Result<LeaseId> {
    validate_app_id(app).map_err(invalid)?;
    validate_resource_name("lease name", name).map_err(invalid)?;
    if holder.is_empty() || holder.len() > MAX_HOLDER {
        return Err(invalid(format!(
            "lease holder must be 1 to {MAX_HOLDER} bytes"
        )));
    }
    Ok(LeaseId {
        app: app.to_string(),
        name: name.to_string(),
    })
}

fn lease(name: &str, s: LeaseState) -> Lease {
    Lease {
        name: name.to_string(),
        holder: s.holder,
        token: s.token,
        expires_at: s.expires_at,
    }
}

impl ObjectStore {
    /// Stores over `backend`, sealing with `keyring`.
    pub fn new(backend: Backend, keyring: Keyring) -> Self {
        ObjectStore { backend, keyring }
    }

    /// The backend underneath.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    fn id(app: &str, store: &str, key: &str) -> Result<ObjectId> {
        check_store(app, store)?;
        check_key(key)?;
        Ok(ObjectId {
            app: app.to_string(),
            store: store.to_string(),
            key: key.to_string(),
        })
    }

    fn aad<'a>(id: &'a ObjectId) -> Aad<'a> {
        Aad {
            app: &id.app,
            kind: ResourceKind::Store,
            resource: &id.store,
            key: &id.key,
        }
    }

    /// The live value under `key`.
    pub async fn get(&self, app: &str, store: &str, key: &str) -> Result<Object> {
        let id = Self::id(app, store, key)?;
        let Some(record) = self.backend.get().get(id.clone(), now_ms()).await? else {
            return Err(StoreError::NotFound {
                store: id.store,
                key: id.key,
            });
        };
        let value = self
            .keyring
            .open(&Self::aad(&id), &record.sealed)
            .map_err(|source| StoreError::Unreadable {
                key: id.key.clone(),
                source,
            })?;
        Ok(Object {
            value,
            etag: record.etag,
            expires_at: record.expires_at,
        })
    }

    /// Writes `value` under `key` if `pre` holds, expiring after `ttl` if given.
    pub async fn put(
        &self,
        app: &str,
        store: &str,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
        pre: Precondition,
    ) -> Result<PutResult> {
        let id = Self::id(app, store, key)?;
        if value.len() > MAX_VALUE_BYTES {
            return Err(StoreError::TooLarge { size: value.len() });
        }
        let ttl_ms = ttl.map(check_ttl).transpose()?;
        let now = now_ms();
        let expires_at = ttl_ms.map(|t| now + t);
        let etag = uuid::Uuid::new_v4().simple().to_string();
        let record = Record {
            sealed: self.keyring.seal(&Self::aad(&id), value),
            etag: etag.clone(),
            size: value.len() as u64,
            expires_at,
        };
        let (cond, reason) = match pre {
            Precondition::None => (Condition::Always, ""),
            Precondition::IfAbsent => (Condition::IfAbsent, "the key already has a value"),
            Precondition::IfMatch(e) => (Condition::IfMatch(e), "the value's ETag differs"),
        };
        match self.backend.get().put(id, record, cond, now).await? {
            Written::ConditionFailed => Err(StoreError::PreconditionFailed {
                key: key.to_string(),
                reason,
            }),
            w => Ok(PutResult {
                etag,
                created: w == Written::Created,
                expires_at,
            }),
        }
    }

    /// Deletes the value under `key` if `pre` holds.
    pub async fn delete(&self, app: &str, store: &str, key: &str, pre: Precondition) -> Result<()> {
        let id = Self::id(app, store, key)?;
        let cond = match pre {
            Precondition::None => Condition::Always,
            Precondition::IfAbsent => {
                return Err(invalid("If-None-Match does not apply to a delete"));
            }
            Precondition::IfMatch(e) => Condition::IfMatch(e),
        };
        match self
            .backend
            .get()
            .delete(id.clone(), cond, now_ms())
            .await?
        {
            Removed::Deleted => Ok(()),
            Removed::Absent => Err(StoreError::NotFound {
                store: id.store,
                key: id.key,
            }),
            Removed::ConditionFailed => Err(StoreError::PreconditionFailed {
                key: id.key,
                reason: "the value's ETag differs or the key has no value",
            }),
        }
    }

    /// One page of the live keys starting with `prefix`, after `cursor`.
    pub async fn list(
        &self,
        app: &str,
        store: &str,
        prefix: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<KeyPage> {
        check_store(app, store)?;
        if prefix.len() > MAX_KEY_BYTES {
            return Err(invalid("prefix is longer than a key can be"));
        }
        if limit == 0 || limit > MAX_PAGE {
            return Err(invalid(format!("limit must be 1 to {MAX_PAGE}")));
        }
        let page = self
            .backend
            .get()
            .list(
                app.to_string(),
                store.to_string(),
                prefix.to_string(),
                cursor.map(str::to_string),
                limit,
                now_ms(),
            )
            .await?;
        Ok(KeyPage {
            keys: page
                .entries
                .into_iter()
                .map(|e| ObjectInfo {
                    key: e.key,
                    etag: e.etag,
                    size: e.size,
                    expires_at: e.expires_at,
                })
                .collect(),
            cursor: page.next,
        })
    }

    /// How many live keys a store holds, and their bytes.
    pub async fn stats(&self, app: &str, store: &str) -> Result<StoreStats> {
        check_store(app, store)?;
        let (keys, bytes) = self
            .backend
            .get()
            .stats(app.to_string(), store.to_string(), now_ms())
            .await?;
        Ok(StoreStats { keys, bytes })
    }

    /// Acquires `name` for `holder` for `ttl`, or says who holds it.
    pub async fn acquire(
        &self,
        app: &str,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Lease> {
        let id = check_lease(app, name, holder)?;
        let ttl = check_ttl(ttl)?;
        match self
            .backend
            .get()
            .acquire(id, holder.to_string(), ttl, now_ms())
            .await?
        {
            LeaseOutcome::Granted(s) => Ok(lease(name, s)),
            LeaseOutcome::Held(s) => Err(StoreError::LeaseHeld(lease(name, s))),
            LeaseOutcome::Released | LeaseOutcome::Lost => Err(invalid("unexpected lease outcome")),
        }
    }

    /// Extends the acquisition `token` of `holder` by `ttl` from now.
    pub async fn renew(
        &self,
        app: &str,
        name: &str,
        holder: &str,
        token: u64,
        ttl: Duration,
    ) -> Result<Lease> {
        let id = check_lease(app, name, holder)?;
        let ttl = check_ttl(ttl)?;
        match self
            .backend
            .get()
            .renew(id, holder.to_string(), token, ttl, now_ms())
            .await?
        {
            LeaseOutcome::Granted(s) => Ok(lease(name, s)),
            _ => Err(StoreError::LeaseLost {
                name: name.to_string(),
                holder: holder.to_string(),
                token,
            }),
        }
    }

    /// Frees the acquisition `token` of `holder`.
    pub async fn release(&self, app: &str, name: &str, holder: &str, token: u64) -> Result<()> {
        let id = check_lease(app, name, holder)?;
        match self
            .backend
            .get()
            .release(id, holder.to_string(), token, now_ms())
            .await?
        {
            LeaseOutcome::Released => Ok(()),
            _ => Err(StoreError::LeaseLost {
                name: name.to_string(),
                holder: holder.to_string(),
                token,
            }),
        }
    }

    /// Forgets an app: records its tombstone (durably, then in
    /// `tombstones`, so its tokens are refused from now on), waits for its
    /// requests already admitted, then deletes every value of every store
    /// it had, and its leases. Idempotent: a call that failed part-way is
    /// finished by the next.
    pub async fn forget(&self, app: &str, tombstones: &Tombstones) -> Result<()> {
        validate_app_id(app).map_err(invalid)?;
        self.backend.get().bury(app.to_string()).await?;
        tombstones.bury(app);
        if !tombstones.drained(app, DRAIN_LIMIT).await {
            return Err(StoreError::StillRunning(app.to_string()));
        }
        self.backend.get().purge_app(app.to_string()).await?;
        tracing::info!(
            app,
            "app forgotten: tombstone recorded, every store and lease deleted"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::envelope::MasterKey;

    #[tokio::test]
    async fn a_value_that_does_not_open_is_an_error_for_that_key_only() {
        let dir = tempfile::tempdir().unwrap();
        let backend = Backend::embedded(&dir.path().join("o.redb")).unwrap();
        let ours = ObjectStore::new(backend.clone(), Keyring::single(MasterKey::generate()));
        let other = ObjectStore::new(backend, Keyring::single(MasterKey::generate()));
        ours.put("orders", "s", "k", b"v", None, Precondition::None)
            .await
            .unwrap();
        let err = other.get("orders", "s", "k").await.unwrap_err();
        assert!(
            matches!(err, StoreError::Unreadable { ref key, source: OpenError::Rejected } if key == "k"),
            "{err:?}"
        );
        other
            .put("orders", "s", "k2", b"w", None, Precondition::None)
            .await
            .unwrap();
        assert_eq!(other.get("orders", "s", "k2").await.unwrap().value, b"w");
        assert_eq!(ours.get("orders", "s", "k").await.unwrap().value, b"v");
    }

    #[tokio::test]
    async fn app_ids_are_accepted_and_kept_apart_from_the_names_they_begin_with() {
        let dir = tempfile::tempdir().unwrap();
        let backend = Backend::embedded(&dir.path().join("o.redb")).unwrap();
        let store = ObjectStore::new(backend, Keyring::single(MasterKey::generate()));
        let apps = ["shop", "shop--x1", "shop-1"];
        for app in apps {
            store
                .put(app, "s", "k", app.as_bytes(), None, Precondition::None)
                .await
                .unwrap();
        }
        for app in apps {
            assert_eq!(
                store.get(app, "s", "k").await.unwrap().value,
                app.as_bytes()
            );
            assert_eq!(store.stats(app, "s").await.unwrap().keys, 1);
        }
        for bad in ["shop--", "shop--X", "shop--a-b"] {
            let err = store.get(bad, "s", "k").await.unwrap_err();
            assert!(matches!(err, StoreError::Invalid(_)), "{bad}: {err:?}");
        }
    }

    #[test]
    fn ttls_are_bounded() {
        assert!(check_ttl(Duration::ZERO).is_err());
        assert!(check_ttl(MAX_TTL + Duration::from_millis(1)).is_err());
        assert_eq!(check_ttl(Duration::from_millis(1)).unwrap(), 1);
        assert!(check_key("").is_err());
        assert!(check_key(&"x".repeat(MAX_KEY_BYTES + 1)).is_err());
        assert!(check_key(&"é".repeat(MAX_KEY_BYTES / 2)).is_ok());
    }
}
