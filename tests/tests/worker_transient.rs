//! The documented trade-off of transient queues, shown honestly: without
//! persistent queues, messages held in a worker's memory die with it.

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use fabric_tests::process::{Proc, Stream};
use nix::sys::signal::Signal;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

#[derive(Clone)]
struct Collector {
    seen: Arc<Mutex<Vec<Value>>>,
    release: Arc<tokio::sync::Semaphore>,
}

async fn record(State(c): State<Collector>, Json(body): Json<Value>) -> Json<Value> {
    c.seen.lock().unwrap().push(body.clone());
    // Held until the test releases it: the worker's consumer stays busy.
    if body["hold"] == true {
        let _ = c.release.acquire().await.map(|p| p.forget());
    }
    Json(body)
}

fn start_worker(manifest: &std::path::Path, data: &std::path::Path) -> (Proc, String) {
    let mut cmd = Command::new(fabric_tests::fabric_bin());
    cmd.args(["serve", "worker"])
        .env("FABRIC_MANIFEST", manifest)
        .env("FABRIC_DATA_DIR", data)
        .env("FABRIC_LOG_FORMAT", "json")
        // The collector the flow calls listens on loopback, which an
        // operator must allow (workers reach the public internet only).
        .env("FABRIC_EGRESS_ALLOW", r#"["127.0.0.0/8"]"#)
        .env("RUST_LOG", "info");
    let mut proc = Proc::spawn(cmd);
    let line = proc.wait_for_line(WAIT, |s, l| s == Stream::Stderr && l.contains("listening"));
    let event: Value = serde_json::from_str(&line).unwrap();
    (proc, format!("http://{}", event["addr"].as_str().unwrap()))
}

#[tokio::test]
async fn transient_messages_die_with_their_worker() {
    let collector = Collector {
        seen: Arc::default(),
        release: Arc::new(tokio::sync::Semaphore::new(0)),
    };
    let app = axum::Router::new()
        .route("/record", axum::routing::post(record))
        .with_state(collector.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("app.yaml");
    std::fs::write(
        &manifest,
        format!(
            r#"
name: transient
properties: {{ target: "{target}" }}
flows:
  - name: accept
    source: {{ http: {{ method: POST, path: /in }} }}
    steps:
      - publish: {{ queue: work }}
      - respond: {{ status: 202 }}
  - name: process
    source: {{ queue: {{ name: work, concurrency: 1 }} }}
    steps:
      - http-request: {{ method: POST, url: '$props.target + "/record"', body: '.', timeout: 5m }}
"#
        ),
    )
    .unwrap();

    let (mut first, base) = start_worker(&manifest, dir.path());
    let client = reqwest::Client::new();
    // The first message occupies the only consumer; four more wait in memory.
    for i in 0..5 {
        let body = json!({"id": i, "hold": i == 0});
        let r = client
            .post(format!("{base}/in"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "accepted into the worker's memory");
    }
    fabric_tests::until("the first message processed", WAIT, async || {
        (!collector.seen.lock().unwrap().is_empty()).then_some(())
    })
    .await;

    first.signal(Signal::SIGKILL);
    first.wait_exit(WAIT);

    // A new worker starts empty. Its queue is FIFO, so once a marker sent
    // through it arrives, anything it held would have arrived first.
    let (mut second, base) = start_worker(&manifest, dir.path());
    collector.release.add_permits(1);
    let r = client
        .post(format!("{base}/in"))
        .json(&json!({"id": "marker"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    fabric_tests::until("the marker processed", WAIT, async || {
        let seen = collector.seen.lock().unwrap();
        seen.iter().any(|v| v["id"] == "marker").then_some(())
    })
    .await;
    let ids: Vec<Value> = collector
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|v| v["id"].clone())
        .collect();
    assert_eq!(
        ids,
        vec![json!(0), json!("marker")],
        "messages 1-4 were accepted (202) but lived only in the killed worker's memory: \
         they are lost, which is why apps that cannot lose messages turn on persistent queues"
    );
    second.signal(Signal::SIGTERM);
    assert!(second.wait_exit(WAIT).success());
}
