//! Deleting: a queue's messages, and a deleted app (its tombstone, then its rows page by page).

use redb::{ReadableDatabase, ReadableTable, WriteTransaction};

use super::{
    BODIES, Embedded, MESSAGES, PURGE_PAGE, QUEUES, SCHEDULE, TOMBSTONES, err, ids_of, part_key,
    read_meta,
};
use crate::backend::{BackendError, Part, QueueId, now_ms};

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
pub(super) fn purge_page(
    txn: &WriteTransaction,
    prefix: &str,
    limit: usize,
) -> Result<usize, BackendError> {
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

impl Embedded {
    /// Deletes every message of the queue (not of its DLQ).
    pub(super) async fn purge_queue(&self, q: &QueueId) -> Result<(), BackendError> {
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
    }

    /// Records, durably, that the app was deleted (idempotent).
    pub(super) async fn bury_app(&self, app: &str) -> Result<(), BackendError> {
        let app = app.to_string();
        self.write(move |txn| {
            let mut tombstones = txn.open_table(TOMBSTONES).map_err(err)?;
            if tombstones.get(app.as_str()).map_err(err)?.is_none() {
                tombstones.insert(app.as_str(), now_ms()).map_err(err)?;
            }
            Ok(())
        })
        .await
    }

    /// Every app recorded as deleted.
    pub(super) async fn buried_apps(&self) -> Result<Vec<String>, BackendError> {
        let db = self.db.clone();
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
    }

    /// Deletes every row of the app, [`PURGE_PAGE`] rows a transaction.
    pub(super) async fn forget_app(&self, app: &str) -> Result<(), BackendError> {
        let prefix = format!("{app}/");
        loop {
            let prefix = prefix.clone();
            let removed = self
                .write(move |txn| purge_page(txn, &prefix, PURGE_PAGE))
                .await?;
            if removed == 0 {
                return Ok(());
            }
        }
    }
}
