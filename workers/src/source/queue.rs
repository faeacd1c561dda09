//! The queue source: transactional consumers of one of the app's queues.
//!
//! A message is acked only when its flow finishes; any error rolls it back for
//! another delivery after a back-off, and after `max-deliveries` it goes to the
//! queue's dead letters. How a message is leased, acked and rolled back is the
//! queues module's ([`crate::queues`]), the same here for both kinds.

use std::sync::Arc;

use common::shutdown::Shutdown;

use crate::engine::Engine;
use crate::manifest::Source;
use crate::queues::Consumer;

/// Starts the consumers of every queue-sourced flow: `concurrency` messages
/// of each at once.
pub fn start(engine: &Arc<Engine>, shutdown: &Shutdown) {
    for flow in &engine.app().flows {
        let Some(Source::Queue {
            name,
            concurrency,
            max_deliveries,
        }) = &flow.source
        else {
            continue;
        };
        let consumer = Consumer {
            queue: name.clone(),
            flow: flow.name.clone(),
            concurrency: *concurrency,
            max_deliveries: *max_deliveries,
            metrics: engine.metrics().clone(),
        };
        let (runner, flow) = (engine.clone(), flow.clone());
        engine
            .queues()
            .consume(consumer, shutdown, move |event, delivery| {
                let (engine, flow) = (runner.clone(), flow.clone());
                async move {
                    match engine.run(&flow, event).await {
                        Ok(_) => delivery.ack().await,
                        Err(err) => delivery.rollback(&err).await,
                    }
                }
            });
    }
}
