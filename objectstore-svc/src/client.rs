//! The client workers use: every object store operation for one app, over HTTP.

use std::time::Duration;

use bytes::Bytes;
use reqwest::{Method, RequestBuilder, StatusCode, Url, header};

use crate::api::{CORRELATION_HEADER, EXPIRES_AT_HEADER, MAX_WRITES, Write, WriteOutcomes, Writes};
pub use crate::api::{ErrorBody, KeyPage, Lease, LeaseRequest, ObjectInfo, PutResult, StoreStats};
pub use crate::store::Precondition;
use common::coalesce::{Batching, Coalescer};

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The request did not complete (connection, timeout, unreadable answer).
    #[error("object store request failed: {0}")]
    Transport(#[from] reqwest::Error),
    /// The service refused or failed the request.
    #[error("object store answered {status}: {} ({})", body.error, body.message)]
    Api {
        /// The HTTP status.
        status: u16,
        /// The error body.
        body: ErrorBody,
    },
    /// The base URL cannot carry paths.
    #[error("object store URL {0} cannot be a base")]
    BadUrl(String),
    /// The call that carried this write with others did not complete (what
    /// [`Transport`](ClientError::Transport) said, told to each of them), or
    /// the batching task is gone.
    #[error("object store request failed: {0}")]
    Unreached(String),
}

impl ClientError {
    /// The HTTP status of a refusal.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// An `If-Match` / `If-None-Match` condition did not hold (412).
    pub fn is_precondition_failed(&self) -> bool {
        self.status() == Some(412)
    }

    /// A lease is held by another, or ours was lost (409).
    pub fn is_conflict(&self) -> bool {
        self.status() == Some(409)
    }

    /// Whether the same call may succeed later: the service was not reached
    /// or did not answer in time, failed (5xx) or was busy (429). A refusal
    /// (any other 4xx) or a bad URL will fail again.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Transport(_) | ClientError::Unreached(_) => true,
            ClientError::Api { status, .. } => *status >= 500 || *status == 429,
            ClientError::BadUrl(_) => false,
        }
    }

    /// The same error, once for each write a failed call carried.
    fn shared(&self) -> ClientError {
        match self {
            ClientError::Transport(e) => ClientError::Unreached(e.to_string()),
            ClientError::Api { status, body } => ClientError::Api {
                status: *status,
                body: body.clone(),
            },
            ClientError::BadUrl(u) => ClientError::BadUrl(u.clone()),
            ClientError::Unreached(e) => ClientError::Unreached(e.clone()),
        }
    }
}

/// Concurrent writes a [`Writer`] keeps in calls out at once; while all are
/// busy, new writes gather into the next call.
pub const WRITE_CALLS_IN_FLIGHT: usize = 4;

/// The largest value a [`Writer`] sends with others; larger ones, and
/// values that are not UTF-8, go by a put of their own.
pub const MAX_SHARED_VALUE: usize = 64 * 1024;

/// How long [`forget_app`] waits for its answer: purging an app scans the
/// whole DynamoDB table.
pub const FORGET_TIMEOUT: Duration = Duration::from_secs(60);

/// Asks objectstore-svc at `base_url` to forget the deleted app `app_id`,
/// with the fabric's internal token: from the first moment its tokens are
/// refused, then every value of every store it had (the runtime's own
/// stores included) and its leases are deleted. `Ok` once all of it is
/// gone. Safe to repeat, and worth repeating while the error
/// [`is_retryable`](ClientError::is_retryable): the next call finishes the job.
pub async fn forget_app(base_url: &str, app_id: &str, internal_token: &str) -> Result<()> {
    let mut url = Url::parse(base_url).map_err(|_| ClientError::BadUrl(base_url.to_string()))?;
    url.path_segments_mut()
        .map_err(|()| ClientError::BadUrl(base_url.to_string()))?
        .pop_if_empty()
        .extend(["v1", "apps", app_id]);
    let http = reqwest::Client::builder().timeout(FORGET_TIMEOUT).build()?;
    let req = http
        .delete(url)
        .bearer_auth(internal_token)
        .header(CORRELATION_HEADER, uuid::Uuid::new_v4().to_string());
    Client::send(req).await?;
    Ok(())
}

/// A value as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// The value.
    pub value: Bytes,
    /// Its ETag (for `If-Match`).
    pub etag: String,
    /// When it expires (Unix ms), if it does.
    pub expires_at: Option<u64>,
}

/// How to write a value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PutOptions {
    /// Expire the key after this long.
    pub ttl: Option<Duration>,
    /// Write only if this holds.
    pub precondition: Precondition,
}

/// An object store client for one app. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    app: String,
    token: String,
}

type Result<T> = std::result::Result<T, ClientError>;

impl Client {
    /// A client of the service at `base` (`http://host:port`) for `app`, with its app `token`.
    pub fn new(base: &str, app: &str, token: &str) -> Result<Self> {
        Self::with_http(reqwest::Client::new(), base, app, token)
    }

    /// The same, sharing an existing HTTP client's connection pool.
    pub fn with_http(http: reqwest::Client, base: &str, app: &str, token: &str) -> Result<Self> {
        let base = Url::parse(base).map_err(|_| ClientError::BadUrl(base.to_string()))?;
        if base.cannot_be_a_base() {
            return Err(ClientError::BadUrl(base.to_string()));
        }
        Ok(Client {
            http,
            base,
            app: app.to_string(),
            token: token.to_string(),
        })
    }

    /// The app this client acts for.
    pub fn app(&self) -> &str {
        &self.app
    }

    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty()
                .extend(["v1", "apps", self.app.as_str()])
                .extend(segments);
        }
        url
    }

    fn request(&self, method: Method, url: Url) -> RequestBuilder {
        self.http
            .request(method, url)
            .bearer_auth(&self.token)
            .header(CORRELATION_HEADER, uuid::Uuid::new_v4().to_string())
    }

    /// Sends and turns a refusal into [`ClientError::Api`].
    async fn send(req: RequestBuilder) -> Result<reqwest::Response> {
        let response = req.send().await?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status().as_u16();
        let text = response.text().await?;
        let body = serde_json::from_str(&text).unwrap_or(ErrorBody {
            error: "HTTP".to_string(),
            message: text,
            correlation_id: None,
        });
        Err(ClientError::Api { status, body })
    }

    /// The value under `key`, or `None` when there is none (or it expired).
    pub async fn get(&self, store: &str, key: &str) -> Result<Option<Fetched>> {
        let url = self.url(&["stores", store, "keys", key]);
        match Self::send(self.request(Method::GET, url)).await {
            Ok(r) => {
                let etag = r
                    .headers()
                    .get(header::ETAG)
                    .and_then(|v| v.to_str().ok())
                    .map(|v| v.trim_matches('"').to_string())
                    .unwrap_or_default();
                let expires_at = r
                    .headers()
                    .get(EXPIRES_AT_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok());
                Ok(Some(Fetched {
                    value: r.bytes().await?,
                    etag,
                    expires_at,
                }))
            }
            Err(e) if e.status() == Some(StatusCode::NOT_FOUND.as_u16()) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes `value` under `key`.
    pub async fn put(
        &self,
        store: &str,
        key: &str,
        value: impl Into<Bytes>,
        options: &PutOptions,
    ) -> Result<PutResult> {
        let mut url = self.url(&["stores", store, "keys", key]);
        if let Some(ttl) = options.ttl {
            url.query_pairs_mut()
                .append_pair("ttl", &format!("{}ms", ttl.as_millis()));
        }
        let mut req = self.request(Method::PUT, url).body(value.into());
        req = with_precondition(req, &options.precondition);
        Ok(Self::send(req).await?.json().await?)
    }

    /// Several puts in one call (`POST /writes`): each write's own answer,
    /// in order, or the call's failure.
    pub async fn write_all(&self, writes: Vec<Write>) -> Result<Vec<Result<PutResult>>> {
        let req = self
            .request(Method::POST, self.url(&["writes"]))
            .json(&Writes { writes });
        let answer: WriteOutcomes = Self::send(req).await?.json().await?;
        Ok(answer
            .outcomes
            .into_iter()
            .map(|o| match (o.written, o.error) {
                (Some(w), _) => Ok(w),
                (None, error) => Err(ClientError::Api {
                    status: o.status,
                    body: error.unwrap_or(ErrorBody {
                        error: "HTTP".into(),
                        message: "no outcome given".into(),
                        correlation_id: None,
                    }),
                }),
            })
            .collect())
    }

    /// A writer whose concurrent puts share `POST /writes` calls of up to
    /// [`MAX_WRITES`]. Must be created inside a Tokio runtime; its task ends
    /// when every clone is dropped.
    pub fn writer(&self) -> Writer {
        let client = self.clone();
        let calls = Coalescer::start(
            Batching {
                max: MAX_WRITES,
                in_flight: WRITE_CALLS_IN_FLIGHT,
                call: move |writes| {
                    let client = client.clone();
                    async move { client.write_all(writes).await }
                },
                share: ClientError::shared,
            },
            || ClientError::Unreached("the object store writer stopped".into()),
        );
        Writer {
            client: self.clone(),
            calls,
        }
    }

    /// Writes `value` only if `key` has no live value; false when it has one.
    pub async fn put_if_absent(
        &self,
        store: &str,
        key: &str,
        value: impl Into<Bytes>,
    ) -> Result<bool> {
        let options = PutOptions {
            precondition: Precondition::IfAbsent,
            ..PutOptions::default()
        };
        match self.put(store, key, value, &options).await {
            Ok(_) => Ok(true),
            Err(e) if e.is_precondition_failed() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Deletes `key` (if its ETag matches, with [`Precondition::IfMatch`]); false when absent.
    pub async fn delete(
        &self,
        store: &str,
        key: &str,
        precondition: &Precondition,
    ) -> Result<bool> {
        let url = self.url(&["stores", store, "keys", key]);
        let req = with_precondition(self.request(Method::DELETE, url), precondition);
        match Self::send(req).await {
            Ok(_) => Ok(true),
            Err(e) if e.status() == Some(StatusCode::NOT_FOUND.as_u16()) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// One page of the keys starting with `prefix`, after `cursor`, at most `limit`.
    pub async fn list(
        &self,
        store: &str,
        prefix: &str,
        cursor: Option<&str>,
        limit: Option<usize>,
    ) -> Result<KeyPage> {
        let mut url = self.url(&["stores", store, "keys"]);
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("prefix", prefix);
            if let Some(c) = cursor {
                q.append_pair("cursor", c);
            }
            if let Some(l) = limit {
                q.append_pair("limit", &l.to_string());
            }
        }
        Ok(Self::send(self.request(Method::GET, url))
            .await?
            .json()
            .await?)
    }

    /// A store's live keys and bytes.
    pub async fn stats(&self, store: &str) -> Result<StoreStats> {
        let url = self.url(&["stores", store]);
        Ok(Self::send(self.request(Method::GET, url))
            .await?
            .json()
            .await?)
    }

    /// Acquires the lease `name` for `holder`; a 409 ([`ClientError::is_conflict`]) when held.
    pub async fn acquire(&self, name: &str, holder: &str, ttl: Duration) -> Result<Lease> {
        let body = LeaseRequest {
            holder: holder.to_string(),
            ttl,
            token: None,
        };
        let req = self
            .request(Method::POST, self.url(&["leases", name]))
            .json(&body);
        Ok(Self::send(req).await?.json().await?)
    }

    /// Renews `lease` for `ttl` from now; a 409 when it was lost.
    pub async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Lease> {
        let body = LeaseRequest {
            holder: lease.holder.clone(),
            ttl,
            token: Some(lease.token),
        };
        let url = self.url(&["leases", &lease.name]);
        Ok(Self::send(self.request(Method::PUT, url).json(&body))
            .await?
            .json()
            .await?)
    }

    /// Releases `lease`; a 409 when it was already lost.
    pub async fn release(&self, lease: &Lease) -> Result<()> {
        let mut url = self.url(&["leases", &lease.name]);
        url.query_pairs_mut()
            .append_pair("holder", &lease.holder)
            .append_pair("token", &lease.token.to_string());
        Self::send(self.request(Method::DELETE, url)).await?;
        Ok(())
    }
}

fn with_precondition(req: RequestBuilder, pre: &Precondition) -> RequestBuilder {
    match pre {
        Precondition::None => req,
        Precondition::IfAbsent => req.header(header::IF_NONE_MATCH, "*"),
        Precondition::IfMatch(etag) => req.header(header::IF_MATCH, format!("\"{etag}\"")),
    }
}

/// Puts of one app whose concurrent calls share `POST /writes` calls: each
/// is done and answered as if it came alone, and all of a call share the
/// service's next durable commit. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Writer {
    client: Client,
    calls: Coalescer<Write, PutResult, ClientError>,
}

impl Writer {
    /// Writes `value` under `key` as [`Client::put`] does, with whatever
    /// other writes are waiting.
    pub async fn put(
        &self,
        store: &str,
        key: &str,
        value: impl Into<Bytes>,
        options: &PutOptions,
    ) -> Result<PutResult> {
        let value: Bytes = value.into();
        let text = match std::str::from_utf8(&value) {
            Ok(text) if value.len() <= MAX_SHARED_VALUE => text.to_string(),
            _ => return self.client.put(store, key, value, options).await,
        };
        let (if_absent, if_match) = match &options.precondition {
            Precondition::None => (false, None),
            Precondition::IfAbsent => (true, None),
            Precondition::IfMatch(etag) => (false, Some(etag.clone())),
        };
        self.calls
            .submit(Write {
                store: store.to_string(),
                key: key.to_string(),
                value: text,
                ttl: options.ttl,
                if_absent,
                if_match,
            })
            .await
    }
}
