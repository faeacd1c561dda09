//! Dead letters: moving a message to the DLQ with its history, and redriving the DLQ.

use std::time::Duration;

use super::Sqs;
use super::body::decode;
use crate::backend::{BackendError, Part, QueueId, Received};

impl Sqs {
    /// Moves a leased message to the DLQ, with its delivery count and `reason` as attributes.
    pub(super) async fn move_to_dlq(
        &self,
        q: &QueueId,
        msg: Received,
        reason: String,
    ) -> Result<(), BackendError> {
        let dead = self.url(q, Part::Dead).await?;
        let main = self.url(q, Part::Main).await?;
        self.take_last_error(&msg.stored.id);
        let extra = vec![("fdeliv", msg.deliveries.to_string()), ("ferr", reason)];
        // Copy first, then delete: a crash in between leaves a duplicate, never a loss.
        self.send_batch(&dead, &[(msg.stored, extra)]).await?;
        self.delete_batch(&main, &[msg.handle]).await?;
        Ok(())
    }

    /// Moves every dead letter back to the queue, with a fresh delivery count.
    pub(super) async fn redrive_dlq(&self, q: &QueueId) -> Result<u64, BackendError> {
        let dead = self.url(q, Part::Dead).await?;
        let main = self.url(q, Part::Main).await?;
        let mut moved = 0;
        loop {
            let raw = self
                .receive_raw(
                    &dead,
                    crate::api::MAX_BATCH,
                    Duration::ZERO,
                    Duration::from_secs(60),
                )
                .await?;
            if raw.is_empty() {
                return Ok(moved);
            }
            let mut batch = Vec::with_capacity(raw.len());
            let mut handles = Vec::with_capacity(raw.len());
            for m in &raw {
                let r = decode(m, Part::Dead)?;
                handles.push(r.handle);
                batch.push((r.stored, Vec::new()));
            }
            self.send_batch(&main, &batch).await?;
            self.delete_batch(&dead, &handles).await?;
            moved += batch.len() as u64;
        }
    }
}
