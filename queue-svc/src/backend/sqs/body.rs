//! A stored message as an SQS message: its body, and a dead letter's attributes.

use aws_sdk_sqs::types::{Message, MessageAttributeValue, MessageSystemAttributeName};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use super::NAME;
use crate::backend::{BackendError, Part, Received, Stored};

pub(super) fn string_attr(value: impl Into<String>, kind: &str) -> MessageAttributeValue {
    MessageAttributeValue::builder()
        .data_type(kind)
        .string_value(value)
        .build()
        .expect("data type is set")
}

/// SQS accepts only these characters in a body.
pub(super) fn sqs_safe(text: &str) -> bool {
    text.chars().all(|c| {
        matches!(c, '\t' | '\n' | '\r') || (c >= ' ' && c != '\u{FFFE}' && c != '\u{FFFF}')
    })
}

/// The SQS body of a stored message: `f1 {id} {enqueued ms} {kind} {payload}`,
/// where kind `t` is a plain body as is, `p` a plain body in base64 (it has
/// characters SQS refuses) and `s` a sealed body in base64. Everything travels
/// in the body, so a message costs SQS no more than a bare one.
pub(super) fn encode_body(m: &Stored) -> String {
    let (kind, payload) = match std::str::from_utf8(&m.body) {
        _ if m.sealed => ("s", B64.encode(&m.body)),
        Ok(text) if sqs_safe(text) => ("t", text.to_string()),
        _ => ("p", B64.encode(&m.body)),
    };
    format!("f1 {} {} {kind} {payload}", m.id, m.enqueued_ms)
}

/// The stored message an SQS body carries.
pub(super) fn decode_body(body: &str) -> Option<Stored> {
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
pub(super) fn decode(m: &Message, part: Part) -> Result<Received, BackendError> {
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
