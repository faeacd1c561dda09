//! The SQS backend: one SQS queue and one DLQ per app queue, under the fabric's prefix.
//!
//! The SQS name is `{prefix}{app}_{queue, shortened}_{hash}` (SQS names allow
//! neither `.` nor more than 80 characters), the DLQ the same with `_dlq`; the
//! real names and the queue's settings are tags. The longest app ids leave
//! too little room for that, and get a compact form (see [`sqs_name`]).
//! App ids hold no `_`, so `{prefix}{app}_` begins the names of that app's
//! queues and of no other app's: the app's queues are listed, and purged,
//! by that prefix.
//!
//! A deleted app's tombstone is an empty queue `{prefix}_tomb_{app}`: no
//! app's queue starts with `{prefix}_`, as app ids start with a letter.
//!
//! A message's id, publish time and stored body travel in the SQS body (see
//! [`encode_body`]); a dead letter also carries its delivery count
//! (`fdeliv`) and last error (`ferr`) as message attributes. The service
//! moves messages to the DLQ itself (not through a redrive policy), so a
//! dead letter keeps its history.

use std::collections::HashMap;
use std::sync::{Mutex, RwLock};
use std::time::Duration;

use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, Message, MessageAttributeValue, MessageSystemAttributeName,
    QueueAttributeName, SendMessageBatchRequestEntry,
};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use super::{
    BackendError, BoxFut, Counts, DEAD_RETENTION, Part, QueueBackend, QueueConfig, QueueId,
    Received, Stored,
};
use crate::settings::Settings;

const NAME: &str = "sqs";
const SQS_NAME_MAX: usize = 80;
/// What follows the prefix in a tombstone's queue name.
const TOMB: &str = "_tomb_";
/// The room after `{prefix}{app}_` that the readable form needs at least:
/// `_`, an 8-digit hash and `_dlq`.
const READABLE_ROOM: usize = 1 + 8 + 4;
/// Last errors kept in memory for messages not yet dead-lettered (SQS cannot
/// attach data to a message on rollback); beyond this the map starts over.
const LAST_ERRORS_MAX: usize = 10_000;

fn sdk_err<E, R>(what: &str, e: SdkError<E, R>) -> BackendError
where
    E: std::error::Error + ProvideErrorMetadata + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    match e.code() {
        Some(
            "ReceiptHandleIsInvalid"
            | "MessageNotInflight"
            | "AWS.SimpleQueueService.MessageNotInflight"
            | "InvalidParameterValue",
        ) if what.contains("lease") => {
            BackendError::LeaseLost(format!("{what}: {}", DisplayErrorContext(&e)))
        }
        Some("AWS.SimpleQueueService.NonExistentQueue" | "QueueDoesNotExist") => {
            BackendError::UnknownQueue(what.to_string())
        }
        _ => BackendError::store(NAME, format!("{what}: {}", DisplayErrorContext(&e))),
    }
}

/// FNV-1a: a stable, dependency-free hash for shortened queue names.
fn fnv1a(text: &str) -> u32 {
    text.bytes().fold(0x811c_9dc5, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// FNV-1a in 64 bits, for the compact names.
fn fnv1a64(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The first `len` base-62 digits of `n` (letters of both cases, as SQS
/// names are case-sensitive).
fn base62(mut n: u64, len: usize) -> String {
    const DIGITS: &[u8; 62] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    (0..len)
        .map(|_| {
            let d = DIGITS[(n % 62) as usize] as char;
            n /= 62;
            d
        })
        .collect()
}

/// How every SQS queue name of `app` begins.
fn app_prefix(prefix: &str, app: &str) -> String {
    format!("{prefix}{app}_")
}

/// The SQS name of a queue's part.
///
/// Readable, when `{prefix}{app}_` leaves room (every app name, and app ids
/// up to 66 characters with the prefix): `{queue, shortened}_{hash}`, and
/// `_dlq` for the DLQ. Else (the longest app ids with the longest prefixes:
/// at least 5 characters are left, as a prefix has at most 16 and an app id
/// 58): `m` or `d` for the part, and a base-62 hash of the queue's name in
/// the room left, 23.8 bits or more. The queue's real name is a tag, checked
/// on use, so two queues of one app whose hashes collide are told apart.
fn sqs_name(prefix: &str, q: &QueueId, part: Part) -> String {
    let app_prefix = app_prefix(prefix, &q.app);
    let room = SQS_NAME_MAX.saturating_sub(app_prefix.len());
    if room < READABLE_ROOM {
        let marker = match part {
            Part::Main => 'm',
            Part::Dead => 'd',
        };
        let hash = base62(fnv1a64(&q.queue), room.saturating_sub(1));
        return format!("{app_prefix}{marker}{hash}");
    }
    let short: String = q
        .queue
        .chars()
        .map(|c| if c == '.' { '-' } else { c })
        .take(room - READABLE_ROOM)
        .collect();
    let base = format!("{app_prefix}{short}_{:08x}", fnv1a(&q.queue));
    match part {
        Part::Main => base,
        Part::Dead => format!("{base}_dlq"),
    }
}

/// The SQS name of `app`'s tombstone.
fn tomb_name(prefix: &str, app: &str) -> String {
    format!("{prefix}{TOMB}{app}")
}

/// The queue name at the end of a queue URL.
fn name_of(url: &str) -> &str {
    url.rsplit('/').next().unwrap_or(url)
}

fn string_attr(value: impl Into<String>, kind: &str) -> MessageAttributeValue {
    MessageAttributeValue::builder()
        .data_type(kind)
        .string_value(value)
        .build()
        .expect("data type is set")
}

/// SQS accepts only these characters in a body.
fn sqs_safe(text: &str) -> bool {
    text.chars().all(|c| {
        matches!(c, '\t' | '\n' | '\r') || (c >= ' ' && c != '\u{FFFE}' && c != '\u{FFFF}')
    })
}

/// The SQS body of a stored message: `f1 {id} {enqueued ms} {kind} {payload}`,
/// where kind `t` is a plain body as is, `p` a plain body in base64 (it has
/// characters SQS refuses) and `s` a sealed body in base64. Everything travels
/// in the body, so a message costs SQS no more than a bare one.
fn encode_body(m: &Stored) -> String {
    let (kind, payload) = match std::str::from_utf8(&m.body) {
        _ if m.sealed => ("s", B64.encode(&m.body)),
        Ok(text) if sqs_safe(text) => ("t", text.to_string()),
        _ => ("p", B64.encode(&m.body)),
    };
    format!("f1 {} {} {kind} {payload}", m.id, m.enqueued_ms)
}

/// The stored message an SQS body carries.
fn decode_body(body: &str) -> Option<Stored> {
    let mut parts = body.splitn(5, ' ');
    if parts.next()? != "f1" {
        return None;
    }
    let id = parts.next()?.to_string();
    let enqueued_ms = parts.next()?.parse().ok()?;
    let kind = parts.next()?;
    let payload = parts.next().unwrap_or_default();
    let (body, sealed) = match kind {
        "t" => (payload.as_bytes().to_vec(), false),
        "p" => (B64.decode(payload).ok()?, false),
        "s" => (B64.decode(payload).ok()?, true),
        _ => return None,
    };
    Some(Stored {
        id,
        body,
        sealed,
        enqueued_ms,
    })
}

fn attr_str<'m>(m: &'m Message, name: &str) -> Option<&'m str> {
    m.message_attributes()
        .and_then(|a| a.get(name))
        .and_then(|v| v.string_value())
}

/// A received SQS message as the fabric sees it.
fn decode(m: &Message, part: Part) -> Result<Received, BackendError> {
    let bad = |what: &str| BackendError::store(NAME, format!("message {what}"));
    let stored = decode_body(m.body().unwrap_or_default())
        .ok_or_else(|| bad("body is not in the fabric's form"))?;
    let receipt = m
        .receipt_handle()
        .ok_or_else(|| bad("without receipt handle"))?;
    let received: u32 = m
        .attributes()
        .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);
    let deliveries = match part {
        Part::Main => received,
        Part::Dead => attr_str(m, "fdeliv")
            .and_then(|n| n.parse().ok())
            .unwrap_or(0),
    };
    Ok(Received {
        stored,
        handle: receipt.to_string(),
        deliveries,
        last_error: attr_str(m, "ferr").map(str::to_string),
    })
}

fn ceil_secs(d: Duration) -> i32 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    secs.min(crate::api::MAX_LOCK_SECS) as i32
}

/// The SQS backend.
pub(crate) struct Sqs {
    client: Client,
    prefix: String,
    retention: Duration,
    urls: RwLock<HashMap<String, String>>,
    last_errors: Mutex<HashMap<String, String>>,
}

impl Sqs {
    /// A backend on aws-config's default chain (`AWS_ENDPOINT_URL_SQS` for an emulator).
    pub(crate) async fn new(settings: &Settings) -> Self {
        let config = common::aws::sdk_config().await;
        Sqs {
            client: Client::new(&config),
            prefix: settings.sqs_prefix.clone(),
            retention: settings.retention,
            urls: RwLock::default(),
            last_errors: Mutex::default(),
        }
    }

    /// The SQS queue name of a part.
    fn sqs_name(&self, q: &QueueId, part: Part) -> String {
        sqs_name(&self.prefix, q, part)
    }

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
    async fn urls_with_prefix(&self, prefix: &str) -> Result<Vec<String>, BackendError> {
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

    async fn url(&self, q: &QueueId, part: Part) -> Result<String, BackendError> {
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

    async fn send_batch(
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

    async fn delete_batch(
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

    async fn receive_raw(
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
    async fn change_visibility(
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

    fn take_last_error(&self, id: &str) -> Option<String> {
        self.last_errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id)
    }
}

fn queue_attrs(retention: Duration) -> Vec<(QueueAttributeName, String)> {
    vec![
        (
            QueueAttributeName::MessageRetentionPeriod,
            retention.as_secs().to_string(),
        ),
        (QueueAttributeName::SqsManagedSseEnabled, "true".into()),
        // SQS's quota is 1 MiB since 2025; our bodies stay within 256 KiB,
        // which leaves room for the envelope and the attributes.
        (QueueAttributeName::MaximumMessageSize, "1048576".into()),
    ]
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

impl QueueBackend for Sqs {
    fn declare<'a>(&'a self, q: &'a QueueId, config: QueueConfig) -> BoxFut<'a, ()> {
        Box::pin(async move {
            self.ensure(&self.sqs_name(q, Part::Dead), &queue_attrs(DEAD_RETENTION))
                .await?;
            let url = self
                .ensure(&self.sqs_name(q, Part::Main), &queue_attrs(self.retention))
                .await?;
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
        })
    }

    fn config<'a>(&'a self, q: &'a QueueId) -> BoxFut<'a, Option<QueueConfig>> {
        Box::pin(async move {
            let url = match self.url(q, Part::Main).await {
                Ok(url) => url,
                Err(BackendError::UnknownQueue(_)) => return Ok(None),
                Err(e) => return Err(e),
            };
            let tags = self.tags(&url).await?;
            same_queue(q, &tags)?;
            Ok(config_of(&tags))
        })
    }

    fn list<'a>(&'a self, app: &'a str) -> BoxFut<'a, Vec<(String, QueueConfig)>> {
        Box::pin(async move {
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
        })
    }

    fn publish<'a>(&'a self, q: &'a QueueId, messages: Vec<Stored>) -> BoxFut<'a, ()> {
        Box::pin(async move {
            let url = self.url(q, Part::Main).await?;
            let batch: Vec<_> = messages.into_iter().map(|m| (m, Vec::new())).collect();
            self.send_batch(&url, &batch).await
        })
    }

    fn receive<'a>(
        &'a self,
        q: &'a QueueId,
        part: Part,
        max: usize,
        wait: Duration,
        lock: Duration,
    ) -> BoxFut<'a, Vec<Received>> {
        Box::pin(async move {
            let url = self.url(q, part).await?;
            let raw = self.receive_raw(&url, max, wait, lock).await?;
            let mut out = Vec::with_capacity(raw.len());
            for m in &raw {
                let mut r = decode(m, part)?;
                if part == Part::Main {
                    r.last_error = self
                        .last_errors
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get(&r.stored.id)
                        .cloned();
                }
                out.push(r);
            }
            Ok(out)
        })
    }

    fn ack<'a>(
        &'a self,
        q: &'a QueueId,
        part: Part,
        handles: Vec<String>,
    ) -> BoxFut<'a, Vec<Result<(), BackendError>>> {
        Box::pin(async move {
            let url = self.url(q, part).await?;
            self.delete_batch(&url, &handles).await
        })
    }

    fn release<'a>(
        &'a self,
        q: &'a QueueId,
        part: Part,
        handle: &'a str,
        id: &'a str,
        delay: Duration,
        error: Option<String>,
    ) -> BoxFut<'a, ()> {
        Box::pin(async move {
            self.change_visibility(q, part, handle, delay, "rollback lease")
                .await?;
            if let Some(error) = error {
                let mut map = self.last_errors.lock().unwrap_or_else(|p| p.into_inner());
                if map.len() >= LAST_ERRORS_MAX {
                    map.clear();
                }
                map.insert(id.to_string(), error);
            }
            Ok(())
        })
    }

    fn extend<'a>(
        &'a self,
        q: &'a QueueId,
        part: Part,
        handle: &'a str,
        lock: Duration,
    ) -> BoxFut<'a, ()> {
        Box::pin(self.change_visibility(q, part, handle, lock, "extend lease"))
    }

    fn dead_letter<'a>(&'a self, q: &'a QueueId, msg: Received, reason: String) -> BoxFut<'a, ()> {
        Box::pin(async move {
            let dead = self.url(q, Part::Dead).await?;
            let main = self.url(q, Part::Main).await?;
            self.take_last_error(&msg.stored.id);
            let extra = vec![("fdeliv", msg.deliveries.to_string()), ("ferr", reason)];
            // Copy first, then delete: a crash in between leaves a duplicate, never a loss.
            self.send_batch(&dead, &[(msg.stored, extra)]).await?;
            self.delete_batch(&main, &[msg.handle]).await?;
            Ok(())
        })
    }

    fn redrive<'a>(&'a self, q: &'a QueueId) -> BoxFut<'a, u64> {
        Box::pin(async move {
            let dead = self.url(q, Part::Dead).await?;
            let main = self.url(q, Part::Main).await?;
            let mut moved = 0;
            loop {
                let raw = self
                    .receive_raw(
                        &dead,
                        crate::api::MAX_BATCH,
                        Duration::ZERO,
                        Duration::from_secs(60),
                    )
                    .await?;
                if raw.is_empty() {
                    return Ok(moved);
                }
                let mut batch = Vec::with_capacity(raw.len());
                let mut handles = Vec::with_capacity(raw.len());
                for m in &raw {
                    let r = decode(m, Part::Dead)?;
                    handles.push(r.handle);
                    batch.push((r.stored, Vec::new()));
                }
                self.send_batch(&main, &batch).await?;
                self.delete_batch(&dead, &handles).await?;
                moved += batch.len() as u64;
            }
        })
    }

    fn purge<'a>(&'a self, q: &'a QueueId) -> BoxFut<'a, ()> {
        Box::pin(async move {
            let url = self.url(q, Part::Main).await?;
            self.client
                .purge_queue()
                .queue_url(url)
                .send()
                .await
                .map_err(|e| sdk_err("purge queue", e))?;
            Ok(())
        })
    }

    fn counts<'a>(&'a self, q: &'a QueueId) -> BoxFut<'a, Counts> {
        Box::pin(async move {
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
        })
    }

    fn bury<'a>(&'a self, app: &'a str) -> BoxFut<'a, ()> {
        Box::pin(async move {
            // CreateQueue of an existing queue with the same (no) attributes
            // answers its URL: a second burial changes nothing.
            self.client
                .create_queue()
                .queue_name(tomb_name(&self.prefix, app))
                .send()
                .await
                .map_err(|e| sdk_err("create tombstone queue", e))?;
            Ok(())
        })
    }

    fn tombstones(&self) -> BoxFut<'_, Vec<String>> {
        Box::pin(async move {
            let marker = tomb_name(&self.prefix, "");
            let urls = self.urls_with_prefix(&marker).await?;
            Ok(urls
                .iter()
                .filter_map(|u| name_of(u).strip_prefix(marker.as_str()))
                .filter(|app| common::app::validate_app_id(app).is_ok())
                .map(str::to_string)
                .collect())
        })
    }

    fn purge_app<'a>(&'a self, app: &'a str) -> BoxFut<'a, ()> {
        Box::pin(async move {
            let ours = app_prefix(&self.prefix, app);
            // Every queue of the app, its DLQs and any half-declared one
            // included (a declare creates the DLQ first).
            for url in self.urls_with_prefix(&ours).await? {
                match self.client.delete_queue().queue_url(&url).send().await {
                    Ok(_) => {}
                    Err(e) => match sdk_err("delete queue", e) {
                        // Deleted meanwhile: by an earlier purge, say.
                        BackendError::UnknownQueue(_) => {}
                        other => return Err(other),
                    },
                }
            }
            self.urls
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|name, _| !name.starts_with(&ours));
            Ok(())
        })
    }
}

/// Refuses an SQS queue whose tags name another queue of the app: two
/// names whose hashes collide (see [`sqs_name`]).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_round_trip_in_each_form() {
        for (body, sealed, kind) in [
            (b"{\"n\":1} with spaces".to_vec(), false, " t "),
            (b"nul \0 refused by SQS".to_vec(), false, " p "),
            (vec![1, 0, 255, 32], true, " s "),
            (Vec::new(), false, " t "),
        ] {
            let m = Stored {
                id: "0193-x".into(),
                body: body.clone(),
                sealed,
                enqueued_ms: 42,
            };
            let text = encode_body(&m);
            assert!(text.contains(kind) && sqs_safe(&text), "{text}");
            let back = decode_body(&text).unwrap();
            assert_eq!(
                (back.id.as_str(), back.body, back.sealed, back.enqueued_ms),
                ("0193-x", body, sealed, 42)
            );
        }
        assert!(decode_body("a bare message").is_none());
    }

    fn queue(app: &str, queue: &str) -> QueueId {
        QueueId {
            app: app.into(),
            queue: queue.into(),
        }
    }

    fn valid_sqs_name(name: &str) -> bool {
        (1..=SQS_NAME_MAX).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    }

    #[test]
    fn names_of_app_names_are_as_they_always_were() {
        let q = queue("orders", "incoming.v2");
        let hash = format!("{:08x}", fnv1a("incoming.v2"));
        assert_eq!(
            sqs_name("fabric-", &q, Part::Main),
            format!("fabric-orders_incoming-v2_{hash}")
        );
        assert_eq!(
            sqs_name("fabric-", &q, Part::Dead),
            format!("fabric-orders_incoming-v2_{hash}_dlq")
        );
    }

    #[test]
    fn the_longest_app_ids_with_the_longest_prefix_name_valid_distinct_queues() {
        use common::app::{MAX_APP_NAME, MAX_RESOURCE_NAME, validate_app_id};
        let longest_id = format!("{}--{}", "a".repeat(MAX_APP_NAME), "z9".repeat(8));
        assert_eq!(longest_id.len(), 58);
        assert!(validate_app_id(&longest_id).is_ok());
        assert!(validate_app_id(&format!("{longest_id}x")).is_err());
        let queues = [
            "q".repeat(MAX_RESOURCE_NAME),
            format!("{}r", "q".repeat(MAX_RESOURCE_NAME - 1)),
            "a.b".repeat(MAX_RESOURCE_NAME / 3),
            "a-b".repeat(MAX_RESOURCE_NAME / 3),
            "x".into(),
        ];
        for prefix in ["", "fabric-", &"P".repeat(16)] {
            assert!(checked_prefix(prefix), "{prefix:?}");
            for len in 1..=MAX_APP_NAME {
                for app in [
                    "a".repeat(len),
                    format!("{}--{}", "a".repeat(len), "z9".repeat(8)),
                    format!("{}--k", "a".repeat(len)),
                ] {
                    let mut names = std::collections::BTreeSet::new();
                    for name in &queues {
                        for part in [Part::Main, Part::Dead] {
                            let sqs = sqs_name(prefix, &queue(&app, name), part);
                            assert!(valid_sqs_name(&sqs), "{sqs:?} ({} chars)", sqs.len());
                            assert!(sqs.starts_with(&app_prefix(prefix, &app)), "{sqs}");
                            assert!(names.insert(sqs.clone()), "{sqs} twice");
                        }
                    }
                }
            }
            let tomb = tomb_name(prefix, &longest_id);
            assert!(valid_sqs_name(&tomb), "{tomb} ({} chars)", tomb.len());
        }
    }

    fn checked_prefix(p: &str) -> bool {
        let settings = Settings {
            sqs_prefix: p.into(),
            ..Settings::default()
        };
        settings.validate().is_ok()
    }

    #[test]
    fn an_apps_prefix_matches_its_own_queues_only() {
        let apps = ["shop", "shop--x", "shop--xy", "shop-1", "shopx", "s"];
        let long = "q".repeat(64);
        for prefix in ["fabric-", "P".repeat(16).as_str()] {
            for app in apps {
                let ours = app_prefix(prefix, app);
                for other in apps {
                    for name in ["a", long.as_str()] {
                        for part in [Part::Main, Part::Dead] {
                            let sqs = sqs_name(prefix, &queue(other, name), part);
                            assert_eq!(sqs.starts_with(&ours), app == other, "{ours} vs {sqs}");
                        }
                    }
                    assert!(!tomb_name(prefix, other).starts_with(&ours));
                }
                let marker = tomb_name(prefix, "");
                assert!(!ours.starts_with(&marker), "{ours} vs {marker}");
            }
        }
    }
}
