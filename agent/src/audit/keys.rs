//! The host's Ed25519 key: signs audit checkpoints, redactions, key
//! rotations and exports. Made on first start (32 random bytes, 0600,
//! beside the audit store, written atomically); read only through
//! `secrets` (no symlink followed, root-owned, 0600). Its public half is
//! kept beside it as `host.pub` (hex) for `gatehouse status`.
//!
//! Trust in a key comes from outside the store: `gatehouse verify` trusts
//! `--pubkey`, or the keys in [`TRUSTED_KEYS`] (which the operator puts
//! there, e.g. from configuration management), and follows rotations from
//! them. Keys found in the store or beside it prove nothing on their own:
//! whoever can rewrite the store can rewrite them too.

use std::path::{Path, PathBuf};

use ed25519_dalek::{SigningKey, VerifyingKey};

use crate::secrets::{self, FileProblem};

/// The operator's trusted audit keys (hex, one per line, `#` comments).
pub const TRUSTED_KEYS: &str = "/etc/gatehouse/audit.pub";

/// `host.pub` beside `host.key`.
pub fn public_path(key_path: &Path) -> PathBuf {
    key_path.with_file_name("host.pub")
}

/// Where a rotation writes the new key before it is installed.
pub fn pending_path(key_path: &Path) -> PathBuf {
    let name = key_path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "host.key".into());
    key_path.with_file_name(format!("{name}.new"))
}

/// A fresh key from the kernel's random source.
pub fn generate() -> std::io::Result<SigningKey> {
    let seed = secrets::random32()?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Reads a key file (exactly 32 bytes), checked as a secret.
pub fn load(path: &Path) -> Result<SigningKey, String> {
    let s = secrets::read_secret(path, "host signing key").map_err(|e| e.to_string())?;
    let seed: [u8; 32] = s
        .expose()
        .try_into()
        .map_err(|_| format!("host signing key {}: holds {} bytes, not 32", path.display(), s.len()))?;
    let key = SigningKey::from_bytes(&seed);
    let mut seed = seed;
    zeroize::Zeroize::zeroize(&mut seed);
    Ok(key)
}

/// Loads the key, or makes it on first start.
pub fn load_or_create(path: &Path) -> Result<SigningKey, String> {
    match secrets::read_secret(path, "host signing key") {
        Ok(_) => load(path),
        Err(e) if matches!(e.problem, FileProblem::Missing) => {
            let key = generate().map_err(|e| format!("{}: {e}", path.display()))?;
            write_secret_key(path, &key)?;
            tracing::info!(path = %path.display(), "made the host's audit signing key");
            Ok(key)
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Writes a signing key (0600, atomically).
pub fn write_secret_key(path: &Path, key: &SigningKey) -> Result<(), String> {
    let seed = zeroize::Zeroizing::new(key.to_bytes());
    secrets::write_atomic(path, seed.as_ref(), 0o600).map_err(|e| format!("{}: {e}", path.display()))
}

/// Writes `host.pub` (hex and a newline, 0644) unless it already says so.
pub fn write_public(path: &Path, key: &VerifyingKey) -> Result<(), String> {
    let text = format!("{}\n", super::hex(&key.to_bytes()));
    if std::fs::read_to_string(path).is_ok_and(|t| t == text) {
        return Ok(());
    }
    secrets::write_atomic(path, text.as_bytes(), 0o644).map_err(|e| format!("{}: {e}", path.display()))
}

/// Parses a public key given as 64 hex characters.
pub fn parse_public(hex: &str) -> Result<VerifyingKey, String> {
    let hex = hex.trim();
    if hex.len() != 64 {
        return Err("a public key is 64 hex characters".into());
    }
    let mut b = [0u8; 32];
    for (i, byte) in b.iter_mut().enumerate() {
        let s = hex.get(i * 2..i * 2 + 2).ok_or("bad hex")?;
        *byte = u8::from_str_radix(s, 16).map_err(|_| format!("{s:?} is not hex"))?;
    }
    VerifyingKey::from_bytes(&b).map_err(|e| format!("not an Ed25519 public key: {e}"))
}

/// Reads a file of public keys: hex, one per line; blank lines and `#` comments skipped.
pub fn read_public_file(path: &Path) -> Result<Vec<VerifyingKey>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let keys = text
        .lines()
        .map(|l| l.split('#').next().unwrap_or_default().trim())
        .filter(|l| !l.is_empty())
        .enumerate()
        .map(|(i, l)| parse_public(l).map_err(|e| format!("{} key {}: {e}", path.display(), i + 1)))
        .collect::<Result<Vec<_>, _>>()?;
    if keys.is_empty() {
        return Err(format!("{}: no key in it", path.display()));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_made_once_written_atomically_and_never_read_through_links() {
        let d = std::env::temp_dir().join(format!("gatehouse-keys-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::set_permissions(&d, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        let p = d.join("host.key");
        let k1 = load_or_create(&p).unwrap();
        let k2 = load_or_create(&p).unwrap();
        assert_eq!(k1.to_bytes(), k2.to_bytes());
        write_public(&public_path(&p), &k1.verifying_key()).unwrap();
        let pubs = read_public_file(&public_path(&p)).unwrap();
        assert_eq!(pubs, vec![k1.verifying_key()]);
        let link = d.join("link.key");
        std::os::unix::fs::symlink(&p, &link).unwrap();
        let e = load_or_create(&link).unwrap_err();
        assert!(e.contains("symbolic link"), "{e}");
        std::fs::write(d.join("short.key"), b"abc").unwrap();
        std::fs::set_permissions(d.join("short.key"), std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        assert!(load(&d.join("short.key")).unwrap_err().contains("not 32"));
        let _ = std::fs::remove_dir_all(&d);
    }
}
