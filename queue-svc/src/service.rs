//! What a queue operation means, whichever backend holds the queue: names,
//! limits, sealing and opening bodies, lease ids, back-off and dead-lettering.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use common::app::{validate_app_id, validate_resource_name};
use common::envelope::{Aad, Keyring, ResourceKind};
use common::tombstone::{DRAIN_LIMIT, Tombstones};

use crate::api::{
    AckFailure, AckResponse, LeasedMessage, MAX_BATCH, MAX_BODY_BYTES, NewMessage, QueueSpec,
    QueueStats,
};
use crate::backend::{Backend, Part, QueueConfig, QueueId, Received, Stored, now_ms};
use crate::error::QueueError;
use crate::metrics::Metrics;
use crate::settings::Settings;

/// Marks a last error sealed at rest (an encrypted queue's).
const SEALED_ERROR: &str = "sealed:";

/// A lease as the client holds it: which queue, which message, which delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LeaseRef {
    pub queue: String,
    pub part: Part,
    pub id: String,
    pub deliveries: u32,
    pub handle: String,
}

impl LeaseRef {
    const VERSION: &'static str = "l1";

    pub(crate) fn encode(&self) -> String {
        let part = match self.part {
            Part::Main => "m",
            Part::Dead => "d",
        };
        let text = format!(
            "{}|{part}|{}|{}|{}|{}",
            Self::VERSION,
            self.queue,
            self.id,
            self.deliveries,
            self.handle
        );
        B64URL.encode(text)
    }

    pub(crate) fn decode(lease: &str) -> Result<Self, QueueError> {
        let bad = || QueueError::Invalid(format!("malformed lease id {lease:?}"));
        let bytes = B64URL.decode(lease).map_err(|_| bad())?;
        let text = String::from_utf8(bytes).map_err(|_| bad())?;
        let mut parts = text.splitn(6, '|');
        let mut next = || parts.next().ok_or_else(bad);
        if next()? != Self::VERSION {
            return Err(bad());
        }
        let part = match next()? {
            "m" => Part::Main,
            "d" => Part::Dead,
            _ => return Err(bad()),
        };
        let queue = next()?.to_string();
        let id = next()?.to_string();
        let deliveries = next()?.parse().map_err(|_| bad())?;
        let handle = next()?.to_string();
        validate_resource_name("queue name", &queue).map_err(|_| bad())?;
        Ok(LeaseRef {
            queue,
            part,
            id,
            deliveries,
            handle,
        })
    }
}

/// How a lease call asks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LeaseParams {
    pub max: usize,
    pub wait: Duration,
    pub lock: Duration,
    pub part: Part,
}

/// The queue service's operations over a backend.
pub(crate) struct Queues {
    backend: Backend,
    keyring: Keyring,
    settings: Settings,
    configs: RwLock<HashMap<QueueId, QueueConfig>>,
    metrics: Metrics,
    tombstones: Tombstones,
}

impl Queues {
    pub(crate) fn new(
        backend: Backend,
        keyring: Keyring,
        settings: Settings,
        metrics: Metrics,
        tombstones: Tombstones,
    ) -> Self {
        Queues {
            backend,
            keyring,
            settings,
            configs: RwLock::default(),
            metrics,
            tombstones,
        }
    }

    /// A queue id from names that come from a request.
    pub(crate) fn queue_id(app: &str, queue: &str) -> Result<QueueId, QueueError> {
        validate_app_id(app)?;
        validate_resource_name("queue name", queue)?;
        Ok(QueueId {
            app: app.to_string(),
            queue: queue.to_string(),
        })
    }

    async fn config(&self, q: &QueueId) -> Result<QueueConfig, QueueError> {
        if let Some(c) = self
            .configs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(q)
        {
            return Ok(*c);
        }
        let config = self
            .backend
            .0
            .config(q)
            .await?
            .ok_or_else(|| QueueError::UnknownQueue(q.to_string()))?;
        self.remember(q, config);
        Ok(config)
    }

    fn remember(&self, q: &QueueId, config: QueueConfig) {
        self.configs
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(q.clone(), config);
    }

    pub(crate) async fn declare(
        &self,
        q: &QueueId,
        spec: QueueSpec,
    ) -> Result<QueueStats, QueueError> {
        let max_deliveries = spec.max_deliveries.unwrap_or(self.settings.max_deliveries);
        if !(1..=1000).contains(&max_deliveries) {
            return Err(QueueError::Invalid(format!(
                "maxDeliveries {max_deliveries} is out of range 1..=1000"
            )));
        }
        let config = QueueConfig {
            encrypted: spec.encrypted,
            max_deliveries,
        };
        self.backend.0.declare(q, config).await?;
        self.remember(q, config);
        self.stats_with(q, config).await
    }

    fn aad<'a>(q: &'a QueueId, id: &'a str) -> Aad<'a> {
        Aad {
            app: &q.app,
            kind: ResourceKind::Queue,
            resource: &q.queue,
            key: id,
        }
    }

    pub(crate) async fn publish(
        &self,
        q: &QueueId,
        messages: Vec<NewMessage>,
    ) -> Result<Vec<String>, QueueError> {
        if messages.is_empty() || messages.len() > MAX_BATCH {
            return Err(QueueError::Invalid(format!(
                "a publish carries 1 to {MAX_BATCH} messages, not {}",
                messages.len()
            )));
        }
        if let Some((i, m)) = messages
            .iter()
            .enumerate()
            .find(|(_, m)| m.body.len() > MAX_BODY_BYTES)
        {
            return Err(QueueError::TooLarge(format!(
                "message {i} has a body of {} bytes; the limit is {MAX_BODY_BYTES} (256 KiB)",
                m.body.len()
            )));
        }
        let config = self.config(q).await?;
        let now = now_ms();
        let stored: Vec<Stored> = messages
            .into_iter()
            .map(|m| {
                let id = uuid::Uuid::now_v7().to_string();
                let body = if config.encrypted {
                    self.keyring.seal(&Self::aad(q, &id), m.body.as_bytes())
                } else {
                    m.body.into_bytes()
                };
                Stored {
                    id,
                    body,
                    sealed: config.encrypted,
                    enqueued_ms: now,
                }
            })
            .collect();
        let ids = stored.iter().map(|m| m.id.clone()).collect::<Vec<_>>();
        self.backend.0.publish(q, stored).await?;
        self.metrics.count("published", &q.app, ids.len());
        Ok(ids)
    }

    pub(crate) async fn lease(
        &self,
        q: &QueueId,
        params: LeaseParams,
    ) -> Result<Vec<LeasedMessage>, QueueError> {
        let config = self.config(q).await?;
        let received = self
            .backend
            .0
            .receive(q, params.part, params.max, params.wait, params.lock)
            .await?;
        let mut out = Vec::with_capacity(received.len());
        for r in received {
            let r = Received {
                last_error: r
                    .last_error
                    .as_deref()
                    .map(|e| self.open_error(q, &r.stored.id, e)),
                ..r
            };
            if params.part == Part::Main && r.deliveries > config.max_deliveries {
                let reason = r.last_error.clone().unwrap_or_else(|| {
                    format!("not acked after {} deliveries", config.max_deliveries)
                });
                let dead = Received {
                    deliveries: config.max_deliveries,
                    ..r
                };
                self.dead_letter(q, dead, reason, config.encrypted).await;
                continue;
            }
            let body = match self.open(q, &r) {
                Ok(body) => body,
                Err(reason) if params.part == Part::Main => {
                    self.dead_letter(q, r, reason, config.encrypted).await;
                    continue;
                }
                // A dead letter that cannot be opened is shown without its body.
                Err(_) => String::new(),
            };
            let lease_id = LeaseRef {
                queue: q.queue.clone(),
                part: params.part,
                id: r.stored.id.clone(),
                deliveries: r.deliveries,
                handle: r.handle,
            }
            .encode();
            out.push(LeasedMessage {
                id: r.stored.id,
                lease_id,
                body,
                delivery_count: r.deliveries,
                enqueued_at_ms: r.stored.enqueued_ms,
                last_error: r.last_error,
            });
        }
        self.metrics.count("leased", &q.app, out.len());
        Ok(out)
    }

    /// A message's last error sealed for the backend: `sealed:` and base64.
    fn seal_error(&self, q: &QueueId, id: &str, error: &str) -> String {
        let key = format!("{id}#error");
        let sealed = self.keyring.seal(&Self::aad(q, &key), error.as_bytes());
        format!("{SEALED_ERROR}{}", B64URL.encode(sealed))
    }

    /// A last error as written: opened when sealed, as is otherwise.
    fn open_error(&self, q: &QueueId, id: &str, error: &str) -> String {
        let Some(text) = error.strip_prefix(SEALED_ERROR) else {
            return error.to_string();
        };
        let key = format!("{id}#error");
        B64URL
            .decode(text)
            .ok()
            .and_then(|bytes| self.keyring.open(&Self::aad(q, &key), &bytes).ok())
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .unwrap_or_else(|| "(the last error cannot be opened)".to_string())
    }

    /// The body as published, or why it cannot be had.
    fn open(&self, q: &QueueId, r: &Received) -> Result<String, String> {
        let bytes = if r.stored.sealed {
            self.keyring
                .open(&Self::aad(q, &r.stored.id), &r.stored.body)
                .map_err(|e| format!("cannot open sealed body: {e}"))?
        } else {
            r.stored.body.clone()
        };
        String::from_utf8(bytes).map_err(|_| "body is not UTF-8".to_string())
    }

    async fn dead_letter(&self, q: &QueueId, r: Received, reason: String, encrypted: bool) {
        let id = r.stored.id.clone();
        let stored = if encrypted {
            self.seal_error(q, &id, &reason)
        } else {
            reason.clone()
        };
        match self.backend.0.dead_letter(q, r, stored).await {
            Ok(()) => {
                // The reason may quote the payload: sealed at rest, kept out of the log.
                let reason = if encrypted {
                    "(sealed with the message)"
                } else {
                    reason.as_str()
                };
                tracing::warn!(queue = %q, message_id = %id, reason, "moved to the dead-letter queue");
                self.metrics.count("dead_lettered", &q.app, 1);
            }
            // It stays in the queue and is tried again on a later lease.
            Err(e) => {
                tracing::warn!(queue = %q, message_id = %id, error = %e, "dead-lettering failed")
            }
        }
    }

    pub(crate) async fn ack(
        &self,
        app: &str,
        leases: Vec<String>,
    ) -> Result<AckResponse, QueueError> {
        if leases.is_empty() || leases.len() > MAX_BATCH {
            return Err(QueueError::Invalid(format!(
                "an ack carries 1 to {MAX_BATCH} leases, not {}",
                leases.len()
            )));
        }
        let refs = leases
            .iter()
            .map(|l| LeaseRef::decode(l))
            .collect::<Result<Vec<_>, _>>()?;
        // One backend call per queue part.
        let mut groups: HashMap<(String, Part), Vec<usize>> = HashMap::new();
        for (i, r) in refs.iter().enumerate() {
            groups.entry((r.queue.clone(), r.part)).or_default().push(i);
        }
        let mut response = AckResponse {
            acked: 0,
            failed: Vec::new(),
        };
        for ((queue, part), indices) in groups {
            let q = Self::queue_id(app, &queue)?;
            self.config(&q).await?;
            let handles = indices.iter().map(|&i| refs[i].handle.clone()).collect();
            let results = self.backend.0.ack(&q, part, handles).await?;
            for (&i, result) in indices.iter().zip(results) {
                match result {
                    Ok(()) => response.acked += 1,
                    Err(e) => response.failed.push(AckFailure {
                        lease_id: leases[i].clone(),
                        error: QueueError::from(e).to_string(),
                    }),
                }
            }
        }
        self.metrics.count("acked", app, response.acked);
        Ok(response)
    }

    /// Acknowledges one lease: an error when it is not held.
    pub(crate) async fn ack_one(&self, app: &str, lease: String) -> Result<(), QueueError> {
        let r = LeaseRef::decode(&lease)?;
        let q = Self::queue_id(app, &r.queue)?;
        self.config(&q).await?;
        let result = self.backend.0.ack(&q, r.part, vec![r.handle]).await?;
        match result.into_iter().next() {
            Some(Err(e)) => Err(e.into()),
            _ => {
                self.metrics.count("acked", app, 1);
                Ok(())
            }
        }
    }

    pub(crate) async fn rollback(
        &self,
        app: &str,
        lease: &str,
        error: Option<String>,
    ) -> Result<(), QueueError> {
        let r = LeaseRef::decode(lease)?;
        let q = Self::queue_id(app, &r.queue)?;
        self.config(&q).await?;
        let error = error.map(|e| e.chars().take(1024).collect::<String>());
        // The error may quote the payload (a key in a URL, a validation
        // message): in an encrypted queue it is sealed like the body.
        let error = match (error, self.config(&q).await?.encrypted) {
            (Some(e), true) => Some(self.seal_error(&q, &r.id, &e)),
            (e, _) => e,
        };
        // A dead letter given back is visible at once: the back-off is for retries.
        let delay = match r.part {
            Part::Main => self.settings.backoff(r.deliveries),
            Part::Dead => Duration::ZERO,
        };
        self.backend
            .0
            .release(&q, r.part, &r.handle, &r.id, delay, error)
            .await?;
        self.metrics.count("rolled_back", app, 1);
        Ok(())
    }

    pub(crate) async fn extend(
        &self,
        app: &str,
        lease: &str,
        lock: Duration,
    ) -> Result<(), QueueError> {
        let r = LeaseRef::decode(lease)?;
        let q = Self::queue_id(app, &r.queue)?;
        self.config(&q).await?;
        self.backend.0.extend(&q, r.part, &r.handle, lock).await?;
        Ok(())
    }

    pub(crate) async fn redrive(&self, q: &QueueId) -> Result<u64, QueueError> {
        self.config(q).await?;
        let moved = self.backend.0.redrive(q).await?;
        self.metrics.count("redriven", &q.app, moved as usize);
        Ok(moved)
    }

    pub(crate) async fn purge(&self, q: &QueueId) -> Result<(), QueueError> {
        self.config(q).await?;
        self.backend.0.purge(q).await?;
        Ok(())
    }

    pub(crate) async fn stats(&self, q: &QueueId) -> Result<QueueStats, QueueError> {
        let config = self.config(q).await?;
        self.stats_with(q, config).await
    }

    async fn stats_with(&self, q: &QueueId, config: QueueConfig) -> Result<QueueStats, QueueError> {
        let counts = self.backend.0.counts(q).await?;
        Ok(QueueStats {
            name: q.queue.clone(),
            encrypted: config.encrypted,
            max_deliveries: config.max_deliveries,
            depth: counts.visible,
            in_flight: counts.invisible,
            dlq_depth: counts.dead,
            oldest_age_ms: counts
                .oldest_enqueued_ms
                .map(|t| now_ms().saturating_sub(t)),
        })
    }

    pub(crate) async fn list(&self, app: &str) -> Result<Vec<QueueStats>, QueueError> {
        validate_app_id(app)?;
        let mut out = Vec::new();
        for (name, config) in self.backend.0.list(app).await? {
            let q = Self::queue_id(app, &name)?;
            self.remember(&q, config);
            out.push(self.stats_with(&q, config).await?);
        }
        Ok(out)
    }

    /// Forgets an app: records its tombstone (durably, then here, so its
    /// tokens are refused from now on), waits for its requests already
    /// admitted, then deletes every queue it had. Idempotent: a call that
    /// failed part-way is finished by the next.
    pub(crate) async fn forget(&self, app: &str) -> Result<(), QueueError> {
        validate_app_id(app)?;
        self.backend.0.bury(app).await?;
        self.tombstones.bury(app);
        if !self.tombstones.drained(app, DRAIN_LIMIT).await {
            return Err(QueueError::Unavailable(format!(
                "requests of app {app} admitted before its deletion are still running; retry"
            )));
        }
        self.backend.0.purge_app(app).await?;
        self.configs
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|q, _| q.app != app);
        tracing::info!(
            app,
            "app forgotten: tombstone recorded, every queue deleted"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_ids_round_trip_and_refuse_garbage() {
        let lease = LeaseRef {
            queue: "orders.v2".into(),
            part: Part::Dead,
            id: "0190-abc".into(),
            deliveries: 3,
            handle: "AQEB|with+pipes/and=".into(),
        };
        assert_eq!(LeaseRef::decode(&lease.encode()).unwrap(), lease);
        for bad in [
            "",
            "!!!",
            &B64URL.encode("l1|x|q|id|1|h"),
            &B64URL.encode("l1|m|a/b|id|1|h"),
        ] {
            assert!(LeaseRef::decode(bad).is_err(), "{bad}");
        }
    }
}
