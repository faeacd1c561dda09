//! Declaring a queue, reading its settings, listing an app's queues and counting their messages.

use redb::ReadableDatabase;

use super::{Embedded, MESSAGES, Meta, QUEUES, SCHEDULE, err, part_key};
use crate::backend::{BackendError, Counts, Part, QueueConfig, QueueId, now_ms};

impl Embedded {
    /// Declares the queue, or updates its settings (the DLQ needs no row).
    pub(super) async fn declare_queue(
        &self,
        q: &QueueId,
        config: QueueConfig,
    ) -> Result<(), BackendError> {
        let key = part_key(q, Part::Main);
        let text = serde_json::to_string(&config).map_err(err)?;
        self.write(move |txn| {
            let mut queues = txn.open_table(QUEUES).map_err(err)?;
            queues.insert(key.as_str(), text.as_str()).map_err(err)?;
            Ok(())
        })
        .await
    }

    /// The queue's settings, `None` when it was never declared.
    pub(super) async fn queue_config(
        &self,
        q: &QueueId,
    ) -> Result<Option<QueueConfig>, BackendError> {
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
    }

    /// The app's queues, by name.
    pub(super) async fn list_queues(
        &self,
        app: &str,
    ) -> Result<Vec<(String, QueueConfig)>, BackendError> {
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
    }

    /// The queue's counts, from its schedule, and its oldest message.
    pub(super) async fn queue_counts(&self, q: &QueueId) -> Result<Counts, BackendError> {
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
    }
}
