//! queue-svc and objectstore-svc as real processes on the embedded backends,
//! and workers started against them the way the control plane starts them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::token::{Scope, TokenKey};

use crate::process::{Proc, Stream};

const WAIT: Duration = Duration::from_secs(30);

/// Both services, in one temporary data directory.
pub struct Backing {
    /// The data directory (secret, embedded stores, manifests).
    pub dir: tempfile::TempDir,
    /// queue-svc's base URL.
    pub queue_url: String,
    /// objectstore-svc's base URL.
    pub store_url: String,
    key: TokenKey,
    _queue: Proc,
    _store: Proc,
}

/// Every key of `store`, paging through the listing.
pub async fn all_keys(
    client: &objectstore_svc::client::Client,
    store: &str,
) -> Result<Vec<String>, objectstore_svc::client::ClientError> {
    let mut keys = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = client
            .list(store, "", cursor.as_deref(), Some(1000))
            .await?;
        keys.extend(page.keys.into_iter().map(|k| k.key));
        match page.cursor {
            Some(c) => cursor = Some(c),
            None => return Ok(keys),
        }
    }
}

/// The address a component logged when it started listening.
pub fn listening_addr(proc: &mut Proc) -> String {
    let line = proc.wait_for_line(WAIT, |s, l| s == Stream::Stderr && l.contains("listening"));
    let event: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
    format!(
        "http://{}",
        event["addr"].as_str().expect("the listening line has addr")
    )
}

fn serve(component: &str, dir: &Path) -> (Proc, String) {
    let mut cmd = crate::fabric_command();
    cmd.args(["serve", component])
        .env("FABRIC_DATA_DIR", dir)
        .env("FABRIC_LISTEN", "127.0.0.1:0")
        .env("FABRIC_BACKEND", "embedded")
        .env("FABRIC_LOG_FORMAT", "json")
        .env("RUST_LOG", "info");
    let mut proc = Proc::spawn(cmd);
    let url = listening_addr(&mut proc);
    (proc, url)
}

impl Backing {
    /// Starts both services on the embedded backends.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        // Made before the services start, so all three share it.
        let key = TokenKey::load_or_generate(&dir.path().join(common::secrets::SECRET_FILE))
            .expect("the fabric secret");
        let (queue, queue_url) = serve("queue-svc", dir.path());
        let (store, store_url) = serve("objectstore-svc", dir.path());
        Backing {
            dir,
            queue_url,
            store_url,
            key,
            _queue: queue,
            _store: store,
        }
    }

    /// A worker token for `app`.
    pub fn token(&self, app: &str) -> String {
        self.key
            .issue(app, Scope::Worker, Duration::from_secs(3600))
    }

    /// An object store client for `app`.
    pub fn stores(&self, app: &str) -> objectstore_svc::client::Client {
        objectstore_svc::client::Client::new(&self.store_url, app, &self.token(app))
            .expect("a valid URL")
    }

    /// A queue client for `app`.
    pub fn queues(&self, app: &str) -> queue_svc::client::Client {
        queue_svc::client::Client::new(&self.queue_url, app, &self.token(app))
    }

    /// Writes one of the repository's examples into the data directory.
    pub fn example(&self, name: &str) -> PathBuf {
        let src = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples")
            .join(name);
        let dst = self.dir.path().join(name);
        std::fs::copy(&src, &dst).expect("copy the example");
        dst
    }

    /// Starts worker `id` of `app` with persistent queues, as the control plane
    /// would, plus `env`; returns it once it listens, with its base URL.
    pub fn worker(
        &self,
        manifest: &Path,
        app: &str,
        id: &str,
        env: &[(&str, &str)],
    ) -> (Proc, String) {
        let mut proc = Proc::spawn(self.worker_command(manifest, app, id, env));
        let url = listening_addr(&mut proc);
        (proc, url)
    }

    /// The command [`Backing::worker`] runs (`env` comes last, so it overrides).
    pub fn worker_command(
        &self,
        manifest: &Path,
        app: &str,
        id: &str,
        env: &[(&str, &str)],
    ) -> Command {
        let mut cmd = crate::fabric_command();
        cmd.args(["serve", "worker"])
            .env("FABRIC_DATA_DIR", self.dir.path())
            .env("FABRIC_LISTEN", "127.0.0.1:0")
            .env("FABRIC_MANIFEST", manifest)
            .env("FABRIC_APP", app)
            .env("FABRIC_WORKER_ID", id)
            .env("FABRIC_SIZE", "1")
            .env("FABRIC_PERSISTENT_QUEUES", "true")
            .env("FABRIC_QUEUE_URL", &self.queue_url)
            .env("FABRIC_OBJECTSTORE_URL", &self.store_url)
            .env("FABRIC_APP_TOKEN", self.token(app))
            .env("FABRIC_LOG_FORMAT", "json")
            // The tests' own servers that flows call listen on loopback, which
            // an operator must allow (workers reach the public internet only).
            .env("FABRIC_EGRESS_ALLOW", r#"["127.0.0.0/8"]"#)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied());
        cmd
    }

    /// Every key of `store` of `app`, paging through the listing.
    pub async fn keys(&self, app: &str, store: &str) -> Vec<String> {
        all_keys(&self.stores(app), store)
            .await
            .unwrap_or_else(|e| panic!("list store {store}: {e}"))
    }
}
