//! Fair share per app: a bound on each app's requests in flight through the
//! proxy, so that one tenant's flood cannot take what every other tenant
//! needs of the proxy they share.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::endpoint::InFlight;

/// One app's requests in flight through the proxy. Kept by app name across
/// route-table swaps, so requests under way count against the table that
/// replaced the one they started with.
#[derive(Debug, Default)]
pub struct Share {
    in_flight: AtomicUsize,
}

impl Share {
    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// A place for one request while fewer than `limit` are in flight;
    /// none at the bound. One atomic add (and a subtraction when refused):
    /// the count may pass `limit` for an instant, the requests never do.
    pub fn take(self: &Arc<Self>, limit: usize) -> Option<Slot> {
        if self.in_flight.fetch_add(1, Ordering::Relaxed) >= limit {
            self.in_flight.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Slot(self.clone()))
    }
}

/// The bound of an app with `ready` ready workers: `per_worker` each, at
/// least one worker's worth (an app whose workers are all draining, or
/// reached only by direct URLs, still gets one); `0` sets no bound.
pub fn limit(per_worker: usize, ready: usize) -> usize {
    match per_worker {
        0 => usize::MAX,
        n => n.saturating_mul(ready.max(1)),
    }
}

/// One request's place in its app's share, given back when dropped.
#[derive(Debug)]
pub struct Slot(Arc<Share>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a proxied request holds until its response has been passed on: its
/// place in its app's share and its worker's in-flight count.
#[derive(Debug)]
pub struct Held {
    _slot: Slot,
    _worker: InFlight,
}

impl Held {
    /// Holds both until dropped.
    pub fn new(slot: Slot, worker: InFlight) -> Self {
        Held {
            _slot: slot,
            _worker: worker,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_refused_at_the_bound_and_given_back_on_drop() {
        let share = Arc::new(Share::default());
        let held: Vec<Slot> = (0..3).filter_map(|_| share.take(3)).collect();
        assert_eq!(held.len(), 3);
        assert!(share.take(3).is_none());
        assert_eq!(share.in_flight(), 3, "a refusal leaves the count as it was");
        drop(held);
        assert_eq!(share.in_flight(), 0);
        assert!(share.take(3).is_some());
    }

    #[test]
    fn the_bound_scales_with_ready_workers() {
        assert_eq!(limit(512, 3), 1536);
        assert_eq!(limit(512, 0), 512, "at least one worker's worth");
        assert_eq!(limit(0, 3), usize::MAX, "0: no bound");
        assert_eq!(limit(usize::MAX, 2), usize::MAX);
    }
}
