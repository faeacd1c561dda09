//! The small backend every proxy in `bench/proxy` fronts: a fixed 13-byte
//! answer over HTTP/1.1 keep-alive, on the threads it is given.
//!
//! Usage: `proxy-backend ADDR THREADS`; prints `listening on ADDR`.
#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::io::Write;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use hyper_util::rt::TokioIo;

const ANSWER: &[u8] = b"hello, world\n";

fn main() {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:0".into());
    let threads: usize = args.next().and_then(|t| t.parse().ok()).unwrap_or(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .unwrap_or_else(|e| panic!("cannot listen on {addr}: {e}"));
        println!("listening on {}", listener.local_addr().expect("bound"));
        let _ = std::io::stdout().flush();
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(
                TokioIo::new(stream),
                hyper::service::service_fn(|_req| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(ANSWER))))
                }),
            ));
        }
    });
}
