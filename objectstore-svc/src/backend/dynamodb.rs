//! The DynamoDB backend: one table, conditional writes for CAS and leases, chunked large values.
//!
//! Items (partition key `pk`, sort key `sk`, both strings):
//! - object head: `pk = o#{app}#{store}`, `sk = key`; `e` ETag, `z` plaintext
//!   size, `x` expiry (ms, exact), `ttl` expiry (s, for DynamoDB's lazy TTL
//!   deletion), and either `v` (the sealed value) or `ver` and `n` (its chunks);
//! - chunk: `pk = c#{version}`, `sk = {index:05}`, `v` one slice of the sealed
//!   value; a version is `{app}#{random id}` (a bare random id when written
//!   before app purges existed);
//! - lease: `pk = l#{app}`, `sk = name`; `h` holder, `t` fencing token, `x` expiry (ms);
//! - tombstone: `pk = _tombstones`, `sk = app`, `at` when it was deleted (ms):
//!   every other key begins with a letter and `#`, so no app has this one.
//!
//! Purging an app scans the table for `o#{app}#` (every store), `l#{app}`
//! and `c#{app}#`: an app's items lie in one partition per store, and
//! DynamoDB lists partitions by no prefix, so the scan reads the whole
//! table, once per deleted app. App ids hold no `#`, so those prefixes
//! match no other app's items. The chunks a head points to are deleted
//! before the head, so an older chunk version without its app in its key
//! is found through its head, even when a purge is cut short and resumed.
//!
//! A value over [`CHUNK`] bytes is written as chunks under a fresh version id
//! first, then the head is switched to that version by one conditional put;
//! the old version's chunks are deleted after. Chunks never change once
//! written, and a reader fetches the chunks of the version its head names and
//! starts over from the head if any is gone, so it sees one version whole.
//!
//! DynamoDB applies a conditional write atomically. The moto emulator alone
//! does not (it checks, then writes); `infra/localstack/moto_server.py`
//! answers one request at a time, so the tests see DynamoDB's atomicity.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{DisplayErrorContext, SdkError};
use aws_sdk_dynamodb::types::{
    AttributeValue, DeleteRequest, ReturnValue, TimeToLiveSpecification, WriteRequest,
};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryStreamExt};

use super::{
    BackendError, Condition, Entry, LeaseId, LeaseOutcome, LeaseState, Millis, ObjectId, Page,
    Record, Removed, Result, StoreBackend, Written, live,
};

/// The largest sealed value kept inline in its head item, and the size of a
/// chunk: under the 400 KB item limit with room for a 1 KiB key and metadata,
/// even as moto counts it (a binary attribute by its base64 length, 4/3 of it).
pub(crate) const CHUNK: usize = 280 * 1024;
/// Chunk reads and writes in flight at once for one value.
const CHUNK_PARALLELISM: usize = 8;
/// How often a reader starts over when a value is replaced under it.
const READ_ATTEMPTS: usize = 16;
/// The partition of the tombstones.
const TOMBSTONES: &str = "_tombstones";
/// Deletes per `BatchWriteItem` call, DynamoDB's most.
const DELETE_BATCH: usize = 25;
/// Calls for one batch of deletes while DynamoDB leaves some unprocessed
/// (throttled), pausing 50 ms and doubling between them.
const DELETE_ATTEMPTS: u32 = 8;

type Item = HashMap<String, AttributeValue>;

pub(crate) struct DynamoDb {
    client: Client,
    table: String,
}

fn sdk<E, R>(op: &'static str) -> impl Fn(SdkError<E, R>) -> BackendError
where
    E: std::error::Error + 'static,
    R: std::fmt::Debug,
{
    move |e| BackendError::DynamoDb {
        op,
        message: DisplayErrorContext(&e).to_string(),
    }
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn get_s<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    item.get(name)
        .and_then(|v| v.as_s().ok())
        .map(String::as_str)
}

fn get_n(item: &Item, name: &str) -> Option<u64> {
    item.get(name)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
}

fn object_pk(app: &str, store: &str) -> String {
    format!("o#{app}#{store}")
}

/// An item's partition and sort keys, as strings.
type Key = (String, String);

fn chunk_id(version: &str, index: u64) -> Key {
    (format!("c#{version}"), format!("{index:05}"))
}

fn chunk_key(version: &str, index: u64) -> (AttributeValue, AttributeValue) {
    let (pk, sk) = chunk_id(version, index);
    (s(pk), s(sk))
}

fn malformed(what: &str, reason: &str) -> BackendError {
    BackendError::Malformed {
        what: what.to_string(),
        reason: reason.to_string(),
    }
}

/// The chunked version an old or current head points to, if any.
fn chunks_of(item: &Item) -> Option<(String, u64)> {
    Some((get_s(item, "ver")?.to_string(), get_n(item, "n")?))
}

fn lease_of(item: &Item) -> Option<LeaseState> {
    Some(LeaseState {
        holder: get_s(item, "h").unwrap_or_default().to_string(),
        token: get_n(item, "t")?,
        expires_at: get_n(item, "x").unwrap_or(0),
    })
}

impl DynamoDb {
    pub async fn open(sdk: &aws_config::SdkConfig, table: &str) -> Result<Self> {
        let this = DynamoDb {
            client: Client::new(sdk),
            table: table.to_string(),
        };
        this.ensure_table().await?;
        Ok(this)
    }

    /// Creates the table when it is missing (with TTL deletion on) and waits
    /// until it is active.
    async fn ensure_table(&self) -> Result<()> {
        let created = common::aws::ensure_table(&self.client, &self.table, "pk", "sk")
            .await
            .map_err(|e| BackendError::DynamoDb {
                op: e.op,
                message: format!("table {}: {}", e.table, e.message),
            })?;
        if created {
            self.enable_ttl().await?;
        }
        Ok(())
    }

    /// Turns on DynamoDB's TTL deletion of expired items.
    async fn enable_ttl(&self) -> Result<()> {
        let spec = TimeToLiveSpecification::builder()
            .attribute_name("ttl")
            .enabled(true)
            .build()
            .map_err(|e| malformed(&self.table, &e.to_string()))?;
        // TTL deletion only saves space (reads filter expired items themselves),
        // so a refusal here is worth a warning, not a failed start.
        if let Err(e) = self
            .client
            .update_time_to_live()
            .table_name(&self.table)
            .time_to_live_specification(spec)
            .send()
            .await
        {
            tracing::warn!(table = %self.table, error = %DisplayErrorContext(&e), "could not enable TTL deletion");
        }
        Ok(())
    }

    async fn write_chunks(&self, version: &str, sealed: &[u8], ttl: Option<u64>) -> Result<u64> {
        let count = sealed.len().div_ceil(CHUNK) as u64;
        let requests: Vec<_> = sealed
            .chunks(CHUNK)
            .enumerate()
            .map(|(i, part)| {
                let (pk, sk) = chunk_key(version, i as u64);
                let req = self
                    .client
                    .put_item()
                    .table_name(&self.table)
                    .item("pk", pk)
                    .item("sk", sk)
                    .item("v", AttributeValue::B(part.to_vec().into()));
                match ttl {
                    Some(ttl) => req.item("ttl", n(ttl)),
                    None => req,
                }
            })
            .collect();
        futures::stream::iter(requests)
            .map(|req| async move { req.send().await.map_err(sdk("put chunk")) })
            .buffer_unordered(CHUNK_PARALLELISM)
            .try_collect::<Vec<_>>()
            .await?;
        Ok(count)
    }

    /// Deletes the chunks of a version no head points to any more; best effort,
    /// as a leftover chunk is only wasted space (and expires with its value).
    async fn delete_chunks(&self, version: &str, count: u64) {
        let results: Vec<_> = futures::stream::iter(0..count)
            .map(|i| {
                let (pk, sk) = chunk_key(version, i);
                self.client
                    .delete_item()
                    .table_name(&self.table)
                    .key("pk", pk)
                    .key("sk", sk)
                    .send()
            })
            .buffer_unordered(CHUNK_PARALLELISM)
            .collect()
            .await;
        if let Some(Err(e)) = results.into_iter().find(|r| r.is_err()) {
            tracing::warn!(version, error = %DisplayErrorContext(&e), "could not delete old chunks");
        }
    }

    /// The chunks of `version`, in order; `None` when any is gone (replaced meanwhile).
    async fn read_chunks(&self, version: &str, count: u64) -> Result<Option<Vec<u8>>> {
        let parts: Vec<Option<Vec<u8>>> = futures::stream::iter(0..count)
            .map(|i| {
                let (pk, sk) = chunk_key(version, i);
                let req = self
                    .client
                    .get_item()
                    .table_name(&self.table)
                    .key("pk", pk)
                    .key("sk", sk)
                    .consistent_read(true);
                async move {
                    let out = req.send().await.map_err(sdk("get chunk"))?;
                    Ok::<_, BackendError>(out.item.and_then(|mut item| match item.remove("v") {
                        Some(AttributeValue::B(b)) => Some(b.into_inner()),
                        _ => None,
                    }))
                }
            })
            .buffered(CHUNK_PARALLELISM)
            .try_collect()
            .await?;
        Ok(parts
            .into_iter()
            .collect::<Option<Vec<_>>>()
            .map(|p| p.concat()))
    }

    async fn get_head(&self, id: &ObjectId) -> Result<Option<Item>> {
        Ok(self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(object_pk(&id.app, &id.store)))
            .key("sk", s(&id.key))
            .consistent_read(true)
            .send()
            .await
            .map_err(sdk("get"))?
            .item)
    }

    async fn get_object(&self, id: ObjectId, now: Millis) -> Result<Option<Record>> {
        for _ in 0..READ_ATTEMPTS {
            let Some(mut head) = self.get_head(&id).await? else {
                return Ok(None);
            };
            let expires_at = get_n(&head, "x");
            if !live(expires_at, now) {
                return Ok(None);
            }
            let etag = get_s(&head, "e")
                .ok_or_else(|| malformed(&id.key, "no etag"))?
                .to_string();
            let size = get_n(&head, "z").unwrap_or(0);
            let sealed = match head.remove("v") {
                Some(AttributeValue::B(b)) => b.into_inner(),
                _ => {
                    let (version, count) =
                        chunks_of(&head).ok_or_else(|| malformed(&id.key, "no value"))?;
                    match self.read_chunks(&version, count).await? {
                        Some(v) => v,
                        None => continue,
                    }
                }
            };
            return Ok(Some(Record {
                sealed,
                etag,
                size,
                expires_at,
            }));
        }
        Err(malformed(
            &id.key,
            "its chunks kept changing or are missing",
        ))
    }

    async fn put_object(
        &self,
        id: ObjectId,
        record: Record,
        cond: Condition,
        now: Millis,
    ) -> Result<Written> {
        let ttl = record.expires_at.map(|x| x.div_ceil(1000));
        let mut req = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(object_pk(&id.app, &id.store)))
            .item("sk", s(&id.key))
            .item("e", s(&record.etag))
            .item("z", n(record.size))
            .return_values(ReturnValue::AllOld);
        if let (Some(x), Some(ttl)) = (record.expires_at, ttl) {
            req = req.item("x", n(x)).item("ttl", n(ttl));
        }
        let chunked = if record.sealed.len() <= CHUNK {
            req = req.item("v", AttributeValue::B(record.sealed.into()));
            None
        } else {
            // The app in the version lets a purge find chunks no head points to.
            let version = format!("{}#{}", id.app, uuid::Uuid::new_v4().simple());
            let count = self.write_chunks(&version, &record.sealed, ttl).await?;
            req = req.item("ver", s(&version)).item("n", n(count));
            Some((version, count))
        };
        req = match &cond {
            Condition::Always => req,
            Condition::IfAbsent => req
                .condition_expression("attribute_not_exists(#sk) OR #x <= :now")
                .expression_attribute_names("#sk", "sk")
                .expression_attribute_names("#x", "x")
                .expression_attribute_values(":now", n(now)),
            Condition::IfMatch(etag) => if_match(req, etag, now),
        };
        let result = req.send().await;
        let (outcome, stale) = match result {
            Ok(out) => {
                let old = out.attributes.filter(|o| !o.is_empty());
                let replaced = old.as_ref().is_some_and(|o| live(get_n(o, "x"), now));
                let outcome = if replaced {
                    Written::Replaced
                } else {
                    Written::Created
                };
                (Ok(outcome), old.as_ref().and_then(chunks_of))
            }
            Err(e) => {
                let failed = e
                    .as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception());
                let outcome = if failed {
                    Ok(Written::ConditionFailed)
                } else {
                    Err(sdk("put")(e))
                };
                // Our chunks were never pointed to.
                (outcome, chunked)
            }
        };
        if let Some((version, count)) = stale {
            self.delete_chunks(&version, count).await;
        }
        outcome
    }

    async fn delete_object(&self, id: ObjectId, cond: Condition, now: Millis) -> Result<Removed> {
        let mut req = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key("pk", s(object_pk(&id.app, &id.store)))
            .key("sk", s(&id.key))
            .return_values(ReturnValue::AllOld);
        match &cond {
            Condition::Always => {}
            Condition::IfAbsent => return Ok(Removed::ConditionFailed),
            Condition::IfMatch(etag) => {
                req = req
                    .condition_expression("#e = :etag AND (attribute_not_exists(#x) OR #x > :now)")
                    .expression_attribute_names("#e", "e")
                    .expression_attribute_names("#x", "x")
                    .expression_attribute_values(":etag", s(etag))
                    .expression_attribute_values(":now", n(now));
            }
        }
        let result = req.send().await;
        match result {
            Ok(out) => {
                let Some(old) = out.attributes.filter(|o| !o.is_empty()) else {
                    return Ok(Removed::Absent);
                };
                if let Some((version, count)) = chunks_of(&old) {
                    self.delete_chunks(&version, count).await;
                }
                Ok(if live(get_n(&old, "x"), now) {
                    Removed::Deleted
                } else {
                    Removed::Absent
                })
            }
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Ok(Removed::ConditionFailed)
            }
            Err(e) => Err(sdk("delete")(e)),
        }
    }

    async fn list_keys(
        &self,
        app: String,
        store: String,
        prefix: String,
        after: Option<String>,
        limit: usize,
        now: Millis,
    ) -> Result<Page> {
        let pk = object_pk(&app, &store);
        let mut req = self
            .client
            .query()
            .table_name(&self.table)
            .consistent_read(true)
            .limit(limit.min(i32::MAX as usize) as i32)
            .expression_attribute_names("#pk", "pk")
            .expression_attribute_names("#sk", "sk")
            .expression_attribute_names("#e", "e")
            .expression_attribute_names("#z", "z")
            .expression_attribute_names("#x", "x")
            .projection_expression("#sk, #e, #z, #x")
            .expression_attribute_values(":pk", s(&pk));
        req = if prefix.is_empty() {
            req.key_condition_expression("#pk = :pk")
        } else {
            req.key_condition_expression("#pk = :pk AND begins_with(#sk, :prefix)")
                .expression_attribute_values(":prefix", s(&prefix))
        };
        if let Some(after) = after.filter(|a| a.as_str() >= prefix.as_str()) {
            req = req
                .exclusive_start_key("pk", s(&pk))
                .exclusive_start_key("sk", s(after));
        }
        let out = req.send().await.map_err(sdk("list"))?;
        let entries = out
            .items()
            .iter()
            .filter(|item| live(get_n(item, "x"), now))
            .filter_map(|item| {
                Some(Entry {
                    key: get_s(item, "sk")?.to_string(),
                    etag: get_s(item, "e").unwrap_or_default().to_string(),
                    size: get_n(item, "z").unwrap_or(0),
                    expires_at: get_n(item, "x"),
                })
            })
            .collect();
        let next = out
            .last_evaluated_key()
            .and_then(|k| get_s(k, "sk"))
            .map(str::to_string);
        Ok(Page { entries, next })
    }

    async fn store_stats(&self, app: String, store: String, now: Millis) -> Result<(u64, u64)> {
        let mut pages = self
            .client
            .query()
            .table_name(&self.table)
            .consistent_read(true)
            .key_condition_expression("#pk = :pk")
            .expression_attribute_names("#pk", "pk")
            .expression_attribute_names("#z", "z")
            .expression_attribute_names("#x", "x")
            .projection_expression("#z, #x")
            .expression_attribute_values(":pk", s(object_pk(&app, &store)))
            .into_paginator()
            .items()
            .send();
        let (mut keys, mut bytes) = (0, 0);
        while let Some(item) = pages.next().await {
            let item = item.map_err(sdk("stats"))?;
            if live(get_n(&item, "x"), now) {
                keys += 1;
                bytes += get_n(&item, "z").unwrap_or(0);
            }
        }
        Ok((keys, bytes))
    }

    /// One conditional update of a lease item; `None` when the condition failed.
    async fn update_lease(
        &self,
        op: &'static str,
        id: &LeaseId,
        update: &str,
        condition: &str,
        values: Vec<(&str, AttributeValue)>,
    ) -> Result<Option<Item>> {
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(format!("l#{}", id.app)))
            .key("sk", s(&id.name))
            .update_expression(update)
            .condition_expression(condition)
            .return_values(ReturnValue::AllNew);
        for (name, attr) in [("#sk", "sk"), ("#h", "h"), ("#t", "t"), ("#x", "x")] {
            if update.contains(name) || condition.contains(name) {
                req = req.expression_attribute_names(name, attr);
            }
        }
        for (name, value) in values {
            req = req.expression_attribute_values(name, value);
        }
        match req.send().await {
            Ok(out) => Ok(Some(out.attributes.unwrap_or_default())),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Ok(None)
            }
            Err(e) => Err(sdk(op)(e)),
        }
    }

    async fn acquire_lease(
        &self,
        id: LeaseId,
        holder: String,
        ttl_ms: u64,
        now: Millis,
    ) -> Result<LeaseOutcome> {
        let granted = |item: Item| {
            lease_of(&item)
                .map(LeaseOutcome::Granted)
                .ok_or_else(|| malformed(&id.name, "lease without a token"))
        };
        // Take it if free or lapsed; else extend it if ours; else report who
        // has it. A lease released between those steps sends us round again.
        for _ in 0..READ_ATTEMPTS {
            let take = self
                .update_lease(
                    "acquire lease",
                    &id,
                    "SET #h = :h, #x = :exp, #t = if_not_exists(#t, :zero) + :one",
                    "attribute_not_exists(#sk) OR #x <= :now",
                    vec![
                        (":h", s(&holder)),
                        (":exp", n(now + ttl_ms)),
                        (":zero", n(0)),
                        (":one", n(1)),
                        (":now", n(now)),
                    ],
                )
                .await?;
            if let Some(item) = take {
                return granted(item);
            }
            let extend = self
                .update_lease(
                    "acquire lease",
                    &id,
                    "SET #x = :exp",
                    "#h = :h AND #x > :now",
                    vec![
                        (":h", s(&holder)),
                        (":exp", n(now + ttl_ms)),
                        (":now", n(now)),
                    ],
                )
                .await?;
            if let Some(item) = extend {
                return granted(item);
            }
            let current = self
                .client
                .get_item()
                .table_name(&self.table)
                .key("pk", s(format!("l#{}", id.app)))
                .key("sk", s(&id.name))
                .consistent_read(true)
                .send()
                .await
                .map_err(sdk("read lease"))?
                .item
                .as_ref()
                .and_then(lease_of);
            if let Some(cur) = current.filter(|c| c.expires_at > now) {
                return Ok(LeaseOutcome::Held(cur));
            }
        }
        Err(malformed(&id.name, "lease kept changing hands"))
    }

    /// A conditional update of a lease still held by `holder` with `token`;
    /// `None` when it is not (lapsed, released or taken over).
    async fn update_held(
        &self,
        op: &'static str,
        id: &LeaseId,
        (holder, token, now): (&str, u64, Millis),
        update: &str,
        value: (&str, AttributeValue),
    ) -> Result<Option<Item>> {
        let values = vec![(":h", s(holder)), (":t", n(token)), (":now", n(now)), value];
        self.update_lease(op, id, update, "#h = :h AND #t = :t AND #x > :now", values)
            .await
    }

    async fn renew_lease(
        &self,
        id: LeaseId,
        holder: String,
        token: u64,
        ttl_ms: u64,
        now: Millis,
    ) -> Result<LeaseOutcome> {
        let held = (holder.as_str(), token, now);
        let item = self
            .update_held(
                "renew lease",
                &id,
                held,
                "SET #x = :exp",
                (":exp", n(now + ttl_ms)),
            )
            .await?;
        Ok(match item.as_ref().and_then(lease_of) {
            Some(state) => LeaseOutcome::Granted(state),
            None => LeaseOutcome::Lost,
        })
    }

    async fn release_lease(
        &self,
        id: LeaseId,
        holder: String,
        token: u64,
        now: Millis,
    ) -> Result<LeaseOutcome> {
        let held = (holder.as_str(), token, now);
        let item = self
            .update_held(
                "release lease",
                &id,
                held,
                "SET #x = :zero REMOVE #h",
                (":zero", n(0)),
            )
            .await?;
        Ok(match item {
            Some(_) => LeaseOutcome::Released,
            None => LeaseOutcome::Lost,
        })
    }
}

/// Forgetting an app: its tombstone, and every item it has.
impl DynamoDb {
    async fn bury_app(&self, app: String) -> Result<()> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(TOMBSTONES))
            .item("sk", s(app))
            .item("at", n(now))
            .send()
            .await
            .map_err(sdk("bury"))?;
        Ok(())
    }

    async fn read_tombstones(&self) -> Result<Vec<String>> {
        let mut pages = self
            .client
            .query()
            .table_name(&self.table)
            .consistent_read(true)
            .key_condition_expression("#pk = :pk")
            .expression_attribute_names("#pk", "pk")
            .expression_attribute_values(":pk", s(TOMBSTONES))
            .into_paginator()
            .items()
            .send();
        let mut apps = Vec::new();
        while let Some(item) = pages.next().await {
            let item = item.map_err(sdk("tombstones"))?;
            if let Some(app) = get_s(&item, "sk") {
                apps.push(app.to_string());
            }
        }
        Ok(apps)
    }

    /// Scans for the app's items a page at a time and deletes what each
    /// page found: first the chunks its heads point to, then the items.
    async fn purge(&self, app: String) -> Result<()> {
        let mut start = None;
        loop {
            let out = self
                .client
                .scan()
                .table_name(&self.table)
                .consistent_read(true)
                .filter_expression("begins_with(#pk, :o) OR #pk = :l OR begins_with(#pk, :c)")
                .projection_expression("#pk, #sk, #ver, #n")
                .expression_attribute_names("#pk", "pk")
                .expression_attribute_names("#sk", "sk")
                .expression_attribute_names("#ver", "ver")
                .expression_attribute_names("#n", "n")
                .expression_attribute_values(":o", s(format!("o#{app}#")))
                .expression_attribute_values(":l", s(format!("l#{app}")))
                .expression_attribute_values(":c", s(format!("c#{app}#")))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(sdk("purge scan"))?;
            let pointed: BTreeSet<Key> = out
                .items()
                .iter()
                .filter_map(chunks_of)
                .flat_map(|(version, count)| (0..count).map(move |i| chunk_id(&version, i)))
                .collect();
            self.delete_all(pointed).await?;
            let found: BTreeSet<Key> = out
                .items()
                .iter()
                .filter_map(|item| Some((get_s(item, "pk")?.into(), get_s(item, "sk")?.into())))
                .collect();
            self.delete_all(found).await?;
            match out.last_evaluated_key {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => return Ok(()),
            }
        }
    }

    /// Deletes the items of `keys` (one gone already is no error), a batch
    /// of [`DELETE_BATCH`] per call, several calls at once.
    async fn delete_all(&self, keys: BTreeSet<Key>) -> Result<()> {
        let keys: Vec<Key> = keys.into_iter().collect();
        let batches: Vec<Vec<Key>> = keys.chunks(DELETE_BATCH).map(<[Key]>::to_vec).collect();
        futures::stream::iter(batches)
            .map(|batch| async move { self.delete_batch(&batch).await })
            .buffer_unordered(CHUNK_PARALLELISM)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    async fn delete_batch(&self, batch: &[Key]) -> Result<()> {
        let mut requests = batch
            .iter()
            .map(|(pk, sk)| {
                let delete = DeleteRequest::builder()
                    .key("pk", s(pk))
                    .key("sk", s(sk))
                    .build()
                    .map_err(|e| BackendError::DynamoDb {
                        op: "purge",
                        message: e.to_string(),
                    })?;
                Ok(WriteRequest::builder().delete_request(delete).build())
            })
            .collect::<Result<Vec<_>>>()?;
        let mut pause = Duration::from_millis(50);
        for _ in 0..DELETE_ATTEMPTS {
            let out = self
                .client
                .batch_write_item()
                .request_items(&self.table, requests)
                .send()
                .await
                .map_err(sdk("purge"))?;
            requests = out
                .unprocessed_items
                .and_then(|mut left| left.remove(&self.table))
                .unwrap_or_default();
            if requests.is_empty() {
                return Ok(());
            }
            tokio::time::sleep(pause).await;
            pause *= 2;
        }
        Err(BackendError::DynamoDb {
            op: "purge",
            message: format!(
                "{} deletes still unprocessed (throttled) after {DELETE_ATTEMPTS} calls",
                requests.len()
            ),
        })
    }
}

fn if_match(
    req: aws_sdk_dynamodb::operation::put_item::builders::PutItemFluentBuilder,
    etag: &str,
    now: Millis,
) -> aws_sdk_dynamodb::operation::put_item::builders::PutItemFluentBuilder {
    req.condition_expression("#e = :etag AND (attribute_not_exists(#x) OR #x > :now)")
        .expression_attribute_names("#e", "e")
        .expression_attribute_names("#x", "x")
        .expression_attribute_values(":etag", s(etag))
        .expression_attribute_values(":now", n(now))
}

impl StoreBackend for DynamoDb {
    fn get(&self, id: ObjectId, now: Millis) -> BoxFuture<'_, Result<Option<Record>>> {
        self.get_object(id, now).boxed()
    }

    fn put(
        &self,
        id: ObjectId,
        record: Record,
        cond: Condition,
        now: Millis,
    ) -> BoxFuture<'_, Result<Written>> {
        self.put_object(id, record, cond, now).boxed()
    }

    fn delete(&self, id: ObjectId, cond: Condition, now: Millis) -> BoxFuture<'_, Result<Removed>> {
        self.delete_object(id, cond, now).boxed()
    }

    fn list(
        &self,
        app: String,
        store: String,
        prefix: String,
        after: Option<String>,
        limit: usize,
        now: Millis,
    ) -> BoxFuture<'_, Result<Page>> {
        self.list_keys(app, store, prefix, after, limit, now)
            .boxed()
    }

    fn stats(&self, app: String, store: String, now: Millis) -> BoxFuture<'_, Result<(u64, u64)>> {
        self.store_stats(app, store, now).boxed()
    }

    fn acquire(
        &self,
        id: LeaseId,
        holder: String,
        ttl_ms: u64,
        now: Millis,
    ) -> BoxFuture<'_, Result<LeaseOutcome>> {
        self.acquire_lease(id, holder, ttl_ms, now).boxed()
    }

    fn renew(
        &self,
        id: LeaseId,
        holder: String,
        token: u64,
        ttl_ms: u64,
        now: Millis,
    ) -> BoxFuture<'_, Result<LeaseOutcome>> {
        self.renew_lease(id, holder, token, ttl_ms, now).boxed()
    }

    fn release(
        &self,
        id: LeaseId,
        holder: String,
        token: u64,
        now: Millis,
    ) -> BoxFuture<'_, Result<LeaseOutcome>> {
        self.release_lease(id, holder, token, now).boxed()
    }

    fn bury(&self, app: String) -> BoxFuture<'_, Result<()>> {
        self.bury_app(app).boxed()
    }

    fn tombstones(&self) -> BoxFuture<'_, Result<Vec<String>>> {
        self.read_tombstones().boxed()
    }

    fn purge_app(&self, app: String) -> BoxFuture<'_, Result<()>> {
        self.purge(app).boxed()
    }
}
