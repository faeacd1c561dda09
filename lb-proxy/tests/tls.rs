//! TLS: a certificate from files, routing by SNI, HTTP/2 through ALPN, and a
//! server name that disagrees with the Host refused.

mod support;

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Request, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use support::{Proxy, one_worker, settings, two_workers};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

struct Tls {
    connector: TlsConnector,
    _dir: tempfile::TempDir,
    settings: lb_proxy::Settings,
}

/// A certificate for `*.fabric.localhost` in files, and a client that trusts
/// only it and offers `alpn`.
fn tls(alpn: &[&[u8]]) -> Tls {
    let ck = rcgen::generate_simple_self_signed(vec!["*.fabric.localhost".to_string()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(ck.cert.der().to_vec()))
        .unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Tls {
        connector: TlsConnector::from(Arc::new(config)),
        settings: lb_proxy::Settings {
            tls_cert_file: Some(cert),
            tls_key_file: Some(key),
            ..settings()
        },
        _dir: dir,
    }
}

/// One request over a new TLS connection with server name `sni`, in HTTP/2
/// when the server agrees to it; returns the version, status and body.
async fn fetch(proxy: &Proxy, tls: &Tls, sni: &str, host: &str) -> (Version, StatusCode, String) {
    let tcp = TcpStream::connect(proxy.https).await.unwrap();
    let name = ServerName::try_from(sni.to_string()).unwrap();
    let stream = tls.connector.connect(name, tcp).await.unwrap();
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    let io = TokioIo::new(stream);
    let resp = if h2 {
        let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::get(format!("https://{host}/tls"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        send.send_request(req).await.unwrap()
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        let req = Request::get("/tls")
            .header("host", host)
            .body(Empty::<Bytes>::new())
            .unwrap();
        send.send_request(req).await.unwrap()
    };
    let (version, status) = (resp.version(), resp.status());
    let forwarded_proto = resp.headers().get("echo-x-forwarded-proto").cloned();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    if status == StatusCode::OK {
        assert_eq!(forwarded_proto.unwrap(), "https");
    }
    (version, status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn https_routes_by_sni_over_http2() {
    let tls = tls(&[b"h2", b"http/1.1"]);
    let (_a, _b, proxy) = two_workers(tls.settings.clone()).await;

    let (version, status, body) = fetch(
        &proxy,
        &tls,
        "orders-1.fabric.localhost",
        "orders-1.fabric.localhost",
    )
    .await;
    assert_eq!((version, status), (Version::HTTP_2, StatusCode::OK));
    assert_eq!(body, "b GET /tls");
    let (_, status, body) = fetch(
        &proxy,
        &tls,
        "orders-0.fabric.localhost",
        "orders-0.fabric.localhost:443",
    )
    .await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "a GET /tls"));

    // The certificate's name and the request's must agree.
    let (_, status, body) = fetch(
        &proxy,
        &tls,
        "orders-0.fabric.localhost",
        "orders-1.fabric.localhost",
    )
    .await;
    assert_eq!(status, StatusCode::MISDIRECTED_REQUEST, "{body}");
    assert!(body.contains("MISDIRECTED"), "{body}");
    // An unknown app under the wildcard is a 404 over TLS too.
    let (_, status, _) = fetch(
        &proxy,
        &tls,
        "billing.fabric.localhost",
        "billing.fabric.localhost",
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn http11_clients_use_tls_too() {
    let tls = tls(&[b"http/1.1"]);
    let (_a, proxy) = one_worker(tls.settings.clone()).await;
    let (version, status, body) = fetch(
        &proxy,
        &tls,
        "orders.fabric.localhost",
        "orders.fabric.localhost",
    )
    .await;
    assert_eq!((version, status), (Version::HTTP_11, StatusCode::OK));
    assert_eq!(body, "a GET /tls");
}
