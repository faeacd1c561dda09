//! The fabric's CloudFormation stack deploys into the emulator, with and without IRSA, and declares what the components read.

use fabric_tests::stack::Stack;
use fabric_tests::unique_name;

/// A table's key schema, as (key type, attribute) pairs.
async fn keys(ddb: &aws_sdk_dynamodb::Client, table: &str) -> Vec<(String, String)> {
    let out = ddb.describe_table().table_name(table).send().await.unwrap();
    out.table()
        .unwrap()
        .key_schema()
        .iter()
        .map(|k| {
            (
                k.key_type().as_str().to_string(),
                k.attribute_name().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn the_stack_deploys_with_and_without_irsa_and_declares_the_components_resources() {
    let sdk = common::aws::sdk_config().await;
    let ddb = aws_sdk_dynamodb::Client::new(&sdk);
    let kms = aws_sdk_kms::Client::new(&sdk);
    for oidc in [None, Some("oidc.eks.us-east-1.amazonaws.com/id/EXAMPLE")] {
        let name = unique_name("stack");
        let prefix = format!("s{}-", &name[name.len() - 6..]);
        let stack = Stack::deploy(&name, &prefix, oidc).await;
        assert_eq!(stack.prefix, prefix);
        assert_eq!(stack.objectstore_table, format!("{prefix}objectstore"));
        assert_eq!(stack.registry_table, format!("{prefix}registry"));
        let pair = |a: &str, b: &str| vec![("HASH".into(), a.into()), ("RANGE".into(), b.into())];
        // The schemas objectstore-svc and the control plane check at start.
        assert_eq!(keys(&ddb, &stack.objectstore_table).await, pair("pk", "sk"));
        assert_eq!(keys(&ddb, &stack.registry_table).await, pair("kind", "id"));
        let rotation = kms
            .get_key_rotation_status()
            .key_id(&stack.key_arn)
            .send()
            .await
            .unwrap();
        assert!(rotation.key_rotation_enabled(), "{oidc:?}");
        stack.remove().await;
    }
}
