//! The data-path listeners: accept (capped by a semaphore), TLS handshake,
//! HTTP/1.1 or HTTP/2 per connection, graceful drain on shutdown.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use common::shutdown::Shutdown;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;

use crate::express::{self, Prepended};
use crate::headers::ForwardedFor;
use crate::proxy::{Conn, Proxy};
use crate::settings::Settings;
use crate::smuggle::{Inspected, Verdict};

/// What every connection of a listener shares.
#[derive(Clone)]
pub struct Server {
    proxy: Arc<Proxy>,
    http: Arc<auto::Builder<TokioExecutor>>,
    permits: Arc<Semaphore>,
    connections: TaskTracker,
    handshake_timeout: std::time::Duration,
    pass_through: bool,
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
        let mut http = auto::Builder::new(TokioExecutor::new());
        http.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(settings.idle_timeout)
            .max_buf_size(settings.max_header_bytes.max(8192));
        http.http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX));
        Server {
            proxy,
            http: Arc::new(http),
            permits: Arc::new(Semaphore::new(settings.max_connections.max(1))),
            connections,
            handshake_timeout: settings.idle_timeout,
            pass_through: settings.pass_through,
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
            None => self.serve_http1(stream, conn(None, false)).await,
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
                if h2 {
                    let io = Inspected::new(stream, verdict.clone(), true);
                    self.serve(io, conn(sni, true)).await;
                } else {
                    self.serve_http1(stream, conn(sni, true)).await;
                }
            }
        }
    }

    /// Serves a connection that may speak HTTP/1 (or HTTP/2 with prior
    /// knowledge): its requests go through the pass-through lane while it
    /// can take them, then to hyper, behind the smuggling checks.
    ///
    /// The checks start where hyper does: no request the lane takes can be
    /// ambiguous (it has no body framing, and httparse refuses obs-fold).
    async fn serve_http1<I>(&self, mut io: I, conn: Conn)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let verdict = conn.verdict.clone();
        if !self.pass_through {
            return self.serve(Inspected::new(io, verdict, false), conn).await;
        }
        match express::serve(&self.proxy, &mut io, &conn, &self.shutdown).await {
            express::Served::Closed => {}
            express::Served::HandOff(read) => {
                let served = conn.served.load(std::sync::atomic::Ordering::Relaxed);
                let io = Inspected::resumed(Prepended::new(read, io), verdict, served);
                self.serve(io, conn).await;
            }
        }
    }

    async fn serve<I>(&self, io: I, conn: Conn)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (proxy, conn) = (self.proxy.clone(), Arc::new(conn));
        let peer = conn.peer;
        let service = service_fn(move |req| {
            let (proxy, conn) = (proxy.clone(), conn.clone());
            async move { Ok::<_, Infallible>(proxy.handle(req, &conn).await) }
        });
        let served = self.http.serve_connection(TokioIo::new(io), service);
        tokio::pin!(served);
        let result = tokio::select! {
            r = served.as_mut() => r,
            () = self.shutdown.triggered() => {
                served.as_mut().graceful_shutdown();
                served.await
            }
        };
        if let Err(e) = result {
            tracing::debug!(%peer, error = %e, "client connection ended with an error");
        }
    }
}
