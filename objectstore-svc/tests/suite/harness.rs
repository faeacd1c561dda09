//! The harness: a real service on `127.0.0.1:0` over either backend, its client, and its data once stopped.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_dynamodb::types::AttributeValue;
use common::shutdown::Shutdown;
use common::token::{Scope, TokenKey};
use objectstore_svc::backend::BackendKind;
use objectstore_svc::client::{Client, ClientError, PutOptions};
use objectstore_svc::{Config, EMBEDDED_FILE, Settings};
use tokio::net::TcpListener;

pub const APP: &str = "orders";
const TABLE: &str = "wf-objectstore-suite";

pub struct Harness {
    pub kind: BackendKind,
    pub base: String,
    pub tokens: TokenKey,
    pub client: Client,
    pub store: String,
    pub table: String,
    data: tempfile::TempDir,
    shutdown: Shutdown,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

/// A stopped service's data (its embedded file or table, its secrets): to
/// look at as stored, and to start a service on again.
pub struct Stopped {
    pub kind: BackendKind,
    pub table: String,
    store: String,
    data: tempfile::TempDir,
}

pub fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{prefix}-{}-{nanos}", std::process::id())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Waits (without asserting any time) until the wall clock is past `at` (Unix ms).
pub async fn until_past(at: u64) {
    while now_ms() <= at {
        tokio::time::sleep(Duration::from_millis(at + 1 - now_ms().min(at))).await;
    }
}

impl Harness {
    pub async fn start(kind: BackendKind) -> Harness {
        Self::start_on(kind, TABLE).await
    }

    /// A service whose DynamoDB backend uses `table`.
    pub async fn start_on(kind: BackendKind, table: &str) -> Harness {
        if kind == BackendKind::DynamoDb {
            assert!(
                std::env::var("AWS_ENDPOINT_URL_DYNAMODB").is_ok(),
                "AWS_ENDPOINT_URL_DYNAMODB is not set: start the emulators with \
                 infra/localstack/up and load the env file it prints"
            );
        }
        let stopped = Stopped {
            kind,
            table: table.to_string(),
            store: unique("s"),
            data: tempfile::tempdir().expect("temp dir"),
        };
        stopped.start().await
    }

    /// Stops the service; once it let go of its embedded file, its data.
    pub async fn stop(mut self) -> Stopped {
        self.shutdown.trigger();
        let data = std::mem::replace(&mut self.data, tempfile::tempdir().expect("temp dir"));
        let stopped = Stopped {
            kind: self.kind,
            table: self.table.clone(),
            store: self.store.clone(),
            data,
        };
        drop(self);
        if stopped.kind == BackendKind::Embedded {
            drop(open_when_released(&stopped.embedded_file()).await);
        }
        stopped
    }

    pub fn client_for(&self, app: &str, scope: Scope) -> Client {
        let token = self.tokens.issue(app, scope, Duration::from_secs(3600));
        Client::new(&self.base, app, &token).expect("client")
    }

    pub async fn put(&self, key: &str, value: &[u8]) -> String {
        self.client
            .put(&self.store, key, value.to_vec(), &PutOptions::default())
            .await
            .expect("put")
            .etag
    }

    pub async fn value(&self, key: &str) -> Option<Vec<u8>> {
        self.client
            .get(&self.store, key)
            .await
            .expect("get")
            .map(|f| f.value.to_vec())
    }

    /// Every byte the backend holds for this test's store, as stored.
    pub async fn raw_bytes(&self) -> Vec<u8> {
        match self.kind {
            BackendKind::Embedded => {
                std::fs::read(self.data.path().join(EMBEDDED_FILE)).expect("read file")
            }
            BackendKind::DynamoDb => {
                let sdk = common::aws::sdk_config().await;
                let ddb = aws_sdk_dynamodb::Client::new(&sdk);
                let query = |pk: String| {
                    ddb.query()
                        .table_name(&self.table)
                        .key_condition_expression("pk = :pk")
                        .expression_attribute_values(":pk", AttributeValue::S(pk))
                        .into_paginator()
                        .items()
                        .send()
                        .collect::<Vec<_>>()
                };
                let mut raw = Vec::new();
                let heads = query(format!("o#{APP}#{}", self.store)).await;
                for head in heads {
                    let head = head.expect("query heads");
                    if let Some(AttributeValue::S(ver)) = head.get("ver") {
                        for chunk in query(format!("c#{ver}")).await {
                            append_attrs(&mut raw, &chunk.expect("query chunks"));
                        }
                    }
                    append_attrs(&mut raw, &head);
                }
                raw
            }
        }
    }
}

impl Stopped {
    /// The embedded store's file.
    pub fn embedded_file(&self) -> std::path::PathBuf {
        self.data.path().join(EMBEDDED_FILE)
    }

    /// Starts a service on this data.
    pub async fn start(self) -> Harness {
        let config = Config {
            data_dir: self.data.path().to_path_buf(),
            settings: Settings {
                backend: self.kind,
                table: self.table.clone(),
            },
            // Each test's table is its own, made when missing.
            create_resources: true,
            ..Config::default()
        };
        let tokens = common::secrets::token_key(&config).expect("token key");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let shutdown = Shutdown::new(Duration::from_secs(5));
        tokio::spawn(objectstore_svc::run(config, listener, shutdown.clone()));
        // The service opens its backend before it accepts; this waits for that.
        let ready = reqwest::get(format!("{base}/readyz"))
            .await
            .expect("readyz");
        assert_eq!(ready.status(), 200);
        let token = tokens.issue(APP, Scope::Worker, Duration::from_secs(3600));
        let client = Client::new(&base, APP, &token).expect("client");
        Harness {
            kind: self.kind,
            base,
            tokens,
            client,
            store: self.store,
            table: self.table,
            data: self.data,
            shutdown,
        }
    }
}

/// The embedded store at `path`, opened once no service holds it (at most 10 s):
/// a stopped service can still be dropping its last handle on another thread.
pub async fn open_when_released(path: &std::path::Path) -> redb::Database {
    for _ in 0..500 {
        match redb::Database::create(path) {
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => return other.unwrap_or_else(|e| panic!("{}: {e}", path.display())),
        }
    }
    panic!("{} is still open", path.display());
}

fn append_attrs(out: &mut Vec<u8>, item: &std::collections::HashMap<String, AttributeValue>) {
    for (name, value) in item {
        out.extend_from_slice(name.as_bytes());
        match value {
            AttributeValue::S(s) | AttributeValue::N(s) => out.extend_from_slice(s.as_bytes()),
            AttributeValue::B(b) => out.extend_from_slice(b.as_ref()),
            other => out.extend_from_slice(format!("{other:?}").as_bytes()),
        }
        out.push(0);
    }
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

pub fn status(result: Result<impl std::fmt::Debug, ClientError>) -> u16 {
    match result {
        Err(e) => e.status().unwrap_or_else(|| panic!("no status: {e}")),
        Ok(v) => panic!("expected a refusal, got {v:?}"),
    }
}
