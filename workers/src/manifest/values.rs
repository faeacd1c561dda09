//! Checks of single manifest values: names, durations, methods, paths, headers, expressions.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use serde_saphyr::Spanned;

use super::model::Trigger;
use super::shape::SourceDef;
use super::{
    EXPRESSION_TEXT_LEFT, MAX_EXPRESSION_TEXT, MAX_TTL, MIN_EVERY, ManifestError, Text, at,
};
use crate::expr::Expr;

/// A store named in a manifest: a valid resource name not starting with `_`
/// (those are the runtime's own: idempotency keys, groups, schedule ticks).
pub(super) fn store_name(name: Text) -> Result<String, ManifestError> {
    common::app::validate_resource_name("store", &name.value)
        .map_err(|e| at(&name, e.to_string()))?;
    if name.value.starts_with('_') {
        return Err(at(
            &name,
            "store names starting with '_' are reserved for the runtime",
        ));
    }
    Ok(name.value)
}

pub(super) fn key_ttl(text: &Text) -> Result<Duration, ManifestError> {
    let d = humantime_duration(text)?;
    if d < Duration::from_secs(1) || d > MAX_TTL {
        return Err(at(text, "ttl must be 1s to 30d"));
    }
    Ok(d)
}

/// The trigger of a `schedule` source: exactly one of `every` and `cron`.
pub(super) fn trigger(source: &Spanned<SourceDef>) -> Result<Trigger, ManifestError> {
    let SourceDef::Schedule { every, cron } = &source.value else {
        return Err(at(source, "not a schedule"));
    };
    match (every, cron) {
        (Some(every), None) => {
            let d = humantime_duration(every)?;
            if d < MIN_EVERY || d > MAX_TTL {
                return Err(at(every, "every must be 100ms to 30d"));
            }
            Ok(Trigger::Every(d))
        }
        (None, Some(text)) => {
            // A classic five-field expression runs at second 0.
            let fields = text.value.split_whitespace().count();
            let full = if fields == 5 {
                format!("0 {}", text.value)
            } else {
                text.value.clone()
            };
            let schedule = full
                .parse::<cron::Schedule>()
                .map_err(|e| at(text, format!("cron expression {:?}: {e}", text.value)))?;
            Ok(Trigger::Cron {
                expr: text.value.clone(),
                schedule: Box::new(schedule),
            })
        }
        _ => Err(at(source, "a schedule needs exactly one of every and cron")),
    }
}

pub(super) fn expr(text: &Text) -> Result<Expr, ManifestError> {
    let spent = EXPRESSION_TEXT_LEFT.with(|left| {
        let now = left.get().checked_sub(text.value.len());
        left.set(now.unwrap_or(0));
        now.is_none()
    });
    if spent {
        return Err(at(
            text,
            format!(
                "the manifest's expressions (aliases expanded) are more than {MAX_EXPRESSION_TEXT} bytes"
            ),
        ));
    }
    Expr::compile(&text.value).map_err(|e| at(text, format!("expression {:?}: {e}", text.value)))
}

/// Headers that frame a message or belong to one connection: the server or
/// client that sends the message sets them, a flow does not (a flow's own
/// `content-length` or `transfer-encoding` beside the real one would be a
/// message two readers split differently).
const FRAMING_HEADERS: [&str; 8] = [
    "connection",
    "content-length",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

pub(super) fn header_exprs(
    headers: BTreeMap<String, Text>,
) -> Result<Vec<(String, Expr)>, ManifestError> {
    headers
        .into_iter()
        .map(|(name, value)| {
            let parsed = axum::http::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| at(&value, format!("{name:?} is not a header name")))?;
            if FRAMING_HEADERS.contains(&parsed.as_str()) {
                return Err(at(
                    &value,
                    format!("header {name} is set by the fabric, not by a flow"),
                ));
            }
            Ok((name, expr(&value)?))
        })
        .collect()
}

pub(super) fn humantime_duration(text: &Text) -> Result<Duration, ManifestError> {
    #[derive(Deserialize)]
    struct D(#[serde(with = "humantime_serde")] Duration);
    serde_json::from_value::<D>(Value::String(text.value.clone()))
        .map(|d| d.0)
        .map_err(|_| {
            at(
                text,
                format!("{:?} is not a duration (like 500ms, 10s, 1m)", text.value),
            )
        })
}

pub(super) fn check_method(method: &Text) -> Result<&'static str, ManifestError> {
    const METHODS: [&str; 7] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];
    let upper = method.value.to_ascii_uppercase();
    METHODS.into_iter().find(|m| *m == upper).ok_or_else(|| {
        at(
            method,
            format!("{:?} is not one of {}", method.value, METHODS.join(", ")),
        )
    })
}

/// Checks a path pattern and returns its shape (parameters unnamed), so that
/// two patterns the router could not tell apart are caught as duplicates.
pub(super) fn check_path(path: &Text) -> Result<String, ManifestError> {
    let p = &path.value;
    if !p.starts_with('/') {
        return Err(at(path, "a path starts with '/'"));
    }
    let mut shape = String::new();
    let segments: Vec<&str> = p[1..].split('/').collect();
    let mut names = HashSet::new();
    for (i, seg) in segments.iter().enumerate() {
        shape.push('/');
        if let Some(inner) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            let (name, wildcard) = match inner.strip_prefix('*') {
                Some(n) => (n, true),
                None => (inner, false),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(at(
                    path,
                    format!("path parameter {seg:?} must be {{name}} or {{*name}}"),
                ));
            }
            if wildcard && i + 1 != segments.len() {
                return Err(at(path, "a {*name} parameter must be the last segment"));
            }
            if !names.insert(name) {
                return Err(at(path, format!("path parameter {name:?} appears twice")));
            }
            shape.push_str(if wildcard { "{*}" } else { "{}" });
        } else if seg.contains(['{', '}', '*', '?', '#', ':']) {
            return Err(at(
                path,
                format!("path segment {seg:?} has a reserved character"),
            ));
        } else {
            shape.push_str(seg);
        }
    }
    Ok(shape)
}
