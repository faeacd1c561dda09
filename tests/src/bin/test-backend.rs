//! A small HTTP/1.1 backend for the proxy's tests and benchmark: prints
//! `listening on ADDR`, answers `{name} {METHOD} {path}`, counts bodies on
//! `/count`, and on `POST /hold` reads the body, says so, and never answers.
//!
//! Usage: `test-backend [NAME] [--listen ADDR] [--threads N]`.
#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

struct Args {
    name: String,
    listen: SocketAddr,
    threads: usize,
}

fn args() -> Result<Args, String> {
    let mut out = Args {
        name: "backend".into(),
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        threads: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--listen" => {
                let v = it.next().ok_or("--listen needs an address")?;
                out.listen = v.parse().map_err(|e| format!("--listen {v}: {e}"))?;
            }
            "--threads" => {
                let v = it.next().ok_or("--threads needs a number")?;
                out.threads = v.parse().map_err(|e| format!("--threads {v}: {e}"))?;
            }
            name => out.name = name.to_string(),
        }
    }
    Ok(out)
}

async fn answer(
    name: Arc<str>,
    posts: Arc<AtomicU64>,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    if method == Method::POST {
        posts.fetch_add(1, Ordering::Relaxed);
    }
    let text = match path.as_str() {
        "/readyz" => "ready".to_string(),
        "/stats" => format!("posts {}", posts.load(Ordering::Relaxed)),
        "/count" | "/hold" => {
            let mut body = req.into_body();
            let mut n: u64 = 0;
            while let Some(Ok(frame)) = body.frame().await {
                n += frame.data_ref().map_or(0, |d| d.len() as u64);
            }
            if path == "/hold" {
                println!("received {n} bytes");
                let _ = std::io::stdout().flush();
                std::future::pending::<()>().await;
            }
            n.to_string()
        }
        _ => format!("{name} {method} {path}"),
    };
    Response::new(Full::new(Bytes::from(text)))
}

fn main() {
    let args = args().unwrap_or_else(|e| {
        eprintln!("test-backend: {e}");
        std::process::exit(64);
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async move {
        let listener = TcpListener::bind(args.listen).await.unwrap_or_else(|e| {
            eprintln!("test-backend: cannot listen on {}: {e}", args.listen);
            std::process::exit(1);
        });
        let addr = listener.local_addr().expect("a bound address");
        println!("listening on {addr}");
        let _ = std::io::stdout().flush();
        let name: Arc<str> = args.name.into();
        let posts = Arc::new(AtomicU64::new(0));
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let (name, posts) = (name.clone(), posts.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let (name, posts) = (name.clone(), posts.clone());
                    async move { Ok::<_, Infallible>(answer(name, posts, req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
}
