//! Declaring an app's queues, finding them (URLs, tags, listing) and counting their messages.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_sqs::error::ProvideErrorMetadata;
use aws_sdk_sqs::types::QueueAttributeName;

use super::naming::app_prefix;
use super::{NAME, Sqs, sdk_err};
use crate::backend::{BackendError, Counts, DEAD_RETENTION, Part, QueueConfig, QueueId};

impl Sqs {
    /// A queue's tags (none for a DLQ or a tombstone).
    async fn tags(&self, url: &str) -> Result<HashMap<String, String>, BackendError> {
        let out = self
            .client
            .list_queue_tags()
            .queue_url(url)
            .send()
            .await
            .map_err(|e| sdk_err("list queue tags", e))?;
        Ok(out.tags.unwrap_or_default())
    }

    /// The URLs of every queue whose name starts with `prefix`.
    pub(super) async fn urls_with_prefix(&self, prefix: &str) -> Result<Vec<String>, BackendError> {
        let mut urls = Vec::new();
        let mut pages = self
            .client
            .list_queues()
            .queue_name_prefix(prefix)
            .max_results(1000)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| sdk_err("list queues", e))?;
            urls.extend(page.queue_urls().iter().cloned());
        }
        Ok(urls)
    }

    pub(super) async fn url(&self, q: &QueueId, part: Part) -> Result<String, BackendError> {
        let name = self.sqs_name(q, part);
        if let Some(url) = self
            .urls
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&name)
        {
            return Ok(url.clone());
        }
        let out = self
            .client
            .get_queue_url()
            .queue_name(&name)
            .send()
            .await
            .map_err(|e| match sdk_err("get queue url", e) {
                BackendError::UnknownQueue(_) => BackendError::UnknownQueue(q.to_string()),
                other => other,
            })?;
        let url = out
            .queue_url()
            .ok_or_else(|| BackendError::store(NAME, "no queue url"))?
            .to_string();
        self.urls
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name, url.clone());
        Ok(url)
    }

    /// Creates a queue, or sets the attributes of the existing one.
    async fn ensure(
        &self,
        name: &str,
        attrs: &[(QueueAttributeName, String)],
    ) -> Result<String, BackendError> {
        let mut create = self.client.create_queue().queue_name(name);
        for (k, v) in attrs {
            create = create.attributes(k.clone(), v);
        }
        let url = match create.send().await {
            Ok(out) => out.queue_url().unwrap_or_default().to_string(),
            Err(e) if matches!(e.code(), Some(c) if c.contains("QueueAlreadyExists") || c.contains("QueueNameExists")) =>
            {
                let url = self
                    .client
                    .get_queue_url()
                    .queue_name(name)
                    .send()
                    .await
                    .map_err(|e| sdk_err("get queue url", e))?
                    .queue_url()
                    .unwrap_or_default()
                    .to_string();
                let mut set = self.client.set_queue_attributes().queue_url(&url);
                for (k, v) in attrs {
                    set = set.attributes(k.clone(), v);
                }
                set.send()
                    .await
                    .map_err(|e| sdk_err("set queue attributes", e))?;
                url
            }
            Err(e) => return Err(sdk_err("create queue", e)),
        };
        self.urls
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), url.clone());
        Ok(url)
    }

    /// Declares the queue and its DLQ, or updates its settings.
    pub(super) async fn declare_queue(
        &self,
        q: &QueueId,
        config: QueueConfig,
    ) -> Result<(), BackendError> {
        let kms = self.kms_key.as_deref();
        let dead = self
            .ensure(
                &self.sqs_name(q, Part::Dead),
                &queue_attrs(DEAD_RETENTION, kms),
            )
            .await?;
        let mut attrs = queue_attrs(self.retention, kms);
        attrs.push((
            QueueAttributeName::RedrivePolicy,
            redrive_policy(&self.arn(&dead).await?, config.max_deliveries),
        ));
        let url = self.ensure(&self.sqs_name(q, Part::Main), &attrs).await?;
        // A queue of this app already under the name: not retagged as another.
        same_queue(q, &self.tags(&url).await?)?;
        self.client
            .tag_queue()
            .queue_url(url)
            .tags("fabric-app", &q.app)
            .tags("fabric-queue", &q.queue)
            .tags("fabric-encrypted", config.encrypted.to_string())
            .tags("fabric-max-deliveries", config.max_deliveries.to_string())
            .send()
            .await
            .map_err(|e| sdk_err("tag queue", e))?;
        Ok(())
    }

    /// A queue's ARN.
    async fn arn(&self, url: &str) -> Result<String, BackendError> {
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(|e| sdk_err("get queue arn", e))?;
        out.attributes()
            .and_then(|a| a.get(&QueueAttributeName::QueueArn))
            .cloned()
            .ok_or_else(|| BackendError::store(NAME, format!("queue {url}: no ARN")))
    }

    /// The queue's settings, `None` when it was never declared.
    pub(super) async fn queue_config(
        &self,
        q: &QueueId,
    ) -> Result<Option<QueueConfig>, BackendError> {
        let url = match self.url(q, Part::Main).await {
            Ok(url) => url,
            Err(BackendError::UnknownQueue(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let tags = self.tags(&url).await?;
        same_queue(q, &tags)?;
        Ok(config_of(&tags))
    }

    /// The app's queues, by name.
    pub(super) async fn list_queues(
        &self,
        app: &str,
    ) -> Result<Vec<(String, QueueConfig)>, BackendError> {
        let urls = self
            .urls_with_prefix(&app_prefix(&self.prefix, app))
            .await?
            .into_iter()
            .filter(|u| !u.ends_with("_dlq"));
        let mut out = Vec::new();
        for url in urls {
            let tags = self
                .client
                .list_queue_tags()
                .queue_url(&url)
                .send()
                .await
                .map_err(|e| sdk_err("list queue tags", e))?;
            let Some(tags) = tags.tags() else { continue };
            if let (Some(name), Some(config)) = (tags.get("fabric-queue"), config_of(tags)) {
                out.push((name.clone(), config));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// The queue's counts, from SQS's approximate attributes.
    pub(super) async fn queue_counts(&self, q: &QueueId) -> Result<Counts, BackendError> {
        let get = |url: String| {
            self.client
                .get_queue_attributes()
                .queue_url(url)
                .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
                .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
                .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
                .send()
        };
        let main = get(self.url(q, Part::Main).await?)
            .await
            .map_err(|e| sdk_err("get queue attributes", e))?;
        let dead = get(self.url(q, Part::Dead).await?)
            .await
            .map_err(|e| sdk_err("get queue attributes", e))?;
        use QueueAttributeName as A;
        Ok(Counts {
            visible: count_attr(main.attributes(), A::ApproximateNumberOfMessages),
            invisible: count_attr(main.attributes(), A::ApproximateNumberOfMessagesNotVisible)
                + count_attr(main.attributes(), A::ApproximateNumberOfMessagesDelayed),
            dead: count_attr(dead.attributes(), A::ApproximateNumberOfMessages)
                + count_attr(dead.attributes(), A::ApproximateNumberOfMessagesNotVisible),
            oldest_enqueued_ms: None,
        })
    }
}

/// Receives past the queue's `max_deliveries` after which SQS itself moves
/// a message to the DLQ. The service moves it first, at `max_deliveries`,
/// keeping its history (delivery count, last error); SQS's redrive is the
/// backstop for a message the service never got to move (one whose every
/// delivery ends in a crash, say).
const REDRIVE_MARGIN: u32 = 10;
/// SQS's largest `maxReceiveCount`.
const MAX_RECEIVE_COUNT: u32 = 1000;

fn redrive_policy(dead_arn: &str, max_deliveries: u32) -> String {
    serde_json::json!({
        "deadLetterTargetArn": dead_arn,
        "maxReceiveCount": max_deliveries.saturating_add(REDRIVE_MARGIN).min(MAX_RECEIVE_COUNT),
    })
    .to_string()
}

/// A queue's attributes: its retention, its encryption at rest (SSE-KMS
/// under `kms_key`, else SSE-SQS) and the largest message.
fn queue_attrs(retention: Duration, kms_key: Option<&str>) -> Vec<(QueueAttributeName, String)> {
    let mut attrs = vec![
        (
            QueueAttributeName::MessageRetentionPeriod,
            retention.as_secs().to_string(),
        ),
        // SQS's quota is 1 MiB since 2025; our bodies stay within 256 KiB,
        // which leaves room for the envelope and the attributes.
        (QueueAttributeName::MaximumMessageSize, "1048576".into()),
    ];
    match kms_key {
        // One encryption per queue: SSE-SQS off where SSE-KMS is on.
        Some(key) => attrs.extend([
            (QueueAttributeName::SqsManagedSseEnabled, "false".into()),
            (QueueAttributeName::KmsMasterKeyId, key.to_string()),
        ]),
        None => attrs.push((QueueAttributeName::SqsManagedSseEnabled, "true".into())),
    }
    attrs
}

fn count_attr(
    attrs: Option<&HashMap<QueueAttributeName, String>>,
    name: QueueAttributeName,
) -> u64 {
    attrs
        .and_then(|a| a.get(&name))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Refuses an SQS queue whose tags name another queue of the app: two
/// names whose hashes collide (see [`super::naming::sqs_name`]).
fn same_queue(q: &QueueId, tags: &HashMap<String, String>) -> Result<(), BackendError> {
    match tags.get("fabric-queue") {
        Some(other) if *other != q.queue => Err(BackendError::store(
            NAME,
            format!(
                "queue {q}: its SQS name is taken by queue {other:?} of the same app (a hash \
                 collision); declare it under another name"
            ),
        )),
        _ => Ok(()),
    }
}

fn config_of(tags: &HashMap<String, String>) -> Option<QueueConfig> {
    Some(QueueConfig {
        encrypted: tags.get("fabric-encrypted")?.parse().ok()?,
        max_deliveries: tags.get("fabric-max-deliveries")?.parse().ok()?,
    })
}
