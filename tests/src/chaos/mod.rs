//! The chaos harness: the whole fabric as separate processes, a stream of
//! orders through the load balancer, a seeded fault schedule, then a verdict
//! on the history (every accepted order stored, effects counted) and a scan
//! of the data at rest.
//!
//! Shared by `tests/tests/chaos.rs` (short runs) and `bench/chaos` (a long
//! one). One file per job: `harness` (the processes), `load` (the clients),
//! `faults`, `verdict`, `at_rest`, and `report` (what a run returns).

mod at_rest;
mod faults;
mod harness;
mod load;
mod report;
mod verdict;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use control_plane::model::DeployRequest;

pub use faults::Fault;
use harness::{AwsNames, Fabric};
pub use load::Answer;
use load::Load;
pub use report::Report;

/// How long any component may take to come back, and the system to settle.
const WAIT: Duration = Duration::from_secs(90);
/// The workers' lease lock: how soon a dead worker's messages come back.
const LEASE_LOCK: Duration = Duration::from_secs(3);
/// The app under test.
const APP: &str = "orders";
/// The queue the app's `process` flow consumes.
const QUEUE: &str = "incoming";
/// How many deliveries the `process` flow runs at once on one worker
/// (`concurrency` in [`MANIFEST`]): what one killed worker can leave half-done.
const PROCESS_CONCURRENCY: usize = 8;
/// `examples/orders.yaml` with two countable records per delivery: one before
/// `idempotent` (every delivery that reached the flow) and one after the
/// order is stored (every delivery that went through: an *effect*). Both are
/// keyed by order, message id and delivery count, so nothing overwrites them.
pub const MANIFEST: &str = r#"name: orders
flows:
  - name: accept
    source: { http: { method: POST, path: /orders } }
    steps:
      - validate: '.orderId != null and (.orderId | type) == "string"'
      - publish: { queue: incoming }
      - respond: { status: 202, body: '{accepted: .orderId}' }
  - name: process
    source: { queue: { name: incoming, concurrency: 8, max-deliveries: 5 } }
    steps:
      - store: { store: deliveries, key: '"\(.orderId)/\($attributes.messageId)/\($attributes.deliveryCount)"', value: '{deliveryCount: $attributes.deliveryCount, at: now}' }
      - idempotent: { key: '.orderId', ttl: 1d }
      - store: { store: orders, key: '.orderId', value: '. + {status: "stored"}' }
      - store: { store: effects, key: '"\(.orderId)/\($attributes.messageId)/\($attributes.deliveryCount)"', value: '{deliveryCount: $attributes.deliveryCount, at: now}' }
"#;

/// Which backends queue-svc and objectstore-svc use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backends {
    /// Both embedded (redb files in the data directory).
    Embedded,
    /// SQS and DynamoDB, through the emulators (`AWS_ENDPOINT_URL_*`).
    Aws,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The `fabric` binary.
    pub fabric_bin: PathBuf,
    /// The backends.
    pub backends: Backends,
    /// Seeds the fault schedule (printed, so a run can be repeated).
    pub seed: u64,
    /// Concurrent clients.
    pub clients: usize,
    /// Orders per second, over all clients.
    pub rate: u32,
    /// How many faults; the first five are one of each kind in a seeded order.
    pub faults: usize,
    /// The pause between the end of one fault's recovery and the next fault.
    pub fault_every: Duration,
    /// The load goes on until the faults are over and at least this many orders were sent.
    pub min_orders: usize,
}

/// Runs the plan: starts the fabric, deploys `orders` on 3 workers over 3 AZs
/// with persistent, encrypted queues, drives orders through the load balancer
/// while the faults run, lets it settle, and checks the history and what
/// lies at rest.
pub async fn run(plan: &Plan) -> Report {
    let run = run_id(plan.seed);
    println!(
        "chaos: run {run}, backends {:?}, seed {}",
        plan.backends, plan.seed
    );
    let aws = match plan.backends {
        Backends::Aws => Some(AwsNames::deploy(&run).await),
        Backends::Embedded => None,
    };
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("an HTTP client");
    let mut fabric = Fabric::start(plan, aws.as_ref(), &http).await;
    deploy_orders(&mut fabric).await;
    let mut report = Report {
        seed: plan.seed,
        ..Report::default()
    };

    let load = Load::start(plan, &run, &fabric.proxy_addr, &fabric.queues(), &http);
    let injected = faults::inject_all(plan, &mut fabric, &load, &http).await;
    report.faults = injected.described;
    let sent = load.finish(plan.min_orders).await;

    settle(&fabric, &mut report).await;
    verdict::check_history(&fabric, &run, &sent, &mut report).await;
    verdict::check_effects(&fabric, &injected.worker_kills, &mut report).await;
    at_rest::scan(&fabric, &run, aws.as_ref(), &mut report).await;

    drop(fabric);
    if let Some(names) = &aws {
        names.remove().await;
    }
    report
}

/// A short id, unique to this run, that every order id and resource name carries.
fn run_id(seed: u64) -> String {
    let tag = crate::unique_name("x");
    let hash: u64 = tag
        .bytes()
        .fold(seed, |h, b| h.wrapping_mul(31).wrapping_add(b.into()));
    format!("{:08x}", hash as u32)
}

/// Deploys [`MANIFEST`] on 3 workers with persistent, encrypted queues,
/// and checks they stand in three AZs.
async fn deploy_orders(fabric: &mut Fabric) {
    let deployed = fabric
        .client()
        .deploy(&DeployRequest {
            persistent_queues: true,
            ..DeployRequest::of(MANIFEST, 3, 0.2)
        })
        .await
        .expect("orders deploys");
    fabric.app_id = deployed.app.app_id();
    let azs: BTreeSet<String> = fabric.workers().await.into_iter().map(|w| w.az).collect();
    assert_eq!(azs.len(), 3, "three workers over three AZs");
    println!(
        "chaos: {} v{} ready; load and faults start",
        deployed.app.name, deployed.app.version
    );
}

/// Waits until the queue has nothing waiting or leased, then records its dead letters.
async fn settle(fabric: &Fabric, report: &mut Report) {
    report.dead_lettered = fabric.wait_drained(QUEUE).await;
    if report.dead_lettered > 0 {
        report.dead_letters = fabric.dead_letters(QUEUE).await;
    }
}
