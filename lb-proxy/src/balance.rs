//! Picking a worker: power of two choices over requests in flight, or round robin.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use rand::Rng;

use crate::endpoint::{Endpoint, Health};
use crate::routes::{AppRoute, WorkerState};
use crate::settings::Balance;

/// Workers already tried for one request. They are known by their health
/// record, which every route table listing the same address shares, so a
/// retry that reads a newer table still skips them.
#[derive(Debug, Default)]
pub struct Tried {
    seen: [Option<Arc<Health>>; Tried::CAP],
}

impl Tried {
    /// The most attempts one request makes.
    pub const CAP: usize = 8;

    /// Marks `w` as tried.
    pub fn add(&mut self, w: &Endpoint) {
        if let Some(slot) = self.seen.iter_mut().find(|s| s.is_none()) {
            *slot = Some(w.health.clone());
        }
    }

    /// Whether `w` was tried.
    pub fn has(&self, w: &Endpoint) -> bool {
        self.seen
            .iter()
            .map_while(Option::as_ref)
            .any(|h| Arc::ptr_eq(h, &w.health))
    }
}

/// Picks an untried worker of `app`: a ready and healthy one, by `policy`.
/// When no ready worker is healthy, any ready one (panic mode, as Envoy
/// does): health is a guess, and a guess that every worker is bad is more
/// often wrong than a worker the control plane calls ready. None when no
/// untried worker is ready.
///
/// With a canary, the request goes to the canary's workers with its weight's
/// chance and to the app's own otherwise; when the chosen group has no
/// worker to take it, the other group does.
pub fn pick(app: &AppRoute, policy: Balance, tried: &Tried) -> Option<Arc<Endpoint>> {
    let Some(canary) = &app.canary else {
        return pick_from(app, &app.workers, policy, tried);
    };
    let to_canary = rand::rng().random_range(0..100u8) < canary.weight;
    let (first, then) = if to_canary {
        (&canary.workers, &app.workers)
    } else {
        (&app.workers, &canary.workers)
    };
    pick_from(app, first, policy, tried).or_else(|| pick_from(app, then, policy, tried))
}

fn pick_from(
    app: &AppRoute,
    workers: &[Arc<Endpoint>],
    policy: Balance,
    tried: &Tried,
) -> Option<Arc<Endpoint>> {
    let healthy = |w: &Endpoint| w.available();
    let ready = |w: &Endpoint| w.state == WorkerState::Ready;
    choose(app, workers, policy, tried, healthy)
        .or_else(|| choose(app, workers, policy, tried, ready))
}

fn choose(
    app: &AppRoute,
    workers: &[Arc<Endpoint>],
    policy: Balance,
    tried: &Tried,
    fit: impl Fn(&Endpoint) -> bool,
) -> Option<Arc<Endpoint>> {
    let candidates = || workers.iter().filter(|w| !tried.has(w) && fit(w));
    let n = candidates().count();
    let nth = |k: usize| candidates().nth(k).cloned();
    match n {
        0 => None,
        1 => nth(0),
        _ => match policy {
            Balance::RoundRobin => nth(app.next.fetch_add(1, Ordering::Relaxed) % n),
            Balance::P2c => {
                let mut rng = rand::rng();
                let a = rng.random_range(0..n);
                let b = (a + rng.random_range(1..n)) % n;
                let (a, b) = (nth(a)?, nth(b)?);
                Some(if b.health.outstanding() < a.health.outstanding() {
                    b
                } else {
                    a
                })
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::routes::{RouteTable, Routes};

    /// A table with app `a` whose workers, ready, listen at `addrs` in order.
    fn spec(addrs: &[String]) -> RouteTable {
        let workers: Vec<_> = addrs
            .iter()
            .enumerate()
            .map(|(i, a)| serde_json::json!({"index": i, "address": a, "state": "ready"}))
            .collect();
        serde_json::from_value(serde_json::json!({"apps": {"a": {"workers": workers}}})).unwrap()
    }

    fn addrs(ports: &[u16]) -> Vec<String> {
        ports.iter().map(|p| format!("127.0.0.1:{p}")).collect()
    }

    fn app(n: u16) -> Arc<AppRoute> {
        let routes = Routes::new(Metrics::default());
        routes
            .replace(spec(&addrs(&(1000..1000 + n).collect::<Vec<_>>())))
            .unwrap();
        routes.load().apps["a"].clone()
    }

    #[test]
    fn p2c_prefers_the_less_loaded_and_skips_tried() {
        let a = app(2);
        let _busy: Vec<_> = (0..5).map(|_| a.workers[0].health.start()).collect();
        for _ in 0..50 {
            assert_eq!(pick(&a, Balance::P2c, &Tried::default()).unwrap().index, 1);
        }
        let mut tried = Tried::default();
        tried.add(&a.workers[1]);
        assert_eq!(pick(&a, Balance::P2c, &tried).unwrap().index, 0);
        tried.add(&a.workers[0]);
        assert!(pick(&a, Balance::P2c, &tried).is_none());
    }

    #[test]
    fn round_robin_visits_each_and_ejected_workers_are_skipped() {
        let a = app(3);
        let seen: Vec<u32> = (0..6)
            .map(|_| {
                pick(&a, Balance::RoundRobin, &Tried::default())
                    .unwrap()
                    .index
            })
            .collect();
        assert_eq!(seen, [0, 1, 2, 0, 1, 2]);
        a.workers[1]
            .health
            .eject(std::time::Duration::from_secs(60));
        for _ in 0..20 {
            assert_ne!(pick(&a, Balance::P2c, &Tried::default()).unwrap().index, 1);
        }
    }

    #[test]
    fn with_no_healthy_worker_a_ready_one_is_still_tried() {
        let a = app(2);
        for w in &a.workers {
            w.health.eject(std::time::Duration::from_secs(60));
        }
        let mut tried = Tried::default();
        let first = pick(&a, Balance::P2c, &tried).expect("panic mode picks one");
        tried.add(&first);
        let second = pick(&a, Balance::P2c, &tried).expect("then the other");
        assert_ne!(first.index, second.index);
        tried.add(&second);
        assert!(pick(&a, Balance::P2c, &tried).is_none());
    }

    #[test]
    fn tried_workers_are_known_across_route_tables() {
        let routes = Routes::new(Metrics::default());
        routes.replace(spec(&addrs(&[1, 2]))).unwrap();
        let old = routes.load().apps["a"].clone();
        let mut tried = Tried::default();
        tried.add(&old.workers[1]);
        // The next table lists the tried worker first, beside a new one.
        routes.replace(spec(&addrs(&[2, 3]))).unwrap();
        let new = routes.load().apps["a"].clone();
        for _ in 0..20 {
            assert_eq!(
                &*pick(&new, Balance::P2c, &tried).unwrap().address,
                "127.0.0.1:3"
            );
        }
    }

    /// App `a` with two workers and a canary of one, taking `weight`%.
    fn with_canary(weight: u8) -> Arc<AppRoute> {
        let routes = Routes::new(Metrics::default());
        let spec: RouteTable = serde_json::from_value(serde_json::json!({"apps": {"a": {
            "workers": [
                {"index": 1, "address": "127.0.0.1:1001", "state": "ready"},
                {"index": 2, "address": "127.0.0.1:1002", "state": "ready"}],
            "canary": {"weight": weight, "workers": [
                {"index": 1, "address": "127.0.0.1:2001", "state": "ready"}]}}}}))
        .unwrap();
        routes.replace(spec).unwrap();
        routes.load().apps["a"].clone()
    }

    fn to_canary(a: &AppRoute, n: usize) -> usize {
        (0..n)
            .filter(|_| {
                let w = pick(a, Balance::P2c, &Tried::default()).unwrap();
                w.address.ends_with(":2001")
            })
            .count()
    }

    #[test]
    fn a_canary_takes_its_weight_of_the_requests() {
        let a = with_canary(10);
        assert_eq!(a.ready, 3);
        let n = to_canary(&a, 10_000);
        assert!((800..=1200).contains(&n), "{n} of 10000 to a 10% canary");
        // Direct URLs are the app's own workers': the canary has none.
        assert!(a.workers.iter().all(|w| !w.address.ends_with(":2001")));
    }

    #[test]
    fn a_group_with_no_worker_to_take_a_request_leaves_it_to_the_other() {
        let a = with_canary(90);
        a.canary.as_ref().unwrap().workers[0]
            .health
            .eject(std::time::Duration::from_secs(60));
        // The canary's only worker is ejected but ready: panic mode within
        // the group picks it still; tried, the app's own take the request.
        let mut tried = Tried::default();
        tried.add(&a.canary.as_ref().unwrap().workers[0]);
        for _ in 0..50 {
            let w = pick(&a, Balance::P2c, &tried).unwrap();
            assert!(!w.address.ends_with(":2001"));
        }
        let a = with_canary(1);
        let mut tried = Tried::default();
        tried.add(&a.workers[0]);
        tried.add(&a.workers[1]);
        for _ in 0..20 {
            let w = pick(&a, Balance::P2c, &tried).unwrap();
            assert!(w.address.ends_with(":2001"), "only the canary is left");
        }
    }
}
