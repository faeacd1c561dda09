//! The promise a tenant cares about most: through the load balancer, a client
//! polling all along sees no failed request while a worker is killed with
//! `kill -9`, while an AZ fails, while the app is redeployed and restarted.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fabric_tests::fabric::{Fabric, HELLO, ready};

const CLIENTS: usize = 4;
const WAIT: Duration = Duration::from_secs(60);

/// Clients that GET the app through the load balancer until stopped.
#[derive(Default)]
struct Load {
    ok: AtomicUsize,
    failures: Mutex<Vec<String>>,
    last: Mutex<String>,
    stop: AtomicBool,
}

impl Load {
    /// Starts the clients on a runtime of their own, so the test's blocking
    /// CLI calls never stall them.
    fn start(proxy: String) -> (Arc<Load>, std::thread::JoinHandle<()>) {
        let load = Arc::new(Load::default());
        let l = load.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let http = reqwest::Client::new();
                let clients: Vec<_> = (0..CLIENTS)
                    .map(|_| {
                        let (l, http, proxy) = (l.clone(), http.clone(), proxy.clone());
                        tokio::spawn(async move { l.poll(&http, &proxy).await })
                    })
                    .collect();
                for c in clients {
                    c.await.unwrap();
                }
            });
        });
        (load, thread)
    }

    async fn poll(&self, http: &reqwest::Client, proxy: &str) {
        while !self.stop.load(Ordering::SeqCst) {
            let sent = http
                .get(format!("http://{proxy}/hello/load"))
                .header("host", "hello.fabric.localhost")
                .send()
                .await;
            let failure = match sent {
                Ok(r) if r.status() == 200 => match r.text().await {
                    Ok(body) => {
                        *self.last.lock().unwrap() = body;
                        self.ok.fetch_add(1, Ordering::SeqCst);
                        None
                    }
                    Err(e) => Some(format!("body: {e}")),
                },
                Ok(r) => Some(format!(
                    "{}: {}",
                    r.status(),
                    r.text().await.unwrap_or_default()
                )),
                Err(e) => Some(format!("request: {e}")),
            };
            if let Some(f) = failure {
                self.failures.lock().unwrap().push(f);
            }
        }
    }

    /// Waits until `n` more requests have succeeded.
    fn more(&self, n: usize) {
        let target = self.ok.load(Ordering::SeqCst) + n;
        fabric_tests::until_sync("the load go on (it stalled)", WAIT, || {
            (self.ok.load(Ordering::SeqCst) >= target).then_some(())
        });
    }
}

#[test]
fn no_request_fails_through_a_kill_an_az_failure_a_redeploy_and_a_restart() {
    let mut fabric = Fabric::start();
    let run = fabric.cli(&["apps", "deploy", HELLO, "--workers", "2", "--size", "0.1"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let (load, thread) = Load::start(fabric.proxy.clone());
    load.more(100);

    // kill -9 of a worker: replaced, routes follow.
    let ws = fabric.workers("hello");
    let victim = ws[0]["pid"].as_i64().unwrap() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    fabric.wait_workers("hello", "worker 1 replaced", |ws| {
        ready(ws, 2) && ws[0]["pid"].as_i64() != Some(victim as i64)
    });
    load.more(100);

    // A whole AZ fails: its worker moves; then it comes back.
    let az = fabric.workers("hello")[1]["az"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(fabric.cli(&["az", "fail", &az]).code, Some(0));
    fabric.wait_workers("hello", "worker 2 moved", |ws| {
        ready(ws, 2) && ws.iter().all(|w| w["az"] != az.as_str())
    });
    load.more(100);
    assert_eq!(fabric.cli(&["az", "restore", &az]).code, Some(0));
    load.more(100);

    // A redeploy with a new greeting, under the same load.
    let dir = tempfile::tempdir().unwrap();
    let v2 = dir.path().join("hello.yaml");
    let text = std::fs::read_to_string(HELLO).unwrap();
    std::fs::write(&v2, text.replace("greeting: hello", "greeting: hi")).unwrap();
    let run = fabric.cli(&[
        "apps",
        "deploy",
        v2.to_str().unwrap(),
        "--workers",
        "2",
        "--size",
        "0.1",
    ]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    load.more(100);
    assert!(
        load.last.lock().unwrap().contains("hi, load"),
        "the new version answers: {}",
        load.last.lock().unwrap()
    );

    // A rolling restart: new workers side by side, the same answers.
    let before: Vec<i64> = fabric
        .workers("hello")
        .iter()
        .map(|w| w["pid"].as_i64().unwrap())
        .collect();
    let run = fabric.cli(&["apps", "restart", "hello", "--output", "json"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(run.json()[0]["version"], 3, "{}", run.stdout);
    let after = fabric.workers("hello");
    assert!(
        after
            .iter()
            .all(|w| !before.contains(&w["pid"].as_i64().unwrap())),
        "every worker was replaced: {after:#?}"
    );
    load.more(100);
    assert!(load.last.lock().unwrap().contains("hi, load"));

    load.stop.store(true, Ordering::SeqCst);
    thread.join().unwrap();
    let failures = load.failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {:?}\nthe load balancer's log:\n{}",
        failures.len(),
        load.ok.load(Ordering::SeqCst) + failures.len(),
        &failures[..failures.len().min(10)],
        fabric.log_lines("lb_proxy").join("\n")
    );
}
