//! The app's queues: the one way a worker publishes, leases, acks, rolls back
//! and reads messages, whether the queues are transient (in this worker's
//! memory) or persistent (in queue-svc).
//!
//! A consumer gets each message as an [`Event`] and a [`Delivery`] to settle
//! when its flow ends: [`Delivery::ack`] or [`Delivery::rollback`]. What
//! settling means (dead letters and back-off in memory, or a lease at
//! queue-svc), and what of a failure may be told, is each kind's own.

mod persistent;
mod transient;

use common::telemetry::EventKind;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use common::shutdown::Shutdown;
use queue_svc::client::{Client, ClientError, Lease};
use serde_json::{Value, json};

use crate::error::FlowError;
use crate::event::Event;
use crate::metrics::{MessageOutcome, Metrics};
use persistent::PersistentQueues;
use transient::{Message, TransientQueues};

pub use persistent::DEFAULT_LOCK;

/// The app's queues in this worker. Cheap to clone.
#[derive(Clone)]
pub struct Queues(Kind);

#[derive(Clone)]
enum Kind {
    /// In this worker's memory.
    Transient(TransientQueues),
    /// In queue-svc, shared by every worker of the app. Held once, since
    /// every delivery refers to it.
    Persistent(Arc<PersistentQueues>),
}

/// One flow's consumption of one queue, as its `queue` source says.
pub struct Consumer {
    /// The queue.
    pub queue: String,
    /// The flow each message starts: names it in the metrics.
    pub flow: Arc<str>,
    /// At most this many messages at once.
    pub concurrency: usize,
    /// The delivery on which a failed message is dead-lettered.
    pub max_deliveries: u32,
    /// Where each message's outcome is counted.
    pub metrics: Metrics,
}

impl Queues {
    /// In this worker's memory: one queue per name, each holding at most
    /// `capacity` messages.
    pub fn transient<'a>(names: impl IntoIterator<Item = &'a str>, capacity: usize) -> Self {
        Queues(Kind::Transient(TransientQueues::new(names, capacity)))
    }

    /// In queue-svc: declares each `(queue, max deliveries)` (sealed at rest
    /// when `encrypted`), retrying until queue-svc answers or `give_up`
    /// passes. A leased message stays locked for `lock` without a
    /// heartbeat. Must run inside a Tokio runtime.
    pub async fn persistent(
        client: Client,
        queues: &[(String, u32)],
        encrypted: bool,
        give_up: Duration,
        lock: Duration,
    ) -> Result<Self, ClientError> {
        let queues = PersistentQueues::declare(client, queues, encrypted, give_up).await?;
        Ok(Queues(Kind::Persistent(Arc::new(queues.with_lock(lock)))))
    }

    /// Publishes `payload` to `queue`; the message's id.
    pub async fn publish(
        &self,
        queue: &str,
        payload: Value,
        correlation_id: String,
    ) -> Result<String, FlowError> {
        match &self.0 {
            Kind::Transient(q) => q.publish(queue, payload, correlation_id).await,
            Kind::Persistent(q) => q.publish(queue, payload, correlation_id).await,
        }
    }

    /// Starts consuming `consumer.queue` until `shutdown`: each message is
    /// handed to `handle` as its event and the delivery to settle, at most
    /// `consumer.concurrency` at once.
    pub fn consume<H, F>(&self, consumer: Consumer, shutdown: &Shutdown, handle: H)
    where
        H: Fn(Event, Delivery) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        let consumer = Arc::new(consumer);
        let (queue, concurrency) = (consumer.queue.clone(), consumer.concurrency);
        match &self.0 {
            Kind::Transient(queues) => {
                let held = queues.clone();
                queues.consume(&queue, concurrency, shutdown, move |message| {
                    let (event, delivery) = Delivery::transient(&consumer, &held, message);
                    handle(event, delivery)
                });
            }
            Kind::Persistent(queues) => {
                let held = queues.clone();
                queues.consume(&queue, concurrency, shutdown, move |lease| {
                    let (event, delivery) = Delivery::persistent(&consumer, &held, lease);
                    handle(event, delivery)
                });
            }
        }
    }
}

/// One delivery of a message, to settle when its flow ends. Dropped
/// unsettled, a transient message is lost and a persistent one is delivered
/// again after its lock.
pub struct Delivery {
    consumer: Arc<Consumer>,
    id: String,
    deliveries: u32,
    held: Held,
}

/// What a delivery holds until it is settled.
enum Held {
    /// The message itself, to put back or dead-letter.
    Transient(TransientQueues, Message),
    /// The lease, whose lock is extended until it is acked or rolled back
    /// (boxed, so that a delivery stays small whichever kind it holds).
    Persistent(Arc<PersistentQueues>, Box<Lease>),
}

impl Delivery {
    fn transient(
        consumer: &Arc<Consumer>,
        queues: &TransientQueues,
        message: Message,
    ) -> (Event, Self) {
        let event = queue_event(
            &consumer.queue,
            &message.id,
            message.deliveries,
            message.payload.clone(),
            Some(message.correlation_id.clone()),
        );
        let delivery = Delivery {
            consumer: consumer.clone(),
            id: message.id.clone(),
            deliveries: message.deliveries,
            held: Held::Transient(queues.clone(), message),
        };
        (event, delivery)
    }

    fn persistent(
        consumer: &Arc<Consumer>,
        queues: &Arc<PersistentQueues>,
        lease: Lease,
    ) -> (Event, Self) {
        let msg = lease.message();
        let (payload, correlation_id) = persistent::decode(&msg.body);
        let event = queue_event(
            &consumer.queue,
            &msg.id,
            msg.delivery_count,
            payload,
            correlation_id,
        );
        let delivery = Delivery {
            consumer: consumer.clone(),
            id: msg.id.clone(),
            deliveries: msg.delivery_count,
            held: Held::Persistent(queues.clone(), Box::new(lease)),
        };
        (event, delivery)
    }

    /// The flow finished: the message is gone. A persistent ack that fails
    /// is logged; the flow's effects stand and the message comes back after
    /// its lock, which `idempotent` makes harmless.
    pub async fn ack(self) {
        let Delivery {
            consumer,
            id,
            deliveries,
            held,
        } = self;
        consumer
            .metrics
            .message(&consumer.flow, MessageOutcome::Processed);
        if let Held::Persistent(queues, lease) = held
            && let Err(e) = queues.ack(*lease).await
        {
            let queue = consumer.queue.as_str();
            tracing::warn!(kind = EventKind::DeliveryAckFailed.as_str(), queue, message_id = %id, deliveries, error = %e, "ack failed; the message will be delivered again");
        }
    }

    /// The flow failed with `err`: the message goes back for another
    /// delivery after a back-off, or to the dead letters on the last one.
    /// For a queue sealed at rest only the error's type reaches the log and
    /// queue-svc, since its text may quote the payload.
    pub async fn rollback(self, err: &FlowError) {
        let Delivery {
            consumer,
            id,
            deliveries,
            held,
        } = self;
        let text = match &held {
            Held::Transient(..) => err.to_string(),
            Held::Persistent(queues, _) => queues.reportable(err),
        };
        let queue = consumer.queue.as_str();
        let last = deliveries >= consumer.max_deliveries;
        let outcome = if last {
            tracing::warn!(kind = EventKind::DeliveryDeadLettered.as_str(), queue, message_id = %id, deliveries, error = %text, "dead-lettered");
            MessageOutcome::DeadLettered
        } else {
            tracing::info!(kind = EventKind::DeliveryRolledBack.as_str(), queue, message_id = %id, deliveries, error = %text, "rolled back");
            MessageOutcome::RolledBack
        };
        consumer.metrics.message(&consumer.flow, outcome);
        match held {
            Held::Transient(queues, message) if last => queues.dead_letter(queue, message),
            Held::Transient(queues, message) => queues.redeliver_later(queue, message),
            // queue-svc dead-letters on its own count, declared with the same limit.
            Held::Persistent(_, lease) => {
                if let Err(e) = lease.rollback(Some(&text)).await {
                    tracing::warn!(queue, message_id = %id, error = %e, "rollback failed; delivered again after its lock");
                }
            }
        }
    }
}

/// The event a queue message starts: its payload, with the queue, the
/// message's id and its delivery count as attributes, and the publisher's
/// correlation id when the message carries one.
fn queue_event(
    queue: &str,
    id: &str,
    deliveries: u32,
    payload: Value,
    correlation_id: Option<String>,
) -> Event {
    let mut event = Event::new(
        payload,
        json!({ "queue": queue, "messageId": id, "deliveryCount": deliveries }),
    );
    if let Some(c) = correlation_id {
        event.correlation_id = c;
    }
    event.id = id.to_string();
    event
}
