//! The fabric's CloudFormation stack (`infra/aws/fabric.yaml`) deployed into the emulator, and its outputs.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_cloudformation::types::{Capability, Parameter, StackStatus};

/// A deployed stack: what its outputs name.
#[derive(Debug, Clone)]
pub struct Stack {
    /// The stack's name.
    pub name: String,
    /// Its `Prefix`: queue names, table names, the fabric's name in the key's context.
    pub prefix: String,
    /// The KMS key wrapping the master key versions.
    pub key_arn: String,
    /// objectstore-svc's table.
    pub objectstore_table: String,
    /// The control plane's registry table.
    pub registry_table: String,
}

/// The template, as CloudFormation reads it.
pub fn template() -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../infra/aws/fabric.yaml");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

impl Stack {
    /// Creates the stack `name` with `prefix` and waits until it is complete
    /// (panics, with CloudFormation's reason, if it fails). The roles trust
    /// EKS Pod Identity, and IRSA for `oidc_provider` when given.
    pub async fn deploy(name: &str, prefix: &str, oidc_provider: Option<&str>) -> Stack {
        crate::Emulators::from_env();
        let sdk = common::aws::sdk_config().await;
        let cf = aws_sdk_cloudformation::Client::new(&sdk);
        cf.create_stack()
            .stack_name(name)
            .template_body(template())
            .parameters(
                Parameter::builder()
                    .parameter_key("Prefix")
                    .parameter_value(prefix)
                    .build(),
            )
            .parameters(
                Parameter::builder()
                    .parameter_key("OidcProvider")
                    .parameter_value(oidc_provider.unwrap_or_default())
                    .build(),
            )
            .capabilities(Capability::CapabilityNamedIam)
            .send()
            .await
            .unwrap_or_else(|e| panic!("create stack {name}: {e:?}"));
        let mut outputs = HashMap::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let described = cf
                .describe_stacks()
                .stack_name(name)
                .send()
                .await
                .unwrap_or_else(|e| panic!("describe stack {name}: {e:?}"));
            let stack = described.stacks().first().expect("the stack");
            match stack.stack_status() {
                Some(StackStatus::CreateComplete) => {
                    for o in stack.outputs() {
                        if let (Some(k), Some(v)) = (o.output_key(), o.output_value()) {
                            outputs.insert(k.to_string(), v.to_string());
                        }
                    }
                    break;
                }
                Some(StackStatus::CreateInProgress) => {}
                other => panic!(
                    "stack {name}: {other:?}: {}",
                    stack.stack_status_reason().unwrap_or_default()
                ),
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "stack {name} never completed"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let out = |key: &str| {
            outputs
                .get(key)
                .cloned()
                .unwrap_or_else(|| panic!("stack {name} has no output {key}: {outputs:?}"))
        };
        Stack {
            name: name.to_string(),
            prefix: out("Prefix"),
            key_arn: out("KeyArn"),
            objectstore_table: out("ObjectstoreTable"),
            registry_table: out("RegistryTable"),
        }
    }

    /// Deletes the stack and what it retains (the tables; the key stays, as a
    /// KMS key can only be scheduled for deletion), best effort.
    pub async fn remove(&self) {
        let sdk = common::aws::sdk_config().await;
        let cf = aws_sdk_cloudformation::Client::new(&sdk);
        let _ = cf.delete_stack().stack_name(&self.name).send().await;
        let ddb = aws_sdk_dynamodb::Client::new(&sdk);
        for table in [&self.objectstore_table, &self.registry_table] {
            let _ = ddb.delete_table().table_name(table).send().await;
        }
    }
}
