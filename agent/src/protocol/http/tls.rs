//! `tls = "terminate"`: the agent's own CA (`gatehouse ca init`; `ca.key`
//! and `ca.crt` beside the host key) issues, on the fly, a certificate for
//! the name a client asks for (SNI), or for the backend's address when it
//! sends none (clients do not send IP addresses in SNI). Only the names the
//! backend lists (`server_names`, else its `tls_server_name`, `host` or
//! address) get a certificate: any other name fails the handshake.
//!
//! Leaf certificates (ECDSA P-256, valid 7 days) are cached per name for a
//! day; the CA is read once per process and again when its file changes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject as _;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// The CA's subject. Fixed, so an issuer can be rebuilt from the key alone.
const CA_NAME: &str = "Gatehouse agent CA";
/// How long a minted certificate is valid, and how long it is reused.
const LEAF_DAYS: i64 = 7;
const LEAF_REUSE: Duration = Duration::from_secs(24 * 3600);

/// Why the CA cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("the agent CA ({path}): {message}; run `gatehouse ca init`")]
    Missing { path: String, message: String },
    #[error("the agent CA: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("the agent CA: {0}")]
    Tls(#[from] rustls::Error),
    #[error("the agent CA: {0}")]
    Io(#[from] std::io::Error),
}

/// Where the CA lives: beside the host key (the audit store's directory).
pub fn ca_paths(audit_db: &Path) -> (PathBuf, PathBuf) {
    let dir = crate::settings::host_key_path(audit_db).parent().map(Path::to_path_buf).unwrap_or_default();
    (dir.join("ca.key"), dir.join("ca.crt"))
}

fn ca_params() -> Result<CertificateParams, rcgen::Error> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_NAME);
    dn.push(DnType::OrganizationName, "Gatehouse");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    Ok(p)
}

/// A new CA: (key PEM, certificate PEM), valid ten years.
pub fn new_ca() -> Result<(String, String), CaError> {
    let key = KeyPair::generate()?;
    let mut p = ca_params()?;
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::hours(1);
    p.not_after = now + time::Duration::days(3650);
    let cert = p.self_signed(&key)?;
    Ok((key.serialize_pem(), cert.pem()))
}

/// The CA, loaded, and the certificates it minted.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    chain_tail: rustls::pki_types::CertificateDer<'static>,
    leaves: Mutex<HashMap<String, (SystemTime, Arc<CertifiedKey>)>>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ca { .. }")
    }
}

impl Ca {
    /// Reads the CA from its files (the key must be root's, 0600).
    pub fn load(audit_db: &Path) -> Result<Self, CaError> {
        let (key_path, cert_path) = ca_paths(audit_db);
        let missing = |p: &Path, e: &dyn std::fmt::Display| CaError::Missing {
            path: p.display().to_string(),
            message: e.to_string(),
        };
        let key = crate::secrets::read_secret(&key_path, "agent CA key").map_err(|e| missing(&key_path, &e))?;
        let key = KeyPair::from_pem(std::str::from_utf8(key.expose()).unwrap_or_default())?;
        let cert = std::fs::read(&cert_path).map_err(|e| missing(&cert_path, &e))?;
        let der =
            rustls::pki_types::CertificateDer::from_pem_slice(&cert).map_err(|e| missing(&cert_path, &e))?.into_owned();
        Ok(Self { issuer: Issuer::new(ca_params()?, key), chain_tail: der, leaves: Mutex::new(HashMap::new()) })
    }

    /// A certificate for `name` (a DNS name or an IP address).
    pub fn leaf(&self, name: &str) -> Result<Arc<CertifiedKey>, CaError> {
        if let Some((at, k)) = crate::live::lock(&self.leaves).get(name)
            && at.elapsed().unwrap_or(Duration::MAX) < LEAF_REUSE
        {
            return Ok(k.clone());
        }
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.subject_alt_names = vec![match name.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(name.try_into()?),
        }];
        p.distinguished_name.push(DnType::CommonName, name);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::hours(1);
        p.not_after = now + time::Duration::days(LEAF_DAYS);
        let cert = p.signed_by(&key, &self.issuer)?;
        let der_key = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der())
            .map_err(|e| CaError::Missing { path: "(minted key)".into(), message: e.to_string() })?;
        let signer = rustls::crypto::ring::sign::any_supported_type(&der_key)?;
        let ck = Arc::new(CertifiedKey::new(vec![cert.der().clone(), self.chain_tail.clone()], signer));
        crate::live::lock(&self.leaves).insert(name.to_owned(), (SystemTime::now(), ck.clone()));
        Ok(ck)
    }
}

/// The process's CA, loaded on first use.
static CA: Mutex<Option<Arc<Ca>>> = Mutex::new(None);

fn ca(audit_db: &Path) -> Result<Arc<Ca>, CaError> {
    if let Some(c) = crate::live::lock(&CA).as_ref() {
        return Ok(c.clone());
    }
    let c = Arc::new(Ca::load(audit_db)?);
    *crate::live::lock(&CA) = Some(c.clone());
    Ok(c)
}

/// Picks (and mints) the certificate for the name a client asks for.
#[derive(Debug)]
struct Resolver {
    ca: Arc<Ca>,
    names: Vec<String>,
    /// For clients that send no SNI (an IP address was dialed).
    default: String,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = match hello.server_name() {
            Some(n) => n.to_ascii_lowercase(),
            None => self.default.clone(),
        };
        if !self.names.iter().any(|n| n.eq_ignore_ascii_case(&name)) {
            tracing::info!(sni = %name, "TLS client asked for a name this backend does not serve: refused");
            return None;
        }
        self.ca.leaf(&name).map_err(|e| tracing::warn!(error = %e, "cannot issue a certificate")).ok()
    }
}

/// The server configuration for one backend with `tls = "terminate"`.
pub fn server_config(
    audit_db: &Path,
    b: &crate::policy::Backend,
    addr: std::net::SocketAddr,
) -> Result<Arc<rustls::ServerConfig>, CaError> {
    let ca = ca(audit_db)?;
    let mut names: Vec<String> = b.http.as_ref().map(|h| h.server_names.clone()).unwrap_or_default();
    if names.is_empty() {
        names.push(match (&b.tls_server_name, &b.target) {
            (Some(n), _) => n.clone(),
            (None, crate::policy::Target::Host { host, .. }) => host.clone(),
            (None, crate::policy::Target::Addr(_)) => addr.ip().to_string(),
        });
    }
    let default = match &b.target {
        crate::policy::Target::Addr(a) => a.ip().to_string(),
        crate::policy::Target::Host { .. } => addr.ip().to_string(),
    };
    if !names.contains(&default) {
        names.push(default.clone());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Resolver { ca, names, default }));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    use rustls::client::danger::ServerCertVerifier as _;

    #[test]
    fn a_minted_leaf_chains_to_the_ca() {
        let (key, cert) = new_ca().unwrap();
        let ca = Ca {
            issuer: Issuer::new(ca_params().unwrap(), KeyPair::from_pem(&key).unwrap()),
            chain_tail: rustls::pki_types::CertificateDer::from_pem_slice(cert.as_bytes()).unwrap().into_owned(),
            leaves: Mutex::new(HashMap::new()),
        };
        let leaf = ca.leaf("orders.internal").unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.chain_tail.clone()).unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        let name = rustls::pki_types::ServerName::try_from("orders.internal").unwrap();
        let now = rustls::pki_types::UnixTime::now();
        verifier.verify_server_cert(&leaf.cert[0], &[], &name, &[], now).unwrap();
        let other = rustls::pki_types::ServerName::try_from("evil.internal").unwrap();
        assert!(verifier.verify_server_cert(&leaf.cert[0], &[], &other, &[], now).is_err());
        // Cached.
        assert!(Arc::ptr_eq(&leaf, &ca.leaf("orders.internal").unwrap()));
    }
}
