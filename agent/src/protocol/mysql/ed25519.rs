//! MariaDB's `client_ed25519` authentication (the server plugin
//! `auth_ed25519`): the server's auth switch carries a 32-byte nonce; the
//! client answers with an Ed25519 signature of it (RFC 8032, 64 bytes)
//! made with the key MariaDB derives from the password: the 64-byte
//! expanded secret is SHA-512(password), its first half clamped as the
//! scalar, its second half the prefix that seeds the signature's nonce.
//! The server holds only the public key (`ed25519_password('…')`, base64).
//! The curve arithmetic is ed25519-dalek's (hazmat: signing with an
//! expanded secret key), never our own (sans-IO).

use ed25519_dalek::hazmat::{ExpandedSecretKey, raw_sign};
use ed25519_dalek::{Sha512, VerifyingKey};
use zeroize::Zeroize;

/// The plugin name in the server's auth switch.
pub const PLUGIN: &str = "client_ed25519";
/// The nonce the server sends.
const NONCE_LEN: usize = 32;

/// The nonce of an AuthSwitchRequest payload (0xfe, plugin name, NUL,
/// data) for `client_ed25519`: exactly 32 bytes (a NUL may close the data,
/// and a nonce may itself end with a zero byte, so it is not stripped).
pub fn nonce(payload: &[u8]) -> Option<[u8; NONCE_LEN]> {
    let rest = payload.strip_prefix(&[0xfe])?;
    let nul = memchr::memchr(0, rest)?;
    let data = rest.get(nul + 1..)?;
    let n = match data.len() {
        NONCE_LEN => data,
        // A closing NUL after the nonce.
        33 if data.last() == Some(&0) => data.get(..NONCE_LEN)?,
        _ => return None,
    };
    n.try_into().ok()
}

fn expanded(password: &[u8]) -> ExpandedSecretKey {
    let digest = ring::digest::digest(&ring::digest::SHA512, password);
    let mut bytes = [0u8; 64];
    bytes.copy_from_slice(digest.as_ref());
    let key = ExpandedSecretKey::from_bytes(&bytes);
    bytes.zeroize();
    key
}

/// The public key MariaDB stores for `password` (what `ed25519_password()` shows, before base64).
pub fn public_key(password: &[u8]) -> [u8; 32] {
    VerifyingKey::from(&expanded(password)).to_bytes()
}

/// The answer to `nonce`: the Ed25519 signature of the nonce with the key of `password`.
pub fn sign(password: &[u8], nonce: &[u8]) -> [u8; 64] {
    let key = expanded(password);
    let public = VerifyingKey::from(&key);
    raw_sign::<Sha512>(&key, nonce, &public).to_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    #[test]
    fn the_public_key_is_the_one_mariadb_derives_from_the_password() {
        // MariaDB's documentation: SELECT ed25519_password("secret") → ZIgUREUg5PVgQ6LskhXmO+eZLS0nC8be6HPjYWR4YJY
        let pk = base64::engine::general_purpose::STANDARD_NO_PAD.encode(public_key(b"secret"));
        assert_eq!(pk, "ZIgUREUg5PVgQ6LskhXmO+eZLS0nC8be6HPjYWR4YJY");
    }

    #[test]
    fn the_signature_verifies_with_that_key_and_only_for_that_nonce() {
        let n = [7u8; 32];
        let sig = ed25519_dalek::Signature::from_bytes(&sign(b"pw", &n));
        let pk = VerifyingKey::from_bytes(&public_key(b"pw")).unwrap();
        assert!(pk.verify_strict(&n, &sig).is_ok());
        assert!(pk.verify_strict(&[8u8; 32], &sig).is_err());
        let other = VerifyingKey::from_bytes(&public_key(b"pw2")).unwrap();
        assert!(other.verify_strict(&n, &sig).is_err());
        // Deterministic, as RFC 8032 signatures are.
        assert_eq!(sign(b"pw", &n), sign(b"pw", &n));
    }

    #[test]
    fn the_nonce_is_read_whole_even_when_it_ends_with_a_zero() {
        let mut p = vec![0xfe];
        p.extend_from_slice(b"client_ed25519\0");
        let mut n = [1u8; 32];
        n[31] = 0;
        p.extend_from_slice(&n);
        assert_eq!(nonce(&p), Some(n));
        p.push(0);
        assert_eq!(nonce(&p), Some(n));
        assert_eq!(nonce(&p[..p.len() - 5]), None);
        assert_eq!(nonce(b"\xfeclient_ed25519"), None);
        assert_eq!(nonce(b""), None);
    }
}
