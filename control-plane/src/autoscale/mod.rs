//! The autoscaler: every period, each app with a scaling policy is
//! measured (its persistent queues' backlog from queue-svc; CPU and HTTP
//! requests in flight from each ready worker's `/metrics`), [`decide`]
//! says what it should run, and a change is made as `apps scale` makes it
//! (new workers follow the zone spread; leaving ones drain first), under
//! the app's lock and within its tenant's quota. Every change, and every
//! change the quota refused, is an event with its reason.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::api::Api;
use crate::model::{AppRecord, ScalePolicy};

pub mod decide;

use decide::{Change, Signals, Stabilizer};

/// The autoscaler's settings (`[autoscale]` in the control plane's settings).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AutoscaleSettings {
    /// How often apps are measured and decided on.
    #[serde(with = "humantime_serde")]
    pub period: Duration,
    /// How long every recommendation must ask for fewer workers before an
    /// app scales down (and how long after any change).
    #[serde(with = "humantime_serde")]
    pub window: Duration,
}

impl Default for AutoscaleSettings {
    fn default() -> Self {
        AutoscaleSettings {
            period: Duration::from_secs(5),
            window: Duration::from_secs(300),
        }
    }
}

/// The autoscaler's memory between periods.
struct Autoscaler {
    api: Api,
    settings: AutoscaleSettings,
    http: reqwest::Client,
    /// Each app instance's recent recommendations.
    stabilizers: HashMap<String, Stabilizer>,
    /// Each worker's (by handle) last CPU reading: when, and its CPU seconds.
    cpu: HashMap<String, (Instant, f64)>,
    /// Apps a change is being made to.
    busy: Arc<Mutex<HashSet<String>>>,
    /// Apps whose last wanted change the quota refused (told once).
    capped: Arc<Mutex<HashSet<String>>>,
}

/// Runs the autoscaler until `shutdown`.
pub(crate) async fn run(
    api: Api,
    settings: AutoscaleSettings,
    shutdown: common::shutdown::Shutdown,
) {
    let mut a = Autoscaler {
        api,
        settings,
        http: crate::worker_metrics::client(),
        stabilizers: HashMap::new(),
        cpu: HashMap::new(),
        busy: Arc::default(),
        capped: Arc::default(),
    };
    loop {
        a.period().await;
        tokio::select! {
            () = shutdown.triggered() => break,
            () = tokio::time::sleep(settings.period) => {}
        }
    }
}

/// One worker's reading: its CPU seconds and HTTP requests in flight.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Reading {
    cpu_seconds: Option<f64>,
    in_flight: Option<f64>,
}

/// The autoscaler's metrics in a worker's `/metrics` text.
fn reading(text: &str) -> Reading {
    use crate::worker_metrics::value;
    Reading {
        cpu_seconds: value(text, "fabric_worker_cpu_seconds_total"),
        in_flight: value(text, "fabric_worker_http_in_flight"),
    }
}

fn busy(set: &Mutex<HashSet<String>>) -> std::sync::MutexGuard<'_, HashSet<String>> {
    set.lock().unwrap_or_else(|p| p.into_inner())
}

impl Autoscaler {
    /// Measures and decides on every autoscaled app once.
    async fn period(&mut self) {
        let apps: Vec<AppRecord> = self
            .api
            .registry
            .apps()
            .into_iter()
            .filter(|a| a.autoscale.is_some() && a.version > 0)
            .collect();
        let live: HashSet<String> = apps.iter().map(AppRecord::app_id).collect();
        self.stabilizers.retain(|id, _| live.contains(id));
        let mut handles = HashSet::new();
        for app in apps {
            let Some(policy) = app.autoscale.clone() else {
                continue;
            };
            // A canary is promoted or aborted before the app scales again.
            if busy(&self.busy).contains(&app.name)
                || self.api.supervisor.canary(&app.name).is_some()
            {
                continue;
            }
            let (signals, seen) = self.signals(&app, &policy).await;
            handles.extend(seen);
            let want = decide::wanted(&policy, app.workers, &signals);
            let change = self.stabilizers.entry(app.app_id()).or_default().decide(
                Instant::now(),
                self.settings.window,
                app.workers,
                policy.min,
                want,
            );
            if let Some(change) = change {
                busy(&self.busy).insert(app.name.clone());
                let (api, set, capped) = (self.api.clone(), self.busy.clone(), self.capped.clone());
                tokio::spawn(async move {
                    apply(&api, &app, change, &capped).await;
                    busy(&set).remove(&app.name);
                });
            }
        }
        self.cpu.retain(|handle, _| handles.contains(handle));
    }

    /// The app's signals, and the handles of the workers read.
    async fn signals(&mut self, app: &AppRecord, policy: &ScalePolicy) -> (Signals, Vec<String>) {
        let mut s = Signals::default();
        if policy.queue_backlog.is_some() && app.persistent_queues {
            match self.api.queue_counts(app).await {
                Ok(counts) => {
                    s.backlog = Some(
                        counts
                            .queues
                            .iter()
                            .map(|q| q.depth.unwrap_or(0) + q.in_flight.unwrap_or(0))
                            .sum(),
                    )
                }
                Err(e) => {
                    tracing::debug!(app = %app.name, error = %e.message, "queue backlog not read")
                }
            }
        }
        if policy.cpu.is_none() && policy.concurrency.is_none() {
            return (s, Vec::new());
        }
        let Ok(size) = app.size.to_string().parse::<workers::size::WorkerSize>() else {
            return (s, Vec::new());
        };
        let workers = self.api.supervisor.ready_ops(&app.name);
        let http = &self.http;
        let readings = futures::future::join_all(workers.iter().map(|(_, ops)| async move {
            reading(&crate::worker_metrics::scrape(http, *ops).await)
        }))
        .await;
        let now = Instant::now();
        let (mut cpu, mut flight) = (Vec::new(), Vec::new());
        for ((handle, _), r) in workers.iter().zip(readings) {
            if let Some(seconds) = r.cpu_seconds {
                if let Some((at, before)) = self.cpu.get(handle) {
                    let wall = now.duration_since(*at).as_secs_f64();
                    if wall > 0.0 && seconds >= *before {
                        cpu.push((seconds - before) / wall / size.vcores * 100.0);
                    }
                }
                self.cpu.insert(handle.clone(), (now, seconds));
            }
            if let Some(n) = r.in_flight {
                flight.push(n / size.concurrency as f64 * 100.0);
            }
        }
        let mean = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
        s.cpu = mean(&cpu);
        s.concurrency = mean(&flight);
        (s, workers.into_iter().map(|(h, _)| h).collect())
    }
}

/// Makes `change` to `app` as `apps scale` would, under the app's lock,
/// unless the app changed meanwhile (deleted, redeployed, rescaled, its
/// policy turned off); a scale-up past the tenant's quota is not made.
async fn apply(api: &Api, app: &AppRecord, change: Change, capped: &Mutex<HashSet<String>>) {
    let name = app.name.as_str();
    let lock = api.app_lock(name);
    let _held = lock.lock().await;
    let Some(now) = api.registry.app(name) else {
        return;
    };
    if now.app_id() != app.app_id() || now.workers != app.workers || now.autoscale.is_none() {
        return;
    }
    // A version being deployed, or a canary, is let finish first.
    if api.supervisor.changing(name) {
        return;
    }
    let (from, to) = (now.workers, change.workers);
    let events = api.supervisor.events();
    let _claim = match api.claim_quota(&now.tenant, name, (to, now.size)) {
        Ok(claim) => claim,
        Err(e) => {
            // Said once, not every period, until a change is made again.
            if !busy(capped).insert(app.app_id()) {
                return;
            }
            events.emit(
                Some(name),
                "autoscale.capped",
                format!(
                    "{name} did not scale from {from} to {to} workers ({}): {}",
                    change.reason, e.message
                ),
            );
            return;
        }
    };
    busy(capped).remove(&app.app_id());
    let (kind, way) = if to > from {
        ("autoscale.up", "up")
    } else {
        ("autoscale.down", "down")
    };
    events.emit(
        Some(name),
        kind,
        format!(
            "{name} scaling {way} from {from} to {to} workers: {}",
            change.reason
        ),
    );
    if let Err(e) = api.supervisor.scale(name, to).await {
        tracing::warn!(app = %name, error = %e, "an autoscaling change did not complete");
        events.emit(
            Some(name),
            "autoscale.failed",
            format!("{name} did not reach {to} workers: {e}"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_workers_metrics_and_nothing_else() {
        let text = "# HELP fabric_worker_cpu_seconds CPU\n# TYPE fabric_worker_cpu_seconds counter\n\
                    fabric_worker_cpu_seconds_total 12.5\n# TYPE fabric_worker_http_in_flight gauge\n\
                    fabric_worker_http_in_flight 3\nfabric_worker_http_in_flight_other 99\n";
        assert_eq!(
            reading(text),
            Reading {
                cpu_seconds: Some(12.5),
                in_flight: Some(3.0),
            }
        );
        assert_eq!(reading(""), Reading::default());
        let hostile = "fabric_worker_cpu_seconds_total NaN\nfabric_worker_http_in_flight -4\n";
        assert_eq!(reading(hostile), Reading::default());
    }
}
