//! The SCRAM-SHA-256 client (RFC 5802, RFC 7677) the agent logs in to a
//! backend with, sans-IO: the caller carries the three messages.
//!
//! What it adds over a plain client: the keys derived from the password
//! (4,096 rounds of HMAC-SHA-256 or whatever count the server asks for) are
//! remembered per (password, salt, count). A server keeps one salt per role
//! until the role's password changes, so every login after the first skips
//! the key derivation, which was most of the agent's CPU per new PostgreSQL
//! connection. The keys are what the password already is to this process:
//! they let one log in as the role, nothing more, and they live only in its
//! memory, beside the password they come from.
//!
//! Unchanged by the cache: every login uses a fresh nonce, sends a proof
//! bound to that exchange (and to the TLS certificate with
//! SCRAM-SHA-256-PLUS), and accepts the server only once its signature
//! proves it holds the role's keys.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Mutex, OnceLock};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ring::{digest, hmac, pbkdf2, rand::SecureRandom as _};
use zeroize::{Zeroize as _, Zeroizing};

/// An iteration count above this is refused: it drives the key derivation,
/// so a server (or an impostor answering for one) could otherwise make each
/// login cost the agent seconds of CPU. 100,000 is about 24 times
/// PostgreSQL's 4,096 and the bound pgJDBC and postgres-protocol adopted.
pub const MAX_ITERATIONS: u32 = 100_000;

/// Key sets remembered at most; past it the cache starts over (a backend has
/// a handful of roles, so this is reached only by churn).
const CACHE_MAX: usize = 256;

/// Random bytes in the client nonce (base64, so 24 printable characters).
const NONCE_BYTES: usize = 18;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScramError {
    #[error("the server's first message is malformed: {0}")]
    ServerFirst(&'static str),
    #[error("the server's nonce does not extend ours")]
    Nonce,
    #[error("the server asks for {0} iterations (at most {MAX_ITERATIONS} are done)")]
    Iterations(u32),
    #[error("the server's final message is malformed: {0}")]
    ServerFinal(&'static str),
    #[error("the server reported an error: {0}")]
    ServerError(String),
    #[error("the server's signature is wrong: it does not hold this role's keys")]
    Signature,
    #[error("a SCRAM message out of order")]
    State,
    #[error("no random bytes for the nonce")]
    Random,
}

/// Channel binding, as the GS2 header says it.
#[derive(Debug, Clone)]
pub enum Binding {
    /// "n": the client does not support it (no TLS).
    Unsupported,
    /// "y": the client could bind but the server did not offer it.
    Unrequested,
    /// "p=tls-server-end-point": bound to the hash of the server's certificate.
    EndPoint(Vec<u8>),
}

impl Binding {
    fn gs2_header(&self) -> &'static str {
        match self {
            Self::Unsupported => "n,,",
            Self::Unrequested => "y,,",
            Self::EndPoint(_) => "p=tls-server-end-point,,",
        }
    }

    /// `c=`'s value: base64 of the header and the binding data.
    fn c(&self) -> String {
        let mut input = self.gs2_header().as_bytes().to_vec();
        if let Self::EndPoint(data) = self {
            input.extend_from_slice(data);
        }
        STANDARD.encode(input)
    }
}

/// ClientKey and ServerKey of one (password, salt, count).
#[derive(Clone)]
struct Keys {
    client: Zeroizing<[u8; 32]>,
    server: Zeroizing<[u8; 32]>,
}

/// Remembered keys, by [`cache_key`].
fn cache() -> &'static Mutex<HashMap<[u8; 32], Keys>> {
    static CACHE: OnceLock<Mutex<HashMap<[u8; 32], Keys>>> = OnceLock::new();
    CACHE.get_or_init(Mutex::default)
}

/// The cache's key: a hash of the password, the salt and the count, each
/// length-prefixed so no two inputs share a key. The password itself is
/// not kept in the map.
fn cache_key(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(b"gatehouse scram keys v1\0");
    for part in [password, salt] {
        ctx.update(&(part.len() as u64).to_be_bytes());
        ctx.update(part);
    }
    ctx.update(&iterations.to_be_bytes());
    let mut key = [0u8; 32];
    key.copy_from_slice(ctx.finish().as_ref());
    key
}

fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    let mut ctx = hmac::Context::with_key(&key);
    for p in parts {
        ctx.update(p);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.sign().as_ref());
    out
}

/// Whether keys for (password, salt, count) are remembered.
fn remembered(password: &[u8], salt: &[u8], iterations: NonZeroU32) -> bool {
    let id = cache_key(password, salt, iterations.get());
    cache().lock().unwrap_or_else(std::sync::PoisonError::into_inner).contains_key(&id)
}

/// The keys for (password, salt, count): from the cache, or derived (and
/// remembered).
fn keys(password: &[u8], salt: &[u8], iterations: NonZeroU32) -> Keys {
    let id = cache_key(password, salt, iterations.get());
    if let Some(k) = cache().lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&id) {
        return k.clone();
    }
    let mut salted = Zeroizing::new([0u8; 32]);
    pbkdf2::derive(pbkdf2::PBKDF2_HMAC_SHA256, iterations, salt, password, salted.as_mut());
    let keys = Keys {
        client: Zeroizing::new(hmac_sha256(salted.as_ref(), &[b"Client Key"])),
        server: Zeroizing::new(hmac_sha256(salted.as_ref(), &[b"Server Key"])),
    };
    let mut map = cache().lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if map.len() >= CACHE_MAX {
        map.clear();
    }
    map.insert(id, keys.clone());
    keys
}

/// Iterations of the verifiers made here ([`verifier`]): PostgreSQL's default.
const VERIFIER_ITERATIONS: u32 = 4096;

/// A SCRAM-SHA-256 verifier for `password`, as PostgreSQL stores it
/// (`SCRAM-SHA-256$<count>:<salt>$<StoredKey>:<ServerKey>`), with a random
/// 16-byte salt. The keys derived for it are remembered, so the first login
/// with this password derives nothing more. Thousands of HMAC rounds: call
/// it off the async workers.
pub fn verifier(password: &[u8]) -> Result<String, ScramError> {
    let mut salt = [0u8; 16];
    ring::rand::SystemRandom::new().fill(&mut salt).map_err(|_| ScramError::Random)?;
    let iterations = NonZeroU32::new(VERIFIER_ITERATIONS).ok_or(ScramError::Iterations(0))?;
    let keys = keys(&normalize(password), &salt, iterations);
    let stored = digest::digest(&digest::SHA256, keys.client.as_ref());
    Ok(format!(
        "SCRAM-SHA-256${VERIFIER_ITERATIONS}:{}${}:{}",
        STANDARD.encode(salt),
        STANDARD.encode(stored.as_ref()),
        STANDARD.encode(keys.server.as_ref())
    ))
}

/// SASLprep of the password where it is valid UTF-8 and SASLprep accepts it,
/// else its bytes as they are: what PostgreSQL's server and libpq do.
fn normalize(password: &[u8]) -> Zeroizing<Vec<u8>> {
    Zeroizing::new(match std::str::from_utf8(password).ok().and_then(|p| stringprep::saslprep(p).ok()) {
        Some(p) => p.as_bytes().to_vec(),
        None => password.to_vec(),
    })
}

enum State {
    /// The client-first message was sent.
    First {
        password: Zeroizing<Vec<u8>>,
    },
    /// The client-final message was sent: what checks the server's signature.
    Final {
        server_key: Zeroizing<[u8; 32]>,
        auth_message: String,
    },
    Done,
}

/// One login's exchange.
pub struct Client {
    binding: Binding,
    nonce: String,
    state: State,
}

impl Client {
    /// A new exchange with a fresh random nonce.
    pub fn new(password: &[u8], binding: Binding) -> Result<Self, ScramError> {
        let mut raw = [0u8; NONCE_BYTES];
        ring::rand::SystemRandom::new().fill(&mut raw).map_err(|_| ScramError::Random)?;
        Ok(Self::with_nonce(password, binding, STANDARD.encode(raw)))
    }

    fn with_nonce(password: &[u8], binding: Binding, nonce: String) -> Self {
        Self { binding, nonce, state: State::First { password: normalize(password) } }
    }

    /// The client-first message. PostgreSQL takes the user from the startup
    /// message, so `n=` is empty, as libpq sends it.
    pub fn first(&self) -> String {
        format!("{}{}", self.binding.gs2_header(), self.bare())
    }

    fn bare(&self) -> String {
        format!("n=,r={}", self.nonce)
    }

    /// Whether reading `server_first` will derive keys (none remembered for
    /// this password, salt and count): thousands of HMAC rounds, which the
    /// caller runs off its async workers. A message that does not parse
    /// derives nothing ([`Self::update`] reports it).
    pub fn will_derive(&self, server_first: &[u8]) -> bool {
        let State::First { password } = &self.state else { return false };
        let Ok(text) = std::str::from_utf8(server_first) else { return false };
        let Ok((_, salt, iterations)) = self.parse_first(text) else { return false };
        !remembered(password, &salt, iterations)
    }

    /// The server-first message's nonce, salt and iteration count, checked.
    fn parse_first<'a>(&self, text: &'a str) -> Result<(&'a str, Vec<u8>, NonZeroU32), ScramError> {
        let mut attrs = text.split(',');
        let mut next = |name: &'static str| {
            attrs.next().and_then(|a| a.strip_prefix(name)).ok_or(ScramError::ServerFirst(match name {
                "r=" => "no nonce (r=) first",
                "s=" => "no salt (s=) after the nonce",
                _ => "no iteration count (i=) after the salt",
            }))
        };
        let nonce = next("r=")?;
        let salt = next("s=")?;
        let count = next("i=")?;
        // Any further attributes are extensions, which SCRAM lets a client ignore.
        let extends = nonce.len() > self.nonce.len() && nonce.starts_with(self.nonce.as_str());
        if !extends || !nonce.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',') {
            return Err(ScramError::Nonce);
        }
        let salt = STANDARD.decode(salt).map_err(|_| ScramError::ServerFirst("the salt is not base64"))?;
        let count: u32 = count.parse().map_err(|_| ScramError::ServerFirst("the iteration count is not a number"))?;
        let iterations = NonZeroU32::new(count).ok_or(ScramError::Iterations(0))?;
        if count > MAX_ITERATIONS {
            return Err(ScramError::Iterations(count));
        }
        Ok((nonce, salt, iterations))
    }

    /// Reads the server-first message; returns the client-final message.
    pub fn update(&mut self, server_first: &[u8]) -> Result<String, ScramError> {
        let State::First { password } = std::mem::replace(&mut self.state, State::Done) else {
            return Err(ScramError::State);
        };
        let text = std::str::from_utf8(server_first).map_err(|_| ScramError::ServerFirst("not UTF-8"))?;
        let (nonce, salt, iterations) = self.parse_first(text)?;
        let keys = keys(&password, &salt, iterations);
        let without_proof = format!("c={},r={nonce}", self.binding.c());
        let auth_message = format!("{},{text},{without_proof}", self.bare());
        let stored_key = digest::digest(&digest::SHA256, keys.client.as_ref());
        let signature = Zeroizing::new(hmac_sha256(stored_key.as_ref(), &[auth_message.as_bytes()]));
        let mut proof = Zeroizing::new(*keys.client);
        for (p, s) in proof.iter_mut().zip(signature.iter()) {
            *p ^= s;
        }
        let message = format!("{without_proof},p={}", STANDARD.encode(proof.as_ref()));
        self.state = State::Final { server_key: keys.server, auth_message };
        Ok(message)
    }

    /// Reads the server-final message: Ok only when the server's signature
    /// proves it holds the role's keys.
    pub fn finish(&mut self, server_final: &[u8]) -> Result<(), ScramError> {
        let State::Final { server_key, auth_message } = std::mem::replace(&mut self.state, State::Done) else {
            return Err(ScramError::State);
        };
        let text = std::str::from_utf8(server_final).map_err(|_| ScramError::ServerFinal("not UTF-8"))?;
        let first = text.split(',').next().unwrap_or_default();
        if let Some(e) = first.strip_prefix("e=") {
            return Err(ScramError::ServerError(e.chars().take(200).collect()));
        }
        let v = first.strip_prefix("v=").ok_or(ScramError::ServerFinal("no verifier (v=)"))?;
        let mut v = STANDARD.decode(v).map_err(|_| ScramError::ServerFinal("the verifier is not base64"))?;
        let key = hmac::Key::new(hmac::HMAC_SHA256, server_key.as_ref());
        let ok = hmac::verify(&key, auth_message.as_bytes(), &v).is_ok();
        v.zeroize();
        if ok { Ok(()) } else { Err(ScramError::Signature) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 7677's example exchange, with its user name: the RFC sends
    // `n=user`, PostgreSQL an empty one, so the bare message is built here.
    const NONCE: &str = "rOprNGfwEbeRWgbNEkqO";
    const SERVER_FIRST: &str = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";

    /// The RFC's exchange, replayed with this client's arithmetic but the
    /// RFC's `n=user` (the only part PostgreSQL changes).
    #[test]
    fn the_rfc_7677_exchange_gives_the_rfc_proof_and_accepts_its_signature() {
        let password = normalize(b"pencil");
        let salt = STANDARD.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let keys = keys(&password, &salt, NonZeroU32::new(4096).unwrap());
        let without_proof = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let auth = format!("n=user,r={NONCE},{SERVER_FIRST},{without_proof}");
        let stored = digest::digest(&digest::SHA256, keys.client.as_ref());
        let sig = hmac_sha256(stored.as_ref(), &[auth.as_bytes()]);
        let proof: Vec<u8> = keys.client.iter().zip(sig).map(|(k, s)| k ^ s).collect();
        assert_eq!(STANDARD.encode(proof), "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=");
        let server_sig = hmac_sha256(keys.server.as_ref(), &[auth.as_bytes()]);
        assert_eq!(STANDARD.encode(server_sig), "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=");
    }

    /// What a server holding `password`'s keys computes for an exchange
    /// (the long way, independently of the cache): whether the client's
    /// proof is right, and its own final message.
    fn server(password: &[u8], client_first: &str, server_first: &str, client_final: &str) -> (bool, String) {
        let salt = STANDARD.decode(server_first.split(",s=").nth(1).unwrap().split(',').next().unwrap()).unwrap();
        let mut salted = [0u8; 32];
        pbkdf2::derive(pbkdf2::PBKDF2_HMAC_SHA256, NonZeroU32::new(4096).unwrap(), &salt, password, &mut salted);
        let client_key = hmac_sha256(&salted, &[b"Client Key"]);
        let server_key = hmac_sha256(&salted, &[b"Server Key"]);
        let (without_proof, proof) = client_final.rsplit_once(",p=").unwrap();
        let bare = client_first.splitn(3, ',').nth(2).unwrap();
        let auth = format!("{bare},{server_first},{without_proof}");
        let stored = digest::digest(&digest::SHA256, &client_key);
        let sig = hmac_sha256(stored.as_ref(), &[auth.as_bytes()]);
        let recovered: Vec<u8> = STANDARD.decode(proof).unwrap().iter().zip(sig).map(|(p, s)| p ^ s).collect();
        let proof_ok = digest::digest(&digest::SHA256, &recovered).as_ref() == stored.as_ref();
        (proof_ok, format!("v={}", STANDARD.encode(hmac_sha256(&server_key, &[auth.as_bytes()]))))
    }

    fn exchange(password: &[u8], salt: &str, binding: Binding) -> (Client, String, String, String) {
        let mut c = Client::new(password, binding).unwrap();
        let first = c.first();
        let nonce = first.rsplit_once("r=").unwrap().1.to_owned();
        let server_first = format!("r={nonce}srv,s={salt},i=4096");
        let last = c.update(server_first.as_bytes()).unwrap();
        (c, first, server_first, last)
    }

    #[test]
    fn a_login_is_accepted_with_the_servers_signature_and_the_next_one_reuses_the_keys() {
        let salt = STANDARD.encode(b"a salt only this test uses");
        let salt_bytes = STANDARD.decode(&salt).unwrap();
        let count = NonZeroU32::new(4096).unwrap();
        for (round, binding) in
            [Binding::Unsupported, Binding::EndPoint(vec![7; 32]), Binding::Unrequested].into_iter().enumerate()
        {
            let (mut c, first, server_first, last) = exchange(b"s3cret", &salt, binding.clone());
            let (proof_ok, v) = server(b"s3cret", &first, &server_first, &last);
            assert!(proof_ok, "round {round}: the server does not accept the client's proof");
            assert!(last.starts_with(&format!("c={},", binding.c())), "{last}");
            c.finish(v.as_bytes()).unwrap();
        }
        assert!(remembered(&normalize(b"s3cret"), &salt_bytes, count));
        // Another password with the same salt is another key set.
        assert!(!remembered(&normalize(b"other"), &salt_bytes, count));
        // The keys a login uses are the remembered ones: with another set put
        // in their place, the proof is one the server refuses.
        let id = cache_key(&normalize(b"s3cret"), &salt_bytes, count.get());
        let wrong = Keys { client: Zeroizing::new([1; 32]), server: Zeroizing::new([2; 32]) };
        cache().lock().unwrap().insert(id, wrong);
        let (_, first, server_first, last) = exchange(b"s3cret", &salt, Binding::Unsupported);
        assert!(!server(b"s3cret", &first, &server_first, &last).0, "the login did not take the remembered keys");
        cache().lock().unwrap().remove(&id);
    }

    #[test]
    fn only_a_first_login_with_a_salt_derives_keys() {
        let salt = STANDARD.encode(b"salt of the derivation test");
        let first_message = |c: &Client| {
            let nonce = c.first().rsplit_once("r=").unwrap().1.to_owned();
            format!("r={nonce}srv,s={salt},i=4096")
        };
        let mut c = Client::new(b"pw-derive", Binding::Unsupported).unwrap();
        let m = first_message(&c);
        assert!(c.will_derive(m.as_bytes()));
        c.update(m.as_bytes()).unwrap();
        let c = Client::new(b"pw-derive", Binding::Unsupported).unwrap();
        assert!(!c.will_derive(first_message(&c).as_bytes()), "the keys were remembered");
        // What does not parse derives nothing (update reports it).
        assert!(!c.will_derive(b"r=nope,s=c2FsdA==,i=4096"));
    }

    /// A verifier made here holds what a server computes from the password
    /// (in PostgreSQL's format; the keys computed here the long way), and
    /// the first login against it needs no derivation.
    #[test]
    fn a_verifier_made_here_is_the_servers_and_its_first_login_derives_nothing() {
        let v = verifier(b"dyn-password").unwrap();
        let (head, keys) = v
            .split_once('$')
            .and_then(|(m, rest)| (m == "SCRAM-SHA-256").then_some(rest))
            .and_then(|r| r.split_once('$'))
            .unwrap();
        let (count, salt) = head.split_once(':').unwrap();
        let (stored, server_key) = keys.split_once(':').unwrap();
        assert_eq!(count, "4096");
        let salt_bytes = STANDARD.decode(salt).unwrap();
        assert_eq!(salt_bytes.len(), 16);
        // The server's side, from the password, the long way.
        let mut salted = [0u8; 32];
        pbkdf2::derive(
            pbkdf2::PBKDF2_HMAC_SHA256,
            NonZeroU32::new(4096).unwrap(),
            &salt_bytes,
            b"dyn-password",
            &mut salted,
        );
        let client_key = hmac_sha256(&salted, &[b"Client Key"]);
        assert_eq!(STANDARD.decode(stored).unwrap(), digest::digest(&digest::SHA256, &client_key).as_ref());
        assert_eq!(STANDARD.decode(server_key).unwrap(), hmac_sha256(&salted, &[b"Server Key"]));
        // The session's login with that password: the keys are remembered.
        let c = Client::new(b"dyn-password", Binding::Unsupported).unwrap();
        let nonce = c.first().rsplit_once("r=").unwrap().1.to_owned();
        assert!(!c.will_derive(format!("r={nonce}srv,s={salt},i=4096").as_bytes()));
        // Two verifiers of one password have different salts.
        assert_ne!(verifier(b"dyn-password").unwrap(), v);
    }

    #[test]
    fn a_server_without_the_roles_keys_is_refused() {
        let salt = STANDARD.encode(b"salt of the impostor test");
        let (mut c, first, server_first, last) = exchange(b"right", &salt, Binding::Unsupported);
        // An impostor that does not know the password cannot sign the exchange.
        let (proof_ok, wrong) = server(b"wrong", &first, &server_first, &last);
        assert!(!proof_ok);
        assert_eq!(c.finish(wrong.as_bytes()), Err(ScramError::Signature));
        // Nor is a second finish, a finish before the server's first
        // message, or an error message, taken as success.
        assert_eq!(c.finish(b"v=AAAA"), Err(ScramError::State));
        let mut early = Client::new(b"right", Binding::Unsupported).unwrap();
        assert_eq!(early.finish(b"v=AAAA"), Err(ScramError::State));
        let (mut c, ..) = exchange(b"right", &salt, Binding::Unsupported);
        assert_eq!(c.finish(b"e=invalid-proof"), Err(ScramError::ServerError("invalid-proof".into())));
    }

    #[test]
    fn a_server_first_message_that_is_off_is_refused() {
        type Case = (fn(&str) -> String, ScramError);
        let cases: [Case; 9] = [
            (|n| format!("r={n}x,s=c2FsdA==,i=100001"), ScramError::Iterations(100_001)),
            (|n| format!("r={n}x,s=c2FsdA==,i=0"), ScramError::Iterations(0)),
            (|_| "r=someone-elses-nonce,s=c2FsdA==,i=4096".into(), ScramError::Nonce),
            (|n| format!("r={n},s=c2FsdA==,i=4096"), ScramError::Nonce),
            (|n| format!("r={n}a,b,s=c2FsdA==,i=4096"), ScramError::ServerFirst("no salt (s=) after the nonce")),
            (|n| format!("m=ext,r={n}x,s=c2FsdA==,i=4096"), ScramError::ServerFirst("no nonce (r=) first")),
            (|n| format!("r={n}x,i=4096,s=c2FsdA=="), ScramError::ServerFirst("no salt (s=) after the nonce")),
            (|n| format!("r={n}x,s=!!,i=4096"), ScramError::ServerFirst("the salt is not base64")),
            (|n| format!("r={n}x,s=c2FsdA==,i=-1"), ScramError::ServerFirst("the iteration count is not a number")),
        ];
        for (message, want) in cases {
            let mut c = Client::new(b"pw", Binding::Unsupported).unwrap();
            let nonce = c.first().rsplit_once("r=").unwrap().1.to_owned();
            let message = message(&nonce);
            assert_eq!(c.update(message.as_bytes()).err(), Some(want), "{message}");
            // The exchange is over: nothing more is answered.
            assert_eq!(c.update(message.as_bytes()).err(), Some(ScramError::State));
        }
    }
}
