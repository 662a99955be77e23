//! The host's Ed25519 key: signs audit checkpoints and exports. Made on
//! first start (32 random bytes, 0600, beside the audit store).

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use ed25519_dalek::{SigningKey, VerifyingKey};

pub fn load_or_create(path: &Path) -> Result<SigningKey, String> {
    let err = |e: std::io::Error| format!("{}: {e}", path.display());
    let mut seed = [0u8; 32];
    match std::fs::File::open(path) {
        Ok(mut f) => {
            f.read_exact(&mut seed).map_err(err)?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::File::open("/dev/urandom").and_then(|mut r| r.read_exact(&mut seed)).map_err(err)?;
            let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(err)?;
            f.write_all(&seed).map_err(err)?;
            tracing::info!(path = %path.display(), "made the host's audit signing key");
        }
        Err(e) => return Err(err(e)),
    }
    Ok(SigningKey::from_bytes(&seed))
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
