//! The route table's live form: the published table (`common::routes`)
//! compiled into endpoints with their counters, held in an `ArcSwap` and
//! swapped whole.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicUsize;

use arc_swap::ArcSwap;

use crate::endpoint::{Endpoint, Health};
use crate::metrics::{AppMetrics, Metrics};
use crate::share::Share;
pub use common::routes::{
    AppRoutes, CanaryRoutes, MAX_WORKERS, RouteError, RouteTable, WorkerRoute, WorkerState,
};

/// One app's live route: its workers, in index order, with their counters.
#[derive(Debug)]
pub struct AppRoute {
    /// The app's name.
    pub name: String,
    /// Every worker, ready or draining.
    pub workers: Vec<Arc<Endpoint>>,
    /// Round-robin position.
    pub next: AtomicUsize,
    /// The app's metric handles.
    pub metrics: AppMetrics,
    /// Its workers that take new requests: its share of the proxy scales with them.
    pub ready: usize,
    /// Its requests in flight through the proxy (kept across swaps).
    pub share: Arc<Share>,
    /// A canary version's workers and their share of the app's requests.
    pub canary: Option<Canary>,
}

/// A canary version's live route.
#[derive(Debug)]
pub struct Canary {
    /// The percentage of the app's requests it takes (1 to 99).
    pub weight: u8,
    /// Its workers, in index order.
    pub workers: Vec<Arc<Endpoint>>,
}

impl AppRoute {
    /// Every endpoint of the app: its workers, then its canary's.
    pub fn endpoints(&self) -> impl Iterator<Item = &Arc<Endpoint>> {
        self.workers
            .iter()
            .chain(self.canary.iter().flat_map(|c| c.workers.iter()))
    }
}

/// The compiled table requests read: one `Arc` load per request.
#[derive(Debug, Default)]
pub struct Table {
    /// Apps by name.
    pub apps: HashMap<String, Arc<AppRoute>>,
    /// The table as published.
    pub spec: RouteTable,
}

/// What a request's host resolved to.
pub enum Target {
    /// Any ready worker of the app.
    App(Arc<AppRoute>),
    /// Worker `index` of the app only (its direct URL); the table lists it.
    Worker(Arc<AppRoute>, u32),
}

impl Table {
    /// Resolves a host name (no port, lower case) under `domain`.
    pub fn resolve(&self, host: &str, domain: &str) -> Option<Target> {
        let label = host.strip_suffix(domain)?.strip_suffix('.')?;
        if label.contains('.') {
            return None;
        }
        if let Some(app) = self.apps.get(label) {
            return Some(Target::App(app.clone()));
        }
        let (app, n) = label.rsplit_once('-')?;
        let n: u32 = n.parse().ok()?;
        let app = self.apps.get(app)?;
        app.workers
            .iter()
            .any(|w| w.index == n)
            .then(|| Target::Worker(app.clone(), n))
    }
}

/// The live table, swapped whole; health state outlives swaps, keyed by
/// address, and each app's share, keyed by name.
pub struct Routes {
    live: ArcSwap<Table>,
    kept: Mutex<Kept>,
    metrics: Metrics,
}

/// What outlives a swap, for the names the new table still lists.
#[derive(Default)]
struct Kept {
    health: HashMap<String, Arc<Health>>,
    shares: HashMap<String, Arc<Share>>,
}

impl Routes {
    /// An empty table.
    pub fn new(metrics: Metrics) -> Self {
        Routes {
            live: ArcSwap::from_pointee(Table::default()),
            kept: Mutex::new(Kept::default()),
            metrics,
        }
    }

    /// The table now.
    pub fn load(&self) -> Arc<Table> {
        self.live.load_full()
    }

    /// Replaces the whole table. Workers already known keep their health and
    /// in-flight counts, apps already known their share; requests under way
    /// keep the table they started with. An app that leaves the table and
    /// comes back starts a new count: its old requests give their places
    /// back to the old one, which nothing reads any more.
    pub fn replace(&self, spec: RouteTable) -> Result<(), RouteError> {
        spec.validate()?;
        if self.live.load().spec == spec {
            // The same table again (the control plane re-sends it, so that
            // a balancer that restarted catches up): nothing changes.
            return Ok(());
        }
        let mut old = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        let mut kept = Kept::default();
        let mut apps = HashMap::new();
        for (name, app) in &spec.apps {
            let mut compile = |list: &[WorkerRoute]| -> Vec<Arc<Endpoint>> {
                let mut workers: Vec<Arc<Endpoint>> = list
                    .iter()
                    .map(|w| {
                        let h = old
                            .health
                            .get(&w.address)
                            .cloned()
                            .unwrap_or_else(|| Arc::new(Health::new()));
                        kept.health.insert(w.address.clone(), h.clone());
                        Arc::new(Endpoint {
                            app: name.clone(),
                            index: w.index,
                            address: w.address.as_str().into(),
                            probe: w.health.as_deref().unwrap_or(&w.address).into(),
                            state: w.state,
                            health: h,
                        })
                    })
                    .collect();
                // Worker n's ready one first: a direct URL reaches the
                // successor of a draining worker of the same index.
                workers.sort_by_key(|w| (w.index, w.state != WorkerState::Ready));
                workers
            };
            let workers = compile(&app.workers);
            let canary = app.canary.as_ref().map(|c| Canary {
                weight: c.weight,
                workers: compile(&c.workers),
            });
            let share = old.shares.get(name).cloned().unwrap_or_default();
            kept.shares.insert(name.clone(), share.clone());
            let ready = app
                .workers
                .iter()
                .chain(app.canary.iter().flat_map(|c| c.workers.iter()))
                .filter(|w| w.state == WorkerState::Ready)
                .count();
            apps.insert(
                name.clone(),
                Arc::new(AppRoute {
                    name: name.clone(),
                    ready,
                    workers,
                    next: AtomicUsize::new(0),
                    metrics: self.metrics.app(name),
                    share,
                    canary,
                }),
            );
        }
        *old = kept;
        let version = spec.version;
        let count = apps.len();
        self.live.store(Arc::new(Table { apps, spec }));
        tracing::info!(version, apps = count, "route table replaced");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(json: &str) -> Routes {
        let routes = Routes::new(Metrics::default());
        routes.replace(serde_json::from_str(json).unwrap()).unwrap();
        routes
    }

    #[test]
    fn hosts_resolve_to_apps_and_direct_workers() {
        let r = table(
            r#"{"apps":{"orders":{"workers":[{"index":0,"address":"127.0.0.1:1","state":"ready"}]},
                "my-app":{"workers":[]}}}"#,
        );
        let t = r.load();
        let d = "fabric.localhost";
        assert!(
            matches!(t.resolve("orders.fabric.localhost", d), Some(Target::App(a)) if a.name == "orders")
        );
        assert!(
            matches!(t.resolve("my-app.fabric.localhost", d), Some(Target::App(a)) if a.name == "my-app")
        );
        assert!(matches!(
            t.resolve("orders-0.fabric.localhost", d),
            Some(Target::Worker(_, 0))
        ));
        for bad in [
            "billing.fabric.localhost",
            "x.orders.fabric.localhost",
            "orders.fabric.localhost.evil",
            "fabric.localhost",
            "ordersfabric.localhost",
            "orders-x.fabric.localhost",
            "orders-7.fabric.localhost",
        ] {
            assert!(t.resolve(bad, d).is_none(), "{bad}");
        }
    }

    #[test]
    fn health_survives_a_swap_and_bad_tables_are_refused() {
        let r = table(
            r#"{"apps":{"a":{"workers":[{"index":0,"address":"127.0.0.1:1","state":"ready"}]}}}"#,
        );
        let before = r.load().apps["a"].workers[0].health.clone();
        r.replace(
            serde_json::from_str(
                r#"{"version":2,"apps":{"b":{"workers":[{"index":3,"address":"127.0.0.1:1","state":"draining"}]}}}"#,
            )
            .unwrap(),
        )
        .unwrap();
        let t = r.load();
        assert!(Arc::ptr_eq(&before, &t.apps["b"].workers[0].health));
        assert_eq!(t.apps["b"].ready, 0, "a draining worker is not ready");
        assert_eq!(t.spec.version, 2);
        for bad in [
            r#"{"apps":{"A":{"workers":[]}}}"#,
            r#"{"apps":{"a":{"workers":[{"index":0,"address":"nohost","state":"ready"}]}}}"#,
            r#"{"apps":{"a":{"workers":[{"index":0,"address":"h:1","health":"h:x","state":"ready"}]}}}"#,
            r#"{"apps":{"a":{"workers":[{"index":0,"address":"h:1","health":":2","state":"ready"}]}}}"#,
            r#"{"apps":{"a":{"workers":[{"index":0,"address":"h:1","state":"ready"},{"index":0,"address":"h:2","state":"ready"}]}}}"#,
        ] {
            let spec: RouteTable = serde_json::from_str(bad).unwrap();
            assert!(r.replace(spec).is_err(), "{bad}");
        }
        assert_eq!(r.load().spec.version, 2, "a refused table changes nothing");
    }

    #[test]
    fn during_a_switch_worker_n_is_its_ready_successor_first() {
        // The old version's worker 1 drains beside the new version's.
        let r = table(
            r#"{"apps":{"a":{"workers":[
                {"index":1,"address":"127.0.0.1:1","state":"draining"},
                {"index":1,"address":"127.0.0.1:2","state":"ready"}]}}}"#,
        );
        let t = r.load();
        let a = &t.apps["a"];
        assert_eq!(a.ready, 1);
        let first = a.workers.iter().find(|w| w.index == 1).unwrap();
        assert_eq!(&*first.address, "127.0.0.1:2");
        assert!(matches!(
            t.resolve("a-1.fabric.localhost", "fabric.localhost"),
            Some(Target::Worker(_, 1))
        ));
    }

    #[test]
    fn a_health_address_is_where_probes_go_and_is_shown_only_when_given() {
        let json = r#"{"version":1,"apps":{"a":{"workers":[
            {"index":0,"address":"127.0.0.1:1","state":"ready","health":"127.0.0.1:2"},
            {"index":1,"address":"127.0.0.1:3","state":"ready"}]}}}"#;
        let spec: RouteTable = serde_json::from_str(json).unwrap();
        assert_eq!(
            spec.apps["a"].workers[0].health.as_deref(),
            Some("127.0.0.1:2")
        );
        let shown = serde_json::to_value(&spec).unwrap();
        assert_eq!(shown["apps"]["a"]["workers"][0]["health"], "127.0.0.1:2");
        assert!(shown["apps"]["a"]["workers"][1].get("health").is_none());
        assert_eq!(serde_json::from_value::<RouteTable>(shown).unwrap(), spec);
        let r = table(json);
        let t = r.load();
        let probes: Vec<&str> = t.apps["a"].workers.iter().map(|w| &*w.probe).collect();
        assert_eq!(probes, ["127.0.0.1:2", "127.0.0.1:3"]);
    }

    #[test]
    fn an_apps_share_survives_a_swap_that_keeps_the_app() {
        let one =
            r#"{"apps":{"a":{"workers":[{"index":0,"address":"127.0.0.1:1","state":"ready"}]}}}"#;
        let r = table(one);
        let share = r.load().apps["a"].share.clone();
        let slot = share.take(1).unwrap();
        r.replace(
            serde_json::from_str(
                r#"{"version":2,"apps":{"a":{"workers":[{"index":0,"address":"127.0.0.1:1","state":"ready"},{"index":1,"address":"127.0.0.1:2","state":"ready"}]}}}"#,
            )
            .unwrap(),
        )
        .unwrap();
        let t = r.load();
        assert!(Arc::ptr_eq(&share, &t.apps["a"].share));
        assert_eq!(t.apps["a"].share.in_flight(), 1);
        assert_eq!(t.apps["a"].ready, 2);
        drop(slot);
        assert_eq!(t.apps["a"].share.in_flight(), 0);
        // Gone and back: a new count, the old one still safe to give back to.
        let slot = t.apps["a"].share.take(1).unwrap();
        r.replace(RouteTable::default()).unwrap();
        r.replace(serde_json::from_str(one).unwrap()).unwrap();
        assert_eq!(r.load().apps["a"].share.in_flight(), 0);
        drop(slot);
    }

    #[test]
    fn toml_tables_parse() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routes.toml");
        std::fs::write(
            &path,
            "version = 4\n[[apps.orders.workers]]\nindex = 1\naddress = \"127.0.0.1:9\"\nstate = \"ready\"\n",
        )
        .unwrap();
        let t = RouteTable::from_file(&path).unwrap();
        assert_eq!(t.version, 4);
        assert_eq!(t.apps["orders"].workers[0].index, 1);
        std::fs::write(&path, "version = \"x\"\n").unwrap();
        assert!(RouteTable::from_file(&path).is_err());
    }
}
