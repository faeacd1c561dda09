//! Objects: get, conditional put and delete, listing a store's keys, and its stats.

use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};

use super::chunks::{CHUNK, chunks_of};
use super::{DynamoDb, Item, READ_ATTEMPTS, get_n, get_s, malformed, n, object_pk, s, sdk};
use crate::backend::{
    Condition, Entry, Millis, ObjectId, Page, Record, Removed, Result, Written, live,
};

impl DynamoDb {
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

    pub(super) async fn get_object(&self, id: ObjectId, now: Millis) -> Result<Option<Record>> {
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

    pub(super) async fn put_object(
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

    pub(super) async fn delete_object(
        &self,
        id: ObjectId,
        cond: Condition,
        now: Millis,
    ) -> Result<Removed> {
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

    pub(super) async fn list_keys(
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

    pub(super) async fn store_stats(
        &self,
        app: String,
        store: String,
        now: Millis,
    ) -> Result<(u64, u64)> {
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
