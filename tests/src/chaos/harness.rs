//! The fabric under chaos: queue-svc, objectstore-svc, lb-proxy and the
//! control plane as separate, restartable `fabric serve` processes on one
//! data directory, with clients for each.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use common::token::{Scope, TokenKey};
use control_plane::model::{WorkerInfo, WorkerState};

use super::{APP, LEASE_LOCK, Plan, WAIT};
use crate::process;

/// A free port on loopback (bound once and released), kept for the whole run.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// One component process, restartable with the same command.
pub(super) struct Service {
    name: &'static str,
    bin: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// Where its stdout and stderr go, appended across restarts.
    pub(super) log: PathBuf,
    /// Its base URL (fixed for the run).
    pub(super) url: String,
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
            process::kill9(&mut child);
        }
    }

    /// SIGTERM, then SIGKILL after `grace`.
    fn stop(&mut self, grace: Duration) {
        if let Some(mut child) = self.child.take() {
            process::stop(&mut child, nix::sys::signal::Signal::SIGTERM, grace);
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

    /// `kill -9`, then the same command again, until it is ready.
    pub(super) async fn restart(&mut self, http: &reqwest::Client) {
        self.kill9();
        self.start();
        self.wait_ready(http).await;
    }
}

/// One run's AWS resources: the fabric's stack (`infra/aws`), deployed into
/// the emulator for the run. The components run on it as in production,
/// creating nothing but the per-app queues (`create_resources` off).
pub(super) struct AwsNames {
    stack: crate::stack::Stack,
}

impl AwsNames {
    /// Deploys the stack for run `run` (checking the emulators are configured).
    pub(super) async fn deploy(run: &str) -> Self {
        crate::Emulators::from_env();
        // With IRSA, as infra/k8s's service accounts expect.
        let oidc = "oidc.eks.us-east-1.amazonaws.com/id/CHAOS";
        let stack =
            crate::stack::Stack::deploy(&format!("chaos-{run}"), &format!("ch{run}-"), Some(oidc))
                .await;
        println!("chaos: on stack {} ({:?})", stack.name, stack);
        AwsNames { stack }
    }

    /// The prefix of every SQS queue of the run.
    pub(super) fn sqs_prefix(&self) -> &str {
        &self.stack.prefix
    }

    /// The objectstore-svc table of the run.
    pub(super) fn table(&self) -> &str {
        &self.stack.objectstore_table
    }

    /// Deletes the run's queues and stack (best effort).
    pub(super) async fn remove(&self) {
        let sdk = common::aws::sdk_config().await;
        let sqs = aws_sdk_sqs::Client::new(&sdk);
        if let Ok(list) = sqs
            .list_queues()
            .queue_name_prefix(&self.stack.prefix)
            .send()
            .await
        {
            for url in list.queue_urls() {
                let _ = sqs.delete_queue().queue_url(url).send().await;
            }
        }
        self.stack.remove().await;
    }
}

/// The ports of one run, chosen once so a restart keeps its URL.
struct Ports {
    queue: u16,
    store: u16,
    /// lb-proxy's admin port (routes pushed there).
    proxy_admin: u16,
    /// lb-proxy's data path.
    proxy: u16,
    control: u16,
}

impl Ports {
    fn free() -> Self {
        Ports {
            queue: free_port(),
            store: free_port(),
            proxy_admin: free_port(),
            proxy: free_port(),
            control: free_port(),
        }
    }
}

/// The fabric under test: four component processes sharing one data directory.
pub(super) struct Fabric {
    dir: tempfile::TempDir,
    pub(super) queue: Service,
    pub(super) store: Service,
    proxy: Service,
    pub(super) control: Service,
    /// The load balancer's data path, `host:port`.
    pub(super) proxy_addr: String,
    admin_key: String,
    /// Signs the harness's own tokens for the app's instance.
    key: TokenKey,
    /// The app instance's id at the services, once deployed.
    pub(super) app_id: String,
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
            .and_then(|name| name.parse::<u32>().ok())
        else {
            continue;
        };
        if let Ok(cwd) = std::fs::read_link(entry.path().join("cwd"))
            && cwd.starts_with(dir)
            && pid != std::process::id()
        {
            process::kill9_pid(pid);
        }
    }
}

impl Fabric {
    /// Starts the four components (each ready before the next) on a fresh
    /// data directory, with the AWS backends when `aws` names them.
    pub(super) async fn start(plan: &Plan, aws: Option<&AwsNames>, http: &reqwest::Client) -> Self {
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
        match aws {
            // An operator's first `fabric master-key add`: the only key material at
            // rest is the KMS-wrapped version.
            Some(names) => {
                let kms = common::kms::Kms::new(&names.stack.key_arn, &names.stack.prefix).await;
                kms.add_to_file(&data.join(common::kms::WRAPPED_FILE))
                    .await
                    .expect("the wrapped master key");
            }
            None => {
                common::envelope::Keyring::load_or_generate(
                    &data.join(common::secrets::MASTER_KEY_FILE),
                )
                .expect("the master key");
            }
        }
        std::fs::create_dir_all(data.join("logs")).expect("the logs directory");
        let ports = Ports::free();
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
        let (queue_env, store_env) = backend_env(aws);
        let queue = service("queue-svc", ports.queue, &queue_env);
        let store = service("objectstore-svc", ports.store, &store_env);
        let proxy = service(
            "lb-proxy",
            ports.proxy_admin,
            &[("FABRIC_PROXY_LISTEN", format!("127.0.0.1:{}", ports.proxy))],
        );
        // Lists are clearest in TOML; the rest comes from the environment.
        std::fs::write(
            data.join("control-plane.toml"),
            format!(
                "routes_push = [\"http://127.0.0.1:{}/routes\"]\n\
                 queue_url = \"{}\"\nobjectstore_url = \"{}\"\nproxy_port = {}\n\
                 azs = [\"a\", \"b\", \"c\"]\n",
                ports.proxy_admin, queue.url, store.url, ports.proxy
            ),
        )
        .expect("the control plane's config");
        // Workers inherit the control plane's environment: a short lease
        // lock brings a killed worker's messages back in seconds, not 30.
        let mut control_env = vec![("FABRIC_LEASE_LOCK", format!("{}s", LEASE_LOCK.as_secs()))];
        if let Some(names) = aws {
            control_env.push(("FABRIC_REGISTRY_TABLE", names.stack.registry_table.clone()));
            control_env.extend(kms_env(names));
        }
        let control = service("control-plane", ports.control, &control_env);
        let mut fabric = Fabric {
            dir,
            queue,
            store,
            proxy,
            control,
            proxy_addr: format!("127.0.0.1:{}", ports.proxy),
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

    /// The data directory (logs, embedded stores, workers).
    pub(super) fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Every worker's log file.
    pub(super) fn worker_logs(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.dir().join("workers"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect()
    }

    /// The control plane's API, as the admin.
    pub(super) fn client(&self) -> control_plane::client::Client {
        control_plane::client::Client::new(&self.control.url, &self.admin_key)
    }

    /// queue-svc as the app's instance.
    pub(super) fn queues(&self) -> queue_svc::client::Client {
        self.queues_of(&self.app_id)
    }

    /// queue-svc as app instance `app_id`, with a worker token the harness signs.
    pub(super) fn queues_of(&self, app_id: &str) -> queue_svc::client::Client {
        let token = self
            .key
            .issue(app_id, Scope::Worker, Duration::from_secs(24 * 3600));
        queue_svc::client::Client::new(&self.queue.url, app_id, &token)
    }

    /// objectstore-svc as the app's instance.
    pub(super) fn stores(&self) -> objectstore_svc::client::Client {
        let token = self
            .key
            .issue(&self.app_id, Scope::Worker, Duration::from_secs(24 * 3600));
        objectstore_svc::client::Client::new(&self.store.url, &self.app_id, &token)
            .expect("a valid URL")
    }

    /// The app's workers, as the control plane lists them.
    pub(super) async fn workers(&self) -> Vec<WorkerInfo> {
        self.client()
            .workers(APP)
            .await
            .expect("the control plane lists the workers")
    }

    /// Waits until `n` workers are ready, none in `avoid`.
    pub(super) async fn wait_workers(&self, n: usize, avoid: Option<&str>) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let workers = self.client().workers(APP).await.unwrap_or_default();
            let ready = workers
                .iter()
                .filter(|w| w.state == WorkerState::Ready && Some(w.az.as_str()) != avoid)
                .count();
            if ready == n && workers.len() == n {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "never saw {n} ready workers (avoiding {avoid:?}): {workers:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until queue `queue` has nothing waiting or leased, and returns
    /// its dead-letter depth. A backlog may take a while to drain; only a
    /// queue that stops draining for [`WAIT`] fails.
    pub(super) async fn wait_drained(&self, queue: &str) -> u64 {
        let queues = self.queues();
        let mut deadline = tokio::time::Instant::now() + WAIT;
        let mut left = u64::MAX;
        loop {
            // An error keeps the clock running: a queue that cannot be read
            // is not draining either.
            match queues.stats(queue).await {
                Ok(stats) if stats.depth == 0 && stats.in_flight == 0 => return stats.dlq_depth,
                Ok(stats) if stats.depth + stats.in_flight < left => {
                    left = stats.depth + stats.in_flight;
                    deadline = tokio::time::Instant::now() + WAIT;
                }
                Ok(stats) => assert!(
                    tokio::time::Instant::now() < deadline,
                    "the queue stopped draining: {stats:?}"
                ),
                Err(e) => assert!(
                    tokio::time::Instant::now() < deadline,
                    "the queue cannot be read: {e}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Up to ten of `queue`'s dead letters: the body, deliveries and last error of each.
    pub(super) async fn dead_letters(&self, queue: &str) -> Vec<String> {
        let peek = queue_svc::client::LeaseOptions {
            max: 10,
            wait: Duration::from_secs(1),
            lock: Duration::from_secs(1),
        };
        self.queues()
            .lease_dead(queue, peek)
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|m| {
                format!(
                    "{} after {} deliveries: {:?}",
                    m.body, m.delivery_count, m.last_error
                )
            })
            .collect()
    }

    /// What the stores hold about one order: its claim, whether it is stored,
    /// its deliveries and effects.
    pub(super) async fn explain(&self, order: &str) -> String {
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
    pub(super) async fn keys(&self, store: &str) -> Vec<String> {
        crate::backing::all_keys(&self.stores(), store)
            .await
            .unwrap_or_else(|e| panic!("list store {store}: {e}"))
    }
}

/// Environment variables for one component, on top of the common ones.
type Env = Vec<(&'static str, String)>;

/// The backend settings of queue-svc and objectstore-svc.
fn backend_env(aws: Option<&AwsNames>) -> (Env, Env) {
    match aws {
        None => (
            vec![("FABRIC_BACKEND", "embedded".to_string())],
            vec![("FABRIC_BACKEND", "embedded".to_string())],
        ),
        Some(names) => (
            [
                ("FABRIC_BACKEND", "sqs".to_string()),
                ("FABRIC_SQS_PREFIX", names.stack.prefix.clone()),
                ("FABRIC_SQS_KMS_KEY", names.stack.key_arn.clone()),
            ]
            .into_iter()
            .chain(kms_env(names))
            .collect(),
            [
                ("FABRIC_BACKEND", "dynamodb".to_string()),
                ("FABRIC_TABLE", names.stack.objectstore_table.clone()),
            ]
            .into_iter()
            .chain(kms_env(names))
            .collect(),
        ),
    }
}

/// The stack's key and the fabric's name, for the components that seal.
/// `create_resources` is left at its default (off): what the stack declares
/// must be enough.
fn kms_env(names: &AwsNames) -> Env {
    vec![
        ("FABRIC_KMS_KEY_ID", names.stack.key_arn.clone()),
        ("FABRIC_FABRIC_NAME", names.stack.prefix.clone()),
    ]
}
