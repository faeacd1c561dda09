//! The supervisor: places workers across AZs, watches them, heals them, and
//! runs side-by-side deploys. Every change becomes an event and, where the
//! set of ready workers changes, a new route table.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::routes::{AppRoutes, RouteTable, WorkerRoute, WorkerState as RouteState};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::events::Events;
use crate::model::{AppRecord, AzStatus, PurgeRecord, WorkerInfo, WorkerState};
use crate::registry::{Placement, Registry, RegistryError};
use crate::scheduler::{Running, Scheduler, WorkerSpec};

/// How often workers are checked.
const TICK: Duration = Duration::from_millis(100);
/// Consecutive failed probes before a ready worker is replaced.
const PROBE_FAILURES: u32 = 3;
/// Restart back-off: from this, doubling, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
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
    running: Option<Running>,
    state: WorkerState,
    restarts: u32,
    probe_failures: u32,
    started: Instant,
    next_restart: Instant,
    backoff: Duration,
}

struct AppRun {
    record: AppRecord,
    /// The record of a version being deployed beside the serving one: its
    /// workers restart with their own version's settings, not the old one's.
    pending: Option<AppRecord>,
    slots: Vec<Slot>,
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
            }),
        }
    }

    /// The event log.
    pub fn events(&self) -> &Events {
        &self.inner.events
    }

    /// Follows the route table.
    pub fn routes(&self) -> watch::Receiver<RouteTable> {
        self.inner.routes.subscribe()
    }

    /// Registers a load balancer the route table is pushed to; the number
    /// returned reports, through [`Supervisor::route_landed`], which table
    /// it has applied.
    pub fn route_target(&self) -> usize {
        let mut i = 0;
        self.inner.landed.send_modify(|v| {
            i = v.len();
            v.push(0);
        });
        i
    }

    /// Records that load balancer `target` applied table `version`.
    pub fn route_landed(&self, target: usize, version: u64) {
        self.inner.landed.send_modify(|v| {
            if let Some(x) = v.get_mut(target) {
                *x = (*x).max(version);
            }
        });
    }

    /// Waits, at most [`ROUTE_SETTLE`], until every load balancer has applied
    /// the current route table, so that workers about to stop are sent no new
    /// request (the deregistration delay, measured instead of guessed).
    async fn routes_settled(&self) {
        let want = self.inner.routes.borrow().version;
        let mut rx = self.inner.landed.subscribe();
        let settled = rx.wait_for(|v| v.iter().all(|x| *x >= want));
        if tokio::time::timeout(ROUTE_SETTLE, settled).await.is_err() {
            tracing::warn!(
                version = want,
                "a load balancer has not applied the route table; stopping workers anyway"
            );
        }
    }

    /// The app's URL through the load balancer.
    pub fn url(&self, app: &str) -> String {
        let s = &self.inner.settings;
        format!("http://{app}.{}:{}", s.domain, s.proxy_port)
    }

    fn spec(&self, record: &AppRecord, version: u64, index: u32, az: &str) -> WorkerSpec {
        WorkerSpec {
            app: record.name.clone(),
            app_id: record.app_id(),
            version,
            index,
            az: az.to_string(),
            manifest: record.manifest.as_str().into(),
            size: record.size,
            env: (self.inner.worker_env)(record),
        }
    }

    /// Takes back the registry's apps after a restart: adopts workers that
    /// still run and answer, starts the rest, stops leftovers of old versions.
    /// Returns the apps whose adopted workers an earlier version of the
    /// fabric started: they serve on, and are to be restarted side by side
    /// (see `Api::renew`), so they run under today's sandbox.
    pub async fn recover(&self) -> Vec<String> {
        let mut stale = Vec::new();
        // Read first: marking an app for purging forgets its placements,
        // and its workers are still to be stopped.
        let placements = self.inner.registry.placements();
        let (records, unfinished): (Vec<AppRecord>, Vec<AppRecord>) = self
            .inner
            .registry
            .apps()
            .into_iter()
            .partition(|r| r.version > 0);
        // A first deploy cut off by the crash never served: it is undone
        // like a failed one, its data purged (its workers are stopped below).
        for record in unfinished {
            let purge = PurgeRecord {
                name: record.name.clone(),
                app_id: record.app_id(),
                tenant: record.tenant.clone(),
            };
            if let Err(e) = self.inner.registry.start_purge(&purge).await {
                tracing::error!(app = %record.name, error = %e, "could not mark an unfinished first deploy for purging");
            }
        }
        let mut adopted = Vec::new();
        for p in placements {
            let current = records.iter().find(|r| r.name == p.app).map(|r| r.version);
            let worker_id = format!("{}-{}-v{}", p.app, p.index, p.version);
            let reclaimed = match (p.pid, p.address.parse()) {
                (Some(pid), Ok(address)) => self.inner.scheduler.reclaim(
                    pid,
                    p.identity.as_deref(),
                    &worker_id,
                    address,
                    p.ops_address(),
                ),
                _ => None,
            };
            // A pid that is gone, or now another process's, is forgotten, never killed.
            let Some(mut running) = reclaimed else {
                self.inner.registry.remove_placement(&p);
                continue;
            };
            if current == Some(p.version) && self.probe(&running.ops_address.to_string()).await {
                if p.from_an_earlier_fabric() && !stale.contains(&p.app) {
                    stale.push(p.app.clone());
                }
                adopted.push((p, running));
            } else {
                self.inner.scheduler.kill(&mut running);
                self.inner.registry.remove_placement(&p);
            }
        }
        let now = Instant::now();
        {
            let mut st = lock(&self.inner.state);
            for record in records {
                let mut slots = Vec::new();
                for index in 1..=record.workers {
                    let found = adopted
                        .iter()
                        .position(|(p, _)| p.app == record.name && p.index == index)
                        .map(|i| adopted.swap_remove(i));
                    let restarts = found.as_ref().map_or(0, |(p, _)| p.restarts);
                    let (az, running, state) = match found {
                        Some((p, running)) => (p.az, Some(running), WorkerState::Ready),
                        None => (place(&st.azs, &[], index), None, WorkerState::Down),
                    };
                    slots.push(Slot {
                        index,
                        version: record.version,
                        az,
                        running,
                        state,
                        restarts,
                        probe_failures: 0,
                        started: now,
                        next_restart: now,
                        backoff: FIRST_BACKOFF,
                    });
                }
                let adopted_n = slots.iter().filter(|s| s.running.is_some()).count();
                self.inner.events.emit(
                    Some(&record.name),
                    "app.recovered",
                    format!(
                        "{}: took back {adopted_n} of {} workers",
                        record.name, record.workers
                    ),
                );
                st.apps.insert(
                    record.name.clone(),
                    AppRun {
                        record,
                        pending: None,
                        slots,
                    },
                );
            }
        }
        self.publish_routes();
        stale
    }

    /// Whether any of `app`'s workers was started by an earlier version of the fabric.
    pub fn runs_an_earlier_fabrics_workers(&self, app: &str) -> bool {
        self.inner
            .registry
            .placements()
            .iter()
            .any(|p| p.app == app && p.from_an_earlier_fabric())
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

    async fn probe(&self, address: &str) -> bool {
        matches!(
            self.inner.http.get(format!("http://{address}/readyz")).send().await,
            Ok(r) if r.status().is_success()
        )
    }

    /// One round: notice exits, probe readiness, restart what is due.
    async fn tick(&self) {
        let mut to_probe = Vec::new();
        {
            let mut guard = lock(&self.inner.state);
            let st = &mut *guard;
            let now = Instant::now();
            let up: Vec<AzStatus> = st.azs.clone();
            for run in st.apps.values_mut() {
                let name = run.record.name.clone();
                let ready_timeout = self.inner.settings.ready_timeout;
                for i in 0..run.slots.len() {
                    let slot = &mut run.slots[i];
                    if let Some(r) = &mut slot.running
                        && !self.inner.scheduler.alive(r)
                    {
                        self.down(&name, slot, now, "exited");
                    }
                    if slot.state == WorkerState::Starting
                        && now.duration_since(slot.started) > ready_timeout
                    {
                        if let Some(r) = &mut slot.running {
                            self.inner.scheduler.kill(r);
                        }
                        self.down(&name, slot, now, "never turned ready");
                    }
                    if matches!(slot.state, WorkerState::Starting | WorkerState::Ready)
                        && let Some(r) = &slot.running
                    {
                        to_probe.push((
                            name.clone(),
                            slot.version,
                            slot.index,
                            r.ops_address.to_string(),
                        ));
                    }
                }
                // Restarts due, in an AZ that is up (moving out of a failed one).
                let azs_of: Vec<String> = run
                    .slots
                    .iter()
                    .filter(|s| s.state != WorkerState::Down)
                    .map(|s| s.az.clone())
                    .collect();
                for slot in run
                    .slots
                    .iter_mut()
                    .filter(|s| s.state == WorkerState::Down && now >= s.next_restart)
                {
                    let az_up = up.iter().any(|a| a.name == slot.az && a.up);
                    let az = if az_up {
                        slot.az.clone()
                    } else {
                        place(&up, &azs_of, slot.index)
                    };
                    if az != slot.az {
                        self.inner.events.emit(
                            Some(&name),
                            "worker.moved",
                            format!("{name}-{} moves from AZ {} to AZ {az}", slot.index, slot.az),
                        );
                    }
                    slot.az = az;
                    slot.restarts += 1;
                    let record = match &run.pending {
                        Some(p) if p.version == slot.version => p,
                        _ => &run.record,
                    };
                    let spec = self.spec(record, slot.version, slot.index, &slot.az);
                    self.launch(&name, slot, &spec, now);
                }
            }
        }
        let results = futures::future::join_all(to_probe.into_iter().map(
            |(app, version, index, addr)| async move {
                let ok = self.probe(&addr).await;
                (app, version, index, ok)
            },
        ))
        .await;
        let mut changed = false;
        {
            let mut st = lock(&self.inner.state);
            let now = Instant::now();
            for (app, version, index, ok) in results {
                let Some(run) = st.apps.get_mut(&app) else {
                    continue;
                };
                let Some(slot) = run
                    .slots
                    .iter_mut()
                    .find(|s| s.version == version && s.index == index)
                else {
                    continue;
                };
                match (slot.state, ok) {
                    (WorkerState::Starting, true) => {
                        slot.state = WorkerState::Ready;
                        slot.probe_failures = 0;
                        slot.backoff = FIRST_BACKOFF;
                        changed = true;
                        self.inner.events.emit(
                            Some(&app),
                            "worker.up",
                            format!("{app}-{index} (v{version}) is ready in AZ {}", slot.az),
                        );
                    }
                    (WorkerState::Ready, true) => slot.probe_failures = 0,
                    (WorkerState::Ready, false) => {
                        slot.probe_failures += 1;
                        if slot.probe_failures >= PROBE_FAILURES {
                            if let Some(r) = &mut slot.running {
                                self.inner.scheduler.kill(r);
                            }
                            self.down(&app, slot, now, "stopped answering /readyz");
                            changed = true;
                        }
                    }
                    _ => {}
                }
            }
            changed |= st
                .apps
                .values()
                .any(|r| r.slots.iter().any(|s| s.state == WorkerState::Down));
        }
        if changed {
            self.publish_routes();
        }
    }

    fn down(&self, app: &str, slot: &mut Slot, now: Instant, why: &str) {
        if slot.state == WorkerState::Down {
            return;
        }
        slot.state = WorkerState::Down;
        slot.running = None;
        slot.next_restart = now + slot.backoff;
        slot.backoff = (slot.backoff * 2).min(MAX_BACKOFF);
        self.inner.events.emit(
            Some(app),
            "worker.down",
            format!(
                "{app}-{} (v{}) in AZ {} {why}; restarting",
                slot.index, slot.version, slot.az
            ),
        );
    }

    /// A new slot for worker `index` of `version` in `az`, started at once.
    fn start_slot(
        &self,
        record: &AppRecord,
        version: u64,
        index: u32,
        az: String,
        now: Instant,
    ) -> Slot {
        let mut slot = Slot {
            index,
            version,
            az,
            running: None,
            state: WorkerState::Down,
            restarts: 0,
            probe_failures: 0,
            started: now,
            next_restart: now,
            backoff: FIRST_BACKOFF,
        };
        let spec = self.spec(record, version, index, &slot.az);
        self.launch(&record.name, &mut slot, &spec, now);
        slot
    }

    fn launch(&self, app: &str, slot: &mut Slot, spec: &WorkerSpec, now: Instant) {
        slot.started = now;
        slot.probe_failures = 0;
        match self.inner.scheduler.start(spec) {
            Ok(running) => {
                let placement = Placement {
                    app: app.to_string(),
                    version: slot.version,
                    index: slot.index,
                    az: slot.az.clone(),
                    address: running.address.to_string(),
                    ops_address: Some(running.ops_address.to_string()),
                    pid: Some(running.pid),
                    identity: running.identity.clone(),
                    restarts: slot.restarts,
                };
                self.inner.registry.put_placement(&placement);
                slot.running = Some(running);
                slot.state = WorkerState::Starting;
            }
            Err(e) => {
                tracing::error!(app, error = %e, "could not start a worker");
                slot.state = WorkerState::Down;
                slot.next_restart = now + slot.backoff;
                slot.backoff = (slot.backoff * 2).min(MAX_BACKOFF);
            }
        }
    }

    fn publish_routes(&self) {
        let st = lock(&self.inner.state);
        let mut apps = BTreeMap::new();
        for (name, run) in &st.apps {
            let workers = run
                .slots
                .iter()
                .filter_map(|s| {
                    let r = s.running.as_ref()?;
                    let state = match s.state {
                        WorkerState::Ready if s.version == run.record.version => RouteState::Ready,
                        WorkerState::Draining => RouteState::Draining,
                        _ => return None,
                    };
                    Some(WorkerRoute {
                        index: s.index,
                        address: r.address.to_string(),
                        health: Some(r.ops_address.to_string()),
                        state,
                    })
                })
                .collect();
            apps.insert(name.clone(), AppRoutes { workers });
        }
        drop(st);
        self.inner.routes.send_if_modified(|table| {
            if table.apps == apps {
                return false;
            }
            table.version += 1;
            table.apps = apps;
            true
        });
    }

    /// Deploys `record` side by side: the new version's workers start and turn
    /// ready, routes switch in one step, the old workers drain and stop. A new
    /// version that never turns ready is removed and the old one keeps serving.
    pub async fn deploy(&self, mut record: AppRecord) -> Result<AppRecord, DeployError> {
        let name = record.name.clone();
        let version = {
            let st = lock(&self.inner.state);
            let previous = st.apps.get(&name).map(|r| r.record.version);
            let from_slots = st
                .apps
                .get(&name)
                .and_then(|r| r.slots.iter().map(|s| s.version).max());
            previous.max(from_slots).unwrap_or(0) + 1
        };
        record.version = version;
        self.inner.events.emit(
            Some(&name),
            "deploy.started",
            format!(
                "{name} v{version}: starting {} workers of size {}",
                record.workers, record.size
            ),
        );
        {
            let mut guard = lock(&self.inner.state);
            let st = &mut *guard;
            let now = Instant::now();
            let azs = st.azs.clone();
            let run = st.apps.entry(name.clone()).or_insert_with(|| AppRun {
                record: record.clone(),
                pending: None,
                slots: Vec::new(),
            });
            run.pending = Some(record.clone());
            let mut taken = Vec::new();
            for index in 1..=record.workers {
                let az = place(&azs, &taken, index);
                taken.push(az.clone());
                let slot = self.start_slot(&record, version, index, az, now);
                run.slots.push(slot);
            }
        }
        match self.wait_ready(&name, version).await {
            Ok(()) => {
                self.inner.registry.put_app(&record).await?;
                self.switch(&record).await;
                self.inner.events.emit(
                    Some(&name),
                    "deploy.done",
                    format!("{name} v{version} is serving"),
                );
                Ok(record)
            }
            Err(reason) => {
                let spec = self.spec(&record, version, 1, "");
                let tail = self.inner.scheduler.log_tail(&spec, 5).unwrap_or_default();
                self.remove_version(&name, version).await;
                let message = format!("{name} v{version} was rolled back: {reason}");
                self.inner
                    .events
                    .emit(Some(&name), "deploy.failed", message.clone());
                Err(DeployError::NotReady(if tail.is_empty() {
                    message
                } else {
                    format!("{message}; worker log:\n{tail}")
                }))
            }
        }
    }

    async fn wait_ready(&self, name: &str, version: u64) -> Result<(), String> {
        let deadline = Instant::now() + self.inner.settings.ready_timeout;
        loop {
            {
                let st = lock(&self.inner.state);
                let slots: Vec<&Slot> = st
                    .apps
                    .get(name)
                    .map(|r| r.slots.iter().filter(|s| s.version == version).collect())
                    .unwrap_or_default();
                if slots.is_empty() {
                    return Err("its workers were removed".into());
                }
                if slots.iter().all(|s| s.state == WorkerState::Ready) {
                    return Ok(());
                }
                if let Some(s) = slots.iter().find(|s| s.restarts >= DEPLOY_CRASHES) {
                    return Err(format!(
                        "worker {name}-{} crashed {} times while starting",
                        s.index, s.restarts
                    ));
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "not ready within {:?}",
                    self.inner.settings.ready_timeout
                ));
            }
            tokio::time::sleep(TICK / 2).await;
        }
    }

    /// Makes `record`'s version the serving one and drains every other.
    async fn switch(&self, record: &AppRecord) {
        let old = {
            let mut st = lock(&self.inner.state);
            let Some(run) = st.apps.get_mut(&record.name) else {
                return;
            };
            run.record = record.clone();
            run.pending = None;
            for s in run.slots.iter_mut().filter(|s| s.version != record.version) {
                s.state = WorkerState::Draining;
            }
            run.slots
                .iter()
                .filter(|s| s.version != record.version)
                .map(|s| s.version)
                .collect::<Vec<_>>()
        };
        self.publish_routes();
        for v in old.into_iter().collect::<std::collections::BTreeSet<_>>() {
            self.remove_version(&record.name, v).await;
        }
    }

    /// Stops and forgets every worker of `name` at `version`, draining them.
    async fn remove_version(&self, name: &str, version: u64) {
        let removed: Vec<Slot> = {
            let mut st = lock(&self.inner.state);
            let Some(run) = st.apps.get_mut(name) else {
                return;
            };
            let (gone, keep): (Vec<Slot>, Vec<Slot>) = std::mem::take(&mut run.slots)
                .into_iter()
                .partition(|s| s.version == version);
            run.slots = keep;
            if run.pending.as_ref().is_some_and(|p| p.version == version) {
                run.pending = None;
            }
            if run.slots.is_empty() && self.inner.registry.app(name).is_none() {
                st.apps.remove(name);
            }
            gone
        };
        self.publish_routes();
        self.stop_slots(name, removed).await;
    }

    async fn stop_slots(&self, name: &str, slots: Vec<Slot>) {
        // Only a running worker can still be sent requests (a scale up, or
        // workers already gone, need no wait).
        if slots.iter().any(|s| s.running.is_some()) {
            self.routes_settled().await;
        }
        let grace = self.inner.settings.drain_grace;
        let mut stopping = Vec::new();
        for mut slot in slots {
            let placement = Placement {
                app: name.to_string(),
                version: slot.version,
                index: slot.index,
                az: slot.az.clone(),
                address: String::new(),
                ops_address: None,
                pid: None,
                identity: None,
                restarts: 0,
            };
            self.inner.registry.remove_placement(&placement);
            if let Some(r) = slot.running.take() {
                stopping.push(self.inner.scheduler.stop(r, grace));
            }
        }
        for s in stopping {
            let _ = s.await;
        }
    }

    /// Changes the worker count (same version): new workers start, extra ones drain.
    pub async fn scale(&self, name: &str, workers: u32) -> Result<AppRecord, DeployError> {
        let (record, extra) = {
            let mut guard = lock(&self.inner.state);
            let st = &mut *guard;
            let now = Instant::now();
            let azs = st.azs.clone();
            let Some(run) = st.apps.get_mut(name) else {
                return Err(DeployError::NotReady(format!("no app named {name}")));
            };
            run.record.workers = workers;
            let version = run.record.version;
            let mut taken: Vec<String> = run
                .slots
                .iter()
                .filter(|s| s.version == version && s.index <= workers)
                .map(|s| s.az.clone())
                .collect();
            for index in 1..=workers {
                if run
                    .slots
                    .iter()
                    .any(|s| s.version == version && s.index == index)
                {
                    continue;
                }
                let az = place(&azs, &taken, index);
                taken.push(az.clone());
                let slot = self.start_slot(&run.record, version, index, az, now);
                run.slots.push(slot);
            }
            for s in run.slots.iter_mut().filter(|s| s.index > workers) {
                s.state = WorkerState::Draining;
            }
            let (extra, keep): (Vec<Slot>, Vec<Slot>) = std::mem::take(&mut run.slots)
                .into_iter()
                .partition(|s| s.index > workers);
            run.slots = keep;
            (run.record.clone(), extra)
        };
        self.inner.registry.put_app(&record).await?;
        self.publish_routes();
        self.stop_slots(name, extra).await;
        self.wait_ready(name, record.version)
            .await
            .map_err(DeployError::NotReady)?;
        self.inner.events.emit(
            Some(name),
            "app.scaled",
            format!("{name} runs {workers} workers"),
        );
        Ok(record)
    }

    /// Starts deleting `record`: marks it for purging in the registry (the
    /// app is gone from every list at once, its name stays taken), then
    /// drains and stops its workers. The purge itself is the caller's
    /// ([`crate::purge::Purger`]).
    pub async fn delete(&self, record: &AppRecord) -> Result<PurgeRecord, DeployError> {
        let name = record.name.as_str();
        let purge = PurgeRecord {
            name: name.to_string(),
            app_id: record.app_id(),
            tenant: record.tenant.clone(),
        };
        self.inner.registry.start_purge(&purge).await?;
        let slots = {
            let mut st = lock(&self.inner.state);
            st.apps.remove(name).map(|r| r.slots).unwrap_or_default()
        };
        self.publish_routes();
        self.stop_slots(name, slots).await;
        self.inner
            .events
            .emit(Some(name), "app.deleted", format!("{name} was deleted"));
        Ok(purge)
    }

    /// Kills every worker in `az` and moves them to the others.
    pub fn fail_az(&self, az: &str) -> bool {
        let mut st = lock(&self.inner.state);
        let Some(zone) = st.azs.iter_mut().find(|a| a.name == az) else {
            return false;
        };
        zone.up = false;
        self.inner
            .events
            .emit(None, "az.down", format!("AZ {az} is down"));
        let now = Instant::now();
        for run in st.apps.values_mut() {
            let name = run.record.name.clone();
            for slot in run.slots.iter_mut().filter(|s| s.az == az) {
                if let Some(r) = &mut slot.running {
                    self.inner.scheduler.kill(r);
                }
                slot.backoff = Duration::ZERO;
                self.down(&name, slot, now, "lost with its AZ");
                slot.backoff = FIRST_BACKOFF;
            }
        }
        drop(st);
        self.publish_routes();
        true
    }

    /// Brings `az` back; apps whose workers crowd another AZ move one back.
    pub async fn restore_az(&self, az: &str) -> bool {
        let moves = {
            let mut st = lock(&self.inner.state);
            let Some(zone) = st.azs.iter_mut().find(|a| a.name == az) else {
                return false;
            };
            zone.up = true;
            self.inner
                .events
                .emit(None, "az.up", format!("AZ {az} is up"));
            let mut moves = Vec::new();
            for run in st.apps.values_mut() {
                let version = run.record.version;
                let current: Vec<&Slot> =
                    run.slots.iter().filter(|s| s.version == version).collect();
                if current.len() < 2 || current.iter().any(|s| s.az == az) {
                    continue;
                }
                // Move one worker from the most crowded AZ.
                let mut counts: BTreeMap<&str, u32> = BTreeMap::new();
                current
                    .iter()
                    .for_each(|s| *counts.entry(s.az.as_str()).or_default() += 1);
                let Some((&crowded, &n)) = counts.iter().max_by_key(|(_, n)| **n) else {
                    continue;
                };
                if n < 2 {
                    continue;
                }
                let index = current
                    .iter()
                    .filter(|s| s.az == crowded)
                    .map(|s| s.index)
                    .max()
                    .unwrap_or(1);
                moves.push((run.record.name.clone(), index));
            }
            moves
        };
        for (app, index) in moves {
            self.move_worker(&app, index, az).await;
        }
        true
    }

    async fn move_worker(&self, app: &str, index: u32, to: &str) {
        let old = {
            let mut st = lock(&self.inner.state);
            let Some(run) = st.apps.get_mut(app) else {
                return;
            };
            let version = run.record.version;
            let Some(slot) = run
                .slots
                .iter_mut()
                .find(|s| s.version == version && s.index == index)
            else {
                return;
            };
            self.inner.events.emit(
                Some(app),
                "worker.moved",
                format!(
                    "{app}-{index} moves from AZ {} to AZ {to} to restore the spread",
                    slot.az
                ),
            );
            slot.state = WorkerState::Draining;
            let running = slot.running.take();
            slot.az = to.to_string();
            running
        };
        self.publish_routes();
        if let Some(r) = old {
            self.routes_settled().await;
            let _ = self
                .inner
                .scheduler
                .stop(r, self.inner.settings.drain_grace)
                .await;
        }
        let mut st = lock(&self.inner.state);
        if let Some(run) = st.apps.get_mut(app) {
            let version = run.record.version;
            if let Some(slot) = run
                .slots
                .iter_mut()
                .find(|s| s.version == version && s.index == index)
            {
                slot.state = WorkerState::Down;
                slot.next_restart = Instant::now();
            }
        }
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
                        pid: slot.running.as_ref().map(|r| r.pid),
                        restarts: slot.restarts,
                        url: format!("http://{name}-{}.{}:{}", slot.index, s.domain, s.proxy_port),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The AZ for a new worker: the up AZ holding the fewest of `taken`, ties to
/// the one after the worker's round-robin position.
fn place(azs: &[AzStatus], taken: &[String], index: u32) -> String {
    let up: Vec<&AzStatus> = azs.iter().filter(|a| a.up).collect();
    if up.is_empty() {
        // Nowhere is up: stay in the round-robin AZ and wait for it.
        return azs
            .get((index as usize - 1) % azs.len().max(1))
            .map_or_else(|| "a".into(), |a| a.name.clone());
    }
    let start = (index as usize).saturating_sub(1) % up.len();
    (0..up.len())
        .map(|i| up[(start + i) % up.len()])
        .min_by_key(|a| taken.iter().filter(|t| **t == a.name).count())
        .map(|a| a.name.clone())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zones(up: &[(&str, bool)]) -> Vec<AzStatus> {
        up.iter()
            .map(|(n, u)| AzStatus {
                name: n.to_string(),
                up: *u,
            })
            .collect()
    }

    #[test]
    fn placement_spreads_and_avoids_down_zones() {
        let azs = zones(&[("a", true), ("b", true), ("c", true)]);
        let mut taken = Vec::new();
        for i in 1..=4 {
            let az = place(&azs, &taken, i);
            taken.push(az);
        }
        assert_eq!(taken, ["a", "b", "c", "a"]);
        let azs = zones(&[("a", true), ("b", false), ("c", true)]);
        assert_eq!(place(&azs, &["a".into()], 2), "c");
        assert_ne!(place(&azs, &[], 2), "b");
        // Two workers never share one AZ while another is up.
        let azs = zones(&[("a", true), ("b", true)]);
        assert_ne!(place(&azs, &["a".into()], 1), "a");
    }
}
