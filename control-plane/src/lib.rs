//! The runtime manager: deploys apps, places workers across AZs, heals them,
//! and publishes the routes the load balancer follows.
//!
//! Its API (see [`api`]) is what the `fabric` command line talks to; its
//! registry survives restarts; its [`supervisor`] runs workers through a
//! [`scheduler::Scheduler`] (child processes on this machine for now).
#![forbid(unsafe_code)]

pub mod access;
mod api;
pub mod autoscale;
pub mod canary;
pub mod client;
pub mod console;
pub mod events;
pub mod logs;
pub mod model;
mod outbound;
pub mod purge;
pub mod quota;
pub mod registry;
pub mod scheduler;
pub mod supervisor;
pub mod webhook;
mod worker_env;
mod worker_metrics;

pub use worker_env::render_kubernetes;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use common::config::ServiceConfig;
use common::http::{Readiness, ops_router, registry as metrics_registry, serve};
use common::shutdown::Shutdown;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

pub use api::ADMIN;

/// How often worker logs past their retention are removed.
const LOG_PRUNE_EVERY: Duration = Duration::from_secs(600);

/// The component's name in logs and metrics.
pub const NAME: &str = "control-plane";
/// The admin API key's file name in the data directory.
pub const ADMIN_KEY_FILE: &str = "admin.key";
/// The embedded registry's file name in the data directory.
pub const REGISTRY_FILE: &str = "registry.redb";

/// The control plane's own settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Availability zones, in order (`FABRIC_AZS=a,b,c`).
    pub azs: Vec<String>,
    /// The domain apps answer under (`{app}.{domain}`).
    pub domain: String,
    /// The load balancer's port, for the URLs the API reports.
    pub proxy_port: u16,
    /// The binary workers run as (`<binary> serve worker`); this one by default.
    pub worker_binary: Option<PathBuf>,
    /// How long a new worker may take to turn ready before its deploy is rolled back.
    #[serde(with = "humantime_serde")]
    pub ready_timeout: Duration,
    /// How long a draining worker may take to finish its requests.
    #[serde(with = "humantime_serde")]
    pub drain_grace: Duration,
    /// Where to push every new route table (`PUT`): a load balancer's admin
    /// `/routes` URL. Load balancers may instead long-poll `GET /v1/routes`.
    pub routes_push: Vec<String>,
    /// queue-svc's base URL, handed to workers of apps with persistent queues.
    pub queue_url: Option<String>,
    /// objectstore-svc's base URL, handed to every worker.
    pub objectstore_url: Option<String>,
    /// Every event is also `POST`ed here as JSON (retried with back-off).
    pub events_webhook: Option<String>,
    /// Only these tenants' apps' events (and fabric-wide ones, such as an
    /// AZ down) go to the webhook; every event when empty. A list, or one
    /// comma-separated string (`FABRIC_EVENTS_WEBHOOK_TENANTS=acme,globex`).
    #[serde(deserialize_with = "webhook::comma_list")]
    pub events_webhook_tenants: Vec<String>,
    /// The key each webhook request is signed with (HMAC-SHA256 over its
    /// timestamp and body, in `X-Fabric-Signature`); never logged. Or:
    pub events_webhook_secret: Option<common::secrets::Secret>,
    /// A file holding that key (trimmed).
    pub events_webhook_secret_file: Option<PathBuf>,
    /// How long a worker's app token is valid; a worker started later gets a fresh one.
    #[serde(with = "humantime_serde")]
    pub worker_token_ttl: Duration,
    /// The DynamoDB table the registry is kept in (the stack's
    /// `RegistryTable`; created when missing if `create_resources` is on);
    /// unset, it is the file `registry.redb` in the data directory.
    pub registry_table: Option<String>,
    /// What flows' `http-request`s may reach beyond the public internet:
    /// CIDR ranges or `host:port` addresses (`fabric up` adds its load
    /// balancer's data port, so that apps call apps). The fabric's own
    /// services (this API, queue-svc, objectstore-svc, the load balancers'
    /// admin ports) stay out of reach whatever this allows.
    pub egress_allow: Vec<String>,
    /// What each tenant may run at once (the admin tenant is not bounded).
    pub tenant_quota: model::Quota,
    /// Requests per second each API key may make (the admin key is not
    /// bounded); bursts of up to ten seconds' worth pass.
    pub api_rate_per_key: u32,
    /// Where workers run: `local` (child processes of this one, each AZ a
    /// loopback range) or `kubernetes` (Pods, each AZ a zone of the cluster).
    pub scheduler: SchedulerKind,
    /// How long and how much of each app's worker logs are kept
    /// (`log_retention.age`, `log_retention.bytes`).
    pub log_retention: logs::Retention,
    /// The Kubernetes scheduler's settings (with `scheduler = "kubernetes"`).
    pub kubernetes: scheduler::kubernetes::KubernetesSettings,
    /// The web console's settings (sessions, cookies).
    pub console: console::ConsoleSettings,
    /// How apps with a scaling policy are measured and scaled.
    pub autoscale: autoscale::AutoscaleSettings,
    /// How canaries are judged (and aborted when they fail more).
    pub canary: canary::CanarySettings,
}

/// Which scheduler runs the workers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SchedulerKind {
    /// Child processes on this machine.
    #[default]
    Local,
    /// Pods on a Kubernetes cluster (in-cluster credentials or `KUBECONFIG`).
    Kubernetes,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            azs: vec!["a".into(), "b".into(), "c".into()],
            domain: "fabric.localhost".into(),
            proxy_port: 8080,
            worker_binary: None,
            ready_timeout: Duration::from_secs(30),
            drain_grace: Duration::from_secs(10),
            routes_push: Vec::new(),
            queue_url: None,
            objectstore_url: None,
            events_webhook: None,
            events_webhook_tenants: Vec::new(),
            events_webhook_secret: None,
            events_webhook_secret_file: None,
            worker_token_ttl: Duration::from_secs(30 * 24 * 3600),
            registry_table: None,
            egress_allow: Vec::new(),
            tenant_quota: model::Quota::default(),
            api_rate_per_key: 20,
            scheduler: SchedulerKind::Local,
            log_retention: logs::Retention::default(),
            kubernetes: Default::default(),
            console: Default::default(),
            autoscale: Default::default(),
            canary: Default::default(),
        }
    }
}

/// The control plane's configuration.
pub type Config = ServiceConfig<Settings>;

/// Why the control plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A setting is invalid.
    #[error("{0}")]
    Setting(String),
    /// The master keyring could not be loaded.
    #[error(transparent)]
    Keys(#[from] common::secrets::KeyringError),
    /// The registry could not be opened.
    #[error(transparent)]
    Registry(#[from] registry::RegistryError),
    /// A file could not be read or written.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A fresh API key: `wfk_` and 32 random bytes, base64url.
pub fn new_api_key() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system's random source failed");
    format!(
        "wfk_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// Reads the admin key from the data directory, creating it (mode 0600) on first start.
pub fn admin_key(data_dir: &std::path::Path) -> std::io::Result<String> {
    let path = data_dir.join(ADMIN_KEY_FILE);
    std::fs::create_dir_all(data_dir)?;
    let key = new_api_key();
    match common::secrets::create_secret_file(&path, format!("{key}\n").as_bytes()) {
        Ok(()) => Ok(key),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            Ok(std::fs::read_to_string(&path)?.trim().to_string())
        }
        Err(e) => Err(e),
    }
}

/// Serves the control plane on `listener` until `shutdown`, then drains and
/// stops every worker it runs.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: Shutdown,
) -> Result<(), StartError> {
    let s = &config.settings;
    if s.azs.is_empty() || s.azs.iter().any(|a| a.is_empty()) {
        return Err(StartError::Setting(
            "azs: at least one non-empty AZ name is needed".into(),
        ));
    }
    let binary = match &s.worker_binary {
        Some(b) => b.clone(),
        None => std::env::current_exe()?,
    };
    // The fabric secret: workers' tokens, read tokens for `fabric queues`,
    // and the internal tokens route pushes carry.
    let token_key =
        common::secrets::token_key(&config).map_err(|e| StartError::Setting(e.to_string()))?;
    // The master keyring: the registry's records are sealed with it.
    let keyring = common::secrets::load_keyring(&config).await?;
    let registry = open_registry(&config, keyring).await?;
    forget_plaintext_manifests(&config.data_dir);
    registry
        .add_api_key(&admin_key(&config.data_dir)?, ADMIN)
        .await?;
    let scheduler: Arc<dyn scheduler::Scheduler> = match s.scheduler {
        SchedulerKind::Local => Arc::new(scheduler::local::LocalScheduler::new(
            binary,
            s.azs.clone(),
            &config.data_dir,
        )),
        SchedulerKind::Kubernetes => {
            let client = kube::Client::try_default().await.map_err(|e| {
                StartError::Setting(format!(
                    "scheduler = \"kubernetes\": no cluster to talk to ({e}); run in a Pod with a service account, or set KUBECONFIG"
                ))
            })?;
            Arc::new(scheduler::kubernetes::KubernetesScheduler::new(
                client,
                s.kubernetes.clone(),
            ))
        }
    };
    let events = events::Events::new();
    {
        let registry = registry.clone();
        events.identify_with(Box::new(move |app| {
            registry.app(app).map(|r| (r.app_id(), r.tenant))
        }));
    }
    let supervisor = supervisor::Supervisor::new(
        scheduler,
        registry.clone(),
        events,
        supervisor::SupervisorSettings {
            data_dir: config.data_dir.clone(),
            azs: s.azs.clone(),
            domain: s.domain.clone(),
            proxy_port: s.proxy_port,
            ready_timeout: s.ready_timeout,
            drain_grace: s.drain_grace,
        },
        worker_env::worker_env(&config, token_key.clone(), listener.local_addr()?),
    );
    if let Some(hook) = webhook::Webhook::from_settings(s).map_err(StartError::Setting)? {
        let (rx, sd) = (supervisor.events().subscribe(), shutdown.clone());
        shutdown.spawn("events-webhook", async move {
            outbound::send_events(rx, hook, sd).await;
            Ok::<_, std::convert::Infallible>(())
        });
    }
    let stale = supervisor.recover().await;
    let purger = purge::Purger::new(
        registry.clone(),
        token_key.clone(),
        s.queue_url.clone(),
        s.objectstore_url.clone(),
        config.data_dir.join("workers"),
    );
    shutdown.spawn("purger", purger.clone().run(shutdown.clone()));
    for target in &s.routes_push {
        let (sup, target, sd) = (supervisor.clone(), target.clone(), shutdown.clone());
        let key = token_key.clone();
        shutdown.spawn("routes-push", async move {
            outbound::push_routes(sup, target, key, sd).await;
            Ok::<_, std::convert::Infallible>(())
        });
    }
    let supervising = {
        let sup = supervisor.clone();
        shutdown.spawn("supervisor", {
            let sd = shutdown.clone();
            async move { sup.run(sd).await }
        })
    };
    let readiness = Readiness::new("starting");
    let api = api::Api {
        supervisor,
        registry: registry.clone(),
        deploying: Arc::default(),
        queues: config
            .settings
            .queue_url
            .clone()
            .map(|url| (url, token_key)),
        has_store: config.settings.objectstore_url.is_some(),
        purger,
        names: Arc::default(),
        quota: config.settings.tenant_quota,
        claims: Default::default(),
        checking: Arc::new(tokio::sync::Semaphore::new(api::MANIFEST_CHECKS)),
        limiter: Arc::new(api::RateLimiter::new(config.settings.api_rate_per_key)),
        last_used: Arc::default(),
        logs: config.data_dir.join("workers"),
    };
    {
        let (dir, retention, sd) = (
            config.data_dir.join("workers"),
            config.settings.log_retention,
            shutdown.clone(),
        );
        shutdown.spawn("log-retention", async move {
            loop {
                let dir = dir.clone();
                let _ = tokio::task::spawn_blocking(move || logs::prune(&dir, retention)).await;
                tokio::select! {
                    () = sd.triggered() => break,
                    () = tokio::time::sleep(LOG_PRUNE_EVERY) => {}
                }
            }
            Ok::<_, std::convert::Infallible>(())
        });
    }
    if !stale.is_empty() {
        let api = api.clone();
        shutdown.spawn("renew", async move {
            api.renew(stale).await;
            Ok::<_, std::convert::Infallible>(())
        });
    }
    let mut metrics = metrics_registry(NAME);
    metrics.register(
        "registry_unpersisted",
        "Changed registry records not yet persisted (above 0 for long: the registry's store is unreachable)",
        registry.unpersisted_metric(),
    );
    {
        let (api, settings, sd) = (api.clone(), config.settings.autoscale, shutdown.clone());
        shutdown.spawn("autoscaler", async move {
            autoscale::run(api, settings, sd).await;
            Ok::<_, std::convert::Infallible>(())
        });
    }
    {
        let (api, settings, sd) = (api.clone(), config.settings.canary, shutdown.clone());
        shutdown.spawn("canary-judge", async move {
            canary::run(api, settings, sd).await;
            Ok::<_, std::convert::Infallible>(())
        });
    }
    let api_routes = api::router(api.clone());
    let console =
        console::Console::start(api_routes.clone(), api, config.settings.console, &shutdown);
    let router = api_routes
        .merge(console.router())
        .merge(ops_router(readiness.clone(), Arc::new(metrics)));
    readiness.set_ready();
    serve(NAME, listener, router, readiness, shutdown).await?;
    // The workers are stopped and their placements forgotten first; then the
    // registry's last changes are persisted.
    let _ = supervising.await;
    let left = registry.close(config.shutdown_grace).await;
    if left > 0 {
        tracing::warn!(
            unpersisted = left,
            "stopping with registry changes not persisted: the registry is unreachable"
        );
    }
    Ok(())
}

/// Removes the plaintext manifests (`apps/{app}/v{n}.yaml`) an earlier
/// version kept in the data directory: a worker now reads its manifest from
/// the registry, sealed at rest, through its standard input.
fn forget_plaintext_manifests(data_dir: &std::path::Path) {
    let dir = data_dir.join("apps");
    if dir.is_dir() {
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {
                tracing::info!(dir = %dir.display(), "removed the plaintext manifests an earlier version kept")
            }
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "could not remove the plaintext manifests an earlier version kept")
            }
        }
    }
}

/// Opens the registry: the DynamoDB table `registry_table` when set, else
/// the file in the data directory. With a table, a registry file left in the
/// data directory by an earlier version (which kept it there with every
/// backend) is moved into an empty table and renamed `registry.redb.imported`.
async fn open_registry(
    config: &Config,
    keyring: common::envelope::Keyring,
) -> Result<registry::Registry, StartError> {
    use registry::{Location, Registry};
    let file = config.data_dir.join(REGISTRY_FILE);
    let Some(table) = &config.settings.registry_table else {
        return Ok(Registry::open(&Location::Embedded(file), keyring).await?);
    };
    let location = Location::DynamoDb {
        table: table.clone(),
        create: config.create_resources,
    };
    let registry = Registry::open(&location, keyring.clone()).await?;
    if file.exists() {
        let older = Registry::open(&Location::Embedded(file.clone()), keyring).await?;
        let imported = registry.import(&older).await;
        older.close(Duration::from_secs(5)).await;
        if imported? {
            let moved = file.with_extension("redb.imported");
            std::fs::rename(&file, &moved)?;
            tracing::info!(file = %moved.display(), table, "moved the registry file's records into the registry table");
        } else {
            tracing::warn!(file = %file.display(), table, "the registry table holds apps already, so the registry file in the data directory is not read");
        }
    }
    Ok(registry)
}
