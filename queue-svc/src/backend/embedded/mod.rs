//! The embedded backend: queues in one redb file, crash-safe through redb's durable commits.
//!
//! Tables (every key starts with the part's key, `app/queue` or `app/queue/dlq`):
//! - `queues`: `app/queue` -> the queue's settings (JSON);
//! - `messages`: (part, id) -> the message's metadata (JSON); ids are UUIDv7,
//!   so the first entry of a part is its oldest message;
//! - `bodies`: (part, id) -> the stored body;
//! - `schedule`: (part, visible at ms, id) -> (): what becomes visible when;
//! - `tombstones`: app id -> when it was deleted (ms).
//!
//! An app's rows are exactly those whose part key starts with `{app}/`: app
//! ids hold no `/`, so no other app's keys share that prefix (`shop/` is not
//! a prefix of `shop--x/` nor of `shop-1/`). Purging an app deletes them by
//! that prefix, [`PURGE_PAGE`] rows a transaction.
//!
//! Writes are group-committed (`common::group_commit`): concurrent publishes,
//! leases and acks share one transaction and one fsync, each acknowledged
//! only after its commit.
//!
//! A lease rewrites the message's schedule entry to the end of its lock and
//! gives it a fresh random token; the handle is `id:token`, so a lease whose
//! message was delivered again can no longer ack it.
//!
//! One file per job: [`queues`] (declaring, listing, counting), [`leases`]
//! (publish, lease with long poll, ack, rollback, extend), [`dead_letters`]
//! (dead-lettering and redrive), [`purge`] (emptying a queue, forgetting an
//! app), [`retention`] (the sweeper of expired messages).

mod dead_letters;
mod leases;
mod purge;
mod queues;
mod retention;
#[cfg(test)]
mod tests;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::group_commit::{CommitError, GroupCommit, Outcome};
use redb::{Database, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::{
    BackendError, BoxFut, Counts, Part, QueueBackend, QueueConfig, QueueId, Received, Stored,
};

const QUEUES: TableDefinition<&str, &str> = TableDefinition::new("queues");
const MESSAGES: TableDefinition<(&str, u128), &str> = TableDefinition::new("messages");
const BODIES: TableDefinition<(&str, u128), &[u8]> = TableDefinition::new("bodies");
const SCHEDULE: TableDefinition<(&str, u64, u128), ()> = TableDefinition::new("schedule");
const TOMBSTONES: TableDefinition<&str, u64> = TableDefinition::new("tombstones");

/// Rows an app purge deletes per transaction, so that the writes sharing
/// the writer's transactions never wait behind a whole app.
const PURGE_PAGE: usize = 1000;

const NAME: &str = "embedded";

fn err(e: impl std::fmt::Display) -> BackendError {
    BackendError::store(NAME, e)
}

/// A message's metadata.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Meta {
    enqueued_ms: u64,
    visible_ms: u64,
    deliveries: u32,
    token: u64,
    sealed: bool,
    last_error: Option<String>,
}

fn part_key(q: &QueueId, part: Part) -> String {
    match part {
        Part::Main => format!("{}/{}", q.app, q.queue),
        Part::Dead => format!("{}/{}/dlq", q.app, q.queue),
    }
}

/// The embedded backend.
pub(crate) struct Embedded {
    db: Arc<Database>,
    writer: GroupCommit,
    retention: Duration,
    /// Woken on every publish, rollback and redrive, for long polls.
    wake: Arc<Notify>,
}

impl Embedded {
    /// Opens (or creates) the store at `path`.
    pub(crate) fn open(path: &Path, retention: Duration) -> Result<Self, BackendError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| err(format!("{}: {e}", dir.display())))?;
        }
        let db = Database::create(path).map_err(|e| err(format!("{}: {e}", path.display())))?;
        let txn = db.begin_write().map_err(err)?;
        txn.open_table(MESSAGES).map_err(err)?;
        txn.open_table(BODIES).map_err(err)?;
        txn.open_table(QUEUES).map_err(err)?;
        txn.open_table(SCHEDULE).map_err(err)?;
        txn.open_table(TOMBSTONES).map_err(err)?;
        txn.commit().map_err(err)?;
        let db = Arc::new(db);
        let writer = GroupCommit::start(db.clone(), "queue-writer").map_err(err)?;
        Ok(Embedded {
            db,
            writer,
            retention,
            wake: Arc::new(Notify::new()),
        })
    }

    /// Runs `f` in the writer's next transaction, shared with the writes
    /// waiting beside it (one fsync for all); answers once it committed. An
    /// error that is the caller's (a lost lease) must be returned before `f`
    /// changes anything: it does not stop the batch. A store error may come
    /// part-way, so it rolls the batch back.
    async fn write<T, F>(&self, f: F) -> Result<T, BackendError>
    where
        T: Send + 'static,
        F: FnOnce(&WriteTransaction) -> Result<T, BackendError> + Send + 'static,
    {
        self.writer
            .write(move |txn| match f(txn) {
                Ok(value) => Outcome::Done(value),
                Err(e @ BackendError::Store { .. }) => Outcome::Failed(e),
                Err(e) => Outcome::Refused(e),
            })
            .await
            .map_err(|e| match e {
                CommitError::Write(e) => e,
                CommitError::NotCommitted(why) => err(why),
            })
    }
}

fn read_meta(
    messages: &impl ReadableTable<(&'static str, u128), &'static str>,
    pk: &str,
    id: u128,
) -> Result<Option<Meta>, BackendError> {
    match messages.get((pk, id)).map_err(err)? {
        Some(v) => Ok(Some(serde_json::from_str(v.value()).map_err(err)?)),
        None => Ok(None),
    }
}

fn write_meta(
    messages: &mut redb::Table<(&'static str, u128), &'static str>,
    pk: &str,
    id: u128,
    meta: &Meta,
) -> Result<(), BackendError> {
    let text = serde_json::to_string(meta).map_err(err)?;
    messages.insert((pk, id), text.as_str()).map_err(err)?;
    Ok(())
}

fn ids_of(txn: &WriteTransaction, pk: &str) -> Result<Vec<u128>, BackendError> {
    let messages = txn.open_table(MESSAGES).map_err(err)?;
    let ids = messages
        .range((pk, 0)..=(pk, u128::MAX))
        .map_err(err)?
        .map(|e| e.map(|(k, _)| k.value().1))
        .collect::<Result<Vec<_>, _>>()
        .map_err(err)?;
    Ok(ids)
}

impl QueueBackend for Embedded {
    fn declare<'a>(&'a self, q: &'a QueueId, config: QueueConfig) -> BoxFut<'a, ()> {
        Box::pin(self.declare_queue(q, config))
    }

    fn config<'a>(&'a self, q: &'a QueueId) -> BoxFut<'a, Option<QueueConfig>> {
        Box::pin(self.queue_config(q))
    }

    fn list<'a>(&'a self, app: &'a str) -> BoxFut<'a, Vec<(String, QueueConfig)>> {
        Box::pin(self.list_queues(app))
    }

    fn publish<'a>(&'a self, q: &'a QueueId, batch: Vec<Stored>) -> BoxFut<'a, ()> {
        Box::pin(self.publish_batch(q, batch))
    }

    fn receive<'a>(
        &'a self,
        q: &'a QueueId,
        part: Part,
        max: usize,
        wait: Duration,
        lock: Duration,
    ) -> BoxFut<'a, Vec<Received>> {
        Box::pin(self.lease(q, part, max, wait, lock))
    }

    fn ack<'a>(
        &'a self,
        q: &'a QueueId,
        part: Part,
        handles: Vec<String>,
    ) -> BoxFut<'a, Vec<Result<(), BackendError>>> {
        Box::pin(self.ack_leases(q, part, handles))
    }

    fn release<'a>(
        &'a self,
        q: &'a QueueId,
        part: Part,
        handle: &'a str,
        _id: &'a str,
        delay: Duration,
        error: Option<String>,
    ) -> BoxFut<'a, ()> {
        Box::pin(self.rollback(q, part, handle, delay, error))
    }

    fn extend<'a>(
        &'a self,
        q: &'a QueueId,
        part: Part,
        handle: &'a str,
        lock: Duration,
    ) -> BoxFut<'a, ()> {
        Box::pin(self.reschedule(q, part, handle, lock, |_| {}))
    }

    fn dead_letter<'a>(&'a self, q: &'a QueueId, msg: Received, reason: String) -> BoxFut<'a, ()> {
        Box::pin(self.move_to_dlq(q, msg, reason))
    }

    fn redrive<'a>(&'a self, q: &'a QueueId) -> BoxFut<'a, u64> {
        Box::pin(self.redrive_dlq(q))
    }

    fn purge<'a>(&'a self, q: &'a QueueId) -> BoxFut<'a, ()> {
        Box::pin(self.purge_queue(q))
    }

    fn counts<'a>(&'a self, q: &'a QueueId) -> BoxFut<'a, Counts> {
        Box::pin(self.queue_counts(q))
    }

    fn bury<'a>(&'a self, app: &'a str) -> BoxFut<'a, ()> {
        Box::pin(self.bury_app(app))
    }

    fn tombstones(&self) -> BoxFut<'_, Vec<String>> {
        Box::pin(self.buried_apps())
    }

    fn purge_app<'a>(&'a self, app: &'a str) -> BoxFut<'a, ()> {
        Box::pin(self.forget_app(app))
    }
}

/// Opens the embedded backend and starts its retention sweeper.
pub(crate) fn open_with_sweeper(
    path: &Path,
    retention: Duration,
    shutdown: common::shutdown::Shutdown,
) -> Result<Arc<Embedded>, BackendError> {
    let backend = Arc::new(Embedded::open(path, retention)?);
    backend.spawn_sweeper(shutdown);
    Ok(backend)
}
