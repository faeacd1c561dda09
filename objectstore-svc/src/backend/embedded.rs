//! The embedded backend: redb, one crash-safe file; every write is one durable transaction.
//!
//! Tables, each keyed by a tuple so that redb orders and compares it (no
//! hand-written encoding): `meta` and `data` by (app, store, key), `leases`
//! by (app, lease name); `tombstones` by app. A value's metadata and bytes
//! change in the same transaction, and a compare-and-set reads and writes
//! inside it, so redb's single writer makes every condition atomic.
//!
//! An app's rows are those whose first element is the app: one contiguous
//! range per table, which no other app shares, whatever its name begins
//! with. Purging an app deletes them by that range, [`PURGE_PAGE`] rows a
//! transaction.
//!
//! Writes are group-committed (`common::group_commit`): concurrent writes
//! share one transaction and one fsync, and each is acknowledged only after
//! its commit.

use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;

use common::group_commit::{CommitError, GroupCommit, Outcome};
use futures::FutureExt;
use futures::future::BoxFuture;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};

use super::{
    BackendError, Condition, Entry, LeaseId, LeaseOutcome, LeaseState, Millis, ObjectId, Page,
    Record, Removed, Result, StoreBackend, Written, live,
};

type ObjectKey<'a> = (&'a str, &'a str, &'a str);
/// (etag, plaintext size, expiry in ms or 0 for none)
type Meta<'a> = (&'a str, u64, u64);
/// (holder, fencing token, expiry in ms; 0 once released)
type Lease<'a> = (&'a str, u64, u64);

const META: TableDefinition<ObjectKey, Meta> = TableDefinition::new("objectstore_meta");
const DATA: TableDefinition<ObjectKey, &[u8]> = TableDefinition::new("objectstore_data");
const LEASES: TableDefinition<(&str, &str), Lease> = TableDefinition::new("objectstore_leases");
/// app -> when it was deleted (ms).
const TOMBSTONES: TableDefinition<&str, u64> = TableDefinition::new("objectstore_tombstones");

/// Rows an app purge deletes per transaction, so that the writes sharing
/// the writer's transactions never wait behind a whole app.
const PURGE_PAGE: usize = 1000;

pub(crate) struct Embedded {
    db: Arc<Database>,
    writer: GroupCommit,
}

fn err(op: &'static str) -> impl Fn(redb::Error) -> BackendError {
    move |e| BackendError::Embedded {
        op,
        message: e.to_string(),
    }
}

fn exp_from(raw: u64) -> Option<Millis> {
    (raw != 0).then_some(raw)
}

impl Embedded {
    pub fn open(file: &Path) -> Result<Self> {
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir).map_err(|e| err("open")(e.into()))?;
        }
        let db = Database::create(file).map_err(|e| err("open")(e.into()))?;
        // Create the tables up front so that readers never find them missing.
        let txn = db.begin_write().map_err(|e| err("open")(e.into()))?;
        {
            txn.open_table(META).map_err(|e| err("open")(e.into()))?;
            txn.open_table(DATA).map_err(|e| err("open")(e.into()))?;
            txn.open_table(LEASES).map_err(|e| err("open")(e.into()))?;
            txn.open_table(TOMBSTONES)
                .map_err(|e| err("open")(e.into()))?;
        }
        txn.commit().map_err(|e| err("open")(e.into()))?;
        let db = Arc::new(db);
        let writer = GroupCommit::start(db.clone(), "objectstore-writer").map_err(|e| {
            BackendError::Embedded {
                op: "open",
                message: format!("cannot start the writer thread: {e}"),
            }
        })?;
        Ok(Embedded { db, writer })
    }

    /// Applies `f` in the writer's next transaction; answers once it committed.
    fn write<T, F>(&self, op: &'static str, f: F) -> BoxFuture<'_, Result<T>>
    where
        T: Send + 'static,
        F: FnOnce(&WriteTransaction) -> std::result::Result<T, redb::Error> + Send + 'static,
    {
        let writer = self.writer.clone();
        async move {
            writer
                .write(move |txn| match f(txn) {
                    Ok(value) => Outcome::Done(value),
                    Err(e) => Outcome::Failed(e),
                })
                .await
                .map_err(|e| match e {
                    CommitError::Write(e) => err(op)(e),
                    CommitError::NotCommitted(message) => BackendError::Embedded { op, message },
                })
        }
        .boxed()
    }

    /// Runs blocking redb work off the async threads.
    fn blocking<T, F>(&self, op: &'static str, f: F) -> BoxFuture<'_, Result<T>>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> std::result::Result<T, redb::Error> + Send + 'static,
    {
        let db = self.db.clone();
        async move {
            match tokio::task::spawn_blocking(move || f(&db)).await {
                Ok(r) => r.map_err(err(op)),
                Err(join) => Err(BackendError::Malformed {
                    what: op.to_string(),
                    reason: format!("worker task failed: {join}"),
                }),
            }
        }
        .boxed()
    }
}

/// Whether the live record's etag satisfies `cond`.
fn satisfied(cond: &Condition, current: Option<&str>) -> bool {
    match cond {
        Condition::Always => true,
        Condition::IfAbsent => current.is_none(),
        Condition::IfMatch(etag) => current == Some(etag.as_str()),
    }
}

impl StoreBackend for Embedded {
    fn get(&self, id: ObjectId, now: Millis) -> BoxFuture<'_, Result<Option<Record>>> {
        self.blocking("get", move |db| {
            let txn = db.begin_read()?;
            let key = (id.app.as_str(), id.store.as_str(), id.key.as_str());
            let meta = txn.open_table(META)?;
            let Some(m) = meta.get(key)? else {
                return Ok(None);
            };
            let (etag, size, exp) = m.value();
            let expires_at = exp_from(exp);
            if !live(expires_at, now) {
                return Ok(None);
            }
            let data = txn.open_table(DATA)?;
            let sealed = data
                .get(key)?
                .map(|v| v.value().to_vec())
                .unwrap_or_default();
            Ok(Some(Record {
                sealed,
                etag: etag.to_string(),
                size,
                expires_at,
            }))
        })
    }

    fn put(
        &self,
        id: ObjectId,
        record: Record,
        cond: Condition,
        now: Millis,
    ) -> BoxFuture<'_, Result<Written>> {
        self.write("put", move |txn| {
            let key = (id.app.as_str(), id.store.as_str(), id.key.as_str());
            let outcome = {
                let mut meta = txn.open_table(META)?;
                let current = meta.get(key)?.and_then(|m| {
                    let (etag, _, exp) = m.value();
                    live(exp_from(exp), now).then(|| etag.to_string())
                });
                if !satisfied(&cond, current.as_deref()) {
                    Written::ConditionFailed
                } else {
                    meta.insert(
                        key,
                        (
                            record.etag.as_str(),
                            record.size,
                            record.expires_at.unwrap_or(0),
                        ),
                    )?;
                    txn.open_table(DATA)?
                        .insert(key, record.sealed.as_slice())?;
                    if current.is_some() {
                        Written::Replaced
                    } else {
                        Written::Created
                    }
                }
            };
            Ok(outcome)
        })
    }

    fn delete(&self, id: ObjectId, cond: Condition, now: Millis) -> BoxFuture<'_, Result<Removed>> {
        self.write("delete", move |txn| {
            let key = (id.app.as_str(), id.store.as_str(), id.key.as_str());
            let outcome = {
                let mut meta = txn.open_table(META)?;
                let found = meta.get(key)?.map(|m| {
                    let (etag, _, exp) = m.value();
                    (etag.to_string(), live(exp_from(exp), now))
                });
                let current = found.as_ref().filter(|(_, l)| *l).map(|(e, _)| e.as_str());
                if !satisfied(&cond, current) || cond == Condition::IfAbsent {
                    Removed::ConditionFailed
                } else {
                    if found.is_some() {
                        meta.remove(key)?;
                        txn.open_table(DATA)?.remove(key)?;
                    }
                    if current.is_some() {
                        Removed::Deleted
                    } else {
                        Removed::Absent
                    }
                }
            };
            Ok(outcome)
        })
    }

    fn list(
        &self,
        app: String,
        store: String,
        prefix: String,
        after: Option<String>,
        limit: usize,
        now: Millis,
    ) -> BoxFuture<'_, Result<Page>> {
        self.blocking("list", move |db| {
            let txn = db.begin_read()?;
            let meta = txn.open_table(META)?;
            let start = match &after {
                Some(a) if a.as_str() >= prefix.as_str() => {
                    Bound::Excluded((app.as_str(), store.as_str(), a.as_str()))
                }
                _ => Bound::Included((app.as_str(), store.as_str(), prefix.as_str())),
            };
            let mut page = Page::default();
            for item in meta.range::<ObjectKey>((start, Bound::Unbounded))? {
                let (k, m) = item?;
                let (a, s, key) = k.value();
                if a != app || s != store || !key.starts_with(prefix.as_str()) {
                    break;
                }
                if page.entries.len() == limit {
                    page.next = page.entries.last().map(|e| e.key.clone());
                    break;
                }
                let (etag, size, exp) = m.value();
                if live(exp_from(exp), now) {
                    page.entries.push(Entry {
                        key: key.to_string(),
                        etag: etag.to_string(),
                        size,
                        expires_at: exp_from(exp),
                    });
                }
            }
            Ok(page)
        })
    }

    fn stats(&self, app: String, store: String, now: Millis) -> BoxFuture<'_, Result<(u64, u64)>> {
        self.blocking("stats", move |db| {
            let txn = db.begin_read()?;
            let meta = txn.open_table(META)?;
            let (mut keys, mut bytes) = (0, 0);
            let from = (app.as_str(), store.as_str(), "");
            for item in meta.range::<ObjectKey>(from..)? {
                let (k, m) = item?;
                let (a, s, _) = k.value();
                if a != app || s != store {
                    break;
                }
                let (_, size, exp) = m.value();
                if live(exp_from(exp), now) {
                    keys += 1;
                    bytes += size;
                }
            }
            Ok((keys, bytes))
        })
    }

    fn acquire(
        &self,
        id: LeaseId,
        holder: String,
        ttl_ms: u64,
        now: Millis,
    ) -> BoxFuture<'_, Result<LeaseOutcome>> {
        self.lease_txn("acquire", id, move |current| match current {
            Some(cur) if cur.expires_at > now && cur.holder != holder => {
                (LeaseOutcome::Held(cur), None)
            }
            Some(cur) if cur.expires_at > now => {
                let next = LeaseState {
                    expires_at: now + ttl_ms,
                    ..cur
                };
                (LeaseOutcome::Granted(next.clone()), Some(next))
            }
            other => {
                let next = LeaseState {
                    holder,
                    token: other.map_or(0, |c| c.token) + 1,
                    expires_at: now + ttl_ms,
                };
                (LeaseOutcome::Granted(next.clone()), Some(next))
            }
        })
    }

    fn renew(
        &self,
        id: LeaseId,
        holder: String,
        token: u64,
        ttl_ms: u64,
        now: Millis,
    ) -> BoxFuture<'_, Result<LeaseOutcome>> {
        self.lease_txn("renew", id, move |current| match current {
            Some(cur) if cur.held_by(&holder, token, now) => {
                let next = LeaseState {
                    expires_at: now + ttl_ms,
                    ..cur
                };
                (LeaseOutcome::Granted(next.clone()), Some(next))
            }
            _ => (LeaseOutcome::Lost, None),
        })
    }

    fn release(
        &self,
        id: LeaseId,
        holder: String,
        token: u64,
        now: Millis,
    ) -> BoxFuture<'_, Result<LeaseOutcome>> {
        self.lease_txn("release", id, move |current| match current {
            Some(cur) if cur.held_by(&holder, token, now) => {
                let next = LeaseState {
                    holder: String::new(),
                    expires_at: 0,
                    ..cur
                };
                (LeaseOutcome::Released, Some(next))
            }
            _ => (LeaseOutcome::Lost, None),
        })
    }

    fn bury(&self, app: String) -> BoxFuture<'_, Result<()>> {
        self.write("bury", move |txn| {
            let mut tombstones = txn.open_table(TOMBSTONES)?;
            if tombstones.get(app.as_str())?.is_none() {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                tombstones.insert(app.as_str(), now)?;
            }
            Ok(())
        })
    }

    fn tombstones(&self) -> BoxFuture<'_, Result<Vec<String>>> {
        self.blocking("tombstones", |db| {
            let txn = db.begin_read()?;
            let tombstones = txn.open_table(TOMBSTONES)?;
            let mut apps = Vec::new();
            for e in tombstones.iter()? {
                apps.push(e?.0.value().to_string());
            }
            Ok(apps)
        })
    }

    fn purge_app(&self, app: String) -> BoxFuture<'_, Result<()>> {
        async move {
            loop {
                let app = app.clone();
                let removed = self
                    .write("purge app", move |txn| purge_page(txn, &app, PURGE_PAGE))
                    .await?;
                if removed == 0 {
                    return Ok(());
                }
            }
        }
        .boxed()
    }
}

/// Deletes up to `limit` rows of `app` from a table keyed by (app, store,
/// key); returns how many it deleted.
fn purge_objects<V: redb::Value + 'static>(
    table: &mut redb::Table<ObjectKey<'static>, V>,
    app: &str,
    limit: usize,
) -> std::result::Result<usize, redb::Error> {
    let keys = table
        .range::<ObjectKey>((app, "", "")..)?
        .map(|e| {
            e.map(|(k, _)| {
                let (a, s, key) = k.value();
                (a.to_string(), s.to_string(), key.to_string())
            })
        })
        .take_while(|e| e.as_ref().map_or(true, |(a, _, _)| a == app))
        .take(limit)
        .collect::<std::result::Result<Vec<_>, _>>()?;
    for (a, s, key) in &keys {
        table.remove((a.as_str(), s.as_str(), key.as_str()))?;
    }
    Ok(keys.len())
}

/// Deletes up to `limit` rows of `app` from every table; returns how many.
fn purge_page(
    txn: &WriteTransaction,
    app: &str,
    limit: usize,
) -> std::result::Result<usize, redb::Error> {
    let mut left = limit;
    left -= purge_objects(&mut txn.open_table(META)?, app, left)?;
    left -= purge_objects(&mut txn.open_table(DATA)?, app, left)?;
    let mut leases = txn.open_table(LEASES)?;
    let names = leases
        .range::<(&str, &str)>((app, "")..)?
        .map(|e| e.map(|(k, _)| (k.value().0.to_string(), k.value().1.to_string())))
        .take_while(|e| e.as_ref().map_or(true, |(a, _)| a == app))
        .take(left)
        .collect::<std::result::Result<Vec<_>, _>>()?;
    for (a, name) in &names {
        leases.remove((a.as_str(), name.as_str()))?;
    }
    left -= names.len();
    Ok(limit - left)
}

impl Embedded {
    /// Reads a lease, decides, and writes the new state (if any) in one transaction.
    fn lease_txn<F>(
        &self,
        op: &'static str,
        id: LeaseId,
        decide: F,
    ) -> BoxFuture<'_, Result<LeaseOutcome>>
    where
        F: FnOnce(Option<LeaseState>) -> (LeaseOutcome, Option<LeaseState>) + Send + 'static,
    {
        self.write(op, move |txn| {
            let key = (id.app.as_str(), id.name.as_str());
            let outcome = {
                let mut leases = txn.open_table(LEASES)?;
                let current = leases.get(key)?.map(|l| {
                    let (holder, token, expires_at) = l.value();
                    LeaseState {
                        holder: holder.to_string(),
                        token,
                        expires_at,
                    }
                });
                let (outcome, next) = decide(current);
                if let Some(n) = next {
                    leases.insert(key, (n.holder.as_str(), n.token, n.expires_at))?;
                }
                outcome
            };
            Ok(outcome)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_app_is_purged_page_by_page_and_no_other_app_loses_a_row() {
        let dir = tempfile::tempdir().unwrap();
        let store = Embedded::open(&dir.path().join("o.redb")).unwrap();
        let apps = ["shop", "shop--x1", "shop-1", "sho"];
        let txn = store.db.begin_write().unwrap();
        {
            let mut meta = txn.open_table(META).unwrap();
            let mut data = txn.open_table(DATA).unwrap();
            let mut leases = txn.open_table(LEASES).unwrap();
            for app in apps {
                for store in ["_idempotent", "orders"] {
                    for i in 0..12 {
                        let key = format!("k{i}");
                        meta.insert((app, store, key.as_str()), ("e", 1, 0))
                            .unwrap();
                        data.insert((app, store, key.as_str()), b"v".as_slice())
                            .unwrap();
                    }
                }
                leases.insert((app, "primary"), ("w", 1, 0)).unwrap();
            }
        }
        txn.commit().unwrap();

        let mut pages = Vec::new();
        loop {
            let txn = store.db.begin_write().unwrap();
            let removed = purge_page(&txn, "shop", 10).unwrap();
            txn.commit().unwrap();
            if removed == 0 {
                break;
            }
            pages.push(removed);
        }
        // 24 values, each in two tables, and a lease: 49 rows.
        assert_eq!(pages, [10, 10, 10, 10, 9]);
        let txn = store.db.begin_read().unwrap();
        let mut left = std::collections::BTreeMap::<String, usize>::new();
        for e in txn.open_table(META).unwrap().iter().unwrap() {
            *left.entry(e.unwrap().0.value().0.to_string()).or_default() += 1;
        }
        for e in txn.open_table(DATA).unwrap().iter().unwrap() {
            *left.entry(e.unwrap().0.value().0.to_string()).or_default() += 1;
        }
        for e in txn.open_table(LEASES).unwrap().iter().unwrap() {
            *left.entry(e.unwrap().0.value().0.to_string()).or_default() += 1;
        }
        let others: std::collections::BTreeMap<String, usize> = ["sho", "shop--x1", "shop-1"]
            .map(|a| (a.to_string(), 49))
            .into();
        assert_eq!(left, others);
    }
}
