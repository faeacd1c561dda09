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
//! A value over [`chunks::CHUNK`] bytes is written as chunks under a fresh version id
//! first, then the head is switched to that version by one conditional put;
//! the old version's chunks are deleted after. Chunks never change once
//! written, and a reader fetches the chunks of the version its head names and
//! starts over from the head if any is gone, so it sees one version whole.
//!
//! DynamoDB applies a conditional write atomically. The moto emulator alone
//! does not (it checks, then writes); `infra/localstack/moto_server.py`
//! answers one request at a time, so the tests see DynamoDB's atomicity.
//!
//! One file per job: [`objects`] (get, put, delete, list, stats), [`chunks`]
//! (values too large for one item), [`leases`] (acquire, renew, release with
//! fencing tokens), [`forget`] (tombstones and purging an app).

mod chunks;
mod forget;
mod leases;
mod objects;

use std::collections::HashMap;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{DisplayErrorContext, SdkError};
use aws_sdk_dynamodb::types::{AttributeValue, TimeToLiveSpecification};
use futures::FutureExt;
use futures::future::BoxFuture;

use super::{
    BackendError, Condition, LeaseId, LeaseOutcome, Millis, ObjectId, Page, Record, Removed,
    Result, StoreBackend, Written,
};

/// How often a reader starts over when a value is replaced under it.
const READ_ATTEMPTS: usize = 16;

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

fn malformed(what: &str, reason: &str) -> BackendError {
    BackendError::Malformed {
        what: what.to_string(),
        reason: reason.to_string(),
    }
}

impl DynamoDb {
    pub async fn open(sdk: &aws_config::SdkConfig, table: &str, create: bool) -> Result<Self> {
        let this = DynamoDb {
            client: Client::new(sdk),
            table: table.to_string(),
        };
        this.ensure_table(create).await?;
        Ok(this)
    }

    /// Checks the table, or creates it when it is missing and `create` (with
    /// TTL deletion on), and waits until it is active.
    async fn ensure_table(&self, create: bool) -> Result<()> {
        let created = common::aws::ensure_table(&self.client, &self.table, "pk", "sk", create)
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
