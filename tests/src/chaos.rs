//! The chaos harness: the whole fabric as separate processes, a stream of
//! orders through the load balancer, a seeded fault schedule, then a check of
//! the history (every accepted order stored, effects counted) and of the data
//! at rest.
//!
//! Shared by `tests/tests/chaos.rs` (short runs) and `bench/chaos` (a long one).

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::token::{Scope, TokenKey};
use control_plane::model::{DeployRequest, WorkerInfo, WorkerState};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// How long any component may take to come back, and the system to settle.
const WAIT: Duration = Duration::from_secs(90);
/// The workers' lease lock: how soon a dead worker's messages come back.
const LEASE_LOCK: Duration = Duration::from_secs(3);
/// The app under test.
const APP: &str = "orders";
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

/// What a client saw for one order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// 202 Accepted.
    Accepted,
    /// Another status.
    Status(u16),
    /// No answer (connection refused or reset, timeout).
    NoAnswer,
}

/// The counts of one run.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// The seed of the fault schedule.
    pub seed: u64,
    /// Orders sent.
    pub sent: usize,
    /// Orders answered 202.
    pub accepted: usize,
    /// Orders answered with another status.
    pub refused: usize,
    /// The refused orders by status.
    pub statuses: BTreeMap<u16, usize>,
    /// Orders with no answer.
    pub no_answer: usize,
    /// Of the refused or unanswered orders, how many were stored all the same.
    pub unconfirmed_stored: usize,
    /// Accepted orders not in the `orders` store (the first few ids in `lost_ids`).
    pub lost: usize,
    /// Up to ten lost orders, each with what the stores hold about it.
    pub lost_ids: Vec<String>,
    /// Effects beyond the first per order whose earlier delivery did not
    /// visibly fail: a second processing `idempotent` should have stopped.
    pub duplicated_effects: usize,
    /// Effects repeated because the earlier delivery failed after them (its
    /// rollback is in the worker's log): at-least-once, allowed.
    pub repeated_effects: usize,
    /// Up to ten orders with a duplicated effect, with their effect records.
    pub duplicated_ids: Vec<String>,
    /// Deliveries that reached the flow with a delivery count above 1.
    pub redelivered: usize,
    /// Accepted orders published a second time as another message.
    pub resent: usize,
    /// Deliveries `idempotent` stopped as duplicates (from the workers' logs).
    pub duplicates_caught: usize,
    /// Messages left in the dead-letter queue.
    pub dead_lettered: u64,
    /// Up to ten of them: the body, deliveries and last error of each.
    pub dead_letters: Vec<String>,
    /// The faults injected, in order.
    pub faults: Vec<String>,
    /// Plaintext found at rest (empty when none).
    pub at_rest_leaks: Vec<String>,
    /// What the at-rest check read (raw messages, items, bytes of files).
    pub at_rest_read: String,
}

impl Report {
    /// The counts on one line.
    pub fn counts(&self) -> String {
        format!(
            "accepted={} lost={} duplicated_effects={} redelivered={} faults={} \
             repeated_effects={} resent={} duplicates_caught={} dead_lettered={} sent={} refused={} {:?} no_answer={} unconfirmed_stored={}",
            self.accepted,
            self.lost,
            self.duplicated_effects,
            self.redelivered,
            self.faults.len(),
            self.repeated_effects,
            self.resent,
            self.duplicates_caught,
            self.dead_lettered,
            self.sent,
            self.refused,
            self.statuses,
            self.no_answer,
            self.unconfirmed_stored
        )
    }
}

/// A free port on loopback (bound once and released), kept for the whole run.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// One component process, restartable with the same command.
struct Service {
    name: &'static str,
    bin: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    /// Its base URL (fixed for the run).
    url: String,
    child: Option<Child>,
}

impl Service {
    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("the service's log file");
        let mut cmd = crate::clean_command(&self.bin);
        cmd.args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log);
        self.child = Some(
            cmd.spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.name)),
        );
    }

    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.wait();
        }
    }

    /// SIGTERM, then SIGKILL after `grace`.
    fn stop(&mut self, grace: Duration) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            let deadline = std::time::Instant::now() + grace;
            while std::time::Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.wait();
        }
    }

    async fn wait_ready(&mut self, http: &reqwest::Client) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Ok(r) = http.get(format!("{}/readyz", self.url)).send().await
                && r.status() == 200
            {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!(
                    "{} exited ({status}); see {}",
                    self.name,
                    self.log.display()
                );
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} never turned ready; see {}",
                self.name,
                self.log.display()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    async fn restart(&mut self, http: &reqwest::Client) {
        self.kill9();
        self.start();
        self.wait_ready(http).await;
    }
}

/// The fabric under test: four component processes sharing one data directory.
struct Fabric {
    dir: tempfile::TempDir,
    queue: Service,
    store: Service,
    proxy: Service,
    control: Service,
    /// The load balancer's data path, `host:port`.
    proxy_addr: String,
    admin_key: String,
    /// Signs the harness's own tokens for the app's instance.
    key: TokenKey,
    /// The app instance's id at the services, once deployed.
    app_id: String,
}

impl Drop for Fabric {
    fn drop(&mut self) {
        // A control plane stopped cleanly stops its workers.
        self.control.stop(Duration::from_secs(15));
        // Any worker left (a panic with the control plane down) is found by
        // the data directory in its environment, which no other process has.
        kill_workers_of(self.dir.path());
        self.proxy.kill9();
        self.store.kill9();
        self.queue.kill9();
    }
}

/// SIGKILLs every process running in `dir` or under it: our workers, which
/// start in its `workers` directory with an otherwise empty environment.
fn kill_workers_of(dir: &Path) {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if let Ok(cwd) = std::fs::read_link(entry.path().join("cwd"))
            && cwd.starts_with(dir)
            && pid != std::process::id() as i32
        {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// The unique names of one run's AWS resources.
struct AwsNames {
    sqs_prefix: String,
    table: String,
    /// The control plane's registry, so its `kill -9` and restart are
    /// recovered from DynamoDB too.
    registry_table: String,
}

impl Fabric {
    async fn start(plan: &Plan, aws: Option<&AwsNames>, http: &reqwest::Client) -> Self {
        // CHAOS_KEEP=1 keeps the data directory (logs, stores) for a post-mortem.
        let dir = tempfile::Builder::new()
            .prefix("chaos")
            .disable_cleanup(std::env::var_os("CHAOS_KEEP").is_some())
            .tempdir()
            .expect("a temporary directory");
        let data = dir.path();
        println!("chaos: data in {}", data.display());
        // Made before anything starts, so every component shares them.
        let key = TokenKey::load_or_generate(&data.join(common::secrets::SECRET_FILE))
            .expect("the fabric secret");
        common::envelope::Keyring::load_or_generate(&data.join(common::secrets::MASTER_KEY_FILE))
            .expect("the master key");
        std::fs::create_dir_all(data.join("logs")).expect("the logs directory");
        let (q, s, a, p, c) = (
            free_port(),
            free_port(),
            free_port(),
            free_port(),
            free_port(),
        );
        let service = |name: &'static str, port: u16, extra: &[(&str, String)]| {
            let mut env: Vec<(String, String)> = vec![
                ("FABRIC_DATA_DIR".into(), data.display().to_string()),
                ("FABRIC_LISTEN".into(), format!("127.0.0.1:{port}")),
                ("FABRIC_LOG_FORMAT".into(), "json".into()),
                ("RUST_LOG".into(), "info".into()),
            ];
            env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
            let mut args = vec!["serve".to_string(), name.to_string()];
            if name == "control-plane" {
                args.extend([
                    "--config".into(),
                    data.join("control-plane.toml").display().to_string(),
                ]);
            }
            Service {
                name,
                bin: plan.fabric_bin.clone(),
                args,
                env,
                log: data.join("logs").join(format!("{name}.log")),
                url: format!("http://127.0.0.1:{port}"),
                child: None,
            }
        };
        let (queue_env, store_env) = match aws {
            None => (
                vec![("FABRIC_BACKEND", "embedded".to_string())],
                vec![("FABRIC_BACKEND", "embedded".to_string())],
            ),
            Some(n) => (
                vec![
                    ("FABRIC_BACKEND", "sqs".to_string()),
                    ("FABRIC_SQS_PREFIX", n.sqs_prefix.clone()),
                ],
                vec![
                    ("FABRIC_BACKEND", "dynamodb".to_string()),
                    ("FABRIC_TABLE", n.table.clone()),
                ],
            ),
        };
        let queue = service("queue-svc", q, &queue_env);
        let store = service("objectstore-svc", s, &store_env);
        let proxy = service(
            "lb-proxy",
            a,
            &[("FABRIC_PROXY_LISTEN", format!("127.0.0.1:{p}"))],
        );
        // Lists are clearest in TOML; the rest comes from the environment.
        std::fs::write(
            data.join("control-plane.toml"),
            format!(
                "routes_push = [\"http://127.0.0.1:{a}/routes\"]\n\
                 queue_url = \"{}\"\nobjectstore_url = \"{}\"\nproxy_port = {p}\n\
                 azs = [\"a\", \"b\", \"c\"]\n",
                queue.url, store.url
            ),
        )
        .expect("the control plane's config");
        // Workers inherit the control plane's environment: a short lease
        // lock brings a killed worker's messages back in seconds, not 30.
        let mut control_env = vec![("FABRIC_LEASE_LOCK", format!("{}s", LEASE_LOCK.as_secs()))];
        if let Some(n) = aws {
            control_env.push(("FABRIC_REGISTRY_TABLE", n.registry_table.clone()));
        }
        let control = service("control-plane", c, &control_env);
        let mut fabric = Fabric {
            dir,
            queue,
            store,
            proxy,
            control,
            proxy_addr: format!("127.0.0.1:{p}"),
            admin_key: String::new(),
            key,
            app_id: APP.to_string(),
        };
        for svc in [
            &mut fabric.queue,
            &mut fabric.store,
            &mut fabric.proxy,
            &mut fabric.control,
        ] {
            svc.start();
            svc.wait_ready(http).await;
        }
        fabric.admin_key = control_plane::admin_key(fabric.dir.path()).expect("the admin key");
        fabric
    }

    fn client(&self) -> control_plane::client::Client {
        control_plane::client::Client::new(&self.control.url, &self.admin_key)
    }

    /// A worker token for the app's instance, as the harness's own.
    fn token(&self) -> String {
        self.key
            .issue(&self.app_id, Scope::Worker, Duration::from_secs(24 * 3600))
    }

    fn queues(&self) -> queue_svc::client::Client {
        queue_svc::client::Client::new(&self.queue.url, &self.app_id, &self.token())
    }

    fn stores(&self) -> objectstore_svc::client::Client {
        objectstore_svc::client::Client::new(&self.store.url, &self.app_id, &self.token())
            .expect("a valid URL")
    }

    async fn workers(&self) -> Vec<WorkerInfo> {
        self.client()
            .workers(APP)
            .await
            .expect("the control plane lists the workers")
    }

    /// Waits until `n` workers are ready, none in `avoid`.
    async fn wait_workers(&self, n: usize, avoid: Option<&str>) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let ws = self.client().workers(APP).await.unwrap_or_default();
            let ready = ws
                .iter()
                .filter(|w| w.state == WorkerState::Ready && Some(w.az.as_str()) != avoid)
                .count();
            if ready == n && ws.len() == n {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "never saw {n} ready workers (avoiding {avoid:?}): {ws:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// What the stores hold about one order: its claim, whether it is stored,
    /// its deliveries and effects.
    async fn explain(&self, order: &str) -> String {
        let client = self.stores();
        let mut out = format!("{order}:");
        let claim = client
            .get("_idempotent", &format!("process/{order}"))
            .await
            .ok()
            .flatten()
            .map(|f| String::from_utf8_lossy(&f.value).into_owned());
        out.push_str(&format!(" claim {claim:?};"));
        let stored = client.get("orders", order).await.map(|f| f.is_some());
        out.push_str(&format!(" in orders (by get) {stored:?};"));
        for store in ["deliveries", "effects"] {
            let page = client
                .list(store, &format!("{order}/"), None, Some(100))
                .await;
            for key in page.map(|p| p.keys).unwrap_or_default() {
                let value = client
                    .get(store, &key.key)
                    .await
                    .ok()
                    .flatten()
                    .map(|f| String::from_utf8_lossy(&f.value).into_owned());
                out.push_str(&format!(" {store} {} {value:?};", key.key));
            }
        }
        out
    }

    /// Every key of `store`, paging.
    async fn keys(&self, store: &str) -> Vec<String> {
        crate::backing::all_keys(&self.stores(), store)
            .await
            .unwrap_or_else(|e| panic!("list store {store}: {e}"))
    }

    /// Injects one fault and waits until the fabric has recovered from it;
    /// the times (Unix seconds) at which workers were killed go to `kills`.
    async fn inject(
        &mut self,
        fault: Fault,
        rng: &mut StdRng,
        http: &reqwest::Client,
        kills: &mut Vec<f64>,
    ) -> String {
        match fault {
            Fault::KillWorker => {
                let ws = self.workers().await;
                let w = &ws[rng.random_range(0..ws.len())];
                let pid = w.pid.expect("a local worker has a pid");
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                kills.push(unix_now());
                let what = format!("kill -9 worker {} (pid {pid})", w.id);
                self.wait_workers(3, None).await;
                what
            }
            Fault::AzFail => {
                let az = ["a", "b", "c"][rng.random_range(0..3)];
                self.client().az(az, "fail").await.expect("az fail");
                // After the call: its workers are dead by then.
                kills.push(unix_now());
                self.wait_workers(3, Some(az)).await;
                self.client().az(az, "restore").await.expect("az restore");
                self.wait_workers(3, None).await;
                format!("az fail + restore {az}")
            }
            Fault::RestartQueue => {
                self.queue.restart(http).await;
                "kill -9 + restart queue-svc".into()
            }
            Fault::RestartStore => {
                self.store.restart(http).await;
                "kill -9 + restart objectstore-svc".into()
            }
            Fault::RestartControlPlane => {
                self.control.restart(http).await;
                self.wait_workers(3, None).await;
                "kill -9 + restart control-plane".into()
            }
        }
    }
}

/// The orders sent so far and what each got.
#[derive(Default)]
struct History {
    answers: Mutex<Vec<(usize, Answer)>>,
    resent: AtomicUsize,
    next: AtomicUsize,
    stop: AtomicBool,
}

/// One client: POSTs unique orders at its share of the rate until stopped,
/// never retrying, recording each answer.
///
/// Every tenth accepted order is also published once more, straight to the
/// app's queue as a second message: what a client re-sending after a lost
/// answer, or a queue delivering twice, produces. `idempotent` must stop it.
async fn client(
    history: Arc<History>,
    http: reqwest::Client,
    proxy: String,
    run: String,
    every: Duration,
    queues: queue_svc::client::Client,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !history.stop.load(Ordering::SeqCst) {
        tick.tick().await;
        let n = history.next.fetch_add(1, Ordering::SeqCst);
        let body = serde_json::json!({
            "orderId": format!("c-{run}-{n}"),
            "n": n,
            "card": format!("pii-{run}-{n}"),
        });
        let answer = match http
            .post(format!("http://{proxy}/orders"))
            .header("host", "orders.fabric.localhost")
            .json(&body)
            .send()
            .await
        {
            Ok(r) if r.status() == 202 => Answer::Accepted,
            Ok(r) => Answer::Status(r.status().as_u16()),
            Err(_) => Answer::NoAnswer,
        };
        if answer == Answer::Accepted && n.is_multiple_of(10) {
            let again =
                serde_json::json!({"payload": body, "correlationId": format!("resent-{n}")});
            if queues
                .publish_batch("incoming", vec![again.to_string()])
                .await
                .is_ok()
            {
                history.resent.fetch_add(1, Ordering::SeqCst);
            }
        }
        history.answers.lock().expect("history").push((n, answer));
    }
}

/// Now, in Unix seconds (as jq's `now`).
fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Parses `{orderId}/{messageId}/{deliveryCount}`.
fn split_record(key: &str) -> Option<(&str, &str, u32)> {
    let mut parts = key.rsplitn(3, '/');
    let count = parts.next()?.parse().ok()?;
    let message = parts.next()?;
    let order = parts.next()?;
    Some((order, message, count))
}

/// Runs the plan: starts the fabric, deploys `orders` on 3 workers over 3 AZs
/// with persistent, encrypted queues, drives orders through the load balancer
/// while the faults run, lets it settle, and checks the history and what
/// lies at rest.
pub async fn run(plan: &Plan) -> Report {
    let run = {
        let tag = crate::unique_name("x");
        let n: u64 = tag
            .bytes()
            .fold(plan.seed, |h, b| h.wrapping_mul(31).wrapping_add(b.into()));
        format!("{:08x}", n as u32)
    };
    println!(
        "chaos: run {run}, backends {:?}, seed {}",
        plan.backends, plan.seed
    );
    let aws = (plan.backends == Backends::Aws).then(|| {
        crate::Emulators::from_env();
        AwsNames {
            sqs_prefix: format!("ch{run}-"),
            table: format!("chaos-{run}"),
            registry_table: format!("chaos-{run}-registry"),
        }
    });
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("an HTTP client");
    let mut fabric = Fabric::start(plan, aws.as_ref(), &http).await;
    let app = fabric
        .client()
        .deploy(&DeployRequest {
            name: None,
            manifest: MANIFEST.to_string(),
            workers: 3,
            size: 0.2,
            persistent_queues: true,
            encrypt_queues: true,
        })
        .await
        .expect("orders deploys");
    fabric.app_id = app.app.app_id();
    let azs: BTreeSet<String> = fabric.workers().await.into_iter().map(|w| w.az).collect();
    assert_eq!(azs.len(), 3, "three workers over three AZs");
    println!(
        "chaos: {} v{} ready; load and faults start",
        app.app.name, app.app.version
    );

    // The load.
    let history = Arc::new(History::default());
    let every = Duration::from_secs_f64(plan.clients as f64 / f64::from(plan.rate.max(1)));
    let clients: Vec<_> = (0..plan.clients)
        .map(|_| {
            tokio::spawn(client(
                history.clone(),
                http.clone(),
                fabric.proxy_addr.clone(),
                run.clone(),
                every,
                fabric.queues(),
            ))
        })
        .collect();

    // The faults: one of each kind first, in a seeded order, then random ones.
    let mut rng = StdRng::seed_from_u64(plan.seed);
    let mut schedule = ALL_FAULTS.to_vec();
    schedule.shuffle(&mut rng);
    while schedule.len() < plan.faults {
        schedule.push(ALL_FAULTS[rng.random_range(0..ALL_FAULTS.len())]);
    }
    schedule.truncate(plan.faults);
    let mut report = Report {
        seed: plan.seed,
        ..Report::default()
    };
    let mut kills = Vec::new();
    for fault in schedule {
        tokio::time::sleep(plan.fault_every).await;
        let at = history.next.load(Ordering::SeqCst);
        let what = fabric.inject(fault, &mut rng, &http, &mut kills).await;
        println!(
            "chaos: fault {} at order {at}: {what}",
            report.faults.len() + 1
        );
        report.faults.push(what);
    }
    while history.next.load(Ordering::SeqCst) < plan.min_orders {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    history.stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.expect("a client task");
    }

    // Settle: nothing waiting, nothing leased. A backlog may take a while
    // to drain; only a queue that stops draining for WAIT fails.
    let queues = fabric.queues();
    let mut deadline = tokio::time::Instant::now() + WAIT;
    let mut left = u64::MAX;
    loop {
        // An error keeps the clock running: a queue that cannot be read is
        // not draining either.
        match queues.stats("incoming").await {
            Ok(s) if s.depth == 0 && s.in_flight == 0 => {
                report.dead_lettered = s.dlq_depth;
                break;
            }
            Ok(s) if s.depth + s.in_flight < left => {
                left = s.depth + s.in_flight;
                deadline = tokio::time::Instant::now() + WAIT;
            }
            Ok(s) => assert!(
                tokio::time::Instant::now() < deadline,
                "the queue stopped draining: {s:?}"
            ),
            Err(e) => assert!(
                tokio::time::Instant::now() < deadline,
                "the queue cannot be read: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    if report.dead_lettered > 0 {
        let peek = queue_svc::client::LeaseOptions {
            max: 10,
            wait: Duration::from_secs(1),
            lock: Duration::from_secs(1),
        };
        for m in queues
            .lease_dead("incoming", peek)
            .await
            .unwrap_or_default()
        {
            report.dead_letters.push(format!(
                "{} after {} deliveries: {:?}",
                m.body, m.delivery_count, m.last_error
            ));
        }
    }

    // The history against what was stored.
    let answers = std::mem::take(&mut *history.answers.lock().expect("history"));
    let id = |n: usize| format!("c-{run}-{n}");
    let stored: BTreeSet<String> = fabric.keys("orders").await.into_iter().collect();
    report.sent = answers.len();
    report.resent = history.resent.load(Ordering::SeqCst);
    for (n, answer) in &answers {
        match answer {
            Answer::Accepted => {
                report.accepted += 1;
                if !stored.contains(&id(*n)) {
                    report.lost += 1;
                    if report.lost_ids.len() < 10 {
                        report.lost_ids.push(fabric.explain(&id(*n)).await);
                    }
                }
            }
            Answer::Status(status) => {
                report.refused += 1;
                *report.statuses.entry(*status).or_default() += 1;
            }
            Answer::NoAnswer => report.no_answer += 1,
        }
        if *answer != Answer::Accepted && stored.contains(&id(*n)) {
            report.unconfirmed_stored += 1;
        }
    }
    // Effects: one record per delivery that went through `idempotent` and
    // stored the order. For an order with two, the earlier delivery decides:
    // - it completed (its flow ended well and only its ack failed, which the
    //   worker logs): the later run is a *duplicate* idempotent should have
    //   stopped;
    // - it visibly failed after its effects (the worker logged its rollback),
    //   or a worker was killed within a lease lock after its effect (it may
    //   have died before settling its claim): the later run is a *repeat*,
    //   at-least-once for a delivery that never completed, which idempotent
    //   rightly lets through;
    // - nothing explains it: a duplicate.
    let worker_logs = files_in(&fabric.dir.path().join("workers"));
    // A worker whose drain outlived its grace period exits (or is killed by
    // the control plane) with deliveries half-way through: a kill.
    let mut logs = worker_logs.clone();
    logs.push(fabric.control.log.clone());
    kills.extend(logged_times(
        &logs,
        &[
            "grace period expired",
            "a worker did not stop within its grace period",
        ],
    ));
    let failed = logged_deliveries(&worker_logs, &["rolled back", "dead-lettered"]);
    let completed = logged_deliveries(&worker_logs, &["ack failed"]);
    let mut effects: BTreeMap<String, Vec<(u32, String)>> = BTreeMap::new();
    for key in fabric.keys("effects").await {
        if let Some((order, message, count)) = split_record(&key) {
            effects
                .entry(order.to_string())
                .or_default()
                .push((count, message.to_string()));
        }
    }
    let stores = fabric.stores();
    let effect_at = |order: &str, message: &str, count: u32| {
        let (stores, key) = (stores.clone(), format!("{order}/{message}/{count}"));
        async move {
            let value = stores.get("effects", &key).await.ok().flatten()?;
            serde_json::from_slice::<serde_json::Value>(&value.value).ok()?["at"].as_f64()
        }
    };
    for (order, mut records) in effects {
        records.sort();
        for pair in records.windows(2) {
            let ((count, message), (next, next_message)) = (&pair[0], &pair[1]);
            let delivery = (message.clone(), *count);
            let (from, to) = (
                effect_at(&order, message, *count).await.unwrap_or(f64::MAX),
                effect_at(&order, next_message, *next)
                    .await
                    .unwrap_or(f64::MIN),
            );
            let killed_after = kills
                .iter()
                .any(|t| *t >= from && *t <= to && *t <= from + LEASE_LOCK.as_secs_f64());
            let repeat =
                !completed.contains(&delivery) && (failed.contains(&delivery) || killed_after);
            if repeat {
                report.repeated_effects += 1;
            } else {
                report.duplicated_effects += 1;
                if report.duplicated_ids.len() < 10 {
                    report.duplicated_ids.push(fabric.explain(&order).await);
                }
            }
        }
    }
    report.redelivered = fabric
        .keys("deliveries")
        .await
        .iter()
        .filter_map(|k| split_record(k))
        .filter(|(_, _, count)| *count > 1)
        .count();
    report.duplicates_caught = count_in_logs(&worker_logs, "duplicate; stopped");

    // At rest: a few orders are published the way the app's workers publish,
    // into a sealed queue of another instance of the app, which no worker
    // takes from, so they stay queued to be read raw.
    fabric.app_id = format!("{APP}--parked");
    let queues = fabric.queues();
    queues
        .declare(
            "incoming",
            &queue_svc::api::QueueSpec {
                encrypted: true,
                max_deliveries: Some(5),
            },
        )
        .await
        .expect("declare the parking queue");
    let parked: Vec<String> = (0..20)
        .map(|i| {
            serde_json::json!({
                "payload": {"orderId": format!("c-{run}-parked-{i}"), "card": format!("pii-{run}-parked-{i}")},
                "correlationId": format!("parked-{i}"),
            })
            .to_string()
        })
        .collect();
    queues
        .publish_batch("incoming", parked[..10].to_vec())
        .await
        .expect("park orders in the queue");
    queues
        .publish_batch("incoming", parked[10..].to_vec())
        .await
        .expect("park orders in the queue");
    let order_marker = format!("c-{run}-");
    let card_marker = format!("pii-{run}-");
    match &aws {
        Some(names) => at_rest_aws(names, &order_marker, &card_marker, &mut report).await,
        None => at_rest_embedded(fabric.dir.path(), &order_marker, &card_marker, &mut report),
    }
    drop(fabric);
    if let Some(names) = &aws {
        remove_aws(names).await;
    }
    report
}

/// The files in `dir` (none when it cannot be read).
fn files_in(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect()
}

/// The JSON log events in `files` whose message starts with one of `what`.
fn logged(files: &[PathBuf], what: &[&str]) -> Vec<serde_json::Value> {
    files
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|text| {
            text.lines()
                .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
                .collect::<Vec<_>>()
        })
        .filter(|event| {
            let message = event["message"].as_str().unwrap_or_default();
            what.iter().any(|w| message.starts_with(w))
        })
        .collect()
}

/// The deliveries (message id, delivery count) whose worker logged `what`
/// (`rolled back`, `dead-lettered`, `ack failed`).
fn logged_deliveries(files: &[PathBuf], what: &[&str]) -> BTreeSet<(String, u32)> {
    logged(files, what)
        .iter()
        .filter_map(|event| {
            let id = event["message_id"].as_str()?;
            let n = event["deliveries"].as_u64()?;
            Some((id.to_string(), n as u32))
        })
        .collect()
}

/// When (Unix seconds) a message starting with one of `what` was logged in `files`.
fn logged_times(files: &[PathBuf], what: &[&str]) -> Vec<f64> {
    logged(files, what)
        .iter()
        .filter_map(|event| {
            let at = chrono::DateTime::parse_from_rfc3339(event["timestamp"].as_str()?).ok()?;
            Some(at.timestamp_micros() as f64 / 1e6)
        })
        .collect()
}

/// Lines containing `needle` in `files`.
fn count_in_logs(files: &[PathBuf], needle: &str) -> usize {
    files
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .map(|text| text.lines().filter(|l| l.contains(needle)).count())
        .sum()
}

/// The embedded files: no card number anywhere (keys included); no order id
/// in the queue file (the object store's keys are order ids, by the manifest).
fn at_rest_embedded(dir: &Path, order: &str, card: &str, report: &mut Report) {
    let queues = std::fs::read(dir.join(queue_svc::EMBEDDED_FILE)).expect("the queue file");
    let stores = std::fs::read(dir.join(objectstore_svc::EMBEDDED_FILE)).expect("the store file");
    for (name, bytes, needles) in [
        ("queue file", &queues, vec![order, card]),
        ("object store file", &stores, vec![card]),
    ] {
        for needle in needles {
            if crate::contains(bytes, needle.as_bytes()) {
                report
                    .at_rest_leaks
                    .push(format!("{needle:?} in the {name}"));
            }
        }
    }
    report.at_rest_read = format!(
        "queue file {} bytes, object store file {} bytes",
        queues.len(),
        stores.len()
    );
}

/// SQS and DynamoDB through the SDK: no order id or card number in any queued
/// message (body and attributes); no card number in any item, and order ids
/// only in the sort key (the store key the manifest chose).
async fn at_rest_aws(names: &AwsNames, order: &str, card: &str, report: &mut Report) {
    let sdk = common::aws::sdk_config().await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let urls = sqs
        .list_queues()
        .queue_name_prefix(&names.sqs_prefix)
        .send()
        .await
        .expect("list the run's queues")
        .queue_urls
        .unwrap_or_default();
    let mut messages = 0;
    for url in &urls {
        // Received, never deleted: they stay queued (hidden for a while; no
        // consumer is left to mind). Until a receive comes back empty.
        let mut seen = BTreeSet::new();
        loop {
            let got = sqs
                .receive_message()
                .queue_url(url)
                .max_number_of_messages(10)
                .visibility_timeout(60)
                .message_attribute_names("All")
                .message_system_attribute_names(aws_sdk_sqs::types::MessageSystemAttributeName::All)
                .send()
                .await
                .expect("receive raw messages");
            if got.messages().is_empty() {
                break;
            }
            for m in got.messages() {
                let raw = format!("{m:?}");
                if seen.insert(m.message_id().unwrap_or_default().to_string()) {
                    messages += 1;
                }
                for needle in [order, card] {
                    if crate::contains(raw.as_bytes(), needle.as_bytes()) {
                        report
                            .at_rest_leaks
                            .push(format!("{needle:?} in a message of {url}"));
                    }
                }
            }
        }
    }
    let ddb = aws_sdk_dynamodb::Client::new(&sdk);
    let mut items = 0;
    let mut start = None;
    loop {
        let page = ddb
            .scan()
            .table_name(&names.table)
            .set_exclusive_start_key(start)
            .send()
            .await
            .expect("scan the run's table");
        for item in page.items() {
            items += 1;
            for (attr, value) in item {
                let raw = match value {
                    aws_sdk_dynamodb::types::AttributeValue::B(b) => b.as_ref().to_vec(),
                    other => format!("{other:?}").into_bytes(),
                };
                if crate::contains(&raw, card.as_bytes()) {
                    report
                        .at_rest_leaks
                        .push(format!("{card:?} in attribute {attr}"));
                }
                if attr != "sk" && crate::contains(&raw, order.as_bytes()) {
                    report
                        .at_rest_leaks
                        .push(format!("{order:?} in attribute {attr}"));
                }
            }
        }
        match page.last_evaluated_key {
            Some(k) if !k.is_empty() => start = Some(k),
            _ => break,
        }
    }
    report.at_rest_read = format!(
        "{messages} raw messages in {} SQS queues, {items} DynamoDB items",
        urls.len()
    );
}

/// Deletes the run's queues and table (best effort).
async fn remove_aws(names: &AwsNames) {
    let sdk = common::aws::sdk_config().await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    if let Ok(list) = sqs
        .list_queues()
        .queue_name_prefix(&names.sqs_prefix)
        .send()
        .await
    {
        for url in list.queue_urls() {
            let _ = sqs.delete_queue().queue_url(url).send().await;
        }
    }
    let ddb = aws_sdk_dynamodb::Client::new(&sdk);
    for table in [&names.table, &names.registry_table] {
        let _ = ddb.delete_table().table_name(table).send().await;
    }
}
