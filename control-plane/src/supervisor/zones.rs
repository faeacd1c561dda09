//! Availability zones: where a worker goes, an AZ failing and coming back.

use super::health::Restart;
use super::*;

impl Supervisor {
    /// Kills every worker in `az` and moves them to the others.
    pub async fn fail_az(&self, az: &str) -> bool {
        let lost = {
            let mut st = lock(&self.inner.state);
            let Some(zone) = st.azs.iter_mut().find(|a| a.name == az) else {
                return false;
            };
            zone.up = false;
            self.inner
                .events
                .emit(None, "az.down", format!("AZ {az} is down"));
            let now = Instant::now();
            let mut lost = Vec::new();
            for run in st.apps.values_mut() {
                let name = run.record.name.clone();
                for slot in run.slots.iter_mut().filter(|s| s.az == az) {
                    lost.extend(self.down_then(&name, slot, now, "lost with its AZ", Restart::Now));
                }
            }
            lost
        };
        self.publish_routes();
        self.kill(lost).await;
        true
    }

    /// Brings `az` back; apps whose workers crowd another AZ move one back.
    pub async fn restore_az(&self, az: &str) -> bool {
        let moves = {
            let mut st = lock(&self.inner.state);
            let Some(zone) = st.azs.iter_mut().find(|a| a.name == az) else {
                return false;
            };
            zone.up = true;
            self.inner
                .events
                .emit(None, "az.up", format!("AZ {az} is up"));
            let mut moves = Vec::new();
            for run in st.apps.values_mut() {
                let version = run.record.version;
                let current: Vec<&Slot> =
                    run.slots.iter().filter(|s| s.version == version).collect();
                if current.len() < 2 || current.iter().any(|s| s.az == az) {
                    continue;
                }
                // Move one worker from the most crowded AZ.
                let mut counts: BTreeMap<&str, u32> = BTreeMap::new();
                current
                    .iter()
                    .for_each(|s| *counts.entry(s.az.as_str()).or_default() += 1);
                let Some((&crowded, &n)) = counts.iter().max_by_key(|(_, n)| **n) else {
                    continue;
                };
                if n < 2 {
                    continue;
                }
                let index = current
                    .iter()
                    .filter(|s| s.az == crowded)
                    .map(|s| s.index)
                    .max()
                    .unwrap_or(1);
                moves.push((run.record.name.clone(), index));
            }
            moves
        };
        for (app, index) in moves {
            self.move_worker(&app, index, az).await;
        }
        true
    }

    pub(super) async fn move_worker(&self, app: &str, index: u32, to: &str) {
        let old = {
            let mut st = lock(&self.inner.state);
            let Some(run) = st.apps.get_mut(app) else {
                return;
            };
            let version = run.record.version;
            let Some(slot) = run
                .slots
                .iter_mut()
                .find(|s| s.version == version && s.index == index)
            else {
                return;
            };
            self.inner.events.emit(
                Some(app),
                "worker.moved",
                format!(
                    "{app}-{index} moves from AZ {} to AZ {to} to restore the spread",
                    slot.az
                ),
            );
            slot.state = WorkerState::Draining;
            let running = slot.running.take();
            slot.az = to.to_string();
            running
        };
        self.publish_routes();
        if let Some(worker) = old {
            self.routes_settled().await;
            self.stop(vec![worker]).await;
        }
        let mut st = lock(&self.inner.state);
        if let Some(run) = st.apps.get_mut(app) {
            let version = run.record.version;
            if let Some(slot) = run
                .slots
                .iter_mut()
                .find(|s| s.version == version && s.index == index)
            {
                slot.state = WorkerState::Down;
                slot.next_restart = Instant::now();
            }
        }
    }
}

/// Where a new app's `workers` go over `azs`, all up: worker n in the n-th.
pub fn placements(azs: &[String], workers: u32) -> Vec<String> {
    let up: Vec<AzStatus> = azs
        .iter()
        .map(|a| AzStatus {
            name: a.clone(),
            up: true,
        })
        .collect();
    let mut taken = Vec::new();
    for index in 1..=workers {
        taken.push(place(&up, &taken, index));
    }
    taken
}

/// The AZ for a new worker: the up AZ holding the fewest of `taken`, ties to
/// the one after the worker's round-robin position.
pub(super) fn place(azs: &[AzStatus], taken: &[String], index: u32) -> String {
    let up: Vec<&AzStatus> = azs.iter().filter(|a| a.up).collect();
    if up.is_empty() {
        // Nowhere is up: stay in the round-robin AZ and wait for it.
        return azs
            .get((index as usize - 1) % azs.len().max(1))
            .map_or_else(|| "a".into(), |a| a.name.clone());
    }
    let start = (index as usize).saturating_sub(1) % up.len();
    (0..up.len())
        .map(|i| up[(start + i) % up.len()])
        .min_by_key(|a| taken.iter().filter(|t| **t == a.name).count())
        .map(|a| a.name.clone())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zones(up: &[(&str, bool)]) -> Vec<AzStatus> {
        up.iter()
            .map(|(n, u)| AzStatus {
                name: n.to_string(),
                up: *u,
            })
            .collect()
    }

    #[test]
    fn placement_spreads_and_avoids_down_zones() {
        let azs = zones(&[("a", true), ("b", true), ("c", true)]);
        let mut taken = Vec::new();
        for i in 1..=4 {
            let az = place(&azs, &taken, i);
            taken.push(az);
        }
        assert_eq!(taken, ["a", "b", "c", "a"]);
        let azs = zones(&[("a", true), ("b", false), ("c", true)]);
        assert_eq!(place(&azs, &["a".into()], 2), "c");
        assert_ne!(place(&azs, &[], 2), "b");
        // Two workers never share one AZ while another is up.
        let azs = zones(&[("a", true), ("b", true)]);
        assert_ne!(place(&azs, &["a".into()], 1), "a");
    }
}
