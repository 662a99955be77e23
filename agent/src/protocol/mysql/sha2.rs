//! `caching_sha2_password` after the scramble (sans-IO): the server's
//! AuthMoreData packets (0x01, then data) in, what Gatehouse sends out.
//!
//! - `0x03`: fast path accepted, an OK follows; nothing to send.
//! - `0x04`: "perform full authentication": the server wants the password
//!   itself. MySQL reads it in cleartext (password + NUL) on any TLS
//!   connection, and RSA-encrypted on any other (sql/auth/sha2_password.cc:
//!   `my_vio_is_secure` decides; the server does not accept RSA inside TLS).
//!   - over *verified* TLS: password + NUL;
//!   - over unverified TLS: refused (an impostor would read the password);
//!   - without TLS: (password + NUL) XOR the 20-byte scramble (cyclic),
//!     RSA-OAEP (SHA-1, MGF1-SHA-1: what MySQL ≥ 8.0.5 decrypts with
//!     `RSA_PKCS1_OAEP_PADDING`) with the server's public key: the one the
//!     operator pinned (`server_public_key`), or, only with
//!     `get_server_public_key = true`, the one the server sends after a
//!     request (0x02): whoever answers at the address can send its own.
//!
//! Only public-key encryption is done here: RUSTSEC-2023-0071 (the Marvin
//! timing attack on the `rsa` crate) concerns private-key operations.

use rsa::pkcs1::DecodeRsaPublicKey;
use rsa::pkcs8::DecodePublicKey;
use rsa::{Oaep, RsaPublicKey};
use zeroize::Zeroizing;

/// AuthMoreData's first byte.
pub const MORE_DATA: u8 = 0x01;
/// The fast path succeeded (an OK follows).
const FAST_AUTH_OK: u8 = 0x03;
/// The server wants the full password.
const PERFORM_FULL_AUTH: u8 = 0x04;
/// Asks the server for its RSA public key (caching_sha2_password's; sha256_password's is 0x01).
const REQUEST_PUBLIC_KEY: u8 = 0x02;
/// MySQL's scramble (SCRAMBLE_LENGTH).
const SCRAMBLE_LEN: usize = 20;
/// A PEM public key larger than this is refused (an 8192-bit SPKI is ~1.5 KiB).
const MAX_PEM: usize = 16 * 1024;

/// How the backend link is secured, as far as the full path cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// TLS with the server's certificate checked.
    Verified,
    /// TLS without a checked certificate (`tls = "prefer"`).
    Unverified,
    /// No TLS.
    Plain,
}

/// What the backend's policy says about the server's RSA key.
#[derive(Debug, Clone, Default)]
pub struct KeyPolicy {
    /// The operator's pinned key (`server_public_key`).
    pub pinned: Option<RsaPublicKey>,
    /// `get_server_public_key = true`: the key may be asked of the server.
    pub fetch: bool,
}

/// What Gatehouse does after a packet.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing to send; read the next packet.
    Wait,
    /// Send this payload (sequence id: the server's + 1).
    Send(Zeroizing<Vec<u8>>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// After the scramble: 0x03 or 0x04 expected.
    Scrambled,
    /// After the public key request: the PEM expected.
    AwaitKey,
    /// The password went out: only OK or ERR may follow.
    Sent,
}

/// One login's `caching_sha2_password` exchange after the scramble.
pub struct FullAuth<'a> {
    link: Link,
    keys: &'a KeyPolicy,
    password: &'a [u8],
    scramble: Vec<u8>,
    state: State,
}

impl<'a> FullAuth<'a> {
    /// `scramble`: the nonce the password was scrambled with (greeting or auth switch).
    pub fn new(link: Link, keys: &'a KeyPolicy, password: &'a [u8], scramble: &[u8]) -> Self {
        Self { link, keys, password, scramble: scramble.to_vec(), state: State::Scrambled }
    }

    /// The answer to an AuthMoreData payload (starting with 0x01).
    pub fn on_more_data(&mut self, payload: &[u8]) -> Result<Step, String> {
        let data = payload.strip_prefix(&[MORE_DATA]).ok_or("not an AuthMoreData packet")?;
        match (self.state, data) {
            (State::Scrambled, [FAST_AUTH_OK]) => Ok(Step::Wait),
            (State::Scrambled, [PERFORM_FULL_AUTH]) => self.full(),
            (State::AwaitKey, pem) => {
                let key = parse_public_key(pem).map_err(|e| format!("the server's RSA public key: {e}"))?;
                self.state = State::Sent;
                encrypt(&key, self.password, &self.scramble).map(Step::Send)
            }
            _ => Err("unexpected caching_sha2_password data from the server".into()),
        }
    }

    fn full(&mut self) -> Result<Step, String> {
        match self.link {
            Link::Verified => {
                self.state = State::Sent;
                let mut p = Zeroizing::new(Vec::with_capacity(self.password.len() + 1));
                p.extend_from_slice(self.password);
                p.push(0);
                Ok(Step::Send(p))
            }
            Link::Unverified => Err(
                "caching_sha2_password asks for the password itself (its full path: the password is not cached on the server), and the server reads it in cleartext inside TLS, whose certificate is not verified here (tls = \"prefer\"): set tls = \"verify\" (and ca_file for a private CA) on this backend"
                    .into(),
            ),
            Link::Plain => {
                if let Some(key) = &self.keys.pinned {
                    self.state = State::Sent;
                    encrypt(key, self.password, &self.scramble).map(Step::Send)
                } else if self.keys.fetch {
                    self.state = State::AwaitKey;
                    Ok(Step::Send(Zeroizing::new(vec![REQUEST_PUBLIC_KEY])))
                } else {
                    Err("caching_sha2_password asks for the password itself (its full path: the password is not cached on the server), which without TLS travels RSA-encrypted with the server's public key: pin it with server_public_key = \"/path/to/public_key.pem\" on this backend (or set get_server_public_key = true to take the key the server sends, which an impostor can replace), or use tls = \"verify\"".into())
                }
            }
        }
    }
}

/// An RSA public key from PEM: SubjectPublicKeyInfo (`BEGIN PUBLIC KEY`,
/// what MySQL sends and writes to public_key.pem) or PKCS#1 (`BEGIN RSA PUBLIC KEY`).
pub fn parse_public_key(pem: &[u8]) -> Result<RsaPublicKey, String> {
    if pem.len() > MAX_PEM {
        return Err(format!("larger than {MAX_PEM} bytes"));
    }
    let text = std::str::from_utf8(pem).map_err(|_| "not PEM text (not UTF-8)")?;
    let text = text.trim_matches(|c: char| c == '\0' || c.is_whitespace());
    if text.starts_with("-----BEGIN RSA PUBLIC KEY-----") {
        RsaPublicKey::from_pkcs1_pem(text).map_err(|e| format!("not a PKCS#1 RSA public key: {e}"))
    } else if text.starts_with("-----BEGIN PUBLIC KEY-----") {
        RsaPublicKey::from_public_key_pem(text).map_err(|e| format!("not an RSA SubjectPublicKeyInfo: {e}"))
    } else {
        Err("no \"-----BEGIN PUBLIC KEY-----\" or \"-----BEGIN RSA PUBLIC KEY-----\" PEM block at its start".into())
    }
}

/// RSA-OAEP(SHA-1) of (password + NUL) XOR the scramble (repeated).
fn encrypt(key: &RsaPublicKey, password: &[u8], scramble: &[u8]) -> Result<Zeroizing<Vec<u8>>, String> {
    let scramble = scramble.get(..SCRAMBLE_LEN).unwrap_or(scramble);
    if scramble.is_empty() {
        return Err("no scramble to encrypt the password with".into());
    }
    let mut plain = Zeroizing::new(Vec::with_capacity(password.len() + 1));
    plain.extend_from_slice(password);
    plain.push(0);
    for (b, s) in plain.iter_mut().zip(scramble.iter().cycle()) {
        *b ^= s;
    }
    key.encrypt(&mut rsa::rand_core::OsRng, Oaep::new::<sha1::Sha1>(), &plain)
        .map(Zeroizing::new)
        .map_err(|e| format!("cannot RSA-encrypt the password with the server's key: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsa::RsaPrivateKey;
    use rsa::pkcs1::EncodeRsaPublicKey;
    use rsa::pkcs8::{EncodePublicKey, LineEnding};

    const PW: &[u8] = b"s3cret pass";
    const SCRAMBLE: &[u8; 20] = b"abcdefghij0123456789";

    fn key() -> RsaPrivateKey {
        // 1024 bits keeps the test fast; the padding is the same for 2048.
        RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 1024).expect("key")
    }

    fn expected_plain() -> Vec<u8> {
        let mut p = PW.to_vec();
        p.push(0);
        p.iter().zip(SCRAMBLE.iter().cycle()).map(|(a, b)| a ^ b).collect()
    }

    fn sent(step: Step) -> Vec<u8> {
        match step {
            Step::Send(b) => b.to_vec(),
            Step::Wait => panic!("nothing sent"),
        }
    }

    fn decrypt(k: &RsaPrivateKey, c: &[u8]) -> Vec<u8> {
        k.decrypt(Oaep::new::<sha1::Sha1>(), c).expect("decrypts with OAEP SHA-1")
    }

    #[test]
    fn fast_path_sends_nothing() {
        let keys = KeyPolicy::default();
        let mut a = FullAuth::new(Link::Plain, &keys, PW, SCRAMBLE);
        assert_eq!(a.on_more_data(&[1, 3]), Ok(Step::Wait));
    }

    #[test]
    fn verified_tls_sends_the_password_and_nul() {
        let keys = KeyPolicy::default();
        let mut a = FullAuth::new(Link::Verified, &keys, PW, SCRAMBLE);
        assert_eq!(sent(a.on_more_data(&[1, 4]).unwrap()), b"s3cret pass\0");
        // Nothing more is expected from the server but OK or ERR.
        assert!(a.on_more_data(&[1, 4]).is_err());
    }

    #[test]
    fn unverified_tls_is_refused_even_with_a_pinned_key() {
        let k = key();
        let keys = KeyPolicy { pinned: Some(k.to_public_key()), fetch: true };
        let mut a = FullAuth::new(Link::Unverified, &keys, PW, SCRAMBLE);
        let e = a.on_more_data(&[1, 4]).unwrap_err();
        assert!(e.contains("tls = \"verify\""), "{e}");
    }

    #[test]
    fn pinned_key_encrypts_password_xor_scramble() {
        let k = key();
        let keys = KeyPolicy { pinned: Some(k.to_public_key()), fetch: false };
        let mut a = FullAuth::new(Link::Plain, &keys, PW, SCRAMBLE);
        let c = sent(a.on_more_data(&[1, 4]).unwrap());
        assert_eq!(c.len(), 128);
        assert_eq!(decrypt(&k, &c), expected_plain());
        // The auth-switch nonce may come with more than 20 bytes; only 20 count.
        let mut long = SCRAMBLE.to_vec();
        long.push(0);
        let mut a = FullAuth::new(Link::Plain, &keys, PW, &long);
        assert_eq!(decrypt(&k, &sent(a.on_more_data(&[1, 4]).unwrap())), expected_plain());
    }

    #[test]
    fn opt_in_fetch_requests_the_key_then_encrypts_with_it() {
        let k = key();
        let keys = KeyPolicy { pinned: None, fetch: true };
        let mut a = FullAuth::new(Link::Plain, &keys, PW, SCRAMBLE);
        assert_eq!(sent(a.on_more_data(&[1, 4]).unwrap()), [2]);
        let mut pem = vec![1];
        pem.extend_from_slice(k.to_public_key().to_public_key_pem(LineEnding::LF).unwrap().as_bytes());
        let c = sent(a.on_more_data(&pem).unwrap());
        assert_eq!(decrypt(&k, &c), expected_plain());
        assert!(a.on_more_data(&pem).is_err(), "a second key is not expected");
    }

    #[test]
    fn neither_setting_is_an_error_naming_both() {
        let keys = KeyPolicy::default();
        let mut a = FullAuth::new(Link::Plain, &keys, PW, SCRAMBLE);
        let e = a.on_more_data(&[1, 4]).unwrap_err();
        assert!(e.contains("server_public_key") && e.contains("get_server_public_key"), "{e}");
    }

    #[test]
    fn garbled_key_or_short_packets_are_errors() {
        let keys = KeyPolicy { pinned: None, fetch: true };
        let mut a = FullAuth::new(Link::Plain, &keys, PW, SCRAMBLE);
        assert!(a.on_more_data(&[]).is_err());
        assert!(a.on_more_data(&[1]).is_err());
        assert!(a.on_more_data(&[1, 9]).is_err());
        assert!(a.on_more_data(&[0, 4]).is_err());
        assert_eq!(sent(a.on_more_data(&[1, 4]).unwrap()), [2]);
        let e = a.on_more_data(b"\x01-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n").unwrap_err();
        assert!(e.contains("RSA public key"), "{e}");
        let mut a = FullAuth::new(Link::Plain, &keys, PW, SCRAMBLE);
        a.on_more_data(&[1, 4]).unwrap();
        assert!(a.on_more_data(&[1]).is_err(), "an empty key");
        let mut a = FullAuth::new(Link::Plain, &keys, PW, SCRAMBLE);
        a.on_more_data(&[1, 4]).unwrap();
        assert!(a.on_more_data(&[1, 0xff, 0xfe]).is_err(), "not UTF-8");
    }

    #[test]
    fn pem_forms() {
        let k = key().to_public_key();
        let spki = k.to_public_key_pem(LineEnding::LF).unwrap();
        let pkcs1 = k.to_pkcs1_pem(LineEnding::CRLF).unwrap();
        assert_eq!(parse_public_key(spki.as_bytes()).unwrap(), k);
        assert_eq!(parse_public_key(format!("\n{spki}\0").as_bytes()).unwrap(), k);
        assert_eq!(parse_public_key(pkcs1.as_bytes()).unwrap(), k);
        assert!(parse_public_key(b"").is_err());
        assert!(parse_public_key(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").is_err());
        assert!(parse_public_key(&vec![b'A'; MAX_PEM + 1]).is_err());
        // A PKCS#1 body under an SPKI label (and the reverse) is refused.
        let swapped = pkcs1.replace("RSA PUBLIC KEY", "PUBLIC KEY");
        assert!(parse_public_key(swapped.as_bytes()).is_err());
    }

    #[test]
    fn a_password_too_long_for_the_key_is_an_error() {
        let k = key();
        let keys = KeyPolicy { pinned: Some(k.to_public_key()), fetch: false };
        let long = vec![b'x'; 200];
        let mut a = FullAuth::new(Link::Plain, &keys, &long, SCRAMBLE);
        assert!(a.on_more_data(&[1, 4]).is_err());
    }
}
