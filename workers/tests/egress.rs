//! A flow's `http-request` under the egress policy: what a hostile tenant
//! tries (the fabric's own ports, the metadata address, redirects, port
//! scans, endless responses) against a real worker on loopback.

mod support;

use std::sync::atomic::Ordering;

use serde_json::{Value, json};
use support::*;

fn caller(url: &str) -> String {
    format!(
        r#"
flows:
  - name: call
    source: {{ http: {{ method: POST, path: /call }} }}
    steps:
      - http-request: {{ method: POST, url: '"{url}"', body: '.' }}
"#
    )
}

async fn call(w: &Worker) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{}/call", w.base))
        .json(&json!({"x": 1}))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn by_default_a_flow_reaches_no_loopback_port_nor_the_metadata_address() {
    let (target, col) = collector().await;
    for url in [
        format!("{target}/record"),
        "http://localhost:1/x".to_string(),
        "http://169.254.169.254/latest/meta-data/".to_string(),
        "http://[::1]:1/".to_string(),
        "http://[::ffff:127.0.0.1]:1/".to_string(),
        "http://10.0.0.1/".to_string(),
    ] {
        let w = worker_with(&caller(&url), |_| {}).await;
        let (status, body) = call(&w).await;
        assert_eq!(status, 502, "{url}: {body}");
        assert_eq!(body["error"], "HTTP");
        assert!(
            body["message"].as_str().unwrap().contains("egress policy"),
            "{url}: {body}"
        );
    }
    assert_eq!(col.calls.load(Ordering::SeqCst), 0, "nothing got through");
}

#[tokio::test]
async fn an_allowed_address_is_reached_and_its_neighbours_are_not() {
    let (target, col) = collector().await;
    let allowed = target.trim_start_matches("http://").to_string();
    let port: u16 = allowed.rsplit(':').next().unwrap().parse().unwrap();
    let neighbour = format!("http://127.0.0.1:{}/record", port.wrapping_add(1));
    let w = worker_with(&caller(&format!("{target}/record")), |s| {
        s.egress_allow = vec![allowed.clone()]
    })
    .await;
    let (status, _) = call(&w).await;
    assert_eq!(status, 200);
    assert_eq!(col.calls.load(Ordering::SeqCst), 1);
    let w = worker_with(&caller(&neighbour), |s| s.egress_allow = vec![allowed]).await;
    let (status, body) = call(&w).await;
    assert_eq!(status, 502, "{body}");
}

#[tokio::test]
async fn a_redirect_to_a_denied_address_is_not_followed() {
    // The allowed server answers every request with a redirect to a port
    // the policy does not allow (where the collector listens).
    let (target, col) = collector().await;
    let app = axum::Router::new().fallback(move || {
        let to = format!("{target}/record");
        async move {
            (
                axum::http::StatusCode::TEMPORARY_REDIRECT,
                [("location", to)],
            )
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let redirector = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let w = worker_with(&caller(&format!("http://{redirector}/go")), |s| {
        s.egress_allow = vec![redirector.to_string()]
    })
    .await;
    let (status, body) = call(&w).await;
    assert_eq!(status, 502, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("egress policy"),
        "{body}"
    );
    assert_eq!(
        col.calls.load(Ordering::SeqCst),
        0,
        "the redirect was not followed"
    );
}

#[tokio::test]
async fn connect_errors_read_the_same_whatever_listens() {
    // With loopback allowed, a closed port and a port that answers with a
    // reset give one message, naming neither the port's state nor the cause.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let w = worker(&caller(&format!("http://{closed}/x?key=secret"))).await;
    let (status, body) = call(&w).await;
    assert_eq!(status, 502);
    let message = body["message"].as_str().unwrap();
    assert_eq!(message, format!("POST http://{closed}: could not connect"));
    assert!(!message.contains("secret"), "the query is not quoted");
    let w = worker(&caller("http://no-such-host.invalid/x")).await;
    let (_, body) = call(&w).await;
    assert_eq!(
        body["message"],
        "POST http://no-such-host.invalid: could not connect"
    );
}

#[tokio::test]
async fn an_endless_response_is_cut_at_the_workers_limit() {
    // A body larger than a 0.2 worker's largest payload (8 MiB).
    let app = axum::Router::new().fallback(|| async {
        let chunk = bytes::Bytes::from(vec![b'x'; 1 << 20]);
        let stream =
            futures::stream::iter((0..64).map(move |_| Ok::<_, std::io::Error>(chunk.clone())));
        axum::body::Body::from_stream(stream)
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let w = worker(&caller(&format!("http://{addr}/big"))).await;
    let (status, body) = call(&w).await;
    assert_eq!(status, 502, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("larger than"),
        "{body}"
    );
}
