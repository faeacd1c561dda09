//! The orders pipeline done with the raw AWS SDKs against the same SQS and
//! DynamoDB emulators as the services: the reference `bench/worker` puts
//! beside the fabric's own pipeline when it runs on the emulators.
//!
//! It makes the calls the fabric makes for an order, in the same shapes:
//! publishers send batches of up to [`BATCH`], [`PUBLISHERS`] calls out at
//! once (the worker's publisher); consumers receive up to [`BATCH`] for free
//! slots, [`POLLERS`] receives out at once, at most `concurrency` orders in
//! hand (the worker's consumer); each order is a conditional put of its
//! claim, a put of its record and a conditional put settling the claim (the
//! `idempotent` and `store` steps); each received batch is deleted in one
//! call once its orders are stored (the worker's batched acks). What it
//! leaves out is the fabric itself: HTTP between the pieces, encryption at
//! rest, the flow engine.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, Message, SendMessageBatchRequestEntry};
use tokio::sync::Semaphore;

/// Messages per SQS batch call, as the worker's publisher and consumer send.
pub const BATCH: usize = 10;
/// Publish calls out at once (`queue_svc::client::PUBLISH_CALLS_IN_FLIGHT`).
pub const PUBLISHERS: usize = 4;
/// Receive calls out at once (the worker's consumer, at most four).
pub const POLLERS: usize = 4;

/// The raw pipeline's queue and table, made under `prefix`.
pub struct RawPipeline {
    sqs: aws_sdk_sqs::Client,
    ddb: aws_sdk_dynamodb::Client,
    queue_url: String,
    table: String,
}

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_string())
}

impl RawPipeline {
    /// Creates its queue and table (both named from `prefix`) where the
    /// environment's AWS configuration points.
    pub async fn create(prefix: &str) -> Self {
        let sdk = common::aws::sdk_config().await;
        let sqs = aws_sdk_sqs::Client::new(&sdk);
        let ddb = aws_sdk_dynamodb::Client::new(&sdk);
        let queue_url = sqs
            .create_queue()
            .queue_name(format!("{prefix}raw-orders"))
            .send()
            .await
            .expect("create the raw queue")
            .queue_url
            .expect("a queue URL");
        let table = format!("{prefix}raw-orders");
        common::aws::ensure_table(&ddb, &table, "pk", "sk", true)
            .await
            .unwrap_or_else(|e| {
                panic!("create the raw table: {} {}: {}", e.table, e.op, e.message)
            });
        RawPipeline {
            sqs,
            ddb,
            queue_url,
            table,
        }
    }

    /// Deletes its queue and table.
    pub async fn delete(&self) {
        let _ = self
            .sqs
            .delete_queue()
            .queue_url(&self.queue_url)
            .send()
            .await;
        let _ = self.ddb.delete_table().table_name(&self.table).send().await;
    }

    /// Publishes `n` orders `{prefix}-{i}` and processes every one with
    /// `concurrency` in hand; the seconds from the first publish until the
    /// last order is stored and its message deleted.
    pub async fn run(&self, prefix: &str, n: usize, concurrency: usize) -> f64 {
        let start = Instant::now();
        let next = Arc::new(AtomicUsize::new(0));
        let publishers: Vec<_> = (0..PUBLISHERS)
            .map(|_| {
                let (sqs, url, next, prefix) = (
                    self.sqs.clone(),
                    self.queue_url.clone(),
                    next.clone(),
                    prefix.to_string(),
                );
                tokio::spawn(async move {
                    loop {
                        let from = next.fetch_add(BATCH, Ordering::Relaxed);
                        if from >= n {
                            return;
                        }
                        let entries = (from..(from + BATCH).min(n))
                            .map(|i| {
                                let body = serde_json::json!({
                                    "payload": {"orderId": format!("{prefix}-{i}"), "customer": "bench", "total": 4200},
                                    "correlationId": uuid::Uuid::new_v4().to_string(),
                                });
                                SendMessageBatchRequestEntry::builder()
                                    .id(i.to_string())
                                    .message_body(body.to_string())
                                    .build()
                                    .expect("an entry")
                            })
                            .collect();
                        sqs.send_message_batch()
                            .queue_url(&url)
                            .set_entries(Some(entries))
                            .send()
                            .await
                            .expect("SendMessageBatch");
                    }
                })
            })
            .collect();
        let done = Arc::new(AtomicUsize::new(0));
        let slots = Arc::new(Semaphore::new(concurrency));
        let pollers: Vec<_> = (0..POLLERS)
            .map(|_| {
                let (me, done, slots) = (self.clone_handles(), done.clone(), slots.clone());
                tokio::spawn(async move { me.consume(n, done, slots).await })
            })
            .collect();
        for p in publishers {
            p.await.expect("publisher");
        }
        for p in pollers {
            p.await.expect("poller");
        }
        start.elapsed().as_secs_f64()
    }

    fn clone_handles(&self) -> RawPipeline {
        RawPipeline {
            sqs: self.sqs.clone(),
            ddb: self.ddb.clone(),
            queue_url: self.queue_url.clone(),
            table: self.table.clone(),
        }
    }

    /// Receives for free slots until `n` orders are done in all.
    async fn consume(self, n: usize, done: Arc<AtomicUsize>, slots: Arc<Semaphore>) {
        let me = Arc::new(self);
        let mut batches = Vec::new();
        while done.load(Ordering::Relaxed) < n {
            let Ok(first) = slots.clone().acquire_owned().await else {
                break;
            };
            let mut permits = vec![first];
            while permits.len() < BATCH {
                match slots.clone().try_acquire_owned() {
                    Ok(p) => permits.push(p),
                    Err(_) => break,
                }
            }
            let out = me
                .sqs
                .receive_message()
                .queue_url(&me.queue_url)
                .max_number_of_messages(permits.len() as i32)
                .wait_time_seconds(1)
                .visibility_timeout(30)
                .send()
                .await
                .expect("ReceiveMessage");
            let messages = out.messages.unwrap_or_default();
            if messages.is_empty() {
                continue;
            }
            let (me, done) = (me.clone(), done.clone());
            batches.push(tokio::spawn(async move {
                let stored = messages
                    .iter()
                    .map(|m| me.process(m.body().unwrap_or_default()));
                futures::future::join_all(stored).await;
                let entries = delete_entries(&messages);
                me.sqs
                    .delete_message_batch()
                    .queue_url(&me.queue_url)
                    .set_entries(Some(entries))
                    .send()
                    .await
                    .expect("DeleteMessageBatch");
                done.fetch_add(messages.len(), Ordering::Relaxed);
                drop(permits);
            }));
        }
        for b in batches {
            b.await.expect("a batch");
        }
    }

    /// The claim (if absent), the record, the claim settled (if present).
    async fn process(&self, body: &str) {
        let message: serde_json::Value = serde_json::from_str(body).expect("a JSON body");
        let id = message["payload"]["orderId"].as_str().unwrap_or_default();
        let claim = |done: bool| {
            HashMap::from([
                ("pk".to_string(), s(&format!("_idempotent/process/{id}"))),
                ("sk".to_string(), s("v")),
                ("done".to_string(), AttributeValue::Bool(done)),
            ])
        };
        self.ddb
            .put_item()
            .table_name(&self.table)
            .set_item(Some(claim(false)))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await
            .expect("claim");
        let mut record = message["payload"].clone();
        record["status"] = "stored".into();
        self.ddb
            .put_item()
            .table_name(&self.table)
            .set_item(Some(HashMap::from([
                ("pk".to_string(), s(&format!("orders/{id}"))),
                ("sk".to_string(), s("v")),
                ("value".to_string(), s(&record.to_string())),
            ])))
            .send()
            .await
            .expect("store");
        self.ddb
            .put_item()
            .table_name(&self.table)
            .set_item(Some(claim(true)))
            .condition_expression("attribute_exists(pk)")
            .send()
            .await
            .expect("settle");
    }
}

/// A `DeleteMessageBatch` entry for each of `messages` (received together,
/// so at most ten), numbered by position.
pub fn delete_entries(messages: &[Message]) -> Vec<DeleteMessageBatchRequestEntry> {
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            DeleteMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .receipt_handle(m.receipt_handle().unwrap_or_default())
                .build()
                .expect("an entry")
        })
        .collect()
}
