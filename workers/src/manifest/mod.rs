//! The app manifest: YAML parsed with source locations, checked whole, compiled to flows.
//!
//! Loading refuses a manifest that does not parse, names a processor or field
//! that does not exist, refers to a flow or queue that is not there, or holds
//! a jq expression that does not compile, with the line, column and reason.

//!
//! `shape` is the YAML users write, `model` the compiled app the runtime runs,
//! `check` turns the one into the other, and `values` checks single fields
//! (durations, paths, headers, expressions). This file holds the limits that
//! bound a hostile manifest and the entry point, [`load`].

mod check;
mod model;
mod shape;
mod values;

use std::time::Duration;

use serde_saphyr::Spanned;

pub use model::{App, Flow, OnError, Source, Step, Strategy, Trigger};

use check::Checker;
use shape::AppDef;

/// Why a manifest was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {column}: {reason}")]
pub struct ManifestError {
    /// 1-based line.
    pub line: u64,
    /// 1-based column.
    pub column: u64,
    /// What is wrong there.
    pub reason: String,
}

pub(super) type Text = Spanned<String>;

pub(super) fn at<T>(s: &Spanned<T>, reason: impl Into<String>) -> ManifestError {
    ManifestError {
        line: s.referenced.line(),
        column: s.referenced.column(),
        reason: reason.into(),
    }
}

/// The default (and longest) wait of an `http-request`.
pub const HTTP_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_HTTP_REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
const MAX_CONCURRENCY: usize = 1024;
/// The longest a stored key lives (the object store's own limit).
const MAX_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// How long `idempotent` and `aggregate` remember a key unless told.
pub const DEFAULT_KEY_TTL: Duration = Duration::from_secs(24 * 3600);
const MIN_EVERY: Duration = Duration::from_millis(100);
const MAX_GROUP: u32 = 1000;
/// Paths a worker serves itself when its ops endpoints share the app's
/// listener (a worker started by hand without `ops_listen`).
pub const OPS_PATHS: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// The largest manifest, in bytes.
pub const MAX_MANIFEST_BYTES: usize = 256 * 1024;

/// The most YAML events aliases may replay in one manifest (serde-saphyr's
/// default is a million: a few anchored 8 KiB expressions, each aliased
/// thousands of times, would be gigabytes of text to compile).
pub const MAX_ALIAS_REPLAYS: usize = 10_000;

/// The most expression text one manifest compiles, aliases expanded:
/// twice what a manifest without aliases can hold.
pub const MAX_EXPRESSION_TEXT: usize = 2 * MAX_MANIFEST_BYTES;

thread_local! {
    /// Expression text the manifest being checked may still compile. Each
    /// check runs on a thread of its own ([`load`]), so this is per manifest.
    static EXPRESSION_TEXT_LEFT: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Parses and checks a manifest. Any text gets an answer: the app, or the
/// line, column and reason it is refused. Checking runs on a thread of its
/// own with a deep stack (see [`crate::expr::bounds`]), so no manifest can
/// overflow the caller's stack, and a panic while checking is a refusal.
pub fn load(yaml: &str) -> Result<App, ManifestError> {
    if yaml.len() > MAX_MANIFEST_BYTES {
        return Err(ManifestError {
            line: 1,
            column: 1,
            reason: format!(
                "the manifest is {} bytes, more than {MAX_MANIFEST_BYTES}",
                yaml.len()
            ),
        });
    }
    crate::expr::bounds::isolated(|| load_here(yaml)).unwrap_or_else(|panic| {
        Err(ManifestError {
            line: 1,
            column: 1,
            reason: format!("the manifest could not be checked ({panic})"),
        })
    })
}

/// How manifests are read: aliases bounded (no "billion laughs").
fn yaml_options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        alias_limits: serde_saphyr::alias_limits! { max_total_replayed_events: MAX_ALIAS_REPLAYS },
    }
}

fn load_here(yaml: &str) -> Result<App, ManifestError> {
    EXPRESSION_TEXT_LEFT.with(|left| left.set(MAX_EXPRESSION_TEXT));
    let options = yaml_options();
    let def: AppDef = serde_saphyr::from_str_with_options(yaml, options).map_err(|e| {
        let (line, column) = e.location().map_or((1, 1), |l| (l.line(), l.column()));
        let text = e.to_string();
        // The first line holds the reason; the rest is a rendered snippet.
        let first = text.lines().next().unwrap_or("invalid manifest");
        let reason = first
            .split_once(&format!("line {line} column {column}: "))
            .map_or(first, |(_, r)| r)
            .trim_start_matches("error: ")
            .to_string();
        ManifestError {
            line,
            column,
            reason,
        }
    })?;
    Checker::new(&def)?.app(def)
}
