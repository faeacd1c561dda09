//! queue-svc's errors, and the one place they become HTTP statuses and JSON bodies.

use axum::http::StatusCode;
use common::app::NameError;
use common::http::ApiError;

use crate::backend::BackendError;

/// Why a queue operation failed.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// An app or queue name breaks the naming rules.
    #[error(transparent)]
    BadName(#[from] NameError),
    /// The request is malformed or its parameters are out of range.
    #[error("{0}")]
    Invalid(String),
    /// A message body is larger than the limit.
    #[error("{0}")]
    TooLarge(String),
    /// The queue was never declared.
    #[error("queue {0} does not exist; declare it with PUT /v1/apps/{{app}}/queues/{{queue}}")]
    UnknownQueue(String),
    /// The lease is not held any more (acked, rolled back, or its lock expired).
    #[error("{0}")]
    LeaseLost(String),
    /// The backend failed; retrying may help.
    #[error("queue backend unavailable: {0}")]
    Unavailable(String),
}

impl From<BackendError> for QueueError {
    fn from(e: BackendError) -> Self {
        match e {
            BackendError::UnknownQueue(q) => QueueError::UnknownQueue(q),
            BackendError::LeaseLost(why) => QueueError::LeaseLost(format!("lease not held: {why}")),
            e @ BackendError::Store { .. } => QueueError::Unavailable(e.to_string()),
        }
    }
}

impl From<QueueError> for ApiError {
    fn from(e: QueueError) -> Self {
        let (status, kind) = match &e {
            QueueError::BadName(_) | QueueError::Invalid(_) => {
                (StatusCode::BAD_REQUEST, "VALIDATION")
            }
            QueueError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "TOO_LARGE"),
            QueueError::UnknownQueue(_) => (StatusCode::NOT_FOUND, "NOT_FOUND"),
            QueueError::LeaseLost(_) => (StatusCode::CONFLICT, "LEASE_LOST"),
            QueueError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "QUEUE"),
        };
        ApiError::new(status, kind, e.to_string())
    }
}
