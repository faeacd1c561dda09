//! Every error the API answers, mapped to a status and the fabric's JSON body in one place.

use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use common::http::ApiError;

use crate::backend::BackendError;
use crate::store::StoreError;

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let (status, kind) = match &e {
            StoreError::Invalid(_) => (StatusCode::BAD_REQUEST, "VALIDATION"),
            StoreError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "TOO_LARGE"),
            StoreError::NotFound { .. } => (StatusCode::NOT_FOUND, "NOT_FOUND"),
            StoreError::PreconditionFailed { .. } => {
                (StatusCode::PRECONDITION_FAILED, "PRECONDITION_FAILED")
            }
            StoreError::LeaseHeld(_) => (StatusCode::CONFLICT, "LEASE_HELD"),
            StoreError::LeaseLost { .. } => (StatusCode::CONFLICT, "LEASE_LOST"),
            StoreError::Unreadable { .. } => {
                tracing::error!(error = %e, "stored value does not open");
                (StatusCode::INTERNAL_SERVER_ERROR, "STORE")
            }
            StoreError::Backend(BackendError::Malformed { .. }) => {
                tracing::error!(error = %e, "malformed stored record");
                (StatusCode::INTERNAL_SERVER_ERROR, "STORE")
            }
            StoreError::StillRunning(_) => (StatusCode::SERVICE_UNAVAILABLE, "STORE"),
            StoreError::Backend(_) => {
                tracing::warn!(error = %e, "backend failed");
                (StatusCode::SERVICE_UNAVAILABLE, "STORE")
            }
        };
        ApiError::new(status, kind, e.to_string())
    }
}

/// A malformed request part (header, query, path, body).
pub fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "VALIDATION", message)
}

/// An unreadable body: too large (413) or cut short.
pub fn from_bytes(e: BytesRejection) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "TOO_LARGE",
            format!(
                "value is over the limit of {} bytes",
                crate::api::MAX_VALUE_BYTES
            ),
        )
    } else {
        bad_request(format!("cannot read the body: {}", e.body_text()))
    }
}

/// A JSON body that does not parse, or is over its route's limit (413).
pub fn from_json(e: JsonRejection) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "TOO_LARGE",
            format!("the body is over this call's limit: {}", e.body_text()),
        )
    } else {
        bad_request(e.body_text())
    }
}

/// A query string that does not parse.
pub fn from_query(e: QueryRejection) -> ApiError {
    bad_request(e.body_text())
}

/// A path that does not decode.
pub fn from_path(e: PathRejection) -> ApiError {
    bad_request(e.body_text())
}

/// No route here.
pub fn no_route() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", "no such endpoint")
}
