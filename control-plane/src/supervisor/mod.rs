//! The supervisor: places workers across AZs, watches them, heals them, and
//! runs side-by-side deploys. Every change becomes an event and, where the
//! set of ready workers changes, a new route table.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::backoff::Backoff;
use common::routes::{AppRoutes, CanaryRoutes, RouteTable, WorkerRoute, WorkerState as RouteState};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::events::Events;
use crate::model::{AppRecord, AzStatus, PurgeRecord, WorkerInfo, WorkerState};
use crate::registry::{Placement, Registry, RegistryError};
use crate::scheduler::{Scheduler, Worker, WorkerSpec};

mod deploy;
mod health;
mod recover;
mod routes;
mod zones;

use zones::place;
pub use zones::placements;

/// How often workers are checked.
const TICK: Duration = Duration::from_millis(100);
/// Consecutive failed probes before a ready worker is replaced.
const PROBE_FAILURES: u32 = 3;
/// Restart back-off: from this, doubling, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// A worker slot's restart back-off, from its first delay.
fn restart_backoff() -> Backoff {
    Backoff::new(FIRST_BACKOFF, MAX_BACKOFF)
}
/// Restarts of a new version's workers during a deploy before it is called a crash loop.
const DEPLOY_CRASHES: u32 = 3;

/// Settings the supervisor runs with.
#[derive(Debug, Clone)]
pub struct SupervisorSettings {
    /// Where manifests are written for workers.
    pub data_dir: PathBuf,
    /// Availability zones, in order.
    pub azs: Vec<String>,
    /// The domain apps answer under.
    pub domain: String,
    /// The load balancer's port, for URLs.
    pub proxy_port: u16,
    /// How long a new worker may take to turn ready.
    pub ready_timeout: Duration,
    /// How long a draining worker may take to finish.
    pub drain_grace: Duration,
}

/// Why a deploy, scale or delete failed.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The new version never turned ready; the old one keeps serving.
    #[error("{0}")]
    NotReady(String),
    /// The registry failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// A file could not be written.
    #[error("writing {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// Gives each app's workers their environment (service URLs, app token).
pub type WorkerEnv = Arc<dyn Fn(&AppRecord) -> Vec<(String, String)> + Send + Sync>;

struct Slot {
    index: u32,
    version: u64,
    az: String,
    /// The worker serving the slot; `None` while down, or while its start
    /// is under way.
    running: Option<Worker>,
    state: WorkerState,
    restarts: u32,
    probe_failures: u32,
    started: Instant,
    next_restart: Instant,
    backoff: Backoff,
    /// Counts the slot's starts: a start that lands after the slot moved on
    /// is not taken.
    attempt: u64,
}

struct AppRun {
    record: AppRecord,
    /// The record of a version being deployed beside the serving one: its
    /// workers restart with their own version's settings, not the old one's.
    pending: Option<AppRecord>,
    slots: Vec<Slot>,
    /// While `pending`'s version serves as a canary: the percentage of the
    /// app's requests it takes.
    canary: Option<u8>,
}

struct State {
    apps: BTreeMap<String, AppRun>,
    azs: Vec<AzStatus>,
}

struct Inner {
    state: Mutex<State>,
    scheduler: Arc<dyn Scheduler>,
    registry: Registry,
    events: Events,
    settings: SupervisorSettings,
    http: reqwest::Client,
    routes: watch::Sender<RouteTable>,
    /// The route table version each load balancer pushed to has applied.
    landed: watch::Sender<Vec<u64>>,
    worker_env: WorkerEnv,
    /// Worker starts and stops under way: a shutdown waits for them.
    tasks: tokio_util::task::TaskTracker,
}

/// The longest a stop waits for the load balancers to apply the table that
/// no longer sends the stopping workers new requests.
const ROUTE_SETTLE: Duration = Duration::from_secs(2);

/// The supervisor. Cheap to clone.
#[derive(Clone)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Supervisor {
    /// A supervisor over `scheduler`, recording in `registry`; `worker_env`
    /// gives each app's workers their environment (service URLs, app token).
    pub fn new(
        scheduler: Arc<dyn Scheduler>,
        registry: Registry,
        events: Events,
        settings: SupervisorSettings,
        worker_env: WorkerEnv,
    ) -> Self {
        let azs = settings
            .azs
            .iter()
            .map(|a| AzStatus {
                name: a.clone(),
                up: true,
            })
            .collect();
        Supervisor {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    apps: BTreeMap::new(),
                    azs,
                }),
                scheduler,
                registry,
                events,
                settings,
                http: reqwest::Client::builder()
                    .timeout(Duration::from_millis(500))
                    .build()
                    .unwrap_or_default(),
                routes: watch::channel(RouteTable::default()).0,
                landed: watch::channel(Vec::new()).0,
                worker_env,
                tasks: tokio_util::task::TaskTracker::new(),
            }),
        }
    }

    /// The event log.
    pub fn events(&self) -> &Events {
        &self.inner.events
    }

    /// The app's URL through the load balancer.
    pub fn url(&self, app: &str) -> String {
        let s = &self.inner.settings;
        format!("http://{app}.{}:{}", s.domain, s.proxy_port)
    }

    fn spec(&self, record: &AppRecord, version: u64, index: u32, az: &str) -> WorkerSpec {
        WorkerSpec::of(record, version, index, az, (self.inner.worker_env)(record))
    }

    /// Checks every worker until `shutdown`, then stops them all.
    pub async fn run(
        &self,
        shutdown: common::shutdown::Shutdown,
    ) -> Result<(), std::convert::Infallible> {
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.triggered() => break,
                _ = ticker.tick() => self.tick().await,
            }
        }
        self.stop_all().await;
        Ok(())
    }

    async fn stop_all(&self) {
        let all: Vec<(String, Vec<Slot>)> = {
            let mut st = lock(&self.inner.state);
            std::mem::take(&mut st.apps)
                .into_iter()
                .map(|(n, r)| (n, r.slots))
                .collect()
        };
        for (name, slots) in all {
            self.stop_slots(&name, slots).await;
        }
        // Starts that land now find no slot and stop their worker.
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }

    /// The zones and whether each is up.
    pub fn azs(&self) -> Vec<AzStatus> {
        lock(&self.inner.state).azs.clone()
    }

    /// The app's record and ready workers of its serving version.
    pub fn app(&self, name: &str) -> Option<(AppRecord, u32)> {
        let st = lock(&self.inner.state);
        let run = st.apps.get(name)?;
        let ready = run
            .slots
            .iter()
            .filter(|s| s.version == run.record.version && s.state == WorkerState::Ready)
            .count() as u32;
        self.inner.registry.app(name).map(|r| (r, ready))
    }

    /// The ready workers of `name`'s running version: each one's handle
    /// (what names it across its restarts: a new process is a new handle)
    /// and where it serves `/metrics`.
    pub fn ready_ops(&self, name: &str) -> Vec<(String, std::net::SocketAddr)> {
        let serving = self.app(name).map(|(r, _)| r.version);
        self.ready_ops_by_version(name)
            .into_iter()
            .filter(|(v, _, _)| Some(*v) == serving)
            .map(|(_, handle, ops)| (handle, ops))
            .collect()
    }

    /// The ready workers of every version of `name` (a canary's too): each
    /// one's version, handle and `/metrics` address.
    pub fn ready_ops_by_version(&self, name: &str) -> Vec<(u64, String, std::net::SocketAddr)> {
        let st = lock(&self.inner.state);
        let Some(run) = st.apps.get(name) else {
            return Vec::new();
        };
        run.slots
            .iter()
            .filter(|s| s.state == WorkerState::Ready)
            .filter_map(|s| Some((s.version, s.running.as_ref()?)))
            .map(|(v, w)| (v, w.handle.clone(), w.ops_address))
            .collect()
    }

    /// The apps running a canary: each one's name, serving version and
    /// canary version.
    pub fn canaries(&self) -> Vec<(String, u64, u64)> {
        let st = lock(&self.inner.state);
        st.apps
            .iter()
            .filter(|(_, r)| r.canary.is_some())
            .filter_map(|(n, r)| Some((n.clone(), r.record.version, r.pending.as_ref()?.version)))
            .collect()
    }

    /// Every worker of `name`.
    pub fn workers(&self, name: &str) -> Vec<WorkerInfo> {
        let st = lock(&self.inner.state);
        let s = &self.inner.settings;
        st.apps
            .get(name)
            .map(|run| {
                run.slots
                    .iter()
                    .map(|slot| WorkerInfo {
                        id: format!("{name}-{}", slot.index),
                        index: slot.index,
                        version: slot.version,
                        az: slot.az.clone(),
                        state: slot.state,
                        address: slot
                            .running
                            .as_ref()
                            .map(|r| r.address.to_string())
                            .unwrap_or_default(),
                        pid: slot.running.as_ref().and_then(|r| r.pid),
                        restarts: slot.restarts,
                        url: format!("http://{name}-{}.{}:{}", slot.index, s.domain, s.proxy_port),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}
