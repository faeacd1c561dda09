//! The AWS SDK configuration, from aws-config's default chain, and DynamoDB tables made ready on start.
//!
//! `AWS_ENDPOINT_URL_SQS` and `AWS_ENDPOINT_URL_DYNAMODB` point the clients at
//! the emulators; credentials and region come from the usual variables, files
//! or instance roles.

/// `sdk`'s timeouts, with `attempt` per attempt and `call` per call where
/// it sets none: a service that hangs is retried, then given up on, never
/// waited on for ever.
pub fn bounded_timeouts(
    sdk: &aws_config::SdkConfig,
    attempt: std::time::Duration,
    call: std::time::Duration,
) -> aws_config::timeout::TimeoutConfig {
    let set = sdk
        .timeout_config()
        .cloned()
        .unwrap_or_else(|| aws_config::timeout::TimeoutConfig::builder().build());
    let mut timeouts = set.to_builder();
    if set.operation_attempt_timeout().is_none() {
        timeouts = timeouts.operation_attempt_timeout(attempt);
    }
    if set.operation_timeout().is_none() {
        timeouts = timeouts.operation_timeout(call);
    }
    timeouts.build()
}

/// Loads the shared SDK configuration (region, credentials, endpoints).
pub async fn sdk_config() -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await
}

/// A DynamoDB table could not be made ready.
#[cfg(feature = "dynamodb")]
#[derive(Debug, thiserror::Error)]
#[error("dynamodb table {table}: {op}: {message}")]
pub struct TableError {
    /// The table.
    pub table: String,
    /// What was being done.
    pub op: &'static str,
    /// The SDK's account of the failure.
    pub message: String,
}

/// Makes sure `table` exists, with the string partition key `partition` and
/// sort key `sort`: when it is missing, creates it (on-demand billing) if
/// `create`, else fails naming it (a component on a stack it did not
/// create, `infra/aws`); then checks its key schema and waits until it is
/// active (one created a moment ago, here or by another instance, may still
/// be `CREATING`). Returns whether this call created it.
#[cfg(feature = "dynamodb")]
pub async fn ensure_table(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    partition: &str,
    sort: &str,
    create: bool,
) -> Result<bool, TableError> {
    use aws_sdk_dynamodb::error::DisplayErrorContext;
    use aws_sdk_dynamodb::types::TableStatus;

    let fail = |op: &'static str, message: String| TableError {
        table: table.to_string(),
        op,
        message,
    };
    let described = client.describe_table().table_name(table).send().await;
    let created = match described {
        Ok(out) => {
            let keys: Vec<(String, String)> = out
                .table()
                .map(|t| t.key_schema())
                .unwrap_or_default()
                .iter()
                .map(|k| {
                    (
                        k.key_type().as_str().to_string(),
                        k.attribute_name().to_string(),
                    )
                })
                .collect();
            let expected = [
                ("HASH".to_string(), partition.to_string()),
                ("RANGE".to_string(), sort.to_string()),
            ];
            if keys != expected {
                return Err(fail(
                    "check key schema",
                    format!(
                        "keys {keys:?}, expected partition key {partition:?} and sort key {sort:?}"
                    ),
                ));
            }
            false
        }
        Err(e)
            if e.as_service_error()
                .is_some_and(|e| e.is_resource_not_found_exception()) =>
        {
            if !create {
                return Err(fail(
                    "find table",
                    "it does not exist, and this component does not create resources \
                     (create_resources is off): deploy the stack (infra/aws) or name the table it made"
                        .into(),
                ));
            }
            create_table(client, table, partition, sort)
                .await
                .map_err(|m| fail("create table", m))?
        }
        Err(e) => {
            return Err(fail("describe table", DisplayErrorContext(&e).to_string()));
        }
    };
    for _ in 0..120 {
        let described = client
            .describe_table()
            .table_name(table)
            .send()
            .await
            .map_err(|e| fail("describe table", DisplayErrorContext(&e).to_string()))?;
        if described.table().and_then(|t| t.table_status()) == Some(&TableStatus::Active) {
            return Ok(created);
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    Err(fail("wait", "the table did not become active".into()))
}

/// Creates the table; false when another instance created it first.
#[cfg(feature = "dynamodb")]
async fn create_table(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    partition: &str,
    sort: &str,
) -> Result<bool, String> {
    use aws_sdk_dynamodb::error::DisplayErrorContext;
    use aws_sdk_dynamodb::types::{
        AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
    };

    let attr = |name: &str| {
        AttributeDefinition::builder()
            .attribute_name(name)
            .attribute_type(ScalarAttributeType::S)
            .build()
    };
    let key = |name: &str, kind| {
        KeySchemaElement::builder()
            .attribute_name(name)
            .key_type(kind)
            .build()
    };
    let request = (|| {
        Ok::<_, aws_sdk_dynamodb::error::BuildError>(
            client
                .create_table()
                .table_name(table)
                .attribute_definitions(attr(partition)?)
                .attribute_definitions(attr(sort)?)
                .key_schema(key(partition, KeyType::Hash)?)
                .key_schema(key(sort, KeyType::Range)?)
                .billing_mode(BillingMode::PayPerRequest),
        )
    })()
    .map_err(|e| e.to_string())?;
    match request.send().await {
        Ok(_) => {
            tracing::info!(table, "created the DynamoDB table");
            Ok(true)
        }
        Err(e)
            if e.as_service_error()
                .is_some_and(|e| e.is_resource_in_use_exception()) =>
        {
            Ok(false)
        }
        Err(e) => Err(DisplayErrorContext(&e).to_string()),
    }
}
