//! One test suite, run against every backend: the embedded store, and DynamoDB
//! through the emulator (`AWS_ENDPOINT_URL_DYNAMODB`).
//!
//! Each case starts the real service on `127.0.0.1:0` and talks to it with the
//! crate's client, in a store of its own.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_dynamodb::types::AttributeValue;
use common::shutdown::Shutdown;
use common::token::{Scope, TokenKey};
use futures::{StreamExt, TryStreamExt};
use objectstore_svc::api::{MAX_KEY_BYTES, MAX_VALUE_BYTES};
use objectstore_svc::backend::BackendKind;
use objectstore_svc::client::{Client, ClientError, Precondition, PutOptions};
use objectstore_svc::{Config, EMBEDDED_FILE, Settings};
use tokio::net::TcpListener;
use tokio::sync::Mutex;

mod forget;

const APP: &str = "orders";
const TABLE: &str = "wf-objectstore-suite";

struct Harness {
    kind: BackendKind,
    base: String,
    tokens: TokenKey,
    client: Client,
    store: String,
    table: String,
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
struct Stopped {
    kind: BackendKind,
    table: String,
    store: String,
    data: tempfile::TempDir,
}

fn unique(prefix: &str) -> String {
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
async fn until_past(at: u64) {
    while now_ms() <= at {
        tokio::time::sleep(Duration::from_millis(at + 1 - now_ms().min(at))).await;
    }
}

impl Harness {
    async fn start(kind: BackendKind) -> Harness {
        Self::start_on(kind, TABLE).await
    }

    /// A service whose DynamoDB backend uses `table`.
    async fn start_on(kind: BackendKind, table: &str) -> Harness {
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
    async fn stop(mut self) -> Stopped {
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

    fn client_for(&self, app: &str, scope: Scope) -> Client {
        let token = self.tokens.issue(app, scope, Duration::from_secs(3600));
        Client::new(&self.base, app, &token).expect("client")
    }

    async fn put(&self, key: &str, value: &[u8]) -> String {
        self.client
            .put(&self.store, key, value.to_vec(), &PutOptions::default())
            .await
            .expect("put")
            .etag
    }

    async fn value(&self, key: &str) -> Option<Vec<u8>> {
        self.client
            .get(&self.store, key)
            .await
            .expect("get")
            .map(|f| f.value.to_vec())
    }

    /// Every byte the backend holds for this test's store, as stored.
    async fn raw_bytes(&self) -> Vec<u8> {
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
    fn embedded_file(&self) -> std::path::PathBuf {
        self.data.path().join(EMBEDDED_FILE)
    }

    /// Starts a service on this data.
    async fn start(self) -> Harness {
        let config = Config {
            data_dir: self.data.path().to_path_buf(),
            settings: Settings {
                backend: self.kind,
                table: self.table.clone(),
            },
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
async fn open_when_released(path: &std::path::Path) -> redb::Database {
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

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn status(result: Result<impl std::fmt::Debug, ClientError>) -> u16 {
    match result {
        Err(e) => e.status().unwrap_or_else(|| panic!("no status: {e}")),
        Ok(v) => panic!("expected a refusal, got {v:?}"),
    }
}

async fn round_trip_etags_delete_and_stats(h: Harness) {
    let s = &h.store;
    let first = h
        .client
        .put(s, "a/1", b"one".to_vec(), &PutOptions::default())
        .await
        .unwrap();
    assert!(first.created);
    let got = h.client.get(s, "a/1").await.unwrap().expect("present");
    assert_eq!(got.value.as_ref(), b"one");
    assert_eq!(got.etag, first.etag);
    let second = h
        .client
        .put(s, "a/1", b"uno!".to_vec(), &PutOptions::default())
        .await
        .unwrap();
    assert!(!second.created);
    assert_ne!(second.etag, first.etag);
    // Keys may hold any UTF-8, slashes, spaces and percent signs included.
    let odd = "dir/sub dir/ü%2F?#&=x";
    h.put(odd, b"odd").await;
    assert_eq!(h.value(odd).await.as_deref(), Some(b"odd".as_slice()));
    let stats = h.client.stats(s).await.unwrap();
    assert_eq!((stats.keys, stats.bytes), (2, 7));

    assert!(
        h.client
            .delete(s, "a/1", &Precondition::None)
            .await
            .unwrap()
    );
    assert_eq!(h.value("a/1").await, None);
    assert!(
        !h.client
            .delete(s, "a/1", &Precondition::None)
            .await
            .unwrap()
    );
    assert_eq!(h.client.stats(s).await.unwrap().keys, 1);
}

async fn cas_increments_lose_no_update(h: Harness) {
    const WRITERS: usize = 32;
    const ATTEMPTS: usize = 6;
    let s = h.store.clone();
    h.put("counter", b"0").await;
    let successes = Arc::new(AtomicUsize::new(0));
    let tasks = (0..WRITERS).map(|_| {
        let (client, s, successes) = (h.client.clone(), s.clone(), successes.clone());
        tokio::spawn(async move {
            for _ in 0..ATTEMPTS {
                let cur = client.get(&s, "counter").await.unwrap().expect("counter");
                let n: u64 = std::str::from_utf8(&cur.value).unwrap().parse().unwrap();
                let options = PutOptions {
                    precondition: Precondition::IfMatch(cur.etag),
                    ..PutOptions::default()
                };
                match client
                    .put(&s, "counter", (n + 1).to_string(), &options)
                    .await
                {
                    Ok(_) => {
                        successes.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) if e.is_precondition_failed() => {}
                    Err(e) => panic!("{e}"),
                }
            }
        })
    });
    futures::future::try_join_all(tasks).await.unwrap();
    let total = successes.load(Ordering::SeqCst);
    assert!(total >= 1, "at least the first CAS of a round succeeds");
    let end = h.value("counter").await.unwrap();
    assert_eq!(std::str::from_utf8(&end).unwrap(), total.to_string());
}

async fn put_if_absent_has_one_winner(h: Harness) {
    let tasks = (0..32).map(|i| {
        let (client, s) = (h.client.clone(), h.store.clone());
        tokio::spawn(async move {
            (
                i,
                client
                    .put_if_absent(&s, "once", format!("w{i}"))
                    .await
                    .unwrap(),
            )
        })
    });
    let results = futures::future::try_join_all(tasks).await.unwrap();
    let winners: Vec<_> = results
        .iter()
        .filter(|(_, won)| *won)
        .map(|(i, _)| *i)
        .collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    assert_eq!(
        h.value("once").await.unwrap(),
        format!("w{}", winners[0]).into_bytes()
    );
}

async fn expired_keys_vanish_at_once(h: Harness) {
    let s = &h.store;
    let short = PutOptions {
        ttl: Some(Duration::from_millis(300)),
        ..PutOptions::default()
    };
    let written = h
        .client
        .put(s, "brief", b"soon gone".to_vec(), &short)
        .await
        .unwrap();
    let at = written.expires_at.expect("an expiry");
    h.put("lasting", b"stays").await;
    until_past(at).await;
    // One read each, no retry: the backend may not have deleted it yet, the service hides it.
    assert_eq!(h.value("brief").await, None);
    let page = h.client.list(s, "", None, None).await.unwrap();
    let keys: Vec<_> = page.keys.iter().map(|k| k.key.as_str()).collect();
    assert_eq!(keys, ["lasting"]);
    assert_eq!(h.client.stats(s).await.unwrap().keys, 1);
    let stale = PutOptions {
        precondition: Precondition::IfMatch(written.etag),
        ..PutOptions::default()
    };
    assert!(
        h.client
            .put(s, "brief", b"x".to_vec(), &stale)
            .await
            .unwrap_err()
            .is_precondition_failed()
    );
    assert!(
        h.client
            .put_if_absent(s, "brief", b"again".to_vec())
            .await
            .unwrap()
    );
    assert_eq!(h.value("brief").await.as_deref(), Some(b"again".as_slice()));

    for bad in [Duration::ZERO, Duration::from_secs(31 * 24 * 3600)] {
        let options = PutOptions {
            ttl: Some(bad),
            ..PutOptions::default()
        };
        assert_eq!(
            status(h.client.put(s, "lasting", b"no".to_vec(), &options).await),
            400
        );
    }
    assert_eq!(
        h.value("lasting").await.as_deref(),
        Some(b"stays".as_slice())
    );
}

/// A 10 MiB value whose every byte is `fill`.
fn big(fill: u8) -> Vec<u8> {
    vec![fill; MAX_VALUE_BYTES]
}

async fn large_values_are_whole_under_racing_overwrites(h: Harness) {
    const READERS: usize = 2;
    const ROUNDS: u8 = 3;
    let s = h.store.clone();
    h.put("big", &big(b'a')).await;
    assert!(h.value("big").await.unwrap() == big(b'a'));

    let writing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let readers = (0..READERS).map(|_| {
        let (client, s, writing) = (h.client.clone(), s.clone(), writing.clone());
        tokio::spawn(async move {
            let mut reads = 0;
            while writing.load(Ordering::SeqCst) || reads == 0 {
                let v = client
                    .get(&s, "big")
                    .await
                    .unwrap()
                    .expect("always present")
                    .value;
                assert_eq!(v.len(), MAX_VALUE_BYTES, "a partial value");
                assert!(v.iter().all(|&b| b == v[0]), "a mix of two versions");
                reads += 1;
            }
            reads
        })
    });
    let readers: Vec<_> = readers.collect();
    for round in 1..=ROUNDS {
        h.put("big", &big(b'a' + round)).await;
    }
    writing.store(false, Ordering::SeqCst);
    for r in readers {
        assert!(r.await.unwrap() >= 1);
    }
    assert!(h.value("big").await.unwrap() == big(b'a' + ROUNDS));

    // One byte over: refused whole, and the old value stays.
    let over = vec![b'z'; MAX_VALUE_BYTES + 1];
    assert_eq!(
        status(h.client.put(&s, "big", over, &PutOptions::default()).await),
        413
    );
    assert!(h.value("big").await.unwrap() == big(b'a' + ROUNDS));
    let stats = h.client.stats(&s).await.unwrap();
    assert_eq!((stats.keys, stats.bytes), (1, MAX_VALUE_BYTES as u64));
}

async fn one_lease_holder_at_a_time_and_takeover_fences(h: Harness) {
    const CONTENDERS: usize = 8;
    const TRIES: usize = 6;
    let name = unique("primary");
    let inside = Arc::new(AtomicUsize::new(0));
    let granted = Arc::new(Mutex::new(Vec::new()));
    let tasks = (0..CONTENDERS).map(|i| {
        let (client, name, inside, granted) = (
            h.client.clone(),
            name.clone(),
            inside.clone(),
            granted.clone(),
        );
        tokio::spawn(async move {
            for _ in 0..TRIES {
                match client
                    .acquire(&name, &format!("worker-{i}"), Duration::from_secs(30))
                    .await
                {
                    Ok(lease) => {
                        assert_eq!(
                            inside.fetch_add(1, Ordering::SeqCst),
                            0,
                            "two holders at once"
                        );
                        granted.lock().await.push(lease.token);
                        tokio::task::yield_now().await;
                        inside.fetch_sub(1, Ordering::SeqCst);
                        client.release(&lease).await.unwrap();
                    }
                    Err(e) if e.is_conflict() => {}
                    Err(e) => panic!("{e}"),
                }
            }
        })
    });
    futures::future::try_join_all(tasks).await.unwrap();
    let tokens = granted.lock().await.clone();
    assert!(!tokens.is_empty());
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "tokens not increasing: {tokens:?}"
    );

    // Takeover after expiry: the new holder's token is larger, the old one is fenced off.
    let takeover = unique("lock");
    // Long enough to outlast the calls below however slow; shortened by the renewal.
    let a = h
        .client
        .acquire(&takeover, "a", Duration::from_secs(60))
        .await
        .unwrap();
    let again = h
        .client
        .acquire(&takeover, "a", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        again.token, a.token,
        "re-acquiring what one holds keeps the token"
    );
    let held = h
        .client
        .acquire(&takeover, "b", Duration::from_secs(30))
        .await
        .unwrap_err();
    assert!(held.is_conflict(), "{held}");
    let a = h
        .client
        .renew(&again, Duration::from_millis(300))
        .await
        .unwrap();
    until_past(a.expires_at).await;
    let b = h
        .client
        .acquire(&takeover, "b", Duration::from_secs(30))
        .await
        .unwrap();
    assert!(b.token > a.token, "{b:?} after {a:?}");
    assert!(
        h.client
            .renew(&a, Duration::from_secs(30))
            .await
            .unwrap_err()
            .is_conflict()
    );
    assert!(h.client.release(&a).await.unwrap_err().is_conflict());
    h.client.release(&b).await.unwrap();
    let c = h
        .client
        .acquire(&takeover, "a", Duration::from_secs(30))
        .await
        .unwrap();
    assert!(c.token > b.token, "release keeps the counter");
}

async fn listing_pages_through_ten_thousand_keys(h: Harness) {
    const KEYS: usize = 10_000;
    let s = h.store.clone();
    let client = h.client.clone();
    futures::stream::iter(0..KEYS)
        .map(|i| {
            let (client, s) = (client.clone(), s.clone());
            async move {
                client
                    .put(
                        &s,
                        &format!("k/{i:05}"),
                        i.to_string(),
                        &PutOptions::default(),
                    )
                    .await
            }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    for other in ["j", "k", "l/1", "kz"] {
        h.put(other, b"x").await;
    }
    let mut seen = Vec::new();
    let mut cursor = None;
    let mut pages = 0;
    loop {
        let page = h
            .client
            .list(&s, "k/", cursor.as_deref(), None)
            .await
            .unwrap();
        seen.extend(page.keys.into_iter().map(|k| k.key));
        pages += 1;
        match page.cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
        assert!(pages <= KEYS, "listing does not end");
    }
    let expected: Vec<_> = (0..KEYS).map(|i| format!("k/{i:05}")).collect();
    assert_eq!(seen.len(), KEYS, "missed or repeated keys");
    assert_eq!(seen, expected);
    assert_eq!(seen.iter().collect::<BTreeSet<_>>().len(), KEYS);

    // Small pages with a prefix that is itself a key.
    let mut small = Vec::new();
    let mut cursor = None;
    loop {
        let page = h
            .client
            .list(&s, "k", cursor.as_deref(), Some(3))
            .await
            .unwrap();
        assert!(page.keys.len() <= 3);
        small.extend(page.keys.into_iter().map(|k| k.key));
        cursor = page.cursor;
        if cursor.is_none() || small.len() > 6 {
            break;
        }
    }
    assert_eq!(&small[..3], ["k", "k/00000", "k/00001"]);
    assert_eq!(h.client.stats(&s).await.unwrap().keys, KEYS as u64 + 4);
}

async fn apps_are_isolated_by_token(h: Harness) {
    let s = &h.store;
    h.put("secret", b"orders only").await;
    let url = format!("{}/v1/apps/{APP}/stores/{s}/keys/secret", h.base);
    let http = reqwest::Client::new();
    let none = http.get(&url).send().await.unwrap();
    assert_eq!(none.status(), 401);
    let body: serde_json::Value = none.json().await.unwrap();
    assert_eq!(body["error"], "UNAUTHORIZED");
    assert!(body["correlationId"].is_string(), "{body}");
    let forged = http
        .get(&url)
        .bearer_auth("wft1.b3JkZXJz.1.9999999999.worker.AAAA")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 401);
    let other_fabric = TokenKey::generate().issue(APP, Scope::Worker, Duration::from_secs(60));
    assert_eq!(
        http.get(&url)
            .bearer_auth(other_fabric)
            .send()
            .await
            .unwrap()
            .status(),
        401
    );

    // Billing's token on orders' path: 403, whatever the operation.
    let billing_token = h
        .tokens
        .issue("billing", Scope::Worker, Duration::from_secs(60));
    for req in [http.get(&url), http.put(&url).body("x"), http.delete(&url)] {
        let r = req.bearer_auth(&billing_token).send().await.unwrap();
        assert_eq!(r.status(), 403);
    }
    let list = format!("{}/v1/apps/{APP}/stores/{s}/keys", h.base);
    assert_eq!(
        http.get(&list)
            .bearer_auth(&billing_token)
            .send()
            .await
            .unwrap()
            .status(),
        403
    );
    let lease = format!("{}/v1/apps/{APP}/leases/primary", h.base);
    let r = http
        .post(&lease)
        .bearer_auth(&billing_token)
        .json(&serde_json::json!({"holder": "x", "ttl": "1s"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    // A read-scoped token reads but does not write.
    let reader = h.client_for(APP, Scope::Read);
    assert!(reader.get(s, "secret").await.unwrap().is_some());
    assert_eq!(
        status(
            reader
                .put(s, "secret", b"no".to_vec(), &PutOptions::default())
                .await
        ),
        403
    );

    // Billing's own store of the same name is another partition.
    let billing = h.client_for("billing", Scope::Worker);
    assert!(billing.get(s, "secret").await.unwrap().is_none());
    assert_eq!(
        h.value("secret").await.as_deref(),
        Some(b"orders only".as_slice())
    );
}

async fn bad_input_is_refused_and_changes_nothing(h: Harness) {
    let s = &h.store;
    h.put("k", b"v").await;
    let base = format!("{}/v1/apps/{APP}/stores/{s}/keys", h.base);
    let token = h.tokens.issue(APP, Scope::Worker, Duration::from_secs(60));
    let http = reqwest::Client::new();
    let long_key = "x".repeat(MAX_KEY_BYTES + 1);
    let cases = [
        http.put(format!("{base}/")).body("v"),
        http.put(format!("{base}/{long_key}")).body("v"),
        http.put(format!("{base}/k"))
            .header("if-match", "\"a\", \"b\"")
            .body("v"),
        http.put(format!("{base}/k"))
            .header("if-none-match", "\"abc\"")
            .body("v"),
        http.put(format!("{base}/k"))
            .header("if-match", "\"a\"")
            .header("if-none-match", "*")
            .body("v"),
        http.put(format!("{base}/k?ttl=soon")).body("v"),
        http.put(format!("{base}/k?ttl=-1s")).body("v"),
        http.put(format!("{base}/k?colour=red")).body("v"),
        http.get(format!("{base}?limit=0")),
        http.get(format!("{base}?limit=many")),
        http.put(format!(
            "{}/v1/apps/{APP}/stores/bad%20store/keys/k",
            h.base
        ))
        .body("v"),
        http.post(format!("{}/v1/apps/{APP}/leases/l", h.base))
            .body("{not json"),
        http.post(format!("{}/v1/apps/{APP}/leases/l", h.base))
            .json(&serde_json::json!({"holder": "", "ttl": "1s"})),
        http.post(format!("{}/v1/apps/{APP}/leases/l", h.base))
            .json(&serde_json::json!({"holder": "h", "ttl": "0s"})),
        http.put(format!("{}/v1/apps/{APP}/leases/l", h.base))
            .json(&serde_json::json!({"holder": "h", "ttl": "1s"})),
    ];
    for req in cases {
        let r = req.bearer_auth(&token).send().await.unwrap();
        let status = r.status().as_u16();
        let url = r.url().to_string();
        let body: serde_json::Value = r
            .json()
            .await
            .unwrap_or_else(|e| panic!("{url}: not JSON: {e}"));
        assert_eq!(status, 400, "{url}: {body}");
        assert_eq!(body["error"], "VALIDATION", "{url}: {body}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    assert_eq!(h.value("k").await.as_deref(), Some(b"v".as_slice()));
    let stats = h.client.stats(s).await.unwrap();
    assert_eq!((stats.keys, stats.bytes), (1, 1));
}

async fn values_are_ciphertext_at_rest(h: Harness) {
    let secret = b"alice@example.com ordered 42 widgets";
    h.put("customer/alice", secret).await;
    // A value large enough to be chunked in DynamoDB.
    let mut large = b"CHUNKED-PLAINTEXT-MARKER ".repeat(40_000);
    large.extend_from_slice(secret);
    h.put("customer/bulk", &large).await;
    assert_eq!(h.value("customer/bulk").await.unwrap(), large);
    let raw = h.raw_bytes().await;
    assert!(
        contains(&raw, b"customer/alice"),
        "keys stay readable for listing"
    );
    assert!(
        !contains(&raw, b"alice@example.com"),
        "plaintext value at rest"
    );
    assert!(
        !contains(&raw, b"CHUNKED-PLAINTEXT-MARKER"),
        "plaintext chunk at rest"
    );
}

macro_rules! suite {
    ($($case:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    super::$case(super::Harness::start(super::BackendKind::Embedded).await).await
                }
            )*
        }
        mod dynamodb {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    super::$case(super::Harness::start(super::BackendKind::DynamoDb).await).await
                }
            )*
        }
    };
}

suite!(
    round_trip_etags_delete_and_stats,
    cas_increments_lose_no_update,
    put_if_absent_has_one_winner,
    expired_keys_vanish_at_once,
    large_values_are_whole_under_racing_overwrites,
    one_lease_holder_at_a_time_and_takeover_fences,
    listing_pages_through_ten_thousand_keys,
    apps_are_isolated_by_token,
    bad_input_is_refused_and_changes_nothing,
    values_are_ciphertext_at_rest,
);

/// Forgetting an app, on each backend; each case on a table of its own.
mod forgetting {
    use super::{BackendKind, Harness, forget};

    macro_rules! cases {
        ($($case:ident),* $(,)?) => {
            mod embedded {
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                    async fn $case() {
                        let h = super::Harness::start(super::BackendKind::Embedded).await;
                        super::forget::$case(h).await
                    }
                )*
            }
            mod dynamodb {
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                    async fn $case() {
                        let table = super::forget::own_table();
                        let h = super::Harness::start_on(super::BackendKind::DynamoDb, &table).await;
                        super::forget::$case(h).await
                    }
                )*
            }
        };
    }

    cases!(
        forgetting_an_app_refuses_its_tokens_and_purges_it_alone,
        a_purge_cut_short_is_finished_by_the_next_call,
    );
}
