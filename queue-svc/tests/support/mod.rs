//! A queue-svc on 127.0.0.1:0 in this process, on either backend, and tokens for it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::shutdown::Shutdown;
use common::token::{Scope, TokenKey};
use queue_svc::client::Client;
use queue_svc::{BackendKind, Config, Settings};
use tokio::net::TcpListener;

/// A running service.
pub struct Service {
    pub base: String,
    pub key: TokenKey,
    pub settings: Settings,
    pub data_dir: PathBuf,
    shutdown: Shutdown,
    task: tokio::task::JoinHandle<()>,
}

/// Settings for tests: short back-offs, a unique SQS prefix per run.
pub fn settings(backend: BackendKind) -> Settings {
    Settings {
        backend,
        sqs_prefix: format!("t{:08x}-", rand::random::<u32>()),
        max_deliveries: 3,
        rollback_backoff: Duration::from_millis(100),
        rollback_backoff_max: Duration::from_secs(1),
        ..Settings::default()
    }
}

/// The backend named by a test: SQS needs the emulator's endpoint.
pub fn require_emulator(backend: BackendKind) {
    if backend == BackendKind::Sqs && std::env::var("AWS_ENDPOINT_URL_SQS").is_err() {
        panic!(
            "AWS_ENDPOINT_URL_SQS is not set: start the emulators with infra/localstack/up \
             and load the env file it prints"
        );
    }
}

/// Waits (at most 10 s) until no earlier service of this process holds the
/// embedded store at `path`: `queue_svc::run` can return while its last
/// handle on the store is still being dropped on another thread.
async fn released(path: &Path) {
    drop(opened_when_released(path).await);
}

/// The embedded store at `path`, opened once no service holds it (at most 10 s).
pub async fn open_when_released(path: &Path) -> redb::Database {
    opened_when_released(path)
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

async fn opened_when_released(path: &Path) -> Result<redb::Database, redb::DatabaseError> {
    for _ in 0..500 {
        match redb::Database::create(path) {
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => return other,
        }
    }
    panic!("{} is still open", path.display());
}

impl Service {
    /// Starts a service with `settings` in `data_dir`, its keys there (or `master_key`).
    pub async fn start(settings: Settings, data_dir: &Path, master_key: Option<PathBuf>) -> Self {
        require_emulator(settings.backend);
        if settings.backend == BackendKind::Embedded {
            released(&data_dir.join(queue_svc::EMBEDDED_FILE)).await;
        }
        let key = TokenKey::load_or_generate(&data_dir.join(common::secrets::SECRET_FILE))
            .expect("token key");
        let config = Config {
            data_dir: data_dir.to_path_buf(),
            master_key_file: master_key,
            settings: settings.clone(),
            ..Config::default()
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let shutdown = Shutdown::new(Duration::from_secs(5));
        let sd = shutdown.clone();
        let task = tokio::spawn(async move {
            queue_svc::run(config, listener, sd)
                .await
                .expect("queue-svc runs");
        });
        let svc = Service {
            base,
            key,
            settings,
            data_dir: data_dir.to_path_buf(),
            shutdown,
            task,
        };
        svc.wait_ready().await;
        svc
    }

    async fn wait_ready(&self) {
        let http = reqwest::Client::new();
        for _ in 0..500 {
            if let Ok(r) = http.get(format!("{}/readyz", self.base)).send().await
                && r.status() == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("queue-svc at {} never became ready", self.base);
    }

    /// A worker token for `app`.
    pub fn token(&self, app: &str, scope: Scope) -> String {
        self.key.issue(app, scope, Duration::from_secs(3600))
    }

    /// An internal token of this fabric, as the control plane holds.
    pub fn internal_token(&self) -> String {
        self.key.issue_internal(Duration::from_secs(3600))
    }

    /// A client for `app` with a worker token.
    pub fn client(&self, app: &str) -> Client {
        Client::new(&self.base, app, &self.token(app, Scope::Worker))
    }

    /// Stops the service and waits for it.
    pub async fn stop(self) {
        self.shutdown.trigger();
        self.task.await.expect("service task");
    }
}
