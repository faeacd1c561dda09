//! Fair share: an app flooding the proxy is answered 503 at once past its
//! bound, on both paths, while another app behind the same proxy answers
//! every request.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use support::{Backend, Proxy, eventually, settings};

/// The flooded app has one ready worker: this is its whole share.
const PER_WORKER: usize = 4;

/// `n` GETs to the calm app, each of which must be a 200; their latencies.
async fn calm(client: &reqwest::Client, proxy: &Proxy, n: usize) -> Vec<Duration> {
    let mut took = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let r = client
            .get(proxy.url("/x"))
            .header("host", "calm.fabric.localhost")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "calm GET /x");
        took.push(started.elapsed());
    }
    took.sort();
    took
}

/// One request to the flooded app: the lane's GET, hyper's POST, or a
/// direct worker URL.
async fn flood_once(client: &reqwest::Client, proxy: &Proxy, i: u64) -> reqwest::Response {
    let req = match i % 3 {
        0 => client.get(proxy.url("/x")),
        1 => client.post(proxy.url("/x")).body("payload"),
        _ => client.get(proxy.url("/direct")),
    };
    let host = if i % 3 == 2 {
        "flood-0.fabric.localhost"
    } else {
        "flood.fabric.localhost"
    };
    req.header("host", host).send().await.unwrap()
}

#[tokio::test]
async fn a_flooded_app_is_refused_past_its_share_while_another_keeps_answering() {
    let (flood, quiet) = (Backend::start("flood").await, Backend::start("calm").await);
    let proxy = Arc::new(
        Proxy::start(lb_proxy::Settings {
            app_max_in_flight_per_worker: PER_WORKER,
            ..settings()
        })
        .await,
    );
    let routes = |version: u64| {
        serde_json::json!({"version": version, "apps": {
            "flood": {"workers": [{"index": 0, "address": flood.addr.to_string(), "state": "ready"}]},
            "calm": {"workers": [{"index": 0, "address": quiet.addr.to_string(), "state": "ready"}]},
        }})
    };
    proxy.put_routes(routes(1)).await;
    let client = reqwest::Client::new();
    let before = calm(&client, &proxy, 50).await;

    // The flooded app's whole share, held open by its worker: GETs through
    // the pass-through lane, POSTs through hyper.
    let held: Vec<_> = (0..PER_WORKER)
        .map(|i| {
            let req = if i % 2 == 0 {
                client.get(proxy.url("/hold"))
            } else {
                client.post(proxy.url("/hold")).body("payload")
            };
            tokio::spawn(req.header("host", "flood.fabric.localhost").send())
        })
        .collect();
    eventually("the flooded app's share held by its worker", || {
        flood.gate.waiting() == PER_WORKER as u64
    })
    .await;
    // A new table, the same apps: the count goes on.
    proxy.put_routes(routes(2)).await;

    // The flood, from eight clients at once, for as long as the calm app is
    // measured (each sends at least one request).
    let (stop, refused) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let flooders: Vec<_> = (0..8)
        .map(|c| {
            let (proxy, client) = (proxy.clone(), reqwest::Client::new());
            let (stop, refused) = (stop.clone(), refused.clone());
            tokio::spawn(async move {
                for i in c.. {
                    let r = flood_once(&client, &proxy, i).await;
                    assert_eq!(r.status(), 503, "request {i}");
                    assert_eq!(r.headers()["retry-after"], "1");
                    let body: serde_json::Value = r.json().await.unwrap();
                    assert_eq!(body["error"], "APP_BUSY", "{body}");
                    assert!(body["correlationId"].is_string());
                    refused.fetch_add(1, Ordering::Relaxed);
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                }
            })
        })
        .collect();
    let during = calm(&client, &proxy, 200).await;
    stop.store(true, Ordering::Relaxed);
    for f in flooders {
        f.await.unwrap();
    }
    let refused = refused.load(Ordering::Relaxed);
    assert_eq!(
        flood.hits(),
        PER_WORKER as u64,
        "no refused request reached the worker"
    );
    let median = |t: &[Duration]| t[t.len() / 2];
    println!(
        "calm app: median {:?}, max {:?} before the flood; median {:?}, max {:?} during it ({refused} flood requests refused)",
        median(&before),
        before[before.len() - 1],
        median(&during),
        during[during.len() - 1],
    );

    // Let the held requests finish: their places come back.
    flood.gate.open();
    for h in held {
        let r = h.await.unwrap().unwrap();
        assert_eq!(r.status(), 200);
    }
    let metrics = proxy.metrics().await;
    assert!(
        metrics.contains(&format!(
            "fabric_proxy_shed_total{{app=\"flood\"}} {refused}"
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains("fabric_proxy_shed_total{app=\"calm\"} 0"),
        "{metrics}"
    );
    let mut answered = false;
    for _ in 0..1000 {
        let r = flood_once(&client, &proxy, 0).await;
        if r.status() == 200 {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(answered, "the flooded app never answered again");
}
