//! Typed flow errors: what went wrong in a flow, and how an HTTP source answers it.

use axum::http::StatusCode;

/// The type of a flow error, as `on-error` matches it and clients see it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ErrorType {
    /// A `validate` step was false.
    Validation,
    /// A queue could not be published to or read.
    Queue,
    /// The object store failed.
    Store,
    /// An outbound HTTP request failed or answered an error.
    Http,
    /// An expression failed at run time.
    Expression,
    /// Something asked for does not exist.
    NotFound,
    /// The worker is at its concurrency or memory ceiling.
    Overloaded,
    /// An outbound call took too long.
    Timeout,
    /// Raised by the app with `raise-error`, under its own name.
    Custom(String),
}

impl ErrorType {
    /// The name as written in manifests and error bodies.
    pub fn name(&self) -> &str {
        match self {
            ErrorType::Validation => "VALIDATION",
            ErrorType::Queue => "QUEUE",
            ErrorType::Store => "STORE",
            ErrorType::Http => "HTTP",
            ErrorType::Expression => "EXPRESSION",
            ErrorType::NotFound => "NOT_FOUND",
            ErrorType::Overloaded => "OVERLOADED",
            ErrorType::Timeout => "TIMEOUT",
            ErrorType::Custom(name) => name,
        }
    }

    /// Parses a name; anything not built in is a custom type.
    pub fn parse(name: &str) -> Self {
        match name {
            "VALIDATION" => ErrorType::Validation,
            "QUEUE" => ErrorType::Queue,
            "STORE" => ErrorType::Store,
            "HTTP" => ErrorType::Http,
            "EXPRESSION" => ErrorType::Expression,
            "NOT_FOUND" => ErrorType::NotFound,
            "OVERLOADED" => ErrorType::Overloaded,
            "TIMEOUT" => ErrorType::Timeout,
            other => ErrorType::Custom(other.to_string()),
        }
    }

    /// The status an HTTP source answers with for this type.
    pub fn status(&self) -> StatusCode {
        match self {
            ErrorType::Validation => StatusCode::BAD_REQUEST,
            ErrorType::NotFound => StatusCode::NOT_FOUND,
            ErrorType::Http => StatusCode::BAD_GATEWAY,
            ErrorType::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorType::Queue | ErrorType::Store | ErrorType::Overloaded => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ErrorType::Expression | ErrorType::Custom(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// An error raised while a flow runs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", kind.name())]
pub struct FlowError {
    /// Its type.
    pub kind: ErrorType,
    /// What happened, for a person.
    pub message: String,
    /// The HTTP status to answer with, when the app chose one (`raise-error`).
    pub status: Option<StatusCode>,
}

impl FlowError {
    /// An error of `kind`.
    pub fn new(kind: ErrorType, message: impl Into<String>) -> Self {
        FlowError {
            kind,
            message: message.into(),
            status: None,
        }
    }

    /// A publish to a queue the app does not consume: a guard, since loading
    /// refuses a manifest that publishes to such a queue.
    pub(crate) fn no_queue(name: &str) -> Self {
        FlowError::new(ErrorType::Queue, format!("no queue named {name:?}"))
    }

    /// The status an HTTP source answers with.
    pub fn status(&self) -> StatusCode {
        self.status.unwrap_or_else(|| self.kind.status())
    }

    /// The error as the `$vars.error` value an `on-error` handler sees.
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::json!({ "type": self.kind.name(), "message": self.message })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_map_to_statuses() {
        for t in [
            "VALIDATION",
            "QUEUE",
            "STORE",
            "HTTP",
            "EXPRESSION",
            "NOT_FOUND",
            "OVERLOADED",
            "TIMEOUT",
            "APP:OUT_OF_STOCK",
        ] {
            assert_eq!(ErrorType::parse(t).name(), t);
        }
        assert_eq!(ErrorType::Validation.status(), StatusCode::BAD_REQUEST);
        assert_eq!(ErrorType::NotFound.status(), StatusCode::NOT_FOUND);
        let mut e = FlowError::new(ErrorType::parse("APP:GONE"), "x");
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
        e.status = Some(StatusCode::GONE);
        assert_eq!(e.status(), StatusCode::GONE);
    }
}
