//! At rest: what SQS and the embedded file hold for an encrypted queue is
//! ciphertext; for a plain queue (the control) the plaintext is there.

mod support;

use queue_svc::BackendKind;
use queue_svc::api::QueueSpec;
use support::{Service, settings};

/// The encrypted queue's body: it must never be found at rest.
const SECRET: &str = "card=4111-1111-1111-1111;holder=alice@example.com";
/// The plain queue's body: the control, found at rest, so the search works.
const VISIBLE: &str = "card=5500-0000-0000-0004;holder=bob@example.com";

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

async fn publish(svc: &Service, queue: &str, encrypted: bool, body: &str) {
    let c = svc.client("vault");
    let spec = QueueSpec {
        encrypted,
        max_deliveries: None,
    };
    c.declare(queue, &spec).await.unwrap();
    c.publish_batch(queue, vec![body.to_string()])
        .await
        .unwrap();
}

#[tokio::test]
async fn embedded_file_holds_no_plaintext_of_an_encrypted_queue() {
    let dir = tempfile::tempdir().unwrap();
    let svc = Service::start(settings(BackendKind::Embedded), dir.path(), None).await;
    publish(&svc, "sealed", true, SECRET).await;
    publish(&svc, "plain", false, VISIBLE).await;
    svc.stop().await;

    let raw = std::fs::read(dir.path().join(queue_svc::EMBEDDED_FILE)).unwrap();
    assert!(
        contains(&raw, VISIBLE.as_bytes()),
        "control: a plain queue's body is stored as is"
    );
    for needle in [SECRET, "alice@example.com", "4111-1111"] {
        assert!(
            !contains(&raw, needle.as_bytes()),
            "{needle:?} of the encrypted queue is in the file"
        );
    }
}

#[tokio::test]
async fn sqs_messages_hold_no_plaintext_of_an_encrypted_queue() {
    let dir = tempfile::tempdir().unwrap();
    let settings = settings(BackendKind::Sqs);
    let svc = Service::start(settings.clone(), dir.path(), None).await;
    publish(&svc, "sealed", true, SECRET).await;
    publish(&svc, "plain", false, VISIBLE).await;

    let sqs = aws_sdk_sqs::Client::new(&common::aws::sdk_config().await);
    let urls = sqs
        .list_queues()
        .queue_name_prefix(&settings.sqs_prefix)
        .send()
        .await
        .unwrap()
        .queue_urls
        .unwrap_or_default();
    let mut seen = std::collections::BTreeMap::new();
    for url in urls.iter().filter(|u| !u.ends_with("_dlq")) {
        let out = sqs
            .receive_message()
            .queue_url(url)
            .message_attribute_names("All")
            .visibility_timeout(0)
            .wait_time_seconds(2)
            .send()
            .await
            .unwrap();
        for m in out.messages() {
            // Everything SQS holds for the message: body and every attribute.
            let mut raw = m.body().unwrap_or_default().as_bytes().to_vec();
            for (name, v) in m.message_attributes().into_iter().flatten() {
                raw.extend_from_slice(name.as_bytes());
                raw.extend_from_slice(v.string_value().unwrap_or_default().as_bytes());
                raw.extend_from_slice(v.binary_value().map(|b| b.as_ref()).unwrap_or_default());
            }
            seen.insert(url.clone(), raw);
        }
    }
    assert_eq!(seen.len(), 2, "one message per queue: {urls:?}");
    assert!(
        seen.values().any(|raw| contains(raw, VISIBLE.as_bytes())),
        "control: a plain queue's body travels as is"
    );
    for needle in [SECRET, "alice@example.com", "4111-1111"] {
        assert!(
            seen.values().all(|raw| !contains(raw, needle.as_bytes())),
            "{needle:?} of the encrypted queue reached SQS"
        );
    }
    svc.stop().await;
}

/// Rolls the queue's one message back with `error`, then leases it again and
/// returns the last error it comes back with.
async fn roll_back_with(svc: &Service, queue: &str, error: &str) -> Option<String> {
    let c = svc.client("vault");
    let opts = queue_svc::client::LeaseOptions {
        max: 1,
        wait: std::time::Duration::from_secs(5),
        lock: std::time::Duration::from_secs(30),
    };
    let first = c.lease(queue, opts).await.unwrap();
    c.rollback(&first[0].lease_id, Some(error)).await.unwrap();
    let again = c.lease(queue, opts).await.unwrap();
    again[0].last_error.clone()
}

#[tokio::test]
async fn an_encrypted_queues_last_error_is_sealed_in_the_embedded_file() {
    // A worker's error can quote the payload (a store key in a URL, a
    // validation message), so it is kept as sealed as the body.
    let dir = tempfile::tempdir().unwrap();
    let svc = Service::start(settings(BackendKind::Embedded), dir.path(), None).await;
    publish(&svc, "sealed", true, "body").await;
    publish(&svc, "plain", false, "body").await;
    assert_eq!(
        roll_back_with(&svc, "sealed", SECRET).await.as_deref(),
        Some(SECRET),
        "the error comes back opened"
    );
    assert_eq!(
        roll_back_with(&svc, "plain", VISIBLE).await.as_deref(),
        Some(VISIBLE)
    );
    svc.stop().await;

    let raw = std::fs::read(dir.path().join(queue_svc::EMBEDDED_FILE)).unwrap();
    assert!(
        contains(&raw, VISIBLE.as_bytes()),
        "control: a plain queue's error is stored as is"
    );
    assert!(
        !contains(&raw, b"alice@example.com"),
        "the encrypted queue's error is in the file"
    );
}

/// Every attribute of the run's one SQS queue, or of its DLQ.
async fn attributes_of(
    sqs: &aws_sdk_sqs::Client,
    prefix: &str,
    dead: bool,
) -> std::collections::HashMap<String, String> {
    let urls = sqs
        .list_queues()
        .queue_name_prefix(prefix)
        .send()
        .await
        .unwrap()
        .queue_urls
        .unwrap_or_default();
    let url = urls
        .iter()
        .find(|u| u.ends_with("_dlq") == dead)
        .unwrap_or_else(|| panic!("no queue in {urls:?}"));
    let out = sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::All)
        .send()
        .await
        .unwrap();
    out.attributes()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.as_str().to_string(), v.clone()))
        .collect()
}

#[tokio::test]
async fn sqs_encrypts_the_queues_with_the_configured_key_and_redrives_to_their_dlq() {
    let sqs = aws_sdk_sqs::Client::new(&common::aws::sdk_config().await);
    let key = "arn:aws:kms:us-east-1:000000000000:key/0f6e3a4e-0000-4000-8000-000000000000";
    for kms_key in [Some(key), None] {
        let dir = tempfile::tempdir().unwrap();
        let settings = queue_svc::Settings {
            sqs_kms_key: kms_key.map(str::to_string),
            ..settings(BackendKind::Sqs)
        };
        let svc = Service::start(settings.clone(), dir.path(), None).await;
        let c = svc.client("vault");
        let spec = QueueSpec {
            encrypted: true,
            max_deliveries: Some(4),
        };
        c.declare("orders", &spec).await.unwrap();
        let main = attributes_of(&sqs, &settings.sqs_prefix, false).await;
        let dead = attributes_of(&sqs, &settings.sqs_prefix, true).await;
        for attrs in [&main, &dead] {
            match kms_key {
                Some(key) => assert_eq!(attrs.get("KmsMasterKeyId").map(String::as_str), Some(key)),
                None => {
                    assert_eq!(
                        attrs.get("SqsManagedSseEnabled").map(String::as_str),
                        Some("true")
                    );
                    assert!(attrs.get("KmsMasterKeyId").is_none_or(|k| k.is_empty()));
                }
            }
        }
        let redrive: serde_json::Value =
            serde_json::from_str(main.get("RedrivePolicy").expect("a redrive policy")).unwrap();
        assert_eq!(
            redrive["deadLetterTargetArn"].as_str(),
            dead.get("QueueArn").map(String::as_str)
        );
        // SQS moves a message itself only well after the service would have
        // (at 4 deliveries, with its history): a backstop.
        assert_eq!(redrive["maxReceiveCount"].as_u64(), Some(14), "{redrive}");
        // And the queue still carries messages.
        c.publish_batch("orders", vec!["x".into()]).await.unwrap();
        let got = c
            .lease(
                "orders",
                queue_svc::client::LeaseOptions {
                    max: 1,
                    wait: std::time::Duration::from_secs(5),
                    lock: std::time::Duration::from_secs(30),
                },
            )
            .await
            .unwrap();
        assert_eq!(got.len(), 1);
        svc.stop().await;
    }
}
