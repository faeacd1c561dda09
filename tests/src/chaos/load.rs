//! The load: clients POSTing unique orders through the load balancer at a
//! steady rate, never retrying, each answer recorded; every tenth accepted
//! order also published once more, straight to the queue.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;

use super::{Plan, QUEUE};

/// What a client saw for one order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// 202 Accepted.
    Accepted,
    /// Another status.
    Status(u16),
    /// No answer (connection refused or reset, timeout).
    NoAnswer,
}

/// The id of order `n` of run `run`.
pub(super) fn order_id(run: &str, n: usize) -> String {
    format!("{}{n}", order_prefix(run))
}

/// What every order id of run `run` starts with.
pub(super) fn order_prefix(run: &str) -> String {
    format!("c-{run}-")
}

/// What every card number of run `run` starts with: data that must never be
/// readable at rest.
pub(super) fn card_prefix(run: &str) -> String {
    format!("pii-{run}-")
}

/// The orders sent so far and what each got.
#[derive(Default)]
struct History {
    answers: Mutex<Vec<(usize, Answer)>>,
    resent: AtomicUsize,
    next: AtomicUsize,
    stop: AtomicBool,
}

/// What the clients did, once stopped.
pub(super) struct Sent {
    /// Each order's number and answer.
    pub(super) answers: Vec<(usize, Answer)>,
    /// Accepted orders published a second time as another message.
    pub(super) resent: usize,
}

/// The running clients.
pub(super) struct Load {
    history: Arc<History>,
    clients: Vec<JoinHandle<()>>,
}

impl Load {
    /// Starts `plan.clients` clients sharing `plan.rate`, posting to the
    /// load balancer at `proxy` and re-publishing through `queues`.
    pub(super) fn start(
        plan: &Plan,
        run: &str,
        proxy: &str,
        queues: &queue_svc::client::Client,
        http: &reqwest::Client,
    ) -> Self {
        let history = Arc::new(History::default());
        let every = Duration::from_secs_f64(plan.clients as f64 / f64::from(plan.rate.max(1)));
        let clients = (0..plan.clients)
            .map(|_| {
                tokio::spawn(client(
                    history.clone(),
                    http.clone(),
                    proxy.to_string(),
                    run.to_string(),
                    every,
                    queues.clone(),
                ))
            })
            .collect();
        Load { history, clients }
    }

    /// How many orders were sent so far.
    pub(super) fn sent(&self) -> usize {
        self.history.next.load(Ordering::SeqCst)
    }

    /// Lets the clients go on until `min_orders` were sent, then stops them.
    pub(super) async fn finish(self, min_orders: usize) -> Sent {
        while self.sent() < min_orders {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.history.stop.store(true, Ordering::SeqCst);
        for client in self.clients {
            client.await.expect("a client task");
        }
        Sent {
            answers: std::mem::take(&mut *self.history.answers.lock().expect("history")),
            resent: self.history.resent.load(Ordering::SeqCst),
        }
    }
}

/// One client: POSTs unique orders at its share of the rate until stopped,
/// never retrying, recording each answer.
///
/// Every tenth accepted order is also published once more, straight to the
/// app's queue as a second message: what a client re-sending after a lost
/// answer, or a queue delivering twice, produces. `idempotent` must stop it.
async fn client(
    history: Arc<History>,
    http: reqwest::Client,
    proxy: String,
    run: String,
    every: Duration,
    queues: queue_svc::client::Client,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !history.stop.load(Ordering::SeqCst) {
        tick.tick().await;
        let n = history.next.fetch_add(1, Ordering::SeqCst);
        let body = serde_json::json!({
            "orderId": order_id(&run, n),
            "n": n,
            "card": format!("{}{n}", card_prefix(&run)),
        });
        let answer = match http
            .post(format!("http://{proxy}/orders"))
            .header("host", "orders.fabric.localhost")
            .json(&body)
            .send()
            .await
        {
            Ok(r) if r.status() == 202 => Answer::Accepted,
            Ok(r) => Answer::Status(r.status().as_u16()),
            Err(_) => Answer::NoAnswer,
        };
        if answer == Answer::Accepted && n.is_multiple_of(10) {
            let again =
                serde_json::json!({"payload": body, "correlationId": format!("resent-{n}")});
            if queues
                .publish_batch(QUEUE, vec![again.to_string()])
                .await
                .is_ok()
            {
                history.resent.fetch_add(1, Ordering::SeqCst);
            }
        }
        history.answers.lock().expect("history").push((n, answer));
    }
}
