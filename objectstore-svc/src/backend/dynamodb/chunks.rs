//! Values too large for one item: written as chunks under a fresh version, read back whole or not at all.

use aws_sdk_dynamodb::error::DisplayErrorContext;
use aws_sdk_dynamodb::types::AttributeValue;
use futures::{StreamExt, TryStreamExt};

use super::{DynamoDb, Item, Key, get_n, get_s, n, s, sdk};
use crate::backend::{BackendError, Result};

/// The largest sealed value kept inline in its head item, and the size of a
/// chunk: under the 400 KB item limit with room for a 1 KiB key and metadata,
/// even as moto counts it (a binary attribute by its base64 length, 4/3 of it).
pub(super) const CHUNK: usize = 280 * 1024;
/// Chunk reads and writes in flight at once for one value.
pub(super) const CHUNK_PARALLELISM: usize = 8;

pub(super) fn chunk_id(version: &str, index: u64) -> Key {
    (format!("c#{version}"), format!("{index:05}"))
}

fn chunk_key(version: &str, index: u64) -> (AttributeValue, AttributeValue) {
    let (pk, sk) = chunk_id(version, index);
    (s(pk), s(sk))
}

/// The chunked version an old or current head points to, if any.
pub(super) fn chunks_of(item: &Item) -> Option<(String, u64)> {
    Some((get_s(item, "ver")?.to_string(), get_n(item, "n")?))
}

impl DynamoDb {
    pub(super) async fn write_chunks(
        &self,
        version: &str,
        sealed: &[u8],
        ttl: Option<u64>,
    ) -> Result<u64> {
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
    pub(super) async fn delete_chunks(&self, version: &str, count: u64) {
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
    pub(super) async fn read_chunks(&self, version: &str, count: u64) -> Result<Option<Vec<u8>>> {
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
}
