//! The app's queues in this worker: transient (in memory) or persistent (in queue-svc).

pub mod persistent;
pub mod transient;

use serde_json::Value;

use crate::error::FlowError;
use persistent::PersistentQueues;
use transient::TransientQueues;

/// The app's queues in this worker: transient, or persistent in queue-svc.
#[derive(Clone)]
pub enum Queues {
    /// In this worker's memory.
    Transient(TransientQueues),
    /// In queue-svc, shared by every worker of the app.
    Persistent(PersistentQueues),
}

impl Queues {
    /// Publishes `payload` to `queue`; the message's id.
    pub async fn publish(
        &self,
        queue: &str,
        payload: Value,
        correlation_id: String,
    ) -> Result<String, FlowError> {
        match self {
            Queues::Transient(q) => q.publish(queue, payload, correlation_id).await,
            Queues::Persistent(q) => q.publish(queue, payload, correlation_id).await,
        }
    }
}
