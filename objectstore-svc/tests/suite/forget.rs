//! Forgetting a deleted app, through the HTTP API: its tokens are refused at
//! once and after a restart, everything it stored (the runtime's own stores,
//! chunks and leases included) is gone, and every other app, even one whose
//! name it begins with or that begins with its name, keeps all it had.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use common::app::{app_id, new_instance};
use common::token::{Scope, TokenKey};
use objectstore_svc::backend::BackendKind;
use objectstore_svc::client::{self, Client, PutOptions};
use redb::{ReadableDatabase, ReadableTable, TableDefinition, TableHandle};

use crate::harness::{Harness, Stopped, open_when_released, unique};

/// The stores every app is given: its own, and the runtime's.
const STORES: [&str; 4] = ["orders", "_idempotent", "_aggregate", "_schedule"];
/// Large enough to be chunked in DynamoDB.
const LARGE: usize = 400 * 1024;

type Item = HashMap<String, AttributeValue>;

/// Gives `app` values in every store (one large, one expiring), and a lease.
async fn fill(h: &Harness, app: &str) -> Client {
    let c = h.client_for(app, Scope::Worker);
    for store in STORES {
        for key in ["a", "b/1"] {
            let value = format!("{app}/{store}/{key}");
            c.put(store, key, value.into_bytes(), &PutOptions::default())
                .await
                .unwrap();
        }
    }
    let large = vec![b'L'; LARGE];
    c.put("orders", "large", large, &PutOptions::default())
        .await
        .unwrap();
    let expiring = PutOptions {
        ttl: Some(Duration::from_secs(3600)),
        ..PutOptions::default()
    };
    c.put("_schedule", "tick", b"t".to_vec(), &expiring)
        .await
        .unwrap();
    c.acquire("primary", "worker-1", Duration::from_secs(600))
        .await
        .unwrap();
    c
}

/// What an app has: each store's keys and bytes, and who holds its lease.
async fn snapshot(c: &Client, app: &str) -> BTreeMap<&'static str, (u64, u64)> {
    let mut out = BTreeMap::new();
    for store in STORES {
        let stats = c.stats(store).await.unwrap();
        out.insert(store, (stats.keys, stats.bytes));
        let got = c.get(store, "a").await.unwrap().expect("a value");
        assert_eq!(got.value.as_ref(), format!("{app}/{store}/a").as_bytes());
    }
    let held = c
        .acquire("primary", "worker-2", Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(held.is_conflict(), "{held}");
    out
}

async fn assert_refused(r: reqwest::Response, status: u16, kind: &str) -> String {
    assert_eq!(r.status().as_u16(), status);
    let body: serde_json::Value = r.json().await.expect("a JSON error");
    assert_eq!(body["error"], kind, "{body}");
    body["message"].as_str().unwrap_or_default().to_string()
}

/// Neither no token, nor the app's own tokens, nor another fabric's
/// internal token may forget an app; nothing is changed by trying.
async fn only_the_internal_token_may_forget(
    h: &Harness,
    app: &str,
    before: &BTreeMap<&str, (u64, u64)>,
) {
    let http = reqwest::Client::new();
    let url = format!("{}/v1/apps/{app}", h.base);
    assert_refused(http.delete(&url).send().await.unwrap(), 401, "UNAUTHORIZED").await;
    for scope in [Scope::Worker, Scope::Read] {
        let token = h.tokens.issue(app, scope, Duration::from_secs(60));
        let r = http.delete(&url).bearer_auth(token).send().await.unwrap();
        assert_refused(r, 403, "FORBIDDEN").await;
    }
    let foreign = TokenKey::generate().issue_internal(Duration::from_secs(60));
    let e = client::forget_app(&h.base, app, &foreign)
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(401));
    assert!(!e.is_retryable(), "{e}");
    let internal = h.tokens.issue_internal(Duration::from_secs(60));
    let e = client::forget_app(&h.base, "Not_An_App", &internal)
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(400));
    let c = h.client_for(app, Scope::Worker);
    assert_eq!(&snapshot(&c, app).await, before);
}

/// Every call of a forgotten app, with any of its tokens: 403, saying why.
async fn every_call_is_refused(h: &Harness, app: &str) {
    let http = reqwest::Client::new();
    let url = |path: &str| format!("{}/v1/apps/{app}{path}", h.base);
    let lease = serde_json::json!({"holder": "worker-1", "ttl": "10s", "token": 1});
    let worker = h.tokens.issue(app, Scope::Worker, Duration::from_secs(60));
    let read = h.tokens.issue(app, Scope::Read, Duration::from_secs(60));
    let reads = || {
        [
            http.get(url("/stores/orders/keys/a")),
            http.get(url("/stores/orders/keys")),
            http.get(url("/stores/orders")),
        ]
    };
    let writes = [
        http.put(url("/stores/orders/keys/a")).body("again"),
        http.put(url("/stores/fresh/keys/a")).body("new"),
        http.delete(url("/stores/orders/keys/a")),
        http.post(url("/leases/primary")).json(&lease),
        http.put(url("/leases/primary")).json(&lease),
        http.delete(url("/leases/primary?holder=worker-1&token=1")),
    ];
    let calls = reads()
        .into_iter()
        .chain(writes)
        .map(|call| call.bearer_auth(&worker))
        .chain(reads().into_iter().map(|call| call.bearer_auth(&read)));
    for call in calls {
        let message = assert_refused(call.send().await.unwrap(), 403, "FORBIDDEN").await;
        assert!(message.contains("deleted"), "{message}");
    }
}

const META: TableDefinition<(&str, &str, &str), (&str, u64, u64)> =
    TableDefinition::new("objectstore_meta");
const DATA: TableDefinition<(&str, &str, &str), &[u8]> = TableDefinition::new("objectstore_data");
const LEASES: TableDefinition<(&str, &str), (&str, u64, u64)> =
    TableDefinition::new("objectstore_leases");
const TOMBSTONES: TableDefinition<&str, u64> = TableDefinition::new("objectstore_tombstones");

/// The embedded store's rows of `app`, as `table: store/key`, and every tombstone.
async fn embedded_rows(stopped: &Stopped, app: &str) -> (Vec<String>, BTreeSet<String>) {
    let db = open_when_released(&stopped.embedded_file()).await;
    let txn = db.begin_read().unwrap();
    let tables: BTreeSet<String> = txn
        .list_tables()
        .unwrap()
        .map(|t| t.name().to_string())
        .collect();
    let known = [
        "objectstore_data",
        "objectstore_leases",
        "objectstore_meta",
        "objectstore_tombstones",
    ];
    assert_eq!(
        tables,
        known.map(String::from).into(),
        "a table this test does not check"
    );
    let mut rows = Vec::new();
    for e in txn.open_table(META).unwrap().iter().unwrap() {
        let (key, _) = e.unwrap();
        let (a, s, k) = key.value();
        if a == app {
            rows.push(format!("meta: {s}/{k}"));
        }
    }
    for e in txn.open_table(DATA).unwrap().iter().unwrap() {
        let (key, _) = e.unwrap();
        let (a, s, k) = key.value();
        if a == app {
            rows.push(format!("data: {s}/{k}"));
        }
    }
    for e in txn.open_table(LEASES).unwrap().iter().unwrap() {
        let (key, _) = e.unwrap();
        let (a, name) = key.value();
        if a == app {
            rows.push(format!("leases: {name}"));
        }
    }
    let tombstones = txn
        .open_table(TOMBSTONES)
        .unwrap()
        .iter()
        .unwrap()
        .map(|e| e.unwrap().0.value().to_string())
        .collect();
    (rows, tombstones)
}

async fn dynamodb() -> aws_sdk_dynamodb::Client {
    aws_sdk_dynamodb::Client::new(&common::aws::sdk_config().await)
}

/// Every item of `table` in one of the partitions `pks`, or in one that
/// starts with one of `prefixes`.
async fn dynamodb_items(table: &str, pks: &[String], prefixes: &[String]) -> Vec<Item> {
    let ddb = dynamodb().await;
    let mut pages = ddb
        .scan()
        .table_name(table)
        .consistent_read(true)
        .into_paginator()
        .items()
        .send();
    let mut items = Vec::new();
    while let Some(item) = pages.next().await {
        let item = item.unwrap();
        let Some(AttributeValue::S(pk)) = item.get("pk") else {
            continue;
        };
        if pks.contains(pk) || prefixes.iter().any(|p| pk.starts_with(p.as_str())) {
            items.push(item);
        }
    }
    items
}

/// The chunk versions `app`'s heads point to.
async fn chunk_versions(table: &str, app: &str) -> BTreeSet<String> {
    dynamodb_items(table, &[], &[format!("o#{app}#")])
        .await
        .iter()
        .filter_map(|item| match item.get("ver") {
            Some(AttributeValue::S(v)) => Some(v.clone()),
            _ => None,
        })
        .collect()
}

/// Everything the backend holds of `app`, by key: its embedded rows, or
/// its DynamoDB items (with the chunks of `versions`, and of every version
/// its heads point to now).
async fn stored_of(stopped: &Stopped, app: &str, versions: &BTreeSet<String>) -> Vec<String> {
    if stopped.kind == BackendKind::Embedded {
        return embedded_rows(stopped, app).await.0;
    }
    let table = &stopped.table;
    let pks: Vec<String> = std::iter::once(format!("l#{app}"))
        .chain(versions.iter().map(|v| format!("c#{v}")))
        .chain(
            chunk_versions(table, app)
                .await
                .iter()
                .map(|v| format!("c#{v}")),
        )
        .collect();
    let prefixes = [format!("o#{app}#"), format!("c#{app}#")];
    let keys: BTreeSet<String> = dynamodb_items(table, &pks, &prefixes)
        .await
        .iter()
        .map(|item| {
            let key = |k: &str| match item.get(k) {
                Some(AttributeValue::S(v)) => v.clone(),
                _ => String::new(),
            };
            format!("{} {}", key("pk"), key("sk"))
        })
        .collect();
    keys.into_iter().collect()
}

/// How many rows or items each filled app has.
fn expected_stored(kind: BackendKind) -> usize {
    match kind {
        // Ten values, each with its metadata and its bytes; one lease.
        BackendKind::Embedded => 10 * 2 + 1,
        // Ten heads, the large value's two chunks (400 KiB sealed, in 280
        // KiB chunks), one lease.
        BackendKind::DynamoDb => 10 + 2 + 1,
    }
}

/// A fresh app name for this run: a table of the emulator and its
/// tombstones outlive a run.
fn fresh_name() -> String {
    format!("shop{}", new_instance())
}

/// A table of the case's own: a purge scans the whole table, and the
/// suite's shared one holds every run's listing test.
pub fn own_table() -> String {
    unique("wf-objectstore-forget")
}

/// Drops a case's own table once it passed.
async fn drop_table(stopped: &Stopped) {
    if stopped.kind == BackendKind::DynamoDb {
        dynamodb()
            .await
            .delete_table()
            .table_name(&stopped.table)
            .send()
            .await
            .unwrap();
    }
}

/// The whole story on one backend: refused callers, the forgetting, what is
/// left, a second call, a restart, and the bare name forgotten after its id.
pub async fn forgetting_an_app_refuses_its_tokens_and_purges_it_alone(h: Harness) {
    let name = fresh_name();
    let victim = app_id(&name, &new_instance());
    let longer = format!("{name}-1");
    let apps = [victim.as_str(), name.as_str(), longer.as_str()];
    let mut before = Vec::new();
    for app in apps {
        let c = fill(&h, app).await;
        before.push(snapshot(&c, app).await);
    }
    let versions = match h.kind {
        BackendKind::DynamoDb => chunk_versions(&h.table, &victim).await,
        BackendKind::Embedded => BTreeSet::new(),
    };
    only_the_internal_token_may_forget(&h, &victim, &before[0]).await;

    let internal = h.tokens.issue_internal(Duration::from_secs(60));
    client::forget_app(&h.base, &victim, &internal)
        .await
        .unwrap();
    every_call_is_refused(&h, &victim).await;
    for (app, before) in apps.iter().zip(&before).skip(1) {
        let c = h.client_for(app, Scope::Worker);
        assert_eq!(&snapshot(&c, app).await, before, "{app}");
    }
    // Forgetting again finds nothing left to do.
    client::forget_app(&h.base, &victim, &internal)
        .await
        .unwrap();

    let stopped = h.stop().await;
    if stopped.kind == BackendKind::DynamoDb {
        assert_eq!(versions.len(), 1, "the large value was chunked");
    }
    assert_eq!(
        stored_of(&stopped, &victim, &versions).await,
        Vec::<String>::new()
    );
    for app in &apps[1..] {
        let left = stored_of(&stopped, app, &BTreeSet::new()).await;
        assert_eq!(left.len(), expected_stored(stopped.kind), "{app}: {left:?}");
    }

    // After a restart the tombstone still stands.
    let h = stopped.start().await;
    every_call_is_refused(&h, &victim).await;

    // The bare name begins every other app's name here: forgetting it
    // leaves the longer name whole.
    let internal = h.tokens.issue_internal(Duration::from_secs(60));
    client::forget_app(&h.base, &name, &internal).await.unwrap();
    every_call_is_refused(&h, &name).await;
    let c = h.client_for(&longer, Scope::Worker);
    assert_eq!(snapshot(&c, &longer).await, before[2]);
    let stopped = h.stop().await;
    for app in [victim.as_str(), name.as_str()] {
        assert_eq!(
            stored_of(&stopped, app, &versions).await,
            Vec::<String>::new(),
            "{app}"
        );
    }
    let left = stored_of(&stopped, &longer, &BTreeSet::new()).await;
    assert_eq!(left.len(), expected_stored(stopped.kind), "{left:?}");
    if stopped.kind == BackendKind::Embedded {
        let (_, tombstones) = embedded_rows(&stopped, &longer).await;
        assert_eq!(tombstones, [victim.clone(), name.clone()].into());
    }
    drop_table(&stopped).await;
}

/// Writes into a stopped service's data what a crash between recording a
/// tombstone and purging leaves; in DynamoDB, also the chunks a purge must
/// find however they came: pointed to by a head from before chunks carried
/// their app in their key, and pointed to by no head (a writer that died
/// between its chunks and its head). Returns the chunk versions written.
async fn tombstone_without_purge(stopped: &Stopped, app: &str) -> BTreeSet<String> {
    if stopped.kind == BackendKind::Embedded {
        let db = open_when_released(&stopped.embedded_file()).await;
        let txn = db.begin_write().unwrap();
        txn.open_table(TOMBSTONES).unwrap().insert(app, 1).unwrap();
        txn.commit().unwrap();
        return BTreeSet::new();
    }
    let ddb = dynamodb().await;
    let put = |pk: String, sk: &str, attrs: Vec<(&str, AttributeValue)>| {
        let req = ddb
            .put_item()
            .table_name(&stopped.table)
            .item("pk", AttributeValue::S(pk))
            .item("sk", AttributeValue::S(sk.to_string()));
        attrs
            .into_iter()
            .fold(req, |req, (k, v)| req.item(k, v))
            .send()
    };
    let bytes = || AttributeValue::B(vec![7u8; 8].into());
    let legacy = uuid::Uuid::new_v4().simple().to_string();
    let head = vec![
        ("e", AttributeValue::S("e0".into())),
        ("z", AttributeValue::N("16".into())),
        ("ver", AttributeValue::S(legacy.clone())),
        ("n", AttributeValue::N("2".into())),
    ];
    put(format!("o#{app}#orders"), "legacy", head)
        .await
        .unwrap();
    for i in ["00000", "00001"] {
        put(format!("c#{legacy}"), i, vec![("v", bytes())])
            .await
            .unwrap();
    }
    let orphan = format!("{app}#{}", uuid::Uuid::new_v4().simple());
    put(format!("c#{orphan}"), "00000", vec![("v", bytes())])
        .await
        .unwrap();
    put("_tombstones".into(), app, Vec::new()).await.unwrap();
    [legacy, orphan].into()
}

/// A service that stopped between recording the tombstone and purging
/// refuses the app from its start, and the next call purges what is left.
pub async fn a_purge_cut_short_is_finished_by_the_next_call(h: Harness) {
    let name = fresh_name();
    let victim = app_id(&name, &new_instance());
    fill(&h, &victim).await;
    let c = fill(&h, &name).await;
    let before = snapshot(&c, &name).await;
    let stopped = h.stop().await;
    let versions = tombstone_without_purge(&stopped, &victim).await;
    let extra = match stopped.kind {
        BackendKind::Embedded => 0,
        // The legacy head and its two chunks, the orphan chunk.
        BackendKind::DynamoDb => 4,
    };
    let there = stored_of(&stopped, &victim, &versions).await;
    assert_eq!(
        there.len(),
        expected_stored(stopped.kind) + extra,
        "{there:?}"
    );

    let h = stopped.start().await;
    every_call_is_refused(&h, &victim).await;
    let internal = h.tokens.issue_internal(Duration::from_secs(60));
    client::forget_app(&h.base, &victim, &internal)
        .await
        .unwrap();
    let c = h.client_for(&name, Scope::Worker);
    assert_eq!(snapshot(&c, &name).await, before);
    let stopped = h.stop().await;
    assert_eq!(
        stored_of(&stopped, &victim, &versions).await,
        Vec::<String>::new()
    );
    drop_table(&stopped).await;
}
