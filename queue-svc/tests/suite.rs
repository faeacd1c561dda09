//! One suite of queue semantics, run against every backend: embedded, and SQS through the emulator.

mod forget;
mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use common::token::Scope;
use queue_svc::BackendKind;
use queue_svc::api::{LeasedMessage, QueueSpec};
use queue_svc::client::{Client, LeaseOptions};
use support::{Service, settings};

const WAIT: Duration = Duration::from_secs(5);

fn opts(max: usize, lock: Duration) -> LeaseOptions {
    LeaseOptions {
        max,
        wait: WAIT,
        lock,
    }
}

fn plain() -> QueueSpec {
    QueueSpec::default()
}

/// Leases until `n` messages are held; fails when a long poll comes back empty first.
async fn lease_n(c: &Client, q: &str, n: usize, lock: Duration) -> Vec<LeasedMessage> {
    let mut got = Vec::new();
    while got.len() < n {
        let batch = c
            .lease(q, opts((n - got.len()).min(10), lock))
            .await
            .expect("lease");
        assert!(
            !batch.is_empty(),
            "{q}: only {} of {n} messages leased",
            got.len()
        );
        got.extend(batch);
    }
    got
}

async fn nothing_within(c: &Client, q: &str, wait: Duration) {
    let got = c
        .lease(
            q,
            LeaseOptions {
                max: 10,
                wait,
                lock: Duration::from_secs(30),
            },
        )
        .await
        .expect("lease");
    assert!(got.is_empty(), "{q}: expected nothing, leased {got:?}");
}

async fn batch_publish_lease_ack(c: &Client) {
    let q = "batch";
    c.declare(q, &plain()).await.unwrap();
    let bodies: Vec<String> = (0..10).map(|i| format!("{{\"n\":{i}}}")).collect();
    let ids = c.publish_batch(q, bodies.clone()).await.unwrap();
    assert_eq!(ids.len(), 10);
    assert_eq!(ids.iter().collect::<BTreeSet<_>>().len(), 10, "unique ids");
    let eleven = c.publish_batch(q, vec!["x".into(); 11]).await.unwrap_err();
    assert_eq!(eleven.status(), Some(400));

    let leased = lease_n(c, q, 10, Duration::from_secs(30)).await;
    let got: BTreeSet<_> = leased.iter().map(|m| m.body.clone()).collect();
    assert_eq!(got, bodies.iter().cloned().collect());
    assert!(leased.iter().all(|m| m.delivery_count == 1));
    let r = c
        .ack_batch(leased.iter().map(|m| m.lease_id.clone()).collect())
        .await
        .unwrap();
    assert_eq!((r.acked, r.failed.len()), (10, 0), "{r:?}");
    let s = c.stats(q).await.unwrap();
    assert_eq!((s.depth, s.in_flight, s.dlq_depth), (0, 0, 0), "{s:?}");
    nothing_within(c, q, Duration::ZERO).await;
}

async fn redelivery_after_lock_expiry(c: &Client) {
    let q = "expiry";
    c.declare(q, &plain()).await.unwrap();
    let id = c.publish_batch(q, vec!["once".into()]).await.unwrap()[0].clone();
    let first = lease_n(c, q, 1, Duration::from_secs(1)).await.remove(0);
    assert_eq!((first.id.as_str(), first.delivery_count), (id.as_str(), 1));
    // Not acked: delivered again once the 1 s lock runs out.
    let second = lease_n(c, q, 1, Duration::from_secs(30)).await.remove(0);
    assert_eq!(
        (second.id.as_str(), second.delivery_count),
        (id.as_str(), 2)
    );
    assert_eq!(second.body, "once");
    c.ack(&second.lease_id).await.unwrap();
    nothing_within(c, q, Duration::ZERO).await;
}

async fn rollback_redelivers_with_the_error(c: &Client) {
    let q = "rollback";
    c.declare(q, &plain()).await.unwrap();
    c.publish_batch(q, vec!["retry me".into()]).await.unwrap();
    let first = lease_n(c, q, 1, Duration::from_secs(30)).await.remove(0);
    c.rollback(&first.lease_id, Some("downstream timed out"))
        .await
        .unwrap();
    let again = lease_n(c, q, 1, Duration::from_secs(30)).await.remove(0);
    assert_eq!(again.id, first.id);
    assert_eq!(again.delivery_count, 2);
    assert_eq!(again.last_error.as_deref(), Some("downstream timed out"));
    c.ack(&again.lease_id).await.unwrap();
}

async fn dead_letters_after_max_deliveries_and_redrive(c: &Client) {
    let q = "poison";
    let spec = QueueSpec {
        encrypted: false,
        max_deliveries: Some(2),
    };
    assert_eq!(c.declare(q, &spec).await.unwrap().max_deliveries, 2);
    c.publish_batch(q, vec!["poison pill".into()])
        .await
        .unwrap();
    for n in 1..=2 {
        let m = lease_n(c, q, 1, Duration::from_secs(30)).await.remove(0);
        assert_eq!(m.delivery_count, n);
        c.rollback(&m.lease_id, Some(&format!("bad input {n}")))
            .await
            .unwrap();
    }
    // The third delivery would exceed max-deliveries: the message goes to the DLQ.
    let mut dead = Vec::new();
    for _ in 0..5 {
        assert!(
            c.lease(q, opts(10, Duration::from_secs(30)))
                .await
                .unwrap()
                .is_empty()
        );
        if c.stats(q).await.unwrap().dlq_depth == 1 {
            dead = c
                .lease_dead(q, opts(10, Duration::from_secs(30)))
                .await
                .unwrap();
            break;
        }
    }
    assert_eq!(dead.len(), 1, "one dead letter: {dead:?}");
    assert_eq!(dead[0].body, "poison pill");
    assert_eq!(
        dead[0].delivery_count, 2,
        "history keeps the delivery count"
    );
    assert_eq!(dead[0].last_error.as_deref(), Some("bad input 2"));
    let s = c.stats(q).await.unwrap();
    assert_eq!((s.depth, s.in_flight), (0, 0), "{s:?}");

    // Inspected, given back, then redriven to the queue with a fresh count.
    c.rollback(&dead[0].lease_id, None).await.unwrap();
    assert_eq!(c.redrive(q).await.unwrap(), 1);
    let back = lease_n(c, q, 1, Duration::from_secs(30)).await.remove(0);
    assert_eq!(
        (back.id.as_str(), back.delivery_count),
        (dead[0].id.as_str(), 1)
    );
    c.ack(&back.lease_id).await.unwrap();
    let s = c.stats(q).await.unwrap();
    assert_eq!((s.depth, s.in_flight, s.dlq_depth), (0, 0, 0), "{s:?}");
}

async fn heartbeat_prevents_redelivery(c: &Client) {
    let q = "slow";
    c.declare(q, &plain()).await.unwrap();
    c.publish_batch(q, vec!["slow work".into()]).await.unwrap();
    let mut consumer = c.consumer(q, opts(1, Duration::from_secs(2)));
    let lease = consumer.next().await.unwrap();
    // A slow handler: more than twice the lock passes while the heartbeat extends it.
    nothing_within(c, q, WAIT).await;
    assert_eq!(lease.message().delivery_count, 1);
    lease.ack().await.unwrap();
    let s = c.stats(q).await.unwrap();
    assert_eq!((s.depth, s.in_flight), (0, 0), "{s:?}");
}

async fn publisher_coalesces_concurrent_publishes(c: &Client) {
    let q = "coalesce";
    c.declare(q, &plain()).await.unwrap();
    let publisher = c.publisher(q);
    let sends = (0..25).map(|i| {
        let p = publisher.clone();
        async move { p.publish(format!("m{i}")).await }
    });
    let ids = futures::future::join_all(sends).await;
    let ids: BTreeSet<String> = ids.into_iter().map(|r| r.unwrap()).collect();
    assert_eq!(ids.len(), 25);
    let leased = lease_n(c, q, 25, Duration::from_secs(30)).await;
    let leased_ids: BTreeSet<String> = leased.iter().map(|m| m.id.clone()).collect();
    assert_eq!(leased_ids, ids);
    for chunk in leased.chunks(10) {
        let r = c
            .ack_batch(chunk.iter().map(|m| m.lease_id.clone()).collect())
            .await
            .unwrap();
        assert_eq!(r.acked, chunk.len());
    }
}

async fn acker_coalesces_concurrent_acks(c: &Client) {
    let q = "acks";
    c.declare(q, &plain()).await.unwrap();
    let bodies: Vec<String> = (0..25).map(|i| format!("a{i}")).collect();
    for chunk in bodies.chunks(10) {
        c.publish_batch(q, chunk.to_vec()).await.unwrap();
    }
    let mut leases = Vec::new();
    while leases.len() < 25 {
        leases.extend(
            c.lease_held(q, opts(10, Duration::from_secs(30)))
                .await
                .unwrap(),
        );
    }
    let acker = c.acker();
    let acks = leases.into_iter().map(|l| {
        let a = acker.clone();
        async move { a.ack(l).await }
    });
    for r in futures::future::join_all(acks).await {
        r.unwrap();
    }
    let s = c.stats(q).await.unwrap();
    assert_eq!((s.depth, s.in_flight), (0, 0), "{s:?}");
    nothing_within(c, q, Duration::ZERO).await;
}

async fn stats_and_purge(c: &Client, backend: BackendKind) {
    let q = "stats";
    c.declare(q, &plain()).await.unwrap();
    c.publish_batch(q, vec!["a".into(), "b".into(), "c".into()])
        .await
        .unwrap();
    let held = lease_n(c, q, 1, Duration::from_secs(30)).await;
    let s = c.stats(q).await.unwrap();
    assert_eq!((s.depth, s.in_flight, s.dlq_depth), (2, 1, 0), "{s:?}");
    match backend {
        BackendKind::Embedded => assert!(s.oldest_age_ms.is_some(), "{s:?}"),
        // SQS publishes the oldest message's age only to CloudWatch.
        BackendKind::Sqs => assert_eq!(s.oldest_age_ms, None),
    }
    let listed = c.list().await.unwrap();
    assert!(listed.iter().any(|s| s.name == q), "{listed:?}");

    c.purge(q).await.unwrap();
    let s = c.stats(q).await.unwrap();
    assert_eq!((s.depth, s.in_flight), (0, 0), "{s:?}");
    nothing_within(c, q, Duration::ZERO).await;
    drop(held);
}

async fn encrypted_queue_round_trips(c: &Client) {
    let q = "sealed";
    let spec = QueueSpec {
        encrypted: true,
        max_deliveries: None,
    };
    assert!(c.declare(q, &spec).await.unwrap().encrypted);
    c.publish_batch(q, vec![r#"{"card":"4111"}"#.into()])
        .await
        .unwrap();
    let m = lease_n(c, q, 1, Duration::from_secs(30)).await.remove(0);
    assert_eq!(m.body, r#"{"card":"4111"}"#);
    c.ack(&m.lease_id).await.unwrap();
}

/// Bad tokens and bad input: a clear 4xx JSON error, and nothing stored.
async fn refuses_bad_requests(svc: &Service) {
    let app = "orders";
    let c = svc.client(app);
    let q = "guarded";
    c.declare(q, &plain()).await.unwrap();
    let http = reqwest::Client::new();
    let url = |path: &str| format!("{}/v1/apps/{app}{path}", svc.base);
    let publish = format!("/queues/{q}/messages");
    let one = serde_json::json!({"messages": [{"body": "x"}]});

    let check = |r: reqwest::Response, status: u16, kind: &'static str| async move {
        assert_eq!(r.status().as_u16(), status);
        let v: serde_json::Value = r.json().await.expect("JSON error body");
        assert_eq!(v["error"], kind, "{v}");
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        assert!(v["correlationId"].is_string(), "{v}");
    };
    let r = http.post(url(&publish)).json(&one).send().await.unwrap();
    check(r, 401, "UNAUTHORIZED").await;
    let r = http
        .post(url(&publish))
        .bearer_auth("wft1.garbage")
        .json(&one)
        .send()
        .await
        .unwrap();
    check(r, 401, "UNAUTHORIZED").await;
    let other = svc.token("billing", Scope::Worker);
    for path in [
        publish.clone(),
        format!("/queues/{q}/leases"),
        format!("/queues/{q}/dlq/redrive"),
    ] {
        let r = http
            .post(url(&path))
            .bearer_auth(&other)
            .json(&one)
            .send()
            .await
            .unwrap();
        check(r, 403, "FORBIDDEN").await;
    }
    let r = http
        .get(url("/queues"))
        .bearer_auth(&other)
        .send()
        .await
        .unwrap();
    check(r, 403, "FORBIDDEN").await;
    let read = svc.token(app, Scope::Read);
    let r = http
        .post(url(&publish))
        .bearer_auth(&read)
        .json(&one)
        .send()
        .await
        .unwrap();
    check(r, 403, "FORBIDDEN").await;
    let r = http
        .get(url(&format!("/queues/{q}")))
        .bearer_auth(&read)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let worker = svc.token(app, Scope::Worker);
    let post = |path: String| http.post(url(&path)).bearer_auth(&worker);
    check(
        post("/queues/nope/messages".into())
            .json(&one)
            .send()
            .await
            .unwrap(),
        404,
        "NOT_FOUND",
    )
    .await;
    check(
        post("/queues/bad%20name/messages".into())
            .json(&one)
            .send()
            .await
            .unwrap(),
        400,
        "VALIDATION",
    )
    .await;
    let r = post(publish.clone())
        .header("content-type", "application/json")
        .body("{\"messages\": [")
        .send()
        .await
        .unwrap();
    check(r, 400, "VALIDATION").await;
    check(
        post(publish.clone())
            .json(&serde_json::json!({"messages": []}))
            .send()
            .await
            .unwrap(),
        400,
        "VALIDATION",
    )
    .await;
    let huge =
        serde_json::json!({"messages": [{"body": "ok"}, {"body": "x".repeat(256 * 1024 + 1)}]});
    check(
        post(publish.clone()).json(&huge).send().await.unwrap(),
        413,
        "TOO_LARGE",
    )
    .await;
    let exactly = serde_json::json!({"messages": [{"body": "y".repeat(256 * 1024)}]});
    let r = post(publish.clone()).json(&exactly).send().await.unwrap();
    assert_eq!(
        r.status(),
        201,
        "256 KiB exactly is accepted: {}",
        r.text().await.unwrap()
    );
    for params in [
        "max=0",
        "max=11",
        "wait=1h",
        "lock=0s",
        "lock=13h",
        "lock=soon",
        "bogus=1",
    ] {
        let r = post(format!("/queues/{q}/leases?{params}"))
            .send()
            .await
            .unwrap();
        check(r, 400, "VALIDATION").await;
    }
    let r = http
        .delete(url("/leases/not-a-lease"))
        .bearer_auth(&worker)
        .send()
        .await
        .unwrap();
    check(r, 400, "VALIDATION").await;

    // Only the valid 256 KiB message was stored.
    let s = c.stats(q).await.unwrap();
    assert_eq!(s.depth, 1, "{s:?}");
    let m = lease_n(&c, q, 1, Duration::from_secs(30)).await.remove(0);
    assert_eq!(m.body.len(), 256 * 1024);
    c.ack(&m.lease_id).await.unwrap();
    // A lease is this app's: another app's token cannot ack it.
    c.publish_batch(q, vec!["mine".into()]).await.unwrap();
    let m = lease_n(&c, q, 1, Duration::from_secs(30)).await.remove(0);
    let r = http
        .delete(format!(
            "{}/v1/apps/billing/leases/{}",
            svc.base, m.lease_id
        ))
        .bearer_auth(&worker)
        .send()
        .await
        .unwrap();
    check(r, 403, "FORBIDDEN").await;
    c.ack(&m.lease_id).await.unwrap();
    let stale = c.ack(&m.lease_id).await;
    if svc.settings.backend == BackendKind::Embedded {
        assert_eq!(
            stale.unwrap_err().status(),
            Some(409),
            "a used lease is not held"
        );
    }
}

/// A sealed record that no longer opens goes to the DLQ with the reason; the service keeps serving.
async fn unopenable_record_is_dead_lettered(backend: BackendKind) {
    let dir = tempfile::tempdir().unwrap();
    let settings = settings(backend);
    let svc = Service::start(settings.clone(), dir.path(), None).await;
    let c = svc.client("orders");
    let spec = QueueSpec {
        encrypted: true,
        max_deliveries: None,
    };
    c.declare("sealed", &spec).await.unwrap();
    c.publish_batch("sealed", vec!["secret".into()])
        .await
        .unwrap();
    svc.stop().await;

    // The same store, opened with another master key: the record cannot open.
    let other = dir.path().join("other.key");
    common::envelope::Keyring::load_or_generate(&other).unwrap();
    let svc = Service::start(settings, dir.path(), Some(other)).await;
    let c = svc.client("orders");
    assert!(
        c.lease("sealed", opts(10, Duration::from_secs(30)))
            .await
            .unwrap()
            .is_empty()
    );
    let dead = c
        .lease_dead("sealed", opts(10, Duration::from_secs(30)))
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    let why = dead[0].last_error.as_deref().unwrap_or_default();
    assert!(why.contains("cannot open"), "{why}");
    c.publish_batch("sealed", vec!["fresh".into()])
        .await
        .unwrap();
    let m = lease_n(&c, "sealed", 1, Duration::from_secs(30))
        .await
        .remove(0);
    assert_eq!(m.body, "fresh");
    svc.stop().await;
}

/// The suite: every case on its own queue, concurrently, on one service.
async fn suite(backend: BackendKind) {
    let dir = tempfile::tempdir().unwrap();
    let svc = Service::start(settings(backend), dir.path(), None).await;
    let c = svc.client("orders");
    tokio::join!(
        batch_publish_lease_ack(&c),
        redelivery_after_lock_expiry(&c),
        rollback_redelivers_with_the_error(&c),
        dead_letters_after_max_deliveries_and_redrive(&c),
        heartbeat_prevents_redelivery(&c),
        publisher_coalesces_concurrent_publishes(&c),
        acker_coalesces_concurrent_acks(&c),
        stats_and_purge(&c, backend),
        encrypted_queue_round_trips(&c),
        refuses_bad_requests(&svc),
    );
    svc.stop().await;
    unopenable_record_is_dead_lettered(backend).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_backend() {
    suite(BackendKind::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_backend() {
    suite(BackendKind::Sqs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_backend_forgets_an_app() {
    forget::forgetting_an_app_refuses_its_tokens_and_purges_it_alone(BackendKind::Embedded).await;
    forget::a_purge_cut_short_is_finished_by_the_next_call(BackendKind::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_backend_forgets_an_app() {
    forget::forgetting_an_app_refuses_its_tokens_and_purges_it_alone(BackendKind::Sqs).await;
    forget::a_purge_cut_short_is_finished_by_the_next_call(BackendKind::Sqs).await;
}
