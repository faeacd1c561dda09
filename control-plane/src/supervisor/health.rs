//! The health loop: notice exits, probe readiness, restart what is due,
//! with back-off. Scheduler calls are made with the supervisor's state
//! released: a tick reads what to check, asks, then writes back.

use super::*;

/// When a slot that went down is started again.
pub(super) enum Restart {
    /// After its back-off: it failed.
    BackedOff,
    /// At once, its back-off reset: it was lost, not at fault (its AZ went).
    Now,
}

/// A worker start asked for while the state was held, made after.
pub(super) struct Launch {
    app: String,
    version: u64,
    index: u32,
    /// The slot's attempt it belongs to: a slot that went down or started
    /// again meanwhile does not take the worker.
    attempt: u64,
    spec: WorkerSpec,
}

/// A running worker a tick asks about.
struct Check {
    app: String,
    version: u64,
    index: u32,
    worker: Worker,
    /// Whether `/readyz` is asked too (it is, while starting or ready).
    probe: bool,
}

impl Check {
    fn slot<'a>(&self, st: &'a mut State) -> Option<&'a mut Slot> {
        st.apps.get_mut(&self.app)?.slots.iter_mut().find(|s| {
            s.version == self.version
                && s.index == self.index
                && s.running.as_ref() == Some(&self.worker)
        })
    }
}

impl Supervisor {
    pub(super) async fn probe(&self, address: &str) -> bool {
        matches!(
            self.inner.http.get(format!("http://{address}/readyz")).send().await,
            Ok(r) if r.status().is_success()
        )
    }

    /// One round: notice exits, probe readiness, restart what is due.
    pub(super) async fn tick(&self) {
        let mut checks = Vec::new();
        let mut kills = Vec::new();
        let mut launches = Vec::new();
        {
            let mut guard = lock(&self.inner.state);
            let st = &mut *guard;
            let now = Instant::now();
            let up: Vec<AzStatus> = st.azs.clone();
            let ready_timeout = self.inner.settings.ready_timeout;
            for run in st.apps.values_mut() {
                let name = run.record.name.clone();
                for slot in run.slots.iter_mut() {
                    if slot.state == WorkerState::Starting
                        && now.duration_since(slot.started) > ready_timeout
                    {
                        kills.extend(self.down(&name, slot, now, "never turned ready"));
                    }
                    if let Some(worker) = &slot.running {
                        checks.push(Check {
                            app: name.clone(),
                            version: slot.version,
                            index: slot.index,
                            worker: worker.clone(),
                            probe: matches!(slot.state, WorkerState::Starting | WorkerState::Ready),
                        });
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
                    launches.push(self.launch(record, slot, now));
                }
            }
        }
        self.start(launches);
        self.kill(kills).await;
        let results = futures::future::join_all(checks.into_iter().map(|check| async move {
            let alive = self.inner.scheduler.alive(&check.worker).await;
            let ready =
                alive && check.probe && self.probe(&check.worker.ops_address.to_string()).await;
            (check, alive, ready)
        }))
        .await;
        let mut changed = false;
        let mut kills = Vec::new();
        {
            let mut st = lock(&self.inner.state);
            let now = Instant::now();
            for (check, alive, ready) in results {
                let Some(slot) = check.slot(&mut st) else {
                    continue; // changed meanwhile: the answer is about a worker it no longer runs
                };
                let app = &check.app;
                if !alive {
                    self.down(app, slot, now, "exited");
                    changed = true;
                    continue;
                }
                if !check.probe {
                    continue;
                }
                match (slot.state, ready) {
                    (WorkerState::Starting, true) => {
                        slot.state = WorkerState::Ready;
                        slot.probe_failures = 0;
                        slot.backoff.reset();
                        changed = true;
                        self.inner.events.emit(
                            Some(app),
                            "worker.up",
                            format!(
                                "{app}-{} (v{}) is ready in AZ {}",
                                slot.index, slot.version, slot.az
                            ),
                        );
                    }
                    (WorkerState::Ready, true) => slot.probe_failures = 0,
                    (WorkerState::Ready, false) => {
                        slot.probe_failures += 1;
                        if slot.probe_failures >= PROBE_FAILURES {
                            kills.extend(self.down(app, slot, now, "stopped answering /readyz"));
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
        self.kill(kills).await;
        if changed {
            self.publish_routes();
        }
    }

    /// Marks a slot down (once), and when to start it again; returns the
    /// worker it ran, if any, for the caller to kill or let go.
    pub(super) fn down(
        &self,
        app: &str,
        slot: &mut Slot,
        now: Instant,
        why: &str,
    ) -> Option<Worker> {
        self.down_then(app, slot, now, why, Restart::BackedOff)
    }

    /// Marks a slot down (once), and when to start it again; returns the
    /// worker it ran, if any.
    pub(super) fn down_then(
        &self,
        app: &str,
        slot: &mut Slot,
        now: Instant,
        why: &str,
        restart: Restart,
    ) -> Option<Worker> {
        if slot.state == WorkerState::Down {
            return slot.running.take();
        }
        slot.state = WorkerState::Down;
        slot.next_restart = match restart {
            Restart::BackedOff => now + slot.backoff.next_delay(),
            Restart::Now => {
                slot.backoff.reset();
                now
            }
        };
        self.inner.events.emit(
            Some(app),
            "worker.down",
            format!(
                "{app}-{} (v{}) in AZ {} {why}; restarting",
                slot.index, slot.version, slot.az
            ),
        );
        slot.running.take()
    }

    /// Kills `workers` at once, together.
    pub(super) async fn kill(&self, workers: Vec<Worker>) {
        let scheduler = &self.inner.scheduler;
        futures::future::join_all(workers.iter().map(|w| scheduler.kill(w))).await;
    }

    /// A new slot for worker `index` of `version` in `az`, and its start.
    pub(super) fn start_slot(
        &self,
        record: &AppRecord,
        version: u64,
        index: u32,
        az: String,
        now: Instant,
    ) -> (Slot, Launch) {
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
            backoff: restart_backoff(),
            attempt: 0,
        };
        let launch = self.launch(record, &mut slot, now);
        (slot, launch)
    }

    /// Marks `slot` starting (its readiness timed from `now`), and what to
    /// start for it once the state is released ([`Supervisor::start`]).
    pub(super) fn launch(&self, record: &AppRecord, slot: &mut Slot, now: Instant) -> Launch {
        slot.started = now;
        slot.probe_failures = 0;
        slot.attempt += 1;
        slot.state = WorkerState::Starting;
        slot.running = None;
        Launch {
            app: record.name.clone(),
            version: slot.version,
            index: slot.index,
            attempt: slot.attempt,
            spec: self.spec(record, slot.version, slot.index, &slot.az),
        }
    }

    /// Starts what `launches` ask for, each in the background: a scheduler
    /// may take seconds to start a worker, and nothing else waits on it.
    pub(super) fn start(&self, launches: Vec<Launch>) {
        for launch in launches {
            let this = self.clone();
            self.inner
                .tasks
                .spawn(async move { this.land(launch).await });
        }
    }

    /// Starts one worker and gives it to its slot, unless the slot moved on
    /// meanwhile (went down, started again, or was removed): then the new
    /// worker is stopped.
    async fn land(&self, launch: Launch) {
        let started = self.inner.scheduler.start(&launch.spec).await;
        let unwanted = {
            let mut st = lock(&self.inner.state);
            let slot = st.apps.get_mut(&launch.app).and_then(|run| {
                run.slots.iter_mut().find(|s| {
                    s.version == launch.version
                        && s.index == launch.index
                        && s.attempt == launch.attempt
                        && s.state == WorkerState::Starting
                })
            });
            match (slot, started) {
                (Some(slot), Ok(worker)) => {
                    self.inner.registry.put_placement(&Placement::of(
                        &launch.app,
                        slot.version,
                        slot.index,
                        &slot.az,
                        &worker,
                        slot.restarts,
                    ));
                    slot.running = Some(worker);
                    None
                }
                (Some(slot), Err(e)) => {
                    tracing::error!(app = %launch.app, error = %e, "could not start a worker");
                    slot.state = WorkerState::Down;
                    slot.next_restart = Instant::now() + slot.backoff.next_delay();
                    None
                }
                (None, Ok(worker)) => Some(worker),
                (None, Err(_)) => None,
            }
        };
        if let Some(worker) = unwanted {
            let grace = self.inner.settings.drain_grace;
            self.inner.scheduler.stop(&worker, grace).await;
        }
    }

    /// Drains and stops `workers`, together; the stops finish even when
    /// the caller stops waiting.
    pub(super) async fn stop(&self, workers: Vec<Worker>) {
        let grace = self.inner.settings.drain_grace;
        let stopping: Vec<_> = workers
            .into_iter()
            .map(|worker| {
                let scheduler = self.inner.scheduler.clone();
                self.inner
                    .tasks
                    .spawn(async move { scheduler.stop(&worker, grace).await })
            })
            .collect();
        futures::future::join_all(stopping).await;
    }
}
