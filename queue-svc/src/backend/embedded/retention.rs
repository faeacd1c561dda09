//! Retention: a sweeper that drops messages past their queue's retention, once a minute.

use std::sync::Arc;
use std::time::Duration;

use redb::ReadableTable;

use super::{BODIES, Embedded, MESSAGES, Meta, SCHEDULE, err};
use crate::backend::{BackendError, DEAD_RETENTION, now_ms};

impl Embedded {
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
    pub(super) fn spawn_sweeper(self: &Arc<Self>, shutdown: common::shutdown::Shutdown) {
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
