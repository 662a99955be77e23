//! SSH keys and certificates (ssh-key, through russh): the agent's SSH host
//! CA (`gatehouse ca ssh-host`), the host certificate Gatehouse presents for
//! a backend's names, and the short-lived user certificate it logs in to
//! the backend with.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use russh::keys::ssh_key::certificate::{Builder, CertType};
use russh::keys::ssh_key::private::{Ed25519Keypair, KeypairData};
use russh::keys::ssh_key::{LineEnding, PublicKey};
use russh::keys::{Certificate, PrivateKey};

/// How long a host certificate is valid; renewed when less than a quarter is left.
const HOST_CERT_VALIDITY: Duration = Duration::from_secs(24 * 3600);
/// Clock skew a certificate's start allows for.
const SKEW: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{0}")]
    File(#[from] crate::secrets::FileError),
    #[error("{what} {path}: {source}")]
    Parse {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: russh::keys::ssh_key::Error,
    },
    #[error("{what}: {source}")]
    Key {
        what: &'static str,
        #[source]
        source: russh::keys::ssh_key::Error,
    },
    #[error("random bytes: {0}")]
    Random(std::io::Error),
    #[error("the SSH host CA {0} is missing: run `gatehouse ca ssh-host` first")]
    NoHostCa(PathBuf),
}

fn key_err(what: &'static str) -> impl FnOnce(russh::keys::ssh_key::Error) -> KeyError {
    move |source| KeyError::Key { what, source }
}

/// Where the SSH host CA lives: beside the audit store's host key.
pub fn host_ca_paths(audit_db: &Path) -> (PathBuf, PathBuf) {
    let dir = crate::settings::host_key_path(audit_db).parent().map(Path::to_path_buf).unwrap_or_default();
    (dir.join("ssh_host_ca"), dir.join("ssh_host_ca.pub"))
}

/// A fresh Ed25519 key from the kernel's random bytes.
pub fn new_ed25519(comment: &str) -> Result<PrivateKey, KeyError> {
    let seed = crate::secrets::random32().map_err(KeyError::Random)?;
    let pair = Ed25519Keypair::from_seed(&seed);
    PrivateKey::new(KeypairData::Ed25519(pair), comment).map_err(key_err("new key"))
}

/// The private key in OpenSSH format (for a 0600 file).
pub fn to_openssh(key: &PrivateKey) -> Result<zeroize::Zeroizing<String>, KeyError> {
    key.to_openssh(LineEnding::LF).map_err(key_err("encoding a private key"))
}

pub fn public_line(key: &PublicKey) -> Result<String, KeyError> {
    key.to_openssh().map_err(key_err("encoding a public key"))
}

/// Reads a root-only OpenSSH private key (unencrypted).
pub fn read_private(path: &Path, what: &'static str) -> Result<PrivateKey, KeyError> {
    let secret = crate::secrets::read_secret(path, what)?;
    PrivateKey::from_openssh(secret.expose()).map_err(|source| KeyError::Parse { what, path: path.to_owned(), source })
}

/// Reads a root-owned public key file (`ssh-ed25519 AAAA… comment`).
pub fn read_public(path: &Path, what: &'static str) -> Result<PublicKey, KeyError> {
    let text = crate::secrets::read_checked(path, what, crate::secrets::Kind::Trusted)?;
    let line = String::from_utf8_lossy(text.expose());
    PublicKey::from_openssh(line.trim()).map_err(|source| KeyError::Parse { what, path: path.to_owned(), source })
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn nonce() -> Result<Vec<u8>, KeyError> {
    Ok(crate::secrets::random32().map_err(KeyError::Random)?.to_vec())
}

/// A host certificate for `names`, with a fresh host key.
pub fn host_cert(ca: &PrivateKey, names: &[String], now: SystemTime) -> Result<(PrivateKey, Certificate), KeyError> {
    let key = new_ed25519("gatehouse host key")?;
    let after = unix(now).saturating_sub(SKEW.as_secs());
    let before = unix(now) + HOST_CERT_VALIDITY.as_secs();
    let mut b = Builder::new(nonce()?, key.public_key().key_data().clone(), after, before)
        .map_err(key_err("host certificate"))?;
    b.cert_type(CertType::Host).map_err(key_err("host certificate"))?;
    b.key_id("gatehouse host certificate").map_err(key_err("host certificate"))?;
    for n in names {
        b.valid_principal(n.clone()).map_err(key_err("host certificate principal"))?;
    }
    let cert = b.sign(ca).map_err(key_err("signing the host certificate"))?;
    Ok((key, cert))
}

/// What a per-session user certificate says.
#[derive(Debug, Clone)]
pub struct UserCert<'a> {
    /// The account on the host (the certificate's only principal).
    pub principal: &'a str,
    /// Names the person: the host's sshd logs it.
    pub key_id: String,
    pub validity: Duration,
    /// The address Gatehouse connects from (`source-address`), if known.
    pub source_address: Option<std::net::IpAddr>,
    /// `force-command`, when the session may run only one command.
    pub force_command: Option<&'a str>,
    pub serial: u64,
}

/// A fresh key and a user certificate for it, signed with `ca`.
pub fn user_cert(ca: &PrivateKey, c: &UserCert<'_>, now: SystemTime) -> Result<(PrivateKey, Certificate), KeyError> {
    let key = new_ed25519("gatehouse session key")?;
    let after = unix(now).saturating_sub(SKEW.as_secs());
    let before = unix(now) + c.validity.as_secs().max(1);
    let what = "user certificate";
    let mut b = Builder::new(nonce()?, key.public_key().key_data().clone(), after, before).map_err(key_err(what))?;
    b.cert_type(CertType::User).map_err(key_err(what))?;
    b.serial(c.serial).map_err(key_err(what))?;
    b.key_id(c.key_id.clone()).map_err(key_err(what))?;
    b.valid_principal(c.principal).map_err(key_err(what))?;
    if let Some(a) = c.source_address {
        b.critical_option("source-address", a.to_string()).map_err(key_err(what))?;
    }
    if let Some(cmd) = c.force_command {
        b.critical_option("force-command", cmd).map_err(key_err(what))?;
    }
    // What an interactive login needs; no agent or X11 forwarding upstream.
    for ext in ["permit-pty", "permit-port-forwarding"] {
        b.extension(ext, "").map_err(key_err(what))?;
    }
    let cert = b.sign(ca).map_err(key_err("signing the user certificate"))?;
    Ok((key, cert))
}

/// Host certificates by backend, renewed before they expire.
#[derive(Debug, Default)]
pub struct HostCerts {
    ca: Mutex<Option<(PathBuf, std::sync::Arc<PrivateKey>)>>,
    by_names: Mutex<HashMap<Vec<String>, (SystemTime, PrivateKey, Certificate)>>,
}

impl HostCerts {
    /// The key and certificate to present for `names`.
    pub fn for_names(&self, audit_db: &Path, names: &[String]) -> Result<(PrivateKey, Certificate), KeyError> {
        let now = SystemTime::now();
        if let Some((made, k, c)) = crate::live::lock(&self.by_names).get(names)
            && now.duration_since(*made).unwrap_or_default() < HOST_CERT_VALIDITY / 4 * 3
        {
            return Ok((k.clone(), c.clone()));
        }
        let ca = self.ca(audit_db)?;
        let (k, c) = host_cert(&ca, names, now)?;
        crate::live::lock(&self.by_names).insert(names.to_vec(), (now, k.clone(), c.clone()));
        Ok((k, c))
    }

    fn ca(&self, audit_db: &Path) -> Result<std::sync::Arc<PrivateKey>, KeyError> {
        let (path, _) = host_ca_paths(audit_db);
        let mut g = crate::live::lock(&self.ca);
        if let Some((p, k)) = g.as_ref()
            && *p == path
        {
            return Ok(k.clone());
        }
        if !path.exists() {
            return Err(KeyError::NoHostCa(path));
        }
        let k = std::sync::Arc::new(read_private(&path, "SSH host CA key")?);
        *g = Some((path, k.clone()));
        Ok(k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_carry_principals_key_id_and_a_short_validity() {
        let ca = new_ed25519("ca").expect("ca");
        let now = SystemTime::now();
        let (_, host) = host_cert(&ca, &["db-admin".into(), "127.10.0.3".into()], now).expect("host cert");
        assert_eq!(host.cert_type(), CertType::Host);
        assert_eq!(host.valid_principals(), ["db-admin".to_owned(), "127.10.0.3".to_owned()]);
        let c = UserCert {
            principal: "deploy",
            key_id: "gatehouse:ana:s1".into(),
            validity: Duration::from_secs(120),
            source_address: Some("127.0.0.1".parse().expect("ip")),
            force_command: None,
            serial: 7,
        };
        let (key, user) = user_cert(&ca, &c, now).expect("user cert");
        assert_eq!(user.key_id(), "gatehouse:ana:s1");
        assert_eq!(user.valid_principals(), ["deploy".to_owned()]);
        assert_eq!(user.valid_before() - user.valid_after(), 120 + SKEW.as_secs());
        assert_eq!(user.public_key(), key.public_key().key_data());
        let fp = ca.public_key().fingerprint(Default::default());
        user.validate_at(unix(now), [&fp]).expect("valid now");
        assert!(user.validate_at(unix(now) + 121, [&fp]).is_err(), "expired after its validity");
    }
}
