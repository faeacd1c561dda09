//! A client of the control plane's API, for the `fabric` command line and tests.

use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::model::{
    AppQueues, AppStatus, AzStatus, DeployRequest, Event, ScaleRequest, WorkerInfo,
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
        if !status.is_success() {
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            return Err(ClientError::Api {
                status,
                kind: v["error"].as_str().unwrap_or("HTTP").to_string(),
                message: v["message"].as_str().map_or_else(
                    || format!("the control plane answered {status}"),
                    str::to_string,
                ),
            });
        }
        let bytes = if bytes.is_empty() {
            &b"null"[..]
        } else {
            &bytes[..]
        };
        serde_json::from_slice(bytes).map_err(|e| ClientError::Api {
            status,
            kind: "DECODE".into(),
            message: format!("unexpected answer from the control plane: {e}"),
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
    pub async fn follow_events(
        &self,
        mut each: impl FnMut(Event) -> bool,
    ) -> Result<(), ClientError> {
        let unreachable = |source| ClientError::Unreachable {
            url: self.url.clone(),
            source,
        };
        let mut resp = self
            .http
            .get(format!("{}/v1/events?follow=true", self.url))
            .bearer_auth(&self.key)
            .send()
            .await
            .map_err(unreachable)?;
        if !resp.status().is_success() {
            return Err(ClientError::Api {
                status: resp.status(),
                kind: "HTTP".into(),
                message: "cannot follow events".into(),
            });
        }
        let mut buf = String::new();
        while let Some(chunk) = resp.chunk().await.map_err(unreachable)? {
            buf.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buf.find("\n\n") {
                let frame: String = buf.drain(..end + 2).collect();
                for line in frame.lines() {
                    if let Some(data) = line.strip_prefix("data:")
                        && let Ok(event) = serde_json::from_str::<Event>(data.trim())
                        && !each(event)
                    {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
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
}
