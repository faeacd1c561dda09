//! An app's queues: their counts, and their dead letters (shown, and
//! redriven to their queue).

use super::*;
use crate::model::{DeadLetter, Redriven};

/// Dead letters shown at once.
pub const DEAD_LETTERS_SHOWN: usize = 10;

/// How long a shown dead letter is held before it is given back (it is
/// given back at once; this bounds it should the control plane stop
/// between the two).
const PEEK_LOCK: Duration = Duration::from_secs(5);

impl Api {
    /// The app's queues and their counts: from queue-svc for persistent
    /// queues; names only for transient ones (they live in the workers).
    pub(crate) async fn queue_counts(&self, record: &AppRecord) -> ApiResult<AppQueues> {
        let Some(client) = self.queue_client(record, common::token::Scope::Read) else {
            let manifest = self
                .load_manifest(&record.manifest)
                .await?
                .map_err(internal)?;
            return Ok(AppQueues {
                app: record.name.clone(),
                mode: "transient".into(),
                queues: manifest
                    .queues()
                    .map(|(q, _)| QueueInfo {
                        name: q.to_string(),
                        depth: None,
                        in_flight: None,
                        dlq_depth: None,
                        oldest_age_ms: None,
                        encrypted: false,
                    })
                    .collect(),
            });
        };
        let stats = client.list().await.map_err(queue_svc_error)?;
        let queues = stats
            .into_iter()
            .map(|s| QueueInfo {
                name: s.name,
                depth: Some(s.depth),
                in_flight: Some(s.in_flight),
                dlq_depth: Some(s.dlq_depth),
                oldest_age_ms: s.oldest_age_ms,
                encrypted: s.encrypted,
            })
            .collect();
        Ok(AppQueues {
            app: record.name.clone(),
            mode: "persistent".into(),
            queues,
        })
    }

    /// A queue-svc client for the app's persistent queues with a
    /// short-lived token of `scope`; `None` for transient queues.
    fn queue_client(
        &self,
        record: &AppRecord,
        scope: common::token::Scope,
    ) -> Option<queue_svc::client::Client> {
        let (Some((url, key)), true) = (&self.queues, record.persistent_queues) else {
            return None;
        };
        let app_id = record.app_id();
        let token = key.issue(&app_id, scope, Duration::from_secs(60));
        Some(queue_svc::client::Client::new(url, &app_id, &token))
    }

    /// The app's persistent queue `queue`, with a client that may take
    /// from it: not found unless the app has it.
    async fn dead_letter_queue(
        &self,
        record: &AppRecord,
        queue: &str,
    ) -> ApiResult<(queue_svc::client::Client, QueueInfo)> {
        let not_found = || {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                format!("app {} has no persistent queue named {queue}", record.name),
            )
        };
        let counts = self.queue_counts(record).await?;
        let info = counts
            .queues
            .into_iter()
            .find(|q| q.name == queue && q.depth.is_some())
            .ok_or_else(not_found)?;
        let client = self
            .queue_client(record, common::token::Scope::Worker)
            .ok_or_else(not_found)?;
        Ok((client, info))
    }
}

fn queue_svc_error(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "QUEUE_SVC",
        format!("queue-svc did not answer: {e}"),
    )
}

pub(super) async fn queues(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Json<AppQueues>> {
    let tenant = api.tenant(&headers)?;
    let record = api.owned(&tenant, &name)?;
    Ok(Json(api.queue_counts(&record).await?))
}

#[derive(Deserialize)]
pub(super) struct DeadLettersQuery {
    /// The one message whose body (and last error) to show in plaintext,
    /// for an encrypted queue.
    reveal: Option<String>,
}

/// `GET /v1/apps/{name}/queues/{queue}/dlq`: up to [`DEAD_LETTERS_SHOWN`]
/// dead letters, oldest first, left where they are. In an encrypted queue a
/// message's body and last error (which may quote it) are shown only for
/// the one named by `?reveal=ID`.
pub(super) async fn dead_letters(
    State(api): State<Api>,
    headers: HeaderMap,
    Path((name, queue)): Path<(String, String)>,
    Query(q): Query<DeadLettersQuery>,
) -> ApiResult<Json<Vec<DeadLetter>>> {
    let tenant = api.tenant(&headers)?;
    let record = api.owned(&tenant, &name)?;
    let (client, info) = api.dead_letter_queue(&record, &queue).await?;
    let opts = queue_svc::client::LeaseOptions {
        max: DEAD_LETTERS_SHOWN,
        wait: Duration::ZERO,
        lock: PEEK_LOCK,
    };
    let leased = client
        .lease_dead(&queue, opts)
        .await
        .map_err(queue_svc_error)?;
    let mut shown = Vec::with_capacity(leased.len());
    for m in leased {
        // Given back at once, with the reason it was dead-lettered kept.
        if let Err(e) = client.rollback(&m.lease_id, m.last_error.as_deref()).await {
            tracing::warn!(app = %name, queue, error = %e, "a shown dead letter was not given back; it is visible again when its lock ends");
        }
        let plain = !info.encrypted || q.reveal.as_deref() == Some(m.id.as_str());
        shown.push(DeadLetter {
            id: m.id,
            delivery_count: m.delivery_count,
            enqueued_at_ms: m.enqueued_at_ms,
            sealed: !plain,
            last_error: m.last_error.filter(|_| plain),
            body: plain.then_some(m.body),
        });
    }
    shown.sort_by_key(|m| m.enqueued_at_ms);
    Ok(Json(shown))
}

/// `POST /v1/apps/{name}/queues/{queue}/dlq/redrive`: every dead letter
/// back to its queue.
pub(super) async fn redrive(
    State(api): State<Api>,
    headers: HeaderMap,
    Path((name, queue)): Path<(String, String)>,
) -> ApiResult<Json<Redriven>> {
    let tenant = api.tenant(&headers)?;
    let record = api.owned(&tenant, &name)?;
    let (client, _) = api.dead_letter_queue(&record, &queue).await?;
    let moved = client.redrive(&queue).await.map_err(queue_svc_error)?;
    api.supervisor.events().emit(
        Some(&name),
        "queue.redriven",
        format!("{moved} dead letters of queue {queue} of app {name} moved back to their queue"),
    );
    Ok(Json(Redriven { moved }))
}
