//! The console asks the control plane's API, in process, with the signed-in
//! person's API key: what a page shows and what a form does is exactly what
//! the API (and so the CLI) answers that key, refusals, tenant isolation and
//! rate limits included.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tower::ServiceExt as _;

use super::Console;

/// The largest API answer the console reads (a page of logs is the largest).
const MAX_ANSWER: usize = 16 << 20;

/// What a path segment may hold as is; everything else is escaped.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.');

/// `s` as one path segment of an API URL.
pub fn segment(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

/// The API's refusal: its status and its message for a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The API's status.
    pub status: StatusCode,
    /// The API's message.
    pub message: String,
}

impl Refused {
    /// Whether the API no longer knows the key (revoked, expired).
    pub fn signed_out(&self) -> bool {
        self.status == StatusCode::UNAUTHORIZED
    }
}

impl Console {
    /// `method path` with `body` as JSON, as the holder of `key`.
    pub(super) async fn call<T: DeserializeOwned>(
        &self,
        key: &str,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, Refused> {
        let failed = |e: &dyn std::fmt::Display| Refused {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: e.to_string(),
        };
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {key}"));
        let body = match body {
            Some(b) => {
                request = request.header(header::CONTENT_TYPE, "application/json");
                Body::from(serde_json::to_vec(b).map_err(|e| failed(&e))?)
            }
            None => Body::empty(),
        };
        let request = request.body(body).map_err(|e| failed(&e))?;
        let Ok(response) = self.api.clone().oneshot(request).await;
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), MAX_ANSWER)
            .await
            .map_err(|e| failed(&e))?;
        crate::client::decode_answer(status, &bytes)
            .map_err(|(_, message)| Refused { status, message })
    }

    /// `GET path` as the holder of `key`.
    pub(super) async fn get<T: DeserializeOwned>(
        &self,
        key: &str,
        path: &str,
    ) -> Result<T, Refused> {
        self.call(key, Method::GET, path, None::<&()>).await
    }

    /// `POST path` with `body` as the holder of `key`.
    pub(super) async fn post<T: DeserializeOwned>(
        &self,
        key: &str,
        path: &str,
        body: &impl Serialize,
    ) -> Result<T, Refused> {
        self.call(key, Method::POST, path, Some(body)).await
    }
}
