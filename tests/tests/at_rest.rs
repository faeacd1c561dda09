//! Sealed records through the official SDKs: what SQS and DynamoDB hold is ciphertext.

use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType,
};
use aws_sdk_sqs::types::MessageAttributeValue;
use common::envelope::{Aad, Keyring, MasterKey, OpenError, ResourceKind};
use fabric_tests::{Emulators, contains, unique_name};
use hex::{decode, encode};

const PLAINTEXT: &[u8] = br#"{"orderId":"A-1001","customer":"alice@example.com","total":4200}"#;

/// The SQS body is text, so sealed bytes travel hex-encoded in this test.
mod hex {
    pub fn encode(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
    pub fn decode(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
            .collect()
    }
}

fn assert_no_plaintext(raw: &[u8]) {
    for needle in [
        PLAINTEXT,
        b"alice@example.com".as_slice(),
        b"A-1001".as_slice(),
    ] {
        assert!(
            !contains(raw, needle),
            "plaintext {:?} found at rest",
            String::from_utf8_lossy(needle)
        );
    }
}

#[tokio::test]
async fn sealed_message_in_sqs_is_ciphertext_and_opens_again() {
    Emulators::from_env();
    let sdk = common::aws::sdk_config().await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let ring = Keyring::single(MasterKey::generate());
    let queue = unique_name("wf-at-rest");
    let url = sqs
        .create_queue()
        .queue_name(&queue)
        .send()
        .await
        .expect("create queue")
        .queue_url
        .expect("queue url");

    let message_id = "m-1";
    let aad = Aad {
        app: "orders",
        kind: ResourceKind::Queue,
        resource: &queue,
        key: message_id,
    };
    let sealed = ring.seal(&aad, PLAINTEXT);
    sqs.send_message()
        .queue_url(&url)
        .message_body(encode(&sealed))
        .message_attributes(
            "fabric-id",
            MessageAttributeValue::builder()
                .data_type("String")
                .string_value(message_id)
                .build()
                .expect("attribute"),
        )
        .send()
        .await
        .expect("send");

    let received = sqs
        .receive_message()
        .queue_url(&url)
        .message_attribute_names("All")
        .wait_time_seconds(5)
        .send()
        .await
        .expect("receive");
    let message = received.messages().first().expect("one message").clone();
    let body = message.body().expect("body");
    assert_no_plaintext(body.as_bytes());
    let raw = decode(body);
    assert_no_plaintext(&raw);
    assert_eq!(raw, sealed);

    let id = message
        .message_attributes()
        .and_then(|a| a.get("fabric-id"))
        .and_then(|v| v.string_value())
        .expect("id attribute");
    let opened = ring
        .open(&Aad { key: id, ..aad }, &raw)
        .expect("opens where it was sealed");
    assert_eq!(opened, PLAINTEXT);
    // The same bytes under another queue's name do not open.
    let moved = Aad {
        resource: "elsewhere",
        ..aad
    };
    assert_eq!(ring.open(&moved, &raw), Err(OpenError::Rejected));

    sqs.delete_queue()
        .queue_url(&url)
        .send()
        .await
        .expect("delete queue");
}

#[tokio::test]
async fn sealed_item_in_dynamodb_is_ciphertext_and_opens_again() {
    Emulators::from_env();
    let sdk = common::aws::sdk_config().await;
    let ddb = aws_sdk_dynamodb::Client::new(&sdk);
    let ring = Keyring::single(MasterKey::generate());
    let table = unique_name("wf-at-rest");
    let attr = |name: &str| {
        AttributeDefinition::builder()
            .attribute_name(name)
            .attribute_type(ScalarAttributeType::S)
            .build()
            .expect("attribute definition")
    };
    let key = |name: &str, kind| {
        KeySchemaElement::builder()
            .attribute_name(name)
            .key_type(kind)
            .build()
            .expect("key schema")
    };
    ddb.create_table()
        .table_name(&table)
        .attribute_definitions(attr("pk"))
        .attribute_definitions(attr("sk"))
        .key_schema(key("pk", KeyType::Hash))
        .key_schema(key("sk", KeyType::Range))
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await
        .expect("create table");

    let aad = Aad {
        app: "orders",
        kind: ResourceKind::Store,
        resource: "orders",
        key: "A-1001",
    };
    let sealed = ring.seal(&aad, PLAINTEXT);
    ddb.put_item()
        .table_name(&table)
        .item("pk", AttributeValue::S("orders#orders".into()))
        .item("sk", AttributeValue::S("A-1001".into()))
        .item("v", AttributeValue::B(sealed.clone().into()))
        .send()
        .await
        .expect("put item");

    let item = ddb
        .get_item()
        .table_name(&table)
        .key("pk", AttributeValue::S("orders#orders".into()))
        .key("sk", AttributeValue::S("A-1001".into()))
        .consistent_read(true)
        .send()
        .await
        .expect("get item")
        .item
        .expect("item present");
    let raw = item
        .get("v")
        .and_then(|v| v.as_b().ok())
        .expect("binary value")
        .as_ref()
        .to_vec();
    assert_no_plaintext(&raw);
    assert_eq!(raw, sealed);
    assert_eq!(ring.open(&aad, &raw).expect("opens"), PLAINTEXT);
    let other_key = Aad {
        key: "A-1002",
        ..aad
    };
    assert_eq!(ring.open(&other_key, &raw), Err(OpenError::Rejected));

    ddb.delete_table()
        .table_name(&table)
        .send()
        .await
        .expect("delete table");
}
