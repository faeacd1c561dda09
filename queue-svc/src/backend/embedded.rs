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

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::group_commit::{CommitError, GroupCommit, Outcome};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use uuid::Uuid;

use super::{
    BackendError, BoxFut, Counts, DEAD_RETENTION, Part, QueueBackend, QueueConfig, QueueId,
    Received, Stored, now_ms,
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

fn parse_handle(handle: &str) -> Result<(u128, u64), BackendError> {
    let lost = || BackendError::LeaseLost(format!("malformed handle {handle:?}"));
    let (id, token) = handle.split_once(':').ok_or_else(lost)?;
    let id = Uuid::parse_str(id).map_err(|_| lost())?.as_u128();
    let token = token.parse().map_err(|_| lost())?;
    Ok((id, token))
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

    fn retention_of(&self, part: Part) -> u64 {
        match part {
            Part::Main => self.retention.as_millis() as u64,
            Part::Dead => DEAD_RETENTION.as_millis() as u64,
        }
    }

    /// Leases what is due now; also returns when the next message becomes visible.
    async fn take(
        &self,
        pk: String,
        part: Part,
        max: usize,
        lock: Duration,
    ) -> Result<(Vec<Received>, Option<u64>), BackendError> {
        let retention_ms = self.retention_of(part);
        self.write(move |txn| {
            let now = now_ms();
            let mut schedule = txn.open_table(SCHEDULE).map_err(err)?;
            let mut messages = txn.open_table(MESSAGES).map_err(err)?;
            let mut bodies = txn.open_table(BODIES).map_err(err)?;
            let due = schedule
                .range((pk.as_str(), 0, 0)..=(pk.as_str(), now, u128::MAX))
                .map_err(err)?
                .take(max)
                .map(|entry| entry.map(|(k, _)| (k.value().1, k.value().2)))
                .collect::<Result<Vec<_>, _>>()
                .map_err(err)?;
            let mut out = Vec::with_capacity(due.len());
            for (visible, id) in due {
                schedule.remove((pk.as_str(), visible, id)).map_err(err)?;
                let Some(mut meta) = read_meta(&messages, &pk, id)? else {
                    continue;
                };
                if meta.enqueued_ms.saturating_add(retention_ms) < now {
                    messages.remove((pk.as_str(), id)).map_err(err)?;
                    bodies.remove((pk.as_str(), id)).map_err(err)?;
                    continue;
                }
                // A dead letter's count is its history: leasing it to look does not add to it.
                if part == Part::Main {
                    meta.deliveries += 1;
                }
                meta.token = rand::random::<u64>();
                meta.visible_ms = now + lock.as_millis() as u64;
                write_meta(&mut messages, &pk, id, &meta)?;
                schedule
                    .insert((pk.as_str(), meta.visible_ms, id), ())
                    .map_err(err)?;
                let body = bodies
                    .get((pk.as_str(), id))
                    .map_err(err)?
                    .map(|b| b.value().to_vec())
                    .unwrap_or_default();
                let uuid = Uuid::from_u128(id);
                out.push(Received {
                    stored: Stored {
                        id: uuid.to_string(),
                        body,
                        sealed: meta.sealed,
                        enqueued_ms: meta.enqueued_ms,
                    },
                    handle: format!("{uuid}:{}", meta.token),
                    deliveries: meta.deliveries,
                    last_error: meta.last_error,
                });
            }
            let next = schedule
                .range((pk.as_str(), 0, 0)..=(pk.as_str(), u64::MAX, u128::MAX))
                .map_err(err)?
                .next()
                .transpose()
                .map_err(err)?
                .map(|(k, _)| k.value().1);
            Ok((out, next))
        })
        .await
    }

    /// Makes a held lease's message visible `after` from now, with `update` applied.
    async fn reschedule(
        &self,
        q: &QueueId,
        part: Part,
        handle: &str,
        after: Duration,
        update: impl FnOnce(&mut Meta) + Send + 'static,
    ) -> Result<(), BackendError> {
        let pk = part_key(q, part);
        let handle = handle.to_string();
        self.write(move |txn| {
            let mut messages = txn.open_table(MESSAGES).map_err(err)?;
            let mut schedule = txn.open_table(SCHEDULE).map_err(err)?;
            let (id, mut meta) = held(&messages, &pk, &handle)?;
            schedule
                .remove((pk.as_str(), meta.visible_ms, id))
                .map_err(err)?;
            meta.visible_ms = now_ms() + after.as_millis() as u64;
            update(&mut meta);
            write_meta(&mut messages, &pk, id, &meta)?;
            schedule
                .insert((pk.as_str(), meta.visible_ms, id), ())
                .map_err(err)?;
            Ok(())
        })
        .await
    }

    /// Drops messages past their retention, oldest first, in every part.
    async fn sweep(&self) -> Result<u64, BackendError> {
        let retention = self.retention.as_millis() as u64;
        self.write(move |txn| {
            let now = now_ms();
            let mut messages = txn.open_table(MESSAGES).map_err(err)?;
            let mut bodies = txn.open_table(BODIES).map_err(err)?;
            let mut schedule = txn.open_table(SCHEDULE).map_err(err)?;
            let mut expired = Vec::new();
            for entry in messages.iter().map_err(err)? {
                let (k, v) = entry.map_err(err)?;
                let (pk, id) = k.value();
                let meta: Meta = serde_json::from_str(v.value()).map_err(err)?;
                let keep = if pk.ends_with("/dlq") {
                    DEAD_RETENTION.as_millis() as u64
                } else {
                    retention
                };
                if meta.enqueued_ms.saturating_add(keep) < now {
                    expired.push((pk.to_string(), id, meta.visible_ms));
                }
            }
            for (pk, id, visible) in &expired {
                messages.remove((pk.as_str(), *id)).map_err(err)?;
                bodies.remove((pk.as_str(), *id)).map_err(err)?;
                schedule.remove((pk.as_str(), *visible, *id)).map_err(err)?;
            }
            Ok(expired.len() as u64)
        })
        .await
    }

    /// Sweeps expired messages every minute, for the life of the process.
    pub(crate) fn spawn_sweeper(self: &Arc<Self>, shutdown: common::shutdown::Shutdown) {
        let this = Arc::downgrade(self);
        let stop = shutdown.clone();
        shutdown.spawn("queue-retention-sweeper", async move {
            loop {
                tokio::select! {
                    () = stop.triggered() => return Ok::<_, BackendError>(()),
                    () = tokio::time::sleep(Duration::from_secs(60)) => {}
                }
                let Some(this) = this.upgrade() else {
                    return Ok(());
                };
                match this.sweep().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(expired = n, "dropped messages past retention"),
                    Err(e) => tracing::warn!(error = %e, "retention sweep failed"),
                }
            }
        });
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

/// The message a handle names, if the handle still holds its lease.
fn held(
    messages: &impl ReadableTable<(&'static str, u128), &'static str>,
    pk: &str,
    handle: &str,
) -> Result<(u128, Meta), BackendError> {
    let (id, token) = parse_handle(handle)?;
    match read_meta(messages, pk, id)? {
        Some(meta) if meta.token == token && token != 0 => Ok((id, meta)),
        _ => Err(BackendError::LeaseLost(
            "the message was acked, rolled back or delivered again".into(),
        )),
    }
}

/// Moves a message from one part to another, visible now, with `update` applied.
fn move_message(
    txn: &WriteTransaction,
    from: &str,
    to: &str,
    id: u128,
    update: impl FnOnce(&mut Meta),
) -> Result<bool, BackendError> {
    let mut messages = txn.open_table(MESSAGES).map_err(err)?;
    let mut bodies = txn.open_table(BODIES).map_err(err)?;
    let mut schedule = txn.open_table(SCHEDULE).map_err(err)?;
    let Some(mut meta) = read_meta(&messages, from, id)? else {
        return Ok(false);
    };
    let body = bodies
        .remove((from, id))
        .map_err(err)?
        .map(|b| b.value().to_vec())
        .unwrap_or_default();
    messages.remove((from, id)).map_err(err)?;
    schedule.remove((from, meta.visible_ms, id)).map_err(err)?;
    update(&mut meta);
    meta.token = 0;
    meta.visible_ms = now_ms();
    write_meta(&mut messages, to, id, &meta)?;
    bodies.insert((to, id), body.as_slice()).map_err(err)?;
    schedule
        .insert((to, meta.visible_ms, id), ())
        .map_err(err)?;
    Ok(true)
}

/// Deletes up to `limit` rows of a `(part, id)` table whose part key
/// starts with `prefix`; returns how many it deleted.
fn purge_rows<V: redb::Value + 'static>(
    table: &mut redb::Table<(&'static str, u128), V>,
    prefix: &str,
    limit: usize,
) -> Result<usize, BackendError> {
    let keys = table
        .range((prefix, 0)..)
        .map_err(err)?
        .map(|e| e.map(|(k, _)| (k.value().0.to_string(), k.value().1)))
        .take_while(|e| e.as_ref().map_or(true, |(pk, _)| pk.starts_with(prefix)))
        .take(limit)
        .collect::<Result<Vec<_>, _>>()
        .map_err(err)?;
    for (pk, id) in &keys {
        table.remove((pk.as_str(), *id)).map_err(err)?;
    }
    Ok(keys.len())
}

/// Deletes up to `limit` rows whose part key starts with `prefix`, from
/// every table; returns how many it deleted. Rows are deleted by their
/// keys, not through the message they belong to, so that nothing of the
/// app stays behind even where tables disagree.
fn purge_page(txn: &WriteTransaction, prefix: &str, limit: usize) -> Result<usize, BackendError> {
    let mut left = limit;
    left -= purge_rows(&mut txn.open_table(MESSAGES).map_err(err)?, prefix, left)?;
    left -= purge_rows(&mut txn.open_table(BODIES).map_err(err)?, prefix, left)?;
    let mut schedule = txn.open_table(SCHEDULE).map_err(err)?;
    let keys = schedule
        .range((prefix, 0, 0)..)
        .map_err(err)?
        .map(|e| e.map(|(k, _)| (k.value().0.to_string(), k.value().1, k.value().2)))
        .take_while(|e| e.as_ref().map_or(true, |(pk, _, _)| pk.starts_with(prefix)))
        .take(left)
        .collect::<Result<Vec<_>, _>>()
        .map_err(err)?;
    for (pk, visible, id) in &keys {
        schedule.remove((pk.as_str(), *visible, *id)).map_err(err)?;
    }
    left -= keys.len();
    let mut queues = txn.open_table(QUEUES).map_err(err)?;
    let keys = queues
        .range(prefix..)
        .map_err(err)?
        .map(|e| e.map(|(k, _)| k.value().to_string()))
        .take_while(|e| e.as_ref().map_or(true, |k| k.starts_with(prefix)))
        .take(left)
        .collect::<Result<Vec<_>, _>>()
        .map_err(err)?;
    for k in &keys {
        queues.remove(k.as_str()).map_err(err)?;
    }
    left -= keys.len();
    Ok(limit - left)
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
        Box::pin(async move {
            let key = part_key(q, Part::Main);
            let text = serde_json::to_string(&config).map_err(err)?;
            self.write(move |txn| {
                let mut queues = txn.open_table(QUEUES).map_err(err)?;
                queues.insert(key.as_str(), text.as_str()).map_err(err)?;
                Ok(())
            })
            .await
        })
    }

    fn config<'a>(&'a self, q: &'a QueueId) -> BoxFut<'a, Option<QueueConfig>> {
        Box::pin(async move {
            let key = part_key(q, Part::Main);
            let db = self.db.clone();
            tokio::task::spawn_blocking(move || {
                let txn = db.begin_read().map_err(err)?;
                let queues = txn.open_table(QUEUES).map_err(err)?;
                match queues.get(key.as_str()).map_err(err)? {
                    Some(v) => Ok(Some(serde_json::from_str(v.value()).map_err(err)?)),
                    None => Ok(None),
                }
            })
            .await
            .map_err(err)?
        })
    }

    fn list<'a>(&'a self, app: &'a str) -> BoxFut<'a, Vec<(String, QueueConfig)>> {
        Box::pin(async move {
            let prefix = format!("{app}/");
            let db = self.db.clone();
            tokio::task::spawn_blocking(move || {
                let txn = db.begin_read().map_err(err)?;
                let queues = txn.open_table(QUEUES).map_err(err)?;
                let mut out = Vec::new();
                for entry in queues.range(prefix.as_str()..).map_err(err)? {
                    let (k, v) = entry.map_err(err)?;
                    let Some(name) = k.value().strip_prefix(prefix.as_str()) else {
                        break;
                    };
                    out.push((
                        name.to_string(),
                        serde_json::from_str(v.value()).map_err(err)?,
                    ));
                }
                Ok(out)
            })
            .await
            .map_err(err)?
        })
    }

    fn publish<'a>(&'a self, q: &'a QueueId, batch: Vec<Stored>) -> BoxFut<'a, ()> {
        Box::pin(async move {
            let pk = part_key(q, Part::Main);
            // Ids are checked before the write: an error there must not
            // come after part of the batch was written.
            let batch = batch
                .into_iter()
                .map(|m| Ok((Uuid::parse_str(&m.id).map_err(err)?.as_u128(), m)))
                .collect::<Result<Vec<_>, BackendError>>()?;
            self.write(move |txn| {
                let mut messages = txn.open_table(MESSAGES).map_err(err)?;
                let mut bodies = txn.open_table(BODIES).map_err(err)?;
                let mut schedule = txn.open_table(SCHEDULE).map_err(err)?;
                let now = now_ms();
                for (id, m) in batch {
                    let meta = Meta {
                        enqueued_ms: m.enqueued_ms,
                        visible_ms: now,
                        deliveries: 0,
                        token: 0,
                        sealed: m.sealed,
                        last_error: None,
                    };
                    write_meta(&mut messages, &pk, id, &meta)?;
                    bodies
                        .insert((pk.as_str(), id), m.body.as_slice())
                        .map_err(err)?;
                    schedule.insert((pk.as_str(), now, id), ()).map_err(err)?;
                }
                Ok(())
            })
            .await?;
            self.wake.notify_waiters();
            Ok(())
        })
    }

    fn receive<'a>(
        &'a self,
        q: &'a QueueId,
        part: Part,
        max: usize,
        wait: Duration,
        lock: Duration,
    ) -> BoxFut<'a, Vec<Received>> {
        Box::pin(async move {
            let pk = part_key(q, part);
            let deadline = Instant::now() + wait;
            loop {
                // Registered before looking, so a publish in between is not missed.
                let woken = self.wake.notified();
                tokio::pin!(woken);
                woken.as_mut().enable();
                let (got, next) = self.take(pk.clone(), part, max, lock).await?;
                let now = Instant::now();
                if !got.is_empty() || now >= deadline {
                    return Ok(got);
                }
                let mut until = deadline;
                if let Some(visible) = next {
                    let due = now + Duration::from_millis(visible.saturating_sub(now_ms()));
                    until = until.min(due);
                }
                tokio::select! {
                    () = &mut woken => {}
                    () = tokio::time::sleep_until(until.into()) => {}
                }
            }
        })
    }

    fn ack<'a>(
        &'a self,
        q: &'a QueueId,
        part: Part,
        handles: Vec<String>,
    ) -> BoxFut<'a, Vec<Result<(), BackendError>>> {
        Box::pin(async move {
            let pk = part_key(q, part);
            self.write(move |txn| {
                let mut messages = txn.open_table(MESSAGES).map_err(err)?;
                let mut bodies = txn.open_table(BODIES).map_err(err)?;
                let mut schedule = txn.open_table(SCHEDULE).map_err(err)?;
                let mut out = Vec::with_capacity(handles.len());
                for handle in &handles {
                    match held(&messages, &pk, handle) {
                        Ok((id, meta)) => {
                            messages.remove((pk.as_str(), id)).map_err(err)?;
                            bodies.remove((pk.as_str(), id)).map_err(err)?;
                            schedule
                                .remove((pk.as_str(), meta.visible_ms, id))
                                .map_err(err)?;
                            out.push(Ok(()));
                        }
                        Err(e) => out.push(Err(e)),
                    }
                }
                Ok(out)
            })
            .await
        })
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
        Box::pin(async move {
            self.reschedule(q, part, handle, delay, move |meta| {
                // The lease ends here: its handle no longer acks.
                meta.token = 0;
                if error.is_some() {
                    meta.last_error = error;
                }
            })
            .await?;
            self.wake.notify_waiters();
            Ok(())
        })
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
        Box::pin(async move {
            let (from, to) = (part_key(q, Part::Main), part_key(q, Part::Dead));
            self.write(move |txn| {
                let (id, _) = held(&txn.open_table(MESSAGES).map_err(err)?, &from, &msg.handle)?;
                move_message(txn, &from, &to, id, |meta| {
                    meta.deliveries = msg.deliveries;
                    meta.last_error = Some(reason);
                })?;
                Ok(())
            })
            .await
        })
    }

    fn redrive<'a>(&'a self, q: &'a QueueId) -> BoxFut<'a, u64> {
        Box::pin(async move {
            let (from, to) = (part_key(q, Part::Dead), part_key(q, Part::Main));
            let moved = self
                .write(move |txn| {
                    let mut moved = 0;
                    for id in ids_of(txn, &from)? {
                        let reset = |meta: &mut Meta| {
                            meta.deliveries = 0;
                            meta.last_error = None;
                        };
                        if move_message(txn, &from, &to, id, reset)? {
                            moved += 1;
                        }
                    }
                    Ok(moved)
                })
                .await?;
            self.wake.notify_waiters();
            Ok(moved)
        })
    }

    fn purge<'a>(&'a self, q: &'a QueueId) -> BoxFut<'a, ()> {
        Box::pin(async move {
            let pk = part_key(q, Part::Main);
            self.write(move |txn| {
                let ids = ids_of(txn, &pk)?;
                let mut messages = txn.open_table(MESSAGES).map_err(err)?;
                let mut bodies = txn.open_table(BODIES).map_err(err)?;
                let mut schedule = txn.open_table(SCHEDULE).map_err(err)?;
                for id in ids {
                    if let Some(meta) = read_meta(&messages, &pk, id)? {
                        schedule
                            .remove((pk.as_str(), meta.visible_ms, id))
                            .map_err(err)?;
                    }
                    messages.remove((pk.as_str(), id)).map_err(err)?;
                    bodies.remove((pk.as_str(), id)).map_err(err)?;
                }
                Ok(())
            })
            .await
        })
    }

    fn counts<'a>(&'a self, q: &'a QueueId) -> BoxFut<'a, Counts> {
        Box::pin(async move {
            let (main, dead) = (part_key(q, Part::Main), part_key(q, Part::Dead));
            let db = self.db.clone();
            tokio::task::spawn_blocking(move || {
                let txn = db.begin_read().map_err(err)?;
                let schedule = txn.open_table(SCHEDULE).map_err(err)?;
                let messages = txn.open_table(MESSAGES).map_err(err)?;
                let now = now_ms();
                let count = |lo: u64, hi: u64, pk: &str| -> Result<u64, BackendError> {
                    let n = schedule
                        .range((pk, lo, 0)..=(pk, hi, u128::MAX))
                        .map_err(err)?
                        .count();
                    Ok(n as u64)
                };
                let oldest = match messages
                    .range((main.as_str(), 0)..=(main.as_str(), u128::MAX))
                    .map_err(err)?
                    .next()
                {
                    Some(entry) => {
                        let (_, v) = entry.map_err(err)?;
                        let meta: Meta = serde_json::from_str(v.value()).map_err(err)?;
                        Some(meta.enqueued_ms)
                    }
                    None => None,
                };
                Ok(Counts {
                    visible: count(0, now, &main)?,
                    invisible: count(now + 1, u64::MAX, &main)?,
                    dead: count(0, u64::MAX, &dead)?,
                    oldest_enqueued_ms: oldest,
                })
            })
            .await
            .map_err(err)?
        })
    }

    fn bury<'a>(&'a self, app: &'a str) -> BoxFut<'a, ()> {
        let app = app.to_string();
        Box::pin(self.write(move |txn| {
            let mut tombstones = txn.open_table(TOMBSTONES).map_err(err)?;
            if tombstones.get(app.as_str()).map_err(err)?.is_none() {
                tombstones.insert(app.as_str(), now_ms()).map_err(err)?;
            }
            Ok(())
        }))
    }

    fn tombstones(&self) -> BoxFut<'_, Vec<String>> {
        let db = self.db.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let txn = db.begin_read().map_err(err)?;
                let tombstones = txn.open_table(TOMBSTONES).map_err(err)?;
                tombstones
                    .iter()
                    .map_err(err)?
                    .map(|e| e.map(|(k, _)| k.value().to_string()).map_err(err))
                    .collect()
            })
            .await
            .map_err(err)?
        })
    }

    fn purge_app<'a>(&'a self, app: &'a str) -> BoxFut<'a, ()> {
        let prefix = format!("{app}/");
        Box::pin(async move {
            loop {
                let prefix = prefix.clone();
                let removed = self
                    .write(move |txn| purge_page(txn, &prefix, PURGE_PAGE))
                    .await?;
                if removed == 0 {
                    return Ok(());
                }
            }
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_app_is_purged_page_by_page_and_no_other_app_loses_a_row() {
        let dir = tempfile::tempdir().unwrap();
        let store = Embedded::open(&dir.path().join("q.redb"), Duration::from_secs(60)).unwrap();
        let apps = ["shop", "shop--x1", "shop-1", "sho"];
        let txn = store.db.begin_write().unwrap();
        {
            let mut queues = txn.open_table(QUEUES).unwrap();
            let mut messages = txn.open_table(MESSAGES).unwrap();
            let mut bodies = txn.open_table(BODIES).unwrap();
            let mut schedule = txn.open_table(SCHEDULE).unwrap();
            for app in apps {
                for part in ["orders", "orders/dlq", "z"] {
                    let pk = format!("{app}/{part}");
                    if !part.ends_with("/dlq") {
                        queues.insert(pk.as_str(), "{}").unwrap();
                    }
                    for id in 0..4u128 {
                        messages.insert((pk.as_str(), id), "{}").unwrap();
                        bodies.insert((pk.as_str(), id), b"b".as_slice()).unwrap();
                        schedule.insert((pk.as_str(), 7, id), ()).unwrap();
                    }
                }
            }
        }
        txn.commit().unwrap();

        let mut pages = Vec::new();
        loop {
            let txn = store.db.begin_write().unwrap();
            let removed = purge_page(&txn, "shop/", 10).unwrap();
            txn.commit().unwrap();
            if removed == 0 {
                break;
            }
            pages.push(removed);
        }
        // Three parts of four messages, each in three tables; two queues.
        assert_eq!(pages, [10, 10, 10, 8]);
        let txn = store.db.begin_read().unwrap();
        let mut left = std::collections::BTreeMap::<String, usize>::new();
        let mut count = |pk: &str| {
            let app = pk.split_once('/').map_or(pk, |(app, _)| app);
            *left.entry(app.to_string()).or_default() += 1;
        };
        for e in txn.open_table(QUEUES).unwrap().iter().unwrap() {
            count(e.unwrap().0.value());
        }
        for e in txn.open_table(MESSAGES).unwrap().iter().unwrap() {
            count(e.unwrap().0.value().0);
        }
        for e in txn.open_table(BODIES).unwrap().iter().unwrap() {
            count(e.unwrap().0.value().0);
        }
        for e in txn.open_table(SCHEDULE).unwrap().iter().unwrap() {
            count(e.unwrap().0.value().0);
        }
        let others: std::collections::BTreeMap<String, usize> = ["sho", "shop--x1", "shop-1"]
            .map(|a| (a.to_string(), 38))
            .into();
        assert_eq!(left, others);
    }
}
