//! The data path on threads of its own, one single-threaded runtime each (as
//! nginx workers or pingora's): a connection, its request tasks and the
//! upstream connections it uses stay on the thread that accepted it, each
//! thread with its own upstream pool, so no request hops between threads.

use std::sync::Arc;

use common::shutdown::Shutdown;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;

use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::routes::Routes;
use crate::server::Server;
use crate::settings::Settings;

/// The listeners every data thread accepts on (each thread holds a clone of the socket).
pub struct Sockets {
    /// Plain HTTP.
    pub http: std::net::TcpListener,
    /// HTTPS, with its acceptor.
    pub https: Option<(std::net::TcpListener, TlsAcceptor)>,
}

/// Starts `n` data threads; each receiver completes when its thread has drained.
pub fn start(
    n: usize,
    settings: &Settings,
    routes: &Arc<Routes>,
    metrics: &Metrics,
    sockets: &Sockets,
    shutdown: &Shutdown,
) -> std::io::Result<Vec<oneshot::Receiver<()>>> {
    let per_thread = Settings {
        max_connections: settings.max_connections.div_ceil(n.max(1)),
        ..settings.clone()
    };
    let mut done = Vec::with_capacity(n);
    for i in 0..n {
        let http = sockets.http.try_clone()?;
        let https = match &sockets.https {
            Some((l, acceptor)) => Some((l.try_clone()?, acceptor.clone())),
            None => None,
        };
        let (tx, rx) = oneshot::channel();
        let (settings, routes, metrics, shutdown) = (
            per_thread.clone(),
            routes.clone(),
            metrics.clone(),
            shutdown.clone(),
        );
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name(format!("lb-proxy-data-{i}"))
            .spawn(move || {
                runtime.block_on(serve(settings, routes, metrics, http, https, shutdown));
                let _ = tx.send(());
            })?;
        done.push(rx);
    }
    Ok(done)
}

async fn serve(
    settings: Settings,
    routes: Arc<Routes>,
    metrics: Metrics,
    http: std::net::TcpListener,
    https: Option<(std::net::TcpListener, TlsAcceptor)>,
    shutdown: Shutdown,
) {
    let connections = TaskTracker::new();
    let proxy = Arc::new(Proxy::new(settings.clone(), routes, &metrics));
    let server = Server::new(&settings, proxy, connections.clone(), shutdown.clone());
    let mut loops = Vec::new();
    let plain = std::iter::once((http, None));
    for (std_listener, acceptor) in plain.chain(https.map(|(l, a)| (l, Some(a)))) {
        match TcpListener::from_std(std_listener) {
            Ok(l) => loops.push(tokio::spawn(server.clone().accept_loop(l, acceptor))),
            Err(e) => tracing::error!(error = %e, "data thread cannot use its listener"),
        }
    }
    for l in loops {
        if let Ok(Err(e)) = l.await {
            tracing::error!(error = %e, "data listener failed");
        }
    }
    connections.close();
    if tokio::time::timeout(shutdown.grace(), connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(grace = ?shutdown.grace(), "grace period expired with client connections open");
    }
}
