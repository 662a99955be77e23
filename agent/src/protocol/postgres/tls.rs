//! TLS for the PostgreSQL adapter, with rustls: to backends (per the
//! backend's `tls` setting) and, when `client_tls` is configured, towards
//! clients that demand it.
//!
//! `tls = "verify"` checks the server's certificate against `ca_file` (a
//! root-owned file others cannot write) or, without one, the system's
//! trust store as `rustls-native-certs` finds it (`SSL_CERT_FILE`,
//! `SSL_CERT_DIR`, then the platform's usual places), and its name against
//! `tls_server_name` (default: the `host` name, or the IP of `address`).

pub mod der;

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

use crate::policy::{Backend, ClientTls, Target, TlsMode};
use crate::secrets;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("no server name to verify the certificate against: {0}")]
    ServerName(String),
    #[error("the system trust store has no usable certificate ({0}); give the backend a ca_file")]
    NoRoots(String),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn file_err(path: &Path, e: impl std::fmt::Display) -> TlsError {
    TlsError::File { path: path.display().to_string(), message: e.to_string() }
}

/// The certificates a verified peer must chain to: those of `ca_file` (a
/// root-owned file others cannot write: whoever can write it can
/// impersonate the peer) or, without one, the system's trust store.
pub fn roots(ca_file: Option<&Path>) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let pem = secrets::read_checked(path, "ca_file", secrets::Kind::Trusted).map_err(|e| file_err(path, e))?;
            for cert in CertificateDer::pem_slice_iter(pem.expose()) {
                roots.add(cert.map_err(|e| file_err(path, e))?)?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found.errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
                return Err(TlsError::NoRoots(why));
            }
        }
    }
    Ok(roots)
}

/// A client configuration that verifies the server against [`roots`], for
/// the agent's own outbound connections (central store, syslog).
pub fn verifying_config(ca_file: Option<&Path>) -> Result<ClientConfig, TlsError> {
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(ca_file)?)
        .with_no_client_auth())
}

/// The client configuration for a backend: certificate checked (`verify`)
/// or not (`prefer`, like libpq's sslmode=prefer).
pub fn client_config(b: &Backend) -> Result<Arc<ClientConfig>, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let config = match b.tls {
        TlsMode::Verify => builder.with_root_certificates(roots(b.ca_file.as_deref())?).with_no_client_auth(),
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
    let pem = secrets::read_secret(&c.key_file, "client_tls key_file").map_err(|e| file_err(&c.key_file, e))?;
    let key = PrivateKeyDer::from_pem_slice(pem.expose()).map_err(|e| file_err(&c.key_file, e))?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(Arc::new(config))
}

/// What was negotiated with a backend, for the session's record.
#[derive(Debug, Clone, Default)]
pub struct Negotiated {
    pub version: Option<String>,
    pub cipher: Option<String>,
    /// SHA-256 of the server's certificate (DER), hex.
    pub certificate_sha256: Option<String>,
    /// tls-server-end-point channel binding data (RFC 5929), when the
    /// certificate's signature says which hash to use.
    pub end_point: Option<Vec<u8>>,
}

/// Reads what a finished client handshake negotiated.
pub fn negotiated(conn: &rustls::ClientConnection) -> Negotiated {
    let cert = conn.peer_certificates().and_then(|c| c.first());
    Negotiated {
        version: conn.protocol_version().and_then(|v| v.as_str()).map(|v| v.replace('_', ".")),
        cipher: conn.negotiated_cipher_suite().and_then(|c| c.suite().as_str()).map(str::to_owned),
        certificate_sha256: cert.map(|c| crate::audit::hex(ring::digest::digest(&ring::digest::SHA256, c).as_ref())),
        end_point: cert.and_then(|c| der::end_point_hash(c).map(|alg| ring::digest::digest(alg, c).as_ref().to_vec())),
    }
}

/// When a `client_tls` certificate stops being valid (seconds since the
/// epoch), from the first certificate of its PEM file.
pub fn certificate_expiry(path: &Path) -> Result<i64, TlsError> {
    let first = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(path, e))?
        .next()
        .ok_or_else(|| file_err(path, "no certificate in it"))?
        .map_err(|e| file_err(path, e))?;
    der::not_after(&first).ok_or_else(|| file_err(path, "its validity period cannot be read"))
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
