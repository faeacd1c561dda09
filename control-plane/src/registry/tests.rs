//! One suite run against every backend: the redb file, and DynamoDB through
//! the emulator (`AWS_ENDPOINT_URL_DYNAMODB`); then what only one backend
//! has (an older plaintext file; a table that goes away).

use std::net::SocketAddr;
use std::sync::Mutex;

use common::envelope::MasterKey;
use redb::{Database, ReadableTable};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::*;
use crate::model::{Configuration, Outcome};

const WAIT: Duration = Duration::from_secs(30);
/// A secret an app's manifest carries, which must never be stored in the clear.
const SECRET: &str = "db-password-3f9c1e";

mod older_file;

fn keyring() -> Keyring {
    Keyring::single(MasterKey::generate())
}

fn record(name: &str) -> AppRecord {
    AppRecord {
        name: name.into(),
        tenant: "t1".into(),
        version: 1,
        manifest: format!("properties: {{ password: {SECRET} }}\nflows: []"),
        workers: 2,
        size: 0.1,
        persistent_queues: false,
        encrypt_queues: false,
        instance: "k2m9p4q1x7".into(),
        properties: Default::default(),
        secure_properties: Default::default(),
        autoscale: None,
    }
}

fn placement(app: &str) -> Placement {
    Placement {
        app: app.into(),
        version: 1,
        index: 1,
        az: "a".into(),
        address: "127.0.1.1:5000".into(),
        ops_address: Some("127.0.1.1:5001".into()),
        handle: Some("42".into()),
        pid: Some(42),
        identity: Some("boot:42".into()),
        restarts: 0,
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn names(r: &Registry) -> Vec<String> {
    r.apps().into_iter().map(|a| a.name).collect()
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{prefix}-{}-{nanos}", std::process::id())
}

/// The emulator's SDK configuration, or a clear instruction when it is not set.
async fn emulator(endpoint: Option<String>) -> aws_config::SdkConfig {
    assert!(
        std::env::var("AWS_ENDPOINT_URL_DYNAMODB").is_ok(),
        "AWS_ENDPOINT_URL_DYNAMODB is not set: start the emulators with \
         infra/localstack/up and load the env file it prints"
    );
    let loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    match endpoint {
        Some(url) => loader.endpoint_url(url).load().await,
        None => loader.load().await,
    }
}

/// Where a test's registry is kept; opened again and again on the same data,
/// and read and altered underneath, as someone with access to the store could.
enum Backing {
    Embedded(tempfile::TempDir),
    DynamoDb {
        sdk: Box<aws_config::SdkConfig>,
        table: String,
    },
}

impl Backing {
    fn embedded() -> Self {
        Backing::Embedded(tempfile::tempdir().expect("temp dir"))
    }

    async fn dynamodb(table: String) -> Self {
        Backing::DynamoDb {
            sdk: Box::new(emulator(None).await),
            table,
        }
    }

    fn file(dir: &tempfile::TempDir) -> PathBuf {
        dir.path().join("registry.redb")
    }

    fn client(sdk: &aws_config::SdkConfig) -> aws_sdk_dynamodb::Client {
        aws_sdk_dynamodb::Client::new(sdk)
    }

    async fn open(&self, keyring: &Keyring) -> Result<Registry, RegistryError> {
        let sealer = Sealer(keyring.clone());
        let store: Arc<dyn Store> = match self {
            Backing::Embedded(dir) => Arc::new(
                embedded::Embedded::open(Self::file(dir), sealer.clone())
                    .await
                    .expect("open file"),
            ),
            Backing::DynamoDb { sdk, table } => Arc::new(
                dynamodb::DynamoDb::open(sdk, table, true)
                    .await
                    .expect("open table"),
            ),
        };
        Registry::start(store, sealer).await
    }

    /// Every stored byte: the whole file, or every attribute of every item.
    async fn raw(&self) -> Vec<u8> {
        match self {
            Backing::Embedded(dir) => std::fs::read(Self::file(dir)).expect("read file"),
            Backing::DynamoDb { sdk, table } => {
                let mut items = Self::client(sdk)
                    .scan()
                    .table_name(table)
                    .consistent_read(true)
                    .into_paginator()
                    .items()
                    .send();
                let mut raw = Vec::new();
                while let Some(item) = items.next().await {
                    for (name, value) in item.expect("scan") {
                        raw.extend_from_slice(name.as_bytes());
                        match value {
                            aws_sdk_dynamodb::types::AttributeValue::S(s) => {
                                raw.extend_from_slice(s.as_bytes())
                            }
                            aws_sdk_dynamodb::types::AttributeValue::B(b) => {
                                raw.extend_from_slice(b.as_ref())
                            }
                            other => panic!("unexpected attribute {other:?}"),
                        }
                    }
                }
                raw
            }
        }
    }

    /// Copies the stored value of record `from` under the id `to`.
    async fn copy(&self, kind: RecordKind, from: &str, to: &str) {
        match self {
            Backing::Embedded(dir) => {
                let db = Database::create(Self::file(dir)).expect("open file");
                let txn = db.begin_write().expect("write");
                {
                    let mut table = txn.open_table(embedded::RECORDS).expect("table");
                    let value = table
                        .get((kind.as_str(), from))
                        .expect("get")
                        .expect("stored")
                        .value()
                        .to_vec();
                    table
                        .insert((kind.as_str(), to), value.as_slice())
                        .expect("insert");
                }
                txn.commit().expect("commit");
            }
            Backing::DynamoDb { sdk, table } => {
                let client = Self::client(sdk);
                let mut item = client
                    .get_item()
                    .table_name(table)
                    .consistent_read(true)
                    .key("kind", s(kind.as_str()))
                    .key("id", s(from))
                    .send()
                    .await
                    .expect("get item")
                    .item
                    .expect("stored");
                item.insert("id".into(), s(to));
                client
                    .put_item()
                    .table_name(table)
                    .set_item(Some(item))
                    .send()
                    .await
                    .expect("put item");
            }
        }
    }

    async fn remove(self) {
        if let Backing::DynamoDb { sdk, table } = self {
            let _ = Self::client(&sdk)
                .delete_table()
                .table_name(table)
                .send()
                .await;
        }
    }
}

fn s(v: &str) -> aws_sdk_dynamodb::types::AttributeValue {
    aws_sdk_dynamodb::types::AttributeValue::S(v.to_string())
}

/// Apps, placements and key hashes survive reopening; what is stored is
/// ciphertext and the key's hash only.
async fn survives_reopening(b: &Backing) {
    let ring = keyring();
    let r = b.open(&ring).await.unwrap();
    r.put_app(&record("orders")).await.unwrap();
    r.put_app(&record("billing")).await.unwrap();
    r.add_api_key("secret-key", "t1").await.unwrap();
    let named = KeyRecord {
        name: Some("ci".into()),
        expires_ms: Some(4_000_000_000_000),
        ..KeyRecord::new("wfk_named-key", "t1")
    };
    let named_id = r.add_key("wfk_named-key", named.clone()).await.unwrap();
    let doomed_id = r
        .add_key("wfk_doomed-key", KeyRecord::new("wfk_doomed-key", "t1"))
        .await
        .unwrap();
    assert_eq!(
        r.revoke_key("t2", &doomed_id, "").await.unwrap(),
        Revoked::NotFound,
        "another tenant's key is not found"
    );
    assert!(matches!(
        r.revoke_key("t1", &doomed_id, "").await.unwrap(),
        Revoked::Revoked(_)
    ));
    r.put_placement(&placement("orders"));
    let mut secret = record("orders");
    secret
        .secure_properties
        .insert("password".into(), "pw-5c1d8e".into());
    let config = Configuration::of(&secret, 1, "deploy", "t1", Outcome::Deployed);
    r.add_configuration("orders", config.clone()).await.unwrap();
    assert_eq!(r.close(WAIT).await, 0, "everything persisted");

    let raw = b.raw().await;
    assert!(contains(&raw, key_hash("secret-key").as_bytes()));
    assert!(!contains(&raw, b"secret-key"), "the API key is stored");
    assert!(
        !contains(&raw, SECRET.as_bytes()),
        "the manifest is stored in the clear"
    );
    assert!(
        !contains(&raw, b"127.0.1.1"),
        "a placement is stored in the clear"
    );
    assert!(
        !contains(&raw, b"pw-5c1d8e"),
        "a secure property is stored in the clear"
    );

    let r = b.open(&ring).await.unwrap();
    assert_eq!(names(&r), ["billing", "orders"]);
    assert_eq!(r.app("orders"), Some(record("orders")));
    assert_eq!(r.placements(), [placement("orders")]);
    assert_eq!(r.history("orders"), [config]);
    assert_eq!(r.tenant_of("secret-key").as_deref(), Some("t1"));
    assert_eq!(r.tenant_of("other"), None);
    assert_eq!(r.key("wfk_named-key"), Some((named_id.clone(), named)));
    assert_eq!(r.key("wfk_doomed-key"), None, "a revoked key stays revoked");
    assert!(!contains(&b.raw().await, b"wfk_named-key"));
    assert_eq!(r.remove_tenant_keys("t1").await.unwrap(), 2);
    assert_eq!(r.tenant_of("secret-key"), None);
    r.add_api_key("secret-key", "t1").await.unwrap();
    let purge = PurgeRecord {
        name: "orders".into(),
        app_id: record("orders").app_id(),
        tenant: "t1".into(),
    };
    r.start_purge(&purge).await.unwrap();
    assert!(r.app("orders").is_none());
    assert!(r.placements().is_empty());
    assert!(r.history("orders").is_empty(), "its history goes with it");
    assert_eq!(r.purge("orders"), Some(purge.clone()));
    assert_eq!(r.close(WAIT).await, 0);

    let r = b.open(&ring).await.unwrap();
    assert_eq!(names(&r), ["billing"]);
    assert!(
        r.placements().is_empty(),
        "the app's placements went with it"
    );
    assert_eq!(
        r.purges(),
        std::slice::from_ref(&purge),
        "a purge under way outlives a restart"
    );
    // Another instance's purge ending leaves this one alone.
    r.finish_purge("orders", "orders--another").await.unwrap();
    assert_eq!(r.purges(), std::slice::from_ref(&purge));
    r.finish_purge("orders", &purge.app_id).await.unwrap();
    assert_eq!(r.close(WAIT).await, 0);
    let r = b.open(&ring).await.unwrap();
    assert!(r.purges().is_empty());
    assert_eq!(r.close(WAIT).await, 0);
}

/// A value copied under another id, or opened with another keyring, is
/// refused with an error naming the record.
async fn a_moved_value_does_not_open(b: &Backing) {
    let ring = keyring();
    let r = b.open(&ring).await.unwrap();
    r.put_app(&record("orders")).await.unwrap();
    assert_eq!(r.close(WAIT).await, 0);
    b.copy(RecordKind::App, "orders", "billing").await;
    let err = b
        .open(&ring)
        .await
        .err()
        .expect("the moved value is refused");
    assert!(
        matches!(&err, RegistryError::Record { kind: RecordKind::App, id, .. } if id == "billing"),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains(r#"app "billing""#), "{text}");
    assert!(text.contains("failed authentication"), "{text}");
    let err = b
        .open(&keyring())
        .await
        .err()
        .expect("another keyring opens nothing");
    assert!(matches!(err, RegistryError::Record { .. }), "{err:?}");
}

#[tokio::test]
async fn survives_reopening_embedded() {
    survives_reopening(&Backing::embedded()).await;
}

#[tokio::test]
async fn survives_reopening_dynamodb() {
    let b = Backing::dynamodb(unique("wf-registry-test")).await;
    survives_reopening(&b).await;
    b.remove().await;
}

#[tokio::test]
async fn a_moved_value_does_not_open_embedded() {
    a_moved_value_does_not_open(&Backing::embedded()).await;
}

#[tokio::test]
async fn a_moved_value_does_not_open_dynamodb() {
    let b = Backing::dynamodb(unique("wf-registry-test")).await;
    a_moved_value_does_not_open(&b).await;
    b.remove().await;
}

/// A TCP relay in front of the emulator that can be taken away and brought
/// back on the same port: the table becomes unreachable, then reachable.
struct Relay {
    port: u16,
    target: SocketAddr,
    task: Option<JoinHandle<()>>,
}

impl Relay {
    async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        Relay {
            port,
            target,
            task: Some(tokio::spawn(Self::serve(listener, target))),
        }
    }

    async fn serve(listener: TcpListener, target: SocketAddr) {
        // Dropping the set (when the task is aborted) closes every connection.
        let mut connections = tokio::task::JoinSet::new();
        while let Ok((mut client, _)) = listener.accept().await {
            connections.spawn(async move {
                if let Ok(mut upstream) = TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                }
            });
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Closes the port and every connection: connections are refused.
    async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    async fn resume(&mut self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).await.unwrap();
        self.task = Some(tokio::spawn(Self::serve(listener, self.target)));
    }
}

/// Log lines, captured for this test's thread (its runtime is single-threaded).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[tokio::test]
async fn writes_wait_out_an_unreachable_table() {
    let log = Captured::default();
    let _logging = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_writer({
                let log = log.clone();
                move || log.clone()
            })
            .with_ansi(false)
            .finish(),
    );
    emulator(None).await;
    let target: SocketAddr = std::env::var("AWS_ENDPOINT_URL_DYNAMODB")
        .ok()
        .as_deref()
        .and_then(|u| u.strip_prefix("http://"))
        .and_then(|a| a.trim_end_matches('/').parse().ok())
        .expect("AWS_ENDPOINT_URL_DYNAMODB is http://host:port");
    let mut relay = Relay::start(target).await;
    let table = unique("wf-registry-outage");
    let ring = keyring();
    let r = Backing::DynamoDb {
        sdk: Box::new(emulator(Some(relay.url())).await),
        table: table.clone(),
    }
    .open(&ring)
    .await
    .unwrap();
    r.put_app(&record("orders")).await.unwrap();

    relay.stop().await;
    // A placement is written behind: recording it does not wait, and reads
    // see it at once.
    r.put_placement(&placement("orders"));
    assert_eq!(r.placements(), [placement("orders")]);
    assert_eq!(r.app("orders"), Some(record("orders")));
    // A durable write waits for the table.
    let billing = tokio::spawn({
        let r = r.clone();
        async move { r.put_app(&record("billing")).await }
    });
    let deadline = tokio::time::Instant::now() + WAIT;
    while !log.text().contains("registry unreachable") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no warning: {}",
            log.text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !billing.is_finished(),
        "a durable write returned while the table was away"
    );
    assert!(r.unpersisted() >= 1);
    let metric = r.unpersisted_metric();
    assert!(metric.get() >= 1, "the metric shows the unwritten changes");
    assert_eq!(
        names(&r),
        ["billing", "orders"],
        "reads are served from memory"
    );

    relay.resume().await;
    tokio::time::timeout(WAIT, billing)
        .await
        .expect("the durable write lands once the table is back")
        .unwrap()
        .unwrap();
    tokio::time::timeout(WAIT, r.flush())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(metric.get(), 0, "and falls back to 0 once they landed");
    assert_eq!(r.close(WAIT).await, 0);
    let text = log.text();
    assert!(text.contains("registry reachable again"), "{text}");
    assert!(text.contains(&format!("dynamodb table {table}")), "{text}");
    assert!(!text.contains(SECRET), "a secret reached the log: {text}");

    // Straight from the emulator: every change landed.
    let b = Backing::dynamodb(table).await;
    let r = b.open(&ring).await.unwrap();
    assert_eq!(names(&r), ["billing", "orders"]);
    assert_eq!(r.placements(), [placement("orders")]);
    assert_eq!(r.close(WAIT).await, 0);
    b.remove().await;
}

#[tokio::test]
async fn a_record_changed_while_unwritten_is_written_once_with_its_newest_value() {
    let b = Backing::embedded();
    let ring = keyring();
    let r = b.open(&ring).await.unwrap();
    let mut p = placement("orders");
    for restarts in 0..50 {
        p.restarts = restarts;
        r.put_placement(&p);
    }
    r.remove_placement("gone", 1, 1);
    r.flush().await.unwrap();
    assert_eq!(r.unpersisted(), 0);
    assert_eq!(r.close(WAIT).await, 0);
    let r = b.open(&ring).await.unwrap();
    assert_eq!(r.placements(), [p]);
    assert_eq!(r.close(WAIT).await, 0);
}
