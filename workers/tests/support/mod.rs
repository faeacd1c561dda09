//! A real worker on loopback for the integration tests, and a loopback
//! server for flows to call.
#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use common::shutdown::Shutdown;
use serde_json::{Value, json};
use tokio::net::TcpListener;

pub const WAIT: Duration = Duration::from_secs(20);

/// A worker running in this process.
pub struct Worker {
    /// Its base URL.
    pub base: String,
    /// Stops it.
    pub shutdown: Shutdown,
    /// Its run.
    pub task: tokio::task::JoinHandle<Result<(), workers::StartError>>,
    _dir: tempfile::TempDir,
}

/// A worker of `manifest` (size 0.2) whose flows may call loopback, as an
/// operator who widened the egress policy to `127.0.0.0/8` would allow.
pub async fn worker(manifest: &str) -> Worker {
    worker_with(manifest, |s| s.egress_allow = vec!["127.0.0.0/8".into()]).await
}

/// A worker of `manifest` with its settings changed by `settings`.
pub async fn worker_with(manifest: &str, settings: impl FnOnce(&mut workers::Settings)) -> Worker {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.yaml");
    std::fs::write(&path, manifest).unwrap();
    let mut s = workers::Settings {
        manifest: path,
        size: "0.2".parse().unwrap(),
        ..Default::default()
    };
    settings(&mut s);
    let config = workers::Config {
        data_dir: dir.path().to_path_buf(),
        settings: s,
        ..Default::default()
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = Shutdown::new(Duration::from_secs(10));
    let task = tokio::spawn(workers::run(config, listener, shutdown.clone()));
    let client = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Ok(r) = client.get(format!("{base}/readyz")).send().await
            && r.status() == 200
        {
            break;
        }
        assert!(!task.is_finished(), "the worker stopped: {:?}", task.await);
        assert!(
            tokio::time::Instant::now() < deadline,
            "worker never turned ready"
        );
        tokio::task::yield_now().await;
    }
    Worker {
        base,
        shutdown,
        task,
        _dir: dir,
    }
}

/// A loopback server that records what flows send it, fails the first
/// `fail_first` calls with 500, and tracks how many calls overlap.
#[derive(Clone, Default)]
pub struct Collector {
    pub seen: Arc<Mutex<Vec<Value>>>,
    pub calls: Arc<AtomicUsize>,
    pub fail_first: Arc<AtomicUsize>,
    pub in_flight: Arc<AtomicUsize>,
    pub max_in_flight: Arc<AtomicUsize>,
    pub hold: Arc<tokio::sync::Notify>,
    pub holding: Arc<AtomicUsize>,
}

pub async fn record(
    State(c): State<Collector>,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let n = c.calls.fetch_add(1, Ordering::SeqCst);
    if n < c.fail_first.load(Ordering::SeqCst) {
        return (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({"n": n})));
    }
    c.seen.lock().unwrap().push(body.clone());
    (StatusCode::OK, Json(json!({"echo": body, "n": n})))
}

pub async fn slow(State(c): State<Collector>, Json(body): Json<Value>) -> Json<Value> {
    let now = c.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    c.max_in_flight.fetch_max(now, Ordering::SeqCst);
    c.holding.fetch_add(1, Ordering::SeqCst);
    c.hold.notified().await;
    c.in_flight.fetch_sub(1, Ordering::SeqCst);
    Json(body)
}

pub async fn collector() -> (String, Collector) {
    let c = Collector::default();
    let app = axum::Router::new()
        .route("/record", post(record))
        .route("/slow", post(slow))
        .route(
            "/status/{code}",
            post(
                |axum::extract::Path(code): axum::extract::Path<u16>| async move {
                    StatusCode::from_u16(code).unwrap()
                },
            ),
        )
        .with_state(c.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, c)
}

pub async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
