//! The client workers use: plain calls, a publisher that coalesces concurrent
//! publishes into batches, and a consumer whose leases keep their lock alive.

use std::collections::VecDeque;
use std::time::Duration;

use common::coalesce::{Batching, Coalescer};
use futures::Stream;
use reqwest::{Method, RequestBuilder, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api::{
    AckRequest, AckResponse, LeaseResponse, LeasedMessage, MAX_BATCH, NewMessage, PublishRequest,
    PublishResponse, QueueList, QueueSpec, QueueStats, RedriveResponse, RollbackRequest,
};

/// Publish calls a [`Publisher`] keeps in flight at once; while all are busy,
/// new publishes gather into the next batch.
pub const PUBLISH_CALLS_IN_FLIGHT: usize = 4;

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The service answered with an error.
    #[error("{status} {kind}: {message}")]
    Api {
        /// The HTTP status.
        status: u16,
        /// The error type (`VALIDATION`, `NOT_FOUND`, `LEASE_LOST`, ...).
        kind: String,
        /// The service's message.
        message: String,
    },
    /// The service could not be reached or answered nonsense.
    #[error("queue-svc: {0}")]
    Transport(String),
}

impl ClientError {
    /// The HTTP status, when the service answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            ClientError::Transport(_) => None,
        }
    }

    /// Whether the same call may succeed later: the service was not reached
    /// or did not answer in time, failed (5xx) or was busy (429). A refusal
    /// (any other 4xx) will be refused again.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Transport(_) => true,
            ClientError::Api { status, .. } => *status >= 500 || *status == 429,
        }
    }
}

/// How long [`forget_app`] waits for its answer: purging every queue of an
/// app can take a while on SQS.
pub const FORGET_TIMEOUT: Duration = Duration::from_secs(60);

/// Asks queue-svc at `base_url` to forget the deleted app `app_id`, with the
/// fabric's internal token: from the first moment its tokens are refused,
/// then every queue it had is deleted, DLQs included. `Ok` once all of it is
/// gone. Safe to repeat, and worth repeating while the error
/// [`is_retryable`](ClientError::is_retryable): the next call finishes the job.
pub async fn forget_app(
    base_url: &str,
    app_id: &str,
    internal_token: &str,
) -> Result<(), ClientError> {
    let mut url = reqwest::Url::parse(base_url)
        .map_err(|e| ClientError::Transport(format!("base URL {base_url:?}: {e}")))?;
    url.path_segments_mut()
        .map_err(|()| ClientError::Transport(format!("base URL {base_url:?} cannot be a base")))?
        .pop_if_empty()
        .extend(["v1", "apps", app_id]);
    let http = reqwest::Client::builder().timeout(FORGET_TIMEOUT).build()?;
    answered(http.delete(url).bearer_auth(internal_token).send().await?).await?;
    Ok(())
}

/// A success as is; an error answer as [`ClientError::Api`].
async fn answered(resp: reqwest::Response) -> Result<reqwest::Response, ClientError> {
    if resp.status().is_success() {
        return Ok(resp);
    }
    let status = resp.status().as_u16();
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    let text = |k: &str| body[k].as_str().unwrap_or_default().to_string();
    Err(ClientError::Api {
        status,
        kind: text("error"),
        message: text("message"),
    })
}

impl From<reqwest::Error> for ClientError {
    fn from(e: reqwest::Error) -> Self {
        ClientError::Transport(e.to_string())
    }
}

/// A lease call's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseOptions {
    /// At most this many messages (1 to 10).
    pub max: usize,
    /// Wait up to this long for a message (at most 20 s).
    pub wait: Duration,
    /// Lock each message this long before it is delivered again.
    pub lock: Duration,
}

impl Default for LeaseOptions {
    fn default() -> Self {
        LeaseOptions {
            max: MAX_BATCH,
            wait: Duration::from_secs(20),
            lock: Duration::from_secs(30),
        }
    }
}

fn secs(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// A client for one app's queues.
#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    app: String,
    token: String,
}

impl Client {
    /// A client for `app` at `base_url` (`http://host:port`), with the app's token.
    pub fn new(base_url: &str, app: &str, token: &str) -> Self {
        Client {
            http: reqwest::Client::new(),
            base: base_url.trim_end_matches('/').to_string(),
            app: app.to_string(),
            token: token.to_string(),
        }
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}/v1/apps/{}{path}", self.base, self.app))
            .bearer_auth(&self.token)
    }

    async fn send(&self, req: RequestBuilder) -> Result<reqwest::Response, ClientError> {
        answered(req.send().await?).await
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let mut req = self.request(method, path);
        if let Some(b) = body {
            req = req.json(b);
        }
        Ok(self.send(req).await?.json().await?)
    }

    async fn call_empty(&self, req: RequestBuilder) -> Result<(), ClientError> {
        let resp = self.send(req).await?;
        debug_assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        Ok(())
    }

    /// Declares `queue` (idempotent).
    pub async fn declare(&self, queue: &str, spec: &QueueSpec) -> Result<QueueStats, ClientError> {
        self.call(Method::PUT, &format!("/queues/{queue}"), Some(spec))
            .await
    }

    /// Publishes up to ten bodies in one call; their ids, in order.
    pub async fn publish_batch(
        &self,
        queue: &str,
        bodies: Vec<String>,
    ) -> Result<Vec<String>, ClientError> {
        let request = PublishRequest {
            messages: bodies.into_iter().map(|body| NewMessage { body }).collect(),
        };
        let r: PublishResponse = self
            .call(
                Method::POST,
                &format!("/queues/{queue}/messages"),
                Some(&request),
            )
            .await?;
        Ok(r.ids)
    }

    async fn lease_from(
        &self,
        queue: &str,
        opts: LeaseOptions,
        dlq: bool,
    ) -> Result<Vec<LeasedMessage>, ClientError> {
        let req = self
            .request(Method::POST, &format!("/queues/{queue}/leases"))
            .query(&[
                ("max", opts.max.to_string()),
                ("wait", secs(opts.wait)),
                ("lock", secs(opts.lock)),
                ("dlq", dlq.to_string()),
            ]);
        let r: LeaseResponse = self.send(req).await?.json().await?;
        Ok(r.messages)
    }

    /// Leases messages of `queue` (a long poll).
    pub async fn lease(
        &self,
        queue: &str,
        opts: LeaseOptions,
    ) -> Result<Vec<LeasedMessage>, ClientError> {
        self.lease_from(queue, opts, false).await
    }

    /// Leases messages of `queue` (a long poll), each with its lock kept
    /// alive until it is acked, rolled back or dropped.
    pub async fn lease_held(
        &self,
        queue: &str,
        opts: LeaseOptions,
    ) -> Result<Vec<Lease>, ClientError> {
        let messages = self.lease(queue, opts).await?;
        Ok(messages
            .into_iter()
            .map(|m| Lease::start(self.clone(), m, opts.lock))
            .collect())
    }

    /// Leases dead letters of `queue`, to inspect their history or drop them with an ack.
    pub async fn lease_dead(
        &self,
        queue: &str,
        opts: LeaseOptions,
    ) -> Result<Vec<LeasedMessage>, ClientError> {
        self.lease_from(queue, opts, true).await
    }

    /// Acknowledges one lease: the message is gone.
    pub async fn ack(&self, lease_id: &str) -> Result<(), ClientError> {
        self.call_empty(self.request(Method::DELETE, &format!("/leases/{lease_id}")))
            .await
    }

    /// Acknowledges up to ten leases in one call.
    pub async fn ack_batch(&self, lease_ids: Vec<String>) -> Result<AckResponse, ClientError> {
        let request = AckRequest { leases: lease_ids };
        self.call(Method::POST, "/acks", Some(&request)).await
    }

    /// Gives a lease back: the message is delivered again after a back-off.
    pub async fn rollback(&self, lease_id: &str, error: Option<&str>) -> Result<(), ClientError> {
        let body = RollbackRequest {
            error: error.map(str::to_string),
        };
        let req = self
            .request(Method::POST, &format!("/leases/{lease_id}/rollback"))
            .json(&body);
        self.call_empty(req).await
    }

    /// Extends a lease's lock to `lock` from now.
    pub async fn extend(&self, lease_id: &str, lock: Duration) -> Result<(), ClientError> {
        let req = self
            .request(Method::POST, &format!("/leases/{lease_id}/extend"))
            .query(&[("lock", secs(lock))]);
        self.call_empty(req).await
    }

    /// One queue's counts.
    pub async fn stats(&self, queue: &str) -> Result<QueueStats, ClientError> {
        self.call::<(), _>(Method::GET, &format!("/queues/{queue}"), None)
            .await
    }

    /// Every queue of the app, with its counts.
    pub async fn list(&self) -> Result<Vec<QueueStats>, ClientError> {
        let r: QueueList = self.call::<(), _>(Method::GET, "/queues", None).await?;
        Ok(r.queues)
    }

    /// Deletes every message of `queue` (not its dead letters).
    pub async fn purge(&self, queue: &str) -> Result<(), ClientError> {
        self.call_empty(self.request(Method::DELETE, &format!("/queues/{queue}/messages")))
            .await
    }

    /// Moves every dead letter of `queue` back to it; how many.
    pub async fn redrive(&self, queue: &str) -> Result<u64, ClientError> {
        let r: RedriveResponse = self
            .call::<(), _>(Method::POST, &format!("/queues/{queue}/dlq/redrive"), None)
            .await?;
        Ok(r.moved)
    }

    /// A publisher for `queue` that batches concurrent publishes. Must be
    /// created inside a Tokio runtime; its task ends when every clone is dropped.
    pub fn publisher(&self, queue: &str) -> Publisher {
        let (client, queue) = (self.clone(), queue.to_string());
        let calls = Coalescer::start(
            batching(move |bodies| {
                let (client, queue) = (client.clone(), queue.clone());
                async move {
                    let ids = client.publish_batch(&queue, bodies).await?;
                    Ok(ids.into_iter().map(Ok).collect())
                }
            }),
            || ClientError::Transport("publisher stopped".into()),
        );
        Publisher { calls }
    }

    /// An acker that batches concurrent acks of this app's leases. Must be
    /// created inside a Tokio runtime; its task ends when every clone is dropped.
    pub fn acker(&self) -> Acker {
        let client = self.clone();
        let calls = Coalescer::start(
            batching(move |ids: Vec<String>| {
                let client = client.clone();
                async move {
                    let response = client.ack_batch(ids.clone()).await?;
                    Ok(ids
                        .iter()
                        .map(
                            |id| match response.failed.iter().find(|f| &f.lease_id == id) {
                                None => Ok(()),
                                Some(f) => Err(ClientError::Api {
                                    status: 409,
                                    kind: "LEASE_LOST".into(),
                                    message: f.error.clone(),
                                }),
                            },
                        )
                        .collect())
                }
            }),
            || ClientError::Transport("acker stopped".into()),
        );
        Acker { calls }
    }

    /// A consumer of `queue` whose leases extend their lock while held.
    pub fn consumer(&self, queue: &str, opts: LeaseOptions) -> Consumer {
        Consumer {
            client: self.clone(),
            queue: queue.to_string(),
            opts,
            buffer: VecDeque::new(),
        }
    }
}

/// Calls of up to [`MAX_BATCH`] items, [`PUBLISH_CALLS_IN_FLIGHT`] out at once.
fn batching<F>(call: F) -> Batching<F, fn(&ClientError) -> ClientError> {
    Batching {
        max: MAX_BATCH,
        in_flight: PUBLISH_CALLS_IN_FLIGHT,
        call,
        share: ClientError::clone,
    }
}

/// Publishes to one queue; concurrent publishes share calls of up to ten messages.
#[derive(Clone, Debug)]
pub struct Publisher {
    calls: Coalescer<String, String, ClientError>,
}

impl Publisher {
    /// Publishes `body` and returns its id once it is stored.
    pub async fn publish(&self, body: impl Into<String>) -> Result<String, ClientError> {
        self.calls.submit(body.into()).await
    }
}

/// Acknowledges leases of one app; concurrent acks share `POST /acks` calls
/// of up to ten, as publishes share calls.
#[derive(Clone, Debug)]
pub struct Acker {
    calls: Coalescer<String, (), ClientError>,
}

impl Acker {
    /// Acknowledges `lease` (its heartbeat stops at once): the message is gone.
    /// An error names why this lease was not acknowledged (most often: its lock expired).
    pub async fn ack(&self, lease: Lease) -> Result<(), ClientError> {
        let id = lease.message.lease_id.clone();
        drop(lease);
        self.calls.submit(id).await
    }
}

/// Leases messages of one queue, one at a time, fetching them in batches.
pub struct Consumer {
    client: Client,
    queue: String,
    opts: LeaseOptions,
    buffer: VecDeque<Lease>,
}

impl Consumer {
    /// The next lease; long-polls until a message arrives.
    pub async fn next(&mut self) -> Result<Lease, ClientError> {
        loop {
            if let Some(lease) = self.buffer.pop_front() {
                return Ok(lease);
            }
            let leases = self.client.lease_held(&self.queue, self.opts).await?;
            self.buffer.extend(leases);
        }
    }

    /// The consumer as an endless stream of leases.
    pub fn into_stream(self) -> impl Stream<Item = Result<Lease, ClientError>> {
        futures::stream::unfold(self, |mut c| async move {
            let next = c.next().await;
            Some((next, c))
        })
    }
}

/// A leased message whose lock is extended in the background until it is
/// acked, rolled back or dropped (a dropped lease is delivered again after its lock).
pub struct Lease {
    message: LeasedMessage,
    client: Client,
    heartbeat: tokio::task::AbortHandle,
}

impl Lease {
    fn start(client: Client, message: LeasedMessage, lock: Duration) -> Self {
        let (c, id) = (client.clone(), message.lease_id.clone());
        let heartbeat = tokio::spawn(async move {
            // Extend well before the lock runs out: every third of it.
            let every = (lock / 3).max(Duration::from_millis(300));
            loop {
                tokio::time::sleep(every).await;
                if let Err(e) = c.extend(&id, lock).await {
                    // An answer (the lease is gone, say) is final; no answer
                    // (queue-svc restarting) may pass before the lock does.
                    if e.status().is_some() {
                        tracing::warn!(error = %e, "lease heartbeat refused; stopping it");
                        return;
                    }
                    tracing::warn!(error = %e, "lease heartbeat failed; trying again");
                }
            }
        })
        .abort_handle();
        Lease {
            message,
            client,
            heartbeat,
        }
    }

    /// The message.
    pub fn message(&self) -> &LeasedMessage {
        &self.message
    }

    /// Acknowledges the message: it is gone.
    pub async fn ack(self) -> Result<(), ClientError> {
        self.heartbeat.abort();
        self.client.ack(&self.message.lease_id).await
    }

    /// Gives the message back, with why: delivered again after a back-off.
    pub async fn rollback(self, error: Option<&str>) -> Result<(), ClientError> {
        self.heartbeat.abort();
        self.client.rollback(&self.message.lease_id, error).await
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.heartbeat.abort();
    }
}
