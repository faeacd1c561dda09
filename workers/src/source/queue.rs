//! The queue source: transactional consumers of one of the app's queues.
//!
//! A message is acked only when its flow finishes; any error rolls it back for
//! another delivery after a back-off, and after `max-deliveries` it goes to the
//! queue's dead letters. Transient queues do this in the worker's memory;
//! persistent ones through queue-svc leases, whose lock is extended while the
//! flow runs.

use std::sync::Arc;
use std::time::Duration;

use common::shutdown::Shutdown;
use common::telemetry::EventKind;
use queue_svc::client::{Lease, LeaseOptions};
use serde_json::json;
use tokio::sync::Semaphore;

use crate::engine::Engine;
use crate::event::Event;
use crate::manifest::{Flow, Source};
use crate::metrics::MessageOutcome;
use crate::queues::{Message, Queues, TransientQueues};

/// How long one lease call waits for messages. Short, so that a worker told
/// to stop has no poll outstanding for long: what a poll brings after the
/// stop is rolled back at once.
const LEASE_WAIT: Duration = Duration::from_secs(2);

/// Back-off before a rolled-back message is delivered again: 100 ms doubling, at most 5 s.
pub fn backoff(deliveries: u32) -> Duration {
    let ms = 100u64.saturating_mul(1 << deliveries.saturating_sub(1).min(6));
    Duration::from_millis(ms.min(5_000))
}

/// Starts the consumers of every queue-sourced flow: `concurrency` messages
/// of each at once.
pub fn start(engine: &Arc<Engine>, shutdown: &Shutdown) {
    for flow in &engine.app().flows {
        let Some(Source::Queue {
            name, concurrency, ..
        }) = &flow.source
        else {
            continue;
        };
        match engine.queues() {
            Queues::Transient(queues) => {
                for _ in 0..*concurrency {
                    let (engine, flow, queues, queue, sd) = (
                        engine.clone(),
                        flow.clone(),
                        queues.clone(),
                        name.clone(),
                        shutdown.clone(),
                    );
                    shutdown.spawn("queue-consumer", async move {
                        consume(engine, flow, queues, queue, sd).await;
                        Ok::<_, std::convert::Infallible>(())
                    });
                }
            }
            Queues::Persistent(_) => {
                let (engine, flow, queue, sd) =
                    (engine.clone(), flow.clone(), name.clone(), shutdown.clone());
                let concurrency = *concurrency;
                shutdown.spawn("queue-consumer", async move {
                    consume_leases(engine, flow, queue, concurrency, sd).await;
                    Ok::<_, std::convert::Infallible>(())
                });
            }
        }
    }
}

/// Leases only as many messages as there are free slots, so nothing waits
/// locked in the worker while its lock runs down.
async fn consume_leases(
    engine: Arc<Engine>,
    flow: Arc<Flow>,
    queue: String,
    concurrency: usize,
    shutdown: Shutdown,
) {
    let Queues::Persistent(queues) = engine.queues() else {
        return;
    };
    let (client, lock) = (queues.client().clone(), queues.lock());
    let slots = Arc::new(Semaphore::new(concurrency));
    let mut backoff = Duration::from_millis(100);
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
            lock,
        };
        // Not raced against shutdown: a poll dropped half-way would leave
        // its messages locked for the whole lock time.
        let leases = match client.lease_held(&queue, opts).await {
            Ok(l) => {
                backoff = Duration::from_millis(100);
                l
            }
            Err(e) => {
                tracing::warn!(queue, error = %e, "leasing failed; retrying");
                tokio::select! {
                    () = shutdown.triggered() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
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
            let (engine, flow, queue) = (engine.clone(), flow.clone(), queue.clone());
            shutdown.spawn("queue-message", async move {
                process_lease(&engine, &flow, &queue, lease).await;
                drop(permit);
                Ok::<_, std::convert::Infallible>(())
            });
        }
    }
}

async fn process_lease(engine: &Engine, flow: &Flow, queue: &str, lease: Lease) {
    let (Some(Source::Queue { max_deliveries, .. }), Queues::Persistent(queues)) =
        (&flow.source, engine.queues())
    else {
        return;
    };
    let max_deliveries = *max_deliveries;
    let msg = lease.message();
    let (payload, correlation_id) = crate::persistent::decode(&msg.body);
    let mut event = Event::new(
        payload,
        json!({ "queue": queue, "messageId": msg.id, "deliveryCount": msg.delivery_count }),
    );
    if let Some(c) = correlation_id {
        event.correlation_id = c;
    }
    event.id = msg.id.clone();
    let (id, deliveries) = (msg.id.clone(), msg.delivery_count);
    match engine.run(flow, event).await {
        Ok(_) => {
            engine
                .metrics()
                .message(&flow.name, MessageOutcome::Processed);
            if let Err(e) = queues.ack(lease).await {
                // The flow's effects stand; the message comes back after its
                // lock, and `idempotent` is what makes that harmless.
                tracing::warn!(kind = EventKind::DeliveryAckFailed.as_str(), queue, message_id = %id, deliveries, error = %e, "ack failed; the message will be delivered again");
            }
        }
        Err(err) => {
            // An error's text may quote the payload: for a queue sealed at
            // rest only its type goes to the log and back to queue-svc.
            let text = if queues.encrypted() {
                format!(
                    "{}: (the message is redacted; the queue is encrypted)",
                    err.kind.name()
                )
            } else {
                err.to_string()
            };
            let outcome = if deliveries >= max_deliveries {
                tracing::warn!(kind = EventKind::DeliveryDeadLettered.as_str(), queue, message_id = %id, deliveries, error = %text, "dead-lettered");
                MessageOutcome::DeadLettered
            } else {
                tracing::info!(kind = EventKind::DeliveryRolledBack.as_str(), queue, message_id = %id, deliveries, error = %text, "rolled back");
                MessageOutcome::RolledBack
            };
            engine.metrics().message(&flow.name, outcome);
            if let Err(e) = lease.rollback(Some(&text)).await {
                tracing::warn!(queue, message_id = %id, error = %e, "rollback failed; delivered again after its lock");
            }
        }
    }
}

async fn consume(
    engine: Arc<Engine>,
    flow: Arc<Flow>,
    queues: TransientQueues,
    queue: String,
    shutdown: Shutdown,
) {
    let Some(Source::Queue { max_deliveries, .. }) = flow.source else {
        return;
    };
    loop {
        let msg = tokio::select! {
            () = shutdown.triggered() => return,
            msg = queues.take(&queue) => match msg {
                Some(m) => m,
                None => return,
            },
        };
        process(&engine, &flow, &queues, &queue, max_deliveries, msg).await;
    }
}

async fn process(
    engine: &Arc<Engine>,
    flow: &Flow,
    queues: &TransientQueues,
    queue: &str,
    max_deliveries: u32,
    msg: Message,
) {
    let mut event = Event::new(
        msg.payload.clone(),
        json!({ "queue": queue, "messageId": msg.id, "deliveryCount": msg.deliveries }),
    );
    event.correlation_id = msg.correlation_id.clone();
    event.id = msg.id.clone();
    let Err(err) = engine.run(flow, event).await else {
        engine
            .metrics()
            .message(&flow.name, MessageOutcome::Processed);
        return;
    };
    if msg.deliveries >= max_deliveries {
        tracing::warn!(kind = EventKind::DeliveryDeadLettered.as_str(), queue, message_id = %msg.id, deliveries = msg.deliveries, error = %err, "dead-lettered");
        engine
            .metrics()
            .message(&flow.name, MessageOutcome::DeadLettered);
        queues.dead_letter(queue, msg);
        return;
    }
    tracing::info!(kind = EventKind::DeliveryRolledBack.as_str(), queue, message_id = %msg.id, deliveries = msg.deliveries, error = %err, "rolled back");
    engine
        .metrics()
        .message(&flow.name, MessageOutcome::RolledBack);
    let (queues, queue) = (queues.clone(), queue.to_string());
    tokio::spawn(async move {
        tokio::time::sleep(backoff(msg.deliveries)).await;
        if let Err(e) = queues.redeliver(&queue, msg).await {
            tracing::error!(queue, error = %e, "could not redeliver; message lost with the worker's memory");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(1), Duration::from_millis(100));
        assert_eq!(backoff(2), Duration::from_millis(200));
        assert_eq!(backoff(4), Duration::from_millis(800));
        assert_eq!(backoff(50), Duration::from_millis(5_000));
    }
}
