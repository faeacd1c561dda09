//! The at-rest scan: a few orders parked in a sealed queue, then the raw
//! data (SQS messages and DynamoDB items, or the embedded files) searched
//! for the run's order ids and card numbers.

use std::collections::BTreeSet;
use std::path::Path;

use super::harness::{AwsNames, Fabric};
use super::load::{card_prefix, order_prefix};
use super::report::Report;
use super::{APP, QUEUE};

/// How many orders are parked to be read raw.
const PARKED: usize = 20;

/// Parks orders where they stay queued, then reads what lies at rest
/// (through the SDK on `aws`, else the embedded files) into `report`.
pub(super) async fn scan(fabric: &Fabric, run: &str, aws: Option<&AwsNames>, report: &mut Report) {
    park_orders(fabric, run).await;
    let (order, card) = (order_prefix(run), card_prefix(run));
    match aws {
        Some(names) => {
            scan_aws(names, &order, &card, report).await;
            // On the stack, the master key is in KMS: no component wrote a
            // plain one (the load balancer included, which has no use for it).
            let plain = fabric.dir().join(common::secrets::MASTER_KEY_FILE);
            if plain.exists() {
                report
                    .at_rest_leaks
                    .push(format!("a plain master key at {}", plain.display()));
            }
        }
        None => scan_embedded(fabric.dir(), &order, &card, report),
    }
}

/// Publishes orders the way the app's workers publish, into a sealed queue
/// of another instance of the app, which no worker takes from, so they stay
/// queued to be read raw.
async fn park_orders(fabric: &Fabric, run: &str) {
    let queues = fabric.queues_of(&format!("{APP}--parked"));
    queues
        .declare(
            QUEUE,
            &queue_svc::api::QueueSpec {
                encrypted: true,
                max_deliveries: Some(5),
            },
        )
        .await
        .expect("declare the parking queue");
    let parked: Vec<String> = (0..PARKED)
        .map(|i| {
            serde_json::json!({
                "payload": {
                    "orderId": format!("{}parked-{i}", order_prefix(run)),
                    "card": format!("{}parked-{i}", card_prefix(run)),
                },
                "correlationId": format!("parked-{i}"),
            })
            .to_string()
        })
        .collect();
    // Batches of ten, as SQS takes them.
    for batch in parked.chunks(10) {
        queues
            .publish_batch(QUEUE, batch.to_vec())
            .await
            .expect("park orders in the queue");
    }
}

/// The embedded files: no card number anywhere (keys included); no order id
/// in the queue file (the object store's keys are order ids, by the manifest).
fn scan_embedded(dir: &Path, order: &str, card: &str, report: &mut Report) {
    let queues = std::fs::read(dir.join(queue_svc::EMBEDDED_FILE)).expect("the queue file");
    let stores = std::fs::read(dir.join(objectstore_svc::EMBEDDED_FILE)).expect("the store file");
    for (name, bytes, needles) in [
        ("queue file", &queues, vec![order, card]),
        ("object store file", &stores, vec![card]),
    ] {
        for needle in needles {
            if crate::contains(bytes, needle.as_bytes()) {
                report
                    .at_rest_leaks
                    .push(format!("{needle:?} in the {name}"));
            }
        }
    }
    report.at_rest_read = format!(
        "queue file {} bytes, object store file {} bytes",
        queues.len(),
        stores.len()
    );
}

/// SQS and DynamoDB through the SDK: no order id or card number in any queued
/// message (body and attributes); no card number in any item, and order ids
/// only in the sort key (the store key the manifest chose).
async fn scan_aws(names: &AwsNames, order: &str, card: &str, report: &mut Report) {
    let sdk = common::aws::sdk_config().await;
    let (queues, messages) = scan_sqs(&sdk, names.sqs_prefix(), order, card, report).await;
    let items = scan_dynamodb(&sdk, names.table(), order, card, report).await;
    report.at_rest_read =
        format!("{messages} raw messages in {queues} SQS queues, {items} DynamoDB items");
}

/// Every message of the queues named `prefix…`; returns how many queues and messages.
async fn scan_sqs(
    sdk: &aws_config::SdkConfig,
    prefix: &str,
    order: &str,
    card: &str,
    report: &mut Report,
) -> (usize, usize) {
    let sqs = aws_sdk_sqs::Client::new(sdk);
    let urls = sqs
        .list_queues()
        .queue_name_prefix(prefix)
        .send()
        .await
        .expect("list the run's queues")
        .queue_urls
        .unwrap_or_default();
    let mut messages = 0;
    for url in &urls {
        // Received, never deleted: they stay queued (hidden for a while; no
        // consumer is left to mind). Until a receive comes back empty.
        let mut seen = BTreeSet::new();
        loop {
            let got = sqs
                .receive_message()
                .queue_url(url)
                .max_number_of_messages(10)
                .visibility_timeout(60)
                .message_attribute_names("All")
                .message_system_attribute_names(aws_sdk_sqs::types::MessageSystemAttributeName::All)
                .send()
                .await
                .expect("receive raw messages");
            if got.messages().is_empty() {
                break;
            }
            for m in got.messages() {
                let raw = format!("{m:?}");
                if seen.insert(m.message_id().unwrap_or_default().to_string()) {
                    messages += 1;
                }
                for needle in [order, card] {
                    if crate::contains(raw.as_bytes(), needle.as_bytes()) {
                        report
                            .at_rest_leaks
                            .push(format!("{needle:?} in a message of {url}"));
                    }
                }
            }
        }
    }
    (urls.len(), messages)
}

/// Every item of `table`; returns how many.
async fn scan_dynamodb(
    sdk: &aws_config::SdkConfig,
    table: &str,
    order: &str,
    card: &str,
    report: &mut Report,
) -> usize {
    let ddb = aws_sdk_dynamodb::Client::new(sdk);
    let mut items = 0;
    let mut start = None;
    loop {
        let page = ddb
            .scan()
            .table_name(table)
            .set_exclusive_start_key(start)
            .send()
            .await
            .expect("scan the run's table");
        for item in page.items() {
            items += 1;
            for (attr, value) in item {
                let raw = match value {
                    aws_sdk_dynamodb::types::AttributeValue::B(b) => b.as_ref().to_vec(),
                    other => format!("{other:?}").into_bytes(),
                };
                if crate::contains(&raw, card.as_bytes()) {
                    report
                        .at_rest_leaks
                        .push(format!("{card:?} in attribute {attr}"));
                }
                if attr != "sk" && crate::contains(&raw, order.as_bytes()) {
                    report
                        .at_rest_leaks
                        .push(format!("{order:?} in attribute {attr}"));
                }
            }
        }
        match page.last_evaluated_key {
            Some(k) if !k.is_empty() => start = Some(k),
            _ => break,
        }
    }
    items
}
