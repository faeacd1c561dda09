//! Publishing, and a lease's life: receive, ack, rollback (with its last error kept in memory).

use std::time::Duration;

use super::Sqs;
use super::body::decode;
use crate::backend::{BackendError, Part, QueueId, Received, Stored};

/// Last errors kept in memory for messages not yet dead-lettered (SQS cannot
/// attach data to a message on rollback); beyond this the map starts over.
const LAST_ERRORS_MAX: usize = 10_000;

impl Sqs {
    /// Stores all of `messages` or none.
    pub(super) async fn publish_batch(
        &self,
        q: &QueueId,
        messages: Vec<Stored>,
    ) -> Result<(), BackendError> {
        let url = self.url(q, Part::Main).await?;
        let batch: Vec<_> = messages.into_iter().map(|m| (m, Vec::new())).collect();
        self.send_batch(&url, &batch).await
    }

    /// Leases up to `max` messages, with a main queue message's last error from memory.
    pub(super) async fn lease(
        &self,
        q: &QueueId,
        part: Part,
        max: usize,
        wait: Duration,
        lock: Duration,
    ) -> Result<Vec<Received>, BackendError> {
        let url = self.url(q, part).await?;
        let raw = self.receive_raw(&url, max, wait, lock).await?;
        let mut out = Vec::with_capacity(raw.len());
        for m in &raw {
            let mut r = decode(m, part)?;
            if part == Part::Main {
                r.last_error = self
                    .last_errors
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&r.stored.id)
                    .cloned();
            }
            out.push(r);
        }
        Ok(out)
    }

    /// Deletes the leased messages; one result per handle.
    pub(super) async fn ack_leases(
        &self,
        q: &QueueId,
        part: Part,
        handles: Vec<String>,
    ) -> Result<Vec<Result<(), BackendError>>, BackendError> {
        let url = self.url(q, part).await?;
        self.delete_batch(&url, &handles).await
    }

    /// Gives a lease up, visible again after `delay`; `error` kept in memory as its last error.
    pub(super) async fn rollback(
        &self,
        q: &QueueId,
        part: Part,
        handle: &str,
        id: &str,
        delay: Duration,
        error: Option<String>,
    ) -> Result<(), BackendError> {
        self.change_visibility(q, part, handle, delay, "rollback lease")
            .await?;
        if let Some(error) = error {
            let mut map = self.last_errors.lock().unwrap_or_else(|p| p.into_inner());
            if map.len() >= LAST_ERRORS_MAX {
                map.clear();
            }
            map.insert(id.to_string(), error);
        }
        Ok(())
    }

    pub(super) fn take_last_error(&self, id: &str) -> Option<String> {
        self.last_errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id)
    }
}
