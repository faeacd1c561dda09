//! The control plane through the `fabric` command line, against a real local fabric.

use std::collections::HashSet;

use aws_sdk_dynamodb::types::AttributeValue;
use fabric_tests::fabric::Fabric;
use serde_json::Value;

use fabric_tests::fabric::{HELLO, greet, pid, ready};

#[tokio::test(flavor = "multi_thread")]
async fn two_workers_spread_heal_and_leave_a_failed_az() {
    let fabric = Fabric::start();
    let run = fabric.cli(&["apps", "deploy", HELLO, "--workers", "2", "--size", "0.1"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(
        run.stdout.contains("hello v1 is serving on 2/2 workers"),
        "{}",
        run.stdout
    );
    assert!(
        run.stderr.contains("is ready in AZ"),
        "progress is shown: {}",
        run.stderr
    );

    let ws = fabric.workers("hello");
    assert!(ready(&ws, 2), "{ws:#?}");
    let azs: HashSet<&str> = ws.iter().map(|w| w["az"].as_str().unwrap()).collect();
    assert_eq!(azs.len(), 2, "no single AZ holds both: {ws:#?}");
    for w in &ws {
        assert_eq!(
            greet(w["address"].as_str().unwrap()).await["message"],
            "hello, test"
        );
        assert!(
            w["url"].as_str().unwrap().starts_with("http://hello-"),
            "direct URL: {w}"
        );
    }

    // kill -9 of a worker: it is replaced, and the replacement answers.
    let victim = pid(&ws[0]);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let ws = fabric.wait_workers("hello", "worker 1 replaced", |ws| {
        ready(ws, 2) && pid(&ws[0]) != victim && ws[0]["restarts"] == 1
    });
    greet(ws[0]["address"].as_str().unwrap()).await;
    let events = fabric.cli(&["events", "--output", "json"]).stdout;
    assert!(
        events.contains("\"worker.down\"") && events.contains("hello-1 (v1)"),
        "{events}"
    );

    // An AZ fails: its worker moves to an AZ that is up.
    let lost_az = ws[1]["az"].as_str().unwrap().to_string();
    let run = fabric.cli(&["az", "fail", &lost_az]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let ws = fabric.wait_workers("hello", "worker 2 moved", |ws| {
        ready(ws, 2) && ws[1]["az"] != lost_az.as_str()
    });
    assert_ne!(ws[0]["az"], ws[1]["az"], "still spread: {ws:#?}");
    greet(ws[1]["address"].as_str().unwrap()).await;
    let events = fabric.cli(&["events"]).stdout;
    assert!(
        events.contains("worker.moved") && events.contains("az.down"),
        "{events}"
    );
    assert_eq!(fabric.cli(&["az", "restore", &lost_az]).code, Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_manifest_changes_nothing_and_redeploy_replaces_workers() {
    let fabric = Fabric::start();
    assert_eq!(
        fabric
            .cli(&["apps", "deploy", HELLO, "--workers", "1", "--size", "0.1"])
            .code,
        Some(0)
    );
    let before = fabric.workers("hello");

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "name: hello\nflows:\n  - name: a\n    steps:\n      - set-payload: '.x |'\n",
    )
    .unwrap();
    let run = fabric.cli(&[
        "apps",
        "deploy",
        bad.to_str().unwrap(),
        "--workers",
        "1",
        "--size",
        "0.1",
    ]);
    assert_eq!(run.code, Some(65), "{}", run.stderr);
    assert!(
        run.stderr.contains("line 5, column") && run.stderr.contains("nothing was deployed"),
        "{}",
        run.stderr
    );
    assert_eq!(fabric.workers("hello"), before, "nothing changed");

    let run = fabric.cli(&["apps", "deploy", HELLO, "--workers", "0", "--size", "0.1"]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(
        run.stderr.contains("workers must be 1 to 8"),
        "{}",
        run.stderr
    );
    let run = fabric.cli(&["apps", "deploy", HELLO, "--workers", "1", "--size", "0.3"]);
    assert!(run.stderr.contains("worker size"), "{}", run.stderr);
    let run = fabric.cli(&[
        "apps",
        "deploy",
        "/nonexistent.yaml",
        "--workers",
        "1",
        "--size",
        "0.1",
    ]);
    assert_eq!(run.code, Some(66), "{}", run.stderr);

    // A redeploy starts new workers side by side and stops the old ones.
    let run = fabric.cli(&["apps", "deploy", HELLO, "--workers", "2", "--size", "0.2"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let after = fabric.workers("hello");
    assert!(
        ready(&after, 2) && after.iter().all(|w| w["version"] == 2),
        "{after:#?}"
    );
    let old = pid(&before[0]);
    assert!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(old), None).is_err(),
        "old worker stopped"
    );

    let list = fabric.cli(&["apps", "list", "--output", "json"]).json();
    assert_eq!(list[0]["version"], 2);
    assert_eq!(list[0]["ready"], 2);
    let run = fabric.cli(&["apps", "scale", "hello", "--workers", "1"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    fabric.wait_workers("hello", "scaled to one", |ws| ready(ws, 1));
    assert_eq!(fabric.cli(&["apps", "delete", "hello"]).code, Some(0));
    assert_eq!(fabric.cli(&["apps", "show", "hello"]).code, Some(4));
}

#[tokio::test(flavor = "multi_thread")]
async fn tenants_see_and_touch_only_their_own_apps() {
    let fabric = Fabric::start();
    let admin = control_plane::client::Client::new(&fabric.url(), &fabric.admin_key());
    let key_a = admin.create_tenant("tenant-a").await.unwrap();
    let key_b = admin.create_tenant("tenant-b").await.unwrap();
    let as_a = [("FABRIC_TOKEN", key_a.as_str())];
    let as_b = [("FABRIC_TOKEN", key_b.as_str())];
    let run = fabric.cli_env(
        &["apps", "deploy", HELLO, "--workers", "1", "--size", "0.1"],
        &as_a,
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);

    assert_eq!(
        fabric
            .cli_env(&["apps", "list", "--output", "json"], &as_b)
            .json(),
        serde_json::json!([])
    );
    assert_eq!(
        fabric.cli_env(&["apps", "show", "hello"], &as_b).code,
        Some(4)
    );
    assert_eq!(fabric.cli_env(&["workers", "hello"], &as_b).code, Some(4));
    assert_eq!(
        fabric.cli_env(&["apps", "delete", "hello"], &as_b).code,
        Some(4)
    );
    assert_eq!(
        fabric
            .cli_env(&["apps", "scale", "hello", "--workers", "2"], &as_b)
            .code,
        Some(4)
    );
    let run = fabric.cli_env(
        &["apps", "deploy", HELLO, "--workers", "1", "--size", "0.1"],
        &as_b,
    );
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.contains("taken"), "{}", run.stderr);
    assert_eq!(
        fabric.cli_env(&["az", "fail", "a"], &as_b).code,
        Some(1),
        "AZs are the admin's"
    );
    let events = fabric.cli_env(&["events"], &as_b).stdout;
    assert!(!events.contains("hello"), "{events}");

    let list = fabric
        .cli_env(&["apps", "list", "--output", "json"], &as_a)
        .json();
    assert_eq!(list[0]["name"], "hello");
    assert_eq!(
        fabric
            .cli_env(&["apps", "list"], &[("FABRIC_TOKEN", "wfk_wrong")])
            .code,
        Some(1)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn orders_with_persistent_queues_work_through_the_load_balancer() {
    orders_through_the_load_balancer(&Fabric::start()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn fabric_up_runs_on_sqs_and_dynamodb_with_the_aws_backend() {
    fabric_tests::Emulators::from_env();
    // A prefix of its own, so this run's queues and table are apart from any other.
    let prefix = format!("t{}-", std::process::id() % 100_000);
    let fabric = Fabric::start_env(&[("FABRIC_UP_BACKEND", "aws"), ("FABRIC_AWS_PREFIX", &prefix)]);
    orders_through_the_load_balancer(&fabric).await;
    // The master key is held by KMS (the key `fabric up` made under the
    // stack's alias): only its wrapped form is in the data directory.
    assert!(fabric.data.join(common::kms::WRAPPED_FILE).is_file());
    assert!(!fabric.data.join(common::secrets::MASTER_KEY_FILE).exists());
    // The queue is an SQS queue under the prefix.
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await;
    let sqs = aws_sdk_sqs::Client::new(&config);
    let urls = sqs
        .list_queues()
        .queue_name_prefix(&prefix)
        .send()
        .await
        .unwrap()
        .queue_urls
        .unwrap_or_default();
    assert!(
        urls.iter()
            .any(|u| u.contains("orders") && u.contains("incoming")),
        "{urls:?}"
    );
}

/// Waits until `hello` answers through `fabric`'s load balancer.
async fn hello_through_the_load_balancer(fabric: &Fabric) {
    fabric_tests::until(
        "hello answer through the load balancer",
        std::time::Duration::from_secs(30),
        async || {
            let r = reqwest::Client::new()
                .get(format!("http://{}/hello/test", fabric.proxy))
                .header("host", "hello.fabric.localhost")
                .send()
                .await;
            match r {
                Ok(r) if r.status() == 200 => {
                    let v: Value = r.json().await.unwrap();
                    assert_eq!(v["message"], "hello, test");
                    Ok(())
                }
                other => Err(other),
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_aws_backend_the_registry_is_a_table_that_outlives_stops_and_crashes() {
    fabric_tests::Emulators::from_env();
    // A prefix of its own (at most 16 characters), so this run's tables are its own.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let prefix = format!("r{}x{}-", std::process::id() % 100_000, nanos % 10_000);
    let env = [("FABRIC_UP_BACKEND", "aws"), ("FABRIC_AWS_PREFIX", &prefix)];
    let mut first = Fabric::start_env(&env);
    let run = first.cli(&["apps", "deploy", HELLO, "--workers", "2", "--size", "0.1"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    hello_through_the_load_balancer(&first).await;
    assert!(
        !first.data.join("registry.redb").exists(),
        "the registry is the table, not a file"
    );
    // The app is an item of the table, sealed: its manifest is not readable there.
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await;
    let dynamodb = aws_sdk_dynamodb::Client::new(&config);
    let table = format!("{prefix}registry");
    let item = dynamodb
        .get_item()
        .table_name(&table)
        .key("kind", AttributeValue::S("app".into()))
        .key("id", AttributeValue::S("hello".into()))
        .send()
        .await
        .unwrap()
        .item
        .expect("the app is in the registry table");
    let sealed = item["v"].as_b().expect("a binary value").as_ref();
    assert!(
        !fabric_tests::contains(sealed, b"greeting"),
        "plaintext manifest"
    );

    // A clean stop stops the workers; the next start starts them again.
    assert!(first.stop());
    let mut second = Fabric::start_in_env(&first.data, &env);
    let before = second.wait_workers("hello", "workers started again", |ws| ready(ws, 2));
    let list = second.cli(&["apps", "list", "--output", "json"]).json();
    assert_eq!(list[0]["name"], "hello", "{list}");
    hello_through_the_load_balancer(&second).await;

    // A crash leaves the workers running; the next start takes them back.
    second.crash();
    let mut third = Fabric::start_in_env(&first.data, &env);
    let after = third.wait_workers("hello", "adopted workers", |ws| ready(ws, 2));
    let pids = |ws: &[Value]| ws.iter().map(pid).collect::<Vec<_>>();
    assert_eq!(
        pids(&after),
        pids(&before),
        "the same processes, taken back"
    );
    let list = third.cli(&["apps", "list", "--output", "json"]).json();
    assert_eq!(list[0]["name"], "hello", "{list}");
    hello_through_the_load_balancer(&third).await;
    assert!(third.stop());
    let _ = dynamodb.delete_table().table_name(&table).send().await;
}

async fn orders_through_the_load_balancer(fabric: &Fabric) {
    const ORDERS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/orders.yaml");
    // Persistent queues are asked for at deploy, and given by `fabric up`.
    let run = fabric.cli(&[
        "apps",
        "deploy",
        ORDERS,
        "--workers",
        "2",
        "--size",
        "0.2",
        "--persistent-queues",
    ]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let show = fabric
        .cli(&["apps", "show", "orders", "--output", "json"])
        .json();
    assert_eq!(show[0]["persistentQueues"], true, "{show}");

    let http = reqwest::Client::new();
    let through_proxy = |method: reqwest::Method, path: &str| {
        http.request(method, format!("http://{}{path}", fabric.proxy))
            .header("host", "orders.fabric.localhost")
    };
    for i in 0..20 {
        let r = through_proxy(reqwest::Method::POST, "/orders")
            .json(&serde_json::json!({"orderId": i, "item": "tea"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    }
    let bad = through_proxy(reqwest::Method::POST, "/orders")
        .json(&serde_json::json!({"item": "no id"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    // Processed by whichever worker leased it; read back through either.
    // One 30 s budget for all twenty orders.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    for i in 0..20 {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        fabric_tests::until(&format!("order {i} stored"), left, async || {
            let r = through_proxy(reqwest::Method::GET, &format!("/orders/{i}"))
                .send()
                .await
                .unwrap();
            if r.status() == 200 {
                let v: Value = r.json().await.unwrap();
                assert_eq!(
                    (v["orderId"].as_i64(), v["status"].as_str()),
                    (Some(i), Some("stored"))
                );
                return Some(());
            }
            assert_eq!(r.status(), 404, "not stored yet, or stored");
            None
        })
        .await;
    }
    // `fabric queues` shows the shared queue, drained and encrypted as asked.
    let queues = fabric.cli(&["queues", "orders", "--output", "json"]);
    assert_eq!(queues.code, Some(0), "{}", queues.stderr);
    let queues = queues.json();
    assert_eq!(queues["mode"], "persistent", "{queues}");
    assert_eq!(queues["queues"][0]["name"], "incoming", "{queues}");
    assert_eq!(queues["queues"][0]["dlqDepth"], 0, "{queues}");
    let table = fabric.cli(&["queues", "orders"]);
    assert!(table.stdout.starts_with("QUEUE"), "{}", table.stdout);
    let missing = fabric.cli(&["queues", "nope"]);
    assert_eq!(missing.code, Some(4), "{}", missing.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_version_that_crash_loops_is_rolled_back_and_the_old_one_keeps_serving() {
    // Workers inherit this: any worker with persistent queues refuses to
    // start (a lock of 0 s is out of range), so such a version crash-loops.
    let fabric = Fabric::start_env(&[("FABRIC_LEASE_LOCK", "0s")]);
    let run = fabric.cli(&["apps", "deploy", HELLO, "--workers", "2", "--size", "0.1"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let before = fabric.workers("hello");

    let run = fabric.cli(&[
        "apps",
        "deploy",
        HELLO,
        "--workers",
        "2",
        "--size",
        "0.1",
        "--persistent-queues",
    ]);
    assert_eq!(run.code, Some(69), "{}\n{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("rolled back"), "{}", run.stderr);

    // The old version still serves, on the same workers, through the proxy.
    let after = fabric.workers("hello");
    assert!(ready(&after, 2), "{after:#?}");
    assert_eq!(
        after.iter().map(pid).collect::<Vec<_>>(),
        before.iter().map(pid).collect::<Vec<_>>()
    );
    let r = reqwest::Client::new()
        .get(format!("http://{}/hello/rollback", fabric.proxy))
        .header("host", "hello.fabric.localhost")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let show = fabric
        .cli(&["apps", "show", "hello", "--output", "json"])
        .json();
    assert_eq!(show[0]["persistentQueues"], false, "{show}");
    let events = fabric.cli(&["events"]).stdout;
    assert!(events.contains("rolled back"), "{events}");
}

#[tokio::test(flavor = "multi_thread")]
async fn events_reach_a_webhook() {
    let seen: std::sync::Arc<std::sync::Mutex<Vec<Value>>> = Default::default();
    let app = axum::Router::new()
        .route(
            "/hook",
            axum::routing::post(
                |axum::extract::State(seen): axum::extract::State<
                    std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
                >,
                 axum::Json(event): axum::Json<Value>| async move {
                    seen.lock().unwrap().push(event);
                },
            ),
        )
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let fabric = Fabric::start_env(&[("FABRIC_EVENTS_WEBHOOK", &hook)]);
    let run = fabric.cli(&["apps", "deploy", HELLO, "--workers", "1", "--size", "0.1"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let victim = pid(&fabric.workers("hello")[0]);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let seqs = fabric_tests::until(
        "deploy.done and worker.down sent",
        std::time::Duration::from_secs(30),
        async || {
            let seen = seen.lock().unwrap();
            let kinds: Vec<String> = seen
                .iter()
                .map(|e| e["kind"].as_str().unwrap_or_default().to_string())
                .collect();
            if kinds.iter().any(|k| k == "deploy.done") && kinds.iter().any(|k| k == "worker.down")
            {
                Ok(seen
                    .iter()
                    .map(|e| e["seq"].as_u64().unwrap())
                    .collect::<Vec<u64>>())
            } else {
                // The kinds seen so far, for the panic.
                Err(kinds)
            }
        },
    )
    .await;
    // Sent in order.
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
}
