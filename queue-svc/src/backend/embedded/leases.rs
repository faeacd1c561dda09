//! Publishing, and a lease's life: lease (a long poll), ack, rollback, extend.

use std::time::{Duration, Instant};

use redb::ReadableTable;
use uuid::Uuid;

use super::{BODIES, Embedded, MESSAGES, Meta, SCHEDULE, err, part_key, read_meta, write_meta};
use crate::backend::{BackendError, DEAD_RETENTION, Part, QueueId, Received, Stored, now_ms};

fn parse_handle(handle: &str) -> Result<(u128, u64), BackendError> {
    let lost = || BackendError::LeaseLost(format!("malformed handle {handle:?}"));
    let (id, token) = handle.split_once(':').ok_or_else(lost)?;
    let id = Uuid::parse_str(id).map_err(|_| lost())?.as_u128();
    let token = token.parse().map_err(|_| lost())?;
    Ok((id, token))
}

/// The message a handle names, if the handle still holds its lease.
pub(super) fn held(
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

impl Embedded {
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
    pub(super) async fn reschedule(
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

    /// Stores all of `batch` or none, visible now.
    pub(super) async fn publish_batch(
        &self,
        q: &QueueId,
        batch: Vec<Stored>,
    ) -> Result<(), BackendError> {
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
    }

    /// Leases up to `max` visible messages for `lock`, waiting up to `wait` for one.
    pub(super) async fn lease(
        &self,
        q: &QueueId,
        part: Part,
        max: usize,
        wait: Duration,
        lock: Duration,
    ) -> Result<Vec<Received>, BackendError> {
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
    }

    /// Deletes the leased messages; one result per handle.
    pub(super) async fn ack_leases(
        &self,
        q: &QueueId,
        part: Part,
        handles: Vec<String>,
    ) -> Result<Vec<Result<(), BackendError>>, BackendError> {
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
    }

    /// Gives a lease up: visible again after `delay`, `error` kept as its last error.
    pub(super) async fn rollback(
        &self,
        q: &QueueId,
        part: Part,
        handle: &str,
        delay: Duration,
        error: Option<String>,
    ) -> Result<(), BackendError> {
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
    }
}
