//! TLS for the PostgreSQL adapter, with rustls: to backends (per the
//! backend's `tls` setting) and, when `client_tls` is configured, towards
//! clients that demand it.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

use crate::policy::{Backend, ClientTls, Target, TlsMode};

/// Debian's bundle of trusted roots, used when a `verify` backend names no `ca_file`.
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("no server name to verify the certificate against: {0}")]
    ServerName(String),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn file_err(path: &Path, e: impl std::fmt::Display) -> TlsError {
    TlsError::File { path: path.display().to_string(), message: e.to_string() }
}

/// The client configuration for a backend: certificate checked (`verify`)
/// or not (`prefer`, like libpq's sslmode=prefer).
pub fn client_config(b: &Backend) -> Result<Arc<ClientConfig>, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let config = match b.tls {
        TlsMode::Verify => {
            let path = b.ca_file.as_deref().unwrap_or(Path::new(SYSTEM_ROOTS));
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(path).map_err(|e| file_err(path, e))? {
                roots.add(cert.map_err(|e| file_err(path, e))?)?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        TlsMode::Prefer | TlsMode::Off => {
            builder.dangerous().with_custom_certificate_verifier(Arc::new(NoVerify)).with_no_client_auth()
        }
    };
    Ok(Arc::new(config))
}

/// The name the backend's certificate must carry.
pub fn server_name(b: &Backend, addr: std::net::SocketAddr) -> Result<ServerName<'static>, TlsError> {
    let name = match (&b.tls_server_name, &b.target) {
        (Some(n), _) => n.clone(),
        (None, Target::Host { host, .. }) => host.clone(),
        (None, Target::Addr(_)) => addr.ip().to_string(),
    };
    ServerName::try_from(name.clone()).map_err(|_| TlsError::ServerName(name))
}

/// The server configuration offered to clients that ask for TLS.
pub fn server_config(c: &ClientTls) -> Result<Arc<ServerConfig>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&c.cert_file)
        .map_err(|e| file_err(&c.cert_file, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(&c.cert_file, e))?;
    let key = PrivateKeyDer::from_pem_file(&c.key_file).map_err(|e| file_err(&c.key_file, e))?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(Arc::new(config))
}

/// Accepts any certificate: `tls = "prefer"` encrypts without authenticating
/// the server, as libpq's sslmode=prefer does. Operators who need the
/// server authenticated write `tls = "verify"`.
#[derive(Debug)]
struct NoVerify;

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &provider().signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &provider().signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider().signature_verification_algorithms.supported_schemes()
    }
}
