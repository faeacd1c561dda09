//! The shared object store for apps: per-app stores over DynamoDB or an embedded store.
//!
//! Values are sealed with the fabric's envelope encryption before they reach
//! a backend; keys stay readable so that prefix listing works. See
//! `docs/objectstore-svc.md` for the API.
#![forbid(unsafe_code)]

pub mod api;
pub mod backend;
pub mod client;
mod error;
mod http;
mod metrics;
pub mod store;

use std::sync::Arc;

use common::config::ServiceConfig;
use common::http::Readiness;
use common::shutdown::Shutdown;
use common::tombstone::{REFRESH_INTERVAL, Tombstones};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

pub use backend::{Backend, BackendError, BackendKind};

/// The component's name in logs and metrics.
pub const NAME: &str = "objectstore-svc";

/// The embedded store's file name in the data directory.
pub const EMBEDDED_FILE: &str = "objectstore.redb";

/// The object store's own settings, beside the common fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Where values live: `embedded` (a redb file in `data_dir`) or
    /// `dynamodb` (aws-config's default chain; `FABRIC_BACKEND`).
    pub backend: BackendKind,
    /// The DynamoDB table (`FABRIC_TABLE`; the stack's `ObjectstoreTable`),
    /// created at start when missing if `create_resources` is on.
    pub table: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            backend: BackendKind::Embedded,
            table: "fabric-objectstore".to_string(),
        }
    }
}

/// The component's configuration: the common service fields and its own settings.
pub type Config = ServiceConfig<Settings>;

/// Why the service could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Keys or secrets could not be loaded.
    #[error("{0}")]
    Config(#[from] common::config::ConfigError),
    /// The master keyring could not be loaded.
    #[error(transparent)]
    Keys(#[from] common::secrets::KeyringError),
    /// The backend could not be opened.
    #[error("backend {kind}: {source}")]
    Backend {
        /// Which backend.
        kind: BackendKind,
        /// Why.
        source: BackendError,
    },
    /// Serving failed.
    #[error("serving: {0}")]
    Io(#[from] std::io::Error),
}

/// Opens the backend the settings name.
pub async fn open_backend(config: &Config) -> Result<Backend, RunError> {
    let kind = config.settings.backend;
    let opened = match kind {
        BackendKind::Embedded => {
            let file = config.data_dir.join(EMBEDDED_FILE);
            tokio::task::spawn_blocking(move || Backend::embedded(&file))
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))?
        }
        BackendKind::DynamoDb => {
            Backend::dynamodb(&config.settings.table, config.create_resources).await
        }
    };
    opened.map_err(|source| RunError::Backend { kind, source })
}

/// Serves the component on `listener` until `shutdown`.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: Shutdown,
) -> Result<(), RunError> {
    let keyring = common::secrets::load_keyring(&config).await?;
    let tokens = common::secrets::token_key(&config)?;
    let backend = open_backend(&config).await?;
    tracing::info!(component = NAME, backend = %backend.kind(), "backend open");
    let mut registry = common::http::registry(NAME);
    let metrics = metrics::Metrics::register(&mut registry);
    let readiness = Readiness::new("starting");
    let deleted = backend.get().tombstones().await;
    let kind = backend.kind();
    let tombstones = Tombstones::new(deleted.map_err(|source| RunError::Backend { kind, source })?);
    let refresh = backend.clone();
    tombstones.spawn_refresh(&shutdown, REFRESH_INTERVAL, move || {
        let backend = refresh.clone();
        async move { backend.get().tombstones().await }
    });
    let state = http::ApiState {
        store: store::ObjectStore::new(backend, keyring),
        tokens,
        tombstones,
        metrics,
    };
    let router =
        common::http::ops_router(readiness.clone(), Arc::new(registry)).merge(http::router(state));
    readiness.set_ready();
    common::http::serve(NAME, listener, router, readiness, shutdown).await?;
    Ok(())
}
