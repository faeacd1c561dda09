//! Queue depths over the last 15 minutes, for the app page's chart: every
//! [`EVERY`] the backlog and dead letters of each persistent queue of each app, kept in memory
//! per app instance for [`KEPT`] samples. Transient queues live in the
//! workers and are not sampled.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use crate::api::Api;

/// How often depths are sampled.
pub const EVERY: Duration = Duration::from_secs(5);
/// Samples kept per app: 15 minutes' worth.
pub const KEPT: usize = 180;
/// Queues charted per app (the first by name): what a sample holds stays
/// small whatever a manifest declares.
pub const CHARTED: usize = 8;

/// One sample of an app's queues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// Unix milliseconds.
    pub at_ms: u64,
    /// Each queue's backlog (messages waiting and in flight), and its
    /// dead letters as `{queue} (dead letters)`.
    pub depths: BTreeMap<String, u64>,
}

/// The samples of every app instance.
#[derive(Default)]
pub struct Samples(Mutex<HashMap<String, VecDeque<Sample>>>);

impl Samples {
    /// Adds `sample` for app instance `app_id`, dropping what is older than [`KEPT`] samples.
    pub fn add(&self, app_id: &str, sample: Sample) {
        let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let kept = all.entry(app_id.to_string()).or_default();
        if kept.len() == KEPT {
            kept.pop_front();
        }
        kept.push_back(sample);
    }

    /// App instance `app_id`'s samples, oldest first.
    pub fn of(&self, app_id: &str) -> Vec<Sample> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(app_id)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Forgets every app instance not in `live`.
    fn retain(&self, live: &std::collections::HashSet<String>) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|id, _| live.contains(id));
    }

    /// Samples every app's persistent queues every [`EVERY`] until `shutdown`.
    pub async fn run(&self, api: Api, shutdown: common::shutdown::Shutdown) {
        loop {
            self.sample(&api).await;
            tokio::select! {
                () = shutdown.triggered() => break,
                () = tokio::time::sleep(EVERY) => {}
            }
        }
    }

    /// One round: each app with persistent queues, one at a time.
    pub async fn sample(&self, api: &Api) {
        let apps = api.registry.apps();
        let live = apps.iter().map(|a| a.app_id()).collect();
        self.retain(&live);
        for app in apps.into_iter().filter(|a| a.persistent_queues) {
            match api.queue_counts(&app).await {
                Ok(counts) => self.add(
                    &app.app_id(),
                    Sample {
                        at_ms: crate::access::now_ms(),
                        depths: {
                            let mut queues = counts.queues;
                            queues.sort_by(|a, b| a.name.cmp(&b.name));
                            queues
                        }
                        .into_iter()
                        .take(CHARTED)
                        .flat_map(|q| {
                            let backlog = q.depth.unwrap_or(0) + q.in_flight.unwrap_or(0);
                            let dead = (
                                format!("{} (dead letters)", q.name),
                                q.dlq_depth.unwrap_or(0),
                            );
                            [(q.name, backlog), dead]
                        })
                        .collect(),
                    },
                ),
                Err(e) => {
                    tracing::debug!(app = %app.name, error = %e.message, "queue depths not sampled")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_fifteen_minutes() {
        let samples = Samples::default();
        for i in 0..(KEPT as u64 + 5) {
            samples.add(
                "a",
                Sample {
                    at_ms: i,
                    depths: BTreeMap::from([("q".to_string(), i)]),
                },
            );
        }
        let kept = samples.of("a");
        assert_eq!(kept.len(), KEPT);
        assert_eq!(kept[0].at_ms, 5);
        assert!(samples.of("b").is_empty());
        samples.retain(&std::collections::HashSet::new());
        assert!(samples.of("a").is_empty());
    }
}
