//! The SQS backend: one SQS queue and one DLQ per app queue, under the fabric's prefix.
//!
//! The SQS name is `{prefix}{app}_{queue, shortened}_{hash}` (SQS names allow
//! neither `.` nor more than 80 characters), the DLQ the same with `_dlq`; the
//! real names and the queue's settings are tags. The longest app ids leave
//! too little room for that, and get a compact form (see [`naming::sqs_name`]).
//! App ids hold no `_`, so `{prefix}{app}_` begins the names of that app's
//! queues and of no other app's: the app's queues are listed, and purged,
//! by that prefix.
//!
//! A deleted app's tombstone is an empty queue `{prefix}_tomb_{app}`: no
//! app's queue starts with `{prefix}_`, as app ids start with a letter.
//!
//! A message's id, publish time and stored body travel in the SQS body (see
//! [`body::encode_body`]); a dead letter also carries its delivery count
//! (`fdeliv`) and last error (`ferr`) as message attributes. The service
//! moves messages to the DLQ itself (not through a redrive policy), so a
//! dead letter keeps its history.
//!
//! One file per job: [`naming`] (the SQS names of queues and tombstones),
//! [`body`] (a message as an SQS body and attributes), [`queues`] (declaring,
//! finding and counting queues), [`messages`] (the batched SQS message calls),
//! [`leases`] (publish, lease, ack, rollback, extend), [`dead_letters`]
//! (dead-lettering and redrive), [`purge`] (emptying a queue, forgetting an app).

mod body;
mod dead_letters;
mod leases;
mod messages;
mod naming;
mod purge;
mod queues;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::{Mutex, RwLock};
use std::time::Duration;

use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

use super::{
    BackendError, BoxFut, Counts, Part, QueueBackend, QueueConfig, QueueId, Received, Stored,
};
use crate::settings::Settings;

const NAME: &str = "sqs";

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

/// The SQS backend.
pub(crate) struct Sqs {
    client: Client,
    prefix: String,
    retention: Duration,
    /// The KMS key SQS encrypts the queues with; `None`: SQS's own keys.
    kms_key: Option<String>,
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
            kms_key: settings.sqs_kms_key.clone(),
            urls: RwLock::default(),
            last_errors: Mutex::default(),
        }
    }
}

impl QueueBackend for Sqs {
    fn declare<'a>(&'a self, q: &'a QueueId, config: QueueConfig) -> BoxFut<'a, ()> {
        Box::pin(self.declare_queue(q, config))
    }

    fn config<'a>(&'a self, q: &'a QueueId) -> BoxFut<'a, Option<QueueConfig>> {
        Box::pin(self.queue_config(q))
    }

    fn list<'a>(&'a self, app: &'a str) -> BoxFut<'a, Vec<(String, QueueConfig)>> {
        Box::pin(self.list_queues(app))
    }

    fn publish<'a>(&'a self, q: &'a QueueId, messages: Vec<Stored>) -> BoxFut<'a, ()> {
        Box::pin(self.publish_batch(q, messages))
    }

    fn receive<'a>(
        &'a self,
        q: &'a QueueId,
        part: Part,
        max: usize,
        wait: Duration,
        lock: Duration,
    ) -> BoxFut<'a, Vec<Received>> {
        Box::pin(self.lease(q, part, max, wait, lock))
    }

    fn ack<'a>(
        &'a self,
        q: &'a QueueId,
        part: Part,
        handles: Vec<String>,
    ) -> BoxFut<'a, Vec<Result<(), BackendError>>> {
        Box::pin(self.ack_leases(q, part, handles))
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
        Box::pin(self.rollback(q, part, handle, id, delay, error))
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
        Box::pin(self.move_to_dlq(q, msg, reason))
    }

    fn redrive<'a>(&'a self, q: &'a QueueId) -> BoxFut<'a, u64> {
        Box::pin(self.redrive_dlq(q))
    }

    fn purge<'a>(&'a self, q: &'a QueueId) -> BoxFut<'a, ()> {
        Box::pin(self.purge_queue(q))
    }

    fn counts<'a>(&'a self, q: &'a QueueId) -> BoxFut<'a, Counts> {
        Box::pin(self.queue_counts(q))
    }

    fn bury<'a>(&'a self, app: &'a str) -> BoxFut<'a, ()> {
        Box::pin(self.bury_app(app))
    }

    fn tombstones(&self) -> BoxFut<'_, Vec<String>> {
        Box::pin(self.buried_apps())
    }

    fn purge_app<'a>(&'a self, app: &'a str) -> BoxFut<'a, ()> {
        Box::pin(self.forget_app(app))
    }
}
