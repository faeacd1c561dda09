//! The HTTP API's types, limits and header names, shared by the server and the client.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The longest key, in bytes of UTF-8.
pub const MAX_KEY_BYTES: usize = 1024;
/// The largest value, in bytes.
pub const MAX_VALUE_BYTES: usize = 10 * 1024 * 1024;
/// The longest TTL of a key or a lease.
pub const MAX_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// The most keys one listing page returns.
pub const MAX_PAGE: usize = 1000;
/// The response header carrying a value's expiry (Unix milliseconds), when it has one.
pub const EXPIRES_AT_HEADER: &str = "fabric-expires-at";
/// The request header carrying a correlation id, echoed in error bodies.
pub const CORRELATION_HEADER: &str = "x-correlation-id";

/// A key's metadata, as listed and as returned by a put.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectInfo {
    /// The key.
    pub key: String,
    /// The value's ETag (without quotes).
    pub etag: String,
    /// The value's length in bytes.
    pub size: u64,
    /// When the key expires (Unix milliseconds), if it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

/// The answer to a put.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PutResult {
    /// The new value's ETag (without quotes).
    pub etag: String,
    /// Whether the key had no live value before.
    pub created: bool,
    /// When the key expires (Unix milliseconds), if it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyPage {
    /// Live keys, in key order.
    pub keys: Vec<ObjectInfo>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

/// A store's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoreStats {
    /// Live keys.
    pub keys: u64,
    /// Bytes of their values.
    pub bytes: u64,
}

/// The body of a lease acquisition or renewal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LeaseRequest {
    /// Who asks: a name unique to the process (a worker id).
    pub holder: String,
    /// How long the lease lasts from now (`30s`, `500ms`).
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// For a renewal: the fencing token of the acquisition being renewed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<u64>,
}

/// A held lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Lease {
    /// The lease's name.
    pub name: String,
    /// Who holds it.
    pub holder: String,
    /// The fencing token of this acquisition: larger than every earlier one of this lease.
    pub token: u64,
    /// When it lapses unless renewed (Unix milliseconds).
    pub expires_at: u64,
}

/// The fabric's JSON error body, as a client reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    /// The error type (`VALIDATION`, `NOT_FOUND`, `PRECONDITION_FAILED`, ...).
    pub error: String,
    /// What went wrong.
    pub message: String,
    /// The request's correlation id.
    #[serde(default)]
    pub correlation_id: Option<String>,
}

/// The most writes one `POST /v1/apps/{app}/writes` carries.
pub const MAX_WRITES: usize = 25;
/// The largest body of `POST /v1/apps/{app}/writes`; a larger value goes
/// by a put of its own.
pub const MAX_WRITES_BYTES: usize = 1024 * 1024;

/// Several puts in one call (`POST /v1/apps/{app}/writes`). Each is done,
/// and answered, on its own, as if it came alone: one failing leaves the
/// others written. They share the call and the service's durable commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Writes {
    /// One to [`MAX_WRITES`] puts.
    pub writes: Vec<Write>,
}

/// One put of [`Writes`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Write {
    /// The store.
    pub store: String,
    /// The key.
    pub key: String,
    /// The value, as UTF-8 text (other bytes go by a put of their own).
    pub value: String,
    /// Expire the key after this long (`1d`, `500ms`).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub ttl: Option<Duration>,
    /// Write only if the key has no live value (`If-None-Match: *`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub if_absent: bool,
    /// Write only if the value's ETag is this one (`If-Match`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub if_match: Option<String>,
}

/// The answer to [`Writes`]: one outcome per write, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WriteOutcomes {
    /// Each write's outcome.
    pub outcomes: Vec<WriteOutcome>,
}

/// What one write of [`Writes`] came to: the status its own put would have
/// answered, with the put's answer or the error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WriteOutcome {
    /// 201 (created), 200 (replaced), or the refusal's status.
    pub status: u16,
    /// The put's answer, when it wrote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub written: Option<PutResult>,
    /// Why not, when it did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}
