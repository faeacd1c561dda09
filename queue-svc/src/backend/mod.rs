//! Where messages are kept: a public handle over a crate-private trait, one module per backend.

mod embedded;
mod sqs;

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::settings::{BackendKind, Settings};

/// A backend's boxed future (the trait is used as `dyn`, so no `async fn`).
pub(crate) type BoxFut<'a, T> = Pin<Box<dyn Future<Output = Result<T, BackendError>> + Send + 'a>>;

/// What went wrong in a backend.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The queue has not been declared.
    #[error("queue {0} does not exist")]
    UnknownQueue(String),
    /// The lease is no longer held: acked already, or its lock expired and
    /// the message was delivered again.
    #[error("lease no longer held: {0}")]
    LeaseLost(String),
    /// The store failed; the call may be retried.
    #[error("{backend}: {message}")]
    Store {
        /// Which backend.
        backend: &'static str,
        /// What failed.
        message: String,
    },
}

impl BackendError {
    pub(crate) fn store(backend: &'static str, e: impl std::fmt::Display) -> Self {
        BackendError::Store {
            backend,
            message: e.to_string(),
        }
    }
}

/// An app's queue.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct QueueId {
    pub app: String,
    pub queue: String,
}

impl std::fmt::Display for QueueId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.app, self.queue)
    }
}

/// The queue itself, or its dead-letter queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Part {
    Main,
    Dead,
}

/// A queue's settings, kept by the backend with the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct QueueConfig {
    pub encrypted: bool,
    pub max_deliveries: u32,
}

/// A message as stored: the body is sealed when `sealed`.
#[derive(Debug, Clone)]
pub(crate) struct Stored {
    pub id: String,
    pub body: Vec<u8>,
    pub sealed: bool,
    pub enqueued_ms: u64,
}

/// A message as delivered by a backend, with the handle that names this delivery.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    pub stored: Stored,
    pub handle: String,
    pub deliveries: u32,
    pub last_error: Option<String>,
}

/// A queue's counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub visible: u64,
    pub invisible: u64,
    pub dead: u64,
    pub oldest_enqueued_ms: Option<u64>,
}

/// The operations every backend offers, with the same semantics.
pub(crate) trait QueueBackend: Send + Sync {
    /// Creates the queue and its DLQ, or updates its settings.
    fn declare<'a>(&'a self, q: &'a QueueId, config: QueueConfig) -> BoxFut<'a, ()>;
    /// The queue's settings, `None` when it was never declared.
    fn config<'a>(&'a self, q: &'a QueueId) -> BoxFut<'a, Option<QueueConfig>>;
    /// The app's queues, by name.
    fn list<'a>(&'a self, app: &'a str) -> BoxFut<'a, Vec<(String, QueueConfig)>>;
    /// Stores all of `messages` or none.
    fn publish<'a>(&'a self, q: &'a QueueId, messages: Vec<Stored>) -> BoxFut<'a, ()>;
    /// Leases up to `max` visible messages for `lock`, waiting up to `wait` for one.
    fn receive<'a>(
        &'a self,
        q: &'a QueueId,
        part: Part,
        max: usize,
        wait: Duration,
        lock: Duration,
    ) -> BoxFut<'a, Vec<Received>>;
    /// Deletes the leased messages; one result per handle.
    fn ack<'a>(
        &'a self,
        q: &'a QueueId,
        part: Part,
        handles: Vec<String>,
    ) -> BoxFut<'a, Vec<Result<(), BackendError>>>;
    /// Gives a lease up: visible again after `delay`, `error` kept as its last error.
    fn release<'a>(
        &'a self,
        q: &'a QueueId,
        part: Part,
        handle: &'a str,
        id: &'a str,
        delay: Duration,
        error: Option<String>,
    ) -> BoxFut<'a, ()>;
    /// Extends a lease's lock to `lock` from now.
    fn extend<'a>(
        &'a self,
        q: &'a QueueId,
        part: Part,
        handle: &'a str,
        lock: Duration,
    ) -> BoxFut<'a, ()>;
    /// Moves a leased message to the DLQ, with `reason` as its last error.
    fn dead_letter<'a>(&'a self, q: &'a QueueId, msg: Received, reason: String) -> BoxFut<'a, ()>;
    /// Moves every dead letter back to the queue, with a fresh delivery count.
    fn redrive<'a>(&'a self, q: &'a QueueId) -> BoxFut<'a, u64>;
    /// Deletes every message of the queue (not of its DLQ).
    fn purge<'a>(&'a self, q: &'a QueueId) -> BoxFut<'a, ()>;
    /// The queue's counts.
    fn counts<'a>(&'a self, q: &'a QueueId) -> BoxFut<'a, Counts>;
    /// Records, durably, that `app` was deleted (idempotent).
    fn bury<'a>(&'a self, app: &'a str) -> BoxFut<'a, ()>;
    /// Every app recorded as deleted.
    fn tombstones(&self) -> BoxFut<'_, Vec<String>>;
    /// Deletes every queue of `app`, with its DLQ, messages and settings,
    /// and nothing of any other app. Idempotent: a call cut short is
    /// finished by the next.
    fn purge_app<'a>(&'a self, app: &'a str) -> BoxFut<'a, ()>;
}

/// The queue store a service runs on: embedded or SQS.
#[derive(Clone)]
pub struct Backend(pub(crate) Arc<dyn QueueBackend>);

impl Backend {
    /// Opens the backend `settings` names; the embedded one in `data_dir`.
    /// The embedded backend also starts its retention sweeper, stopped by `shutdown`.
    pub async fn open(
        settings: &Settings,
        data_dir: &Path,
        shutdown: common::shutdown::Shutdown,
    ) -> Result<Self, BackendError> {
        let inner: Arc<dyn QueueBackend> = match settings.backend {
            BackendKind::Embedded => embedded::open_with_sweeper(
                &data_dir.join(EMBEDDED_FILE),
                settings.retention,
                shutdown,
            )?,
            BackendKind::Sqs => Arc::new(sqs::Sqs::new(settings).await),
        };
        Ok(Backend(inner))
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The embedded store's file name in the data directory.
pub const EMBEDDED_FILE: &str = "queues.redb";

/// How long dead letters are kept (SQS's longest retention).
pub(crate) const DEAD_RETENTION: Duration = crate::settings::MAX_RETENTION;
