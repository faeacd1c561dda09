//! The health loop: notice exits, probe readiness, restart what is due,
//! with back-off.

use super::*;

/// When a slot that went down is started again.
pub(super) enum Restart {
    /// After its back-off: it failed.
    BackedOff,
    /// At once, its back-off reset: it was lost, not at fault (its AZ went).
    Now,
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
                        slot.backoff.reset();
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

    pub(super) fn down(&self, app: &str, slot: &mut Slot, now: Instant, why: &str) {
        self.down_then(app, slot, now, why, Restart::BackedOff);
    }

    /// Marks a slot down (once), and when to start it again.
    pub(super) fn down_then(
        &self,
        app: &str,
        slot: &mut Slot,
        now: Instant,
        why: &str,
        restart: Restart,
    ) {
        if slot.state == WorkerState::Down {
            return;
        }
        slot.state = WorkerState::Down;
        slot.running = None;
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
    }

    /// A new slot for worker `index` of `version` in `az`, started at once.
    pub(super) fn start_slot(
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
            backoff: restart_backoff(),
        };
        let spec = self.spec(record, version, index, &slot.az);
        self.launch(&record.name, &mut slot, &spec, now);
        slot
    }

    pub(super) fn launch(&self, app: &str, slot: &mut Slot, spec: &WorkerSpec, now: Instant) {
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
                slot.next_restart = now + slot.backoff.next_delay();
            }
        }
    }
}
