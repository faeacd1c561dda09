//! The proxy's failover promise, with real backend processes killed by `kill -9`:
//! a steady stream of GETs loses nothing, and a POST whose body already
//! reached the dead backend is not replayed on the other.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::shutdown::Shutdown;
use common::token::TokenKey;
use fabric_tests::process::{Proc, Stream};
use lb_proxy::{Config, Listeners, Settings};
use nix::sys::signal::Signal;
use tokio::net::TcpListener;

const WAIT: Duration = Duration::from_secs(20);

/// Starts `test-backend NAME` and returns it with its address.
fn backend(name: &str) -> (Proc, SocketAddr) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_test-backend"));
    cmd.arg(name);
    let mut p = Proc::spawn(cmd);
    let line = p.wait_for_line(WAIT, |s, l| {
        s == Stream::Stdout && l.starts_with("listening on ")
    });
    let addr = line["listening on ".len()..].parse().expect("an address");
    (p, addr)
}

struct Proxy {
    http: SocketAddr,
    admin: SocketAddr,
    shutdown: Shutdown,
    /// Holds the fabric secret the proxy checks `/routes` callers with.
    _data: tempfile::TempDir,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

async fn proxy(settings: Settings, workers: &[SocketAddr]) -> Proxy {
    let bind = || async { TcpListener::bind("127.0.0.1:0").await.unwrap() };
    let (admin, http) = (bind().await, bind().await);
    let (admin_addr, http_addr) = (admin.local_addr().unwrap(), http.local_addr().unwrap());
    let shutdown = Shutdown::new(Duration::from_secs(2));
    let data = tempfile::tempdir().unwrap();
    let key = TokenKey::load_or_generate(&data.path().join(common::secrets::SECRET_FILE)).unwrap();
    let config = Config {
        settings,
        data_dir: data.path().to_path_buf(),
        ..Config::default()
    };
    tokio::spawn(lb_proxy::serve(
        config,
        Listeners {
            admin,
            http,
            https: None,
        },
        shutdown.clone(),
    ));
    let workers: Vec<_> = workers
        .iter()
        .enumerate()
        .map(|(i, a)| serde_json::json!({"index": i, "address": a.to_string(), "state": "ready"}))
        .collect();
    let table = serde_json::json!({"apps": {"orders": {"workers": workers}}});
    let client = reqwest::Client::new();
    fabric_tests::until("the proxy admin take the routes", WAIT, async || {
        let put = client
            .put(format!("http://{admin_addr}/routes"))
            .bearer_auth(key.issue_internal(WAIT))
            .json(&table)
            .send()
            .await;
        match put {
            Ok(r) if r.status() == 200 => Ok(()),
            other => Err(other),
        }
    })
    .await;
    Proxy {
        http: http_addr,
        admin: admin_addr,
        shutdown,
        _data: data,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_one_backend_fails_no_get() {
    let (one, a1) = backend("one");
    let (_two, a2) = backend("two");
    let proxy = proxy(
        Settings {
            health_interval: Duration::from_millis(200),
            ..Settings::default()
        },
        &[a1, a2],
    )
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (stop, done, url) = (
            stop.clone(),
            done.clone(),
            format!("http://{}/", proxy.http),
        );
        clients.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let (mut failures, mut seen) = (Vec::new(), Vec::new());
            // Bounded in count as well as by the stop flag.
            for _ in 0..20_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let r = client
                    .get(&url)
                    .header("host", "orders.fabric.localhost")
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 200 => match r.text().await {
                        Ok(body) => seen.push(body),
                        Err(e) => failures.push(format!("body: {e}")),
                    },
                    Ok(r) => failures.push(format!("status {}", r.status())),
                    Err(e) => failures.push(e.to_string()),
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            (failures, seen)
        }));
    }
    let wait_for = |n: u64| {
        let done = done.clone();
        async move {
            // Not yet: how many are done so far, for the panic.
            fabric_tests::until(&format!("{n} requests done"), WAIT, async || {
                let so_far = done.load(Ordering::Relaxed);
                if so_far >= n { Ok(()) } else { Err(so_far) }
            })
            .await
        }
    };
    wait_for(300).await;
    one.signal(Signal::SIGKILL);
    let killed_at = done.load(Ordering::Relaxed);
    wait_for(killed_at + 600).await;
    stop.store(true, Ordering::Relaxed);

    let (mut failures, mut seen) = (Vec::new(), Vec::new());
    for c in clients {
        let (f, s) = c.await.unwrap();
        failures.extend(f);
        seen.extend(s);
    }
    assert_eq!(failures, Vec::<String>::new(), "no request may fail");
    assert!(
        seen.iter().any(|b| b == "one GET /"),
        "backend one served before its death"
    );
    assert!(seen.iter().any(|b| b == "two GET /"));
    // The last requests all went to the survivor.
    assert!(seen.iter().rev().take(100).all(|b| b == "two GET /"));
    let metrics = reqwest::get(format!("http://{}/metrics", proxy.admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let ejections: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix(r#"fabric_proxy_ejections_total{app="orders"} "#))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(ejections >= 1, "the dead backend was ejected: {metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_whose_body_reached_a_dead_backend_is_not_replayed() {
    let (mut one, a1) = backend("one");
    let (_two, a2) = backend("two");
    // Round robin makes the first request go to worker 0 (backend one);
    // backend two is ready all along, so a replay would have somewhere to go.
    let proxy = proxy(
        Settings {
            balance: lb_proxy::Balance::RoundRobin,
            health_interval: Duration::ZERO,
            ..Settings::default()
        },
        &[a1, a2],
    )
    .await;
    let url = format!("http://{}/hold", proxy.http);
    let post = tokio::spawn(async move {
        reqwest::Client::new()
            .post(url)
            .header("host", "orders.fabric.localhost")
            .body(vec![b'p'; 64 * 1024])
            .send()
            .await
    });
    one.wait_for_line(WAIT, |s, l| {
        s == Stream::Stdout && l == "received 65536 bytes"
    });
    one.signal(Signal::SIGKILL);
    let r = tokio::time::timeout(WAIT, post)
        .await
        .expect("the proxy answered")
        .unwrap()
        .unwrap();
    assert_eq!(r.status(), 502);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "BAD_GATEWAY");
    let stats = reqwest::get(format!("http://{a2}/stats"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        stats, "posts 0",
        "the POST was not sent again to backend two"
    );
}
