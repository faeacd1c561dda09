//! The batched SQS message calls the operations are built from: send, receive, delete, change visibility.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, Message, MessageSystemAttributeName,
    SendMessageBatchRequestEntry,
};

use super::body::{encode_body, string_attr};
use super::{NAME, Sqs, sdk_err};
use crate::backend::{BackendError, Part, QueueId, Stored};

fn ceil_secs(d: Duration) -> i32 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    secs.min(crate::api::MAX_LOCK_SECS) as i32
}

impl Sqs {
    pub(super) async fn send_batch(
        &self,
        url: &str,
        batch: &[(Stored, Vec<(&str, String)>)],
    ) -> Result<(), BackendError> {
        let mut entries = Vec::with_capacity(batch.len());
        for (i, (m, extra)) in batch.iter().enumerate() {
            // Only a dead letter carries attributes: its delivery count and last error.
            let attrs: HashMap<_, _> = extra
                .iter()
                .map(|(k, v)| {
                    let kind = if *k == "ferr" { "String" } else { "Number" };
                    (k.to_string(), string_attr(v, kind))
                })
                .collect();
            let entry = SendMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .message_body(encode_body(m))
                .set_message_attributes((!attrs.is_empty()).then_some(attrs))
                .build()
                .map_err(|e| BackendError::store(NAME, e))?;
            entries.push(entry);
        }
        let out = self
            .client
            .send_message_batch()
            .queue_url(url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| sdk_err("send message batch", e))?;
        if let Some(f) = out.failed().first() {
            return Err(BackendError::store(
                NAME,
                format!(
                    "send message batch: {} of {} failed, first: {}",
                    out.failed().len(),
                    batch.len(),
                    f.message().unwrap_or(f.code())
                ),
            ));
        }
        Ok(())
    }

    pub(super) async fn delete_batch(
        &self,
        url: &str,
        handles: &[String],
    ) -> Result<Vec<Result<(), BackendError>>, BackendError> {
        let entries = handles
            .iter()
            .enumerate()
            .map(|(i, h)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(h)
                    .build()
                    .map_err(|e| BackendError::store(NAME, e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let out = self
            .client
            .delete_message_batch()
            .queue_url(url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| sdk_err("delete message batch", e))?;
        let mut results: Vec<Result<(), BackendError>> = handles.iter().map(|_| Ok(())).collect();
        for f in out.failed() {
            if let Ok(i) = f.id().parse::<usize>()
                && i < results.len()
            {
                results[i] = Err(BackendError::LeaseLost(
                    f.message().unwrap_or(f.code()).to_string(),
                ));
            }
        }
        Ok(results)
    }

    pub(super) async fn receive_raw(
        &self,
        url: &str,
        max: usize,
        wait: Duration,
        lock: Duration,
    ) -> Result<Vec<Message>, BackendError> {
        let out = self
            .client
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(max as i32)
            .wait_time_seconds(wait.as_secs() as i32)
            .visibility_timeout(ceil_secs(lock))
            .message_attribute_names("All")
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .map_err(|e| sdk_err("receive message", e))?;
        Ok(out.messages.unwrap_or_default())
    }

    /// Makes a leased message visible `after` from now (rollback, heartbeat).
    pub(super) async fn change_visibility(
        &self,
        q: &QueueId,
        part: Part,
        handle: &str,
        after: Duration,
        what: &str,
    ) -> Result<(), BackendError> {
        let url = self.url(q, part).await?;
        self.client
            .change_message_visibility()
            .queue_url(url)
            .receipt_handle(handle)
            .visibility_timeout(ceil_secs(after))
            .send()
            .await
            .map_err(|e| sdk_err(what, e))?;
        Ok(())
    }
}
