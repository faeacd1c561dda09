//! Persistent queues for apps: per-app queues over SQS or an embedded store.
//!
//! [`run`] serves the HTTP API (publish, lease, ack, rollback, extend, DLQ
//! redrive, purge, stats, and forgetting a deleted app) beside `/healthz`, `/readyz` and `/metrics`;
//! [`client`] is what workers use to talk to it. See docs/queue-svc.md.
#![forbid(unsafe_code)]

pub mod api;
mod backend;
pub mod client;
mod error;
mod http;
mod metrics;
mod service;
pub mod settings;

use std::sync::Arc;

use common::config::{ConfigError, ServiceConfig};
use common::http::{Readiness, ops_router, registry};
use common::shutdown::Shutdown;
use common::tombstone::{REFRESH_INTERVAL, Tombstones};
use tokio::net::TcpListener;

pub use backend::{Backend, BackendError, EMBEDDED_FILE};
pub use error::QueueError;
pub use settings::{BackendKind, Settings};

/// The component's name in logs and metrics.
pub const NAME: &str = "queue-svc";

/// The component's configuration: the common service fields and its own settings.
pub type Config = ServiceConfig<Settings>;

/// Why the service could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The master keyring could not be loaded.
    #[error(transparent)]
    Keys(#[from] common::secrets::KeyringError),
    /// The backend could not be opened.
    #[error("queue backend: {0}")]
    Backend(#[from] BackendError),
    /// The listener failed.
    #[error("serving: {0}")]
    Io(#[from] std::io::Error),
}

/// Serves the component on `listener` until `shutdown`.
pub async fn run(config: Config, listener: TcpListener, shutdown: Shutdown) -> Result<(), Error> {
    config.settings.validate()?;
    let keyring = common::secrets::load_keyring(&config).await?;
    let tokens = common::secrets::token_key(&config)?;
    let readiness = Readiness::new("opening the queue backend");
    let backend = Backend::open(&config.settings, &config.data_dir, shutdown.clone()).await?;
    let mut registry = registry(NAME);
    let metrics = metrics::Metrics::register(&mut registry);
    tracing::info!(backend = %config.settings.backend, "queue backend open");
    let tombstones = Tombstones::new(backend.0.tombstones().await?);
    let refresh = backend.clone();
    tombstones.spawn_refresh(&shutdown, REFRESH_INTERVAL, move || {
        let backend = refresh.clone();
        async move { backend.0.tombstones().await }
    });
    let queues = Arc::new(service::Queues::new(
        backend,
        keyring,
        config.settings.clone(),
        metrics,
        tombstones.clone(),
    ));
    let api = http::Api {
        queues,
        tokens,
        tombstones,
        shutdown: shutdown.clone(),
    };
    let router = http::router(api).merge(ops_router(readiness.clone(), Arc::new(registry)));
    readiness.set_ready();
    common::http::serve(NAME, listener, router, readiness, shutdown).await?;
    Ok(())
}
