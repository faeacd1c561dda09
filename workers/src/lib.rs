//! The worker runtime: runs one instance of one app's flows.
//!
//! A worker loads the app's manifest (refusing a bad one before anything
//! starts), compiles its expressions once, and serves its sources: HTTP routes
//! on its listener and consumers of its queues. It is stateless: what must
//! outlive it belongs in the queue service or the object store.
#![forbid(unsafe_code)]

pub mod egress;
pub mod engine;
pub mod error;
pub mod event;
pub mod expr;
pub mod manifest;
pub mod metrics;
pub mod primary;
pub mod queues;
pub mod size;
pub mod source;
pub mod store;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::config::ServiceConfig;
use common::http::{Readiness, ops_router, serve};
use common::secrets::Secret;
use common::shutdown::Shutdown;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

use crate::engine::Engine;
use crate::expr::Evaluator;
use crate::manifest::App;
use crate::metrics::Metrics;
use crate::queues::Queues;
use crate::size::WorkerSize;
use crate::store::Stores;

/// Calls `call` until it succeeds, is refused (a 4xx: retrying will not help)
/// or `give_up` has passed, backing off from 50 ms to 1 s: how a starting
/// worker waits for the services it needs.
pub(crate) async fn until_answered<T, E, Fut>(
    what: &str,
    give_up: Duration,
    status: impl Fn(&E) -> Option<u16>,
    mut call: impl FnMut() -> Fut,
) -> Result<T, E>
where
    Fut: std::future::Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let deadline = tokio::time::Instant::now() + give_up;
    let mut backoff =
        common::backoff::Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
    loop {
        match call().await {
            Ok(v) => return Ok(v),
            Err(e) if status(&e).is_some_and(|s| s < 500) => return Err(e),
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "{what} not reachable yet; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

/// The component's name in logs and metrics.
pub const NAME: &str = "worker";

/// A worker's own settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// The app manifest (YAML) this worker runs (`FABRIC_MANIFEST`); `-`
    /// reads it from standard input, as the local scheduler hands it over
    /// (so no manifest is kept on disk in plaintext).
    pub manifest: PathBuf,
    /// Where `/healthz`, `/readyz` and `/metrics` listen (`FABRIC_OPS_LISTEN`),
    /// apart from the app's own routes so that the load balancer never
    /// routes to them and an app may own those paths; unset, they share the
    /// app's listener.
    pub ops_listen: Option<std::net::SocketAddr>,
    /// The app's name, when not the manifest's own (`FABRIC_APP`).
    pub app: Option<String>,
    /// The app instance's id at the queue and object store services, which
    /// its token opens (`FABRIC_APP_ID`); the app's name when unset.
    pub app_id: Option<String>,
    /// The worker size in vCores: 0.1, 0.2, 1, 2, 4, 8 or 16 (`FABRIC_SIZE`; default 1).
    pub size: WorkerSize,
    /// Names this worker in logs, schedule events and the primary lease
    /// (`FABRIC_WORKER_ID`; default the app's name and the process id).
    pub worker_id: Option<String>,
    /// Use queue-svc for the app's queues instead of this worker's memory
    /// (`FABRIC_PERSISTENT_QUEUES`).
    pub persistent_queues: bool,
    /// Seal persistent queue messages at rest (`FABRIC_ENCRYPT_QUEUES`; on by default).
    pub encrypt_queues: bool,
    /// queue-svc's base URL (`FABRIC_QUEUE_URL`), needed with persistent queues.
    pub queue_url: Option<String>,
    /// objectstore-svc's base URL (`FABRIC_OBJECTSTORE_URL`), needed by apps
    /// with store processors or schedules.
    pub objectstore_url: Option<String>,
    /// The app's token for both services (`FABRIC_APP_TOKEN`).
    pub app_token: Option<Secret>,
    /// The app's properties as set for it, secure ones among them
    /// (`FABRIC_PROPERTIES`, see `common::app::encode_properties`): over the
    /// manifest's own, in `$props`.
    pub properties: Option<Secret>,
    /// TTL of the primary lease: a dead primary's schedules move to another
    /// worker within it (`FABRIC_PRIMARY_TTL`, 1s to 5m).
    #[serde(with = "humantime_serde")]
    pub primary_ttl: Duration,
    /// How long a leased persistent message stays locked without a heartbeat:
    /// how soon a killed worker's messages go to another (`FABRIC_LEASE_LOCK`, 1s to 12h).
    #[serde(with = "humantime_serde")]
    pub lease_lock: Duration,
    /// Addresses flows' `http-request`s may reach beyond the public internet
    /// (`FABRIC_EGRESS_ALLOW`): CIDR ranges or `host:port` (the load
    /// balancer's data port, so apps call apps). See [`egress`].
    pub egress_allow: Vec<String>,
    /// The fabric's own service addresses (`host:port`), never reached by a
    /// flow whatever `egress_allow` says (`FABRIC_EGRESS_DENY`).
    pub egress_deny: Vec<String>,
    /// How long to wait for queue-svc at start before giving up (`FABRIC_BACKING_WAIT`).
    #[serde(with = "humantime_serde")]
    pub backing_wait: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            manifest: PathBuf::new(),
            ops_listen: None,
            app: None,
            app_id: None,
            size: WorkerSize::default(),
            worker_id: None,
            persistent_queues: false,
            encrypt_queues: true,
            queue_url: None,
            objectstore_url: None,
            app_token: None,
            properties: None,
            primary_ttl: Duration::from_secs(10),
            lease_lock: queues::DEFAULT_LOCK,
            egress_allow: Vec::new(),
            egress_deny: Vec::new(),
            backing_wait: Duration::from_secs(20),
        }
    }
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
    /// objectstore-svc refused or did not answer at start.
    #[error("objectstore-svc: {0}")]
    Store(#[from] objectstore_svc::client::ClientError),
    /// queue-svc refused or did not answer while the app's queues were declared.
    #[error("queue-svc: {0}")]
    Queues(#[from] queue_svc::client::ClientError),
    /// Serving failed.
    #[error("serving: {0}")]
    Io(#[from] std::io::Error),
}

impl Settings {
    /// Reads and checks the manifest.
    pub fn load_app(&self) -> Result<App, StartError> {
        let path = self.manifest.display().to_string();
        let read = if path == "-" {
            manifest_from_stdin()
        } else {
            std::fs::read_to_string(&self.manifest)
        };
        let text = read.map_err(|source| StartError::Read {
            path: path.clone(),
            source,
        })?;
        let mut app =
            manifest::load(&text).map_err(|source| StartError::Manifest { path, source })?;
        if let Some(set) = &self.properties {
            let set = common::app::decode_properties(set.expose()).map_err(StartError::Setting)?;
            if let serde_json::Value::Object(props) = &mut app.properties {
                props.extend(
                    set.into_iter()
                        .map(|(k, v)| (k, serde_json::Value::String(v))),
                );
            }
        }
        if let Some(name) = &self.app {
            common::app::validate_app_name(name).map_err(|e| StartError::Setting(e.to_string()))?;
        }
        if let Some(id) = &self.app_id {
            common::app::validate_app_id(id).map_err(|e| StartError::Setting(e.to_string()))?;
        }
        Ok(app)
    }

    fn token(&self) -> Result<&str, StartError> {
        self.app_token.as_ref().map(Secret::expose).ok_or_else(|| {
            StartError::Setting("FABRIC_APP_TOKEN is needed to reach the fabric's services".into())
        })
    }

    /// The object store client, when the app needs one.
    fn stores(&self, app: &App, name: &str) -> Result<Option<Stores>, StartError> {
        if !app.uses_store() {
            return Ok(None);
        }
        let url = self.objectstore_url.as_deref().ok_or_else(|| {
            StartError::Setting(
                "the app uses the object store (a store processor or a schedule): \
                 set FABRIC_OBJECTSTORE_URL and FABRIC_APP_TOKEN"
                    .into(),
            )
        })?;
        if !(Duration::from_secs(1)..=Duration::from_secs(300)).contains(&self.primary_ttl) {
            return Err(StartError::Setting("primary_ttl must be 1s to 5m".into()));
        }
        let client = objectstore_svc::client::Client::new(url, name, self.token()?)
            .map_err(|e| StartError::Setting(format!("objectstore_url: {e}")))?;
        Ok(Some(Stores::new(client)))
    }

    /// The app's queues: in queue-svc (declared there first) or in memory.
    async fn queues(&self, app: &App, name: &str, capacity: usize) -> Result<Queues, StartError> {
        let consumed: Vec<(String, u32)> =
            app.queues().map(|(q, max)| (q.to_string(), max)).collect();
        if !self.persistent_queues {
            return Ok(Queues::transient(
                consumed.iter().map(|(q, _)| q.as_str()),
                capacity,
            ));
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(12 * 3600)).contains(&self.lease_lock) {
            return Err(StartError::Setting("lease_lock must be 1s to 12h".into()));
        }
        let url = self
            .queue_url
            .as_deref()
            .ok_or_else(|| StartError::Setting("persistent queues need FABRIC_QUEUE_URL".into()))?;
        let client = queue_svc::client::Client::new(url, name, self.token()?);
        let queues = Queues::persistent(
            client,
            &consumed,
            self.encrypt_queues,
            self.backing_wait,
            self.lease_lock,
        )
        .await?;
        Ok(queues)
    }
}

/// The manifest on standard input, read once (the process reads its
/// configuration twice: to size its runtime, then to run).
fn manifest_from_stdin() -> std::io::Result<String> {
    static TEXT: std::sync::OnceLock<Result<String, String>> = std::sync::OnceLock::new();
    let text = TEXT.get_or_init(|| {
        let mut text = String::new();
        std::io::Read::read_to_string(
            &mut std::io::Read::take(std::io::stdin(), manifest::MAX_MANIFEST_BYTES as u64 + 1),
            &mut text,
        )
        .map(|_| text)
        .map_err(|e| e.to_string())
    });
    text.clone().map_err(std::io::Error::other)
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
    let settings = &config.settings;
    let worker_id = settings
        .worker_id
        .clone()
        .unwrap_or_else(|| format!("{name}-{}", std::process::id()));
    let readiness = Readiness::new("starting flows");
    let metrics = Metrics::new();
    // The services know the app by its instance's id, which its token opens.
    let app_id = settings.app_id.clone().unwrap_or_else(|| name.clone());
    let stores = settings
        .stores(&app, &app_id)?
        .map(|s| s.stopping_on(shutdown.clone()));
    if let Some(stores) = &stores {
        stores.reachable(settings.backing_wait).await?;
    }
    let queues = settings.queues(&app, &app_id, size.concurrency * 8).await?;
    let expr = Evaluator::start(expr::BUDGET, size.runtime_threads.max(2), &app.properties)?;
    let policy = egress::Policy::new(&settings.egress_allow, &settings.egress_deny)
        .map_err(|e| StartError::Setting(e.to_string()))?;
    let engine = Arc::new(Engine::new(
        app.clone(),
        queues,
        stores.clone(),
        metrics.clone(),
        expr,
        egress::Client::new(policy, size.max_payload()),
    ));
    source::queue::start(&engine, &shutdown);
    if let Some(stores) = &stores
        && app
            .flows
            .iter()
            .any(|f| matches!(f.source, Some(manifest::Source::Schedule(_))))
    {
        let primary = primary::start(
            stores.client().clone(),
            worker_id.clone(),
            settings.primary_ttl,
            &shutdown,
        );
        source::schedule::start(&engine, &primary, &worker_id, &shutdown);
    }
    let limits = source::http::Limits::of(&size);
    let ops = ops_router(readiness.clone(), metrics.registry());
    let router = source::http::router(engine, limits);
    let (router, ops) = match settings.ops_listen {
        Some(addr) => (router, Some((TcpListener::bind(addr).await?, ops))),
        None => {
            if let Some(p) = app.http_paths().find(|p| manifest::OPS_PATHS.contains(p)) {
                return Err(StartError::Setting(format!(
                    "the app answers {p} itself, which is also the worker's own endpoint: set ops_listen (FABRIC_OPS_LISTEN)"
                )));
            }
            (router.merge(ops), None)
        }
    };
    if let Some((listener, ops)) = ops {
        let (readiness, sd) = (readiness.clone(), shutdown.clone());
        shutdown.spawn("worker-ops", async move {
            serve("worker-ops", listener, ops, readiness, sd).await
        });
    }
    readiness.set_ready();
    tracing::info!(
        app = %name,
        worker = %worker_id,
        size = %size,
        flows = app.flows.len(),
        persistent_queues = settings.persistent_queues,
        "worker started"
    );
    serve(NAME, listener, router, readiness, shutdown).await?;
    Ok(())
}
