//! Forgetting an app: its tombstone, then a scan that deletes every item of it.

use std::collections::BTreeSet;
use std::time::Duration;

use aws_sdk_dynamodb::types::{DeleteRequest, WriteRequest};
use futures::{StreamExt, TryStreamExt};

use super::chunks::{CHUNK_PARALLELISM, chunk_id, chunks_of};
use super::{DynamoDb, Key, get_s, n, s, sdk};
use crate::backend::{BackendError, Result};

/// The partition of the tombstones.
const TOMBSTONES: &str = "_tombstones";
/// Deletes per `BatchWriteItem` call, DynamoDB's most.
const DELETE_BATCH: usize = 25;
/// Calls for one batch of deletes while DynamoDB leaves some unprocessed
/// (throttled), pausing 50 ms and doubling between them.
const DELETE_ATTEMPTS: u32 = 8;

/// Forgetting an app: its tombstone, and every item it has.
impl DynamoDb {
    pub(super) async fn bury_app(&self, app: String) -> Result<()> {
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

    pub(super) async fn read_tombstones(&self) -> Result<Vec<String>> {
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
    pub(super) async fn purge(&self, app: String) -> Result<()> {
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
