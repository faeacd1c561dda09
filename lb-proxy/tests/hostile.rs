//! Hostile and broken clients: smuggling shapes, oversized bodies and heads,
//! clients too slow to send their headers or their body. Raw bytes over TCP.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::{one_worker, settings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Writes `wire`, then reads until the proxy closes (at most 10 s).
async fn exchange(addr: SocketAddr, wire: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(wire).await.unwrap();
    read_to_close(&mut s).await
}

async fn read_to_close(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the proxy kept the connection open: {:?}",
        String::from_utf8_lossy(&out)
    );
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn every_smuggling_shape_is_refused_before_reaching_a_worker() {
    let (a, proxy) = one_worker(settings()).await;
    let head = "POST /count HTTP/1.1\r\nHost: orders.fabric.localhost\r\n";
    let shapes = [
        (
            "CL then TE",
            format!(
                "{head}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            ),
        ),
        (
            "TE then CL",
            format!(
                "{head}Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            ),
        ),
        (
            "differing CL",
            format!("{head}Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
        ),
        (
            "CL list",
            format!("{head}Content-Length: 5, 6\r\n\r\nhello!"),
        ),
        (
            "obs-fold",
            format!("{head}X-A: 1\r\n continued\r\nContent-Length: 5\r\n\r\nhello"),
        ),
        (
            "bad chunk size",
            format!("{head}Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"),
        ),
        (
            "chunk size with a sign",
            format!("{head}Transfer-Encoding: chunked\r\n\r\n+5\r\nhello\r\n0\r\n\r\n"),
        ),
    ];
    for (name, wire) in &shapes {
        let answer = exchange(proxy.http, wire.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{name}: {answer}");
    }
    // A GET with obs-fold, which the pass-through lane hands to hyper.
    let folded = "GET / HTTP/1.1\r\nHost: orders.fabric.localhost\r\nX-A: 1\r\n continued\r\n\r\n";
    let answer = exchange(proxy.http, folded.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "GET obs-fold: {answer}");
    assert_eq!(a.hits(), 0, "no ambiguous request reached the worker");
    // The same connection shape without ambiguity goes through.
    let ok = exchange(
        proxy.http,
        format!("{head}Content-Length: 5\r\nConnection: close\r\n\r\nhello").as_bytes(),
    )
    .await;
    assert!(
        ok.starts_with("HTTP/1.1 200") && ok.ends_with("\r\n\r\n5"),
        "{ok}"
    );
}

#[tokio::test]
async fn a_smuggled_second_request_is_refused_after_a_clean_first() {
    let (a, proxy) = one_worker(settings()).await;
    let wire = "GET /first HTTP/1.1\r\nHost: orders.fabric.localhost\r\n\r\n\
                POST /count HTTP/1.1\r\nHost: orders.fabric.localhost\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    let answer = exchange(proxy.http, wire.as_bytes()).await;
    let first = answer.find("HTTP/1.1 200").expect(&answer);
    let second = answer.find("HTTP/1.1 400").expect(&answer);
    assert!(first < second, "{answer}");
    assert!(answer.contains("AMBIGUOUS_REQUEST"), "{answer}");
    assert_eq!(a.hits(), 1);
}

#[tokio::test]
async fn asking_for_an_upgrade_the_worker_does_not_grant_leaves_the_checks_on() {
    // `Upgrade` once turned the checks off for the rest of the connection,
    // whatever the answer: a 200 to it opened the way to smuggling.
    let upgrade = "GET /first HTTP/1.1\r\nHost: orders.fabric.localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
    let smuggled = "POST /count HTTP/1.1\r\nHost: orders.fabric.localhost\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    for pass_through in [true, false] {
        let (a, proxy) = one_worker(lb_proxy::Settings {
            pass_through,
            ..settings()
        })
        .await;
        // Pipelined: both requests in one write.
        let answer = exchange(proxy.http, format!("{upgrade}{smuggled}").as_bytes()).await;
        let first = answer.find("HTTP/1.1 200").expect(&answer);
        let second = answer.find("HTTP/1.1 400").expect(&answer);
        assert!(first < second, "pass_through {pass_through}: {answer}");
        assert!(answer.contains("AMBIGUOUS_REQUEST"), "{answer}");
        assert_eq!(a.hits(), 1, "pass_through {pass_through}");

        // One after the other, the second sent once the first is answered.
        let mut s = TcpStream::connect(proxy.http).await.unwrap();
        s.write_all(upgrade.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"a GET /first") {
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "{}", String::from_utf8_lossy(&head));
            head.extend_from_slice(&buf[..n]);
        }
        assert!(head.starts_with(b"HTTP/1.1 200"));
        s.write_all(smuggled.as_bytes()).await.unwrap();
        let answer = read_to_close(&mut s).await;
        assert!(
            answer.starts_with("HTTP/1.1 400") && answer.contains("AMBIGUOUS_REQUEST"),
            "pass_through {pass_through}: {answer}"
        );
        assert_eq!(a.hits(), 2, "the smuggled request never reached the worker");
    }
}

#[tokio::test]
async fn bodies_over_the_limit_are_413_and_heads_over_it_431() {
    let (a, proxy) = one_worker(lb_proxy::Settings {
        max_body_bytes: 1000,
        max_header_bytes: 16 * 1024,
        ..settings()
    })
    .await;
    let client = reqwest::Client::new();
    let r = client
        .post(proxy.url("/count"))
        .header("host", "orders.fabric.localhost")
        .body(vec![b'x'; 1001])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "PAYLOAD_TOO_LARGE");
    assert_eq!(a.hits(), 0, "refused on its declared length");

    // A chunked body has no declared length: it is cut off as it crosses the limit.
    let chunk = "x".repeat(600);
    let wire = format!(
        "POST /count HTTP/1.1\r\nHost: orders.fabric.localhost\r\nTransfer-Encoding: chunked\r\n\r\n\
         258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n"
    );
    let answer = exchange(proxy.http, wire.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    let big = "v".repeat(20 * 1024);
    let wire = format!("GET / HTTP/1.1\r\nHost: orders.fabric.localhost\r\nX-Big: {big}\r\n\r\n");
    let answer = exchange(proxy.http, wire.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");

    let r = client
        .post(proxy.url("/count"))
        .header("host", "orders.fabric.localhost")
        .body(vec![b'x'; 1000])
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.text().await.unwrap(),
        "1000",
        "a body at the limit passes"
    );
}

#[tokio::test]
async fn clients_too_slow_with_their_head_or_body_are_cut_off() {
    let (_a, proxy) = one_worker(lb_proxy::Settings {
        idle_timeout: Duration::from_millis(500),
        ..settings()
    })
    .await;

    // Half a head, then nothing: the connection is closed.
    let mut s = TcpStream::connect(proxy.http).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: orders.fab")
        .await
        .unwrap();
    let answer = read_to_close(&mut s).await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );

    // A head trickled a byte at a time, each byte within the idle timeout:
    // the head as a whole is bounded, so the connection is closed while the
    // client is still sending (it would go on for 20 s, the wait is 10 s).
    let s = TcpStream::connect(proxy.http).await.unwrap();
    let (mut reader, mut writer) = s.into_split();
    let trickle = tokio::spawn(async move {
        writer.write_all(b"GET / HTTP/1.1\r\nX: ").await.unwrap();
        for _ in 0..200 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if writer.write_all(b"a").await.is_err() {
                return;
            }
        }
    });
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), reader.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the trickled head kept its connection");
    trickle.abort();

    // A whole head, part of the body, then nothing: 408 with the JSON body.
    let mut s = TcpStream::connect(proxy.http).await.unwrap();
    s.write_all(b"POST /count HTTP/1.1\r\nHost: orders.fabric.localhost\r\nContent-Length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    let answer = read_to_close(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("CLIENT_TIMEOUT"), "{answer}");
}
