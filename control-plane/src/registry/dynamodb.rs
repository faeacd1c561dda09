//! The DynamoDB backend: one table, partition key `kind` (`app`, `placement`
//! or `tenant`), sort key `id`, the sealed value in the binary attribute `v`.
//!
//! One control plane owns a table: its writer is the only one, so writes
//! are plain puts and deletes. Each call is bounded by a timeout, so an
//! unreachable table fails a write (which the writer retries) rather than
//! hanging it.

use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{DisplayErrorContext, SdkError};
use aws_sdk_dynamodb::types::AttributeValue;
use futures::FutureExt;
use futures::future::BoxFuture;

use super::{RecordKind, Sealed, Store, StoreError};

/// The longest one attempt of a call may take (unless the SDK configuration sets one).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest one call may take, retries included (unless the SDK configuration sets one).
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

pub(super) struct DynamoDb {
    client: Client,
    table: String,
    name: String,
}

fn sdk<E, R>(op: &'static str) -> impl Fn(SdkError<E, R>) -> StoreError
where
    E: std::error::Error + 'static,
    R: std::fmt::Debug,
{
    move |e| StoreError {
        op,
        message: DisplayErrorContext(&e).to_string(),
    }
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

impl DynamoDb {
    /// A client from `sdk` for `table`, which is created when missing if `create`.
    pub(super) async fn open(
        sdk: &aws_config::SdkConfig,
        table: &str,
        create: bool,
    ) -> Result<Self, StoreError> {
        let timeouts = common::aws::bounded_timeouts(sdk, ATTEMPT_TIMEOUT, CALL_TIMEOUT);
        let config = aws_sdk_dynamodb::config::Builder::from(sdk).timeout_config(timeouts);
        let client = Client::from_conf(config.build());
        common::aws::ensure_table(&client, table, "kind", "id", create)
            .await
            .map_err(|e| StoreError {
                op: e.op,
                message: e.message,
            })?;
        Ok(DynamoDb {
            client,
            table: table.to_string(),
            name: format!("dynamodb table {table}"),
        })
    }
}

impl Store for DynamoDb {
    fn name(&self) -> &str {
        &self.name
    }

    fn load(&self) -> BoxFuture<'_, Result<Vec<Sealed>, StoreError>> {
        async move {
            let mut out = Vec::new();
            for kind in RecordKind::ALL {
                let mut items = self
                    .client
                    .query()
                    .table_name(&self.table)
                    .consistent_read(true)
                    .key_condition_expression("#kind = :kind")
                    .expression_attribute_names("#kind", "kind")
                    .expression_attribute_values(":kind", s(kind.as_str()))
                    .into_paginator()
                    .items()
                    .send();
                while let Some(item) = items.next().await {
                    let item = item.map_err(sdk("load"))?;
                    let id = item.get("id").and_then(|v| v.as_s().ok());
                    let value = item.get("v").and_then(|v| v.as_b().ok());
                    let Some(id) = id else {
                        continue;
                    };
                    out.push(Sealed {
                        kind,
                        id: id.clone(),
                        // A missing value fails to open, naming the record.
                        value: value.map(|b| b.as_ref().to_vec()).unwrap_or_default(),
                    });
                }
            }
            Ok(out)
        }
        .boxed()
    }

    fn put(&self, record: Sealed) -> BoxFuture<'_, Result<(), StoreError>> {
        async move {
            self.client
                .put_item()
                .table_name(&self.table)
                .item("kind", s(record.kind.as_str()))
                .item("id", s(record.id))
                .item("v", AttributeValue::B(record.value.into()))
                .send()
                .await
                .map_err(sdk("put"))?;
            Ok(())
        }
        .boxed()
    }

    fn delete(&self, kind: RecordKind, id: String) -> BoxFuture<'_, Result<(), StoreError>> {
        async move {
            self.client
                .delete_item()
                .table_name(&self.table)
                .key("kind", s(kind.as_str()))
                .key("id", s(id))
                .send()
                .await
                .map_err(sdk("delete"))?;
            Ok(())
        }
        .boxed()
    }
}
