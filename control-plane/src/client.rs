//! A client of the control plane's API, for the `fabric` command line and tests.

use eventsource_stream::{EventStreamError, Eventsource};
use futures::{Stream, StreamExt};
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::access::{CreatedKey, KeyInfo, NewKey, TenantDeleted, TenantInfo, TenantKey};
use crate::model::{
    AppQueues, AppStatus, AzStatus, Configuration, DeployRequest, Event, PropertiesRequest,
    RollbackRequest, ScaleRequest, WorkerInfo,
};

/// An API call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The control plane could not be reached.
    #[error("cannot reach the control plane at {url}: {source}")]
    Unreachable {
        /// Its URL.
        url: String,
        /// The cause.
        source: reqwest::Error,
    },
    /// It answered with an error.
    #[error("{message}")]
    Api {
        /// The HTTP status.
        status: StatusCode,
        /// The error type (`MANIFEST`, `NOT_FOUND`, ...).
        kind: String,
        /// What went wrong.
        message: String,
    },
    /// The event stream it sent cannot be read any further (not
    /// server-sent events).
    #[error("the event stream from {url} cannot be read: {reason}")]
    BadStream {
        /// Its URL.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// An event the control plane sent that this client cannot read (one of a
/// newer kind, say). Following goes on past it: the caller says so to the
/// user rather than losing it silently.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an event could not be read ({reason}): {data}")]
pub struct UnreadableEvent {
    /// Why it could not be read.
    pub reason: String,
    /// Its data, as sent.
    pub data: String,
}

/// What a delete left behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deleted {
    /// Nothing: the app's data is purged and its name is free.
    Purged,
    /// The app is gone, its data is still being purged (its name is free
    /// once that is done).
    Purging,
}

/// The control plane at `url`, called with an API key.
#[derive(Clone)]
pub struct Client {
    url: String,
    key: String,
    http: reqwest::Client,
}

/// An API answer: its JSON body (`null` when empty) when `status` is a
/// success, else the refusal's type and message (the fabric's error body),
/// or why the body could not be read.
pub(crate) fn decode_answer<T: DeserializeOwned>(
    status: reqwest::StatusCode,
    bytes: &[u8],
) -> Result<T, (String, String)> {
    if !status.is_success() {
        let v: serde_json::Value = serde_json::from_slice(bytes).unwrap_or_default();
        return Err((
            v["error"].as_str().unwrap_or("HTTP").to_string(),
            v["message"].as_str().map_or_else(
                || format!("the control plane answered {status}"),
                str::to_string,
            ),
        ));
    }
    let bytes = if bytes.is_empty() {
        &b"null"[..]
    } else {
        bytes
    };
    serde_json::from_slice(bytes).map_err(|e| {
        (
            "DECODE".to_string(),
            format!("unexpected answer from the control plane: {e}"),
        )
    })
}

impl Client {
    /// A client of the control plane at `url` using `key`.
    pub fn new(url: &str, key: &str) -> Self {
        Client {
            url: url.trim_end_matches('/').to_string(),
            key: key.to_string(),
            http: reqwest::Client::new(),
        }
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.key);
        if let Some(b) = body {
            req = req.json(b);
        }
        let unreachable = |source| ClientError::Unreachable {
            url: self.url.clone(),
            source,
        };
        let resp = req.send().await.map_err(unreachable)?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(unreachable)?;
        decode_answer(status, &bytes).map_err(|(kind, message)| ClientError::Api {
            status,
            kind,
            message,
        })
    }

    /// Deploys (or redeploys) an app; returns once it serves or was rolled back.
    pub async fn deploy(&self, req: &DeployRequest) -> Result<AppStatus, ClientError> {
        self.call(Method::POST, "/v1/apps", Some(req)).await
    }

    /// The tenant's apps.
    pub async fn apps(&self) -> Result<Vec<AppStatus>, ClientError> {
        self.call::<(), _>(Method::GET, "/v1/apps", None).await
    }

    /// One app.
    pub async fn app(&self, name: &str) -> Result<AppStatus, ClientError> {
        self.call::<(), _>(Method::GET, &format!("/v1/apps/{name}"), None)
            .await
    }

    /// Changes an app's worker count (and size).
    pub async fn scale(&self, name: &str, req: &ScaleRequest) -> Result<AppStatus, ClientError> {
        self.call(Method::POST, &format!("/v1/apps/{name}/scale"), Some(req))
            .await
    }

    /// Restarts an app: its current settings as a new version, side by side.
    pub async fn restart(&self, name: &str) -> Result<AppStatus, ClientError> {
        self.call::<(), _>(Method::POST, &format!("/v1/apps/{name}/restart"), None)
            .await
    }

    /// Sets and unsets an app's properties: a new configuration, deployed side by side.
    pub async fn set_properties(
        &self,
        name: &str,
        req: &PropertiesRequest,
    ) -> Result<AppStatus, ClientError> {
        self.call(
            Method::PATCH,
            &format!("/v1/apps/{name}/properties"),
            Some(req),
        )
        .await
    }

    /// An app's log lines by `query` (see [`crate::logs::LogQuery`]).
    pub async fn logs(
        &self,
        name: &str,
        query: &[(&str, String)],
    ) -> Result<Vec<crate::logs::LogLine>, ClientError> {
        let query = serde_urlencoded::to_string(query).unwrap_or_default();
        self.call::<(), _>(Method::GET, &format!("/v1/apps/{name}/logs?{query}"), None)
            .await
    }

    /// An app's kept configurations, newest first.
    pub async fn history(&self, name: &str) -> Result<Vec<Configuration>, ClientError> {
        self.call::<(), _>(Method::GET, &format!("/v1/apps/{name}/history"), None)
            .await
    }

    /// Deploys a kept configuration again (the last that served before the
    /// serving one, when `to` is `None`).
    pub async fn rollback(&self, name: &str, to: Option<u64>) -> Result<AppStatus, ClientError> {
        let req = RollbackRequest { to };
        self.call(
            Method::POST,
            &format!("/v1/apps/{name}/rollback"),
            Some(&req),
        )
        .await
    }

    /// Makes an app's canary its serving version.
    pub async fn promote(&self, name: &str) -> Result<AppStatus, ClientError> {
        let path = format!("/v1/apps/{name}/promote");
        self.call::<(), _>(Method::POST, &path, None).await
    }

    /// Retires an app's canary.
    pub async fn abort_canary(&self, name: &str) -> Result<AppStatus, ClientError> {
        let path = format!("/v1/apps/{name}/abort");
        self.call::<(), _>(Method::POST, &path, None).await
    }

    /// Sets an app's scaling policy, or turns autoscaling off (`None`).
    pub async fn autoscale(
        &self,
        name: &str,
        policy: Option<&crate::model::ScalePolicy>,
    ) -> Result<AppStatus, ClientError> {
        let path = format!("/v1/apps/{name}/autoscale");
        match policy {
            Some(p) => self.call(Method::PUT, &path, Some(p)).await,
            None => self.call::<(), _>(Method::DELETE, &path, None).await,
        }
    }

    /// Removes an app.
    pub async fn delete(&self, name: &str) -> Result<Deleted, ClientError> {
        let answer: Option<serde_json::Value> = self
            .call::<(), _>(Method::DELETE, &format!("/v1/apps/{name}"), None)
            .await?;
        Ok(match answer {
            None => Deleted::Purged,
            Some(_) => Deleted::Purging,
        })
    }

    /// An app's workers.
    pub async fn workers(&self, name: &str) -> Result<Vec<WorkerInfo>, ClientError> {
        self.call::<(), _>(Method::GET, &format!("/v1/apps/{name}/workers"), None)
            .await
    }

    /// The app's queues and their counts.
    pub async fn queues(&self, name: &str) -> Result<AppQueues, ClientError> {
        self.call::<(), _>(Method::GET, &format!("/v1/apps/{name}/queues"), None)
            .await
    }

    /// The events kept so far.
    pub async fn events(&self) -> Result<Vec<Event>, ClientError> {
        self.call::<(), _>(Method::GET, "/v1/events", None).await
    }

    /// Follows events as they happen, calling `each` until it returns false.
    /// An event that cannot be read is handed to `each` as an error, and
    /// following goes on.
    pub async fn follow_events(
        &self,
        each: impl FnMut(Result<Event, UnreadableEvent>) -> bool,
    ) -> Result<(), ClientError> {
        let resp = self
            .http
            .get(format!("{}/v1/events?follow=true", self.url))
            .bearer_auth(&self.key)
            .send()
            .await
            .map_err(|source| ClientError::Unreachable {
                url: self.url.clone(),
                source,
            })?;
        if !resp.status().is_success() {
            return Err(ClientError::Api {
                status: resp.status(),
                kind: "HTTP".into(),
                message: "cannot follow events".into(),
            });
        }
        let chunks = futures::stream::unfold(resp, |mut resp| async move {
            resp.chunk().await.transpose().map(|chunk| (chunk, resp))
        });
        read_events(chunks, each).await.map_err(|e| match e {
            EventStreamError::Transport(source) => ClientError::Unreachable {
                url: self.url.clone(),
                source,
            },
            other => ClientError::BadStream {
                url: self.url.clone(),
                reason: other.to_string(),
            },
        })
    }

    /// Fails (`fail`) or restores (`restore`) an AZ.
    pub async fn az(&self, az: &str, action: &str) -> Result<Vec<AzStatus>, ClientError> {
        self.call::<(), _>(Method::POST, &format!("/v1/azs/{az}/{action}"), None)
            .await
    }

    /// Creates a tenant and returns its API key (admin only).
    pub async fn create_tenant(&self, name: &str) -> Result<String, ClientError> {
        let v: serde_json::Value = self
            .call(
                Method::POST,
                "/v1/tenants",
                Some(&serde_json::json!({ "name": name })),
            )
            .await?;
        Ok(v["apiKey"].as_str().unwrap_or_default().to_string())
    }

    /// Creates a tenant, or gives an existing one another key (admin only).
    pub async fn new_tenant(&self, name: &str) -> Result<TenantKey, ClientError> {
        self.call(
            Method::POST,
            "/v1/tenants",
            Some(&serde_json::json!({ "name": name })),
        )
        .await
    }

    /// Every tenant (admin only).
    pub async fn tenants(&self) -> Result<Vec<TenantInfo>, ClientError> {
        self.call::<(), _>(Method::GET, "/v1/tenants", None).await
    }

    /// Deletes a tenant with its keys; with `force`, its apps first (admin only).
    pub async fn delete_tenant(
        &self,
        name: &str,
        force: bool,
    ) -> Result<TenantDeleted, ClientError> {
        let path = format!("/v1/tenants/{}?force={force}", segment(name));
        self.call::<(), _>(Method::DELETE, &path, None).await
    }

    /// Makes a key for this key's own tenant; the answer holds it, once.
    pub async fn create_key(&self, req: &NewKey) -> Result<CreatedKey, ClientError> {
        self.call(Method::POST, "/v1/keys", Some(req)).await
    }

    /// This key's tenant's keys (never the keys themselves).
    pub async fn keys(&self) -> Result<Vec<KeyInfo>, ClientError> {
        self.call::<(), _>(Method::GET, "/v1/keys", None).await
    }

    /// Revokes one of this key's tenant's keys.
    pub async fn revoke_key(&self, id: &str) -> Result<(), ClientError> {
        let path = format!("/v1/keys/{}", segment(id));
        self.call::<(), Option<serde_json::Value>>(Method::DELETE, &path, None)
            .await
            .map(|_| ())
    }
}

/// `text` as one path segment: anything but letters, digits, `-` and `_`
/// percent-encoded (`.` too, so `..` cannot climb), so no input reaches
/// another path or a query.
fn segment(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// Reads server-sent events from `chunks` (as they come off the wire, split
/// anywhere) and hands each, decoded, to `each` until it returns false or the
/// stream ends. An event whose data is not an [`Event`] is handed over as an
/// [`UnreadableEvent`]; a stream that is not server-sent events at all ends
/// the reading with an error.
async fn read_events<B: AsRef<[u8]>, E>(
    chunks: impl Stream<Item = Result<B, E>>,
    mut each: impl FnMut(Result<Event, UnreadableEvent>) -> bool,
) -> Result<(), EventStreamError<E>> {
    let mut events = std::pin::pin!(chunks.eventsource());
    while let Some(next) = events.next().await {
        let decoded = match next {
            Ok(sse) => serde_json::from_str::<Event>(&sse.data).map_err(|e| UnreadableEvent {
                reason: e.to_string(),
                data: sse.data,
            }),
            // Only at the end of the stream: a character cut off there.
            Err(EventStreamError::Utf8(e)) => Err(UnreadableEvent {
                reason: format!("not UTF-8: {e}"),
                data: String::from_utf8_lossy(e.as_bytes()).into_owned(),
            }),
            Err(other) => return Err(other),
        };
        if !each(decoded) {
            return Ok(());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: u64, message: &str) -> Event {
        Event {
            seq,
            at_ms: 1,
            app: Some("orders".into()),
            app_id: None,
            tenant: None,
            kind: "worker.up".into(),
            message: message.into(),
        }
    }

    /// Reads `chunks` to the end, returning what `each` was handed.
    async fn read(chunks: Vec<Vec<u8>>) -> Vec<Result<Event, UnreadableEvent>> {
        let mut seen = Vec::new();
        read_events(
            futures::stream::iter(chunks.into_iter().map(Ok::<_, std::convert::Infallible>)),
            |e| {
                seen.push(e);
                true
            },
        )
        .await
        .expect("a readable stream");
        seen
    }

    #[tokio::test]
    async fn a_character_split_between_reads_and_multi_line_data_arrive_whole() {
        let first = serde_json::to_string(&event(1, "zone é down")).unwrap();
        let second = serde_json::to_string(&event(2, "worker 2 → b")).unwrap();
        // The second event's JSON is sent over two `data:` lines, split after its first comma.
        let (head, tail) = second.split_at(second.find(',').unwrap() + 1);
        let wire = format!(": keep-alive\n\ndata: {first}\n\ndata: {head}\ndata: {tail}\n\n");
        let bytes = wire.as_bytes();
        // Cut inside the two bytes of 'é' and inside the three of '→'.
        let e = wire.find('é').unwrap() + 1;
        let arrow = wire.find('→').unwrap() + 2;
        let chunks = vec![
            bytes[..e].to_vec(),
            bytes[e..arrow].to_vec(),
            bytes[arrow..].to_vec(),
        ];
        let seen = read(chunks).await;
        assert_eq!(
            seen,
            vec![Ok(event(1, "zone é down")), Ok(event(2, "worker 2 → b"))]
        );
    }

    #[tokio::test]
    async fn an_unreadable_event_is_handed_over_and_reading_goes_on() {
        let good = serde_json::to_string(&event(3, "ok")).unwrap();
        let wire = format!("data: {{\"seq\": \"not a number\"}}\n\ndata: {good}\n\n");
        let seen = read(vec![wire.into_bytes()]).await;
        assert_eq!(seen.len(), 2, "{seen:?}");
        let bad = seen[0].as_ref().unwrap_err();
        assert_eq!(bad.data, "{\"seq\": \"not a number\"}");
        assert_eq!(seen[1], Ok(event(3, "ok")));
    }

    #[tokio::test]
    async fn following_stops_when_told() {
        let one = serde_json::to_string(&event(1, "a")).unwrap();
        let wire = format!("data: {one}\n\ndata: {one}\n\n");
        let mut calls = 0;
        read_events(
            futures::stream::iter([Ok::<_, std::convert::Infallible>(wire.into_bytes())]),
            |_| {
                calls += 1;
                false
            },
        )
        .await
        .unwrap();
        assert_eq!(calls, 1);
    }
}
