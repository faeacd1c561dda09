//! The reverse-proxy load balancer: routes `{app}.{domain}` to an app's
//! healthy workers and `{app}-{n}.{domain}` to worker n.
//!
//! The data path (plain and TLS listeners) is raw hyper; the admin port
//! (`listener` in [`run`]) serves `/healthz`, `/readyz`, `/metrics` and the
//! route table at `/routes`, the latter only to holders of the fabric's
//! internal token. See docs/lb-proxy.md.
#![forbid(unsafe_code)]

mod admin;
pub mod balance;
pub mod body;
mod chunked;
pub mod endpoint;
pub mod error;
mod express;
pub mod headers;
mod health;
pub mod metrics;
pub mod proxy;
pub mod routes;
mod server;
pub mod settings;
pub mod share;
pub mod smuggle;
mod threads;
pub mod tls;
pub mod upstream;
mod watch;

use std::net::SocketAddr;
use std::sync::Arc;

use common::config::ServiceConfig;
use common::http::Readiness;
use common::shutdown::Shutdown;
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

pub use routes::{RouteTable, WorkerRoute, WorkerState};

pub use settings::{Balance, Settings};

/// The component's name in logs and metrics.
pub const NAME: &str = "lb-proxy";

/// The component's configuration: the common service fields and its own settings.
pub type Config = ServiceConfig<Settings>;

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The route file is unreadable or invalid.
    #[error(transparent)]
    Routes(#[from] routes::RouteError),
    /// TLS could not be set up.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The fabric secret, which internal tokens are verified with, could not be loaded.
    #[error(transparent)]
    Secret(#[from] common::config::ConfigError),
    /// The admin server failed.
    #[error("admin port: {0}")]
    Admin(std::io::Error),
    /// The data threads could not start.
    #[error("data path threads: {0}")]
    Threads(std::io::Error),
}

/// The sockets the proxy serves.
pub struct Listeners {
    /// The admin port: ops endpoints and `/routes`.
    pub admin: TcpListener,
    /// Plain HTTP data path.
    pub http: TcpListener,
    /// HTTPS data path, if any.
    pub https: Option<TcpListener>,
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, Error> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })
}

/// Serves the admin port on `listener` and the data path on the settings'
/// `proxy_listen` (and `tls_listen`) until `shutdown`, then drains.
pub async fn run(config: Config, listener: TcpListener, shutdown: Shutdown) -> Result<(), Error> {
    let http = bind(config.settings.proxy_listen).await?;
    let https = match config.settings.tls_listen {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    serve(
        config,
        Listeners {
            admin: listener,
            http,
            https,
        },
        shutdown,
    )
    .await
}

/// Serves on listeners bound by the caller (tests bind every one at port 0).
pub async fn serve(config: Config, listeners: Listeners, shutdown: Shutdown) -> Result<(), Error> {
    // Loaded first: the admin API's `/routes` takes the fabric's internal tokens only.
    let key = common::secrets::token_key(&config)?;
    let settings = config.settings;
    let readiness = Readiness::new("starting");
    let metrics = metrics::Metrics::default();
    let mut registry = common::http::registry(NAME);
    metrics.register(&mut registry);
    let routes = Arc::new(routes::Routes::new(metrics.clone()));
    if let Some(path) = &settings.routes_file {
        watch::load(path, &routes)?;
        shutdown.spawn(
            "lb-proxy-route-file",
            watch::watch(
                path.clone(),
                settings.routes_reload,
                routes.clone(),
                shutdown.clone(),
            ),
        );
    }
    let tls = match listeners.https {
        Some(l) => Some((l, tls::acceptor(&settings)?)),
        None => None,
    };
    shutdown.spawn(
        "lb-proxy-health",
        health::probe_loop(settings.clone(), routes.clone(), shutdown.clone()),
    );
    let connections = TaskTracker::new();
    let mut loops = Vec::new();
    let mut threads = Vec::new();
    if settings.data_threads == 0 {
        let proxy = Arc::new(proxy::Proxy::new(
            settings.clone(),
            routes.clone(),
            &metrics,
        ));
        let server = server::Server::new(&settings, proxy, connections.clone(), shutdown.clone());
        loops.push(tokio::spawn(
            server.clone().accept_loop(listeners.http, None),
        ));
        if let Some((l, acceptor)) = tls {
            loops.push(tokio::spawn(server.accept_loop(l, Some(acceptor))));
        }
    } else {
        let https = match tls {
            Some((l, a)) => Some((l.into_std().map_err(Error::Threads)?, a)),
            None => None,
        };
        let sockets = threads::Sockets {
            http: listeners.http.into_std().map_err(Error::Threads)?,
            https,
        };
        threads = threads::start(
            settings.data_threads,
            &settings,
            &routes,
            &metrics,
            &sockets,
            &shutdown,
        )
        .map_err(Error::Threads)?;
    }
    readiness.set_ready();
    let router = admin::router(readiness.clone(), Arc::new(registry), routes, key);
    let admin = common::http::serve(NAME, listeners.admin, router, readiness, shutdown.clone());
    let result = admin.await.map_err(Error::Admin);
    for l in loops {
        match l.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "data listener failed"),
            Err(e) => tracing::error!(error = %e, "data listener panicked"),
        }
    }
    for t in threads {
        let _ = t.await;
    }
    connections.close();
    if tokio::time::timeout(shutdown.grace(), connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(grace = ?shutdown.grace(), "grace period expired with client connections open");
    }
    result
}
