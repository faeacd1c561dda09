//! The worker runtime: runs one instance of one app's flows.
//!
//! A worker loads the app's manifest (refusing a bad one before anything
//! starts), compiles its expressions once, and serves its sources: HTTP routes
//! on its listener and consumers of its queues. It is stateless: what must
//! outlive it belongs in the queue service or the object store.
#![forbid(unsafe_code)]

pub mod engine;
pub mod error;
pub mod event;
pub mod expr;
pub mod manifest;
pub mod metrics;
pub mod queues;
pub mod size;
pub mod source;

use std::path::PathBuf;
use std::sync::Arc;

use common::config::ServiceConfig;
use common::http::{Readiness, ops_router, serve};
use common::shutdown::Shutdown;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::engine::Engine;
use crate::manifest::{App, Source};
use crate::metrics::Metrics;
use crate::queues::TransientQueues;
use crate::size::WorkerSize;

/// The component's name in logs and metrics.
pub const NAME: &str = "worker";

/// A worker's own settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// The app manifest (YAML) this worker runs (`FABRIC_MANIFEST`).
    pub manifest: PathBuf,
    /// The app's name, when not the manifest's own (`FABRIC_APP`).
    pub app: Option<String>,
    /// The worker size in vCores: 0.1, 0.2, 1, 2, 4, 8 or 16 (`FABRIC_SIZE`; default 1).
    pub size: WorkerSize,
}

/// The worker's configuration.
pub type Config = ServiceConfig<Settings>;

/// Why a worker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The manifest file could not be read.
    #[error("manifest {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The manifest was refused.
    #[error("manifest {path}: {source}")]
    Manifest {
        /// The file.
        path: String,
        /// What is wrong, and where.
        source: manifest::ManifestError,
    },
    /// A setting is invalid.
    #[error("{0}")]
    Setting(String),
    /// Serving failed.
    #[error("serving: {0}")]
    Io(#[from] std::io::Error),
}

impl Settings {
    /// Reads and checks the manifest.
    pub fn load_app(&self) -> Result<App, StartError> {
        let path = self.manifest.display().to_string();
        let text = std::fs::read_to_string(&self.manifest).map_err(|source| StartError::Read {
            path: path.clone(),
            source,
        })?;
        let app = manifest::load(&text).map_err(|source| StartError::Manifest { path, source })?;
        if let Some(name) = &self.app {
            common::app::validate_app_name(name).map_err(|e| StartError::Setting(e.to_string()))?;
        }
        Ok(app)
    }
}

/// Runs the worker on `listener` until `shutdown`: loads the app, starts its
/// queue consumers, then serves its HTTP flows beside `/healthz`, `/readyz`
/// and `/metrics`. On shutdown it stops accepting and leasing and lets
/// in-flight events finish within the grace period.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: Shutdown,
) -> Result<(), StartError> {
    let size = config.settings.size;
    let app = Arc::new(config.settings.load_app()?);
    let name = config
        .settings
        .app
        .clone()
        .or_else(|| app.name.clone())
        .unwrap_or_else(|| "app".into());
    let readiness = Readiness::new("starting flows");
    let metrics = Metrics::new();
    let queue_names: Vec<&str> = app
        .flows
        .iter()
        .filter_map(|f| match &f.source {
            Some(Source::Queue { name, .. }) => Some(name.as_str()),
            _ => None,
        })
        .collect();
    let queues = TransientQueues::new(queue_names, size.concurrency * 8);
    let engine = Arc::new(Engine::new(app.clone(), queues, metrics.clone()));
    source::queue::start(&engine, &shutdown);
    let limits = source::http::Limits {
        slots: Arc::new(Semaphore::new(size.concurrency)),
        max_body: size.max_payload(),
    };
    let router = source::http::router(engine, limits)
        .merge(ops_router(readiness.clone(), metrics.registry()));
    readiness.set_ready();
    tracing::info!(app = %name, size = %size, flows = app.flows.len(), "worker started");
    serve(NAME, listener, router, readiness, shutdown).await?;
    Ok(())
}
