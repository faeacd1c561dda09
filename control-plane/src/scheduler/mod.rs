//! Where workers run: a `Scheduler` starts, watches and stops them.
//!
//! `local` runs each worker as a child process on this machine, each AZ a
//! label with its own loopback address range. A Kubernetes scheduler (one
//! Deployment per app version, zone topology spread) fits the same trait.

pub mod local;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// What a scheduler needs to start one worker.
#[derive(Debug, Clone)]
pub struct WorkerSpec {
    /// The app.
    pub app: String,
    /// The app instance's id at the services (see `common::app::app_id`).
    pub app_id: String,
    /// The app version.
    pub version: u64,
    /// The worker's index n within the app.
    pub index: u32,
    /// The availability zone to run in.
    pub az: String,
    /// The manifest's text, handed to the worker as it starts (never kept
    /// on disk in plaintext).
    pub manifest: Arc<str>,
    /// Worker size in vCores.
    pub size: f64,
    /// Extra environment for the worker (service URLs, its app token).
    pub env: Vec<(String, String)>,
}

/// A worker the scheduler started (or adopted after a restart).
#[derive(Debug)]
pub struct Running {
    /// Where it serves the app (the address the load balancer routes to).
    pub address: SocketAddr,
    /// Where it serves `/healthz`, `/readyz` and `/metrics`: never routed.
    pub ops_address: SocketAddr,
    /// Its process id.
    pub pid: u32,
    /// Who the process is beyond its pid (on this machine: the boot and the
    /// process's start time), so that a restarted control plane never takes
    /// another process that reused the pid for its worker.
    pub identity: Option<String>,
    /// The child handle, when this process started it.
    pub child: Option<tokio::process::Child>,
}

/// Why a worker could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// The AZ is unknown to this scheduler.
    #[error("unknown availability zone {0:?}")]
    UnknownAz(String),
    /// The process could not be started.
    #[error("cannot start worker {id}: {source}")]
    Spawn {
        /// `{app}-{n}`.
        id: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// Starts, watches and stops workers.
pub trait Scheduler: Send + Sync {
    /// Starts a worker.
    fn start(&self, spec: &WorkerSpec) -> Result<Running, SchedulerError>;
    /// Whether the worker is still running.
    fn alive(&self, worker: &mut Running) -> bool;
    /// Takes back a worker a previous control plane started, recorded as
    /// `pid` with `identity` and named `worker_id`: `None` when that
    /// process is gone, or the pid now belongs to another process.
    fn reclaim(
        &self,
        pid: u32,
        identity: Option<&str>,
        worker_id: &str,
        address: SocketAddr,
        ops_address: SocketAddr,
    ) -> Option<Running>;
    /// Kills the worker at once (a crash, or its AZ failing).
    fn kill(&self, worker: &mut Running);
    /// Asks the worker to drain and stop; kills it after `grace`.
    fn stop(&self, worker: Running, grace: Duration) -> tokio::task::JoinHandle<()>;
    /// The worker's log, when the scheduler keeps one (its last lines help explain a failure).
    fn log_tail(&self, spec: &WorkerSpec, lines: usize) -> Option<String>;
}
