//! The event a flow carries: payload, attributes, variables and a correlation id.

use serde_json::{Map, Value};

/// One event moving through a flow.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The payload: JSON, or bytes shown as a string.
    pub payload: Value,
    /// What the source knew: HTTP method, path, uri params, query, headers;
    /// or the queue message id and delivery count.
    pub attributes: Value,
    /// Variables set by `set-variable` (and `error` inside an `on-error`).
    pub vars: Map<String, Value>,
    /// Follows the event through queues and into logs and error bodies.
    pub correlation_id: String,
    /// Names this event for `idempotent` and `aggregate`: a queue message's
    /// id (the same on every delivery), a schedule's tick, else unique.
    pub id: String,
}

impl Event {
    /// A new event with a fresh correlation id.
    pub fn new(payload: Value, attributes: Value) -> Self {
        let correlation_id = uuid::Uuid::new_v4().to_string();
        Event {
            payload,
            attributes,
            vars: Map::new(),
            id: correlation_id.clone(),
            correlation_id,
        }
    }
}

/// Reads a body as a payload: JSON when it parses, else the bytes as a
/// (lossy UTF-8) string; an empty body is `null`.
pub fn payload_from_bytes(body: &[u8]) -> Value {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Value::Null;
    }
    serde_json::from_slice(body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bodies_become_payloads() {
        assert_eq!(payload_from_bytes(b"{\"a\":1}"), json!({"a": 1}));
        assert_eq!(payload_from_bytes(b"hello"), json!("hello"));
        assert_eq!(payload_from_bytes(b""), Value::Null);
        assert_eq!(payload_from_bytes(&[0xff, b'a']), json!("\u{fffd}a"));
    }
}
