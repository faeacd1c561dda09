//! After a restart: taking back the registry's apps and the workers that
//! still run.

use super::*;

impl Supervisor {
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
            let adopted_worker = match p.worker() {
                Some(recorded) => self.inner.scheduler.adopt(&recorded, &worker_id).await,
                None => None,
            };
            // A worker that is gone, or whose handle now names another, is forgotten, never killed.
            let Some(running) = adopted_worker else {
                self.inner
                    .registry
                    .remove_placement(&p.app, p.version, p.index);
                continue;
            };
            if current == Some(p.version) && self.probe(&running.ops_address.to_string()).await {
                if p.from_an_earlier_fabric() && !stale.contains(&p.app) {
                    stale.push(p.app.clone());
                }
                adopted.push((p, running));
            } else {
                self.inner.scheduler.kill(&running).await;
                self.inner
                    .registry
                    .remove_placement(&p.app, p.version, p.index);
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
                        backoff: restart_backoff(),
                        attempt: 0,
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
                        canary: None,
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
}
