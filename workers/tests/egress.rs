//! A flow's `http-request` under the egress policy: what a hostile tenant
//! tries (the fabric's own ports, the metadata address, redirects, port
//! scans, endless responses) against a real worker on loopback.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, Method, Uri};
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

/// One request a hop server saw.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    path: String,
    headers: HeaderMap,
    body: bytes::Bytes,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A loopback server that records every request. `/{status}/to/{port}/{rest}`
/// answers a redirect of that status to `http://127.0.0.1:{port}/{rest}`
/// (itself or another server, so hops chain); any other path answers `{}`.
async fn hop_server() -> (SocketAddr, Arc<Mutex<Vec<Seen>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let app = axum::Router::new().fallback(
        move |method: Method, uri: Uri, headers: HeaderMap, body: bytes::Bytes| {
            let log = log.clone();
            async move {
                let path = uri.path().to_string();
                log.lock().unwrap().push(Seen {
                    method,
                    path: path.clone(),
                    headers,
                    body,
                });
                let hop: Vec<&str> = path.trim_start_matches('/').splitn(4, '/').collect();
                if let [status, "to", port, rest] = hop[..] {
                    let status = axum::http::StatusCode::from_bytes(status.as_bytes()).unwrap();
                    let to = format!("http://127.0.0.1:{port}/{rest}");
                    return (status, [("location", to)], String::new());
                }
                (
                    axum::http::StatusCode::OK,
                    [("content-type", "application/json".to_string())],
                    "{}".to_string(),
                )
            }
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, seen)
}

/// A flow that makes one `http-request` per URL, in turn, each with a body
/// and `headers` (a YAML flow mapping).
fn requests(urls: &[String], headers: &str) -> String {
    let steps: String = urls
        .iter()
        .map(|url| {
            format!(
                "      - http-request: {{ method: POST, url: '\"{url}\"', body: '.', headers: {headers} }}\n"
            )
        })
        .collect();
    format!(
        "flows:\n  - name: call\n    source: {{ http: {{ method: POST, path: /call }} }}\n    steps:\n{steps}"
    )
}

#[tokio::test]
async fn credentials_and_host_reach_the_named_origin_and_no_other_a_redirect_picks() {
    let (a, at_a) = hop_server().await;
    let (b, at_b) = hop_server().await;
    let (pa, pb) = (a.port(), b.port());
    let headers = "{ authorization: '\"Bearer secret\"', cookie: '\"session=s3cret\"', \
        proxy-authorization: '\"Basic cHJveHk=\"', host: '\"api.example\"', x-trace: '\"t-1\"' }";
    let w = worker(&requests(
        &[
            // A redirect within the named origin.
            format!("http://{a}/307/to/{pa}/landing"),
            // To another origin (another port), and from there back.
            format!("http://{a}/307/to/{pb}/307/to/{pa}/back"),
        ],
        headers,
    ))
    .await;
    let (status, body) = call(&w).await;
    assert_eq!(status, 200, "{body}");

    let at_a = at_a.lock().unwrap().clone();
    let at_b = at_b.lock().unwrap().clone();
    let paths = |seen: &[Seen]| seen.iter().map(|s| s.path.clone()).collect::<Vec<_>>();
    assert_eq!(
        paths(&at_a),
        [
            format!("/307/to/{pa}/landing"),
            "/landing".to_string(),
            format!("/307/to/{pb}/307/to/{pa}/back"),
            "/back".to_string(),
        ]
    );
    assert_eq!(paths(&at_b), [format!("/307/to/{pa}/back")]);
    // The named origin, first asked and after a redirect to itself, gets all.
    for seen in [&at_a[0], &at_a[1], &at_a[2]] {
        assert_eq!(
            seen.header("authorization"),
            Some("Bearer secret"),
            "{seen:?}"
        );
        assert_eq!(seen.header("cookie"), Some("session=s3cret"), "{seen:?}");
        assert_eq!(
            seen.header("proxy-authorization"),
            Some("Basic cHJveHk="),
            "{seen:?}"
        );
        assert_eq!(seen.header("host"), Some("api.example"), "{seen:?}");
        assert_eq!(seen.header("x-trace"), Some("t-1"), "{seen:?}");
    }
    // Another origin gets none of them, nor does the first once the chain
    // has left it; other headers go on.
    for (seen, host) in [(&at_b[0], b), (&at_a[3], a)] {
        for name in ["authorization", "cookie", "proxy-authorization"] {
            assert_eq!(seen.header(name), None, "{name}: {seen:?}");
        }
        assert_eq!(
            seen.header("host"),
            Some(host.to_string().as_str()),
            "{seen:?}"
        );
        assert_eq!(seen.header("x-trace"), Some("t-1"), "{seen:?}");
    }
}

#[tokio::test]
async fn a_303_and_a_302_after_post_continue_as_get_without_the_body_and_a_307_keeps_both() {
    let (a, at_a) = hop_server().await;
    let pa = a.port();
    let w = worker(&requests(
        &[
            format!("http://{a}/303/to/{pa}/after-303"),
            format!("http://{a}/302/to/{pa}/after-302"),
            format!("http://{a}/307/to/{pa}/after-307"),
        ],
        "{}",
    ))
    .await;
    let (status, body) = call(&w).await;
    assert_eq!(status, 200, "{body}");
    let seen = at_a.lock().unwrap().clone();
    let landed = |path: &str| seen.iter().find(|s| s.path == path).cloned().unwrap();
    for path in ["/after-303", "/after-302"] {
        let s = landed(path);
        assert_eq!(s.method, Method::GET, "{path}");
        assert!(s.body.is_empty(), "{path}: {s:?}");
        assert_eq!(s.header("content-type"), None, "{path}: {s:?}");
    }
    let s = landed("/after-307");
    assert_eq!(s.method, Method::POST);
    assert_eq!(&s.body[..], b"{}", "the previous answer, sent on");
    assert_eq!(s.header("content-type"), Some("application/json"));
}
