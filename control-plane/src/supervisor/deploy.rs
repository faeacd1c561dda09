//! Side-by-side deploys, scaling and deletion.

use super::*;

impl Supervisor {
    /// Deploys `record` side by side: the new version's workers start and turn
    /// ready, routes switch in one step, the old workers drain and stop. A new
    /// version that never turns ready is removed and the old one keeps serving.
    pub async fn deploy(&self, record: AppRecord) -> Result<AppRecord, DeployError> {
        let record = self.launch_version(record).await?;
        let (name, version) = (record.name.clone(), record.version);
        self.inner.registry.put_app(&record).await?;
        self.switch(&record).await;
        self.inner.events.emit(
            Some(&name),
            "deploy.done",
            format!("{name} v{version} is serving"),
        );
        Ok(record)
    }

    /// Deploys `record` as a canary beside the serving version: its workers
    /// start and turn ready, then take `weight` percent of the app's
    /// requests (its direct URLs stay the serving version's) until
    /// [`Supervisor::promote`] or [`Supervisor::abort_canary`]. The app's
    /// record stays the serving version's until it is promoted.
    pub async fn deploy_canary(
        &self,
        record: AppRecord,
        weight: u8,
    ) -> Result<AppRecord, DeployError> {
        let record = self.launch_version(record).await?;
        let (name, version) = (record.name.clone(), record.version);
        let serving = {
            let mut st = lock(&self.inner.state);
            let Some(run) = st.apps.get_mut(&name) else {
                return Err(DeployError::NotReady(format!("no app named {name}")));
            };
            run.canary = Some(weight);
            run.record.version
        };
        self.publish_routes();
        self.inner.events.emit(
            Some(&name),
            "canary.started",
            format!("{name} v{version} takes {weight}% of the requests beside v{serving}"),
        );
        Ok(record)
    }

    /// Whether a version of `name` is being deployed or runs as a canary.
    pub fn changing(&self, name: &str) -> bool {
        let st = lock(&self.inner.state);
        st.apps.get(name).is_some_and(|r| r.pending.is_some())
    }

    /// The canary of `name`, if one runs: its record and weight.
    pub fn canary(&self, name: &str) -> Option<(AppRecord, u8)> {
        let st = lock(&self.inner.state);
        let run = st.apps.get(name)?;
        Some((run.pending.clone()?, run.canary?))
    }

    /// Makes `name`'s canary the serving version: it takes every request,
    /// the version it ran beside drains and stops.
    pub async fn promote(&self, name: &str) -> Result<AppRecord, DeployError> {
        let record = {
            let mut st = lock(&self.inner.state);
            let run = st.apps.get_mut(name).filter(|r| r.canary.is_some());
            let Some(run) = run else {
                return Err(DeployError::NotReady(format!("{name} has no canary")));
            };
            run.pending.clone()
        };
        let Some(record) = record else {
            return Err(DeployError::NotReady(format!("{name} has no canary")));
        };
        // The canary stays one until its record is the app's.
        self.inner.registry.put_app(&record).await?;
        self.switch(&record).await;
        self.inner.events.emit(
            Some(name),
            "canary.promoted",
            format!(
                "{name} v{} is promoted: it takes every request",
                record.version
            ),
        );
        Ok(record)
    }

    /// Retires `name`'s canary, because `reason`: its workers drain and
    /// stop; the serving version takes every request again.
    pub async fn abort_canary(&self, name: &str, reason: &str) -> Result<AppRecord, DeployError> {
        let (version, serving) = {
            let mut st = lock(&self.inner.state);
            let run = st.apps.get_mut(name).filter(|r| r.canary.is_some());
            let Some(run) = run else {
                return Err(DeployError::NotReady(format!("{name} has no canary")));
            };
            run.canary = None;
            let version = run.pending.as_ref().map(|p| p.version);
            (version, run.record.clone())
        };
        if let Some(version) = version {
            self.remove_version(name, version).await;
            self.inner.events.emit(
                Some(name),
                "canary.aborted",
                format!("{name} v{version} canary is retired: {reason}"),
            );
        }
        Ok(serving)
    }

    /// Starts `record` as a new version beside what runs and waits until
    /// every one of its workers is ready; one that never is, is removed
    /// (what ran goes on) and its failure is the error.
    async fn launch_version(&self, mut record: AppRecord) -> Result<AppRecord, DeployError> {
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
        let launches = {
            let mut guard = lock(&self.inner.state);
            let st = &mut *guard;
            let now = Instant::now();
            let azs = st.azs.clone();
            let run = st.apps.entry(name.clone()).or_insert_with(|| AppRun {
                record: record.clone(),
                pending: None,
                slots: Vec::new(),
                canary: None,
            });
            run.pending = Some(record.clone());
            let mut taken = Vec::new();
            let mut launches = Vec::new();
            for index in 1..=record.workers {
                let az = place(&azs, &taken, index);
                taken.push(az.clone());
                let (slot, launch) = self.start_slot(&record, version, index, az, now);
                run.slots.push(slot);
                launches.push(launch);
            }
            launches
        };
        self.start(launches);
        match self.wait_ready(&name, version).await {
            Ok(()) => Ok(record),
            Err(reason) => {
                let spec = self.spec(&record, version, 1, "");
                let tail = self
                    .inner
                    .scheduler
                    .logs(&spec, 5)
                    .await
                    .unwrap_or_default();
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

    pub(super) async fn wait_ready(&self, name: &str, version: u64) -> Result<(), String> {
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
    pub(super) async fn switch(&self, record: &AppRecord) {
        let old = {
            let mut st = lock(&self.inner.state);
            let Some(run) = st.apps.get_mut(&record.name) else {
                return;
            };
            run.record = record.clone();
            run.pending = None;
            run.canary = None;
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
    pub(super) async fn remove_version(&self, name: &str, version: u64) {
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
                run.canary = None;
            }
            if run.slots.is_empty() && self.inner.registry.app(name).is_none() {
                st.apps.remove(name);
            }
            gone
        };
        self.publish_routes();
        self.stop_slots(name, removed).await;
    }

    pub(super) async fn stop_slots(&self, name: &str, slots: Vec<Slot>) {
        // Only a running worker can still be sent requests (a scale up, or
        // workers already gone, need no wait).
        if slots.iter().any(|s| s.running.is_some()) {
            self.routes_settled().await;
        }
        let mut workers = Vec::new();
        for slot in slots {
            self.inner
                .registry
                .remove_placement(name, slot.version, slot.index);
            workers.extend(slot.running);
        }
        self.stop(workers).await;
    }

    /// Changes the worker count (same version): new workers start, extra ones drain.
    pub async fn scale(&self, name: &str, workers: u32) -> Result<AppRecord, DeployError> {
        let (record, extra, launches) = {
            let mut guard = lock(&self.inner.state);
            let st = &mut *guard;
            let now = Instant::now();
            let azs = st.azs.clone();
            let Some(run) = st.apps.get_mut(name) else {
                return Err(DeployError::NotReady(format!("no app named {name}")));
            };
            run.record.workers = workers;
            let version = run.record.version;
            let mut launches = Vec::new();
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
                let (slot, launch) = self.start_slot(&run.record, version, index, az, now);
                run.slots.push(slot);
                launches.push(launch);
            }
            // Only the serving version's: a version being deployed or run
            // as a canary keeps its workers.
            let extra = |s: &Slot| s.version == version && s.index > workers;
            for s in run.slots.iter_mut().filter(|s| extra(s)) {
                s.state = WorkerState::Draining;
            }
            let (extra, keep): (Vec<Slot>, Vec<Slot>) =
                std::mem::take(&mut run.slots).into_iter().partition(extra);
            run.slots = keep;
            (run.record.clone(), extra, launches)
        };
        self.start(launches);
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

    /// Sets `name`'s scaling policy (`None`: off), persisted; its workers
    /// are left as they are.
    pub async fn set_autoscale(
        &self,
        name: &str,
        policy: Option<crate::model::ScalePolicy>,
    ) -> Result<AppRecord, DeployError> {
        let record = {
            let mut st = lock(&self.inner.state);
            let Some(run) = st.apps.get_mut(name) else {
                return Err(DeployError::NotReady(format!("no app named {name}")));
            };
            run.record.autoscale = policy.clone();
            if let Some(pending) = &mut run.pending {
                pending.autoscale = policy;
            }
            run.record.clone()
        };
        self.inner.registry.put_app(&record).await?;
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
}
