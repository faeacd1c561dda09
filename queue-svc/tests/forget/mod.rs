//! Forgetting a deleted app, through the HTTP API: its tokens are refused at
//! once and after a restart, everything it stored is gone, and every other
//! app, even one whose name it begins with or that begins with its name,
//! keeps all it had.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use common::app::{app_id, new_instance};
use common::token::{Scope, TokenKey};
use queue_svc::BackendKind;
use queue_svc::api::QueueSpec;
use queue_svc::client::{self, Client, LeaseOptions};
use redb::{ReadableDatabase, ReadableTable, TableDefinition, TableHandle};

use crate::support::{Service, open_when_released, settings};

/// A message held through the whole test, so it is in flight when its app is forgotten.
const HELD: Duration = Duration::from_secs(600);

fn opts(wait: Duration, lock: Duration) -> LeaseOptions {
    LeaseOptions {
        max: 10,
        wait,
        lock,
    }
}

/// Gives `app` three queues: one with messages waiting and one held, one
/// with plain messages, one with a dead letter. Returns the held lease.
async fn fill(c: &Client) -> String {
    let sealed = QueueSpec {
        encrypted: true,
        max_deliveries: None,
    };
    c.declare("orders", &sealed).await.unwrap();
    c.publish_batch("orders", vec!["o1".into(), "o2".into(), "o3".into()])
        .await
        .unwrap();
    let held = c
        .lease(
            "orders",
            LeaseOptions {
                max: 1,
                ..opts(Duration::from_secs(5), HELD)
            },
        )
        .await
        .unwrap();
    assert_eq!(held.len(), 1);
    c.declare("audit.v2", &QueueSpec::default()).await.unwrap();
    c.publish_batch("audit.v2", vec!["a1".into(), "a2".into()])
        .await
        .unwrap();
    let poison = QueueSpec {
        encrypted: false,
        max_deliveries: Some(1),
    };
    c.declare("poison", &poison).await.unwrap();
    c.publish_batch("poison", vec!["bad".into()]).await.unwrap();
    let first = c
        .lease(
            "poison",
            opts(Duration::from_secs(5), Duration::from_secs(30)),
        )
        .await
        .unwrap();
    assert_eq!(first.len(), 1);
    c.rollback(&first[0].lease_id, Some("cannot parse"))
        .await
        .unwrap();
    // The next delivery would be the second of at most one: it goes to the DLQ.
    for _ in 0..10 {
        c.lease(
            "poison",
            opts(Duration::from_secs(2), Duration::from_secs(30)),
        )
        .await
        .unwrap();
        if c.stats("poison").await.unwrap().dlq_depth == 1 {
            return held[0].lease_id.clone();
        }
    }
    panic!("the poison queue's message never reached its DLQ");
}

/// What an app has: each queue's name, settings and counts.
async fn snapshot(c: &Client) -> Vec<(String, bool, u32, u64, u64, u64)> {
    c.list()
        .await
        .unwrap()
        .into_iter()
        .map(|s| {
            let counts = (s.depth, s.in_flight, s.dlq_depth);
            (
                s.name,
                s.encrypted,
                s.max_deliveries,
                counts.0,
                counts.1,
                counts.2,
            )
        })
        .collect()
}

fn expected_snapshot() -> Vec<(String, bool, u32, u64, u64, u64)> {
    vec![
        ("audit.v2".into(), false, 3, 2, 0, 0),
        ("orders".into(), true, 3, 2, 1, 0),
        ("poison".into(), false, 1, 0, 0, 1),
    ]
}

async fn assert_refused(r: reqwest::Response, status: u16, kind: &str) -> String {
    assert_eq!(r.status().as_u16(), status);
    let body: serde_json::Value = r.json().await.expect("a JSON error");
    assert_eq!(body["error"], kind, "{body}");
    body["message"].as_str().unwrap_or_default().to_string()
}

/// Neither no token, nor the app's own tokens, nor another fabric's
/// internal token may forget an app.
async fn only_the_internal_token_may_forget(svc: &Service, app: &str) {
    let http = reqwest::Client::new();
    let url = format!("{}/v1/apps/{app}", svc.base);
    assert_refused(http.delete(&url).send().await.unwrap(), 401, "UNAUTHORIZED").await;
    for scope in [Scope::Worker, Scope::Read] {
        let r = http
            .delete(&url)
            .bearer_auth(svc.token(app, scope))
            .send()
            .await
            .unwrap();
        assert_refused(r, 403, "FORBIDDEN").await;
    }
    let foreign = TokenKey::generate().issue_internal(Duration::from_secs(60));
    let e = client::forget_app(&svc.base, app, &foreign)
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(401));
    assert!(!e.is_retryable(), "{e}");
    let e = client::forget_app(&svc.base, "Not_An_App", &svc.internal_token())
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(400));
    assert_eq!(snapshot(&svc.client(app)).await, expected_snapshot());
}

/// Every call of a forgotten app, with any of its tokens: 403, saying why.
async fn every_call_is_refused(svc: &Service, app: &str, held: &str) {
    let http = reqwest::Client::new();
    let url = |path: &str| format!("{}/v1/apps/{app}{path}", svc.base);
    let worker = svc.token(app, Scope::Worker);
    let read = svc.token(app, Scope::Read);
    let one = serde_json::json!({"messages": [{"body": "x"}]});
    let calls = [
        http.put(url("/queues/orders")).json(&QueueSpec::default()),
        http.put(url("/queues/fresh")).json(&QueueSpec::default()),
        http.post(url("/queues/orders/messages")).json(&one),
        http.post(url("/queues/orders/leases?wait=0s")),
        http.delete(url(&format!("/leases/{held}"))),
        http.post(url(&format!("/leases/{held}/extend"))),
        http.post(url("/acks"))
            .json(&serde_json::json!({"leases": [held]})),
        http.get(url("/queues")),
        http.get(url("/queues/orders")),
        http.post(url("/queues/poison/dlq/redrive")),
    ];
    for call in calls {
        let r = call.bearer_auth(&worker).send().await.unwrap();
        let message = assert_refused(r, 403, "FORBIDDEN").await;
        assert!(message.contains("deleted"), "{message}");
    }
    for path in ["/queues", "/queues/orders"] {
        let r = http.get(url(path)).bearer_auth(&read).send().await.unwrap();
        assert_refused(r, 403, "FORBIDDEN").await;
    }
}

/// The SQS queues whose names start with `prefix`.
async fn sqs_queues(prefix: &str) -> Vec<String> {
    let sqs = aws_sdk_sqs::Client::new(&common::aws::sdk_config().await);
    let mut urls = Vec::new();
    let mut pages = sqs
        .list_queues()
        .queue_name_prefix(prefix)
        .max_results(1000)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        urls.extend(page.unwrap().queue_urls().iter().cloned());
    }
    urls
}

const QUEUES: TableDefinition<&str, &str> = TableDefinition::new("queues");
const MESSAGES: TableDefinition<(&str, u128), &str> = TableDefinition::new("messages");
const BODIES: TableDefinition<(&str, u128), &[u8]> = TableDefinition::new("bodies");
const SCHEDULE: TableDefinition<(&str, u64, u128), ()> = TableDefinition::new("schedule");
const TOMBSTONES: TableDefinition<&str, u64> = TableDefinition::new("tombstones");

/// The part keys of every row of the embedded store, table by table, and its tombstones.
async fn embedded_rows(path: &Path) -> (Vec<(String, String)>, BTreeSet<String>) {
    let db = open_when_released(path).await;
    let txn = db.begin_read().unwrap();
    let tables: BTreeSet<String> = txn
        .list_tables()
        .unwrap()
        .map(|t| t.name().to_string())
        .collect();
    assert_eq!(
        tables,
        ["bodies", "messages", "queues", "schedule", "tombstones"]
            .map(String::from)
            .into(),
        "a table this test does not check"
    );
    let mut rows = Vec::new();
    let mut add = |table: &str, pk: &str| rows.push((table.to_string(), pk.to_string()));
    for e in txn.open_table(QUEUES).unwrap().iter().unwrap() {
        add("queues", e.unwrap().0.value());
    }
    for e in txn.open_table(MESSAGES).unwrap().iter().unwrap() {
        add("messages", e.unwrap().0.value().0);
    }
    for e in txn.open_table(BODIES).unwrap().iter().unwrap() {
        add("bodies", e.unwrap().0.value().0);
    }
    for e in txn.open_table(SCHEDULE).unwrap().iter().unwrap() {
        add("schedule", e.unwrap().0.value().0);
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

/// What the backend itself holds of `app`: SQS queues, or embedded rows.
async fn stored_of(svc_dir: &Path, settings: &queue_svc::Settings, app: &str) -> Vec<String> {
    match settings.backend {
        BackendKind::Sqs => sqs_queues(&format!("{}{app}_", settings.sqs_prefix)).await,
        BackendKind::Embedded => {
            let (rows, _) = embedded_rows(&svc_dir.join(queue_svc::EMBEDDED_FILE)).await;
            rows.into_iter()
                .filter(|(_, pk)| pk.starts_with(&format!("{app}/")))
                .map(|(table, pk)| format!("{table}: {pk}"))
                .collect()
        }
    }
}

/// Each app's queues, as a backend names them: the DLQ's too.
fn expected_stored(settings: &queue_svc::Settings) -> usize {
    match settings.backend {
        // Three queues, each with its DLQ.
        BackendKind::Sqs => 6,
        // Three queue records, six messages (one a dead letter), each with
        // its body and schedule entry.
        BackendKind::Embedded => 3 + 6 * 3,
    }
}

/// The whole story on one backend: refused callers, the forgetting, what is
/// left, a second call, a restart, and the bare name forgotten after its id.
pub async fn forgetting_an_app_refuses_its_tokens_and_purges_it_alone(backend: BackendKind) {
    let dir = tempfile::tempdir().unwrap();
    let settings = settings(backend);
    let svc = Service::start(settings.clone(), dir.path(), None).await;
    let victim = app_id("shop", &new_instance());
    let mut held = Vec::new();
    for app in [victim.as_str(), "shop", "shop-1"] {
        held.push(fill(&svc.client(app)).await);
        assert_eq!(
            snapshot(&svc.client(app)).await,
            expected_snapshot(),
            "{app}"
        );
    }
    only_the_internal_token_may_forget(&svc, &victim).await;

    // A long poll of the app is waiting when it is forgotten: it ends then,
    // rather than holding the purge up for its 20 s.
    let c = svc.client(&victim);
    c.declare("idle", &QueueSpec::default()).await.unwrap();
    let poll = {
        let c = c.clone();
        tokio::spawn(async move {
            c.lease(
                "idle",
                opts(Duration::from_secs(20), Duration::from_secs(30)),
            )
            .await
        })
    };
    // Nothing tells when the poll is admitted; whether it was or not, the
    // assertions below hold, and this pause makes it likely that it was.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    client::forget_app(&svc.base, &victim, &svc.internal_token())
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "forgetting waited {:?}",
        started.elapsed()
    );
    match poll.await.unwrap() {
        Ok(messages) => assert!(messages.is_empty(), "{messages:?}"),
        Err(e) => assert_eq!(e.status(), Some(403), "{e}"),
    }

    every_call_is_refused(&svc, &victim, &held[0]).await;
    for app in ["shop", "shop-1"] {
        assert_eq!(
            snapshot(&svc.client(app)).await,
            expected_snapshot(),
            "{app}"
        );
    }
    let got = svc
        .client("shop")
        .lease(
            "audit.v2",
            opts(Duration::from_secs(5), Duration::from_secs(30)),
        )
        .await
        .unwrap();
    let bodies: BTreeSet<_> = got.iter().map(|m| m.body.as_str()).collect();
    assert_eq!(bodies, ["a1", "a2"].into());
    for m in &got {
        svc.client("shop")
            .rollback(&m.lease_id, None)
            .await
            .unwrap();
    }
    // Forgetting again finds nothing left to do.
    client::forget_app(&svc.base, &victim, &svc.internal_token())
        .await
        .unwrap();
    if backend == BackendKind::Sqs {
        assert_eq!(
            sqs_queues(&format!("{}{victim}_", settings.sqs_prefix)).await,
            Vec::<String>::new()
        );
        let bystander = sqs_queues(&format!("{}shop_", settings.sqs_prefix)).await;
        assert_eq!(bystander.len(), expected_stored(&settings), "{bystander:?}");
    }
    svc.stop().await;
    assert_eq!(
        stored_of(dir.path(), &settings, &victim).await,
        Vec::<String>::new()
    );
    for app in ["shop", "shop-1"] {
        let left = stored_of(dir.path(), &settings, app).await;
        assert_eq!(left.len(), expected_stored(&settings), "{app}: {left:?}");
    }

    // After a restart the tombstone still stands.
    let svc = Service::start(settings.clone(), dir.path(), None).await;
    every_call_is_refused(&svc, &victim, &held[0]).await;

    // The bare name begins every other app's name here: forgetting it
    // leaves shop-1 whole.
    client::forget_app(&svc.base, "shop", &svc.internal_token())
        .await
        .unwrap();
    every_call_is_refused(&svc, "shop", &held[1]).await;
    assert_eq!(snapshot(&svc.client("shop-1")).await, expected_snapshot());
    let c = svc.client("shop-1");
    c.publish_batch("orders", vec!["after".into()])
        .await
        .unwrap();
    svc.stop().await;
    for app in [victim.as_str(), "shop"] {
        assert_eq!(
            stored_of(dir.path(), &settings, app).await,
            Vec::<String>::new(),
            "{app}"
        );
    }
    assert_eq!(
        stored_of(dir.path(), &settings, "shop-1").await.len(),
        expected_stored(&settings)
            + match backend {
                BackendKind::Sqs => 0,
                BackendKind::Embedded => 3,
            }
    );
    if backend == BackendKind::Embedded {
        let (_, tombstones) = embedded_rows(&dir.path().join(queue_svc::EMBEDDED_FILE)).await;
        assert_eq!(tombstones, [victim.clone(), "shop".to_string()].into());
    }
}

/// A service that stopped between recording the tombstone and purging (the
/// state is written here as that crash leaves it) refuses the app from its
/// start, and the next call purges what is left.
pub async fn a_purge_cut_short_is_finished_by_the_next_call(backend: BackendKind) {
    let dir = tempfile::tempdir().unwrap();
    let settings = settings(backend);
    let svc = Service::start(settings.clone(), dir.path(), None).await;
    let victim = app_id("cut", &new_instance());
    let held = fill(&svc.client(&victim)).await;
    fill(&svc.client("cut")).await;
    svc.stop().await;
    match backend {
        BackendKind::Sqs => {
            let sqs = aws_sdk_sqs::Client::new(&common::aws::sdk_config().await);
            sqs.create_queue()
                .queue_name(format!("{}_tomb_{victim}", settings.sqs_prefix))
                .send()
                .await
                .unwrap();
        }
        BackendKind::Embedded => {
            let db = open_when_released(&dir.path().join(queue_svc::EMBEDDED_FILE)).await;
            let txn = db.begin_write().unwrap();
            txn.open_table(TOMBSTONES)
                .unwrap()
                .insert(victim.as_str(), 1)
                .unwrap();
            txn.commit().unwrap();
        }
    }
    assert_eq!(
        stored_of(dir.path(), &settings, &victim).await.len(),
        expected_stored(&settings),
        "the data is still there"
    );

    let svc = Service::start(settings.clone(), dir.path(), None).await;
    every_call_is_refused(&svc, &victim, &held).await;
    client::forget_app(&svc.base, &victim, &svc.internal_token())
        .await
        .unwrap();
    assert_eq!(snapshot(&svc.client("cut")).await, expected_snapshot());
    svc.stop().await;
    assert_eq!(
        stored_of(dir.path(), &settings, &victim).await,
        Vec::<String>::new()
    );
}
