//! Every processor and source, through a real worker on loopback, error paths included.

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::shutdown::Shutdown;
use serde_json::{Value, json};
use tokio::net::TcpListener;

mod support;

use support::*;

#[tokio::test]
async fn http_flow_validates_transforms_and_responds() {
    let w = worker(
        r#"
name: shop
properties: { currency: EUR }
flows:
  - name: accept
    source: { http: { method: POST, path: '/orders/{region}' } }
    steps:
      - validate: '.orderId != null'
      - set-variable: { name: total, value: '.qty * .price' }
      - choice:
          when:
            - if: '$vars.total > 100'
              steps: [ { set-variable: { name: tier, value: '"big"' } } ]
          otherwise: [ { set-variable: { name: tier, value: '"small"' } } ]
      - set-payload: '{id: .orderId, total: $vars.total, tier: $vars.tier, region: $attributes.uri.region, rush: $attributes.query.rush, cur: $props.currency, cid: $correlationId}'
      - respond: { status: 201, headers: { location: '"/orders/\(.id)"' } }
  - name: hello
    source: { http: { method: GET, path: /hello } }
    steps:
      - set-payload: '"hello \($attributes.headers["x-name"] // "world")"'
"#,
    )
    .await;
    let c = reqwest::Client::new();
    let r = c
        .post(format!("{}/orders/eu?rush=yes", w.base))
        .header("x-correlation-id", "corr-1")
        .json(&json!({"orderId": "A1", "qty": 3, "price": 50}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["location"], "/orders/A1");
    assert_eq!(r.headers()["x-correlation-id"], "corr-1");
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body,
        json!({"id": "A1", "total": 150, "tier": "big", "region": "eu", "rush": "yes", "cur": "EUR", "cid": "corr-1"})
    );

    let r = c
        .post(format!("{}/orders/us", w.base))
        .json(&json!({"qty": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let cid = r.headers()["x-correlation-id"]
        .to_str()
        .unwrap()
        .to_string();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "VALIDATION");
    assert_eq!(body["correlationId"], cid);
    // The client is told it failed validation, not the flow's condition.
    assert!(
        !body["message"]
            .as_str()
            .unwrap()
            .contains(".orderId != null"),
        "{body}"
    );

    let r = c
        .get(format!("{}/hello", w.base))
        .header("x-name", "ada")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], "text/plain; charset=utf-8");
    assert_eq!(r.text().await.unwrap(), "hello ada");
    assert_eq!(
        c.get(format!("{}/nowhere", w.base))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        c.delete(format!("{}/hello", w.base))
            .send()
            .await
            .unwrap()
            .status(),
        405
    );

    let metrics = c
        .get(format!("{}/metrics", w.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("fabric_worker_http_requests_total{flow=\"accept\",class=\"2xx\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("fabric_worker_flow_errors_total{flow=\"accept\",kind=\"VALIDATION\"} 1"),
        "{metrics}"
    );
    w.shutdown.trigger();
    w.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn errors_are_typed_handled_and_raised() {
    let w = worker(
        r#"
flows:
  - name: guarded
    source: { http: { method: POST, path: /guarded } }
    steps:
      - try:
          steps:
            - flow-ref: risky
          on-error:
            - type: [ 'APP:OUT_OF_STOCK' ]
              steps: [ { set-payload: '{handled: $vars.error.type, why: $vars.error.message}' } ]
            - type: [ VALIDATION ]
              propagate: true
              steps: [ { log: '"bad input"' } ]
  - name: risky
    steps:
      - validate: '.sku != null'
      - choice:
          when:
            - if: '.sku == "gone"'
              steps: [ { raise-error: { type: 'APP:OUT_OF_STOCK', message: '"no \(.sku)"' } } ]
            - if: '.sku == "teapot"'
              steps: [ { raise-error: { type: 'APP:TEAPOT', status: 418 } } ]
            - if: '.sku == "math"'
              steps: [ { set-payload: '.sku + 1' } ]
"#,
    )
    .await;
    let c = reqwest::Client::new();
    let post = |sku: Value| {
        c.post(format!("{}/guarded", w.base))
            .json(&json!({"sku": sku}))
            .send()
    };
    let r = post(json!("gone")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"handled": "APP:OUT_OF_STOCK", "why": "no gone"})
    );
    let r = post(Value::Null).await.unwrap();
    assert_eq!(r.status(), 400, "propagated after the handler ran");
    let r = post(json!("teapot")).await.unwrap();
    assert_eq!(r.status(), 418);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "APP:TEAPOT");
    // A type error on the request's own payload is the client's to fix: a 400
    // that names the type error, not the flow's source.
    let r = post(json!("math")).await.unwrap();
    assert_eq!(r.status(), 400);
    let body = r.json::<Value>().await.unwrap();
    assert_eq!(body["error"], "EXPRESSION");
    assert!(
        !body["message"].as_str().unwrap().contains(".sku + 1"),
        "{body}"
    );
    let r = post(json!("fine")).await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"sku": "fine"}));
}

#[tokio::test]
async fn http_request_calls_out_with_timeouts_and_errors() {
    let (collector_url, col) = collector().await;
    let w = worker(&format!(
        r#"
properties: {{ target: "{collector_url}" }}
flows:
  - name: call
    source: {{ http: {{ method: POST, path: /call }} }}
    steps:
      - http-request: {{ method: POST, url: '$props.target + "/record"', body: '{{wrapped: .}}', headers: {{ x-trace: '$correlationId' }} }}
      - set-payload: '.echo'
  - name: fail
    source: {{ http: {{ method: POST, path: /fail }} }}
    steps:
      - http-request: {{ method: POST, url: '$props.target + "/status/503"' }}
  - name: slow
    source: {{ http: {{ method: POST, path: /slow }} }}
    steps:
      - http-request: {{ method: POST, url: '$props.target + "/slow"', body: '.', timeout: 200ms }}
  - name: refused
    source: {{ http: {{ method: POST, path: /refused }} }}
    steps:
      - http-request: {{ method: POST, url: '"http://127.0.0.1:1/x"' }}
"#
    ))
    .await;
    let c = reqwest::Client::new();
    let r = c
        .post(format!("{}/call", w.base))
        .json(&json!({"a": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"wrapped": {"a": 1}})
    );
    assert_eq!(
        col.seen.lock().unwrap().as_slice(),
        &[json!({"wrapped": {"a": 1}})]
    );

    let r = c.post(format!("{}/fail", w.base)).send().await.unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "HTTP");
    let r = c
        .post(format!("{}/slow", w.base))
        .json(&json!(1))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "TIMEOUT");
    col.hold.notify_waiters();
    let r = c.post(format!("{}/refused", w.base)).send().await.unwrap();
    assert_eq!(r.status(), 502);
}

#[tokio::test]
async fn transient_queue_is_transactional() {
    let (collector_url, col) = collector().await;
    col.fail_first.store(2, Ordering::SeqCst);
    let w = worker(&format!(
        r#"
properties: {{ target: "{collector_url}" }}
flows:
  - name: accept
    source: {{ http: {{ method: POST, path: /in }} }}
    steps:
      - publish: {{ queue: work }}
      - respond: {{ status: 202 }}
  - name: process
    source: {{ queue: {{ name: work, concurrency: 2, max-deliveries: 3 }} }}
    steps:
      - validate: '.poison != true'
      - http-request: {{ method: POST, url: '$props.target + "/record"', body: '{{id: .id, delivery: $attributes.deliveryCount}}' }}
"#
    ))
    .await;
    let c = reqwest::Client::new();
    // Fails twice at the collector, then succeeds on the third delivery.
    let r = c
        .post(format!("{}/in", w.base))
        .json(&json!({"id": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    until("the retried message", || {
        !col.seen.lock().unwrap().is_empty()
    })
    .await;
    assert_eq!(col.seen.lock().unwrap()[0], json!({"id": 1, "delivery": 3}));

    // A message that always fails is dead-lettered after max-deliveries, and never reaches the collector.
    c.post(format!("{}/in", w.base))
        .json(&json!({"id": 2, "poison": true}))
        .send()
        .await
        .unwrap();
    let metrics_url = format!("{}/metrics", w.base);
    let mut metrics = String::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !metrics.contains("outcome=\"dead_lettered\"} 1") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never dead-lettered: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        metrics = c
            .get(&metrics_url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
    }
    assert!(
        metrics.contains(
            "fabric_worker_queue_messages_total{flow=\"process\",outcome=\"rolled_back\"} 4"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "fabric_worker_queue_messages_total{flow=\"process\",outcome=\"processed\"} 1"
        ),
        "{metrics}"
    );
    assert_eq!(col.seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn queued_async_bounds_concurrency_and_shutdown_drains() {
    let (collector_url, col) = collector().await;
    let w = worker(&format!(
        r#"
properties: {{ target: "{collector_url}" }}
flows:
  - name: slow
    source: {{ http: {{ method: POST, path: /slow }} }}
    strategy: queued-async
    max-concurrency: 1
    steps:
      - http-request: {{ method: POST, url: '$props.target + "/slow"', body: '.' }}
"#
    ))
    .await;
    let c = reqwest::Client::new();
    let calls: Vec<_> = (0..3)
        .map(|i| tokio::spawn(c.post(format!("{}/slow", w.base)).json(&json!(i)).send()))
        .collect();
    // Release the held calls one at a time: only one is ever at the collector.
    let mut released = 0;
    while released < 3 {
        until("a held call", || {
            col.holding.load(Ordering::SeqCst) > released
        })
        .await;
        if released == 2 {
            // The last one is in flight: shutting down now must let it finish.
            w.shutdown.trigger();
        }
        col.hold.notify_one();
        released += 1;
    }
    for call in calls {
        assert_eq!(call.await.unwrap().unwrap().status(), 200);
    }
    assert_eq!(col.max_in_flight.load(Ordering::SeqCst), 1);
    w.task.await.unwrap().unwrap();
    assert!(
        c.get(format!("{}/healthz", w.base)).send().await.is_err(),
        "stopped accepting"
    );
}

#[tokio::test]
async fn oversized_bodies_are_refused() {
    let w = worker(
        "flows:\n  - name: a\n    source: { http: { method: POST, path: /a } }\n    steps: []\n",
    )
    .await;
    // Size 0.2: a quarter of a 32 MiB budget.
    let big = vec![b'x'; 8 * 1024 * 1024 + 1];
    let r = reqwest::Client::new()
        .post(format!("{}/a", w.base))
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "VALIDATION");
}

#[tokio::test]
async fn a_bad_manifest_never_starts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "flows:\n  - name: a\n    steps:\n      - flow-ref: ghost\n",
    )
    .unwrap();
    let config = workers::Config {
        settings: workers::Settings {
            manifest: path,
            ..Default::default()
        },
        ..Default::default()
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = workers::run(config, listener, Shutdown::new(Duration::from_secs(1)))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("line 4, column") && text.contains("ghost"),
        "{text}"
    );
}

#[tokio::test]
async fn clients_trickling_their_bodies_hold_no_slot() {
    use tokio::io::AsyncWriteExt;
    let w = worker(
        r#"
flows:
  - name: echo
    source: { http: { method: POST, path: /echo } }
    steps:
      - set-payload: '{got: .}'
"#,
    )
    .await;
    let addr = w.base.trim_start_matches("http://").to_string();
    // More clients than a 0.2 worker has slots (32), each stuck mid-body.
    let mut stuck = Vec::new();
    for _ in 0..48 {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(
            b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{\"a\":",
        )
        .await
        .unwrap();
        stuck.push(s);
    }
    let r = reqwest::Client::new()
        .post(format!("{}/echo", w.base))
        .json(&json!(1))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "a whole request is served beside them");
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"got": 1}));
    drop(stuck);
}

#[tokio::test]
async fn bodies_half_sent_hold_at_most_the_workers_payload_budget() {
    use tokio::io::AsyncWriteExt;
    let w = worker(
        r#"
flows:
  - name: echo
    source: { http: { method: POST, path: /echo } }
    steps:
      - set-payload: 'length'
"#,
    )
    .await;
    let addr = w.base.trim_start_matches("http://").to_string();
    // A 0.2 worker: a 32 MiB budget, 8 MiB bodies at most. Four clients each
    // send 7 MiB of an 8 MiB body and stop: 28 MiB held, 4 MiB left.
    let size: workers::size::WorkerSize = "0.2".parse().unwrap();
    let part = 7 * 1024 * 1024;
    let mut stuck = Vec::new();
    for _ in 0..4 {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let head = format!(
            "POST /echo HTTP/1.1\r\nhost: x\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n",
            size.max_payload()
        );
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(&vec![b'a'; part]).await.unwrap();
        stuck.push(s);
    }
    let client = reqwest::Client::new();
    let send = |len: usize| {
        client
            .post(format!("{}/echo", w.base))
            .header("content-type", "text/plain")
            .body(vec![b'b'; len])
            .send()
    };
    // A fifth large body finds the budget spent: 503, not a fifth 8 MiB held.
    let mut refused = false;
    for _ in 0..50 {
        let r = send(6 * 1024 * 1024).await.unwrap();
        if r.status() == 503 {
            refused = true;
            break;
        }
        // The stuck bodies may still be arriving; the server has not yet
        // counted them all.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(refused, "a body past the budget is refused");
    // A small one fits in what is left.
    let r = send(1000).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "1000");
    // Once the stuck clients go, their bytes are the worker's again.
    drop(stuck);
    let mut served = false;
    for _ in 0..100 {
        if send(6 * 1024 * 1024).await.unwrap().status() == 200 {
            served = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(served);
}
