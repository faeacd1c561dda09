//! The small backend every proxy in `bench/proxy` fronts: a fixed 13-byte
//! answer, after reading the request's whole body (the POST scenarios), over
//! HTTP/1.1 keep-alive or HTTP/2 with prior knowledge (h2load's direct
//! reference), on the threads it is given.
//!
//! Usage: `proxy-backend ADDR THREADS`; prints `listening on ADDR`.
#![forbid(unsafe_code)]

use std::io::Write;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};

const ANSWER: &[u8] = b"hello, world\n";

/// Reads the whole body, then answers; a body cut short gets a 400.
async fn answer(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let mut response = Response::new(Full::new(Bytes::from_static(ANSWER)));
    if req.into_body().collect().await.is_err() {
        *response.status_mut() = StatusCode::BAD_REQUEST;
    }
    Ok(response)
}

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
        let http = std::sync::Arc::new(hyper_util::server::conn::auto::Builder::new(
            TokioExecutor::new(),
        ));
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            let http = http.clone();
            tokio::spawn(async move {
                let _ = http
                    .serve_connection(TokioIo::new(stream), hyper::service::service_fn(answer))
                    .await;
            });
        }
    });
}
