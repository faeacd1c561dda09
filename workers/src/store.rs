//! The app's object store as flows use it: `store`, `retrieve`, `remove`, and
//! the state behind `idempotent`, `aggregate` and schedule ticks.
//!
//! Everything here is in the object store service, never in the worker, so
//! it outlives the worker: a key claimed by `idempotent` or a group half
//! gathered by `aggregate` is there for the worker that takes over.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::shutdown::Shutdown;
use objectstore_svc::client::{Client, ClientError, Precondition, PutOptions, Writer};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{ErrorType, FlowError};
use crate::event::payload_from_bytes;

/// The runtime's own stores; manifests cannot name stores starting with `_`.
const IDEMPOTENT_STORE: &str = "_idempotent";
const AGGREGATE_STORE: &str = "_aggregate";
/// Where schedule ticks are claimed and the last one is recorded.
pub const SCHEDULE_STORE: &str = "_schedule";
/// A pending claim lives this long unless its delivery's heartbeat renews
/// it (every third of it): a claim whose worker died expires by itself.
const CLAIM_LIVE: Duration = Duration::from_secs(15);
/// How long a delivery waits for a running one of the same key to end before
/// it is rolled back to be tried later.
const CLAIM_WAIT: Duration = Duration::from_secs(60);
/// Compare-and-set attempts before a contended group gives up (the event is
/// rolled back and tried again later).
const CAS_ATTEMPTS: usize = 64;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

fn store_error(e: ClientError) -> FlowError {
    // A key the service refuses (empty, over 1 KiB, a value too large) is the
    // event's fault; anything else is the store's.
    let kind = match e.status() {
        Some(400 | 413) => ErrorType::Validation,
        _ => ErrorType::Store,
    };
    FlowError::new(kind, e.to_string())
}

fn encode(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

/// A claim `idempotent` made; settled when the flow ends. While it is held,
/// a heartbeat keeps it from expiring; dropping it (the flow's worker died,
/// or the flow ended) stops the heartbeat.
#[derive(Debug)]
pub struct Claim {
    key: String,
    owner: String,
    ttl: Duration,
    held: Arc<tokio::sync::Mutex<Held>>,
    _heartbeat: AbortOnDrop,
}

/// What a claim's holder and its heartbeat share.
#[derive(Debug)]
struct Held {
    /// The record's current version.
    etag: String,
    /// Settled or released: the heartbeat writes no more.
    ended: bool,
}

#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What `idempotent` decided.
#[derive(Debug)]
pub enum Admission {
    /// First time (or a redelivery after the first delivery's worker died):
    /// go on, settle the claim at the end.
    Proceed(Claim),
    /// Seen and finished before: stop the flow as a success.
    Duplicate,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ClaimRecord {
    done: bool,
    /// The event (message id) that made it.
    owner: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Group {
    members: Vec<Member>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    completed_by: Option<String>,
    /// The group completed before this one under the same key, so a late
    /// redelivery of one of its members is still recognised.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    previous: Option<Box<Group>>,
}

impl Group {
    fn has(&self, id: &str) -> bool {
        self.members.iter().any(|m| m.id == id)
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Member {
    id: String,
    payload: Value,
}

/// What `aggregate` decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Gathered {
    /// This event completed the group: the members' payloads, in arrival order.
    Complete(Vec<Value>),
    /// The event is in a group still gathering (or already completed by another): stop.
    Held,
}

/// One app's stores. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Stores {
    client: Client,
    /// Every put goes through it, so the puts of concurrent flows (claims,
    /// values, settlings) share calls; made on first use, inside the runtime.
    writer: Arc<std::sync::OnceLock<Writer>>,
    claim_live: Duration,
    claim_wait: Duration,
    /// The worker's stop signal (one nothing triggers, until `stopping_on`):
    /// a delivery waiting on a claim gives up when it fires.
    stop: Shutdown,
}

impl Stores {
    /// Stores through `client`.
    pub fn new(client: Client) -> Self {
        Stores {
            client,
            writer: Arc::default(),
            claim_live: CLAIM_LIVE,
            claim_wait: CLAIM_WAIT,
            stop: Shutdown::new(Duration::ZERO),
        }
    }

    /// The same, for a worker that stops on `stop`: once it fires, a delivery
    /// waiting for a running one of its key stops waiting and is rolled back,
    /// so a draining worker starts no work it may not finish (the worker that
    /// leases the message next waits instead).
    pub fn stopping_on(mut self, stop: Shutdown) -> Self {
        self.stop = stop;
        self
    }

    /// The same, with pending `idempotent` claims living `live` between
    /// heartbeats, and a delivery waiting at most `wait` for a running one
    /// of its key (tests use short ones).
    pub fn with_claim_times(mut self, live: Duration, wait: Duration) -> Self {
        self.claim_live = live;
        self.claim_wait = wait;
        self
    }

    /// Waits until the object store answers this app's token (retrying for
    /// up to `give_up`), so a worker turns ready only with its store reachable.
    pub async fn reachable(&self, give_up: Duration) -> Result<(), ClientError> {
        crate::until_answered("objectstore-svc", give_up, ClientError::status, || {
            self.client.stats(SCHEDULE_STORE)
        })
        .await
        .map(drop)
    }

    fn writer(&self) -> &Writer {
        self.writer.get_or_init(|| self.client.writer())
    }

    /// The underlying client (for leases).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Writes `value` as JSON under `key`.
    pub async fn put(
        &self,
        store: &str,
        key: &str,
        value: &Value,
        ttl: Option<Duration>,
    ) -> Result<(), FlowError> {
        let options = PutOptions {
            ttl,
            precondition: Precondition::None,
        };
        self.writer()
            .put(store, key, encode(value), &options)
            .await
            .map(drop)
            .map_err(store_error)
    }

    /// The value under `key`, if any.
    pub async fn get(&self, store: &str, key: &str) -> Result<Option<Value>, FlowError> {
        let fetched = self.client.get(store, key).await.map_err(store_error)?;
        Ok(fetched.map(|f| payload_from_bytes(&f.value)))
    }

    /// Deletes `key`; absent is fine.
    pub async fn remove(&self, store: &str, key: &str) -> Result<(), FlowError> {
        self.client
            .delete(store, key, &Precondition::None)
            .await
            .map(drop)
            .map_err(store_error)
    }

    /// Writes `value` under `key` unless it has a live value; whether it wrote.
    pub async fn put_if_absent(
        &self,
        store: &str,
        key: &str,
        value: &Value,
        ttl: Duration,
    ) -> Result<bool, FlowError> {
        let options = PutOptions {
            ttl: Some(ttl),
            precondition: Precondition::IfAbsent,
        };
        match self.writer().put(store, key, encode(value), &options).await {
            Ok(_) => Ok(true),
            Err(e) if e.is_precondition_failed() => Ok(false),
            Err(e) => Err(store_error(e)),
        }
    }

    /// Claims `key` for the event `owner`.
    ///
    /// A claim is `pending` while its flow runs, done (kept `ttl`) when it
    /// succeeds, deleted when it fails. A pending claim lives `claim_live` and
    /// its heartbeat renews it every third of that, so:
    /// - a claim found done means a duplicate: stop;
    /// - a claim found pending means a delivery of this key is running right
    ///   now, whether of another message or of this very one (its lease
    ///   lapsed, or the queue delivered it twice): wait until it is done (a
    ///   duplicate) or gone (released, or expired because its worker died
    ///   and stopped renewing it; then go on), at most `claim_wait`, after
    ///   which this event is rolled back (`STORE`) to be tried later; at
    ///   once if the worker is stopping.
    ///
    /// Waiting rather than rolling back at once keeps the redeliveries of a
    /// killed worker's message from spending their delivery count (and
    /// reaching the DLQ) while its claim expires.
    pub async fn claim(
        &self,
        flow: &str,
        key: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Admission, FlowError> {
        let key = format!("{flow}/{key}");
        let pending = ClaimRecord {
            done: false,
            owner: owner.to_string(),
        };
        let body = serde_json::to_vec(&pending).unwrap_or_default();
        let live = self.claim_live.min(ttl);
        let create = PutOptions {
            ttl: Some(live),
            precondition: Precondition::IfAbsent,
        };
        let deadline = tokio::time::Instant::now() + self.claim_wait;
        loop {
            match self
                .writer()
                .put(IDEMPOTENT_STORE, &key, body.clone(), &create)
                .await
            {
                Ok(put) => {
                    return Ok(Admission::Proceed(
                        self.hold(key, owner, body, ttl, live, put.etag),
                    ));
                }
                Err(e) if e.is_precondition_failed() => {}
                Err(e) => return Err(store_error(e)),
            }
            let current = self
                .client
                .get(IDEMPOTENT_STORE, &key)
                .await
                .map_err(store_error)?;
            let pending = match current {
                Some(c)
                    if serde_json::from_slice::<ClaimRecord>(&c.value).is_ok_and(|r| r.done) =>
                {
                    return Ok(Admission::Duplicate);
                }
                // Another delivery runs (or its worker died and the claim
                // has yet to expire).
                Some(_) => true,
                None => false,
            };
            let busy = || {
                FlowError::new(
                    ErrorType::Store,
                    format!("a delivery with key {key:?} is being processed; try again"),
                )
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(busy());
            }
            if pending {
                tokio::select! {
                    () = tokio::time::sleep(live / 6) => {}
                    () = self.stop.triggered() => return Err(busy()),
                }
            }
            // Gone (expired or released meanwhile): try to create it again.
        }
    }

    /// A claim just made, with its heartbeat running; `pending` is the
    /// record as written, which each beat writes again.
    fn hold(
        &self,
        key: String,
        owner: &str,
        pending: Vec<u8>,
        ttl: Duration,
        live: Duration,
        etag: String,
    ) -> Claim {
        let held = Arc::new(tokio::sync::Mutex::new(Held { etag, ended: false }));
        let heartbeat = {
            let (client, key, held) = (self.writer().clone(), key.clone(), held.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(live / 3).await;
                    let mut held = held.lock().await;
                    if held.ended {
                        return;
                    }
                    let renew = PutOptions {
                        ttl: Some(live),
                        precondition: Precondition::IfMatch(held.etag.clone()),
                    };
                    match client
                        .put(IDEMPOTENT_STORE, &key, pending.clone(), &renew)
                        .await
                    {
                        Ok(put) => held.etag = put.etag,
                        Err(e) if e.is_precondition_failed() => {
                            tracing::warn!(%key, "idempotency claim expired before its heartbeat (the store was out of reach too long); a duplicate may run");
                            return;
                        }
                        // Out of reach for now: the next beat tries again.
                        Err(e) => {
                            tracing::warn!(%key, error = %e, "idempotency claim heartbeat failed")
                        }
                    }
                }
            })
        };
        Claim {
            key,
            owner: owner.to_string(),
            ttl,
            held,
            _heartbeat: AbortOnDrop(heartbeat),
        }
    }

    /// Marks a claim done: later events with its key are duplicates.
    pub async fn settle(&self, claim: &Claim) -> Result<(), FlowError> {
        let mut held = claim.held.lock().await;
        held.ended = true;
        let record = ClaimRecord {
            done: true,
            owner: claim.owner.clone(),
        };
        let options = PutOptions {
            ttl: Some(claim.ttl),
            precondition: Precondition::IfMatch(held.etag.clone()),
        };
        let body = serde_json::to_vec(&record).unwrap_or_default();
        match self
            .writer()
            .put(IDEMPOTENT_STORE, &claim.key, body, &options)
            .await
        {
            Ok(_) => Ok(()),
            // The claim expired while the store was out of reach for its
            // heartbeat: another delivery may have run; this one's work is
            // done either way.
            Err(e) if e.is_precondition_failed() => {
                tracing::warn!(key = %claim.key, "idempotency claim lapsed before it was settled");
                Ok(())
            }
            Err(e) => Err(store_error(e)),
        }
    }

    /// Gives a claim back after its flow failed, so a retry is not a duplicate.
    pub async fn release(&self, claim: &Claim) {
        let mut held = claim.held.lock().await;
        held.ended = true;
        let pre = Precondition::IfMatch(held.etag.clone());
        if let Err(e) = self.client.delete(IDEMPOTENT_STORE, &claim.key, &pre).await
            && !e.is_precondition_failed()
        {
            tracing::warn!(key = %claim.key, error = %e, "could not release an idempotency claim; it expires by itself");
        }
    }

    /// Adds the event `id` to the group `key` of `flow` with compare-and-set.
    ///
    /// The event that brings the group to `size` completes it (exactly one
    /// write can); a redelivery of that event finds the group completed by
    /// itself and completes it again, so a completing worker's death loses
    /// nothing. A redelivery of any other member is held again, never added
    /// twice. An event arriving at a completed group it is not part of starts
    /// the next group under the same key (the completed one is kept beside it
    /// for late redeliveries).
    pub async fn gather(
        &self,
        flow: &str,
        key: &str,
        id: &str,
        payload: &Value,
        size: u32,
        ttl: Duration,
    ) -> Result<Gathered, FlowError> {
        let key = format!("{flow}/{key}");
        for _ in 0..CAS_ATTEMPTS {
            let current = self
                .client
                .get(AGGREGATE_STORE, &key)
                .await
                .map_err(store_error)?;
            let (mut group, precondition) = match &current {
                Some(f) => (
                    serde_json::from_slice::<Group>(&f.value).unwrap_or_default(),
                    Precondition::IfMatch(f.etag.clone()),
                ),
                None => (Group::default(), Precondition::IfAbsent),
            };
            if let Some(previous) = group.previous.take_if(|p| p.has(id)) {
                group = *previous;
            }
            match (&group.completed_by, group.has(id)) {
                (Some(by), true) if by == id => {
                    return Ok(Gathered::Complete(payloads(group)));
                }
                (_, true) => return Ok(Gathered::Held),
                (Some(_), false) => {
                    group.previous = None;
                    group = Group {
                        previous: Some(Box::new(group)),
                        ..Group::default()
                    };
                }
                (None, false) => {}
            }
            group.members.push(Member {
                id: id.to_string(),
                payload: payload.clone(),
            });
            let complete = group.members.len() >= size as usize;
            if complete {
                group.completed_by = Some(id.to_string());
            }
            let options = PutOptions {
                ttl: Some(ttl),
                precondition,
            };
            let body = serde_json::to_vec(&group).unwrap_or_default();
            match self
                .writer()
                .put(AGGREGATE_STORE, &key, body, &options)
                .await
            {
                Ok(_) if complete => return Ok(Gathered::Complete(payloads(group))),
                Ok(_) => return Ok(Gathered::Held),
                Err(e) if e.is_precondition_failed() => continue,
                Err(e) => return Err(store_error(e)),
            }
        }
        Err(FlowError::new(
            ErrorType::Store,
            format!("group {key:?} is contended; try again"),
        ))
    }
}

fn payloads(group: Group) -> Vec<Value> {
    group.members.into_iter().map(|m| m.payload).collect()
}
