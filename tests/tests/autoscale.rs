//! Autoscaling against a whole fabric (`fabric up`, embedded backends),
//! with a 1 s evaluation period and a 3 s stabilization window: a queue
//! backlog scales an app from 1 to its max over three zones and, once the
//! backlog is gone, back to its min; CPU and requests in flight each scale
//! an app up; every change is an event with its reason; a manual scale
//! outside the bounds is refused.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fabric_tests::fabric::{Fabric, ready};

/// The test's short period and window.
const ENV: &[(&str, &str)] = &[
    ("FABRIC_AUTOSCALE__PERIOD", "1s"),
    ("FABRIC_AUTOSCALE__WINDOW", "3s"),
];

/// How long a scale may take here.
const SCALED: Duration = Duration::from_secs(60);

fn deploy(f: &Fabric, manifest: &str, extra: &[&str]) {
    let run = f.deploy_text(manifest, 1, extra, None);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
}

fn autoscale(f: &Fabric, args: &[&str]) {
    let run = f.cli(&[&["apps", "autoscale"][..], args].concat());
    assert_eq!(run.code, Some(0), "{}", run.stderr);
}

/// The events of `kind` about `app`, their messages.
fn events(f: &Fabric, app: &str, kind: &str) -> Vec<String> {
    let run = f.cli(&["events", "--output", "json"]);
    // One event a line.
    run.stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["app"] == app && e["kind"] == kind)
        .map(|e| e["message"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Every job is refused and retried with back-off (1, 2, 4, 8 s) before
/// it is dead-lettered: a backlog that lasts about 15 s, then is gone.
const BUSY: &str = r#"name: busy
flows:
  - name: accept
    source: { http: { method: POST, path: /jobs } }
    steps:
      - publish: { queue: jobs }
      - respond: { status: 202, body: '{accepted: .id}' }
  - name: work
    source: { queue: { name: jobs, concurrency: 1, max-deliveries: 5 } }
    steps:
      - raise-error: { type: "APP:BUSY", message: '"not now"' }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_scales_an_app_to_its_max_over_the_zones_and_back_to_its_min() {
    let f = Fabric::start_env(ENV);
    deploy(&f, BUSY, &["--persistent-queues"]);
    autoscale(
        &f,
        &["busy", "--min", "1", "--max", "3", "--queue-backlog", "10"],
    );
    let shown = f.cli(&["apps", "show", "busy"]);
    assert!(
        shown
            .stdout
            .contains("autoscaling: 1 to 3 workers on queue backlog 10 per worker"),
        "{}",
        shown.stdout
    );
    let refused = f.cli(&["apps", "scale", "busy", "--workers", "5"]);
    assert_ne!(refused.code, Some(0));
    assert!(
        refused.stderr.contains("scales by itself between 1 and 3"),
        "{}",
        refused.stderr
    );

    let http = reqwest::Client::new();
    for id in 0..60 {
        let r = http
            .post(format!("http://{}/jobs", f.proxy))
            .header("host", "busy.fabric.localhost")
            .json(&serde_json::json!({ "id": id }))
            .send()
            .await
            .expect("a job");
        assert_eq!(r.status(), 202);
    }
    let up = f.wait_workers_within("busy", "busy at 3 ready workers", SCALED, |ws| ready(ws, 3));
    let mut zones: Vec<&str> = up.iter().filter_map(|w| w["az"].as_str()).collect();
    zones.sort();
    zones.dedup();
    assert_eq!(
        zones,
        ["a", "b", "c"],
        "the new workers follow the zone spread"
    );
    let ups = events(&f, "busy", "autoscale.up");
    assert!(
        ups.iter()
            .any(|m| m.contains("from 1 to 3 workers: queue backlog")),
        "{ups:?}"
    );

    // The backlog ends in the dead-letter queue; a window later the app
    // halves, and a window after that it is back at its min.
    f.wait_workers_within("busy", "busy back at 1 worker", SCALED, |ws| ready(ws, 1));
    let downs = events(&f, "busy", "autoscale.down");
    assert!(
        downs.iter().any(|m| m.contains("from 3 to 2 workers")),
        "{downs:?}"
    );
    assert!(
        downs.iter().any(|m| m.contains("from 2 to 1 workers")),
        "{downs:?}"
    );

    autoscale(&f, &["busy", "--off"]);
    let run = f.cli(&["apps", "scale", "busy", "--workers", "2"]);
    assert_eq!(
        run.code,
        Some(0),
        "with autoscaling off, scaling is the tenant's: {}",
        run.stderr
    );
}

/// Keeps `clients` requests going to `path` of `app` until `stop`.
fn load(f: &Fabric, app: &str, path: &str, clients: usize, stop: Arc<AtomicBool>) {
    for _ in 0..clients {
        let (url, host, stop) = (
            format!("http://{}{path}", f.proxy),
            format!("{app}.fabric.localhost"),
            stop.clone(),
        );
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            while !stop.load(Ordering::Relaxed) {
                let _ = http.get(&url).header("host", &host).send().await;
            }
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_scales_an_app_up() {
    let f = Fabric::start_env(ENV);
    let burn = "name: burn\nflows:\n  - name: burn\n    source: { http: { method: GET, path: /burn } }\n    steps:\n      - set-payload: '[range(100000)] | length'\n";
    deploy(&f, burn, &[]);
    autoscale(&f, &["burn", "--min", "1", "--max", "2", "--cpu", "50"]);
    let stop = Arc::new(AtomicBool::new(false));
    load(&f, "burn", "/burn", 4, stop.clone());
    f.wait_workers_within("burn", "burn at 2 ready workers", SCALED, |ws| ready(ws, 2));
    stop.store(true, Ordering::Relaxed);
    let ups = events(&f, "burn", "autoscale.up");
    assert!(
        ups.iter().any(|m| m.contains("from 1 to 2 workers: CPU")),
        "{ups:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_scale_an_app_up() {
    // A slow neighbour on this machine, which flows may call.
    let slow = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let slow_addr = slow.local_addr().unwrap();
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(|| async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            "slow"
        }),
    );
    tokio::spawn(async move { axum::serve(slow, app).await });
    let env: Vec<(&str, &str)> = [ENV, &[("FABRIC_EGRESS_ALLOW", "[127.0.0.0/8]")]].concat();
    let f = Fabric::start_env(&env);
    let wait = format!(
        "name: wait\nflows:\n  - name: wait\n    source: {{ http: {{ method: GET, path: /wait }} }}\n    steps:\n      - http-request: {{ method: GET, url: '\"http://{slow_addr}/\"' }}\n"
    );
    deploy(&f, &wait, &[]);
    // A 0.1-vCore worker takes 16 requests at once: 12 in flight is 75%.
    autoscale(
        &f,
        &["wait", "--min", "1", "--max", "2", "--concurrency", "50"],
    );
    let stop = Arc::new(AtomicBool::new(false));
    load(&f, "wait", "/wait", 12, stop.clone());
    f.wait_workers_within("wait", "wait at 2 ready workers", SCALED, |ws| ready(ws, 2));
    stop.store(true, Ordering::Relaxed);
    let ups = events(&f, "wait", "autoscale.up");
    assert!(
        ups.iter()
            .any(|m| m.contains("from 1 to 2 workers: requests in flight")),
        "{ups:?}"
    );
}
