//! Workers on queue-svc and objectstore-svc (embedded backends), as real
//! processes, with one killed by `kill -9` in each scenario: the reliability
//! pattern loses no order and stores each once, a group outlives the worker
//! holding part of it, and a schedule runs on exactly one worker and moves
//! to the other, running the tick it missed once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use fabric_tests::backing::Backing;
use futures::StreamExt;
use nix::sys::signal::{Signal, kill};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

async fn wait_ready(http: &reqwest::Client, base: &str) {
    fabric_tests::until(&format!("{base} turn ready"), WAIT, async || {
        let r = http.get(format!("{base}/readyz")).send().await;
        r.is_ok_and(|r| r.status() == 200).then_some(())
    })
    .await
}

/// Workers `{app}-1` and `{app}-2` of the example `{app}.yaml`, both ready.
async fn two_workers(
    backing: &Backing,
    app: &str,
    env: &[(&str, &str)],
) -> (
    (fabric_tests::process::Proc, String),
    (fabric_tests::process::Proc, String),
) {
    let manifest = backing.example(&format!("{app}.yaml"));
    let first = backing.worker(&manifest, app, &format!("{app}-1"), env);
    let second = backing.worker(&manifest, app, &format!("{app}-2"), env);
    let http = reqwest::Client::new();
    wait_ready(&http, &first.1).await;
    wait_ready(&http, &second.1).await;
    (first, second)
}

/// Polls `check` until it holds, or fails with `what` after [`WAIT`].
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    fabric_tests::until(what, WAIT, async || check().await.then_some(())).await
}

/// POSTs `body` to `first`, then to `second` if the first failed in any way
/// (as a load balancer would); which of them accepted it with 202.
async fn post_either<'a>(
    http: &reqwest::Client,
    first: &'a str,
    second: &'a str,
    path: &str,
    body: &Value,
) -> Option<&'a str> {
    for base in [first, second] {
        if let Ok(r) = http.post(format!("{base}{path}")).json(body).send().await
            && r.status() == 202
        {
            return Some(base);
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_are_stored_once_each_with_a_worker_killed_mid_stream() {
    const ORDERS: usize = 1000;
    let backing = Backing::start();
    // A short lock, so the killed worker's leased messages come back soon.
    let ((w1, u1), (_w2, u2)) =
        two_workers(&backing, "orders", &[("FABRIC_LEASE_LOCK", "2s")]).await;
    let http = reqwest::Client::new();

    let done = Arc::new(AtomicUsize::new(0));
    let victim = w1.pid();
    let killer = {
        let done = done.clone();
        tokio::spawn(async move {
            while done.load(Ordering::SeqCst) < ORDERS / 3 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            kill(victim, Signal::SIGKILL).expect("kill -9 the first worker");
        })
    };
    let accepted: Vec<Option<String>> = futures::stream::iter(0..ORDERS)
        .map(|i| {
            let (http, done) = (http.clone(), done.clone());
            let (first, second) = if i % 2 == 0 { (&u1, &u2) } else { (&u2, &u1) };
            async move {
                let body = json!({"orderId": format!("o-{i}"), "n": i});
                let by = post_either(&http, first, second, "/orders", &body)
                    .await
                    .map(str::to_string);
                done.fetch_add(1, Ordering::SeqCst);
                by
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    killer.await.unwrap();
    let refused = accepted.iter().filter(|a| a.is_none()).count();
    assert_eq!(
        refused, 0,
        "every order is accepted by one worker or the other"
    );
    let by_victim = accepted
        .iter()
        .filter(|a| a.as_deref() == Some(&u1))
        .count();
    assert!(
        by_victim > 0 && by_victim < ORDERS / 2,
        "the first worker took a share and was killed mid-stream ({by_victim} accepted)"
    );

    // Every accepted order ends up stored, each under its own key once.
    eventually("all orders stored", || async {
        backing.keys("orders", "orders").await.len() >= ORDERS
    })
    .await;
    let keys: BTreeSet<String> = backing.keys("orders", "orders").await.into_iter().collect();
    let expected: BTreeSet<String> = (0..ORDERS).map(|i| format!("o-{i}")).collect();
    assert_eq!(keys, expected);
    // And reads back through the surviving worker's HTTP flow.
    let bad: Vec<String> = futures::stream::iter(0..ORDERS)
        .map(|i| {
            let (http, base) = (http.clone(), u2.clone());
            async move {
                let r = http.get(format!("{base}/orders/o-{i}")).send().await.ok()?;
                let v: Value = r.json().await.ok()?;
                (v["orderId"] == format!("o-{i}") && v["n"] == i && v["status"] == "stored")
                    .then_some(())
                    .map_or(Some(format!("o-{i}: {v}")), |()| None)
            }
        })
        .buffer_unordered(16)
        .filter_map(|x| async move { x })
        .collect()
        .await;
    assert!(bad.is_empty(), "orders read back wrong: {bad:?}");
    let missing = http.get(format!("{u2}/orders/nope")).send().await.unwrap();
    assert_eq!(missing.status(), 404);

    // Nothing left behind: no message waiting, locked or dead-lettered.
    let queues = backing.queues("orders");
    eventually("the queue drained", || async {
        let s = queues.stats("incoming").await.expect("queue stats");
        s.depth == 0 && s.in_flight == 0
    })
    .await;
    assert_eq!(queues.stats("incoming").await.unwrap().dlq_depth, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_outlives_the_worker_that_held_part_of_it() {
    const GROUPS: usize = 10;
    let backing = Backing::start();
    let ((w1, u1), (_w2, u2)) = two_workers(&backing, "aggregator", &[]).await;
    let http = reqwest::Client::new();

    // Two items of every group through the first worker...
    for g in 0..GROUPS {
        for k in 0..2 {
            let item = json!({"group": g, "item": format!("{g}-{k}")});
            assert!(
                post_either(&http, &u1, &u1, "/items", &item)
                    .await
                    .is_some()
            );
        }
    }
    // ... gathered in the store (not in the worker), then the worker dies.
    let stores = backing.stores("aggregator");
    eventually("two items of every group gathered", || async {
        let mut gathered = 0;
        for g in 0..GROUPS {
            if let Ok(Some(f)) = stores.get("_aggregate", &format!("gather/{g}")).await {
                let v: Value = serde_json::from_slice(&f.value).unwrap();
                gathered += usize::from(v["members"].as_array().map_or(0, Vec::len) == 2);
            }
        }
        gathered == GROUPS
    })
    .await;
    kill(w1.pid(), Signal::SIGKILL).unwrap();

    // The third item of each group, through the survivor, completes it.
    for g in 0..GROUPS {
        let item = json!({"group": g, "item": format!("{g}-2")});
        assert!(
            post_either(&http, &u2, &u2, "/items", &item)
                .await
                .is_some()
        );
    }
    eventually("every group completed", || async {
        backing.keys("aggregator", "groups").await.len() == GROUPS
    })
    .await;
    for g in 0..GROUPS {
        let v: Value = http
            .get(format!("{u2}/groups/{g}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let items: BTreeSet<&str> = v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i.as_str().unwrap())
            .collect();
        let want: BTreeSet<String> = (0..3).map(|k| format!("{g}-{k}")).collect();
        assert_eq!(
            items,
            want.iter().map(String::as_str).collect(),
            "group {g}: {v}"
        );
    }
}

/// The beats stored so far: tick -> (worker -> the beat's attributes).
async fn beats(backing: &Backing) -> BTreeMap<u64, BTreeMap<String, Value>> {
    let stores = backing.stores("heartbeat");
    let mut out: BTreeMap<u64, BTreeMap<String, Value>> = BTreeMap::new();
    for key in backing.keys("heartbeat", "beats").await {
        let Some((tick, worker)) = key.split_once('/') else {
            continue; // "latest"
        };
        let value = stores.get("beats", &key).await.unwrap().unwrap().value;
        out.entry(tick.parse().unwrap())
            .or_default()
            .insert(worker.to_string(), serde_json::from_slice(&value).unwrap());
    }
    out
}

fn ran_by(beats: &BTreeMap<u64, BTreeMap<String, Value>>, worker: &str) -> usize {
    beats.values().filter(|w| w.contains_key(worker)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_runs_on_the_primary_only_and_moves_when_it_dies() {
    let backing = Backing::start();
    let ((w1, u1), (w2, u2)) =
        two_workers(&backing, "heartbeat", &[("FABRIC_PRIMARY_TTL", "2s")]).await;
    let http = reqwest::Client::new();

    eventually("three beats", || async { beats(&backing).await.len() >= 3 }).await;
    let before = beats(&backing).await;
    let primary = if ran_by(&before, "heartbeat-1") > 0 {
        "heartbeat-1"
    } else {
        "heartbeat-2"
    };
    let other = if primary == "heartbeat-1" {
        "heartbeat-2"
    } else {
        "heartbeat-1"
    };
    assert_eq!(
        ran_by(&before, other),
        0,
        "only the primary beats: {before:?}"
    );
    let (victim, survivor_url) = if primary == "heartbeat-1" {
        (w1.pid(), &u2)
    } else {
        (w2.pid(), &u1)
    };
    kill(victim, Signal::SIGKILL).unwrap();

    eventually("three beats on the other worker", || async {
        ran_by(&beats(&backing).await, other) >= 3
    })
    .await;
    let after = beats(&backing).await;
    for (tick, workers) in &after {
        assert_eq!(workers.len(), 1, "tick {tick} ran on {workers:?}");
    }
    let last_before = after
        .iter()
        .filter(|(_, w)| w.contains_key(primary))
        .map(|(t, _)| *t)
        .max()
        .unwrap();
    let taken_over: Vec<(&u64, &Value)> = after
        .iter()
        .filter_map(|(t, w)| w.get(other).map(|v| (t, v)))
        .collect();
    assert!(
        taken_over.iter().all(|(t, _)| **t > last_before),
        "the survivor ran only ticks after the dead primary's last: {after:?}"
    );
    // The first beat after the failover is the missed tick, run once.
    let catch_ups: Vec<u64> = taken_over
        .iter()
        .filter(|(_, v)| v["catchUp"] == true)
        .map(|(t, _)| **t)
        .collect();
    assert_eq!(
        catch_ups,
        vec![*taken_over[0].0],
        "exactly one catch-up run, first: {taken_over:?}"
    );
    // The latest beat reads back through the survivor's HTTP flow.
    let latest: Value = http
        .get(format!("{survivor_url}/beats/latest"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(latest["worker"], other);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_with_another_apps_token_does_not_start() {
    let backing = Backing::start();
    let manifest = backing.example("orders.yaml");
    let other = backing.token("other");
    let cmd = backing.worker_command(
        &manifest,
        "orders",
        "orders-1",
        &[("FABRIC_APP_TOKEN", &other)],
    );
    let mut proc = fabric_tests::process::Proc::spawn(cmd);
    let status = proc.wait_exit(WAIT);
    assert!(!status.success());
    let stderr = proc
        .lines_of(fabric_tests::process::Stream::Stderr)
        .join("\n");
    assert!(
        stderr.contains("403") && !stderr.contains(&other),
        "refused with 403, and the token is not logged: {stderr}"
    );
}

/// A collector the flow under test calls: holds each call until released.
#[derive(Clone)]
struct Held {
    calls: Arc<AtomicUsize>,
    release: Arc<tokio::sync::Semaphore>,
}

impl Default for Held {
    fn default() -> Self {
        Held {
            calls: Arc::default(),
            release: Arc::new(tokio::sync::Semaphore::new(0)),
        }
    }
}

async fn held_call(axum::extract::State(h): axum::extract::State<Held>, body: String) -> String {
    h.calls.fetch_add(1, Ordering::SeqCst);
    h.release.acquire().await.map(|p| p.forget()).ok();
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_message_in_flight_and_leaves_the_rest_queued() {
    let held = Held::default();
    let app = axum::Router::new()
        .route("/work", axum::routing::post(held_call))
        .with_state(held.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = format!("http://{}/work", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let backing = Backing::start();
    let manifest = backing.dir.path().join("jobs.yaml");
    std::fs::write(
        &manifest,
        format!(
            "name: jobs
flows:
  - name: submit
    source: {{ http: {{ method: POST, path: /jobs }} }}
    steps:
      - publish: {{ queue: jobs }}
      - respond: {{ status: 202 }}
  - name: work
    source: {{ queue: {{ name: jobs, concurrency: 1 }} }}
    steps:
      - http-request: {{ method: POST, url: '\"{target}\"', body: '.', timeout: 1m }}
      - store: {{ store: done, key: '.id | tostring', value: '.' }}
"
        ),
    )
    .unwrap();
    let (mut w1, u1) = backing.worker(&manifest, "jobs", "jobs-1", &[]);
    let http = reqwest::Client::new();
    wait_ready(&http, &u1).await;
    for id in 0..3 {
        let r = http
            .post(format!("{u1}/jobs"))
            .json(&json!({ "id": id }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
    eventually("the first job is in flight", || async {
        held.calls.load(Ordering::SeqCst) == 1
    })
    .await;

    // Told to stop while a flow runs: it finishes that one and takes no more.
    w1.signal(Signal::SIGTERM);
    // Released only once the worker is draining (its readiness is the
    // shutdown's first step), however slowly a loaded machine delivers it.
    eventually("the worker is draining", || async {
        !matches!(
            http.get(format!("{u1}/readyz")).send().await,
            Ok(r) if r.status().is_success()
        )
    })
    .await;
    held.release.add_permits(1);
    assert!(
        w1.wait_exit(WAIT).success(),
        "a clean exit within the grace period"
    );
    assert_eq!(
        held.calls.load(Ordering::SeqCst),
        1,
        "no new message after SIGTERM"
    );
    let queues = backing.queues("jobs");
    let stats = queues.stats("jobs").await.unwrap();
    assert_eq!(
        (stats.depth, stats.in_flight),
        (2, 0),
        "the rest wait, unlocked"
    );
    assert_eq!(backing.keys("jobs", "done").await.len(), 1);
    // The next worker takes the rest.
    let (_w2, u2) = backing.worker(&manifest, "jobs", "jobs-2", &[]);
    wait_ready(&http, &u2).await;
    // Counted from the first worker's one call, not read afresh: the next
    // worker may already be in its call (waiting for this release) when
    // the loop comes round, and a count read then would wait for a call
    // that cannot start before this one is released.
    for calls in 2..=3 {
        eventually("the next job is in flight", || async {
            held.calls.load(Ordering::SeqCst) >= calls
        })
        .await;
        held.release.add_permits(1);
    }
    eventually("every job done", || async {
        backing.keys("jobs", "done").await.len() == 3
    })
    .await;
}
