//! TLS for the data path: a certificate for `*.{domain}` from PEM files, or a
//! self-signed one for a local fabric; ALPN offers HTTP/2 and HTTP/1.1.

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::TlsAcceptor;

use crate::settings::Settings;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Only one of the certificate and key files is set.
    #[error(
        "tls_cert_file and tls_key_file go together: set both, or neither for a self-signed certificate"
    )]
    HalfConfigured,
    /// A PEM file could not be read.
    #[error("{path}: {reason}")]
    Pem {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The self-signed certificate could not be made.
    #[error("self-signed certificate for *.{domain}: {source}")]
    SelfSigned {
        /// The domain.
        domain: String,
        /// Why.
        source: rcgen::Error,
    },
    /// rustls refused the certificate or key.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The certificate chain and key the data path presents.
pub fn certificate(
    s: &Settings,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    match (&s.tls_cert_file, &s.tls_key_file) {
        (Some(cert), Some(key)) => Ok((read_certs(cert)?, read_key(key)?)),
        (None, None) => self_signed(&s.domain),
        _ => Err(TlsError::HalfConfigured),
    }
}

fn pem_error(path: &Path, e: impl std::fmt::Display) -> TlsError {
    TlsError::Pem {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, e))?;
    if certs.is_empty() {
        return Err(pem_error(path, "no certificate in the file"));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| pem_error(path, e))
}

/// A self-signed certificate for `*.{domain}` and `{domain}`.
pub fn self_signed(
    domain: &str,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let names = vec![format!("*.{domain}"), domain.to_string()];
    let ck = rcgen::generate_simple_self_signed(names).map_err(|source| TlsError::SelfSigned {
        domain: domain.into(),
        source,
    })?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
    Ok((vec![ck.cert.der().clone()], key))
}

/// The acceptor for the HTTPS listener.
pub fn acceptor(s: &Settings) -> Result<TlsAcceptor, TlsError> {
    let (certs, key) = certificate(s)?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_or_files_never_half() {
        let s = Settings::default();
        assert!(acceptor(&s).is_ok());
        let half = Settings {
            tls_cert_file: Some("/nonexistent.pem".into()),
            ..Settings::default()
        };
        assert!(matches!(acceptor(&half), Err(TlsError::HalfConfigured)));
        let missing = Settings {
            tls_cert_file: Some("/nonexistent.pem".into()),
            tls_key_file: Some("/nonexistent.key".into()),
            ..Settings::default()
        };
        let e = acceptor(&missing).err().unwrap().to_string();
        assert!(e.contains("/nonexistent.pem"), "{e}");
    }
}
