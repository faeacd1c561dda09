//! The schedule source: timers that run on the app's primary worker only.
//!
//! Ticks are the same on every worker (multiples of `every` since the Unix
//! epoch, or the cron expression's times in UTC). Each tick is claimed in the
//! object store with put-if-absent before it runs, so even two workers that
//! both believe they are primary for a moment run it once. The last tick run
//! is recorded; a worker that becomes primary runs the newest tick missed
//! since then once, at once (a failover costs a delay, never a tick).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use common::shutdown::Shutdown;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::engine::Engine;
use crate::event::Event;
use crate::manifest::{Flow, Source, Trigger};
use crate::store::{SCHEDULE_STORE, Stores, now_ms};

/// How long a tick's claim is kept: long enough that no late primary can run it again.
const CLAIM_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Starts a runner for every schedule-sourced flow.
pub fn start(
    engine: &Arc<Engine>,
    primary: &watch::Receiver<bool>,
    worker: &str,
    shutdown: &Shutdown,
) {
    let Some(stores) = engine.stores() else {
        return;
    };
    for flow in &engine.app().flows {
        let Some(Source::Schedule(trigger)) = &flow.source else {
            continue;
        };
        let runner = Runner {
            engine: engine.clone(),
            stores: stores.clone(),
            flow: flow.clone(),
            trigger: trigger.clone(),
            worker: worker.to_string(),
        };
        let (primary, sd) = (primary.clone(), shutdown.clone());
        shutdown.spawn("schedule", async move {
            runner.run(primary, sd).await;
            Ok::<_, std::convert::Infallible>(())
        });
    }
}

/// The newest tick at or before `now` (Unix ms), if any after `after`.
pub fn latest_tick(trigger: &Trigger, after: u64, now: u64) -> Option<u64> {
    let tick = match trigger {
        Trigger::Every(period) => {
            let p = period.as_millis().max(1) as u64;
            now - now % p
        }
        Trigger::Cron { schedule, .. } => {
            // Bounded: a schedule missed for a very long time only needs its newest tick.
            let from = utc(after)?;
            schedule
                .after(&from)
                .take(100_000)
                .map(|t| t.timestamp_millis() as u64)
                .take_while(|t| *t <= now)
                .last()?
        }
    };
    (tick > after).then_some(tick)
}

/// The first tick strictly after `now` (Unix ms).
pub fn next_tick(trigger: &Trigger, now: u64) -> Option<u64> {
    match trigger {
        Trigger::Every(period) => {
            let p = period.as_millis().max(1) as u64;
            Some((now / p + 1) * p)
        }
        Trigger::Cron { schedule, .. } => schedule
            .after(&utc(now)?)
            .next()
            .map(|t| t.timestamp_millis() as u64),
    }
}

fn utc(ms: u64) -> Option<DateTime<Utc>> {
    Utc.timestamp_millis_opt(ms as i64).single()
}

struct Runner {
    engine: Arc<Engine>,
    stores: Stores,
    flow: Arc<Flow>,
    trigger: Trigger,
    worker: String,
}

impl Runner {
    fn last_key(&self) -> String {
        format!("{}/last", self.flow.name)
    }

    async fn run(self, mut primary: watch::Receiver<bool>, shutdown: Shutdown) {
        loop {
            // Wait to be primary.
            tokio::select! {
                () = shutdown.triggered() => return,
                r = primary.wait_for(|p| *p) => if r.is_err() { return },
            }
            self.catch_up().await;
            // Run ticks while primary.
            loop {
                let Some(next) = next_tick(&self.trigger, now_ms()) else {
                    tracing::warn!(flow = %self.flow.name, "the schedule has no more ticks");
                    return;
                };
                let wait = Duration::from_millis(next.saturating_sub(now_ms()));
                tokio::select! {
                    () = shutdown.triggered() => return,
                    () = tokio::time::sleep(wait) => {}
                    r = primary.wait_for(|p| !*p) => if r.is_err() { return },
                }
                if !*primary.borrow() {
                    break;
                }
                self.fire(next, false).await;
            }
        }
    }

    /// On becoming primary: runs the newest tick missed since the last run, once.
    async fn catch_up(&self) {
        let last = match self.stores.get(SCHEDULE_STORE, &self.last_key()).await {
            Ok(v) => v.and_then(|v| v.as_u64()),
            Err(e) => {
                tracing::warn!(flow = %self.flow.name, error = %e, "could not read the last tick; not catching up");
                return;
            }
        };
        // A schedule that never ran has nothing to catch up.
        if let Some(last) = last
            && let Some(tick) = latest_tick(&self.trigger, last, now_ms())
        {
            tracing::info!(flow = %self.flow.name, tick, "running a tick missed during the failover");
            self.fire(tick, true).await;
        }
    }

    async fn fire(&self, tick: u64, catch_up: bool) {
        let name = &self.flow.name;
        let claim_key = format!("{name}@{tick}");
        match self
            .stores
            .put_if_absent(SCHEDULE_STORE, &claim_key, &json!(self.worker), CLAIM_TTL)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                tracing::debug!(flow = %name, tick, "tick already run elsewhere");
                return;
            }
            Err(e) => {
                tracing::warn!(flow = %name, tick, error = %e, "could not claim the tick; skipped");
                return;
            }
        }
        let at = utc(tick).map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
        let mut event = Event::new(
            Value::Null,
            json!({ "scheduledAt": at, "tick": tick, "worker": self.worker, "catchUp": catch_up }),
        );
        event.id = claim_key;
        if let Err(e) = self.engine.run(&self.flow, event).await {
            tracing::warn!(flow = %name, tick, error = %e, "scheduled run failed");
        }
        if let Err(e) = self
            .stores
            .put(SCHEDULE_STORE, &self.last_key(), &json!(tick), None)
            .await
        {
            tracing::warn!(flow = %name, tick, error = %e, "could not record the tick");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_ticks_on_a_shared_grid() {
        let t = Trigger::Every(Duration::from_secs(30));
        assert_eq!(next_tick(&t, 61_000), Some(90_000));
        assert_eq!(next_tick(&t, 90_000), Some(120_000));
        assert_eq!(latest_tick(&t, 0, 95_000), Some(90_000));
        assert_eq!(latest_tick(&t, 90_000, 95_000), None);
    }

    #[test]
    fn cron_ticks() {
        let t = Trigger::Cron {
            expr: "0 * * * * *".into(),
            schedule: Box::new("0 * * * * *".parse().unwrap()),
        };
        assert_eq!(next_tick(&t, 61_000), Some(120_000));
        assert_eq!(latest_tick(&t, 0, 185_000), Some(180_000));
        assert_eq!(latest_tick(&t, 180_000, 185_000), None);
    }
}
