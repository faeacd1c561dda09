//! Persistent queues: the app's queues in queue-svc, shared by all its
//! workers, with zero message loss and at-least-once delivery.
//!
//! A message body wraps the payload with the correlation id
//! ([`MessageBody`]), so a flow on another worker continues the same trace.

use std::collections::HashMap;
use std::time::Duration;

use queue_svc::api::QueueSpec;
use queue_svc::client::{Acker, Client, ClientError, Lease, Publisher};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{ErrorType, FlowError};
use crate::event::payload_from_bytes;

/// How long a leased message stays locked without a heartbeat, by default:
/// the time a dead worker's messages wait before another worker gets them.
pub const DEFAULT_LOCK: Duration = Duration::from_secs(30);

/// What travels in a persistent queue's message body.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MessageBody {
    payload: Value,
    correlation_id: String,
}

/// Reads a message body: the worker's [`MessageBody`], or (published by anyone
/// else through the API) the body itself as a payload with no correlation id.
pub fn decode(body: &str) -> (Value, Option<String>) {
    match serde_json::from_str::<MessageBody>(body) {
        Ok(e) => (e.payload, Some(e.correlation_id)),
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
pub struct PersistentQueues {
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
    pub async fn declare(
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
    pub fn with_lock(mut self, lock: Duration) -> Self {
        self.lock = lock;
        self
    }

    /// Whether messages are sealed at rest: then no payload text may reach
    /// a log or the queue in the clear, error texts (which may quote it)
    /// included.
    pub fn encrypted(&self) -> bool {
        self.encrypted
    }

    /// The client, for consumers.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Acknowledges a lease; concurrent acks share calls of up to ten.
    pub async fn ack(&self, lease: Lease) -> Result<(), ClientError> {
        self.acker.ack(lease).await
    }

    /// How long a leased message stays locked without a heartbeat.
    pub fn lock(&self) -> Duration {
        self.lock
    }

    /// Publishes `payload` to `queue`; its id once queue-svc has stored it.
    pub async fn publish(
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
}
