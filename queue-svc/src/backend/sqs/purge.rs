//! Deleting: a queue's messages, and a deleted app (its tombstone, then every queue of it).

use super::naming::{app_prefix, name_of, tomb_name};
use super::{Sqs, sdk_err};
use crate::backend::{BackendError, Part, QueueId};

impl Sqs {
    /// Deletes every message of the queue (not of its DLQ).
    pub(super) async fn purge_queue(&self, q: &QueueId) -> Result<(), BackendError> {
        let url = self.url(q, Part::Main).await?;
        self.client
            .purge_queue()
            .queue_url(url)
            .send()
            .await
            .map_err(|e| sdk_err("purge queue", e))?;
        Ok(())
    }

    /// Records the app as deleted: an empty tombstone queue.
    pub(super) async fn bury_app(&self, app: &str) -> Result<(), BackendError> {
        // CreateQueue of an existing queue with the same (no) attributes
        // answers its URL: a second burial changes nothing.
        self.client
            .create_queue()
            .queue_name(tomb_name(&self.prefix, app))
            .send()
            .await
            .map_err(|e| sdk_err("create tombstone queue", e))?;
        Ok(())
    }

    /// Every app with a tombstone queue.
    pub(super) async fn buried_apps(&self) -> Result<Vec<String>, BackendError> {
        let marker = tomb_name(&self.prefix, "");
        let urls = self.urls_with_prefix(&marker).await?;
        Ok(urls
            .iter()
            .filter_map(|u| name_of(u).strip_prefix(marker.as_str()))
            .filter(|app| common::app::validate_app_id(app).is_ok())
            .map(str::to_string)
            .collect())
    }

    /// Deletes every queue of the app, its DLQs included, and forgets their URLs.
    pub(super) async fn forget_app(&self, app: &str) -> Result<(), BackendError> {
        let ours = app_prefix(&self.prefix, app);
        // Every queue of the app, its DLQs and any half-declared one
        // included (a declare creates the DLQ first).
        for url in self.urls_with_prefix(&ours).await? {
            match self.client.delete_queue().queue_url(&url).send().await {
                Ok(_) => {}
                Err(e) => match sdk_err("delete queue", e) {
                    // Deleted meanwhile: by an earlier purge, say.
                    BackendError::UnknownQueue(_) => {}
                    other => return Err(other),
                },
            }
        }
        self.urls
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|name, _| !name.starts_with(&ours));
        Ok(())
    }
}
