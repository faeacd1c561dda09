//! One worker as the balancer sees it: its address, its state, and its health
//! (requests in flight, passive ejection, active probe results).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::routes::WorkerState;

/// A worker of an app.
#[derive(Debug)]
pub struct Endpoint {
    /// The app it belongs to.
    pub app: String,
    /// Its number within the app.
    pub index: u32,
    /// Where it listens, `host:port` (shared, as it also names its upstream connections).
    pub address: std::sync::Arc<str>,
    /// Where active probes go, `host:port`: its ops address when the table
    /// gives one, else `address`.
    pub probe: std::sync::Arc<str>,
    /// Whether it takes new requests.
    pub state: WorkerState,
    /// Health shared by every table that lists this address.
    pub health: std::sync::Arc<Health>,
}

impl Endpoint {
    /// Whether a new balanced request may go here.
    pub fn available(&self) -> bool {
        self.state == WorkerState::Ready && self.health.usable()
    }
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    // +1 so that 0 always means "not ejected".
    epoch().elapsed().as_millis() as u64 + 1
}

/// What the proxy knows of one worker's health.
#[derive(Debug)]
pub struct Health {
    outstanding: AtomicUsize,
    ejected_until_ms: AtomicU64,
    probe_ok: AtomicBool,
    rises: AtomicU32,
    falls: AtomicU32,
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl Health {
    /// A worker presumed healthy until it shows otherwise.
    pub fn new() -> Self {
        Health {
            outstanding: AtomicUsize::new(0),
            ejected_until_ms: AtomicU64::new(0),
            probe_ok: AtomicBool::new(true),
            rises: AtomicU32::new(0),
            falls: AtomicU32::new(0),
        }
    }

    /// Requests in flight to this worker.
    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }

    /// Counts one request in flight until the guard drops.
    pub fn start(self: &std::sync::Arc<Self>) -> InFlight {
        self.outstanding.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Neither ejected nor failing its probes.
    pub fn usable(&self) -> bool {
        if !self.probe_ok.load(Ordering::Relaxed) {
            return false;
        }
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        until == 0 || now_ms() >= until
    }

    /// Passive ejection: a connect error or reset takes the worker out for `period`
    /// (or until probes bring it back). Returns true when it was in before.
    pub fn eject(&self, period: Duration) -> bool {
        let was_usable = self.usable();
        let until = now_ms() + period.as_millis() as u64;
        self.ejected_until_ms.store(until, Ordering::Relaxed);
        self.rises.store(0, Ordering::Relaxed);
        was_usable
    }

    /// Records one active probe; `rise` good ones in a row bring the worker
    /// back (ending an ejection), `fall` failed ones take it out. Returns the
    /// change it made, if any, for the caller to log.
    pub fn probed(&self, ok: bool, rise: u32, fall: u32) -> Option<Probed> {
        if ok {
            self.falls.store(0, Ordering::Relaxed);
            let rises = self.rises.fetch_add(1, Ordering::Relaxed) + 1;
            if rises < rise.max(1) {
                return None;
            }
            let was_out = !self.probe_ok.swap(true, Ordering::Relaxed)
                || self.ejected_until_ms.swap(0, Ordering::Relaxed) != 0;
            was_out.then_some(Probed::Back { rises })
        } else {
            self.rises.store(0, Ordering::Relaxed);
            let falls = self.falls.fetch_add(1, Ordering::Relaxed) + 1;
            (falls >= fall.max(1) && self.probe_ok.swap(false, Ordering::Relaxed))
                .then_some(Probed::Out { falls })
        }
    }
}

/// What a probe changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probed {
    /// The worker takes requests again after this many good probes.
    Back {
        /// Good probes in a row.
        rises: u32,
    },
    /// The worker is out after this many failed probes.
    Out {
        /// Failed probes in a row.
        falls: u32,
    },
}

/// One request in flight to a worker; dropping it (when the response body ends) counts it done.
#[derive(Debug)]
pub struct InFlight(std::sync::Arc<Health>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn ejection_and_probes() {
        let h = Arc::new(Health::new());
        assert!(h.usable());
        {
            let _a = h.start();
            let _b = h.start();
            assert_eq!(h.outstanding(), 2);
        }
        assert_eq!(h.outstanding(), 0);
        assert!(h.eject(Duration::from_secs(60)));
        assert!(!h.usable());
        assert!(!h.eject(Duration::from_secs(60)), "already out");
        assert_eq!(h.probed(true, 2, 3), None);
        assert!(!h.usable(), "one good probe is not enough");
        assert_eq!(h.probed(true, 2, 3), Some(Probed::Back { rises: 2 }));
        assert!(h.usable(), "two bring it back");
        assert_eq!(h.probed(true, 2, 3), None, "already back");
        h.probed(false, 2, 3);
        h.probed(false, 2, 3);
        assert!(h.usable());
        assert_eq!(h.probed(false, 2, 3), Some(Probed::Out { falls: 3 }));
        assert!(!h.usable(), "three failures take it out");
        h.eject(Duration::ZERO);
        h.probed(true, 2, 3);
        h.probed(true, 2, 3);
        assert!(h.usable());
    }
}
