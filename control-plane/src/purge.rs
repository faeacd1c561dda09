//! Deleting an app for good: its tokens revoked and its data purged from
//! the queue and object store services and this machine's logs, resumably,
//! before its name is free again.
//!
//! A delete records a [`PurgeRecord`] in the registry first (see
//! [`crate::registry::Registry::start_purge`]); every step here is
//! idempotent, so a purge cut off by a crash or an unreachable service is
//! simply run again (at start, and by the background retry loop) until it
//! finishes and the record is removed.

use std::path::PathBuf;
use std::time::Duration;

use common::shutdown::Shutdown;
use common::token::TokenKey;

use crate::model::PurgeRecord;
use crate::registry::Registry;

/// How long an internal token for one purge call lives.
const TOKEN_TTL: Duration = Duration::from_secs(300);
/// Retry back-off while a service cannot be reached.
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(60);

/// Purges deleted apps. Cheap to clone.
#[derive(Clone)]
pub struct Purger {
    registry: Registry,
    tokens: TokenKey,
    queue_url: Option<String>,
    objectstore_url: Option<String>,
    /// Where the local scheduler writes workers' logs.
    logs: PathBuf,
}

/// Why a purge has not finished yet (it is retried).
#[derive(Debug, thiserror::Error)]
pub enum PurgeError {
    /// queue-svc did not purge the app's queues.
    #[error("queue-svc: {0}")]
    Queues(String),
    /// objectstore-svc did not purge the app's stores.
    #[error("objectstore-svc: {0}")]
    Stores(String),
    /// The app's logs could not be removed.
    #[error("logs: {0}")]
    Logs(std::io::Error),
    /// The registry did not record the end.
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
}

impl Purger {
    /// A purger over the fabric's services (those configured).
    pub fn new(
        registry: Registry,
        tokens: TokenKey,
        queue_url: Option<String>,
        objectstore_url: Option<String>,
        logs: PathBuf,
    ) -> Self {
        Purger {
            registry,
            tokens,
            queue_url,
            objectstore_url,
            logs,
        }
    }

    /// Runs one purge to its end: the services revoke the app id's tokens
    /// and delete its data, its logs go, then the record (and so the name).
    pub async fn purge(&self, p: &PurgeRecord) -> Result<(), PurgeError> {
        let token = self.tokens.issue_internal(TOKEN_TTL);
        // Every app may have had persistent queues in some version: always asked.
        if let Some(url) = &self.queue_url {
            queue_svc::client::forget_app(url, &p.app_id, &token)
                .await
                .map_err(|e| PurgeError::Queues(e.to_string()))?;
        }
        if let Some(url) = &self.objectstore_url {
            objectstore_svc::client::forget_app(url, &p.app_id, &token)
                .await
                .map_err(|e| PurgeError::Stores(e.to_string()))?;
        }
        self.remove_logs(&p.app_id).map_err(PurgeError::Logs)?;
        self.registry.finish_purge(&p.name, &p.app_id).await?;
        tracing::info!(app = %p.name, app_id = %p.app_id, "app purged");
        Ok(())
    }

    /// Removes `{app_id}-{n}-v{version}.log` files, and only those (an app
    /// named `shop` must not take `shop-1`'s logs).
    fn remove_logs(&self, app_id: &str) -> std::io::Result<()> {
        let entries = match std::fs::read_dir(&self.logs) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            if is_log_of(&name.to_string_lossy(), app_id) {
                std::fs::remove_file(entry.path())?;
            }
        }
        Ok(())
    }

    /// Retries every unfinished purge with back-off until shutdown: those
    /// left by a crash, and those whose service was unreachable.
    pub async fn run(self, shutdown: Shutdown) -> Result<(), std::convert::Infallible> {
        let mut backoff = common::backoff::Backoff::new(FIRST_RETRY, MAX_RETRY);
        loop {
            let pending = self.registry.purges();
            let mut failed = false;
            for p in &pending {
                if let Err(e) = self.purge(p).await {
                    failed = true;
                    tracing::warn!(app = %p.name, app_id = %p.app_id, error = %e, "purge not finished; will retry");
                }
            }
            if !failed {
                backoff.reset();
            }
            tokio::select! {
                () = shutdown.triggered() => return Ok(()),
                () = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
    }
}

/// Whether `file` is a log of app id `app_id`: `{app_id}-{n}-v{version}.log`.
fn is_log_of(file: &str, app_id: &str) -> bool {
    let Some(rest) = file
        .strip_prefix(app_id)
        .and_then(|r| r.strip_prefix('-'))
        .and_then(|r| r.strip_suffix(".log"))
    else {
        return false;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    matches!(rest.split_once("-v"), Some((n, v)) if digits(n) && digits(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_apps_logs_are_its_own_and_no_neighbours() {
        assert!(is_log_of("shop-1-v1.log", "shop"));
        assert!(is_log_of("shop--k2m9-8-v12.log", "shop--k2m9"));
        assert!(!is_log_of("shop-1-1-v1.log", "shop"), "app shop-1's log");
        assert!(
            !is_log_of("shop--k2m9-1-v1.log", "shop"),
            "another instance"
        );
        assert!(!is_log_of("shopping-1-v1.log", "shop"));
        assert!(!is_log_of("shop-1-v1.log.old", "shop"));
    }
}
