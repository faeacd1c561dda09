//! Routing by host, direct worker URLs, error bodies, forwarding headers,
//! retries when nothing reached a worker, live route swaps, timeouts, drain.

mod support;

use std::time::Duration;

use support::{
    Backend, Proxy, dead_address, get, get_text, one_worker, settings, table, two_workers,
};

#[tokio::test]
async fn apps_balance_over_ready_workers_and_direct_urls_reach_one() {
    // On the shared runtime; the other tests run the data path on its own threads.
    let (a, b, proxy) = two_workers(lb_proxy::Settings {
        data_threads: 0,
        ..settings()
    })
    .await;
    for _ in 0..40 {
        let r = get(&proxy, "orders.fabric.localhost", "/x").await;
        assert_eq!(r.status(), 200);
        let body = r.text().await.unwrap();
        assert!(body == "a GET /x" || body == "b GET /x", "{body}");
    }
    assert!(
        a.hits() > 0 && b.hits() > 0,
        "both workers used: {} {}",
        a.hits(),
        b.hits()
    );
    for (host, want) in [
        ("orders-0.fabric.localhost:8080", "a"),
        ("ORDERS-1.fabric.localhost", "b"),
    ] {
        for _ in 0..5 {
            let body = get_text(&proxy, host, "/").await;
            assert_eq!(body, format!("{want} GET /"), "{host}");
        }
    }
    let metrics = proxy.metrics().await;
    assert!(
        metrics.contains(r#"fabric_proxy_requests_total{app="orders",class="2xx"} 50"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("fabric_proxy_upstream_seconds_bucket"),
        "{metrics}"
    );
}

#[tokio::test]
async fn unknown_hosts_are_404_and_apps_without_ready_workers_503() {
    let a = Backend::start("a").await;
    let proxy = Proxy::start(settings()).await;
    let tables = serde_json::json!({"apps": {
        "drained": {"workers": [{"index": 0, "address": a.addr.to_string(), "state": "draining"}]},
        "empty": {"workers": []},
    }});
    proxy.put_routes(tables).await;
    for host in [
        "nope.fabric.localhost",
        "drained-3.fabric.localhost",
        "example.com",
        "a.b.fabric.localhost",
    ] {
        let r = get(&proxy, host, "/").await;
        assert_eq!(r.status(), 404, "{host}");
        let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"], "NOT_FOUND");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains(&host.to_ascii_lowercase())
        );
        assert_eq!(body["correlationId"], id.as_str());
    }
    for host in ["drained.fabric.localhost", "empty.fabric.localhost"] {
        let r = get(&proxy, host, "/").await;
        assert_eq!(r.status(), 503, "{host}");
        assert_eq!(r.headers()["retry-after"], "1");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"], "NO_READY_WORKER");
    }
    assert_eq!(a.hits(), 0, "a draining worker gets no balanced request");
    // ...but its direct URL still reaches it.
    let r = get(&proxy, "drained-0.fabric.localhost", "/").await;
    assert_eq!(r.text().await.unwrap(), "a GET /");
}

#[tokio::test]
async fn requests_carry_forwarding_headers_and_lose_hop_by_hop_ones() {
    let (_a, proxy) = one_worker(settings()).await;
    let r = reqwest::Client::new()
        .get(proxy.url("/"))
        .header("host", "orders.fabric.localhost")
        .header("connection", "x-secret")
        .header("x-secret", "1")
        .header("proxy-authorization", "Basic eA==")
        .header("x-forwarded-for", "10.1.1.1")
        .send()
        .await
        .unwrap();
    let h = r.headers();
    let id = h["x-request-id"].to_str().unwrap();
    assert_eq!(id.len(), 32);
    assert_eq!(h["echo-x-request-id"], id);
    assert_eq!(h["echo-x-forwarded-for"], "10.1.1.1, 127.0.0.1");
    assert_eq!(h["echo-x-forwarded-proto"], "http");
    assert_eq!(h["echo-x-forwarded-host"], "orders.fabric.localhost");
    assert_eq!(
        h["echo-forwarded"],
        "for=127.0.0.1;host=orders.fabric.localhost;proto=http"
    );
    assert_eq!(h["echo-host"], "orders.fabric.localhost");
    for gone in ["echo-x-secret", "echo-proxy-authorization"] {
        assert!(!h.contains_key(gone), "{gone} reached the worker");
    }
    let r = reqwest::Client::new()
        .get(proxy.url("/"))
        .header("host", "orders.fabric.localhost")
        .header("x-request-id", "given-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "given-1");
    assert_eq!(r.headers()["echo-x-request-id"], "given-1");
}

#[tokio::test]
async fn a_refused_connection_sends_any_method_elsewhere_and_ejects_the_worker() {
    let a = Backend::start("a").await;
    let dead = dead_address().await;
    let proxy = Proxy::start(settings()).await;
    proxy
        .put_routes(table("orders", &[(0, dead, "ready"), (1, a.addr, "ready")]))
        .await;
    let client = reqwest::Client::new();
    for i in 0..20 {
        let r = client
            .post(proxy.url("/count"))
            .header("host", "orders.fabric.localhost")
            .body(vec![b'y'; 1000 + i])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), (1000 + i).to_string());
    }
    let metrics = proxy.metrics().await;
    assert!(
        metrics.contains(r#"fabric_proxy_ejections_total{app="orders"} 1"#),
        "{metrics}"
    );
    // Once ejected, the dead worker is not tried again: at most one retry in all.
    assert!(
        metrics.contains(r#"fabric_proxy_retries_total{app="orders"} 1"#)
            || metrics.contains(r#"fabric_proxy_retries_total{app="orders"} 0"#),
        "{metrics}"
    );
    // The direct URL of the dead worker says so.
    let r = get(&proxy, "orders-0.fabric.localhost", "/").await;
    assert_eq!(r.status(), 503);
}

#[tokio::test]
async fn route_swaps_under_load_drop_no_request() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let proxy = std::sync::Arc::new(Proxy::start(settings()).await);
    let one = table("orders", &[(0, a.addr, "ready")]);
    let two = table("orders", &[(0, b.addr, "ready"), (1, a.addr, "draining")]);
    proxy.put_routes(one.clone()).await;
    let mut clients = Vec::new();
    for _ in 0..4 {
        let proxy = proxy.clone();
        clients.push(tokio::spawn(async move {
            // One keep-alive connection per client, reused across swaps.
            let client = reqwest::Client::new();
            let mut failures = Vec::new();
            for _ in 0..150 {
                match client
                    .get(proxy.url("/"))
                    .header("host", "orders.fabric.localhost")
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 200 => {}
                    Ok(r) => failures.push(format!("status {}", r.status())),
                    Err(e) => failures.push(e.to_string()),
                }
            }
            failures
        }));
    }
    for i in 0..30 {
        proxy
            .put_routes(if i % 2 == 0 { two.clone() } else { one.clone() })
            .await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for c in clients {
        assert_eq!(c.await.unwrap(), Vec::<String>::new());
    }
    assert!(a.hits() > 0 && b.hits() > 0, "{} {}", a.hits(), b.hits());
}

/// A worker that reads one request head, tells the test, and drops the
/// connection without an answer when the test says so: a worker stopping
/// with a request already written to it.
async fn dropping_worker() -> (
    std::net::SocketAddr,
    tokio::sync::oneshot::Receiver<()>,
    tokio::sync::oneshot::Sender<()>,
) {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (got_tx, got_rx) = tokio::sync::oneshot::channel();
    let (drop_tx, drop_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = conn.read(&mut buf).await.unwrap();
            assert!(n > 0, "the proxy closed first");
            head.extend_from_slice(&buf[..n]);
        }
        let _ = got_tx.send(());
        let _ = drop_rx.await;
        drop(conn);
        drop(listener);
    });
    (addr, got_rx, drop_tx)
}

#[tokio::test]
async fn a_retry_follows_a_route_switch_made_while_the_request_was_under_way() {
    // The app's one worker takes a GET; meanwhile a redeploy switches the
    // route to a new worker, and the old one stops without answering. The
    // retry must read the new table, not the one the request started with.
    let (old, got, stop) = dropping_worker().await;
    let new = Backend::start("new").await;
    let proxy = std::sync::Arc::new(Proxy::start(settings()).await);
    proxy
        .put_routes(table("orders", &[(0, old, "ready")]))
        .await;
    let request = {
        let proxy = proxy.clone();
        tokio::spawn(async move { get_text(&proxy, "orders.fabric.localhost", "/x").await })
    };
    got.await.expect("the old worker got the request");
    proxy
        .put_routes(table("orders", &[(0, new.addr, "ready")]))
        .await;
    stop.send(()).unwrap();
    assert_eq!(request.await.unwrap(), "new GET /x");
    assert_eq!(new.hits(), 1);
}

#[tokio::test]
async fn a_slow_worker_is_a_504_and_is_not_retried() {
    let (a, b, proxy) = two_workers(lb_proxy::Settings {
        first_byte_timeout: Duration::from_millis(300),
        ..settings()
    })
    .await;
    let r = get(&proxy, "orders.fabric.localhost", "/sleep/10000").await;
    assert_eq!(r.status(), 504);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "UPSTREAM_TIMEOUT");
    assert_eq!(a.hits() + b.hits(), 1, "sent once only");
}

#[tokio::test]
async fn shutdown_lets_requests_in_flight_finish() {
    let (a, proxy) = one_worker(settings()).await;
    let url = proxy.url("/sleep/700");
    let slow = tokio::spawn(async move {
        reqwest::Client::new()
            .get(url)
            .header("host", "orders.fabric.localhost")
            .send()
            .await
    });
    // Wait until the request is at the worker, then shut down.
    for _ in 0..500 {
        if a.hits() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(a.hits(), 1);
    proxy.shutdown.trigger();
    let r = slow.await.unwrap().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "a GET /sleep/700");
    let url = proxy.url("/");
    proxy.task.await.unwrap().unwrap();
    assert!(reqwest::get(url).await.is_err(), "closed after the drain");
}

/// Sends GETs until `pred` holds for `run` answers in a row (at most 400 requests, 10 s).
async fn until_steady(proxy: &Proxy, run: usize, pred: impl Fn(&str) -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut streak = 0;
    for _ in 0..400 {
        let body = get_text(proxy, "orders.fabric.localhost", "/").await;
        streak = if pred(&body) { streak + 1 } else { 0 };
        if streak >= run {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "never steady");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never {run} answers in a row");
}

#[tokio::test]
async fn active_probes_take_an_unready_worker_out_and_bring_it_back() {
    let (a, _b, proxy) = two_workers(lb_proxy::Settings {
        health_interval: Duration::from_millis(50),
        health_rise: 2,
        health_fall: 2,
        ..settings()
    })
    .await;
    // a answers requests fine but says it is not ready: only probes can see that.
    a.ready.store(false, std::sync::atomic::Ordering::Relaxed);
    until_steady(&proxy, 40, |b| b == "b GET /").await;
    a.ready.store(true, std::sync::atomic::Ordering::Relaxed);
    until_steady(&proxy, 1, |b| b == "a GET /").await;
}

#[tokio::test]
async fn probes_go_to_a_workers_ops_address_when_the_table_gives_one() {
    let (a, a_ops, b) = (
        Backend::start("a").await,
        Backend::start("a-ops").await,
        Backend::start("b").await,
    );
    let proxy = Proxy::start(lb_proxy::Settings {
        health_interval: Duration::from_millis(50),
        health_rise: 2,
        health_fall: 2,
        ..settings()
    })
    .await;
    proxy
        .put_routes(serde_json::json!({"apps": {"orders": {"workers": [
            {"index": 0, "address": a.addr.to_string(), "health": a_ops.addr.to_string(), "state": "ready"},
            {"index": 1, "address": b.addr.to_string(), "state": "ready"},
        ]}}}))
        .await;
    // The app behind a owns `/readyz` on its own port and says 503 there
    // throughout: only the ops address speaks for the worker.
    a.ready.store(false, std::sync::atomic::Ordering::Relaxed);
    a_ops
        .ready
        .store(false, std::sync::atomic::Ordering::Relaxed);
    until_steady(&proxy, 40, |body| body == "b GET /").await;
    a_ops
        .ready
        .store(true, std::sync::atomic::Ordering::Relaxed);
    until_steady(&proxy, 1, |body| body == "a GET /").await;
    assert_eq!(
        proxy.routes().await["apps"]["orders"]["workers"][0]["health"],
        a_ops.addr.to_string()
    );
}

#[tokio::test]
async fn the_route_file_is_reloaded_when_it_changes_and_a_bad_one_ignored() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("routes.json");
    let write = |t: serde_json::Value| std::fs::write(&file, t.to_string()).unwrap();
    write(table("orders", &[(0, a.addr, "ready")]));
    let proxy = Proxy::start(lb_proxy::Settings {
        routes_file: Some(file.clone()),
        routes_reload: Duration::from_millis(50),
        ..settings()
    })
    .await;
    assert_eq!(
        get_text(&proxy, "orders.fabric.localhost", "/").await,
        "a GET /"
    );
    write(table(
        "orders",
        &[(0, b.addr, "ready"), (1, a.addr, "draining")],
    ));
    until_steady(&proxy, 1, |body| body == "b GET /").await;
    std::fs::write(&file, "{ not json").unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..10 {
        assert_eq!(
            get_text(&proxy, "orders.fabric.localhost", "/").await,
            "b GET /"
        );
    }
    let shown = proxy.routes().await;
    assert_eq!(shown["apps"]["orders"]["workers"][1]["state"], "draining");
}

#[tokio::test]
async fn a_lone_worker_is_not_ejected_so_its_failures_stay_502s() {
    let dead = dead_address().await;
    let proxy = Proxy::start(settings()).await;
    proxy
        .put_routes(table("orders", &[(0, dead, "ready")]))
        .await;
    for _ in 0..3 {
        let r = get(&proxy, "orders.fabric.localhost", "/").await;
        assert_eq!(r.status(), 502);
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"], "BAD_GATEWAY");
    }
}
