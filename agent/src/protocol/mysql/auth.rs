//! The backend login after Gatehouse's HandshakeResponse (sans-IO): each
//! packet the server sends (header included) in, the packet Gatehouse
//! answers with (framed, sequence id = the server's + 1) out. Plugins:
//! `mysql_native_password`, `caching_sha2_password` (fast and full paths,
//! sha2.rs) and MariaDB's `client_ed25519` (only after an auth switch).

use zeroize::Zeroizing;

use super::{ed25519, sha2, wire};

/// What Gatehouse does after a server packet.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// Logged in with this plugin.
    Done(&'static str),
    /// Send this packet (framed; zeroized, as it may carry the password).
    Send(Zeroizing<Vec<u8>>),
    /// Read the next packet.
    Wait,
}

const NATIVE: &str = "mysql_native_password";
const SHA2: &str = "caching_sha2_password";

fn known(p: &str) -> Option<&'static str> {
    match p {
        NATIVE => Some(NATIVE),
        SHA2 => Some(SHA2),
        ed25519::PLUGIN => Some(ed25519::PLUGIN),
        _ => None,
    }
}

/// One backend login's authentication exchange.
pub struct Auth<'a> {
    plugin: &'static str,
    password: &'a [u8],
    link: sha2::Link,
    keys: &'a sha2::KeyPolicy,
    /// caching_sha2_password's exchange after the scramble, with the nonce it was made with.
    sha2: Option<sha2::FullAuth<'a>>,
}

impl<'a> Auth<'a> {
    /// Starts with the greeting's plugin (native when it is unknown, or
    /// client_ed25519, which needs its own 32-byte nonce from an auth switch).
    pub fn new(greeting: &wire::Greeting, password: &'a [u8], link: sha2::Link, keys: &'a sha2::KeyPolicy) -> Self {
        let plugin = known(&greeting.plugin).filter(|p| *p != ed25519::PLUGIN).unwrap_or(NATIVE);
        let sha2 = (plugin == SHA2).then(|| sha2::FullAuth::new(link, keys, password, &greeting.nonce));
        Self { plugin, password, link, keys, sha2 }
    }

    /// The plugin the HandshakeResponse names.
    pub fn plugin(&self) -> &'static str {
        self.plugin
    }

    /// The next step after a server packet (4-byte header, then the payload).
    pub fn on_packet(&mut self, packet: &[u8]) -> Result<Answer, String> {
        let (seq, payload) = match (packet.get(3), packet.get(4..)) {
            (Some(s), Some(p)) => (*s, p),
            _ => return Err("a truncated packet during authentication".into()),
        };
        let answer = |bytes: &[u8]| Ok(Answer::Send(Zeroizing::new(wire::frame(seq.wrapping_add(1), bytes))));
        match payload.first() {
            Some(0x00) => Ok(Answer::Done(self.plugin)),
            Some(0xff) => {
                let e = wire::parse_err(payload).map_or_else(|| "refused".to_owned(), |e| e.message);
                Err(format!("the server said: {e}"))
            }
            Some(0xfe) => {
                let (name, nonce) = wire::parse_auth_switch(payload).map_err(|e| e.to_string())?;
                self.plugin = known(&name)
                    .ok_or_else(|| format!("the server asks for plugin {name}, which Gatehouse does not speak"))?;
                let auth = if self.plugin == ed25519::PLUGIN {
                    // MariaDB's auth_ed25519: sign the server's 32-byte nonce.
                    let nonce = ed25519::nonce(payload).ok_or("a client_ed25519 request without a 32-byte nonce")?;
                    Zeroizing::new(ed25519::sign(self.password, &nonce).to_vec())
                } else {
                    Zeroizing::new(wire::scramble(self.plugin, &nonce, self.password).map_err(|e| e.to_string())?)
                };
                self.sha2 =
                    (self.plugin == SHA2).then(|| sha2::FullAuth::new(self.link, self.keys, self.password, &nonce));
                answer(&auth)
            }
            // caching_sha2_password: fast path accepted, or its full path (sha2.rs).
            Some(&sha2::MORE_DATA) if self.sha2.is_some() => {
                match self.sha2.as_mut().map(|s| s.on_more_data(payload)).transpose()? {
                    Some(sha2::Step::Send(bytes)) => answer(&bytes),
                    _ => Ok(Answer::Wait),
                }
            }
            _ => Err("unexpected answer during authentication".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsa::pkcs8::{EncodePublicKey, LineEnding};
    use rsa::{Oaep, RsaPrivateKey};

    const PW: &[u8] = b"hunter2";

    fn greeting(plugin: &str, nonce: &[u8]) -> wire::Greeting {
        wire::Greeting {
            version: "8.4.3".into(),
            connection_id: 7,
            capabilities: wire::OFFERED,
            charset: 255,
            status: 2,
            nonce: nonce.to_vec(),
            plugin: plugin.into(),
        }
    }

    fn sent(a: Answer) -> Vec<u8> {
        match a {
            Answer::Send(b) => b.to_vec(),
            other => panic!("nothing sent: {other:?}"),
        }
    }

    fn ok(seq: u8) -> Vec<u8> {
        wire::frame(seq, &wire::ok_payload(2))
    }

    fn unxor(plain: &[u8], nonce: &[u8]) -> Vec<u8> {
        plain.iter().zip(nonce.iter().cycle()).map(|(a, b)| a ^ b).collect()
    }

    #[test]
    fn full_path_over_verified_tls_sends_the_password_then_logs_in() {
        let keys = sha2::KeyPolicy::default();
        let g = greeting(SHA2, &[7; 20]);
        let mut a = Auth::new(&g, PW, sha2::Link::Verified, &keys);
        assert_eq!(a.plugin(), SHA2);
        // The server's "perform full authentication" (after the login, sequence id 1).
        assert_eq!(sent(a.on_packet(&[2, 0, 0, 2, 1, 4]).unwrap()), b"\x08\x00\x00\x03hunter2\x00");
        assert_eq!(a.on_packet(&ok(4)).unwrap(), Answer::Done(SHA2));
    }

    #[test]
    fn fast_path_waits_for_the_ok() {
        let keys = sha2::KeyPolicy::default();
        let g = greeting(SHA2, &[7; 20]);
        let mut a = Auth::new(&g, PW, sha2::Link::Plain, &keys);
        assert_eq!(a.on_packet(&[2, 0, 0, 2, 1, 3]).unwrap(), Answer::Wait);
        assert_eq!(a.on_packet(&ok(3)).unwrap(), Answer::Done(SHA2));
    }

    #[test]
    fn auth_switch_to_sha2_then_rsa_with_the_pinned_key_and_the_switch_nonce() {
        let k = RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 1024).unwrap();
        let keys = sha2::KeyPolicy { pinned: Some(k.to_public_key()), fetch: false };
        let g = greeting(NATIVE, &[7; 20]);
        let mut a = Auth::new(&g, PW, sha2::Link::Plain, &keys);
        assert_eq!(a.plugin(), NATIVE);
        let nonce = *b"0123456789abcdefghij";
        let mut switch = vec![0xfe];
        switch.extend_from_slice(b"caching_sha2_password\0");
        switch.extend_from_slice(&nonce);
        switch.push(0);
        let scrambled = sent(a.on_packet(&wire::frame(2, &switch)).unwrap());
        assert_eq!(scrambled[3], 3);
        assert_eq!(scrambled[4..], wire::scramble(SHA2, &nonce, PW).unwrap()[..]);
        let c = sent(a.on_packet(&[2, 0, 0, 4, 1, 4]).unwrap());
        assert_eq!((c.len(), c[3]), (4 + 128, 5));
        let plain = k.decrypt(Oaep::new::<sha1::Sha1>(), &c[4..]).unwrap();
        assert_eq!(unxor(&plain, &nonce), b"hunter2\0");
        assert_eq!(a.on_packet(&ok(6)).unwrap(), Answer::Done(SHA2));
    }

    #[test]
    fn opt_in_fetch_asks_for_the_key_then_sends_the_encrypted_password() {
        let k = RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 1024).unwrap();
        let keys = sha2::KeyPolicy { pinned: None, fetch: true };
        let nonce = [0x5a; 20];
        let g = greeting(SHA2, &nonce);
        let mut a = Auth::new(&g, PW, sha2::Link::Plain, &keys);
        assert_eq!(sent(a.on_packet(&[2, 0, 0, 2, 1, 4]).unwrap()), [1, 0, 0, 3, 2]);
        let mut pem = vec![1];
        pem.extend_from_slice(k.to_public_key().to_public_key_pem(LineEnding::LF).unwrap().as_bytes());
        let c = sent(a.on_packet(&wire::frame(4, &pem)).unwrap());
        assert_eq!(c[3], 5);
        let plain = k.decrypt(Oaep::new::<sha1::Sha1>(), &c[4..]).unwrap();
        assert_eq!(unxor(&plain, &nonce), b"hunter2\0");
    }

    #[test]
    fn refusals_and_garbage_are_errors_never_panics() {
        let keys = sha2::KeyPolicy::default();
        let g = greeting(SHA2, &[7; 20]);
        // Without TLS and without either setting: the error names both.
        let e = Auth::new(&g, PW, sha2::Link::Plain, &keys).on_packet(&[2, 0, 0, 2, 1, 4]).unwrap_err();
        assert!(e.contains("server_public_key") && e.contains("get_server_public_key"), "{e}");
        let e = Auth::new(&g, PW, sha2::Link::Unverified, &keys).on_packet(&[2, 0, 0, 2, 1, 4]).unwrap_err();
        assert!(e.contains("tls = \"verify\""), "{e}");
        for bad in [&[][..], &[1, 0, 0], &[0, 0, 0, 2], &[1, 0, 0, 2, 1], &[2, 0, 0, 2, 1, 9], &[1, 0, 0, 2, 0xfe]] {
            assert!(Auth::new(&g, PW, sha2::Link::Plain, &keys).on_packet(bad).is_err(), "{bad:?}");
        }
        // AuthMoreData is caching_sha2_password's only.
        let native = greeting(NATIVE, &[7; 20]);
        assert!(Auth::new(&native, PW, sha2::Link::Verified, &keys).on_packet(&[2, 0, 0, 2, 1, 4]).is_err());
        // The server's refusal is passed on.
        let err = wire::frame(2, &wire::err_payload(1045, "28000", "Access denied"));
        let e = Auth::new(&g, PW, sha2::Link::Verified, &keys).on_packet(&err).unwrap_err();
        assert!(e.contains("Access denied"), "{e}");
        // A garbled key from the server (opt-in fetch).
        let fetch = sha2::KeyPolicy { pinned: None, fetch: true };
        let mut a = Auth::new(&g, PW, sha2::Link::Plain, &fetch);
        a.on_packet(&[2, 0, 0, 2, 1, 4]).unwrap();
        assert!(a.on_packet(b"\x0a\x00\x00\x04\x01-----BEGI").is_err());
    }
}
