//! The HTTP API's request and response bodies, shared by the server and the client.

use serde::{Deserialize, Serialize};

/// The most messages one publish, lease or ack call carries (SQS's batch size).
pub const MAX_BATCH: usize = 10;
/// The largest message body: SQS's 256 KiB. Larger bodies are refused with 413.
pub const MAX_BODY_BYTES: usize = 256 * 1024;
/// The longest long poll, as in SQS.
pub const MAX_WAIT_SECS: u64 = 20;
/// The longest lock, as SQS's visibility timeout.
pub const MAX_LOCK_SECS: u64 = 12 * 3600;

/// `PUT /v1/apps/{app}/queues/{q}`: declares a queue (idempotent; updates its settings).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QueueSpec {
    /// Seal every body with the app's data key before it reaches the backend.
    #[serde(default)]
    pub encrypted: bool,
    /// Deliveries after which a message moves to the DLQ; the service's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_deliveries: Option<u32>,
}

/// A message to publish.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewMessage {
    /// The body, at most [`MAX_BODY_BYTES`] bytes of UTF-8.
    pub body: String,
}

/// `POST /v1/apps/{app}/queues/{q}/messages`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    /// One to [`MAX_BATCH`] messages, stored all or none.
    pub messages: Vec<NewMessage>,
}

/// The ids of published messages, in the request's order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishResponse {
    /// One id per message.
    pub ids: Vec<String>,
}

/// A leased message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeasedMessage {
    /// The message's id, stable across deliveries.
    pub id: String,
    /// Names this delivery: ack, roll back or extend with it.
    pub lease_id: String,
    /// The body as published.
    pub body: String,
    /// How many times the message has been delivered, this time included.
    pub delivery_count: u32,
    /// When the message was published, in Unix milliseconds.
    pub enqueued_at_ms: u64,
    /// The last error a consumer reported on rollback, or why it was dead-lettered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// `POST /v1/apps/{app}/queues/{q}/leases`: the messages leased, possibly none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseResponse {
    /// Up to `max` messages.
    pub messages: Vec<LeasedMessage>,
}

/// `POST /v1/apps/{app}/leases/{lease}/rollback`: why the consumer gave up, if it says.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// Kept with the message and shown in its DLQ history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `POST /v1/apps/{app}/acks`: acknowledges several leases at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AckRequest {
    /// One to [`MAX_BATCH`] lease ids.
    pub leases: Vec<String>,
}

/// What a batch ack did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckResponse {
    /// How many leases were acknowledged.
    pub acked: usize,
    /// The leases that were not, and why (most often: the lock expired).
    pub failed: Vec<AckFailure>,
}

/// A lease a batch ack could not acknowledge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AckFailure {
    /// The lease.
    pub lease_id: String,
    /// Why.
    pub error: String,
}

/// One queue's settings and counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueStats {
    /// The queue's name.
    pub name: String,
    /// Whether bodies are sealed at rest.
    pub encrypted: bool,
    /// Deliveries after which a message moves to the DLQ.
    pub max_deliveries: u32,
    /// Messages ready to lease.
    pub depth: u64,
    /// Messages leased and not yet acked, or waiting out a rollback back-off.
    pub in_flight: u64,
    /// Messages in the queue's DLQ.
    pub dlq_depth: u64,
    /// Age of the oldest message, in milliseconds; absent when empty or unknown
    /// (SQS publishes it only as a CloudWatch metric).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_age_ms: Option<u64>,
}

/// `GET /v1/apps/{app}/queues`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueList {
    /// Every queue of the app, by name.
    pub queues: Vec<QueueStats>,
}

/// `POST /v1/apps/{app}/queues/{q}/dlq/redrive`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedriveResponse {
    /// How many dead letters went back to the queue.
    pub moved: u64,
}
