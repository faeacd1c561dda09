//! The canary judge: every period, each running canary's workers and its
//! serving version's are read (`fabric_worker_http_requests_total` on each
//! ready worker's `/metrics`, by status class), and a canary whose share of
//! 5xx answers over the last window exceeds the serving version's by more
//! than the threshold, once it has answered enough requests to judge, is
//! aborted as `fabric apps abort` would, with an event saying why.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::api::Api;
use crate::worker_metrics::{client, scrape, sum};

/// The judge's settings (`[canary]` in the control plane's settings).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CanarySettings {
    /// How often canaries are judged.
    #[serde(with = "humantime_serde")]
    pub period: Duration,
    /// The window error rates are compared over.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// How many percentage points the canary's 5xx share may exceed the
    /// serving version's.
    pub threshold: f64,
    /// Requests the canary must have answered in the window to be judged.
    pub min_requests: u64,
}

impl Default for CanarySettings {
    fn default() -> Self {
        CanarySettings {
            period: Duration::from_secs(5),
            window: Duration::from_secs(60),
            threshold: 10.0,
            min_requests: 20,
        }
    }
}

const REQUESTS: &str = "fabric_worker_http_requests_total";
const ERRORS: &str = "class=\"5xx\"";

/// Requests and 5xx answers of one version's workers, summed.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counts {
    /// Requests answered.
    pub total: f64,
    /// Of them, 5xx.
    pub errors: f64,
}

impl Counts {
    fn since(self, earlier: Counts) -> Option<Counts> {
        // A worker that restarted counts from zero again: no judgement on
        // a window that holds its restart.
        (self.total >= earlier.total && self.errors >= earlier.errors).then_some(Counts {
            total: self.total - earlier.total,
            errors: self.errors - earlier.errors,
        })
    }

    fn share(self) -> f64 {
        if self.total > 0.0 {
            self.errors / self.total * 100.0
        } else {
            0.0
        }
    }
}

/// Whether a canary that answered `canary` beside the serving version's
/// `serving` over a window should be aborted; the reason when so.
pub fn verdict(s: &CanarySettings, canary: Counts, serving: Counts) -> Option<String> {
    if canary.total < s.min_requests as f64 {
        return None;
    }
    let (c, v) = (canary.share(), serving.share());
    (c - v > s.threshold).then(|| {
        format!(
            "5xx on {c:.0}% of its {:.0} requests over the last {}, against {v:.0}% on the serving version (more than {} points above)",
            canary.total,
            humantime_serde::re::humantime::format_duration(s.window),
            s.threshold
        )
    })
}

/// One canary's recent counts: when, the canary's, the serving version's.
type History = VecDeque<(Instant, Counts, Counts)>;

/// Judges canaries until `shutdown`.
pub(crate) async fn run(api: Api, settings: CanarySettings, shutdown: common::shutdown::Shutdown) {
    let http = client();
    let mut seen: HashMap<(String, u64), History> = HashMap::new();
    loop {
        let canaries = api.supervisor.canaries();
        seen.retain(|(name, v), _| canaries.iter().any(|(n, _, c)| n == name && c == v));
        for (name, serving, canary) in canaries {
            let workers = api.supervisor.ready_ops_by_version(&name);
            let texts = futures::future::join_all(
                workers
                    .iter()
                    .map(|(v, _, ops)| async { (*v, scrape(&http, *ops).await) }),
            )
            .await;
            let counts = |version: u64| {
                texts
                    .iter()
                    .filter(|(v, _)| *v == version)
                    .fold(Counts::default(), |c, (_, t)| Counts {
                        total: c.total + sum(t, REQUESTS, ""),
                        errors: c.errors + sum(t, REQUESTS, ERRORS),
                    })
            };
            let now = Instant::now();
            let history = seen.entry((name.clone(), canary)).or_default();
            history.push_back((now, counts(canary), counts(serving)));
            while history
                .front()
                .is_some_and(|(at, _, _)| now.duration_since(*at) > settings.window)
            {
                history.pop_front();
            }
            let (Some(first), Some(last)) = (history.front(), history.back()) else {
                continue;
            };
            let (Some(c), Some(v)) = (last.1.since(first.1), last.2.since(first.2)) else {
                continue;
            };
            if let Some(reason) = verdict(&settings, c, v) {
                // On a task of its own: waiting for one app's lock holds up
                // no other app's judgement.
                let api = api.clone();
                tokio::spawn(async move { abort(&api, &name, canary, &reason).await });
            }
        }
        tokio::select! {
            () = shutdown.triggered() => break,
            () = tokio::time::sleep(settings.period) => {}
        }
    }
}

/// Aborts `name`'s canary of `version`, under the app's lock, unless it
/// was promoted, aborted or replaced meanwhile.
async fn abort(api: &Api, name: &str, version: u64, reason: &str) {
    let lock = api.app_lock(name);
    let _held = lock.lock().await;
    if api.supervisor.canary(name).map(|(r, _)| r.version) != Some(version) {
        return;
    }
    tracing::warn!(app = %name, version, reason, "aborting a canary");
    if let Err(e) = api.supervisor.abort_canary(name, reason).await {
        tracing::warn!(app = %name, error = %e, "the canary was not aborted");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(total: f64, errors: f64) -> Counts {
        Counts { total, errors }
    }

    #[test]
    fn a_canary_failing_more_than_the_serving_version_is_aborted() {
        let s = CanarySettings::default();
        let why = verdict(&s, counts(40.0, 20.0), counts(400.0, 4.0)).expect("aborted");
        assert!(
            why.starts_with("5xx on 50% of its 40 requests over the last 1m"),
            "{why}"
        );
        // Too few requests to judge.
        assert_eq!(verdict(&s, counts(10.0, 10.0), counts(400.0, 0.0)), None);
        // Failing as much as the serving version: not the canary's doing.
        assert_eq!(verdict(&s, counts(100.0, 30.0), counts(400.0, 100.0)), None);
        // Within the threshold.
        assert_eq!(verdict(&s, counts(100.0, 9.0), counts(400.0, 0.0)), None);
        assert!(verdict(&s, counts(100.0, 11.0), counts(0.0, 0.0)).is_some());
    }

    #[test]
    fn a_restarted_worker_leaves_its_window_unjudged() {
        assert_eq!(counts(5.0, 1.0).since(counts(10.0, 0.0)), None);
        assert_eq!(
            counts(15.0, 3.0).since(counts(10.0, 1.0)),
            Some(counts(5.0, 2.0))
        );
    }
}
