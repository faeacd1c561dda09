//! Transient queues: bounded, in this worker's memory, not shared, lost with the worker.
//!
//! This is the documented trade-off of running an app without persistent
//! queues: fast and free, but a message in a worker that dies is gone. A full
//! queue pushes back on its publishers rather than growing; a rolled-back
//! message goes to the back of its queue after a back-off.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::shutdown::Shutdown;
use serde_json::Value;
use tokio::sync::{Mutex, mpsc};

use crate::error::{ErrorType, FlowError};

/// How long a publish waits for room in a full queue before failing with `QUEUE`.
const PUBLISH_WAIT: Duration = Duration::from_secs(5);

/// Back-off before a rolled-back message is delivered again: 100 ms doubling, at most 5 s.
fn backoff(deliveries: u32) -> Duration {
    let ms = 100u64.saturating_mul(1 << deliveries.saturating_sub(1).min(6));
    Duration::from_millis(ms.min(5_000))
}

/// One message in a transient queue.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Message {
    /// Unique within the worker.
    pub id: String,
    /// The body.
    pub payload: Value,
    /// The publishing event's correlation id.
    pub correlation_id: String,
    /// Deliveries so far (1 on the first).
    pub deliveries: u32,
}

struct Queue {
    tx: mpsc::Sender<Message>,
    rx: Mutex<mpsc::Receiver<Message>>,
    dead: std::sync::Mutex<Vec<Message>>,
}

/// The app's transient queues in this worker. Cheap to clone.
#[derive(Clone)]
pub(super) struct TransientQueues {
    queues: Arc<HashMap<String, Queue>>,
    next_id: Arc<AtomicU64>,
    dead_letter_cap: usize,
}

impl TransientQueues {
    /// One queue per name, each holding at most `capacity` messages.
    pub(super) fn new<'a>(names: impl IntoIterator<Item = &'a str>, capacity: usize) -> Self {
        let queues = names
            .into_iter()
            .map(|name| {
                let (tx, rx) = mpsc::channel(capacity.max(1));
                let q = Queue {
                    tx,
                    rx: Mutex::new(rx),
                    dead: std::sync::Mutex::new(Vec::new()),
                };
                (name.to_string(), q)
            })
            .collect();
        TransientQueues {
            queues: Arc::new(queues),
            next_id: Arc::new(AtomicU64::new(1)),
            dead_letter_cap: capacity.max(1),
        }
    }

    fn queue(&self, name: &str) -> Result<&Queue, FlowError> {
        self.queues
            .get(name)
            .ok_or_else(|| FlowError::no_queue(name))
    }

    /// Publishes a message, waiting up to [`PUBLISH_WAIT`] for room.
    pub(super) async fn publish(
        &self,
        queue: &str,
        payload: Value,
        correlation_id: String,
    ) -> Result<String, FlowError> {
        let q = self.queue(queue)?;
        let id = format!("m-{}", self.next_id.fetch_add(1, Ordering::Relaxed));
        let msg = Message {
            id: id.clone(),
            payload,
            correlation_id,
            deliveries: 0,
        };
        match tokio::time::timeout(PUBLISH_WAIT, q.tx.send(msg)).await {
            Ok(Ok(())) => Ok(id),
            Ok(Err(_)) => Err(FlowError::new(
                ErrorType::Queue,
                format!("queue {queue:?} is closed"),
            )),
            Err(_) => Err(FlowError::new(
                ErrorType::Queue,
                format!("queue {queue:?} is full"),
            )),
        }
    }

    /// Starts `concurrency` consumers of `queue`, each taking the next
    /// message and running `handle` on it, until shutdown.
    pub(super) fn consume<H, F>(
        &self,
        queue: &str,
        concurrency: usize,
        shutdown: &Shutdown,
        handle: H,
    ) where
        H: Fn(Message) -> F + Clone + Send + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        for _ in 0..concurrency {
            let (queues, queue, sd, handle) = (
                self.clone(),
                queue.to_string(),
                shutdown.clone(),
                handle.clone(),
            );
            shutdown.spawn("queue-consumer", async move {
                loop {
                    let msg = tokio::select! {
                        () = sd.triggered() => break,
                        msg = queues.take(&queue) => match msg {
                            Some(m) => m,
                            None => break,
                        },
                    };
                    handle(msg).await;
                }
                Ok::<_, std::convert::Infallible>(())
            });
        }
    }

    /// Takes the next message, counting the delivery; `None` once the queue is closed.
    async fn take(&self, queue: &str) -> Option<Message> {
        let q = self.queues.get(queue)?;
        let mut msg = q.rx.lock().await.recv().await?;
        msg.deliveries += 1;
        Some(msg)
    }

    /// Puts a message that failed back at the end of its queue after its
    /// [`backoff`], without waiting for that.
    pub(super) fn redeliver_later(&self, queue: &str, msg: Message) {
        let (queues, queue) = (self.clone(), queue.to_string());
        tokio::spawn(async move {
            tokio::time::sleep(backoff(msg.deliveries)).await;
            if let Err(e) = queues.redeliver(&queue, msg).await {
                tracing::error!(queue, error = %e, "could not redeliver; message lost with the worker's memory");
            }
        });
    }

    /// Puts a message that failed back at the end of its queue.
    async fn redeliver(&self, queue: &str, msg: Message) -> Result<(), FlowError> {
        let q = self.queue(queue)?;
        q.tx.send(msg)
            .await
            .map_err(|_| FlowError::new(ErrorType::Queue, format!("queue {queue:?} is closed")))
    }

    /// Moves a message to the queue's dead letters (the oldest are dropped past capacity).
    pub(super) fn dead_letter(&self, queue: &str, msg: Message) {
        if let Ok(q) = self.queue(queue) {
            let mut dead = q.dead.lock().unwrap_or_else(|p| p.into_inner());
            if dead.len() >= self.dead_letter_cap {
                dead.remove(0);
            }
            dead.push(msg);
        }
    }

    /// Messages waiting in `queue`, and messages in its dead letters.
    #[cfg(test)]
    fn depth(&self, queue: &str) -> Option<(usize, usize)> {
        let q = self.queues.get(queue)?;
        let dead = q.dead.lock().unwrap_or_else(|p| p.into_inner()).len();
        Some((q.tx.max_capacity() - q.tx.capacity(), dead))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn fifo_with_delivery_counts_and_dead_letters() {
        let qs = TransientQueues::new(["q"], 4);
        qs.publish("q", json!(1), "c".into()).await.unwrap();
        qs.publish("q", json!(2), "c".into()).await.unwrap();
        assert_eq!(qs.depth("q"), Some((2, 0)));
        let first = qs.take("q").await.unwrap();
        assert_eq!((first.payload.clone(), first.deliveries), (json!(1), 1));
        qs.redeliver("q", first).await.unwrap();
        assert_eq!(qs.take("q").await.unwrap().payload, json!(2));
        let again = qs.take("q").await.unwrap();
        assert_eq!((again.payload.clone(), again.deliveries), (json!(1), 2));
        qs.dead_letter("q", again);
        assert_eq!(qs.depth("q"), Some((0, 1)));
        assert!(qs.publish("nope", json!(0), "c".into()).await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_pushes_back() {
        let qs = TransientQueues::new(["q"], 1);
        qs.publish("q", json!(1), "c".into()).await.unwrap();
        let err = qs.publish("q", json!(2), "c".into()).await.unwrap_err();
        assert_eq!(err.kind, ErrorType::Queue);
        assert!(err.message.contains("full"));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(1), Duration::from_millis(100));
        assert_eq!(backoff(2), Duration::from_millis(200));
        assert_eq!(backoff(4), Duration::from_millis(800));
        assert_eq!(backoff(50), Duration::from_millis(5_000));
    }
}
