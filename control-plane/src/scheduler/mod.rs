//! Where workers run: a `Scheduler` starts, watches and stops them.
//!
//! `local` runs each worker as a child process on this machine, each AZ a
//! label with its own loopback address range. The trait speaks of workers'
//! handles and addresses, never of processes, so a scheduler whose workers
//! are a cluster's Pods fits it as well.

pub mod kubernetes;
pub mod local;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

/// What a scheduler needs to start one worker.
#[derive(Debug, Clone)]
pub struct WorkerSpec {
    /// The app.
    pub app: String,
    /// The app instance's id at the services (see `common::app::app_id`).
    pub app_id: String,
    /// The tenant that owns the app.
    pub tenant: String,
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

impl WorkerSpec {
    /// Worker `index` of `record` at `version` in `az`, started with `env`.
    pub fn of(
        record: &crate::model::AppRecord,
        version: u64,
        index: u32,
        az: &str,
        env: Vec<(String, String)>,
    ) -> Self {
        WorkerSpec {
            app: record.name.clone(),
            app_id: record.app_id(),
            tenant: record.tenant.clone(),
            version,
            index,
            az: az.to_string(),
            manifest: record.manifest.as_str().into(),
            size: record.size,
            env,
        }
    }

    /// The name the worker is started as, `{app}-{n}-v{version}`: one
    /// version's worker n, never another's.
    pub fn name(&self) -> String {
        format!("{}-{}-v{}", self.app, self.index, self.version)
    }
}

/// A worker as its scheduler knows it: plain data the supervisor keeps and
/// the registry records, so that a restarted control plane can adopt it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Worker {
    /// The scheduler's own name for it, unique among the workers it runs
    /// (a process id on this machine; a Pod's name on a cluster).
    pub handle: String,
    /// Where it serves the app (the address the load balancer routes to).
    pub address: SocketAddr,
    /// Where it serves `/healthz`, `/readyz` and `/metrics`: never routed.
    pub ops_address: SocketAddr,
    /// Who it is beyond its handle (on this machine: the boot and the
    /// process's start time; on a cluster: the Pod's uid), so that a
    /// restarted control plane never takes something that reused the handle
    /// for its worker.
    pub identity: Option<String>,
    /// Its process id, when it is a process on this machine (`fabric
    /// workers` shows it).
    pub pid: Option<u32>,
}

/// Why a worker could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// The AZ is unknown to this scheduler.
    #[error("unknown availability zone {0:?}")]
    UnknownAz(String),
    /// The cluster refused or failed a call a start needed.
    #[error("cannot start worker {id}: {reason}")]
    Cluster {
        /// `{app}-{n}`.
        id: String,
        /// What was asked, and the answer.
        reason: String,
    },
    /// The worker could not be started.
    #[error("cannot start worker {id}: {source}")]
    Spawn {
        /// `{app}-{n}`.
        id: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// Starts, watches and stops workers. Every call may wait (on a cluster's
/// API), so the supervisor makes none while it holds its state.
pub trait Scheduler: Send + Sync {
    /// Starts a worker; it answers at the returned addresses once ready.
    fn start<'a>(&'a self, spec: &'a WorkerSpec) -> BoxFuture<'a, Result<Worker, SchedulerError>>;
    /// Whether the worker still runs.
    fn alive<'a>(&'a self, worker: &'a Worker) -> BoxFuture<'a, bool>;
    /// Takes back a worker a previous control plane started and recorded
    /// as `recorded`, started as `name` (`{app}-{n}-v{version}`): `None`
    /// when it is gone, or its handle now names something else.
    fn adopt<'a>(&'a self, recorded: &'a Worker, name: &'a str) -> BoxFuture<'a, Option<Worker>>;
    /// Kills the worker at once (a crash, or its AZ failing).
    fn kill<'a>(&'a self, worker: &'a Worker) -> BoxFuture<'a, ()>;
    /// Asks the worker to drain and stop; kills it after `grace`.
    fn stop<'a>(&'a self, worker: &'a Worker, grace: Duration) -> BoxFuture<'a, ()>;
    /// The last `lines` of the worker's log, when the scheduler keeps one
    /// (they help explain a failure).
    fn logs<'a>(&'a self, spec: &'a WorkerSpec, lines: usize) -> BoxFuture<'a, Option<String>>;
}
