//! The upstream pools (hyper's path and the pass-through lane each have
//! theirs) against a worker written at the byte level, which counts the
//! connections it gets: a connection serves one request after another, one
//! whose response was cut short is never used again, and an idle one is
//! closed after the idle timeout.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use support::{Proxy, settings, table};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A worker that answers each request head with the number of its
/// connection; when `cut` is set, the next answer declares 100 bytes, sends
/// 10 and closes.
struct Worker {
    addr: SocketAddr,
    connections: Arc<AtomicU64>,
    /// Connections the proxy closed.
    closed: Arc<AtomicU64>,
    cut: Arc<AtomicBool>,
}

impl Worker {
    async fn start() -> Worker {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (connections, closed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let cut = Arc::new(AtomicBool::new(false));
        let (count, closing, cutting) = (connections.clone(), closed.clone(), cut.clone());
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let n = count.fetch_add(1, Ordering::SeqCst) + 1;
                let (closing, cutting) = (closing.clone(), cutting.clone());
                tokio::spawn(async move {
                    let mut pending = Vec::new();
                    let mut buf = [0u8; 4096];
                    loop {
                        let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") else {
                            match conn.read(&mut buf).await {
                                Ok(0) | Err(_) => {
                                    closing.fetch_add(1, Ordering::SeqCst);
                                    return;
                                }
                                Ok(read) => pending.extend_from_slice(&buf[..read]),
                            }
                            continue;
                        };
                        pending.drain(..end + 4);
                        if cutting.swap(false, Ordering::SeqCst) {
                            let _ = conn
                                .write_all(
                                    b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789",
                                )
                                .await;
                            return;
                        }
                        let body = format!("connection {n}");
                        let head =
                            format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len());
                        if conn.write_all((head + &body).as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Worker {
            addr,
            connections,
            closed,
            cut,
        }
    }
}

/// Settings for each lane in turn: pass-through, then hyper's.
fn lanes() -> [lb_proxy::settings::Settings; 2] {
    [true, false].map(|pass_through| lb_proxy::settings::Settings {
        pass_through,
        ..settings()
    })
}

async fn proxy_with(worker: &Worker, settings: lb_proxy::settings::Settings) -> Proxy {
    let proxy = Proxy::start(settings).await;
    proxy
        .put_routes(table("orders", &[(0, worker.addr, "ready")]))
        .await;
    proxy
}

/// A GET for the app on `client`'s own connections.
async fn send(client: &reqwest::Client, proxy: &Proxy) -> reqwest::Result<reqwest::Response> {
    client
        .get(proxy.url("/"))
        .header("host", "orders.fabric.localhost")
        .send()
        .await
}

#[tokio::test]
async fn one_upstream_connection_serves_request_after_request() {
    for lane in lanes() {
        let worker = Worker::start().await;
        let proxy = proxy_with(&worker, lane).await;
        // One client connection: its requests are all served by one data thread.
        let client = reqwest::Client::new();
        for _ in 0..20 {
            let resp = send(&client, &proxy).await.unwrap();
            assert_eq!(resp.status(), 200);
            assert_eq!(resp.text().await.unwrap(), "connection 1");
        }
        assert_eq!(worker.connections.load(Ordering::SeqCst), 1);
    }
}

#[tokio::test]
async fn a_connection_whose_response_was_cut_short_is_not_used_again() {
    for lane in lanes() {
        let worker = Worker::start().await;
        let proxy = proxy_with(&worker, lane).await;
        let client = reqwest::Client::new();
        let get = || send(&client, &proxy);
        assert_eq!(get().await.unwrap().text().await.unwrap(), "connection 1");
        worker.cut.store(true, Ordering::SeqCst);
        let cut = get().await.unwrap();
        assert!(
            cut.text().await.is_err(),
            "the client sees the body end early"
        );
        // The client may reconnect too; the worker must see a new connection.
        let next = get().await.unwrap();
        assert_eq!(next.status(), 200);
        assert_eq!(next.text().await.unwrap(), "connection 2");
        assert_eq!(worker.connections.load(Ordering::SeqCst), 2);
    }
}

#[tokio::test]
async fn an_idle_upstream_connection_is_closed_after_the_idle_timeout() {
    for lane in lanes() {
        let worker = Worker::start().await;
        let proxy = proxy_with(
            &worker,
            lb_proxy::settings::Settings {
                pool_idle_timeout: std::time::Duration::from_secs(1),
                ..lane
            },
        )
        .await;
        let answer = support::get_text(&proxy, "orders.fabric.localhost", "/").await;
        assert_eq!(answer, "connection 1");
        // Waits for the close, bounded: a connection kept forever fails here.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        while worker.closed.load(Ordering::SeqCst) == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the idle connection was never closed"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert_eq!(worker.connections.load(Ordering::SeqCst), 1);
    }
}

#[tokio::test]
async fn a_raw_connection_with_bytes_no_request_asked_for_is_not_reused() {
    use lb_proxy::upstream::Reusable;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let pair = || async {
        let ours = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (theirs, _) = listener.accept().await.unwrap();
        (ours, theirs)
    };
    // Quiet: fit for the next request.
    let (quiet, _keep) = pair().await;
    assert!(!quiet.is_closed());
    // A late answer no request asked for: it would be read as the next one's.
    let (late, mut worker) = pair().await;
    worker
        .write_all(b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\n\r\n")
        .await
        .unwrap();
    late.readable().await.unwrap();
    assert!(late.is_closed());
    // Closed by the worker.
    let (closed, worker) = pair().await;
    drop(worker);
    closed.readable().await.unwrap();
    assert!(closed.is_closed());
}
