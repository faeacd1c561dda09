//! Concurrent calls that share one request: callers submit items one at a
//! time, and a task sends what has gathered as one batch.
//!
//! Items are sent as they come, up to `max` per call: what waits joins at
//! once, and while `in_flight` calls are out the next batch keeps gathering
//! until one returns. A lone item so waits for no timer, and a burst still
//! shares calls. Workers publish, acknowledge and write to the object store
//! this way (queue-svc's and objectstore-svc's clients).

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc, oneshot};

type Pending<I, O, E> = (I, oneshot::Sender<Result<O, E>>);

/// Submits items to the task that batches them. Cheap to clone; the task
/// ends when every clone is dropped.
#[derive(Debug)]
pub struct Coalescer<I, O, E> {
    tx: mpsc::Sender<Pending<I, O, E>>,
    stopped: fn() -> E,
}

impl<I, O, E> Clone for Coalescer<I, O, E> {
    fn clone(&self) -> Self {
        Coalescer {
            tx: self.tx.clone(),
            stopped: self.stopped,
        }
    }
}

/// How a [`Coalescer`] sends its batches.
pub struct Batching<F, S> {
    /// Most items one call carries.
    pub max: usize,
    /// Most calls out at once.
    pub in_flight: usize,
    /// Sends one batch; answers each item, in order, or fails the call.
    pub call: F,
    /// What each item of a failed call is answered: the call's error, once
    /// per item.
    pub share: S,
}

impl<I, O, E> Coalescer<I, O, E>
where
    I: Send + 'static,
    O: Send + 'static,
    E: Send + 'static,
{
    /// Starts the batching task (inside a Tokio runtime). `stopped` is the
    /// error an item gets when the task is gone.
    pub fn start<F, Fut, S>(batching: Batching<F, S>, stopped: fn() -> E) -> Self
    where
        F: Fn(Vec<I>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Vec<Result<O, E>>, E>> + Send + 'static,
        S: Fn(&E) -> E + Send + Sync + 'static,
    {
        let (tx, rx) = mpsc::channel(4 * batching.max.max(1));
        tokio::spawn(gather(rx, batching));
        Coalescer { tx, stopped }
    }

    /// Sends `item` with whatever else is waiting; its own answer.
    pub async fn submit(&self, item: I) -> Result<O, E> {
        let (done, result) = oneshot::channel();
        self.tx
            .send((item, done))
            .await
            .map_err(|_| (self.stopped)())?;
        result.await.map_err(|_| (self.stopped)())?
    }
}

async fn gather<I, O, E, F, Fut, S>(mut rx: mpsc::Receiver<Pending<I, O, E>>, b: Batching<F, S>)
where
    I: Send + 'static,
    O: Send + 'static,
    E: Send + 'static,
    F: Fn(Vec<I>) -> Fut,
    Fut: Future<Output = Result<Vec<Result<O, E>>, E>> + Send + 'static,
    S: Fn(&E) -> E + Send + Sync + 'static,
{
    let max = b.max.max(1);
    let share = Arc::new(b.share);
    let slots = Arc::new(Semaphore::new(b.in_flight.max(1)));
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < max {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let permit = loop {
            if batch.len() >= max {
                break slots.clone().acquire_owned().await;
            }
            tokio::select! {
                biased;
                permit = slots.clone().acquire_owned() => break permit,
                next = rx.recv() => match next {
                    Some(p) => batch.push(p),
                    None => break slots.clone().acquire_owned().await,
                },
            }
        };
        // The semaphore is never closed; a failure here would only mean no limit.
        let permit = permit.ok();
        let (items, waiters): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
        let sent = (b.call)(items);
        let share = share.clone();
        // Sent in its own task, so the next batch gathers meanwhile.
        tokio::spawn(async move {
            let result = sent.await;
            drop(permit);
            match result {
                Ok(answers) => {
                    for (w, answer) in waiters.into_iter().zip(answers) {
                        let _ = w.send(answer);
                    }
                }
                Err(e) => {
                    for w in waiters {
                        let _ = w.send(Err(share(&e)));
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn stopped() -> String {
        "stopped".into()
    }

    #[tokio::test]
    async fn a_burst_shares_calls_and_each_item_gets_its_own_answer() {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let seen = calls.clone();
        let c = Coalescer::start(
            Batching {
                max: 4,
                in_flight: 1,
                call: move |items: Vec<u32>| {
                    seen.lock().unwrap().push(items.len());
                    async move {
                        tokio::task::yield_now().await;
                        Ok(items
                            .into_iter()
                            .map(|i| {
                                if i == 3 {
                                    Err(format!("no {i}"))
                                } else {
                                    Ok(i * 10)
                                }
                            })
                            .collect())
                    }
                },
                share: String::clone,
            },
            stopped,
        );
        let answers = futures::future::join_all((0..10).map(|i| c.submit(i))).await;
        for (i, a) in answers.into_iter().enumerate() {
            if i == 3 {
                assert_eq!(a, Err("no 3".to_string()));
            } else {
                assert_eq!(a, Ok(i as u32 * 10));
            }
        }
        let calls = calls.lock().unwrap();
        assert_eq!(calls.iter().sum::<usize>(), 10);
        assert!(calls.iter().all(|&n| n <= 4), "{calls:?}");
        assert!(calls.len() < 10, "a burst shares calls: {calls:?}");
    }

    #[tokio::test]
    async fn a_failed_call_fails_each_of_its_items() {
        let c = Coalescer::start(
            Batching {
                max: 10,
                in_flight: 2,
                call: |_items: Vec<u32>| async {
                    Err::<Vec<Result<u32, String>>, _>("down".to_string())
                },
                share: String::clone,
            },
            stopped,
        );
        let answers = futures::future::join_all((0..3).map(|i| c.submit(i))).await;
        assert!(answers.iter().all(|a| a == &Err("down".to_string())));
    }
}
