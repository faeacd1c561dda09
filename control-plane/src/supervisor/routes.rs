//! The route table: built from the workers that take requests, published
//! to the load balancers, and how far each has applied it.

use super::*;

impl Supervisor {
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
    pub(super) async fn routes_settled(&self) {
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

    pub(super) fn publish_routes(&self) {
        let st = lock(&self.inner.state);
        let mut apps = BTreeMap::new();
        for (name, run) in &st.apps {
            let route = |s: &Slot, state| {
                let r = s.running.as_ref()?;
                Some(WorkerRoute {
                    index: s.index,
                    address: r.address.to_string(),
                    health: Some(r.ops_address.to_string()),
                    state,
                })
            };
            let workers = run
                .slots
                .iter()
                .filter_map(|s| match s.state {
                    WorkerState::Ready if s.version == run.record.version => {
                        route(s, RouteState::Ready)
                    }
                    WorkerState::Draining => route(s, RouteState::Draining),
                    _ => None,
                })
                .collect();
            // A canary's ready workers, with its share of the requests.
            let canary = match (run.canary, &run.pending) {
                (Some(weight), Some(p)) => Some(CanaryRoutes {
                    weight,
                    workers: run
                        .slots
                        .iter()
                        .filter(|s| s.version == p.version && s.state == WorkerState::Ready)
                        .filter_map(|s| route(s, RouteState::Ready))
                        .collect(),
                })
                .filter(|c| !c.workers.is_empty()),
                _ => None,
            };
            apps.insert(name.clone(), AppRoutes { workers, canary });
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
}
