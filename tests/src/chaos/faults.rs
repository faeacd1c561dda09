//! Fault injection: a seeded schedule of crashes (workers, an AZ, queue-svc,
//! objectstore-svc, the control plane), each followed by a wait until the
//! fabric has recovered.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::Plan;
use super::harness::Fabric;
use super::load::Load;

/// One kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `kill -9` of a random worker.
    KillWorker,
    /// `fabric az fail` of a random AZ, then `restore`.
    AzFail,
    /// `kill -9` of queue-svc, then a restart on the same port.
    RestartQueue,
    /// `kill -9` of objectstore-svc, then a restart on the same port.
    RestartStore,
    /// `kill -9` of the control plane, then a restart that adopts the workers.
    RestartControlPlane,
}

const ALL_FAULTS: [Fault; 5] = [
    Fault::KillWorker,
    Fault::AzFail,
    Fault::RestartQueue,
    Fault::RestartStore,
    Fault::RestartControlPlane,
];

/// The workers the app runs on, one per AZ at the start.
const WORKERS: usize = 3;
/// The AZs of the fabric under test.
const AZS: [&str; 3] = ["a", "b", "c"];

/// What the faults did.
#[derive(Debug, Default)]
pub(super) struct Injected {
    /// Each fault, described, in order.
    pub(super) described: Vec<String>,
    /// When (Unix seconds) a worker was killed: one entry per worker.
    pub(super) worker_kills: Vec<f64>,
}

/// `plan.faults` faults: one of each kind first, in a seeded order, then
/// random ones; and the generator that goes on choosing their targets.
fn schedule(plan: &Plan) -> (Vec<Fault>, StdRng) {
    let mut rng = StdRng::seed_from_u64(plan.seed);
    let mut faults = ALL_FAULTS.to_vec();
    faults.shuffle(&mut rng);
    while faults.len() < plan.faults {
        faults.push(ALL_FAULTS[rng.random_range(0..ALL_FAULTS.len())]);
    }
    faults.truncate(plan.faults);
    (faults, rng)
}

/// Runs the plan's faults, `plan.fault_every` apart, while `load` runs.
pub(super) async fn inject_all(
    plan: &Plan,
    fabric: &mut Fabric,
    load: &Load,
    http: &reqwest::Client,
) -> Injected {
    let (faults, mut rng) = schedule(plan);
    let mut injected = Injected::default();
    for fault in faults {
        tokio::time::sleep(plan.fault_every).await;
        let at = load.sent();
        let what = inject(fabric, fault, &mut rng, http, &mut injected.worker_kills).await;
        println!(
            "chaos: fault {} at order {at}: {what}",
            injected.described.len() + 1
        );
        injected.described.push(what);
    }
    injected
}

/// Injects one fault and waits until the fabric has recovered from it;
/// the times at which workers were killed go to `worker_kills`, one per worker.
async fn inject(
    fabric: &mut Fabric,
    fault: Fault,
    rng: &mut StdRng,
    http: &reqwest::Client,
    worker_kills: &mut Vec<f64>,
) -> String {
    match fault {
        Fault::KillWorker => {
            let workers = fabric.workers().await;
            let victim = &workers[rng.random_range(0..workers.len())];
            let pid = victim.pid.expect("a local worker has a pid");
            crate::process::kill9_pid(pid);
            worker_kills.push(unix_now());
            let what = format!("kill -9 worker {} (pid {pid})", victim.id);
            fabric.wait_workers(WORKERS, None).await;
            what
        }
        Fault::AzFail => {
            let az = AZS[rng.random_range(0..AZS.len())];
            let in_az = fabric.workers().await.iter().filter(|w| w.az == az).count();
            fabric.client().az(az, "fail").await.expect("az fail");
            // After the call: its workers are dead by then.
            let at = unix_now();
            worker_kills.extend(std::iter::repeat_n(at, in_az));
            fabric.wait_workers(WORKERS, Some(az)).await;
            fabric.client().az(az, "restore").await.expect("az restore");
            fabric.wait_workers(WORKERS, None).await;
            format!("az fail + restore {az}")
        }
        Fault::RestartQueue => {
            fabric.queue.restart(http).await;
            "kill -9 + restart queue-svc".into()
        }
        Fault::RestartStore => {
            fabric.store.restart(http).await;
            "kill -9 + restart objectstore-svc".into()
        }
        Fault::RestartControlPlane => {
            fabric.control.restart(http).await;
            fabric.wait_workers(WORKERS, None).await;
            "kill -9 + restart control-plane".into()
        }
    }
}

/// Now, in Unix seconds (as jq's `now`, which the effect records hold).
fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
