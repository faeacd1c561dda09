//! The data-path listeners: accept (capped by a semaphore), TLS handshake,
//! HTTP/1.1 or HTTP/2 per connection, graceful drain on shutdown.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use common::shutdown::Shutdown;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;

use crate::headers::ForwardedFor;
use crate::proxy::{Conn, Proxy};
use crate::settings::Settings;
use crate::smuggle::{Inspected, Verdict};

/// What every connection of a listener shares.
#[derive(Clone)]
pub struct Server {
    proxy: Arc<Proxy>,
    h1: Arc<http1::Builder>,
    h2: Arc<http2::Builder<TokioExecutor>>,
    permits: Arc<Semaphore>,
    connections: TaskTracker,
    handshake_timeout: std::time::Duration,
    shutdown: Shutdown,
}

impl Server {
    /// A server for `proxy`; `connections` tracks every connection task for the drain.
    pub fn new(
        settings: &Settings,
        proxy: Arc<Proxy>,
        connections: TaskTracker,
        shutdown: Shutdown,
    ) -> Self {
        let mut h1 = http1::Builder::new();
        h1.timer(TokioTimer::new())
            .header_read_timeout(settings.idle_timeout)
            .max_buf_size(settings.max_header_bytes.max(8192));
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX));
        Server {
            proxy,
            h1: Arc::new(h1),
            h2: Arc::new(h2),
            permits: Arc::new(Semaphore::new(settings.max_connections.max(1))),
            connections,
            handshake_timeout: settings.idle_timeout,
            shutdown,
        }
    }

    /// Accepts on `listener` until shutdown; `tls` makes it the HTTPS listener.
    pub async fn accept_loop(
        self,
        listener: TcpListener,
        tls: Option<TlsAcceptor>,
    ) -> std::io::Result<()> {
        let addr = listener.local_addr()?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        tracing::info!(component = crate::NAME, %addr, scheme, "data path listening");
        loop {
            let permit = tokio::select! {
                p = self.permits.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
                () = self.shutdown.triggered() => break,
            };
            let (stream, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(s) => s,
                    Err(e) => {
                        // Out of descriptors or a connection reset before accept: keep serving.
                        tracing::warn!(%addr, error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                        continue;
                    }
                },
                () = self.shutdown.triggered() => break,
            };
            let _ = stream.set_nodelay(true);
            let (this, tls) = (self.clone(), tls.clone());
            self.connections.spawn(async move {
                this.connection(stream, peer, tls).await;
                drop(permit);
            });
        }
        tracing::info!(component = crate::NAME, %addr, scheme, "data path stopped accepting");
        Ok(())
    }

    async fn connection(
        &self,
        stream: TcpStream,
        peer: std::net::SocketAddr,
        tls: Option<TlsAcceptor>,
    ) {
        let verdict = Arc::new(Verdict::default());
        let conn = |sni: Option<String>, tls: bool| Conn {
            peer,
            sni,
            tls,
            forwarded: ForwardedFor::new(peer.ip(), tls),
            verdict: verdict.clone(),
            served: AtomicU64::new(0),
        };
        match tls {
            None => {
                let io = Inspected::new(stream, verdict.clone(), false);
                self.serve(io, conn(None, false), false).await;
            }
            Some(acceptor) => {
                let stream =
                    match tokio::time::timeout(self.handshake_timeout, acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                let (_, session) = stream.get_ref();
                let sni = session.server_name().map(str::to_ascii_lowercase);
                let h2 = session.alpn_protocol() == Some(b"h2");
                let io = Inspected::new(stream, verdict.clone(), h2);
                self.serve(io, conn(sni, true), h2).await;
            }
        }
    }

    /// Serves one connection: HTTP/2 when TLS's ALPN chose it, HTTP/1.1
    /// otherwise (plain-text HTTP/2 is not offered, so nothing is sniffed).
    async fn serve<I>(&self, io: I, conn: Conn, h2: bool)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (proxy, conn) = (self.proxy.clone(), Arc::new(conn));
        let peer = conn.peer;
        let service = service_fn(move |req| {
            let (proxy, conn) = (proxy.clone(), conn.clone());
            async move { Ok::<_, Infallible>(proxy.handle(req, &conn).await) }
        });
        let io = TokioIo::new(io);
        // The two connection types share no trait the compiler can name here
        // without a higher-ranked bound it cannot prove, so the same lines
        // run twice through a macro.
        macro_rules! drive {
            ($served:expr) => {{
                let served = $served;
                tokio::pin!(served);
                tokio::select! {
                    r = served.as_mut() => r,
                    () = self.shutdown.triggered() => {
                        served.as_mut().graceful_shutdown();
                        served.await
                    }
                }
            }};
        }
        let result = if h2 {
            drive!(self.h2.serve_connection(io, service))
        } else {
            drive!(self.h1.serve_connection(io, service))
        };
        if let Err(e) = result {
            tracing::debug!(%peer, error = %e, "client connection ended with an error");
        }
    }
}
