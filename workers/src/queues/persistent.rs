//! Persistent queues: the app's queues in queue-svc, shared by all its
//! workers, with zero message loss and at-least-once delivery.
//!
//! A message body wraps the payload with the correlation id
//! ([`MessageBody`]), so a flow on another worker continues the same trace.
//! A consumer leases only for its free slots; each lease's lock is extended
//! while its flow runs.

use common::backoff::Backoff;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use common::shutdown::Shutdown;
use queue_svc::api::QueueSpec;
use queue_svc::client::{Acker, Client, ClientError, Lease, LeaseOptions, Publisher};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::Semaphore;

use crate::error::{ErrorType, FlowError};
use crate::event::payload_from_bytes;

/// How long a leased message stays locked without a heartbeat, by default:
/// the time a dead worker's messages wait before another worker gets them.
pub const DEFAULT_LOCK: Duration = Duration::from_secs(30);

/// How long one lease call waits for messages. Short, so that a worker told
/// to stop has no poll outstanding for long: what a poll brings after the
/// stop is rolled back at once.
const LEASE_WAIT: Duration = Duration::from_secs(2);

/// What travels in a persistent queue's message body.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MessageBody {
    payload: Value,
    correlation_id: String,
}

/// Reads a message body: the worker's [`MessageBody`], or (published by anyone
/// else through the API) the body itself as a payload with no correlation id.
pub(super) fn decode(body: &str) -> (Value, Option<String>) {
    match serde_json::from_str::<MessageBody>(body) {
        Ok(m) => (m.payload, Some(m.correlation_id)),
        Err(_) => (payload_from_bytes(body.as_bytes()), None),
    }
}

fn queue_error(queue: &str, e: ClientError) -> FlowError {
    let mut err = FlowError::new(ErrorType::Queue, format!("queue {queue:?}: {e}"));
    if e.status() == Some(413) {
        err.status = Some(axum::http::StatusCode::PAYLOAD_TOO_LARGE);
    }
    err
}

/// The app's queues in queue-svc. Cheap to clone.
#[derive(Clone)]
pub(super) struct PersistentQueues {
    client: Client,
    publishers: HashMap<String, Publisher>,
    acker: Acker,
    lock: Duration,
    encrypted: bool,
}

impl PersistentQueues {
    /// Declares each `(queue, max deliveries)` (sealed at rest when `encrypted`)
    /// and makes a batching publisher for it. Retries until queue-svc answers
    /// or `give_up` passes; must run inside a Tokio runtime.
    pub(super) async fn declare(
        client: Client,
        queues: &[(String, u32)],
        encrypted: bool,
        give_up: Duration,
    ) -> Result<Self, ClientError> {
        let mut publishers = HashMap::new();
        // `give_up` is for all the queues together, not for each.
        let deadline = std::time::Instant::now() + give_up;
        for (name, max_deliveries) in queues {
            let spec = QueueSpec {
                encrypted,
                max_deliveries: Some(*max_deliveries),
            };
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            crate::until_answered("queue-svc", left, ClientError::status, || {
                client.declare(name, &spec)
            })
            .await?;
            publishers.insert(name.clone(), client.publisher(name));
        }
        Ok(PersistentQueues {
            acker: client.acker(),
            client,
            publishers,
            lock: DEFAULT_LOCK,
            encrypted,
        })
    }

    /// Leased messages stay locked this long without a heartbeat.
    pub(super) fn with_lock(mut self, lock: Duration) -> Self {
        self.lock = lock;
        self
    }

    /// A failed flow's error as it may be told, in the log and to
    /// queue-svc: for a queue sealed at rest only its type, since the text
    /// may quote the payload.
    pub(super) fn reportable(&self, err: &FlowError) -> String {
        if self.encrypted {
            format!(
                "{}: (the message is redacted; the queue is encrypted)",
                err.kind.name()
            )
        } else {
            err.to_string()
        }
    }

    /// Acknowledges a lease; concurrent acks share calls of up to ten.
    pub(super) async fn ack(&self, lease: Lease) -> Result<(), ClientError> {
        self.acker.ack(lease).await
    }

    /// Publishes `payload` to `queue`; its id once queue-svc has stored it.
    pub(super) async fn publish(
        &self,
        queue: &str,
        payload: Value,
        correlation_id: String,
    ) -> Result<String, FlowError> {
        let publisher = self
            .publishers
            .get(queue)
            .ok_or_else(|| FlowError::no_queue(queue))?;
        let body = serde_json::to_string(&MessageBody {
            payload,
            correlation_id,
        })
        .unwrap_or_default();
        publisher
            .publish(body)
            .await
            .map_err(|e| queue_error(queue, e))
    }

    /// Starts the consumers of `queue`, which hand each lease to `handle` on
    /// a task of its own, at most `concurrency` at once. They lease only as
    /// many messages as there are free slots, so nothing waits locked in
    /// the worker while its lock runs down; but slots freed while one lease
    /// call is out need not wait for it: [`pollers`] calls lease at once,
    /// each for up to a batch of the free slots.
    pub(super) fn consume<H, F>(
        &self,
        queue: &str,
        concurrency: usize,
        shutdown: &Shutdown,
        handle: H,
    ) where
        H: Fn(Lease) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        let slots = Arc::new(Semaphore::new(concurrency));
        for _ in 0..pollers(concurrency) {
            let (queues, queue, sd) = (self.clone(), queue.to_string(), shutdown.clone());
            let (slots, handle) = (slots.clone(), handle.clone());
            shutdown.spawn("queue-consumer", async move {
                queues.lease_for_slots(queue, slots, sd, handle).await;
                Ok::<_, std::convert::Infallible>(())
            });
        }
    }

    async fn lease_for_slots<H, F>(
        self,
        queue: String,
        slots: Arc<Semaphore>,
        shutdown: Shutdown,
        handle: H,
    ) where
        H: Fn(Lease) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        while !shutdown.is_triggered() {
            let first = tokio::select! {
                () = shutdown.triggered() => return,
                permit = slots.clone().acquire_owned() => match permit {
                    Ok(p) => p,
                    Err(_) => return,
                },
            };
            let mut permits = vec![first];
            while permits.len() < queue_svc::api::MAX_BATCH {
                match slots.clone().try_acquire_owned() {
                    Ok(p) => permits.push(p),
                    Err(_) => break,
                }
            }
            let opts = LeaseOptions {
                max: permits.len(),
                wait: LEASE_WAIT,
                lock: self.lock,
            };
            // Not raced against shutdown: a poll dropped half-way would leave
            // its messages locked for the whole lock time.
            let leases = match self.client.lease_held(&queue, opts).await {
                Ok(l) => {
                    backoff.reset();
                    l
                }
                Err(e) => {
                    tracing::warn!(queue, error = %e, "leasing failed; retrying");
                    tokio::select! {
                        () = shutdown.triggered() => return,
                        () = tokio::time::sleep(backoff.next_delay()) => {}
                    }
                    continue;
                }
            };
            for (lease, permit) in leases.into_iter().zip(permits) {
                if shutdown.is_triggered() {
                    if let Err(e) = lease.rollback(Some("worker stopping")).await {
                        tracing::warn!(queue, error = %e, "rollback at stop failed; delivered again after its lock");
                    }
                    continue;
                }
                let handle = handle.clone();
                shutdown.spawn("queue-message", async move {
                    handle(lease).await;
                    drop(permit);
                    Ok::<_, std::convert::Infallible>(())
                });
            }
        }
    }
}

/// Most lease calls one consumer has out at once.
const MAX_POLLERS: usize = 4;

/// How many lease calls a consumer of `concurrency` slots keeps out at once:
/// one per batch of slots, at most [`MAX_POLLERS`]. While one call is out
/// (each is a durable write in queue-svc, a millisecond or two), the slots
/// freed meanwhile are leased by the next; the calls out together share one
/// commit there.
fn pollers(concurrency: usize) -> usize {
    concurrency
        .div_ceil(queue_svc::api::MAX_BATCH)
        .clamp(1, MAX_POLLERS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bodies_from_workers_and_from_anyone() {
        let body = serde_json::to_string(&MessageBody {
            payload: json!({"a": 1}),
            correlation_id: "c-1".into(),
        })
        .unwrap();
        assert_eq!(decode(&body), (json!({"a": 1}), Some("c-1".into())));
        assert_eq!(decode("{\"orderId\": 7}"), (json!({"orderId": 7}), None));
        assert_eq!(decode("plain"), (json!("plain"), None));
    }

    #[test]
    fn a_lease_call_per_batch_of_slots_at_most_four() {
        assert_eq!(pollers(1), 1);
        assert_eq!(pollers(10), 1);
        assert_eq!(pollers(11), 2);
        assert_eq!(pollers(64), MAX_POLLERS);
        assert_eq!(pollers(1024), MAX_POLLERS);
    }
}
