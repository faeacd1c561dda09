//! Dead letters: moving a held message to the DLQ, and redriving the DLQ.

use redb::WriteTransaction;

use super::leases::held;
use super::{
    BODIES, Embedded, MESSAGES, Meta, SCHEDULE, err, ids_of, part_key, read_meta, write_meta,
};
use crate::backend::{BackendError, Part, QueueId, Received, now_ms};

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

impl Embedded {
    /// Moves a leased message to the DLQ, with its delivery count and `reason` as its last error.
    pub(super) async fn move_to_dlq(
        &self,
        q: &QueueId,
        msg: Received,
        reason: String,
    ) -> Result<(), BackendError> {
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
    }

    /// Moves every dead letter back to the queue, with a fresh delivery count.
    pub(super) async fn redrive_dlq(&self, q: &QueueId) -> Result<u64, BackendError> {
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
    }
}
