//! What an autoscaled app should run, from its signals: each signal asks
//! for a worker count, the highest wins within the policy's bounds; up at
//! once, down only after a stabilization window and at most by half a step.
//! Pure: no clock, no I/O, so every rule is tested on its own.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::model::ScalePolicy;

/// What the app's workers report, averaged over its ready workers.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Signals {
    /// Messages waiting and in flight over the app's persistent queues.
    pub backlog: Option<u64>,
    /// CPU per worker, in percent of its size's vCores.
    pub cpu: Option<f64>,
    /// HTTP requests in flight per worker, in percent of its size's
    /// concurrency ceiling.
    pub concurrency: Option<f64>,
}

/// A worker count a signal asks for, and why, for a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Want {
    /// Workers.
    pub workers: u32,
    /// Why: "queue backlog 180, target 20 per worker".
    pub reason: String,
}

/// What each signal the policy names asks for, with `current` workers
/// running; the highest first, clamped to the policy's bounds. A signal
/// that was not measured asks for nothing.
pub fn wanted(policy: &ScalePolicy, current: u32, s: &Signals) -> Want {
    let current = current.max(1);
    let mut asks = Vec::new();
    if let (Some(target), Some(backlog)) = (policy.queue_backlog, s.backlog) {
        asks.push(Want {
            workers: backlog.div_ceil(u64::from(target)).min(u64::from(u32::MAX)) as u32,
            reason: format!("queue backlog {backlog}, target {target} per worker"),
        });
    }
    let by_use = |target: u32, used: f64| -> u32 {
        // As Kubernetes' autoscaler: the count at which the average use
        // would meet the target.
        let want = (f64::from(current) * used / f64::from(target)).ceil();
        if want.is_finite() && want > 0.0 {
            want.min(f64::from(u32::MAX)) as u32
        } else {
            0
        }
    };
    if let (Some(target), Some(used)) = (policy.cpu, s.cpu) {
        asks.push(Want {
            workers: by_use(target, used),
            reason: format!("CPU {used:.0}% per worker, target {target}%"),
        });
    }
    if let (Some(target), Some(used)) = (policy.concurrency, s.concurrency) {
        asks.push(Want {
            workers: by_use(target, used),
            reason: format!(
                "requests in flight at {used:.0}% of the concurrency ceiling per worker, target {target}%"
            ),
        });
    }
    let top = asks.into_iter().max_by_key(|w| w.workers).unwrap_or(Want {
        workers: current,
        reason: "no signal measured".into(),
    });
    Want {
        workers: top.workers.clamp(policy.min, policy.max),
        reason: top.reason,
    }
}

/// A change to make: to `workers`, because `reason`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Workers to run.
    pub workers: u32,
    /// Why, for a person.
    pub reason: String,
}

/// One app's recent recommendations: up follows the highest at once; down
/// only once every recommendation for a whole window (since the last
/// change, too) asked for fewer, to the highest of them, and at most half
/// the workers in one step.
#[derive(Debug, Default)]
pub struct Stabilizer {
    seen: VecDeque<(Instant, u32)>,
    last_change: Option<Instant>,
    /// When recommendations started to be kept.
    since: Option<Instant>,
}

impl Stabilizer {
    /// Takes `want` (already within the policy's bounds) at `now` with
    /// `current` workers running, and says what to change, if anything.
    pub fn decide(
        &mut self,
        now: Instant,
        window: Duration,
        current: u32,
        min: u32,
        want: Want,
    ) -> Option<Change> {
        let since = *self.since.get_or_insert(now);
        self.seen.push_back((now, want.workers));
        while self
            .seen
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > window)
        {
            self.seen.pop_front();
        }
        if want.workers > current {
            return Some(self.changed(now, want.workers, want.reason));
        }
        if want.workers >= current {
            return None;
        }
        let quiet_since = self.last_change.unwrap_or(since);
        if now.duration_since(quiet_since) < window {
            return None;
        }
        let highest = self.seen.iter().map(|(_, w)| *w).max().unwrap_or(current);
        let to = highest.max(current.div_ceil(2)).max(min);
        (to < current).then(|| self.changed(now, to, want.reason))
    }

    fn changed(&mut self, now: Instant, workers: u32, reason: String) -> Change {
        self.last_change = Some(now);
        Change { workers, reason }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> ScalePolicy {
        ScalePolicy {
            min: 1,
            max: 8,
            queue_backlog: Some(20),
            cpu: Some(70),
            concurrency: Some(60),
        }
    }

    #[test]
    fn the_busiest_signal_wins_within_the_bounds() {
        let p = policy();
        let w = wanted(
            &p,
            2,
            &Signals {
                backlog: Some(180),
                cpu: Some(35.0),
                concurrency: Some(10.0),
            },
        );
        assert_eq!(w.workers, 8, "180 / 20 = 9, capped at 8");
        assert_eq!(w.reason, "queue backlog 180, target 20 per worker");
        let w = wanted(
            &p,
            2,
            &Signals {
                backlog: Some(0),
                cpu: Some(140.0),
                concurrency: None,
            },
        );
        assert_eq!(w.workers, 4, "2 workers at 140% for 70% is 4");
        assert!(w.reason.starts_with("CPU 140%"), "{}", w.reason);
        let w = wanted(
            &p,
            3,
            &Signals {
                backlog: None,
                cpu: None,
                concurrency: Some(90.0),
            },
        );
        assert_eq!(w.workers, 5, "3 at 90% for 60% is 4.5, so 5");
        let idle = wanted(
            &ScalePolicy {
                min: 2,
                ..p.clone()
            },
            4,
            &Signals::default(),
        );
        assert_eq!(idle.workers, 4, "nothing measured: stay");
        let quiet = Signals {
            backlog: Some(0),
            cpu: Some(0.0),
            concurrency: Some(0.0),
        };
        assert_eq!(wanted(&ScalePolicy { min: 2, ..p }, 4, &quiet).workers, 2);
    }

    #[test]
    fn hostile_numbers_give_a_count_in_bounds() {
        let p = policy();
        for s in [
            Signals {
                backlog: Some(u64::MAX),
                cpu: Some(f64::INFINITY),
                concurrency: Some(f64::NAN),
            },
            Signals {
                backlog: None,
                cpu: Some(-50.0),
                concurrency: Some(1e300),
            },
        ] {
            let w = wanted(&p, 8, &s);
            assert!((p.min..=p.max).contains(&w.workers), "{w:?}");
        }
    }

    fn want(workers: u32) -> Want {
        Want {
            workers,
            reason: "test".into(),
        }
    }

    #[test]
    fn up_at_once_down_after_the_window_by_at_most_half() {
        let window = Duration::from_secs(300);
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut st = Stabilizer::default();
        assert_eq!(
            st.decide(at(0), window, 1, 1, want(8)).map(|c| c.workers),
            Some(8)
        );
        // Quiet from now on: nothing until a whole window passed since the change.
        for s in (5..300).step_by(5) {
            assert_eq!(st.decide(at(s), window, 8, 1, want(1)), None, "at {s} s");
        }
        assert_eq!(
            st.decide(at(301), window, 8, 1, want(1)).map(|c| c.workers),
            Some(4)
        );
        assert_eq!(
            st.decide(at(306), window, 4, 1, want(1)),
            None,
            "a window after each step"
        );
        assert_eq!(
            st.decide(at(602), window, 4, 1, want(1)).map(|c| c.workers),
            Some(2)
        );
        assert_eq!(
            st.decide(at(903), window, 2, 1, want(1)).map(|c| c.workers),
            Some(1)
        );
    }

    #[test]
    fn down_goes_to_the_highest_recommendation_of_the_window() {
        let window = Duration::from_secs(60);
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut st = Stabilizer::default();
        st.decide(at(0), window, 8, 1, want(7));
        st.decide(at(30), window, 8, 1, want(6));
        assert_eq!(
            st.decide(at(61), window, 8, 1, want(2)).map(|c| c.workers),
            Some(6)
        );
    }

    #[test]
    fn never_below_min_so_two_zones_stay_served() {
        let window = Duration::from_secs(10);
        let t0 = Instant::now();
        let mut st = Stabilizer::default();
        st.decide(t0, window, 3, 2, want(2));
        let c = st.decide(t0 + Duration::from_secs(11), window, 3, 2, want(2));
        assert_eq!(c.map(|c| c.workers), Some(2));
        let c = st.decide(t0 + Duration::from_secs(30), window, 2, 2, want(2));
        assert_eq!(c, None);
    }

    #[test]
    fn a_signal_oscillating_around_its_target_changes_at_most_once_a_window() {
        // Backlog alternating 19 and 21 against a target of 20 per worker,
        // evaluated every 5 s for an hour with a 300 s window.
        let p = ScalePolicy {
            min: 1,
            max: 8,
            queue_backlog: Some(20),
            cpu: None,
            concurrency: None,
        };
        let window = Duration::from_secs(300);
        let t0 = Instant::now();
        let mut st = Stabilizer::default();
        let mut current = 1;
        let mut changes = Vec::new();
        for tick in 0..720u64 {
            let backlog = if tick % 2 == 0 { 21 } else { 19 };
            let now = t0 + Duration::from_secs(tick * 5);
            let w = wanted(
                &p,
                current,
                &Signals {
                    backlog: Some(backlog),
                    ..Signals::default()
                },
            );
            if let Some(c) = st.decide(now, window, current, p.min, w) {
                changes.push((tick * 5, c.workers));
                current = c.workers;
            }
        }
        for pair in changes.windows(2) {
            assert!(pair[1].0 - pair[0].0 >= 300, "{changes:?}");
        }
        assert!(changes.len() <= 1, "{changes:?}");
    }
}
