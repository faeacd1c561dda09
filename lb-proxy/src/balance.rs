//! Picking a worker: power of two choices over requests in flight, or round robin.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use rand::Rng;

use crate::endpoint::Endpoint;
use crate::routes::AppRoute;
use crate::settings::Balance;

/// Workers already tried for one request, by position in the app's list.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tried(u64);

impl Tried {
    /// Marks position `i` as tried.
    pub fn add(&mut self, i: usize) {
        self.0 |= 1 << i;
    }

    fn has(self, i: usize) -> bool {
        self.0 & (1 << i) != 0
    }

    /// Whether position `i` is still to try.
    pub fn is_untried(self, i: usize) -> bool {
        !self.has(i)
    }
}

/// Picks an available, untried worker of `app`; none when there is none.
pub fn pick(app: &AppRoute, policy: Balance, tried: Tried) -> Option<(usize, Arc<Endpoint>)> {
    let candidates = || {
        app.workers
            .iter()
            .enumerate()
            .filter(move |(i, w)| !tried.has(*i) && w.available())
    };
    let n = candidates().count();
    let nth = |k: usize| candidates().nth(k).map(|(i, w)| (i, w.clone()));
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
                Some(if b.1.health.outstanding() < a.1.health.outstanding() {
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

    fn app(n: usize) -> Arc<AppRoute> {
        let workers: Vec<_> = (0..n)
            .map(|i| serde_json::json!({"index": i, "address": format!("127.0.0.1:{}", 1000 + i), "state": "ready"}))
            .collect();
        let spec: RouteTable =
            serde_json::from_value(serde_json::json!({"apps": {"a": {"workers": workers}}}))
                .unwrap();
        let routes = Routes::new(Metrics::default());
        routes.replace(spec).unwrap();
        routes.load().apps["a"].clone()
    }

    #[test]
    fn p2c_prefers_the_less_loaded_and_skips_tried() {
        let a = app(2);
        let _busy: Vec<_> = (0..5).map(|_| a.workers[0].health.start()).collect();
        for _ in 0..50 {
            assert_eq!(pick(&a, Balance::P2c, Tried::default()).unwrap().0, 1);
        }
        let mut tried = Tried::default();
        tried.add(1);
        assert_eq!(pick(&a, Balance::P2c, tried).unwrap().0, 0);
        tried.add(0);
        assert!(pick(&a, Balance::P2c, tried).is_none());
    }

    #[test]
    fn round_robin_visits_each_and_ejected_workers_are_skipped() {
        let a = app(3);
        let seen: Vec<usize> = (0..6)
            .map(|_| pick(&a, Balance::RoundRobin, Tried::default()).unwrap().0)
            .collect();
        assert_eq!(seen, [0, 1, 2, 0, 1, 2]);
        a.workers[1]
            .health
            .eject(std::time::Duration::from_secs(60));
        for _ in 0..20 {
            assert_ne!(pick(&a, Balance::P2c, Tried::default()).unwrap().0, 1);
        }
    }
}
