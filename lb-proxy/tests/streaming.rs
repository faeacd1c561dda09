//! Bodies stream both ways: 100 MiB up and 100 MiB down through the proxy,
//! generated and counted on the fly, with the process's memory bounded.

mod support;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use support::{count, generated, one_worker, settings};

const SIZE: u64 = 100 * 1024 * 1024;

/// The process's resident set (`VmRSS`) or its peak (`VmHWM`), in bytes.
fn memory(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

#[tokio::test]
async fn a_hundred_mebibytes_each_way_with_memory_bounded() {
    let (_a, proxy) = one_worker(settings()).await;
    let client: Client<_, http_body_util::combinators::BoxBody<Bytes, std::io::Error>> =
        Client::builder(TokioExecutor::new()).build_http();
    // Warm up, so the baseline includes the proxy's buffers and pools.
    let warm = Request::post(proxy.url("/count"))
        .header("host", "orders.fabric.localhost")
        .body(generated(1024 * 1024))
        .unwrap();
    let r = client.request(warm).await.unwrap();
    r.into_body().collect().await.unwrap();
    let before = memory("VmRSS:");

    let up = Request::post(proxy.url("/count"))
        .header("host", "orders.fabric.localhost")
        .body(generated(SIZE))
        .unwrap();
    let r = client.request(up).await.unwrap();
    assert_eq!(r.status(), 200);
    let body = r.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        body,
        SIZE.to_string().as_bytes(),
        "the worker counted every byte"
    );

    let down = Request::get(proxy.url(&format!("/bytes/{SIZE}")))
        .header("host", "orders.fabric.localhost")
        .body(generated(0))
        .unwrap();
    let r = client.request(down).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(count(r.into_body()).await.unwrap(), SIZE);

    // Client, proxy and worker share this process and none holds a body:
    // the peak stays far below one body's size.
    let grown = memory("VmHWM:").saturating_sub(before);
    assert!(
        grown < 32 * 1024 * 1024,
        "memory grew by {} MiB while streaming",
        grown / (1024 * 1024)
    );
}
