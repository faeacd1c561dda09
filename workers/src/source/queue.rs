//! The queue source: transactional consumers of one of the app's queues.
//!
//! A message is acked (dropped) only when its flow finishes; any error rolls it
//! back for another delivery after a back-off, and after `max-deliveries` it
//! goes to the queue's dead letters.

use std::sync::Arc;
use std::time::Duration;

use common::shutdown::Shutdown;
use serde_json::json;

use crate::engine::Engine;
use crate::event::Event;
use crate::manifest::{Flow, Source};
use crate::metrics::MessageOutcome;
use crate::queues::Message;

/// Back-off before a rolled-back message is delivered again: 100 ms doubling, at most 5 s.
pub fn backoff(deliveries: u32) -> Duration {
    let ms = 100u64.saturating_mul(1 << deliveries.saturating_sub(1).min(6));
    Duration::from_millis(ms.min(5_000))
}

/// Starts `concurrency` consumers for every queue-sourced flow.
pub fn start(engine: &Arc<Engine>, shutdown: &Shutdown) {
    for flow in &engine.app().flows {
        let Some(Source::Queue {
            name, concurrency, ..
        }) = &flow.source
        else {
            continue;
        };
        for _ in 0..*concurrency {
            let (engine, flow, queue, sd) =
                (engine.clone(), flow.clone(), name.clone(), shutdown.clone());
            shutdown.spawn("queue-consumer", async move {
                consume(engine, flow, queue, sd).await;
                Ok::<_, std::convert::Infallible>(())
            });
        }
    }
}

async fn consume(engine: Arc<Engine>, flow: Arc<Flow>, queue: String, shutdown: Shutdown) {
    let Some(Source::Queue { max_deliveries, .. }) = flow.source else {
        return;
    };
    loop {
        let msg = tokio::select! {
            () = shutdown.triggered() => return,
            msg = engine.queues().take(&queue) => match msg {
                Some(m) => m,
                None => return,
            },
        };
        process(&engine, &flow, &queue, max_deliveries, msg).await;
    }
}

async fn process(
    engine: &Arc<Engine>,
    flow: &Flow,
    queue: &str,
    max_deliveries: u32,
    msg: Message,
) {
    let mut event = Event::new(
        msg.payload.clone(),
        json!({ "queue": queue, "messageId": msg.id, "deliveryCount": msg.deliveries }),
    );
    event.correlation_id = msg.correlation_id.clone();
    let Err(err) = engine.run(flow, event).await else {
        engine
            .metrics()
            .message(&flow.name, MessageOutcome::Processed);
        return;
    };
    if msg.deliveries >= max_deliveries {
        tracing::warn!(queue, message = %msg.id, deliveries = msg.deliveries, error = %err, "dead-lettered");
        engine
            .metrics()
            .message(&flow.name, MessageOutcome::DeadLettered);
        engine.queues().dead_letter(queue, msg);
        return;
    }
    tracing::info!(queue, message = %msg.id, deliveries = msg.deliveries, error = %err, "rolled back");
    engine
        .metrics()
        .message(&flow.name, MessageOutcome::RolledBack);
    let (engine, queue) = (engine.clone(), queue.to_string());
    tokio::spawn(async move {
        tokio::time::sleep(backoff(msg.deliveries)).await;
        if let Err(e) = engine.queues().redeliver(&queue, msg).await {
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
