//! Where sealed values live: a public handle over a crate-private trait, one module per backend.
//!
//! Backends see only sealed bytes and metadata; sealing, validation and
//! ETag generation happen above them, in [`crate::store`]. Every operation
//! takes the current time so that expiry is decided the same way everywhere:
//! a record whose `expires_at` is at or before `now` does not exist.

mod dynamodb;
mod embedded;

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

/// Which backend a service uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum BackendKind {
    /// The embedded store (redb) in the data directory.
    #[default]
    #[serde(rename = "embedded")]
    Embedded,
    /// One DynamoDB table, through aws-config's default chain.
    #[serde(rename = "dynamodb")]
    DynamoDb,
}

impl FromStr for BackendKind {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "embedded" => Ok(BackendKind::Embedded),
            "dynamodb" => Ok(BackendKind::DynamoDb),
            other => Err(format!(
                "unknown backend {other:?}: expected embedded or dynamodb"
            )),
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Embedded => "embedded",
            BackendKind::DynamoDb => "dynamodb",
        })
    }
}

/// A backend failure, with the operation and the cause.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The embedded store failed.
    #[error("embedded store {op}: {message}")]
    Embedded {
        /// The operation.
        op: &'static str,
        /// The cause.
        message: String,
    },
    /// A DynamoDB call failed.
    #[error("dynamodb {op}: {message}")]
    DynamoDb {
        /// The operation.
        op: &'static str,
        /// The SDK's account of the failure.
        message: String,
    },
    /// Stored data does not have the shape this build writes.
    #[error("stored record of {what} is malformed: {reason}")]
    Malformed {
        /// Which record.
        what: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Milliseconds since the Unix epoch.
pub(crate) type Millis = u64;

/// One object's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ObjectId {
    pub app: String,
    pub store: String,
    pub key: String,
}

/// A stored value: sealed bytes and what the service needs without opening them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    pub sealed: Vec<u8>,
    pub etag: String,
    /// Plaintext length, for listings and stats.
    pub size: u64,
    pub expires_at: Option<Millis>,
}

/// Whether something expiring at `expires_at` still exists at `now`.
pub(crate) fn live(expires_at: Option<Millis>, now: Millis) -> bool {
    expires_at.is_none_or(|e| e > now)
}

/// What a write requires of the current value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Condition {
    /// Nothing.
    Always,
    /// No live value (`If-None-Match: *`).
    IfAbsent,
    /// A live value with this ETag (`If-Match`).
    IfMatch(String),
}

/// How a put ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Written {
    Created,
    Replaced,
    ConditionFailed,
}

/// How a delete ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Removed {
    Deleted,
    Absent,
    ConditionFailed,
}

/// A listed key and its metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub key: String,
    pub etag: String,
    pub size: u64,
    pub expires_at: Option<Millis>,
}

/// One page of a listing; `next` is where the next page starts after, if any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Page {
    pub entries: Vec<Entry>,
    pub next: Option<String>,
}

/// One lease's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LeaseId {
    pub app: String,
    pub name: String,
}

/// A lease as held: by whom, with which fencing token, until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LeaseState {
    pub holder: String,
    pub token: u64,
    pub expires_at: Millis,
}

impl LeaseState {
    /// Whether this is `holder`'s acquisition `token`, still live at `now`.
    pub fn held_by(&self, holder: &str, token: u64, now: Millis) -> bool {
        self.holder == holder && self.token == token && self.expires_at > now
    }
}

/// How a lease operation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LeaseOutcome {
    /// The caller holds the lease (acquired or renewed).
    Granted(LeaseState),
    /// Released.
    Released,
    /// Another holder has it, until then.
    Held(LeaseState),
    /// The caller's lease (holder and token) is no longer current.
    Lost,
}

pub(crate) type Result<T> = std::result::Result<T, BackendError>;

/// What a backend does. Object values arrive sealed.
pub(crate) trait StoreBackend: Send + Sync {
    fn get(&self, id: ObjectId, now: Millis) -> BoxFuture<'_, Result<Option<Record>>>;
    fn put(
        &self,
        id: ObjectId,
        record: Record,
        cond: Condition,
        now: Millis,
    ) -> BoxFuture<'_, Result<Written>>;
    fn delete(&self, id: ObjectId, cond: Condition, now: Millis) -> BoxFuture<'_, Result<Removed>>;
    /// Live keys of a store starting with `prefix`, in key order, after `after`.
    fn list(
        &self,
        app: String,
        store: String,
        prefix: String,
        after: Option<String>,
        limit: usize,
        now: Millis,
    ) -> BoxFuture<'_, Result<Page>>;
    /// Live keys and their plaintext bytes.
    fn stats(&self, app: String, store: String, now: Millis) -> BoxFuture<'_, Result<(u64, u64)>>;
    /// Takes a free or lapsed lease with the next fencing token; a holder
    /// acquiring what it already holds extends it and keeps its token.
    fn acquire(
        &self,
        id: LeaseId,
        holder: String,
        ttl_ms: u64,
        now: Millis,
    ) -> BoxFuture<'_, Result<LeaseOutcome>>;
    /// Extends a lease still held by `holder` with `token`.
    fn renew(
        &self,
        id: LeaseId,
        holder: String,
        token: u64,
        ttl_ms: u64,
        now: Millis,
    ) -> BoxFuture<'_, Result<LeaseOutcome>>;
    /// Frees a lease still held by `holder` with `token`; its token counter stays.
    fn release(
        &self,
        id: LeaseId,
        holder: String,
        token: u64,
        now: Millis,
    ) -> BoxFuture<'_, Result<LeaseOutcome>>;
    /// Records, durably, that `app` was deleted (idempotent).
    fn bury(&self, app: String) -> BoxFuture<'_, Result<()>>;
    /// Every app recorded as deleted.
    fn tombstones(&self) -> BoxFuture<'_, Result<Vec<String>>>;
    /// Deletes every value (and chunk) of every store of `app`, and its
    /// leases, and nothing of any other app. Idempotent: a call cut short
    /// is finished by the next.
    fn purge_app(&self, app: String) -> BoxFuture<'_, Result<()>>;
}

/// The backend a service stores into. Cheap to clone.
#[derive(Clone)]
pub struct Backend {
    inner: Arc<dyn StoreBackend>,
    kind: BackendKind,
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backend").field("kind", &self.kind).finish()
    }
}

impl Backend {
    /// Opens the embedded store in `file` (created when missing).
    pub fn embedded(file: &Path) -> std::result::Result<Self, BackendError> {
        Ok(Backend {
            inner: Arc::new(embedded::Embedded::open(file)?),
            kind: BackendKind::Embedded,
        })
    }

    /// Connects to DynamoDB through aws-config's default chain; `table` is
    /// created when it is missing and `create`, else its absence is an error.
    pub async fn dynamodb(table: &str, create: bool) -> std::result::Result<Self, BackendError> {
        let sdk = common::aws::sdk_config().await;
        Ok(Backend {
            inner: Arc::new(dynamodb::DynamoDb::open(&sdk, table, create).await?),
            kind: BackendKind::DynamoDb,
        })
    }

    /// Which backend this is.
    pub fn kind(&self) -> BackendKind {
        self.kind
    }

    pub(crate) fn get(&self) -> &dyn StoreBackend {
        &*self.inner
    }
}
